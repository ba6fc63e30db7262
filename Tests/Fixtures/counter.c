/*
 * counter: memory + register + progress fixture for cryo.
 *
 * Sets up data in every kind of private memory a simple program has
 * (initialised globals, bss, stack, small brk-heap chunks, a few MiB of
 * mmap-backed heap), then spins a loop that keeps a counter in memory and a
 * few derived values in registers (integer and floating point), sleeping
 * ~1 ms per iteration.  On SIGTERM it checks that the loop kept running past
 * the READY point, that the register-held values are consistent with the
 * iteration count, and that all the memory patterns are intact.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

#define HEAP_BYTES   (4u << 20)   /* large malloc: served by mmap */
#define NODES        1000         /* small mallocs: served by brk */
#define STACK_WORDS  1024
#define BSS_WORDS    65536

static volatile sig_atomic_t got_term;
static volatile uint64_t counter;          /* lives in memory */
static uint64_t counter_at_ready;

/* initialised data with a computed-at-compile-time-looking pattern */
static uint32_t data_words[256] = { 0x01234567u, 0x89abcdefu, 0xdeadbeefu, 0xfeedfaceu };
static uint64_t bss_words[BSS_WORDS];

struct node { struct node *next; uint32_t id; uint32_t check; char pad[40]; };


static void on_term(int sig) { (void)sig; got_term = 1; }

static uint64_t mix(uint64_t x)
{
	x ^= x >> 31; x *= 0x7fb5d329728ea185ull;
	x ^= x >> 27; x *= 0x81dadef4bc2dd44dull;
	x ^= x >> 33;
	return x;
}

static uint64_t lcg_step(uint64_t x) { return x * 6364136223846793005ull + 1442695040888963407ull; }

static void sleep_1ms(void)
{
	struct timespec ts = { 0, 1000000 };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !got_term)
		;
}

/* Keep the compiler from folding the loop state into constants. */
static void __attribute__((noinline)) opaque(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) { perror("sigaction"); return 1; }

	pid_t pid = getpid();

	/* globals */
	for (int i = 4; i < 256; i++)
		data_words[i] = (uint32_t)mix((uint64_t)i * 3 + 7);
	for (int i = 0; i < BSS_WORDS; i++)
		bss_words[i] = mix((uint64_t)i ^ 0xb55b55ull);

	/* stack */
	uint64_t stack_words[STACK_WORDS];
	for (int i = 0; i < STACK_WORDS; i++)
		stack_words[i] = mix((uint64_t)i + 0x5757ull);
	opaque(stack_words);

	/* big heap buffer, every byte written */
	unsigned char *heap = malloc(HEAP_BYTES);
	if (!heap) { perror("malloc"); return 1; }
	for (size_t i = 0; i < HEAP_BYTES; i++)
		heap[i] = (unsigned char)(mix(i / 8) >> (8 * (i % 8)));

	/* linked list of small heap chunks */
	struct node *head = NULL;
	for (uint32_t i = 0; i < NODES; i++) {
		struct node *n = malloc(sizeof(*n));
		if (!n) { perror("malloc"); return 1; }
		n->id = i;
		n->check = (uint32_t)mix(i + 0x1000);
		memset(n->pad, (int)(i & 0xff), sizeof(n->pad));
		n->next = head;
		head = n;
	}

	printf("READY\n");
	fflush(stdout);
	void *brk_at_ready = sbrk(0);
	counter_at_ready = counter;

	/* Loop state held in registers at -O1: an integer LCG and a double. */
	uint64_t iters = 0, lcg = 1;
	double acc = 0.0;
	while (!got_term) {
		counter++;
		iters++;
		lcg = lcg_step(lcg);
		acc += 0.5;
		sleep_1ms();
	}
	uint64_t counter_at_term = counter;

	/* --- checks --- */
	if (counter_at_term <= counter_at_ready)
		fail("counter did not advance after READY (ready=%llu now=%llu)",
		     (unsigned long long)counter_at_ready, (unsigned long long)counter_at_term);
	if (iters != counter_at_term - counter_at_ready)
		fail("register iteration count %llu != memory counter delta %llu",
		     (unsigned long long)iters, (unsigned long long)(counter_at_term - counter_at_ready));
	uint64_t expect = 1;
	for (uint64_t i = 0; i < iters; i++)
		expect = lcg_step(expect);
	if (lcg != expect)
		fail("register LCG value %#llx != recomputed %#llx after %llu iterations",
		     (unsigned long long)lcg, (unsigned long long)expect, (unsigned long long)iters);
	if (acc != 0.5 * (double)iters)
		fail("floating point accumulator %.1f != %.1f", acc, 0.5 * (double)iters);

	/* the loop still runs after the checks started */
	uint64_t before = counter;
	for (int i = 0; i < 20; i++) { counter++; sleep_1ms(); }
	if (counter != before + 20)
		fail("counter did not keep counting (%llu -> %llu)",
		     (unsigned long long)before, (unsigned long long)counter);

	if (getpid() != pid)
		fail("getpid() %d != original pid %d", (int)getpid(), (int)pid);
	if (getsid(0) != pid)
		fail("session id %d != pid %d", (int)getsid(0), (int)pid);
	if (getpgrp() != pid)
		fail("process group %d != pid %d", (int)getpgrp(), (int)pid);

	static const uint32_t head4[4] = { 0x01234567u, 0x89abcdefu, 0xdeadbeefu, 0xfeedfaceu };
	for (int i = 0; i < 256; i++) {
		uint32_t want = i < 4 ? head4[i] : (uint32_t)mix((uint64_t)i * 3 + 7);
		if (data_words[i] != want) { fail("data word %d is %#x, want %#x", i, data_words[i], want); break; }
	}
	for (int i = 0; i < BSS_WORDS; i++)
		if (bss_words[i] != mix((uint64_t)i ^ 0xb55b55ull)) { fail("bss word %d corrupted", i); break; }
	for (int i = 0; i < STACK_WORDS; i++)
		if (stack_words[i] != mix((uint64_t)i + 0x5757ull)) { fail("stack word %d corrupted", i); break; }
	for (size_t i = 0; i < HEAP_BYTES; i++)
		if (heap[i] != (unsigned char)(mix(i / 8) >> (8 * (i % 8)))) {
			fail("heap buffer byte %zu is %#x", i, heap[i]);
			break;
		}
	uint32_t seen = 0;
	for (struct node *n = head; n; n = n->next, seen++) {
		uint32_t want_id = NODES - 1 - seen;
		if (seen >= NODES || n->id != want_id || n->check != (uint32_t)mix(want_id + 0x1000)) {
			fail("heap list node %u corrupted", seen);
			break;
		}
		for (size_t k = 0; k < sizeof(n->pad); k++)
			if ((unsigned char)n->pad[k] != (want_id & 0xff)) { fail("heap list node %u padding corrupted", seen); break; }
	}
	if (seen != NODES && !failbuf[0])
		fail("heap list has %u nodes, want %u", seen, NODES);
	if (sbrk(0) != brk_at_ready)
		fail("program break moved from %p to %p", brk_at_ready, sbrk(0));

	/* the allocator still works after restore */
	void *more = malloc(1 << 20);
	char *small = malloc(100);
	if (!more || !small) fail("malloc after restore failed");
	else { memset(more, 0xab, 1 << 20); memset(small, 0xcd, 100); free(more); free(small); }

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
