/*
 * dirty: memory that keeps changing, for pre-copy (pre-dump, then dump
 * --prev-images-dir).
 *
 * argv[1] is the size of a "cold" region in MiB (default 64), written once
 * before READY.  A 4 MiB "hot" region is rewritten all the time, a page at a
 * time, each page holding a value derived from its own write count (kept in
 * a separate array, itself written all the time).  SIGUSR1 changes memory
 * the way a pre-copy must notice: it rewrites the first eighth of the cold
 * region with a new generation, drops 64 KiB of it (MADV_DONTNEED: must read
 * as zeros from then on) and replaces a 1 MiB mapping by a new one at the
 * same address (MAP_FIXED) with other contents, then prints "CHANGED <gen>".
 * SIGUSR2 changes only the VmFlags of one page mapped on its own (PROT_NONE
 * pages either side, so it merges with nothing and madvise splits nothing):
 * MADV_DONTDUMP and MADV_DODUMP in turn; then it prints "ADVISED <n>".
 *
 * On SIGTERM it finishes the page it is writing and checks every page of all
 * three regions and the write counts against each other.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "fixture.h"

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define HOT_PAGES 1024u
#define SWAP_BYTES (1u << 20)
#define DROP_PAGES 16u

static volatile sig_atomic_t got_term, got_usr1, got_usr2;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig) { (void)sig; got_usr2 = 1; }

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t cold_value(size_t page, size_t w, uint64_t gen) { return mix(page * 131 + gen * 7919) + w; }
static uint64_t hot_value(size_t page, size_t w, uint64_t count) { return mix((page << 32) ^ count) ^ w; }
static uint64_t swap_value(size_t w, uint64_t gen) { return mix(w ^ (gen << 48) ^ 0x5157); }

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	if (mib < 1) mib = 1;
	size_t cold_pages = mib << 20 >> 12, changed_pages = cold_pages / 8;
	uint64_t gen = 0;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	uint64_t *cold = mmap(NULL, cold_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *hot = mmap(NULL, HOT_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *swap = mmap(NULL, SWAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *counts = calloc(HOT_PAGES, sizeof(uint64_t));
	if (cold == MAP_FAILED || hot == MAP_FAILED || swap == MAP_FAILED || !counts) { perror("mmap"); return 1; }
	for (size_t p = 0; p < cold_pages; p++)
		for (size_t w = 0; w < WORDS; w++) cold[p * WORDS + w] = cold_value(p, w, 0);
	for (size_t p = 0; p < HOT_PAGES; p++)
		for (size_t w = 0; w < WORDS; w++) hot[p * WORDS + w] = hot_value(p, w, 0);
	for (size_t w = 0; w < SWAP_BYTES / 8; w++) swap[w] = swap_value(w, 0);
	int dropped = 0;
	char *advised = mmap(NULL, 3 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (advised == MAP_FAILED || mprotect(advised + PAGE, PAGE, PROT_READ | PROT_WRITE)) { perror("advised page"); return 1; }
	advised += PAGE;
	unsigned long advice_changes = 0;

	printf("READY\n");
	fflush(stdout);

	size_t cursor = 0;
	struct timespec pause = { 0, 1000000 };
	while (!got_term) {
		/* One hot page: its new contents first, then its count. */
		size_t p = cursor++ % HOT_PAGES;
		uint64_t next = counts[p] + 1;
		for (size_t w = 0; w < WORDS; w++) hot[p * WORDS + w] = hot_value(p, w, next);
		counts[p] = next;
		if (cursor % 16 == 0) nanosleep(&pause, NULL);
		if (got_usr1) {
			got_usr1 = 0;
			gen++;
			for (size_t q = 0; q < changed_pages; q++)
				for (size_t w = 0; w < WORDS; w++) cold[q * WORDS + w] = cold_value(q, w, gen);
			madvise(cold + changed_pages * WORDS, DROP_PAGES * PAGE, MADV_DONTNEED);
			dropped = 1;
			uint64_t *again = mmap(swap, SWAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			if (again != swap) { perror("mmap MAP_FIXED"); return 1; }
			for (size_t w = 0; w < SWAP_BYTES / 8; w++) swap[w] = swap_value(w, gen);
			printf("CHANGED %llu\n", (unsigned long long)gen);
			fflush(stdout);
		}
		if (got_usr2) {
			got_usr2 = 0;
			advice_changes++;
			if (madvise(advised, PAGE, advice_changes % 2 ? MADV_DONTDUMP : MADV_DODUMP)) { perror("madvise"); return 1; }
			printf("ADVISED %lu\n", advice_changes);
			fflush(stdout);
		}
	}

	size_t bad = 0, first = 0;
	for (size_t q = 0; q < cold_pages; q++) {
		int is_dropped = dropped && q >= changed_pages && q < changed_pages + DROP_PAGES;
		uint64_t g = q < changed_pages ? gen : 0;
		for (size_t w = 0; w < WORDS; w++)
			if (cold[q * WORDS + w] != (is_dropped ? 0 : cold_value(q, w, g))) { if (!bad++) first = q; break; }
	}
	if (bad) fail("%zu cold pages wrong (first: page %zu, generation %llu)", bad, first, (unsigned long long)gen);
	bad = 0;
	for (size_t q = 0; q < HOT_PAGES; q++)
		for (size_t w = 0; w < WORDS; w++)
			if (hot[q * WORDS + w] != hot_value(q, w, counts[q])) { if (!bad++) first = q; break; }
	if (bad) fail("%zu hot pages do not match their write counts (first: page %zu, count %llu)", bad, first,
		      (unsigned long long)counts[first]);
	bad = 0;
	for (size_t w = 0; w < SWAP_BYTES / 8; w++)
		if (swap[w] != swap_value(w, gen)) { bad++; first = w; }
	if (bad) fail("%zu words of the replaced mapping wrong (e.g. word %zu)", bad, first);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
