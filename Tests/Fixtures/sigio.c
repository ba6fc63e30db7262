/*
 * sigio: signal-driven I/O kept across checkpoint/restore.
 *   pipe A (read end FD_A): owner this process (F_SETOWN), F_SETSIG SIGUSR1, O_ASYNC
 *   socketpair B (FD_B): owner this process group (F_SETOWN_EX F_OWNER_PGRP), SIGIO, O_ASYNC
 *   pipe C (read end FD_C): owner the child process (F_SETOWN), F_SETSIG SIGUSR2, O_ASYNC;
 *     the child reports each SIGUSR2 it gets on a pipe
 *   FD_D: a pipe with F_SETSIG SIGRTMIN+1 only (no owner, no O_ASYNC)
 * On SIGTERM: the owners, signals and O_ASYNC read back the same, and writing
 * to each must bring its signal (with si_fd for F_SETSIG) to its owner.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_A 10
#define FD_A_W 11
#define FD_B 12
#define FD_B_PEER 13
#define FD_C 14
#define FD_C_W 15
#define FD_REPORT 16
#define FD_D 17

static volatile sig_atomic_t got_term, usr1, usr1_fd = -1, sigio;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr1(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; usr1++; usr1_fd = si->si_fd; }
static void on_io(int sig) { (void)sig; sigio++; }
static volatile sig_atomic_t child_usr2;
static void on_usr2(int sig) { (void)sig; child_usr2++; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static void place(int fd, int at) { if (fd == at) return; if (dup2(fd, at) != at) die("dup2"); close(fd); }

static int wait_for(volatile sig_atomic_t *counter, int at_least)
{
	for (int i = 0; i < 200 && *counter < at_least; i++) usleep(10000);
	return *counter >= at_least;
}

static void owner_is(const char *name, int fd, int type, pid_t pid, int sig)
{
	struct f_owner_ex ex;
	if (fcntl(fd, F_GETOWN_EX, &ex) != 0) { fail("%s F_GETOWN_EX: %s", name, strerror(errno)); return; }
	if (ex.type != type || ex.pid != pid) fail("%s owner %d/%d, want %d/%d", name, ex.type, ex.pid, type, pid);
	int s = fcntl(fd, F_GETSIG);
	if (s != sig) fail("%s F_GETSIG %d, want %d", name, s, sig);
}

int main(void)
{
	int p[2], s[2], c[2], r[2], d[2];
	if (pipe(c) || pipe(r)) die("pipe");
	place(c[0], FD_C);
	place(c[1], FD_C_W);
	place(r[1], FD_REPORT);
	int report = r[0];
	pid_t child = fork();
	if (child < 0) die("fork");
	if (child == 0) {
		close(report);
		signal(SIGTERM, SIG_DFL);
		signal(SIGIO, SIG_IGN);  /* socket B signals the whole group */
		struct sigaction sa = { .sa_handler = on_usr2 };
		sigaction(SIGUSR2, &sa, NULL);
		int reported = 0;
		for (;;) {
			pause();
			while (reported < child_usr2) { reported++; if (write(FD_REPORT, "u", 1) != 1) _exit(1); }
		}
	}
	close(FD_REPORT);
	signal(SIGTERM, on_term);
	struct sigaction sa = { .sa_sigaction = on_usr1, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGIO, on_io);

	if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, s) || pipe(d)) die("pipe/socketpair");
	place(p[0], FD_A);
	place(p[1], FD_A_W);
	place(s[0], FD_B);
	place(s[1], FD_B_PEER);
	place(d[0], FD_D);
	close(d[1]);
	if (fcntl(FD_A, F_SETOWN, getpid()) || fcntl(FD_A, F_SETSIG, SIGUSR1) || fcntl(FD_A, F_SETFL, O_ASYNC | O_NONBLOCK)) die("fcntl A");
	struct f_owner_ex pg = { F_OWNER_PGRP, getpgrp() };
	if (fcntl(FD_B, F_SETOWN_EX, &pg) || fcntl(FD_B, F_SETFL, O_ASYNC | O_NONBLOCK)) die("fcntl B");
	if (fcntl(FD_C, F_SETOWN, child) || fcntl(FD_C, F_SETSIG, SIGUSR2) || fcntl(FD_C, F_SETFL, O_ASYNC)) die("fcntl C");
	if (fcntl(FD_D, F_SETSIG, SIGRTMIN + 1)) die("fcntl D");
	/* Before the dump: it works. */
	if (write(FD_A_W, "a", 1) != 1 || !wait_for(&usr1, 1)) die("no SIGUSR1 before the dump");
	char b;
	if (read(FD_A, &b, 1) != 1) die("read A");

	printf("PIDS %d %d\n", getpid(), child);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	owner_is("pipe A", FD_A, F_OWNER_PID, getpid(), SIGUSR1);
	owner_is("socket B", FD_B, F_OWNER_PGRP, getpgrp(), 0);
	owner_is("pipe C", FD_C, F_OWNER_PID, child, SIGUSR2);
	owner_is("pipe D", FD_D, F_OWNER_TID, 0, SIGRTMIN + 1);
	if (!(fcntl(FD_A, F_GETFL) & O_ASYNC) || !(fcntl(FD_B, F_GETFL) & O_ASYNC) || !(fcntl(FD_C, F_GETFL) & O_ASYNC)) fail("O_ASYNC lost");
	if (fcntl(FD_D, F_GETFL) & O_ASYNC) fail("O_ASYNC appeared on D");

	int before = usr1;
	usr1_fd = -1;
	if (write(FD_A_W, "a", 1) != 1 || !wait_for(&usr1, before + 1)) fail("no SIGUSR1 for pipe A after restore");
	else if (usr1_fd != FD_A) fail("SIGUSR1 came with si_fd %d, want %d", (int)usr1_fd, FD_A);
	before = sigio;
	if (write(FD_B_PEER, "b", 1) != 1 || !wait_for(&sigio, before + 1)) fail("no SIGIO for socket B after restore");
	if (write(FD_C_W, "c", 1) != 1) fail("write C");
	char buf[8];
	struct pollfd pfd = { .fd = report, .events = POLLIN };
	if (poll(&pfd, 1, 3000) != 1 || read(report, buf, 1) != 1) fail("the child got no SIGUSR2 for pipe C after restore");

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
