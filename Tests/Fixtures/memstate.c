/*
 * memstate: memory whose state is more than its bytes, across checkpoint/restore.
 *
 *   - one page each with data, then made PROT_NONE, PROT_WRITE only,
 *     PROT_EXEC only and PROT_READ only: protection and data must come back
 *     (the PROT_NONE page is opened again to be read)
 *   - 3000 one-page mappings with data, protections cycling r, rw, none so
 *     that none merges with its neighbour
 *   - madvise: MADV_DONTFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
 *     MADV_WIPEONFORK, MADV_SEQUENTIAL, MADV_RANDOM each on a region with
 *     data: VmFlags dc, dd, hg, nh, wf, sr, rr
 *     in /proc/self/smaps after restore, and a fork after restore must not
 *     see the DONTFORK region and must see the WIPEONFORK one zeroed
 *   - prctl(PR_SET_THP_DISABLE): PR_GET_THP_DISABLE still says so
 * READY, then on SIGTERM the checks: PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define SMALL 3000

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static uint32_t word(int tag, size_t i) { return (uint32_t)tag * 0x9e3779b1u ^ (uint32_t)i; }

static void fill(char *p, size_t bytes, int tag)
{
	for (size_t i = 0; i < bytes / 4; i++) ((uint32_t *)p)[i] = word(tag, i);
}

static int holds(const char *p, size_t bytes, int tag)
{
	for (size_t i = 0; i < bytes / 4; i++)
		if (((const uint32_t *)p)[i] != word(tag, i)) return 0;
	return 1;
}

static char *map(size_t bytes, size_t align)
{
	char *p = mmap(NULL, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) die("mmap");
	if (align) {
		char *aligned = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
		if (aligned > p) munmap(p, (size_t)(aligned - p));
		munmap(aligned + bytes, (size_t)(p + align - aligned));
		p = aligned;
	}
	return p;
}

static void expect_perms(const char *name, const void *p, const char *want)
{
	char perms[5], flags[512];
	vma_info(p, perms, flags, sizeof(flags));
	if (strcmp(perms, want) != 0) fail("%s: permissions %s, want %s", name, perms, want);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_term);

	struct { const char *name; int prot; const char *perms; char *p; } prots[] = {
		{ "PROT_NONE page", PROT_NONE, "---p", NULL },
		{ "PROT_WRITE page", PROT_WRITE, "-w-p", NULL },
		{ "PROT_EXEC page", PROT_EXEC, "--xp", NULL },
		{ "PROT_READ page", PROT_READ, "r--p", NULL },
	};
	for (int i = 0; i < 4; i++) {
		prots[i].p = map(PAGE, 0);
		fill(prots[i].p, PAGE, 10 + i);
		if (mprotect(prots[i].p, PAGE, prots[i].prot) != 0) die("mprotect");
	}

	/* Reserved as one range, then remapped page by page so they sit side by side. */
	char *small = map((size_t)SMALL * PAGE, 0);
	static const int cycle[] = { PROT_READ, PROT_READ | PROT_WRITE, PROT_NONE };
	for (int i = 0; i < SMALL; i++) {
		char *p = small + (size_t)i * PAGE;
		fill(p, PAGE, 100 + i);
		if (mprotect(p, PAGE, cycle[i % 3]) != 0) die("mprotect small");
	}

	struct { const char *name; int advice; const char *flag; size_t bytes; size_t align; char *p; } advised[] = {
		{ "MADV_DONTFORK", MADV_DONTFORK, "dc", 4 * PAGE, 0, NULL },
		{ "MADV_DONTDUMP", MADV_DONTDUMP, "dd", 4 * PAGE, 0, NULL },
		{ "MADV_HUGEPAGE", MADV_HUGEPAGE, "hg", 2 << 20, 2 << 20, NULL },
		{ "MADV_NOHUGEPAGE", MADV_NOHUGEPAGE, "nh", 4 * PAGE, 0, NULL },
		{ "MADV_WIPEONFORK", MADV_WIPEONFORK, "wf", 4 * PAGE, 0, NULL },
		{ "MADV_SEQUENTIAL", MADV_SEQUENTIAL, "sr", 4 * PAGE, 0, NULL },
		{ "MADV_RANDOM", MADV_RANDOM, "rr", 4 * PAGE, 0, NULL },
	};
	const int advised_count = (int)(sizeof(advised) / sizeof(advised[0]));
	for (int i = 0; i < advised_count; i++) {
		advised[i].p = map(advised[i].bytes, advised[i].align);
		if (madvise(advised[i].p, advised[i].bytes, advised[i].advice) != 0) die(advised[i].name);
		fill(advised[i].p, advised[i].bytes, 50 + i);
	}
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) die("PR_SET_THP_DISABLE");

	printf("READY\n");
	while (!got_term) pause();

	for (int i = 0; i < 4; i++) {
		expect_perms(prots[i].name, prots[i].p, prots[i].perms);
		if (mprotect(prots[i].p, PAGE, PROT_READ) != 0) fail("%s: mprotect(PROT_READ): %s", prots[i].name, strerror(errno));
		else if (!holds(prots[i].p, PAGE, 10 + i)) fail("%s: its data was lost", prots[i].name);
	}
	int small_bad = 0;
	for (int i = 0; i < SMALL; i++) {
		char *p = small + (size_t)i * PAGE;
		static const char *want[] = { "r--p", "rw-p", "---p" };
		char perms[5], flags[512];
		if (i % 97 == 0) {   /* smaps is long: sample the permissions */
			vma_info(p, perms, flags, sizeof(flags));
			if (strcmp(perms, want[i % 3]) != 0 && small_bad++ < 3) fail("small mapping %d: permissions %s, want %s", i, perms, want[i % 3]);
		}
		if (mprotect(p, PAGE, PROT_READ) != 0) { if (small_bad++ < 3) fail("small mapping %d: mprotect: %s", i, strerror(errno)); continue; }
		if (!holds(p, PAGE, 100 + i) && small_bad++ < 3) fail("small mapping %d: its data was lost", i);
	}
	for (int i = 0; i < advised_count; i++) {
		char perms[5], flags[512];
		vma_info(advised[i].p, perms, flags, sizeof(flags));
		if (!has_flag(flags, advised[i].flag)) fail("%s: VmFlags \"%s\" lack %s", advised[i].name, flags, advised[i].flag);
		if (!holds(advised[i].p, advised[i].bytes, 50 + i)) fail("%s: its data was lost", advised[i].name);
	}
	int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (thp != 1) fail("PR_GET_THP_DISABLE is %d, want 1", thp);

	pid_t kid = fork();
	if (kid == 0) {
		unsigned char vec;
		int gone = mincore(advised[0].p, PAGE, &vec) != 0 && errno == ENOMEM;
		int wiped = advised[4].p[0] == 0 && advised[4].p[advised[4].bytes - 1] == 0;
		_exit((gone ? 0 : 1) | (wiped ? 0 : 2));
	}
	int st = 0;
	if (kid < 0 || waitpid(kid, &st, 0) != kid || !WIFEXITED(st)) fail("fork after restore: status %#x", st);
	else {
		if (WEXITSTATUS(st) & 1) fail("MADV_DONTFORK: a child forked after restore still has the region");
		if (WEXITSTATUS(st) & 2) fail("MADV_WIPEONFORK: a child forked after restore sees the data");
	}

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
