/*
 * mlocked: memory locked with mlock and mlock2(MLOCK_ONFAULT) stays locked,
 * unlocked memory stays unlocked, and MADV_MERGEABLE (KSM) stays set
 * (VmFlags "lo", "lf" and "mg" in /proc/self/smaps), each with its bytes:
 *   a locked private region of 2 MiB, all written; one locked on fault (16 of
 *   64 pages written); a locked region made read-only after it was written; a
 *   locked region of which the upper half was unlocked again; locked shared
 *   anonymous memory; a mergeable region (left unchecked where the kernel has
 *   no KSM: "NOKSM" is printed); and 4 MiB unlocked, all written, so that an
 *   eager restore loads through a userfaultfd.
 * On SIGTERM: every region at its address with its flags and bytes, and
 * VmLck of /proc/self/status as before. PASS or "FAIL: ...".
 *   mlocked sealed    all of the above, and a region of 4 pages written and
 *                     sealed with mseal: it must stay sealed (VmFlags "sl",
 *                     mprotect refused with EPERM). "NOMSEAL" where the kernel
 *                     cannot seal.
 *   mlocked future    all of the above, then mlockall(MCL_FUTURE): a mapping
 *                     made after SIGTERM must be locked, its pages in at once.
 *   mlocked future-onfault   the same with MCL_ONFAULT: locked on fault, and
 *                     its pages not in before they are touched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#define PAGE 4096UL

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

/* Wanted VmFlags: 1 set, 0 not set, -1 not checked. */
struct region { const char *name; char *at; size_t length; size_t written; int lo, lf, mg; };
static struct region regions[12];
static int count;

static char byte_at(size_t i, int r) { return (char)((i * 37 + 11 * (size_t)r) % 253 + 1); }

/* The VmFlags of the mapping that starts at `at`, or "" when none does. */
static void vmflags(const void *at, char *out, size_t size)
{
	if (vma_info(at, NULL, out, size) != (unsigned long)at) out[0] = 0;
}

static long locked_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f) return -1;
	char line[256];
	long kib = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kib) == 1) break;
	fclose(f);
	return kib;
}

