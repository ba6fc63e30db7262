/*
 * noreserve: mappings made with MAP_NORESERVE keep it (VmFlags "nr" in
 * /proc/self/smaps), and mappings made without it do not gain it.
 *   noreserve anon     private anonymous rw with MAP_NORESERVE, pages 0..3
 *                      written; the same without it; shared anonymous with
 *                      MAP_NORESERVE, pages 0..3 written; a PROT_NONE
 *                      MAP_NORESERVE reservation of which the first half was
 *                      made rw and written afterwards (how runtimes reserve
 *                      address space)
 *   noreserve hugetlb  private and shared MAP_HUGETLB|MAP_NORESERVE of 2 huge
 *                      pages, page 0 written in each; private MAP_HUGETLB of
 *                      1 huge page without it, written. NOHUGETLB when the
 *                      pool has no page for them.
 * On SIGTERM: every mapping at its address with its VmFlags "nr" as made,
 * every written byte back, the rest zero. PASS or "FAIL: ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096UL
#define HUGE (2UL << 20)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

struct region { const char *name; char *at; size_t length; size_t written; int noreserve; };
static struct region regions[8];
static int count;

static char byte_at(size_t i, int r) { return (char)((i * 131 + 17 * (size_t)r) % 251 + 1); }

/* 1 when the smaps entry that starts at `at` has VmFlags `flag`, 0 when not, -1 when no entry starts there. */
static int has_vmflag(const void *at, const char *flag)
{
	char flags[512];
	return vma_info(at, NULL, flags, sizeof(flags)) == (unsigned long)at ? has_flag(flags, flag) : -1;
}

static void add(const char *name, char *at, size_t length, size_t written, int noreserve)
{
	for (size_t i = 0; i < written; i++) at[i] = byte_at(i, count);
	regions[count++] = (struct region){ name, at, length, written, noreserve };
}

static char *map(size_t length, int prot, int flags)
{
	char *at = mmap(NULL, length, prot, flags, -1, 0);
	return at == MAP_FAILED ? NULL : at;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_term);
	const char *mode = argc > 1 ? argv[1] : "anon";
	if (strcmp(mode, "anon") == 0) {
		char *a = map(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
		char *b = map(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
		char *c = map(16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE);
		char *d = map(64 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
		if (!a || !b || !c || !d || mprotect(d, 32 * PAGE, PROT_READ | PROT_WRITE) != 0) {
			fprintf(stderr, "setup: %s\n", strerror(errno));
			return 2;
		}
		add("private noreserve", a, 16 * PAGE, 4 * PAGE, 1);
		add("private", b, 16 * PAGE, 4 * PAGE, 0);
		add("shared noreserve", c, 16 * PAGE, 4 * PAGE, 1);
		add("reservation, rw half", d, 32 * PAGE, 8 * PAGE, 1);
		regions[count++] = (struct region){ "reservation, PROT_NONE half", d + 32 * PAGE, 32 * PAGE, 0, 1 };
	} else if (strcmp(mode, "hugetlb") == 0) {
		int huge = MAP_ANONYMOUS | MAP_HUGETLB;
		char *e = map(2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | huge | MAP_NORESERVE);
		char *f = map(2 * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED | huge | MAP_NORESERVE);
		char *g = map(HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | huge);
		if (!e || !f || !g) { printf("NOHUGETLB mmap(MAP_HUGETLB): %s\n", strerror(errno)); return 0; }
		/* With MAP_NORESERVE a page the pool cannot give is SIGBUS: the test raised the pool first. */
		add("hugetlb private noreserve", e, 2 * HUGE, HUGE, 1);
		add("hugetlb shared noreserve", f, 2 * HUGE, HUGE, 1);
		add("hugetlb private", g, HUGE, HUGE, 0);
	} else {
		fprintf(stderr, "usage: noreserve anon|hugetlb\n");
		return 2;
	}
	for (int r = 0; r < count; r++) {
		int nr = has_vmflag(regions[r].at, "nr");
		if (nr != regions[r].noreserve) {
			fprintf(stderr, "setup: %s at %p has nr %d before any dump, want %d\n", regions[r].name, (void *)regions[r].at, nr,
				regions[r].noreserve);
			return 2;
		}
	}
	ready_then_wait(&got_term);

	for (int r = 0; r < count; r++) {
		struct region *g = &regions[r];
		int nr = has_vmflag(g->at, "nr");
		if (nr < 0) { fail("%s: no mapping starts at %p", g->name, (void *)g->at); continue; }
		if (nr != g->noreserve) fail("%s at %p: VmFlags nr is %s, want %s", g->name, (void *)g->at, nr ? "set" : "missing",
					     g->noreserve ? "set" : "missing");
		if (!strstr(g->name, "PROT_NONE")) {
			for (size_t i = 0; i < g->length; i++) {
				char want = i < g->written ? byte_at(i, r) : 0;
				if (g->at[i] != want) { fail("%s: byte %zu is %d, want %d", g->name, i, g->at[i], want); break; }
			}
		}
	}
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
