/*
 * delmap: mappings of a file deleted while mapped (argv[1] is a scratch
 * folder).  data.dat, 3 pages of a pattern, is mapped MAP_SHARED read-write
 * (page 0 written through it) and MAP_PRIVATE (page 1 written privately);
 * its descriptor is closed and it is unlinked.  On SIGTERM: every page
 * holds what it held, both mappings still map one file (a write through the
 * shared mapping shows in the private one's unwritten page 2), and
 * map_files names data.dat (deleted).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static unsigned char pat(size_t i) { return (unsigned char)(i * 7 + (i >> 12)); }

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) != 0) die("chdir");
	signal(SIGTERM, on_term);
	int fd = open("data.dat", O_RDWR | O_CREAT | O_TRUNC, 0600);
	unsigned char buf[3 * PAGE];
	for (size_t i = 0; i < sizeof buf; i++) buf[i] = pat(i);
	if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("data.dat");
	char *shared = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	char *priv = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (shared == MAP_FAILED || priv == MAP_FAILED) die("mmap");
	strcpy(shared, "shared write");
	strcpy(priv + PAGE, "private write");
	close(fd);
	if (unlink("data.dat") != 0) die("unlink");

	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	if (strcmp(shared, "shared write") != 0) fail("shared page 0 lost its write");
	if (memcmp(shared + 13, buf + 13, 3 * PAGE - 13) != 0) fail("shared pages differ from the file");
	if (strcmp(priv, "shared write") != 0) fail("private page 0 does not show the file's page 0");
	if (strcmp(priv + PAGE, "private write") != 0 || memcmp(priv + PAGE + 14, buf + PAGE + 14, PAGE - 14) != 0) fail("private page 1 differs");
	if (memcmp(priv + 2 * PAGE, buf + 2 * PAGE, PAGE) != 0) fail("private page 2 differs from the file");
	strcpy(shared + 2 * PAGE, "after restore");
	if (strcmp(priv + 2 * PAGE, "after restore") != 0) fail("the two mappings no longer map one file");
	if (strcmp(shared + 2 * PAGE, "after restore") != 0) fail("shared mapping not writable");
	char self[96], link[PATH_MAX] = { 0 };
	snprintf(self, sizeof self, "/proc/self/map_files/%lx-%lx", (unsigned long)shared, (unsigned long)shared + 3 * PAGE);
	if (readlink(self, link, sizeof link - 1) < 0 || !strstr(link, "/data.dat (deleted)")) fail("the shared mapping maps \"%s\"", link);

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
