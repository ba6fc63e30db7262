/*
 * shmem: shared memory that only children wrote, across checkpoint/restore.
 *
 * A dump that reads shared memory from one process's page table misses the
 * pages only other processes touched. Here the root (a session leader) maps,
 * before forking, and never touches what its children write:
 *   A  16 pages MAP_SHARED|MAP_ANONYMOUS: the root writes page 0, child 1
 *      pages 5, 9, 15; child 2 only reads page 12 and makes its own view
 *      read-only (mprotect), so restore must keep the object writable
 *   B  8 pages MAP_SHARED of /dev/zero: child 2 writes pages 3 and 7
 *   C  8 pages MAP_SHARED|MAP_ANONYMOUS: the root unmaps its first 2 pages
 *      after the fork (its view starts at offset 2 pages); child 2 writes
 *      pages 0 and 7 (page 0 is in no view of the root)
 *   M  8 pages of a memfd, MAP_SHARED, descriptor closed: child 1 writes page 4
 *   T  4 pages of /dev/shm/cryo-shmem-PID, MAP_SHARED: child 1 writes page 2
 * and child 2 maps its own D (4 pages MAP_SHARED|MAP_ANONYMOUS) after the
 * fork and writes page 2. Every page nobody wrote must read zero.
 *
 * On SIGTERM the root checks everything from its side, then child 1 checks
 * from its side and writes A page 5 and B page 3 anew (the root must see
 * both), then child 2 checks, makes A writable again and writes A page 10
 * and C page 2 (the root must see both). PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define ROOT_TAG 1u
#define K1_TAG 2u
#define K2_TAG 3u
#define AGAIN_TAG 4u  /* written after restore */

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: pid %d: %s: %s\n", (int)getpid(), what, strerror(errno)); exit(2); }

static uint32_t word(uint32_t tag, int page, size_t i) { return (tag * 0x01000193u) ^ ((uint32_t)page << 16) ^ (uint32_t)i; }

static void fill(char *base, int page, uint32_t tag)
{
	uint32_t *w = (uint32_t *)(base + (size_t)page * PAGE);
	for (size_t i = 0; i < PAGE / 4; i++) w[i] = word(tag, page, i);
}

/* Page `page` of `base` (numbered as in the object, `first` being the view's
 * first page) must hold `tag`'s pattern, or zeros when tag is 0. */
static void expect(const char *who, const char *name, char *base, int first, int page, uint32_t tag)
{
	const uint32_t *w = (const uint32_t *)(base + (size_t)(page - first) * PAGE);
	for (size_t i = 0; i < PAGE / 4; i++) {
		uint32_t want = tag ? word(tag, page, i) : 0;
		if (w[i] != want) {
			fail("%s: %s page %d word %zu is %#x, want %#x (%s)", who, name, page, i, w[i], want,
			     tag ? "a write lost" : "should be zero");
			return;
		}
	}
}

static char *A, *B, *C, *M, *T, *D;

/* Everything as dumped, from any process (`c_first`: the first page of its view of C;
 * `k1_again`: child 1 has written A page 5 and B page 3 anew since). */
static void check_all(const char *who, int c_first, int k1_again)
{
	for (int p = 0; p < 16; p++)
		expect(who, "A", A, 0, p, p == 0 ? ROOT_TAG : (p == 5 && k1_again) ? AGAIN_TAG : (p == 5 || p == 9 || p == 15) ? K1_TAG : 0);
	for (int p = 0; p < 8; p++) expect(who, "B", B, 0, p, (p == 3 && k1_again) ? AGAIN_TAG : (p == 3 || p == 7) ? K2_TAG : 0);
	for (int p = c_first; p < 8; p++) expect(who, "C", C, c_first, p, (p == 0 || p == 7) ? K2_TAG : 0);
	for (int p = 0; p < 8; p++) expect(who, "M", M, 0, p, p == 4 ? K1_TAG : 0);
	for (int p = 0; p < 4; p++) expect(who, "T", T, 0, p, p == 2 ? K1_TAG : 0);
}

static void reply(int out, char step)
{
	dprintf(out, failbuf[0] ? "%c FAIL %s\n" : "%c OK\n", step, failbuf);
	failbuf[0] = 0;
}

static char wait_step(int in)
{
	char c = 0;
	ssize_t r;
	while ((r = read(in, &c, 1)) < 0 && errno == EINTR)   /* the children sit here while dumped */
		;
	return r == 1 ? c : 0;
}

static void child1(int in, int out)
{
	fill(A, 5, K1_TAG);
	fill(A, 9, K1_TAG);
	fill(A, 15, K1_TAG);
	fill(M, 4, K1_TAG);
	fill(T, 2, K1_TAG);
	dprintf(out, "ready\n");
	if (wait_step(in) != 'a') _exit(1);
	check_all("child 1", 0, 0);
	fill(A, 5, AGAIN_TAG);
	fill(B, 3, AGAIN_TAG);
	reply(out, 'a');
	_exit(0);
}

