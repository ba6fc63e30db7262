/*
 * hugememfdpriv: private mappings (MAP_PRIVATE) of an MFD_HUGETLB memfd of
 * 3 huge pages, held open. Through a shared mapping (since unmapped) pages 0
 * and 1 of the memfd were filled with pattern 0; page 2 was never written.
 * Then:
 *   - a private mapping of all 3 pages, of which the process wrote page 1
 *     with pattern 1 (its own copy) and read page 0 (the memfd's page);
 *   - a private mapping of memfd page 1 alone (offset one huge page), read;
 *   - memfd page 1 rewritten with pattern 2 through another shared mapping
 *     (since unmapped): the first private mapping keeps its copy, the second
 *     sees the memfd's new bytes.
 * On SIGTERM, every byte of both private mappings and of the memfd (pread) is
 * checked, both mappings must still be of huge pages, private (a write to
 * one is not in the memfd) and the memfd's (a byte written into memfd page 0
 * through a new shared mapping shows through the first private mapping,
 * which never copied page 0). PASS or "FAIL: ...". NOHUGETLB when the kernel
 * makes no hugetlb memfd or the pool has no page for it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "fixture.h"

#define HUGE (2UL << 20)
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static char byte_at(size_t i, int pattern) { return (char)((i * (131 + 2 * (size_t)pattern) + 17) % 251 + 1); }

/* Writes pattern `pattern` into memfd page `page` through a shared mapping made for it. */
static int fill_shared(int fd, size_t page, int pattern)
{
	char *m = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(page * HUGE));
	if (m == MAP_FAILED) return -1;
	for (size_t i = 0; i < HUGE; i++) m[i] = byte_at(page * HUGE + i, pattern);
	return munmap(m, HUGE);
}

/* The first offset in [from, from + length) of `at` that is not `pattern` (-1 for zero), or -1 when none. */
static long first_bad(const char *at, size_t from, size_t length, int pattern)
{
	for (size_t i = 0; i < length; i++) {
		char want = pattern < 0 ? 0 : byte_at(from + i, pattern);
		if (at[i] != want) return (long)i;
	}
	return -1;
}

int main(void)
{
	signal(SIGTERM, on_term);
	int fd = memfd_create("cryo-huge-private", MFD_HUGETLB);
	if (fd < 0) { printf("NOHUGETLB memfd_create(MFD_HUGETLB): %s\n", strerror(errno)); fflush(stdout); return 0; }
	if (ftruncate(fd, 3 * HUGE) != 0) { printf("NOHUGETLB ftruncate: %s\n", strerror(errno)); fflush(stdout); return 0; }
	if (fill_shared(fd, 0, 0) != 0 || fill_shared(fd, 1, 0) != 0) { printf("NOHUGETLB mmap: %s\n", strerror(errno)); fflush(stdout); return 0; }
	char *all = mmap(NULL, 3 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	char *one = mmap(NULL, HUGE, PROT_READ, MAP_PRIVATE, fd, HUGE);
	if (all == MAP_FAILED || one == MAP_FAILED) { printf("NOHUGETLB mmap(MAP_PRIVATE): %s\n", strerror(errno)); fflush(stdout); return 0; }
	for (size_t i = 0; i < HUGE; i++) all[HUGE + i] = byte_at(HUGE + i, 1);
	volatile char sink = all[0];
	sink = one[0];
	(void)sink;
	if (fill_shared(fd, 1, 2) != 0) { printf("NOHUGETLB mmap: %s\n", strerror(errno)); fflush(stdout); return 0; }
	if (first_bad(all, 0, HUGE, 0) >= 0 || first_bad(all + HUGE, HUGE, HUGE, 1) >= 0 || first_bad(one, HUGE, HUGE, 2) >= 0) {
		fprintf(stderr, "setup: the mappings do not hold what this kernel should give them\n");
		return 2;
	}
	printf("MAPPINGS %lx %lx\n", (unsigned long)all, (unsigned long)one);
	ready_then_wait(&got_term);

	struct statfs fs;
	if (fstatfs(fd, &fs) != 0 || (unsigned long)fs.f_type != 0x958458f6UL) fail("the memfd is no longer on hugetlbfs");
	long bad;
	if ((bad = first_bad(all, 0, HUGE, 0)) >= 0) fail("private mapping page 0 byte %ld is not the memfd's", bad);
	if ((bad = first_bad(all + HUGE, HUGE, HUGE, 1)) >= 0) fail("private mapping page 1 byte %ld lost the process's own copy", bad);
	if ((bad = first_bad(all + 2 * HUGE, 0, HUGE, -1)) >= 0) fail("private mapping page 2 byte %ld is not zero", bad);
	if ((bad = first_bad(one, HUGE, HUGE, 2)) >= 0) fail("the mapping of memfd page 1 byte %ld is not the memfd's", bad);
	char *file = malloc(3 * HUGE);
	if (!file || pread(fd, file, 3 * HUGE, 0) != (ssize_t)(3 * HUGE)) fail("pread of the memfd: %s", strerror(errno));
	else {
		if ((bad = first_bad(file, 0, HUGE, 0)) >= 0) fail("memfd page 0 byte %ld differs", bad);
		if ((bad = first_bad(file + HUGE, HUGE, HUGE, 2)) >= 0) fail("memfd page 1 byte %ld differs", bad);
		if ((bad = first_bad(file + 2 * HUGE, 0, HUGE, -1)) >= 0) fail("memfd page 2 byte %ld is not zero", bad);
	}
	if (page_kb(all) != (long)(HUGE >> 10) || page_kb(one) != (long)(HUGE >> 10))
		fail("the private mappings have pages of %ld and %ld kB", page_kb(all), page_kb(one));
	/* Still the memfd's: its page 0, never copied, shows a new byte of the memfd. */
	char *shared = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (shared == MAP_FAILED) fail("mmap(MAP_SHARED) of the memfd: %s", strerror(errno));
	else {
		shared[777] = 'M';
		if (all[777] != 'M') fail("private mapping page 0 no longer follows the memfd");
		munmap(shared, HUGE);
	}
	/* Still private: its write stays out of the memfd. */
	all[2 * HUGE + 5] = 'P';
	char seen = 0;
	if (pread(fd, &seen, 1, 2 * HUGE + 5) != 1 || seen != 0) fail("a write to the private mapping reached the memfd");
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
