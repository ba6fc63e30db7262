/*
 * ticker: the program cryo's demo checkpoints and restores.
 *
 * Every half second it prints one line: an increasing tick number, the wall
 * clock time and its pid.  It also owns a 16 MiB buffer: each tick it changes
 * a few bytes of it, updates the checksum it expects, then sums the whole
 * buffer again and says "sum ok" when the two agree.  After a restore the
 * tick number carries on from where it was and the sum still matches, which
 * shows that both the registers/stack and the heap came back intact.
 *
 * SIGTERM makes it print a last line and exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define BUF_BYTES (16u << 20)

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static uint64_t sum_buffer(const uint8_t *buf, size_t len)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < len; i++)
		sum += buf[i];
	return sum;
}

static uint32_t next_random(uint32_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 17;
	*state ^= *state << 5;
	return *state;
}

int main(void)
{
	struct sigaction sa = { .sa_handler = on_term };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);

	uint8_t *buf = malloc(BUF_BYTES);
	if (!buf) { perror("malloc"); return 1; }
	uint32_t rng = 0x2545f491u;
	for (size_t i = 0; i < BUF_BYTES; i++)
		buf[i] = (uint8_t)next_random(&rng);
	uint64_t expected = sum_buffer(buf, BUF_BYTES);

	for (unsigned long tick = 1; !stop; tick++) {
		/* change a few bytes and keep the expected sum in step */
		for (int k = 0; k < 8; k++) {
			size_t at = next_random(&rng) % BUF_BYTES;
			uint8_t value = (uint8_t)next_random(&rng);
			expected = expected - buf[at] + value;
			buf[at] = value;
		}
		uint64_t actual = sum_buffer(buf, BUF_BYTES);

		char when[32];
		time_t now = time(NULL);
		strftime(when, sizeof(when), "%H:%M:%S", localtime(&now));
		printf("tick %lu at %s, pid %d (sum %s)\n", tick, when, (int)getpid(),
		       actual == expected ? "ok" : "WRONG");
		fflush(stdout);

		struct timespec half = { 0, 500000000 };
		while (nanosleep(&half, &half) == -1 && errno == EINTR && !stop)
			;
	}
	printf("ticker: got SIGTERM, exiting\n");
	fflush(stdout);
	return 0;
}
