/*
 * procfiles: files under /proc held open: its own /proc/self/status,
 * /proc/self/maps read 10 bytes in, /proc/self as a directory, a child's
 * /proc/CHILD/stat, /proc/meminfo, and its net and uts namespace files.  On SIGTERM each must name the
 * restored processes again (Pid lines, the child's stat, comm through the
 * directory) and keep its offset.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_STATUS 10
#define FD_CHILD 11
#define FD_DIR 12
#define FD_MAPS 13
#define FD_MEMINFO 14
#define FD_NET 15
#define FD_UTS 16

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static void place(int fd, int at) { if (fd < 0) die("open"); if (dup2(fd, at) != at) die("dup2"); close(fd); }

static void read_at(int fd, char *buf, size_t size)
{
	ssize_t n = pread(fd, buf, size - 1, 0);
	buf[n < 0 ? 0 : n] = 0;
}

int main(void)
{
	signal(SIGTERM, on_term);
	pid_t child = fork();
	if (child < 0) die("fork");
	if (child == 0) { signal(SIGTERM, SIG_DFL); for (;;) pause(); }
	char path[64];
	place(open("/proc/self/status", O_RDONLY), FD_STATUS);
	snprintf(path, sizeof path, "/proc/%d/stat", child);
	place(open(path, O_RDONLY), FD_CHILD);
	place(open("/proc/self", O_RDONLY | O_DIRECTORY), FD_DIR);
	place(open("/proc/self/maps", O_RDONLY), FD_MAPS);
	char skip[10];
	if (read(FD_MAPS, skip, sizeof skip) != sizeof skip) die("read maps");
	place(open("/proc/meminfo", O_RDONLY), FD_MEMINFO);
	place(open("/proc/self/ns/net", O_RDONLY), FD_NET);
	place(open("/proc/self/ns/uts", O_RDONLY), FD_UTS);

	printf("PIDS %d %d\n", getpid(), child);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	char buf[8192], want[64];
	read_at(FD_STATUS, buf, sizeof buf);
	snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
	if (!strstr(buf, want)) fail("/proc/self/status fd does not say Pid %d", getpid());
	read_at(FD_CHILD, buf, sizeof buf);
	snprintf(want, sizeof want, "%d (procfiles) ", child);
	if (strncmp(buf, want, strlen(want)) != 0) fail("child's stat fd says \"%.40s\", want \"%s\"", buf, want);
	int comm = openat(FD_DIR, "comm", O_RDONLY);
	if (comm < 0) fail("openat(/proc/self fd, comm): %s", strerror(errno));
	else {
		read_at(comm, buf, sizeof buf);
		if (strcmp(buf, "procfiles\n") != 0) fail("comm through the /proc/self fd is \"%s\"", buf);
		close(comm);
	}
	int status = openat(FD_DIR, "status", O_RDONLY);
	if (status >= 0) {
		read_at(status, buf, sizeof buf);
		snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
		if (!strstr(buf, want)) fail("the /proc/self directory fd is of another process");
		close(status);
	}
	if (lseek(FD_MAPS, 0, SEEK_CUR) != 10) fail("maps offset %lld, want 10", (long long)lseek(FD_MAPS, 0, SEEK_CUR));
	read_at(FD_MEMINFO, buf, sizeof buf);
	if (strncmp(buf, "MemTotal:", 9) != 0) fail("meminfo fd reads \"%.20s\"", buf);

	struct stat held, now;
	if (fstat(FD_NET, &held) || stat("/proc/self/ns/net", &now) || held.st_ino != now.st_ino) fail("the net namespace fd is of another namespace");
	if (fstat(FD_UTS, &held) || stat("/proc/self/ns/uts", &now) || held.st_ino != now.st_ino) fail("the uts namespace fd is of another namespace");
	if (setns(FD_NET, CLONE_NEWNET) != 0) fail("setns(net fd): %s", strerror(errno));

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
