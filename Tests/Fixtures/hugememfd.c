/*
 * hugememfd: an MFD_HUGETLB memfd of two huge pages, held open and mapped
 * shared: page 0 written in full through the mapping, a few bytes of page 1.
 * On SIGTERM the memfd must still be on hugetlbfs with its size and name,
 * read (pread) what was written, the mapping still be of huge pages and be
 * the memfd's (a write through it is read through the descriptor). PASS or
 * "FAIL: ...". NOHUGETLB when the kernel makes no hugetlb memfd or the pool
 * has no page for it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "fixture.h"

#define HUGE (2UL << 20)
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static char byte_at(size_t i) { return (char)((i * 131 + 17) % 251 + 1); }

int main(void)
{
	signal(SIGTERM, on_term);
	int fd = memfd_create("cryo-huge", MFD_HUGETLB);
	if (fd < 0) { printf("NOHUGETLB memfd_create(MFD_HUGETLB): %s\n", strerror(errno)); fflush(stdout); return 0; }
	if (ftruncate(fd, 2 * HUGE) != 0) { printf("NOHUGETLB ftruncate: %s\n", strerror(errno)); fflush(stdout); return 0; }
	char *map = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) { printf("NOHUGETLB mmap: %s\n", strerror(errno)); fflush(stdout); return 0; }
	for (size_t i = 0; i < HUGE; i++) map[i] = byte_at(i);
	strcpy(map + HUGE + 12345, "page one");
	printf("FD %d\n", fd);
	printf("MAPPING %lx-%lx\n", (unsigned long)map, (unsigned long)map + 2 * HUGE);
	ready_then_wait(&got_term);

	struct statfs fs;
	if (fstatfs(fd, &fs) != 0 || (unsigned long)fs.f_type != 0x958458f6UL) fail("the memfd is no longer on hugetlbfs");
	else if ((unsigned long)fs.f_bsize != HUGE) fail("the memfd has pages of %ld bytes", (long)fs.f_bsize);
	struct stat st;
	if (fstat(fd, &st) != 0 || (size_t)st.st_size != 2 * HUGE) fail("the memfd is %ld bytes, not %lu", (long)st.st_size, 2 * HUGE);
	char link[256] = "", path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0 || strncmp(link, "/memfd:cryo-huge", 16) != 0) fail("fd %d is %s, not the memfd cryo-huge", fd, n < 0 ? "?" : link);
	char *back = malloc(2 * HUGE);
	if (!back || pread(fd, back, 2 * HUGE, 0) != (ssize_t)(2 * HUGE)) fail("pread of the memfd: %s", strerror(errno));
	else {
		size_t bad = 0;
		for (size_t i = 0; i < HUGE; i++) bad += back[i] != byte_at(i);
		if (bad) fail("%zu bytes of page 0 differ", bad);
		if (strcmp(back + HUGE + 12345, "page one") != 0) fail("page 1 lost its bytes");
		for (size_t i = HUGE; i < HUGE + 12345; i++)
			if (back[i]) { fail("page 1 has a byte at %zu it never had", i - HUGE); break; }
	}
	if (page_kb(map) != (long)(HUGE >> 10)) fail("the mapping has pages of %ld kB", page_kb(map));
	strcpy(map + HUGE + 100, "through the mapping");
	char seen[32] = "";
	if (pread(fd, seen, 20, HUGE + 100) != 20 || strcmp(seen, "through the mapping") != 0) fail("the mapping is not the memfd's");
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
