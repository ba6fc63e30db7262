/*
 * restartblock: threads asleep in system calls that the kernel resumes
 * through a restart block (-ERESTART_RESTARTBLOCK), which stays with the old
 * task: poll() without a timeout, and a FUTEX_WAIT with one. No signal
 * handler runs in those threads, so they must never see EINTR: coreutils'
 * `tail -F`, blocked in poll(), exits on it.
 *
 * The poller loops on poll(pipe, -1) and the waiter on FUTEX_WAIT (60 s);
 * both have SIGTERM blocked. On SIGTERM the main thread writes a byte to the
 * pipe and wakes the futex; each thread reports what its call returned, and
 * the fixture prints PASS only if both woke for that reason, never with EINTR.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static int pipefd[2];
static uint32_t word;
static volatile int poll_result = -2, poll_errno, futex_result = -2, futex_errno, ready_count;

static void *poller(void *arg)
{
	(void)arg;
	struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
	__atomic_add_fetch(&ready_count, 1, __ATOMIC_SEQ_CST);
	int r = poll(&p, 1, -1);
	poll_errno = errno;
	poll_result = r;
	return NULL;
}

static void *waiter(void *arg)
{
	(void)arg;
	struct timespec t = { 60, 0 };
	__atomic_add_fetch(&ready_count, 1, __ATOMIC_SEQ_CST);
	long r;
	do r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &t, NULL, 0);
	while (r == 0 && __atomic_load_n(&word, __ATOMIC_SEQ_CST) == 0);  /* a spurious wake only */
	futex_errno = errno;
	futex_result = (int)r;
	return NULL;
}

int main(void)
{
	signal(SIGTERM, on_term);
	if (pipe(pipefd) != 0) { perror("pipe"); return 2; }
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	/* The threads inherit SIGTERM blocked: the handler can only run in main. */
	pthread_sigmask(SIG_BLOCK, &term, NULL);
	pthread_t a, b;
	if (pthread_create(&a, NULL, poller, NULL) != 0 || pthread_create(&b, NULL, waiter, NULL) != 0) { perror("pthread_create"); return 2; }
	pthread_sigmask(SIG_UNBLOCK, &term, NULL);
	while (__atomic_load_n(&ready_count, __ATOMIC_SEQ_CST) < 2) usleep(1000);
	usleep(100000);  /* both inside their calls */
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	if (poll_result != -2) fail("poll returned %d (%s) before SIGTERM", poll_result, strerror(poll_errno));
	if (futex_result != -2) fail("FUTEX_WAIT returned %d (%s) before SIGTERM", futex_result, strerror(futex_errno));
	__atomic_store_n(&word, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	if (write(pipefd[1], "x", 1) != 1) fail("write: %s", strerror(errno));
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	if (poll_result != 1) fail("poll returned %d (%s), want 1", poll_result, poll_result < 0 ? strerror(poll_errno) : "");
	if (futex_result != 0 && !(futex_result == -1 && futex_errno == EAGAIN))
		fail("FUTEX_WAIT returned %d (%s), want 0", futex_result, futex_result < 0 ? strerror(futex_errno) : "");

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
