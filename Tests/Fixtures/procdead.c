/*
 * procdead: /proc files of processes that are not in the tree.  Held open:
 * /proc/1/status and /proc/G/status of G, a live process outside the tree
 * (a grandchild whose parent exited); and of D, a child killed and reaped
 * before the dump, /proc/D/status, /proc/D/mountinfo and the /proc/D
 * directory.  On SIGTERM: the outside ones read their processes again (same
 * inode as a fresh open); D's still name pid D and a process that is gone:
 * status gives ESRCH, the directory reads "/proc/D (deleted)" and opens
 * nothing under it, mountinfo still reads.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_INIT 10
#define FD_OUTSIDE 11
#define FD_DEAD_STATUS 12
#define FD_DEAD_MOUNTINFO 13
#define FD_DEAD_DIR 14

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static void place(int fd, int at) { if (fd < 0) die("open"); if (dup2(fd, at) != at) die("dup2"); close(fd); }

static void open_at(const char *path, int flags, int at) { place(open(path, flags), at); }

static void link_of(int fd, char *buf, size_t size)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, buf, size - 1);
	buf[n < 0 ? 0 : n] = 0;
}

static void expect_same_inode(int fd, const char *path)
{
	struct stat held, now;
	if (fstat(fd, &held) || stat(path, &now)) fail("stat %s: %s", path, strerror(errno));
	else if (held.st_ino != now.st_ino) fail("fd %d is not %s any more (inode %lu, now %lu)", fd, path, held.st_ino, now.st_ino);
}

static void expect_pid_line(int fd, pid_t pid)
{
	char buf[4096], want[32];
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
	buf[n < 0 ? 0 : n] = 0;
	snprintf(want, sizeof want, "\nPid:\t%d\n", pid);
	if (!strstr(buf, want)) fail("fd %d does not read Pid %d (%s)", fd, pid, n < 0 ? strerror(errno) : "other text");
}

int main(void)
{
	signal(SIGTERM, on_term);
	int report[2];
	if (pipe(report)) die("pipe");
	pid_t middle = fork();
	if (middle < 0) die("fork");
	if (middle == 0) {
		pid_t g = fork();
		/* Its own session: staying in ours, it would keep our pid in use as its session id. */
		if (g == 0) { setsid(); for (;;) pause(); }
		if (write(report[1], &g, sizeof g) != sizeof g) _exit(1);
		_exit(0);
	}
	pid_t outside;
	if (read(report[0], &outside, sizeof outside) != sizeof outside) die("read outside pid");
	waitpid(middle, NULL, 0);
	pid_t dead = fork();
	if (dead < 0) die("fork");
	if (dead == 0) { for (;;) pause(); }

	char path[64];
	open_at("/proc/1/status", O_RDONLY, FD_INIT);
	snprintf(path, sizeof path, "/proc/%d/status", outside);
	open_at(path, O_RDONLY, FD_OUTSIDE);
	snprintf(path, sizeof path, "/proc/%d/status", dead);
	open_at(path, O_RDONLY, FD_DEAD_STATUS);
	snprintf(path, sizeof path, "/proc/%d/mountinfo", dead);
	open_at(path, O_RDONLY, FD_DEAD_MOUNTINFO);
	snprintf(path, sizeof path, "/proc/%d", dead);
	open_at(path, O_RDONLY | O_DIRECTORY, FD_DEAD_DIR);
	kill(dead, SIGKILL);
	if (waitpid(dead, NULL, 0) != dead) die("waitpid");

	printf("PIDS %d %d\n", getpid(), outside);
	printf("OUTSIDE %d\n", outside);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	expect_pid_line(FD_INIT, 1);
	expect_same_inode(FD_INIT, "/proc/1/status");
	expect_pid_line(FD_OUTSIDE, outside);
	snprintf(path, sizeof path, "/proc/%d/status", outside);
	expect_same_inode(FD_OUTSIDE, path);

	char link[128], want[128], buf[256];
	snprintf(want, sizeof want, "/proc/%d/status", dead);
	link_of(FD_DEAD_STATUS, link, sizeof link);
	if (strcmp(link, want) != 0) fail("dead status fd is \"%s\", want \"%s\"", link, want);
	errno = 0;
	if (pread(FD_DEAD_STATUS, buf, sizeof buf, 0) != -1 || errno != ESRCH) fail("reading dead status gave %s, want ESRCH", strerror(errno));
	snprintf(want, sizeof want, "/proc/%d/mountinfo", dead);
	link_of(FD_DEAD_MOUNTINFO, link, sizeof link);
	if (strcmp(link, want) != 0) fail("dead mountinfo fd is \"%s\", want \"%s\"", link, want);
	if (pread(FD_DEAD_MOUNTINFO, buf, sizeof buf, 0) <= 0) fail("dead mountinfo reads nothing: %s", strerror(errno));
	snprintf(want, sizeof want, "/proc/%d (deleted)", dead);
	link_of(FD_DEAD_DIR, link, sizeof link);
	if (strcmp(link, want) != 0) fail("dead directory fd is \"%s\", want \"%s\"", link, want);
	if (!(fcntl(FD_DEAD_DIR, F_GETFL) & O_DIRECTORY)) fail("dead directory fd lost O_DIRECTORY");
	errno = 0;
	int under = openat(FD_DEAD_DIR, "status", O_RDONLY);
	if (under >= 0 || errno != ESRCH) fail("openat(dead directory, status) gave %d (%s), want ESRCH", under, strerror(errno));
	if (kill(dead, 0) == 0) fail("pid %d lives again", dead);

	kill(outside, SIGKILL);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
