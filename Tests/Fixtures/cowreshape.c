/*
 * cowreshape: copy-on-write sharing after fork where a child's heap is no
 * longer the parent's mapping, across checkpoint/restore.
 *
 * The parent grows its heap (sbrk) by 64 MiB and fills every page with a
 * pattern, then forks 3 children. After the fork:
 *   - child 1 grows its heap by 1 MiB with sbrk and fills the new pages with
 *     its mark;
 *   - child 2 makes heap pages 4096..8191 read-only (mprotect);
 *   - child 3 unmaps heap pages 8192..12287 and advises pages 12288..12799
 *     MADV_NOHUGEPAGE;
 *   - child k writes its mark into pages 1000k..1000k+7 and drops page 300
 *     (MADV_DONTNEED: it reads zero there);
 *   - the parent writes its mark into pages 100..109 and grows its heap by
 *     256 KiB filled with its mark (its heap ends above every child's but 1).
 * PIDS parent children..., READY. On SIGTERM the parent signals each child;
 * everyone checks every word of its heap, the end of its heap (sbrk(0)), the
 * read-only range (child 2, in /proc/self/maps) and the hole (child 3, with
 * mincore); children exit 0 or print a FAIL line and exit 1; the parent waits
 * for them. PASS or "FAIL: reasons".
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

#define PAGE        4096
#define PAGES       16384   /* 64 MiB */
#define CHILDREN    3
#define WORDS       (PAGE / 8)
#define CHILD_GROW  256     /* child 1's sbrk after fork, in pages */
#define PARENT_GROW 64      /* the parent's */
#define RO_FIRST    4096    /* child 2: read-only pages */
#define RO_END      8192
#define HOLE_FIRST  8192    /* child 3: unmapped pages */
#define HOLE_END    12288
#define NOHUGE_END  12800   /* child 3: MADV_NOHUGEPAGE from HOLE_END */

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static uint64_t *heap;   /* page-aligned start of the 64 MiB */

static uint64_t pattern(size_t page, size_t word) { return (page * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^ 0x5a5a; }
static uint64_t mark(int who, size_t page, size_t word) { return pattern(page, word) ^ (0xC0DE000000000000ull | (uint64_t)(who + 1) << 32); }

static void fill(size_t page, int who)
{
	for (size_t w = 0; w < WORDS; w++) heap[page * WORDS + w] = who < 0 ? pattern(page, w) : mark(who, page, w);
}

static size_t heap_pages(int who) { return PAGES + (who == 0 ? PARENT_GROW : who == 1 ? CHILD_GROW : 0); }

/* Whether page `page` is mapped in process `who`. */
static int mapped(int who, size_t page) { return !(who == 3 && page >= HOLE_FIRST && page < HOLE_END); }

/* Word `w` of page `page` in process `who` (0: the parent, k: child k). */
static uint64_t expected(int who, size_t page, size_t w)
{
	if (who == 0) {
		if ((page >= 100 && page < 110) || page >= PAGES) return mark(0, page, w);
		return pattern(page, w);
	}
	if ((page >= (size_t)1000 * who && page < (size_t)1000 * who + 8) || page >= PAGES) return mark(who, page, w);
	if (page == 300) return 0;
	return pattern(page, w);
}

/* The permissions /proc/self/maps shows for the mapping that holds `address`, and its range. */
static int permissions_at(uintptr_t address, char perms[5], uintptr_t *start, uintptr_t *end)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f) return -1;
	char line[512];
	int found = -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char p[5];
		if (sscanf(line, "%lx-%lx %4s", &s, &e, p) == 3 && s <= address && address < e) {
			memcpy(perms, p, 5);
			*start = s;
			*end = e;
			found = 0;
			break;
		}
	}
	fclose(f);
	return found;
}

static void check(int who)
{
	const char *name = who ? "child" : "parent";
	char *want_end = (char *)heap + heap_pages(who) * PAGE;
	if ((char *)sbrk(0) != want_end) fail("%s %d: heap ends at %p, want %p", name, who, sbrk(0), (void *)want_end);
	int bad = 0;
	for (size_t page = 0; page < heap_pages(who) && bad < 3; page++) {
		if (!mapped(who, page)) continue;
		for (size_t w = 0; w < WORDS; w++) {
			uint64_t want = expected(who, page, w), got = heap[page * WORDS + w];
			if (got != want) {
				fail("%s %d: page %zu word %zu is %#llx, want %#llx", name, who, page, w,
				     (unsigned long long)got, (unsigned long long)want);
				bad++;
				break;
			}
		}
	}
	if (who == 2) {
		char perms[5];
		uintptr_t s = 0, e = 0, at = (uintptr_t)heap + (uintptr_t)RO_FIRST * PAGE;
		if (permissions_at(at, perms, &s, &e) != 0) fail("child 2: no mapping at %#lx", (unsigned long)at);
		else if (strncmp(perms, "r--p", 4) != 0 || s != at || e != (uintptr_t)heap + (uintptr_t)RO_END * PAGE)
			fail("child 2: the read-only range is %#lx-%#lx %s, want %#lx-%#lx r--p", (unsigned long)s, (unsigned long)e, perms,
			     (unsigned long)at, (unsigned long)((uintptr_t)heap + (uintptr_t)RO_END * PAGE));
		if (permissions_at(at - PAGE, perms, &s, &e) != 0 || strncmp(perms, "rw-p", 4) != 0)
			fail("child 2: the page below the read-only range is not rw-p");
	}
	if (who == 3) {
		unsigned char vec[HOLE_END - HOLE_FIRST];
		if (mincore((char *)heap + (size_t)HOLE_FIRST * PAGE, (size_t)(HOLE_END - HOLE_FIRST) * PAGE, vec) == 0 || errno != ENOMEM)
			fail("child 3: the unmapped heap pages %d..%d are mapped", HOLE_FIRST, HOLE_END - 1);
		if (mincore((char *)heap + (size_t)(HOLE_FIRST - 1) * PAGE, PAGE, vec) != 0 || mincore((char *)heap + (size_t)HOLE_END * PAGE, PAGE, vec) != 0)
			fail("child 3: the pages around the hole are not mapped: %s", strerror(errno));
	}
}

