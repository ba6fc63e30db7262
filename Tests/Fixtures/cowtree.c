/*
 * cowtree: a parent and 3 children sharing 64 MiB of private anonymous
 * memory copy-on-write since fork, across checkpoint/restore.
 *
 * Before the fork the parent fills pages 0..16383 of a 64 MiB private
 * anonymous mapping with a pattern, except pages 200..209 (never touched).
 * After the fork:
 *   - child k (1..3) writes its own mark into pages 1000k..1000k+7 (they
 *     differ from the parent's), writes page 205, and drops page 300 with
 *     MADV_DONTNEED (it reads zero there, the parent does not);
 *   - the parent writes its mark into pages 100..109 and into the untouched
 *     pages 200..204 (the children must still see the pattern, or zero).
 * PIDS parent children..., READY. On SIGTERM the parent signals each child;
 * everyone checks every word of the mapping; children exit 0 or print a FAIL
 * line and exit 1; the parent waits for them. PASS or "FAIL: reasons".
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

#define PAGE     4096
#define PAGES    16384   /* 64 MiB */
#define CHILDREN 3
#define WORDS    (PAGE / 8)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static uint64_t *mem;

static uint64_t pattern(size_t page, size_t word) { return (page * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^ 0x5a5a; }
static uint64_t mark(int who, size_t page, size_t word) { return pattern(page, word) ^ (0xC0DE000000000000ull | (uint64_t)(who + 1) << 32); }

static void fill(size_t page, uint64_t (*value)(int, size_t, size_t), int who)
{
	for (size_t w = 0; w < WORDS; w++) mem[page * WORDS + w] = value ? value(who, page, w) : pattern(page, w);
}

/* What page `page` holds in process `who` (0: the parent, k: child k), word `w`. */
static uint64_t expected(int who, size_t page, size_t w)
{
	if (who == 0) {
		if (page >= 100 && page < 110) return mark(0, page, w);
		if (page >= 200 && page < 205) return mark(0, page, w);
		if (page >= 200 && page < 210) return 0;
		return pattern(page, w);
	}
	if (page >= (size_t)1000 * who && page < (size_t)1000 * who + 8) return mark(who, page, w);
	if (page == 205) return mark(who, page, w);
	if (page == 300) return 0;
	if (page >= 200 && page < 210) return 0;
	return pattern(page, w);
}

static void check(int who)
{
	int bad = 0;
	for (size_t page = 0; page < PAGES && bad < 3; page++)
		for (size_t w = 0; w < WORDS; w++) {
			uint64_t want = expected(who, page, w), got = mem[page * WORDS + w];
			if (got != want) {
				fail("%s %d: page %zu word %zu is %#llx, want %#llx", who ? "child" : "parent", who, page, w,
				     (unsigned long long)got, (unsigned long long)want);
				bad++;
				break;
			}
		}
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);

	mem = mmap(NULL, (size_t)PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) { fprintf(stderr, "setup: mmap: %s\n", strerror(errno)); return 2; }
	for (size_t page = 0; page < PAGES; page++)
		if (page < 200 || page >= 210) fill(page, NULL, 0);

	int ready[2];
	if (pipe(ready) != 0) { fprintf(stderr, "setup: pipe: %s\n", strerror(errno)); return 2; }
	pid_t kids[CHILDREN];
	for (int k = 1; k <= CHILDREN; k++) {
		pid_t pid = fork();
		if (pid < 0) { fprintf(stderr, "setup: fork: %s\n", strerror(errno)); return 2; }
		if (pid == 0) {
			for (size_t page = 1000 * k; page < 1000 * (size_t)k + 8; page++) fill(page, mark, k);
			fill(205, mark, k);
			madvise((char *)mem + 300 * PAGE, PAGE, MADV_DONTNEED);
			close(ready[0]);
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
	for (size_t page = 100; page < 110; page++) fill(page, mark, 0);
	for (size_t page = 200; page < 205; page++) fill(page, mark, 0);

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
