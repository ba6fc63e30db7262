/*
 * pidfd: pidfds of a child (A, blocking and O_NONBLOCK), of a grandchild (G,
 * a process of the tree that is not our child), of itself, and of a child
 * (C) that exited with status 7 and was reaped.  On SIGTERM: fdinfo's Pid of
 * each is right; pidfd_send_signal reaches itself (SIGUSR2 handler), G
 * (signal 0, then SIGKILL and poll() sees it exit) and A (SIGUSR1 kills it,
 * waitid(P_PIDFD) reports it); C gives ESRCH and ECHILD.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_A 10
#define FD_A_NB 11
#define FD_G 12
#define FD_SELF 13
#define FD_C 14
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile sig_atomic_t got_term, usr2;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr2(int sig) { (void)sig; usr2++; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static int pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static int pidfd_send_signal(int fd, int sig) { return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0); }
static void place(int fd, int at) { if (fd < 0) die("pidfd_open"); if (dup2(fd, at) != at) die("dup2"); close(fd); }

static pid_t sleeper(void)
{
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) { signal(SIGTERM, SIG_DFL); for (;;) pause(); }
	return pid;
}

int main(void)
{
	signal(SIGTERM, on_term);
	signal(SIGUSR2, on_usr2);
	pid_t a = sleeper();
	int report[2];
	if (pipe(report)) die("pipe");
	pid_t b = fork();
	if (b < 0) die("fork");
	if (b == 0) {
		signal(SIGTERM, SIG_DFL);
		pid_t g = sleeper();
		if (write(report[1], &g, sizeof g) != sizeof g) _exit(1);
		for (;;) pause();
	}
	pid_t g;
	if (read(report[0], &g, sizeof g) != sizeof g) die("read grandchild pid");
	close(report[0]);
	close(report[1]);
	pid_t c = fork();
	if (c < 0) die("fork");
	if (c == 0) _exit(7);
	place(pidfd_open(c, 0), FD_C);
	if (waitpid(c, NULL, 0) != c) die("waitpid C");
	place(pidfd_open(a, 0), FD_A);
	place(pidfd_open(a, O_NONBLOCK /* PIDFD_NONBLOCK */), FD_A_NB);
	place(pidfd_open(g, 0), FD_G);
	place(pidfd_open(getpid(), 0), FD_SELF);
	if (fcntl(FD_SELF, F_SETFD, FD_CLOEXEC)) die("FD_CLOEXEC");

	printf("PIDS %d %d %d %d\n", getpid(), a, b, g);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	if (fdinfo_pid(FD_A) != a || fdinfo_pid(FD_A_NB) != a) fail("pidfd of A shows pid %d/%d, want %d", fdinfo_pid(FD_A), fdinfo_pid(FD_A_NB), a);
	if (fdinfo_pid(FD_G) != g) fail("pidfd of G shows pid %d, want %d", fdinfo_pid(FD_G), g);
	if (fdinfo_pid(FD_SELF) != getpid()) fail("own pidfd shows pid %d, want %d", fdinfo_pid(FD_SELF), getpid());
	if (fdinfo_pid(FD_C) != -1) fail("pidfd of reaped C shows pid %d, want -1", fdinfo_pid(FD_C));
	if (!(fcntl(FD_A_NB, F_GETFL) & O_NONBLOCK) || (fcntl(FD_A, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK of A's pidfds differs");
	if (fcntl(FD_SELF, F_GETFD) != FD_CLOEXEC || fcntl(FD_A, F_GETFD) != 0) fail("close-on-exec of the pidfds differs");

	if (pidfd_send_signal(FD_SELF, SIGUSR2) != 0) fail("pidfd_send_signal(self): %s", strerror(errno));
	for (int i = 0; i < 100 && !usr2; i++) usleep(10000);
	if (!usr2) fail("SIGUSR2 sent through its own pidfd never came");

	if (pidfd_send_signal(FD_G, 0) != 0) fail("pidfd_send_signal(G, 0): %s", strerror(errno));
	if (pidfd_send_signal(FD_G, SIGKILL) != 0) fail("pidfd_send_signal(G, SIGKILL): %s", strerror(errno));
	struct pollfd pfd = { .fd = FD_G, .events = POLLIN };
	if (poll(&pfd, 1, 5000) != 1) fail("G's pidfd did not become readable when G died");

	siginfo_t si;
	memset(&si, 0, sizeof si);
	if (waitid(P_PIDFD, FD_A_NB, &si, WEXITED | WNOHANG) != 0 || si.si_pid != 0) fail("A looks exited before it was signalled");
	if (pidfd_send_signal(FD_A, SIGUSR1) != 0) fail("pidfd_send_signal(A, SIGUSR1): %s", strerror(errno));
	memset(&si, 0, sizeof si);
	if (waitid(P_PIDFD, FD_A, &si, WEXITED) != 0) fail("waitid(P_PIDFD, A): %s", strerror(errno));
	else if (si.si_pid != a || si.si_code != CLD_KILLED || si.si_status != SIGUSR1)
		fail("waitid(A): pid %d code %d status %d, want %d killed by SIGUSR1", si.si_pid, si.si_code, si.si_status, a);

	errno = 0;
	if (pidfd_send_signal(FD_C, 0) != -1 || errno != ESRCH) fail("pidfd_send_signal(C) gave %s, want ESRCH", strerror(errno));
	errno = 0;
	if (waitid(P_PIDFD, FD_C, &si, WEXITED | WNOHANG) != -1 || errno != ECHILD) fail("waitid(C) gave %s, want ECHILD", strerror(errno));

	kill(b, SIGKILL);
	waitpid(b, NULL, 0);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
