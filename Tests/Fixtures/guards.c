/*
 * guards: guard regions (madvise MADV_GUARD_INSTALL, Linux 6.13) across
 * checkpoint/restore. Newer glibc puts them at the end of thread stacks.
 *
 *   - 16 private anonymous pages with data, guards on pages 0, 5-6 and 15:
 *     the guards must fault (SIGSEGV) after restore, show in
 *     /proc/self/pagemap (bit 58), and every other page keep its data
 *   - a guard in never-touched private memory, and one in a mapping that is
 *     then locked (mlock): the lock and the guard both come back
 *   - a private mapping of a memfd whose written page sits beside a guard
 *   - a guard in a shared memfd mapping (Linux 6.15; "NOTE" without it)
 *   - a child forked after restore sees the same guards (fork keeps them)
 * "NOGUARD why" and exit 0 where the kernel has no guard regions, or cannot
 * report them (pagemap bit 58, PAGEMAP_SCAN's PAGE_IS_GUARD): a dump there fails. READY, then on SIGTERM
 * the checks: PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define MADV_GUARD_INSTALL_ 102

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static sigjmp_buf jump;
static volatile sig_atomic_t probing;
static void on_segv(int sig)
{
	(void)sig;
	if (probing) siglongjmp(jump, 1);
	_exit(3);
}

/* Whether reading the byte at p faults. */
static int faults(volatile char *p)
{
	probing = 1;
	if (sigsetjmp(jump, 1)) { probing = 0; return 1; }
	(void)*p;
	probing = 0;
	return 0;
}

/* Whether PAGEMAP_SCAN knows PAGE_IS_GUARD (1 << 8): an empty scan asking for it is refused otherwise. */
static int scan_reports_guards(void)
{
	struct { uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, inverted, mask, anyof, ret; } arg = { .size = 96, .ret = 1 << 8 };
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0) return 0;
	int ok = ioctl(fd, 0xc0606610ul /* PAGEMAP_SCAN */, &arg) >= 0;
	close(fd);
	return ok;
}

/* Bit 58 of p's pagemap entry (PM_GUARD_REGION): 1, 0, or -1 if unreadable. */
static int pagemap_guard(const void *p)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0) return -1;
	uint64_t entry = 0;
	ssize_t n = pread(fd, &entry, 8, (off_t)((uintptr_t)p / PAGE * 8));
	close(fd);
	return n == 8 ? (int)((entry >> 58) & 1) : -1;
}

static uint32_t word(int tag, size_t i) { return (uint32_t)tag * 0x9e3779b1u ^ (uint32_t)i; }
static void fill(char *p, size_t bytes, int tag) { for (size_t i = 0; i < bytes / 4; i++) ((uint32_t *)p)[i] = word(tag, i); }
static int holds(const char *p, size_t bytes, int tag)
{
	for (size_t i = 0; i < bytes / 4; i++)
		if (((const uint32_t *)p)[i] != word(tag, i)) return 0;
	return 1;
}

static int guard(void *p, size_t bytes) { return madvise(p, bytes, MADV_GUARD_INSTALL_); }

struct area { const char *name; char *at; int pages; const int *guarded; int tag; };

