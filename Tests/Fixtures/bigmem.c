/*
 * bigmem: large anonymous mapping, three quarters written, one quarter never
 * touched.
 *
 * argv[1] is the mapping size in MiB (default 2048).  Every 8-byte word of
 * the first three quarters gets a value derived from its page index and its
 * position in the page.  The last quarter is never read or written before
 * SIGTERM, so a dumper that walks only populated pages leaves it out of the
 * image.  "MAP <hexaddr> <bytes>" is printed before READY.
 *
 * argv[2] picks what the words hold: "words" (default: seed + word * odd
 * constant, barely compressible), "text" (7/8 of each page a repeated
 * pattern: compresses several times) or "random" (splitmix64 output:
 * incompressible).
 *
 * SIGUSR1 rewrites the first 1% of the pages with a new generation of values
 * (for pre-copy: memory written between pre-dump and dump) and prints
 * "REWROTE <generation>".
 *
 * SIGUSR2 is answered with a "PONG" line (Scripts/bench.sh: is it running?).
 *
 * argv[3] "seccomp" installs a seccomp filter that kills the process on
 * pwritev(), which bigmem never calls: a dumper must not run code of its own
 * in the process outside ptrace's suspension of the filter.
 *
 * On SIGTERM: the untouched quarter must still be (almost entirely)
 * non-resident, every written word must hold its value, and the untouched
 * quarter must read as zeros.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, got_usr1;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
/* Scripts/bench.sh asks whether the (restored) process runs: it answers on stdout. */
static void on_usr2(int sig) { (void)sig; (void)!write(1, "PONG\n", 5); }
enum pattern { WORDS, TEXT, RANDOM };
static enum pattern pattern = WORDS;
static uint64_t generation;   /* of the first rewrite_pages pages */
static size_t rewrite_pages;



static inline uint64_t page_seed(uint64_t page)
{
	uint64_t x = page + 0x9e3779b97f4a7c15ull;
	x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27; x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static inline uint64_t word_value(uint64_t seed, uint64_t w)
{
	return seed + w * 0xd1342543de82ef95ull;
}

static inline uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* What word w of page p holds. */
static inline uint64_t expected(size_t p, uint64_t seed, uint64_t w)
{
	uint64_t v;
	switch (pattern) {
	case TEXT: v = (w % 64) < 8 ? word_value(seed, w) : 0x2074786574206f79ull + (w & 3); break;
	case RANDOM: v = splitmix(seed ^ (w << 40)); break;
	default: v = word_value(seed, w);
	}
	if (p < rewrite_pages && generation) v ^= generation * 0x9e3779b97f4a7c15ull;
	return v;
}

int main(int argc, char **argv)
{
	unsigned long mib = 2048;
	if (argc > 1) {
		char *end;
		mib = strtoul(argv[1], &end, 10);
		if (*end || mib < 4) { fprintf(stderr, "bad size %s\n", argv[1]); return 2; }
	}
	if (argc > 2) {
		if (!strcmp(argv[2], "text")) pattern = TEXT;
		else if (!strcmp(argv[2], "random")) pattern = RANDOM;
		else if (strcmp(argv[2], "words")) { fprintf(stderr, "bad pattern %s\n", argv[2]); return 2; }
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) { perror("sigaction"); return 1; }
	sa.sa_handler = on_usr1;
	if (sigaction(SIGUSR1, &sa, NULL) != 0) { perror("sigaction"); return 1; }
	sa.sa_handler = on_usr2;
	if (sigaction(SIGUSR2, &sa, NULL) != 0) { perror("sigaction"); return 1; }

	long psz = sysconf(_SC_PAGESIZE);
	size_t size = (size_t)mib << 20;
	size_t npages = size / (size_t)psz;
	size_t touched_pages = npages / 4 * 3;
	size_t words_per_page = (size_t)psz / 8;
	rewrite_pages = npages / 100;

	uint64_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED) { perror("mmap"); return 1; }

	for (size_t p = 0; p < touched_pages; p++) {
		uint64_t seed = page_seed(p);
		uint64_t *pg = map + p * words_per_page;
		for (size_t w = 0; w < words_per_page; w++)
			pg[w] = expected(p, seed, w);
	}

	if (argc > 3) {
		if (strcmp(argv[3], "seccomp")) { fprintf(stderr, "bad option %s\n", argv[3]); return 2; }
		struct sock_filter code[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pwritev, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
			perror("seccomp");
			return 1;
		}
	}

	printf("MAP %lx %zu\n", (unsigned long)map, size);
	printf("READY\n");
	fflush(stdout);

	sigset_t empty;
	sigemptyset(&empty);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	while (!got_term) {
		sigsuspend(&empty);          /* returns -1/EINTR after each handler */
		if (got_usr1) {
			got_usr1 = 0;
			generation++;
			for (size_t p = 0; p < rewrite_pages && p < touched_pages; p++) {
				uint64_t seed = page_seed(p);
				uint64_t *pg = map + p * words_per_page;
				for (size_t w = 0; w < words_per_page; w++)
					pg[w] = expected(p, seed, w);
			}
			printf("REWROTE %llu\n", (unsigned long long)generation);
			fflush(stdout);
		}
	}
	sigprocmask(SIG_UNBLOCK, &block, NULL);

	/* 1. the untouched quarter must not have been populated by dump/restore.
	 *    Allow some slack at its start: a transparent huge page faulted in
	 *    for the end of the written part may reach into it. */
	unsigned char *untouched = (unsigned char *)map + touched_pages * (size_t)psz;
	size_t untouched_pages = npages - touched_pages;
	unsigned char *vec = malloc(untouched_pages);
	if (!vec) { perror("malloc"); return 1; }
	if (mincore(untouched, untouched_pages * (size_t)psz, vec) != 0) {
		fail("mincore: %s", strerror(errno));
	} else {
		size_t slack = (4u << 20) / (size_t)psz, resident = 0, first = 0;
		for (size_t i = slack; i < untouched_pages; i++)
			if (vec[i] & 1) { if (!resident) first = i; resident++; }
		if (resident)
			fail("%zu pages of the never-touched quarter are resident (first at page %zu of it)",
			     resident, first);
	}

	/* 2. every written word */
	size_t bad_pages = 0, first_bad = 0;
	for (size_t p = 0; p < touched_pages; p++) {
		uint64_t seed = page_seed(p);
		const uint64_t *pg = map + p * words_per_page;
		for (size_t w = 0; w < words_per_page; w++)
			if (pg[w] != expected(p, seed, w)) {
				if (!bad_pages) first_bad = p;
				bad_pages++;
				break;
			}
	}
	if (bad_pages)
		fail("%zu of %zu written pages have wrong contents (first: page %zu)",
		     bad_pages, touched_pages, first_bad);

	/* 3. the untouched quarter reads as zeros */
	size_t nonzero = 0;
	const uint64_t *u = (const uint64_t *)untouched;
	for (size_t i = 0; i < untouched_pages * words_per_page; i++)
		if (u[i]) { nonzero++; i |= words_per_page - 1; }
	if (nonzero)
		fail("%zu pages of the never-touched quarter are not zero", nonzero);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
