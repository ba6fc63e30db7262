/*
 * migrant: the service of the live-migration benchmark (Scripts/bench-migrate.sh).
 *
 *     migrant MIB RATE     # MIB of memory (default 2048), rewritten at RATE MiB/s (default 50)
 *
 * Fills MIB of anonymous memory, prints READY, then rewrites pages in order
 * at a steady RATE MiB/s, each page holding values derived from its own
 * write count (kept in a separate array).  It notes the longest gap between
 * two turns of its loop on CLOCK_REALTIME (which no namespace shifts): that
 * is the downtime as the service saw it.  On SIGTERM it checks every page
 * against its count and prints "GAP <ms> PAGES <written>", one "SLOW <at> <ms>"
 * line for each of the 16 longest gaps over 10 ms (<at>: the turn that ended it, in
 * the ms of cryo's -v timeline), and PASS or FAIL.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <math.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t value(size_t page, size_t w, uint64_t count) { return mix((page << 32) ^ count) ^ w; }

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2048;
	double rate = argc > 2 ? atof(argv[2]) : 50;
	size_t pages = mib << 20 >> 12;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *counts = calloc(pages, sizeof(uint64_t));
	if (mem == MAP_FAILED || !counts) { perror("mmap"); return 1; }
	for (size_t p = 0; p < pages; p++)
		for (size_t w = 0; w < WORDS; w++) mem[p * WORDS + w] = value(p, w, 0);
	printf("READY\n");
	fflush(stdout);

	double start = wall(), last = start, gap = 0;
	double slow_at[16], slow_ms[16];
	int slow = 0;
	uint64_t written = 0;
	size_t cursor = 0;
	struct timespec pause = { 0, 1000000 };
	while (!got_term) {
		double t = wall();
		if (t - last > gap) gap = t - last;
		if (t - last > 0.010) {  /* the 16 longest: a full list drops its shortest */
			double ms = (t - last) * 1000;
			int i = slow;
			if (slow == 16)
				for (int j = i = 0; j < 16; j++) if (slow_ms[j] < slow_ms[i]) i = j;
			if (slow < 16 || slow_ms[i] < ms) { slow_at[i] = t; slow_ms[i] = ms; }
			if (slow < 16) slow++;
		}
		last = t;
		uint64_t due = (uint64_t)((t - start) * rate * 256);  /* 256 pages a MiB */
		for (int n = 0; written < due && n < 4096; n++, written++) {
			size_t p = cursor++ % pages;
			uint64_t next = counts[p] + 1;
			for (size_t w = 0; w < WORDS; w++) mem[p * WORDS + w] = value(p, w, next);
			counts[p] = next;
		}
		nanosleep(&pause, NULL);
	}
	size_t bad = 0, first = 0;
	for (size_t p = 0; p < pages; p++)
		for (size_t w = 0; w < WORDS; w++)
			if (mem[p * WORDS + w] != value(p, w, counts[p])) { if (!bad++) first = p; break; }
	printf("GAP %.1f PAGES %llu\n", gap * 1000, (unsigned long long)written);
	for (int i = 0; i < slow; i++)
		printf("SLOW %.1f %.1f\n", fmod(slow_at[i], 100000) * 1000, slow_ms[i]);
	if (bad) printf("FAIL: %zu pages do not match their write counts (first: page %zu)\n", bad, first);
	else printf("PASS\n");
	fflush(stdout);
	return bad != 0;
}
