/*
 * pidfdthread: a PIDFD_THREAD pidfd of its own second thread T.  On SIGTERM:
 * fdinfo shows T's tid and the flag is kept; pidfd_send_signal with
 * PIDFD_SIGNAL_THREAD reaches T itself (its handler sees its own tid); once T
 * exits, its pidfd becomes readable while the process lives on.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

#define FD_T 10
#define THREAD_FLAG O_EXCL /* PIDFD_THREAD */
#define SIGNAL_THREAD 1    /* PIDFD_SIGNAL_THREAD */

static volatile sig_atomic_t got_term, usr1_tid;
static int stop[2], started[2];
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr1(int sig) { (void)sig; usr1_tid = (sig_atomic_t)syscall(SYS_gettid); }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static void *second(void *arg)
{
	(void)arg;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	if (write(started[1], &tid, sizeof tid) != sizeof tid) return NULL;
	char byte;
	while (read(stop[0], &byte, 1) < 0 && errno == EINTR) {}
	return NULL;
}

int main(void)
{
	signal(SIGTERM, on_term);
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	if (pipe(stop) || pipe(started)) die("pipe");
	/* T never takes SIGTERM: the main thread waits for it in pause(). */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, second, NULL)) die("pthread_create");
	pthread_sigmask(SIG_UNBLOCK, &term, NULL);
	pid_t tid;
	if (read(started[0], &tid, sizeof tid) != sizeof tid) die("read tid");
	/* Only T takes SIGUSR1: the main thread blocks it. */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	int fd = (int)syscall(SYS_pidfd_open, tid, THREAD_FLAG);
	if (fd < 0 || dup2(fd, FD_T) != FD_T) die("pidfd_open(PIDFD_THREAD)");
	close(fd);

	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	if (fdinfo_pid(FD_T) != tid) fail("the thread pidfd shows pid %d, want tid %d", fdinfo_pid(FD_T), tid);
	if (!(fcntl(FD_T, F_GETFL) & THREAD_FLAG)) fail("the pidfd lost PIDFD_THREAD");
	if (syscall(SYS_pidfd_send_signal, FD_T, SIGUSR1, NULL, SIGNAL_THREAD) != 0) fail("pidfd_send_signal(T): %s", strerror(errno));
	for (int i = 0; i < 200 && !usr1_tid; i++) usleep(10000);
	if (usr1_tid != tid) fail("SIGUSR1 sent to thread %d was taken by %d", tid, (int)usr1_tid);
	struct pollfd pfd = { .fd = FD_T, .events = POLLIN };
	if (poll(&pfd, 1, 0) != 0) fail("T's pidfd is readable while T runs");
	if (write(stop[1], "x", 1) != 1) fail("write stop");
	pthread_join(t, NULL);
	if (poll(&pfd, 1, 5000) != 1) fail("T's pidfd did not become readable when T exited");
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