static char *map(size_t length, int flags)
{
	char *at = mmap(NULL, length, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
	if (at == MAP_FAILED) { fprintf(stderr, "setup: mmap %zu: %s\n", length, strerror(errno)); exit(2); }
	return at;
}

static struct region *add(const char *name, char *at, size_t length, size_t written, int lo, int lf, int mg)
{
	for (size_t i = 0; i < written; i++) at[i] = byte_at(i, count);
	regions[count] = (struct region){ name, at, length, written, lo, lf, mg };
	return &regions[count++];
}

static void must(int ok, const char *what)
{
	if (!ok) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_term);

	struct region *r = add("locked", map(512 * PAGE, MAP_PRIVATE), 512 * PAGE, 512 * PAGE, 1, 0, 0);
	must(mlock(r->at, r->length) == 0, "mlock");
	r = add("locked on fault", map(64 * PAGE, MAP_PRIVATE), 64 * PAGE, 16 * PAGE, 1, 1, 0);
	must(mlock2(r->at, r->length, MLOCK_ONFAULT) == 0, "mlock2(MLOCK_ONFAULT)");
	r = add("locked read-only", map(8 * PAGE, MAP_PRIVATE), 8 * PAGE, 8 * PAGE, 1, 0, 0);
	must(mprotect(r->at, r->length, PROT_READ) == 0 && mlock(r->at, r->length) == 0, "mprotect, mlock");
	char *half = map(32 * PAGE, MAP_PRIVATE);
	r = add("locked half", half, 16 * PAGE, 16 * PAGE, 1, 0, 0);
	must(mlock(half, 32 * PAGE) == 0 && munlock(half + 16 * PAGE, 16 * PAGE) == 0, "mlock, munlock");
	add("unlocked half", half + 16 * PAGE, 16 * PAGE, 16 * PAGE, 0, 0, 0);
	r = add("locked shared", map(8 * PAGE, MAP_SHARED), 8 * PAGE, 8 * PAGE, 1, 0, 0);
	must(mlock(r->at, r->length) == 0, "mlock shared");
	r = add("mergeable", map(16 * PAGE, MAP_PRIVATE), 16 * PAGE, 4 * PAGE, 0, 0, 1);
	if (madvise(r->at, r->length, MADV_MERGEABLE) != 0) {
		printf("NOKSM madvise(MADV_MERGEABLE): %s\n", strerror(errno));
		r->mg = -1;
	}
	add("unlocked", map(1024 * PAGE, MAP_PRIVATE), 1024 * PAGE, 1024 * PAGE, 0, 0, 0);

	char *sealed = NULL;
	if (argc > 1 && strcmp(argv[1], "sealed") == 0) {
		struct region *s = add("sealed", map(4 * PAGE, MAP_PRIVATE), 4 * PAGE, 4 * PAGE, 0, 0, -1);
		if (syscall(462 /* mseal */, s->at, s->length, 0) != 0) { printf("NOMSEAL mseal: %s\n", strerror(errno)); return 0; }
		sealed = s->at;
	}
	int future = argc > 1 && strncmp(argv[1], "future", 6) == 0;
	int onfault = argc > 1 && strcmp(argv[1], "future-onfault") == 0;
	if (future) must(mlockall(MCL_FUTURE | (onfault ? MCL_ONFAULT : 0)) == 0, "mlockall");
	char flags[512];
	for (int i = 0; i < count; i++) {
		struct region *g = &regions[i];
		vmflags(g->at, flags, sizeof(flags));
		if (has_flag(flags, "lo") != g->lo || has_flag(flags, "lf") != g->lf || (g->mg >= 0 && has_flag(flags, "mg") != g->mg)) {
			fprintf(stderr, "setup: %s at %p has VmFlags \"%s\" before any dump\n", g->name, (void *)g->at, flags);
			return 2;
		}
	}
	long locked = locked_kib();
	ready_then_wait(&got_term);

	for (int i = 0; i < count; i++) {
		struct region *g = &regions[i];
		vmflags(g->at, flags, sizeof(flags));
		if (!flags[0]) { fail("%s: no mapping starts at %p", g->name, (void *)g->at); continue; }
		if (has_flag(flags, "lo") != g->lo || has_flag(flags, "lf") != g->lf || (g->mg >= 0 && has_flag(flags, "mg") != g->mg))
			fail("%s at %p: VmFlags \"%s\", want lo %d lf %d mg %d", g->name, (void *)g->at, flags, g->lo, g->lf, g->mg);
		for (size_t b = 0; b < g->length; b++) {
			char want = b < g->written ? byte_at(b, i) : 0;
			if (g->at[b] != want) { fail("%s: byte %zu is %d, want %d", g->name, b, g->at[b], want); break; }
		}
	}
	if (locked_kib() != locked) fail("VmLck is %ld kB, was %ld kB", locked_kib(), locked);
	if (sealed) {
		vmflags(sealed, flags, sizeof(flags));
		if (!has_flag(flags, "sl")) fail("sealed region at %p: VmFlags \"%s\", want sl", (void *)sealed, flags);
		if (mprotect(sealed, PAGE, PROT_READ) == 0 || errno != EPERM)
			fail("sealed region at %p: mprotect was not refused with EPERM (%s)", (void *)sealed, strerror(errno));
	}
	/* What mlockall left for mappings made from now on. */
	char *fresh = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fresh == MAP_FAILED) fail("mmap after restore: %s", strerror(errno));
	else {
		vmflags(fresh, flags, sizeof(flags));
		unsigned char resident[4] = { 0 };
		mincore(fresh, 4 * PAGE, resident);
		int in = resident[0] & resident[3] & 1;
		if (has_flag(flags, "lo") != future || has_flag(flags, "lf") != onfault || in != (future && !onfault))
			fail("a mapping made after restore has VmFlags \"%s\", pages %s; want lo %d lf %d, pages %s", flags, in ? "in" : "not in",
			     future, onfault, future && !onfault ? "in" : "not in");
	}
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