/* Every page of `a`: a guard faults and shows in pagemap, any other holds its data (tag < 0: untouched, zero). */
static void check(const struct area *a, const char *who)
{
	for (int i = 0; i < a->pages; i++) {
		char *p = a->at + (size_t)i * PAGE;
		if (a->guarded[i]) {
			if (!faults(p)) fail("%s: %s page %d is no guard any more (it reads)", who, a->name, i);
			else if (pagemap_guard(p) != 1) fail("%s: %s page %d: pagemap bit 58 not set", who, a->name, i);
		} else if (faults(p)) {
			fail("%s: %s page %d faults, but had no guard", who, a->name, i);
		} else if (a->tag >= 0 && !holds(p, PAGE, a->tag + i)) {
			fail("%s: %s page %d lost its data", who, a->name, i);
		}
	}
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_term);
	signal(SIGSEGV, on_segv);

	char *probe = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (probe == MAP_FAILED) die("mmap");
	if (guard(probe, PAGE) != 0) { printf("NOGUARD madvise(MADV_GUARD_INSTALL): %s\n", strerror(errno)); return 0; }
	if (pagemap_guard(probe) != 1 || !scan_reports_guards()) {
		printf("NOGUARD this kernel does not report guard pages (pagemap bit 58, PAGEMAP_SCAN PAGE_IS_GUARD: Linux 6.15)\n");
		return 0;
	}
	munmap(probe, PAGE);

	static const int data_guards[16] = { [0] = 1, [5] = 1, [6] = 1, [15] = 1 };
	static const int untouched_guards[8] = { [3] = 1 };
	static const int locked_guards[4] = { [1] = 1 };
	static const int file_guards[3] = { [2] = 1 };
	static const int shared_guards[2] = { [0] = 1 };
	struct area areas[5];
	int count = 0;

	char *data = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (data == MAP_FAILED) die("mmap");
	for (int i = 0; i < 16; i++) fill(data + (size_t)i * PAGE, PAGE, 10 + i);
	areas[count++] = (struct area){ "anonymous", data, 16, data_guards, 10 };

	char *untouched = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (untouched == MAP_FAILED) die("mmap");
	areas[count++] = (struct area){ "untouched", untouched, 8, untouched_guards, -1 };

	char *locked = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (locked == MAP_FAILED) die("mmap");
	for (int i = 0; i < 4; i++) fill(locked + (size_t)i * PAGE, PAGE, 40 + i);
	areas[count++] = (struct area){ "locked", locked, 4, locked_guards, 40 };

	/* A private file mapping: page 0 written (anonymous now), page 1 the file's, page 2 a guard. */
	int memfd = memfd_create("guards", 0);
	if (memfd < 0 || ftruncate(memfd, 3 * PAGE) != 0) die("memfd_create");
	char contents[3 * PAGE];
	for (int i = 0; i < 3; i++) fill(contents + i * PAGE, PAGE, 60 + i);
	if (pwrite(memfd, contents, sizeof(contents), 0) != (ssize_t)sizeof(contents)) die("pwrite");
	char *file = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd, 0);
	if (file == MAP_FAILED) die("mmap memfd");
	fill(file, PAGE, 70);
	areas[count++] = (struct area){ "private file", file, 3, file_guards, -1 };

	char *shared = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (shared == MAP_FAILED) die("mmap shared");
	fill(shared + PAGE, PAGE, 81);

	for (int i = 0; i < count; i++)
		for (int page = 0; page < areas[i].pages; page++)
			if (areas[i].guarded[page] && guard(areas[i].at + (size_t)page * PAGE, PAGE) != 0) die(areas[i].name);
	/* Bringing in the pages stops at the guard (ENOMEM), once the mapping is locked. */
	if (mlock(locked, 4 * PAGE) != 0 && errno != ENOMEM) die("mlock");
	if (guard(shared, PAGE) == 0) areas[count++] = (struct area){ "shared file", shared, 2, shared_guards, 80 };
	else printf("NOTE: no guard regions in shared file mappings here (%s): not checked\n", strerror(errno));

	ready_then_wait(&got_term);

	for (int i = 0; i < count; i++) check(&areas[i], "after restore");
	/* The private file mapping's pages: its own written page, the file's, the guard. */
	if (!faults(file) && !holds(file, PAGE, 70)) fail("private file page 0 lost the process's write");
	if (!faults(file + PAGE) && !holds(file + PAGE, PAGE, 81)) fail("private file page 1 is not the file's (written through the shared mapping)");
	char flags[512];
	vma_info(locked, NULL, flags, sizeof(flags));
	if (!has_flag(flags, "lo")) fail("locked: VmFlags \"%s\" lack lo", flags);

	pid_t kid = fork();
	if (kid == 0) {
		failbuf[0] = 0;
		for (int i = 0; i < count; i++) check(&areas[i], "in a child forked after restore");
		if (failbuf[0]) { printf("FAIL: %s\n", failbuf); _exit(1); }
		_exit(0);
	}
	int st = 0;
	if (kid < 0 || waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("a child forked after restore: status %#x", st);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