static void child2(int in, int out)
{
	fill(B, 3, K2_TAG);
	fill(B, 7, K2_TAG);
	fill(C, 0, K2_TAG);
	fill(C, 7, K2_TAG);
	volatile uint32_t sink = *(volatile uint32_t *)(A + 12 * PAGE);   /* a read fault: a zero page in the object */
	(void)sink;
	if (mprotect(A, 16 * PAGE, PROT_READ) != 0) die("mprotect A");
	D = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (D == MAP_FAILED) die("mmap D");
	fill(D, 2, K2_TAG);
	dprintf(out, "ready\n");
	if (wait_step(in) != 'b') _exit(1);
	check_all("child 2", 0, 1);
	for (int p = 0; p < 4; p++) expect("child 2", "D", D, 0, p, p == 2 ? K2_TAG : 0);
	if (mprotect(A, 16 * PAGE, PROT_READ | PROT_WRITE) != 0) fail("child 2: mprotect(A, PROT_WRITE) after restore: %s", strerror(errno));
	else fill(A, 10, AGAIN_TAG);
	fill(C, 2, AGAIN_TAG);
	reply(out, 'b');
	_exit(0);
}

static void expect_reply(int in, char step)
{
	char line[4200];
	int rc = read_line(in, line, sizeof(line), 10);
	if (rc < 0) { fail("no reply %c from a child (%s)", step, rc == -3 ? "timed out" : strerror(errno)); return; }
	if (line[0] != step || (strcmp(line + 1, " OK") != 0 && strncmp(line + 1, " FAIL ", 6) != 0)) {
		fail("reply %c is \"%.80s\"", step, line);
		return;
	}
	if (line[2] == 'F') fail("%s", line + 7);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	for (int i = 3; i < 1024; i++) close(i);
	pid_t root = getpid();
	if (getsid(0) != root) { fprintf(stderr, "setup: not a session leader\n"); return 2; }

	A = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int zero = open("/dev/zero", O_RDWR);
	if (zero < 0) die("/dev/zero");
	B = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, zero, 0);
	close(zero);
	C = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int memfd = memfd_create("cryo-shmem", MFD_CLOEXEC);
	if (memfd < 0 || ftruncate(memfd, 8 * PAGE) != 0) die("memfd");
	M = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	close(memfd);
	char tmpfs[64];
	snprintf(tmpfs, sizeof(tmpfs), "/dev/shm/cryo-shmem-%d", (int)root);
	int tfd = open(tmpfs, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (tfd < 0 || ftruncate(tfd, 4 * PAGE) != 0) die(tmpfs);
	T = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, 0);
	close(tfd);
	if (A == MAP_FAILED || B == MAP_FAILED || C == MAP_FAILED || M == MAP_FAILED || T == MAP_FAILED) die("mmap");
	fill(A, 0, ROOT_TAG);

	int to1[2], to2[2], back[2];
	if (pipe(to1) != 0 || pipe(to2) != 0 || pipe(back) != 0) die("pipe");
	pid_t k1 = fork();
	if (k1 < 0) die("fork");
	if (k1 == 0) { close(to1[1]); close(to2[0]); close(to2[1]); close(back[0]); child1(to1[0], back[1]); }
	char line[256];
	if (read_line(back[0], line, sizeof(line), 10) < 0 || strcmp(line, "ready") != 0) { fprintf(stderr, "setup: child 1 did not get ready\n"); return 2; }
	pid_t k2 = fork();
	if (k2 < 0) die("fork");
	if (k2 == 0) { close(to2[1]); close(to1[0]); close(to1[1]); close(back[0]); child2(to2[0], back[1]); }
	close(to1[0]);
	close(to2[0]);
	close(back[1]);
	if (read_line(back[0], line, sizeof(line), 10) < 0 || strcmp(line, "ready") != 0) { fprintf(stderr, "setup: child 2 did not get ready\n"); return 2; }
	if (munmap(C, 2 * PAGE) != 0) die("munmap C");
	C += 2 * PAGE;

	printf("PIDS %d %d %d\n", (int)root, (int)k1, (int)k2);
	printf("READY\n");
	fflush(stdout);
	sigset_t wait_mask = old;
	sigdelset(&wait_mask, SIGTERM);
	while (!got_term)
		sigsuspend(&wait_mask);

	check_all("root", 2, 0);
	char self[96], link[256] = "";
	snprintf(self, sizeof(self), "/proc/self/map_files/%lx-%lx", (unsigned long)A, (unsigned long)A + 16 * PAGE);
	if (readlink(self, link, sizeof(link) - 1) < 0 || strcmp(link, "/dev/zero (deleted)") != 0)
		fail("root: A is \"%s\", want \"/dev/zero (deleted)\"", link);

	if (write(to1[1], "a", 1) != 1) fail("root: write to child 1: %s", strerror(errno));
	expect_reply(back[0], 'a');
	expect("root", "A", A, 0, 5, AGAIN_TAG);
	expect("root", "B", B, 0, 3, AGAIN_TAG);
	if (write(to2[1], "b", 1) != 1) fail("root: write to child 2: %s", strerror(errno));
	expect_reply(back[0], 'b');
	expect("root", "A", A, 0, 10, AGAIN_TAG);
	expect("root", "C", C, 2, 2, AGAIN_TAG);

	for (int i = 0; i < 2; i++) {
		pid_t kid = i ? k2 : k1;
		int st = 0;
		pid_t w = 0;
		double deadline = now() + 5;
		while ((w = waitpid(kid, &st, WNOHANG)) == 0 && now() < deadline)
			usleep(2000);
		if (w != kid) fail("root: waitpid(child %d): %s", (int)kid, w == 0 ? "still running" : strerror(errno));
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("root: child %d ended with status %#x", (int)kid, st);
	}
	unlink(tmpfs);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
