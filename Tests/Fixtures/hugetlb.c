/*
 * hugetlb: hugetlb memory held by a root and its child, by mode (argv[1]):
 *   anon  a private MAP_HUGETLB mapping of 3 huge pages (the root wrote pages
 *         0 and 2, the child after fork its own copy of page 0) and a shared
 *         MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB one of 2 (the root wrote page
 *         0, only the child page 1)
 *   shm   a SHM_HUGETLB|SHM_NORESERVE System V segment of 3 huge pages,
 *         attached by both (the root wrote page 0, only the child page 1,
 *         nobody page 2: a dump must not take a page for it from the
 *         pool), marked for removal
 * Prints NOHUGETLB (and exits 0) when the kernel gives no huge page, else
 * "PIDS root child", "MAPPING start-end" per mapping, READY. On SIGTERM each
 * process checks every byte it should see, that the memory is still of huge
 * pages (smaps KernelPageSize), and that a huge page never touched reads zero
 * and takes a write; PASS or "FAIL: ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define HUGE (2UL << 20)
#ifndef SHM_NORESERVE
#define SHM_NORESERVE 010000
#endif
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

/* A pattern that differs per byte and per writer, so a page from the wrong place shows. */
static void fill(char *at, size_t length, int seed)
{
	for (size_t i = 0; i < length; i++) at[i] = (char)((i * 131 + (size_t)seed * 7) % 251 + 1);
}
static int same(const char *at, size_t length, int seed)
{
	for (size_t i = 0; i < length; i++)
		if (at[i] != (char)((i * 131 + (size_t)seed * 7) % 251 + 1)) return 0;
	return 1;
}
static int zero(const char *at, size_t length)
{
	for (size_t i = 0; i < length; i++)
		if (at[i]) return 0;
	return 1;
}

static void check_huge(const char *who, const char *what, void *start)
{
	long kb = page_kb(start);
	if (kb != (long)(HUGE >> 10)) fail("%s: %s at %p has pages of %ld kB, not %lu", who, what, start, kb, HUGE >> 10);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	int shm = argc > 1 && strcmp(argv[1], "shm") == 0;
	if (argc < 2 || (!shm && strcmp(argv[1], "anon") != 0)) { fprintf(stderr, "usage: hugetlb anon|shm\n"); return 2; }
	signal(SIGTERM, on_term);
	int go[2], done[2];
	if (pipe(go) != 0 || pipe(done) != 0) die("pipe");
	char *priv = NULL, *shared;
	int shmid = -1;
	if (shm) {
		shmid = shmget(IPC_PRIVATE, 3 * HUGE, IPC_CREAT | SHM_HUGETLB | SHM_NORESERVE | 0600);
		if (shmid < 0) { printf("NOHUGETLB shmget(SHM_HUGETLB): %s\n", strerror(errno)); return 0; }
		shared = shmat(shmid, NULL, 0);
		if (shared == (void *)-1) die("shmat");
		shmctl(shmid, IPC_RMID, NULL);
	} else {
		priv = mmap(NULL, 3 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (priv == MAP_FAILED) { printf("NOHUGETLB mmap(MAP_HUGETLB): %s\n", strerror(errno)); return 0; }
		shared = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (shared == MAP_FAILED) { printf("NOHUGETLB mmap(MAP_SHARED|MAP_HUGETLB): %s\n", strerror(errno)); return 0; }
		fill(priv, HUGE, 1);
		fill(priv + 2 * HUGE + 3 * 4096, 5 * 4096, 2);
	}
	fill(shared, HUGE, 3);
	pid_t kid = fork();
	if (kid < 0) die("fork");
	if (kid == 0) {
		fill(shared + HUGE + 8192, 3 * 4096, 4);          /* only the child writes this page */
		if (priv) fill(priv + 4096, 4096, 5);              /* its own copy of the root's page 0 */
		char c;
		while (read(go[0], &c, 1) < 0 && errno == EINTR)
			;
		if (!same(shared, HUGE, 3)) fail("child: shared page 0 lost the root's bytes");
		if (!same(shared + HUGE + 8192, 3 * 4096, 4)) fail("child: shared page 1 lost the child's bytes");
		check_huge("child", "shared memory", shared);
		if (priv) {
			char expect[4096];
		fill(expect, sizeof(expect), 1);
		int lost = memcmp(priv, expect, 4096) != 0;
		for (size_t at = 8192; at < HUGE && !lost; at += 4096) {
			/* fill()'s pattern repeats every 251 bytes: page `at` of it, as the root wrote it. */
			for (size_t i = 0; i < 4096 && !lost; i++) lost = priv[at + i] != (char)(((at + i) * 131 + 7) % 251 + 1);
		}
		if (lost) fail("child: private page 0 lost the inherited bytes");
			if (!same(priv + 4096, 4096, 5)) fail("child: private page 0 lost the child's own bytes");
			if (!same(priv + 2 * HUGE + 3 * 4096, 5 * 4096, 2)) fail("child: private page 2 lost the inherited bytes");
			check_huge("child", "private memory", priv);
		}
		dprintf(done[1], "%s\n", failbuf[0] ? failbuf : "OK");
		_exit(0);
	}
	printf("PIDS %d %d\n", (int)getpid(), (int)kid);
	if (priv) printf("MAPPING %lx-%lx\n", (unsigned long)priv, (unsigned long)priv + 3 * HUGE);
	printf("MAPPING %lx-%lx\n", (unsigned long)shared, (unsigned long)shared + (shm ? 3 : 2) * HUGE);
	ready_then_wait(&got_term);

	if (write(go[1], "g", 1) != 1) fail("root: write to the child: %s", strerror(errno));
	char line[4200];
	if (read_line(done[0], line, sizeof(line), 20) < 0) fail("root: no reply from the child");
	else if (strcmp(line, "OK") != 0) fail("%s", line);
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("root: the child ended badly (%#x)", st);
	/* The child has exited: its pages of the shared memory stay in the object. */
	if (!same(shared, HUGE, 3)) fail("root: shared page 0 lost its bytes");
	if (!zero(shared + HUGE, 8192) || !same(shared + HUGE + 8192, 3 * 4096, 4)) fail("root: shared page 1 lost what the child wrote");
	check_huge("root", "shared memory", shared);
	if (shm) {
		if (!zero(shared + 2 * HUGE, HUGE)) fail("root: segment page 2, never written, is not zero");
		fill(shared + 2 * HUGE, 4096, 7);
		if (!same(shared + 2 * HUGE, 4096, 7)) fail("root: a write to segment page 2 did not stick");
	}
	if (priv) {
		if (!same(priv, HUGE, 1)) fail("root: private page 0 lost its bytes");
		if (!zero(priv + HUGE, HUGE)) fail("root: private page 1, never written, is not zero");
		if (!zero(priv + 2 * HUGE, 3 * 4096) || !same(priv + 2 * HUGE + 3 * 4096, 5 * 4096, 2)) fail("root: private page 2 lost its bytes");
		fill(priv + HUGE, 4096, 6);                         /* the reserved, untouched page takes a write */
		if (!same(priv + HUGE, 4096, 6)) fail("root: a write to private page 1 did not stick");
		check_huge("root", "private memory", priv);
	}
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
