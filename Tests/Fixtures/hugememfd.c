/*
 * hugememfd: an MFD_HUGETLB memfd held open, never mapped.  cryo refuses it
 * (restoring it as a memfd of small pages would be silently wrong); on
 * SIGTERM the memfd must still be on hugetlbfs.  NOHUGETLB when the kernel
 * makes no hugetlb memfd.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

int main(void)
{
	signal(SIGTERM, on_term);
	int fd = memfd_create("cryo-huge", MFD_HUGETLB);
	if (fd < 0) { printf("NOHUGETLB memfd_create(MFD_HUGETLB): %s\n", strerror(errno)); fflush(stdout); return 0; }
	printf("FD %d\n", fd);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();
	struct statfs fs;
	if (fstatfs(fd, &fs) != 0 || (unsigned long)fs.f_type != 0x958458f6UL) fail("the memfd is no longer on hugetlbfs");
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