int main(void)
{
	/* No malloc may move the break past the heap below: stdout gets a static buffer, and malloc's
	 * arena is set up (below the heap) before it, big enough for fopen in check(). */
	static char outbuf[4096];
	setvbuf(stdout, outbuf, _IOLBF, sizeof(outbuf));
	free(malloc(1));
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);

	/* The heap proper (brk), from a page boundary. */
	uintptr_t top = (uintptr_t)sbrk(0);
	if (top % PAGE && sbrk((intptr_t)(PAGE - top % PAGE)) == (void *)-1) { fprintf(stderr, "setup: sbrk: %s\n", strerror(errno)); return 2; }
	heap = sbrk((intptr_t)PAGES * PAGE);
	if (heap == (void *)-1) { fprintf(stderr, "setup: sbrk: %s\n", strerror(errno)); return 2; }
	for (size_t page = 0; page < PAGES; page++) fill(page, -1);

	int ready[2];
	if (pipe(ready) != 0) { fprintf(stderr, "setup: pipe: %s\n", strerror(errno)); return 2; }
	pid_t kids[CHILDREN];
	for (int k = 1; k <= CHILDREN; k++) {
		pid_t pid = fork();
		if (pid < 0) { fprintf(stderr, "setup: fork: %s\n", strerror(errno)); return 2; }
		if (pid == 0) {
			int bad = 0;
			if (k == 1) {
				if (sbrk((intptr_t)CHILD_GROW * PAGE) == (void *)-1) bad = errno;
				else for (size_t page = PAGES; page < PAGES + CHILD_GROW; page++) fill(page, k);
			}
			for (size_t page = 1000 * k; page < 1000 * (size_t)k + 8; page++) fill(page, k);
			if (madvise((char *)heap + 300 * PAGE, PAGE, MADV_DONTNEED) != 0) bad = errno;
			if (k == 2 && mprotect((char *)heap + (size_t)RO_FIRST * PAGE, (size_t)(RO_END - RO_FIRST) * PAGE, PROT_READ) != 0) bad = errno;
			if (k == 3) {
				if (munmap((char *)heap + (size_t)HOLE_FIRST * PAGE, (size_t)(HOLE_END - HOLE_FIRST) * PAGE) != 0) bad = errno;
				if (madvise((char *)heap + (size_t)HOLE_END * PAGE, (size_t)(NOHUGE_END - HOLE_END) * PAGE, MADV_NOHUGEPAGE) != 0) bad = errno;
			}
			close(ready[0]);
			if (bad) { fprintf(stderr, "setup: child %d: %s\n", k, strerror(bad)); _exit(2); }
			if (write(ready[1], "r", 1) != 1) _exit(2);
			close(ready[1]);
			sigset_t wait_mask = old;
			sigdelset(&wait_mask, SIGTERM);
			while (!got_term) sigsuspend(&wait_mask);
			check(k);
			if (failbuf[0]) { printf("FAIL: %s\n", failbuf); _exit(1); }
			_exit(0);
		}
		kids[k - 1] = pid;
	}
	close(ready[1]);
	char c;
	for (int k = 0; k < CHILDREN; k++)
		if (read(ready[0], &c, 1) != 1) { fprintf(stderr, "setup: a child did not get ready\n"); return 2; }
	close(ready[0]);
	for (size_t page = 100; page < 110; page++) fill(page, 0);
	if (sbrk((intptr_t)PARENT_GROW * PAGE) == (void *)-1) { fprintf(stderr, "setup: sbrk: %s\n", strerror(errno)); return 2; }
	for (size_t page = PAGES; page < PAGES + PARENT_GROW; page++) fill(page, 0);

	printf("PIDS %d", (int)getpid());
	for (int k = 0; k < CHILDREN; k++) printf(" %d", (int)kids[k]);
	printf("\n");
	sigprocmask(SIG_SETMASK, &old, NULL);   /* ready_then_wait blocks SIGTERM itself */
	ready_then_wait(&got_term);

	check(0);
	for (int k = 0; k < CHILDREN; k++) {
		kill(kids[k], SIGTERM);
		int st = 0;
		if (waitpid(kids[k], &st, 0) != kids[k]) fail("waitpid(child %d): %s", (int)kids[k], strerror(errno));
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("child %d ended with status %#x", (int)kids[k], st);
	}
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
