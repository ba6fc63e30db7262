/*
 * pidfddead: pidfds of reaped processes.  X exited with status 3, Y was
 * killed by SIGTERM; both were reaped before the dump.  Held: a pidfd of X,
 * two pidfds of Y (one O_NONBLOCK), and one of Y in S, another process of
 * the tree.  On SIGTERM: PIDFD_GET_INFO still reports exit 3 and SIGTERM;
 * both of Y's pidfds, and S's, are of one process (one inode), X's of
 * another; each shows Pid -1 and gives ESRCH.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_X 10
#define FD_Y 11
#define FD_Y_NB 12
#define FD_S_Y 20

/* The start of struct pidfd_info (Linux 6.15), spelled out: older headers lack it. */
struct exit_info {
	uint64_t mask, cgroupid;
	uint32_t ids[11];
	int32_t exit_code;
};
#define INFO_EXIT (1ULL << 3)
#define GET_INFO _IOWR(0xFF, 11, struct exit_info)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static int pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static void place(int fd, int at) { if (fd < 0) die("pidfd_open"); if (dup2(fd, at) != at) die("dup2"); close(fd); }
static unsigned long inode(int fd) { struct stat st; return fstat(fd, &st) ? 0 : st.st_ino; }

/* The wait status the kernel kept, or -1 with none. */
static int kept_status(int fd)
{
	struct exit_info info = { .mask = INFO_EXIT };
	if (ioctl(fd, GET_INFO, &info) != 0 || !(info.mask & INFO_EXIT)) return -1;
	return info.exit_code;
}

int main(void)
{
	signal(SIGTERM, on_term);
	pid_t x = fork();
	if (x < 0) die("fork");
	if (x == 0) _exit(3);
	pid_t y = fork();
	if (y < 0) die("fork");
	if (y == 0) { signal(SIGTERM, SIG_DFL); for (;;) pause(); }
	place(pidfd_open(x, 0), FD_X);
	place(pidfd_open(y, 0), FD_Y);
	place(pidfd_open(y, O_NONBLOCK), FD_Y_NB);

	/* S answers each byte on ask with the inode of its pidfd of Y. */
	int ask[2], answer[2];
	if (pipe(ask) || pipe(answer)) die("pipe");
	pid_t s = fork();
	if (s < 0) die("fork");
	if (s == 0) {
		signal(SIGTERM, SIG_DFL);
		place(pidfd_open(y, 0), FD_S_Y);
		char byte;
		for (;;) {
			unsigned long ino = inode(FD_S_Y);
			if (write(answer[1], &ino, sizeof ino) != sizeof ino) _exit(1);
			if (read(ask[0], &byte, 1) != 1) _exit(0);
		}
	}
	unsigned long s_ino;
	if (read(answer[0], &s_ino, sizeof s_ino) != sizeof s_ino) die("S");
	kill(y, SIGTERM);
	if (waitpid(x, NULL, 0) != x || waitpid(y, NULL, 0) != y) die("waitpid");
	if (kept_status(FD_X) != 3 << 8 || kept_status(FD_Y) != SIGTERM) {
		printf("SKIP: this kernel keeps no exit status for pidfds (%#x %#x)\n", kept_status(FD_X), kept_status(FD_Y));
		return 0;
	}

	printf("PIDS %d %d\n", getpid(), s);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	int status = kept_status(FD_X);
	if (status != 3 << 8) fail("X's pidfd reports status %#x, want exit 3 (0x300)", status);
	status = kept_status(FD_Y);
	if (status != SIGTERM) fail("Y's pidfd reports status %#x, want killed by SIGTERM (%#x)", status, SIGTERM);
	status = kept_status(FD_Y_NB);
	if (status != SIGTERM) fail("Y's second pidfd reports status %#x", status);
	if (inode(FD_Y) != inode(FD_Y_NB)) fail("Y's two pidfds are of two processes (inodes %lu, %lu)", inode(FD_Y), inode(FD_Y_NB));
	if (inode(FD_X) == inode(FD_Y)) fail("X's and Y's pidfds are of one process");
	if (write(ask[1], "?", 1) != 1 || read(answer[0], &s_ino, sizeof s_ino) != sizeof s_ino) fail("S does not answer");
	else if (s_ino != inode(FD_Y)) fail("S's pidfd of Y is of another process (inode %lu, here %lu)", s_ino, inode(FD_Y));
	if (!(fcntl(FD_Y_NB, F_GETFL) & O_NONBLOCK) || (fcntl(FD_Y, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK of Y's pidfds differs");
	if (fdinfo_pid(FD_X) != -1 || fdinfo_pid(FD_Y) != -1) fail("fdinfo shows pids %d %d, want -1", fdinfo_pid(FD_X), fdinfo_pid(FD_Y));
	errno = 0;
	if (syscall(SYS_pidfd_send_signal, FD_Y, 0, NULL, 0) != -1 || errno != ESRCH) fail("pidfd_send_signal(Y) gave %s, want ESRCH", strerror(errno));

	kill(s, SIGKILL);
	waitpid(s, NULL, 0);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
