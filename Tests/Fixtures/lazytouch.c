/*
 * lazytouch: keeps touching its memory all the time, so that right after a
 * restore (with --lazy-pages: while pages are still loading) it reads and
 * writes pages in random order, forks children that read all of it, and
 * changes its mappings under the loader's feet.
 *
 * argv[1] is the size of the main region in MiB (default 64).
 *   main     every page: word 0 = seed(page) ^ generation(page), the other
 *            words seed(page) + w. The loop picks pages at random, checks
 *            them whole, bumps word 0. Generations live in a malloc'd array.
 *   dropped  1 MiB: a page at a time is dropped with MADV_DONTNEED, must
 *            read as zeros right after, and is written again.
 *   moving   2 MiB with a pattern, moved with mremap between two places; it
 *            must keep its contents.
 *   remapped 1 MiB unmapped and mapped again: must read as zeros, then is
 *            filled.
 * Every ~50 ms the process forks a child that checks the main region and the
 * moving one, and exits 0 or 1; the parent waits for it.
 *
 * On SIGTERM it checks everything once more and prints PASS or FAIL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096u
#define WORDS (PAGE / 8)
#define MOVING (2u << 20)
#define SMALL (1u << 20)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static uint64_t seed(uint64_t page)
{
	uint64_t x = page * 0x9e3779b97f4a7c15ull + 77;
	x ^= x >> 31; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 29;
	return x;
}

static uint64_t *main_region, *generation;
static size_t main_pages;
static unsigned char *moving, *spare, *dropped, *remapped;
static unsigned long steps, forks, moves, drops, remaps;

/* Returns the number of wrong words in page p of the main region. */
static size_t check_page(size_t p)
{
	const uint64_t *pg = main_region + p * WORDS;
	size_t bad = pg[0] != (seed(p) ^ generation[p]);
	for (size_t w = 1; w < WORDS; w++)
		bad += pg[w] != seed(p) + w;
	return bad;
}

static int moving_ok(const unsigned char *m)
{
	for (size_t i = 0; i < MOVING; i += 8)
		if (*(const uint64_t *)(m + i) != seed(i / 8 + 1000003)) return 0;
	return 1;
}

static size_t check_all(const char *who)
{
	size_t bad_pages = 0;
	for (size_t p = 0; p < main_pages; p++)
		if (check_page(p)) {
			if (!bad_pages) fail("%s: main page %zu wrong", who, p);
			bad_pages++;
		}
	if (!moving_ok(moving)) { fail("%s: the moved region lost its contents", who); bad_pages++; }
	return bad_pages;
}

int main(int argc, char **argv)
{
	unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	if (mib < 1) mib = 1;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);

	main_pages = (size_t)mib * 256;
	main_region = mmap(NULL, main_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	generation = malloc(main_pages * sizeof(uint64_t));
	/* moving and spare: two places far apart; spare is reserved space it moves into. */
	moving = mmap(NULL, MOVING, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	spare = mmap(NULL, MOVING, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dropped = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	remapped = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (main_region == MAP_FAILED || !generation || moving == MAP_FAILED || spare == MAP_FAILED
	    || dropped == MAP_FAILED || remapped == MAP_FAILED) {
		perror("lazytouch: setup");
		return 1;
	}
	for (size_t p = 0; p < main_pages; p++) {
		generation[p] = p % 7;
		uint64_t *pg = main_region + p * WORDS;
		pg[0] = seed(p) ^ generation[p];
		for (size_t w = 1; w < WORDS; w++) pg[w] = seed(p) + w;
	}
	for (size_t i = 0; i < MOVING; i += 8) *(uint64_t *)(moving + i) = seed(i / 8 + 1000003);
	memset(dropped, 0x5a, SMALL);
	memset(remapped, 0xa5, SMALL);
	printf("READY\n");
	fflush(stdout);

	uint64_t rng = 12345;
	double last_fork = now(), last_move = now();
	while (!got_term) {
		/* a random page of the main region, checked whole and bumped */
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		size_t p = (size_t)(rng >> 33) % main_pages;
		if (check_page(p)) fail("main page %zu wrong at step %lu", p, steps);
		generation[p]++;
		main_region[p * WORDS] = seed(p) ^ generation[p];
		steps++;

		/* a page of `dropped` thrown away: zeros now, then written again */
		if (steps % 16 == 0) {
			unsigned char *pg = dropped + ((rng >> 20) % (SMALL / PAGE)) * PAGE;
			/* every other time not read first: dropped while (after a lazy restore) maybe not loaded yet */
			if (drops % 2 && pg[100] != 0x5a) fail("dropped page %p held %#x before MADV_DONTNEED", (void *)pg, pg[100]);
			madvise(pg, PAGE, MADV_DONTNEED);
			for (unsigned i = 0; i < PAGE; i++)
				if (pg[i]) { fail("dropped page %p is not zero after MADV_DONTNEED", (void *)pg); break; }
			memset(pg, 0x5a, PAGE);
			drops++;
		}
		/* `remapped` unmapped and mapped again at the same place: zeros, then refilled */
		if (steps % 4096 == 0) {
			if (remapped[SMALL / 2] != 0xa5) fail("remapped region held %#x before munmap", remapped[SMALL / 2]);
			munmap(remapped, SMALL);
			unsigned char *again = mmap(remapped, SMALL, PROT_READ | PROT_WRITE,
						    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (again == MAP_FAILED) again = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (again == MAP_FAILED) { fail("mmap after munmap failed"); break; }
			remapped = again;
			for (unsigned i = 0; i < SMALL; i += PAGE)
				if (remapped[i]) { fail("a new mapping is not zero"); break; }
			memset(remapped, 0xa5, SMALL);
			remaps++;
		}
		double t = now();
		/* `moving` swaps places with the reserved spare range */
		if (t - last_move > 0.03) {
			unsigned char *to = mremap(moving, MOVING, MOVING, MREMAP_MAYMOVE | MREMAP_FIXED, spare);
			if (to == MAP_FAILED) { fail("mremap failed"); break; }
			spare = mmap(moving, MOVING, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			moving = to;
			if (!moving_ok(moving)) fail("the moved region lost its contents after move %lu", moves);
			moves++;
			last_move = t;
		}
		if (t - last_fork > 0.05) {
			pid_t child = fork();
			if (child == 0) {
				failbuf[0] = 0;
				_exit(check_all("forked child") ? 1 : 0);
			}
			int status = 0;
			pid_t got;
			do got = child < 0 ? -1 : waitpid(child, &status, 0); while (got < 0 && errno == EINTR);
			if (child < 0) fail("fork failed");
			else if (got != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
				fail("a forked child found wrong memory (status %#x)", status);
			forks++;
			last_fork = now();
		}
	}
	check_all("final check");
	printf("STEPS %lu forks %lu moves %lu drops %lu remaps %lu\n", steps, forks, moves, drops, remaps);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
