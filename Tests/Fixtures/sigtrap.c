/*
 * sigtrap: SIGTRAP states a debugger-free program can be in, which cryo's own
 * breakpoints (int3) must leave as they were. The kernel forces an int3's
 * SIGTRAP: were SIGTRAP blocked or ignored then, its action would become
 * SIG_DFL; were one pending, the trap's would merge with it.
 *
 *   sigtrap handler   a SIGTRAP handler, SIGTRAP not blocked, none pending
 *   sigtrap pending   a SIGTRAP handler, SIGTRAP blocked in both threads, one
 *                     pending in the process queue, one in the main thread's
 *                     and one in the second thread's, each queued with its
 *                     own value
 *   sigtrap ignored   SIGTRAP ignored
 *
 * Prints READY, waits for SIGTERM, then checks the action, the mask and every
 * pending SIGTRAP (by sigtimedwait: sender, si_code, value), and raises one
 * more to see the action work. PASS or FAIL: reasons.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, trapped;
static int check_pipe[2];
static volatile pid_t second_tid;
static const char *mode = "pending";

static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_trap(int sig) { (void)sig; trapped++; }

static pid_t gettid_raw(void) { return (pid_t)syscall(SYS_gettid); }

enum { PROCESS_VALUE = 0x7a11, MAIN_VALUE = 0x7a12, SECOND_VALUE = 0x7a13 };

/* Takes one pending SIGTRAP without waiting: its value, or -1 when there is none
 * (-2 when it is not one queued by this process). */
static int take_trap(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTRAP);
	siginfo_t info;
	struct timespec zero = { 0, 0 };
	if (sigtimedwait(&set, &info, &zero) != SIGTRAP) return -1;
	if (info.si_code != SI_QUEUE || info.si_pid != getpid()) return -2;
	return info.si_value.sival_int;
}

static void check_action(void)
{
	struct sigaction now;
	sigaction(SIGTRAP, NULL, &now);
	void (*want)(int) = strcmp(mode, "ignored") == 0 ? SIG_IGN : on_trap;
	if (now.sa_handler != want)
		fail("SIGTRAP action is %p, not %p (%s)", (void *)now.sa_handler, (void *)want,
		     now.sa_handler == SIG_DFL ? "SIG_DFL" : "other");
}

static void *second(void *unused)
{
	(void)unused;
	second_tid = gettid_raw();
	char byte;
	/* The main thread writes once it got SIGTERM: then look at this thread's own queue. */
	while (read(check_pipe[0], &byte, 1) != 1) {}
	sigset_t mask;
	pthread_sigmask(SIG_BLOCK, NULL, &mask);
	if (!sigismember(&mask, SIGTRAP)) fail("second thread: SIGTRAP is no longer blocked");
	int value = take_trap();
	if (value != SECOND_VALUE) fail("second thread: its own pending SIGTRAP is gone (took %#x)", value);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1) mode = argv[1];
	struct sigaction term = { .sa_handler = on_term };
	sigaction(SIGTERM, &term, NULL);
	struct sigaction trap = { .sa_handler = strcmp(mode, "ignored") == 0 ? SIG_IGN : on_trap };
	sigaction(SIGTRAP, &trap, NULL);

	pthread_t thread;
	int pending = strcmp(mode, "pending") == 0;
	if (pending) {
		sigset_t block;
		sigemptyset(&block);
		sigaddset(&block, SIGTRAP);
		sigprocmask(SIG_BLOCK, &block, NULL);
		if (pipe(check_pipe) != 0 || pthread_create(&thread, NULL, second, NULL) != 0) {
			printf("FAIL: setup: %s\n", strerror(errno));
			return 1;
		}
		while (!__atomic_load_n(&second_tid, __ATOMIC_SEQ_CST)) usleep(1000);
		sigqueue(getpid(), SIGTRAP, (union sigval){ .sival_int = PROCESS_VALUE });
		pthread_sigqueue(pthread_self(), SIGTRAP, (union sigval){ .sival_int = MAIN_VALUE });
		pthread_sigqueue(thread, SIGTRAP, (union sigval){ .sival_int = SECOND_VALUE });
	} else if (strcmp(mode, "handler") != 0 && strcmp(mode, "ignored") != 0) {
		printf("FAIL: unknown mode %s\n", mode);
		return 1;
	}

	ready_then_wait(&got_term);

	check_action();
	if (pending) {
		if (write(check_pipe[1], "x", 1) != 1) fail("write: %s", strerror(errno));
		pthread_join(thread, NULL);
		sigset_t mask;
		sigprocmask(SIG_BLOCK, NULL, &mask);
		if (!sigismember(&mask, SIGTRAP)) fail("SIGTRAP is no longer blocked");
		/* The thread's own queue goes first, then the process's. */
		int value = take_trap();
		if (value != MAIN_VALUE) fail("the main thread's own pending SIGTRAP is gone (took %#x)", value);
		value = take_trap();
		if (value != PROCESS_VALUE) fail("the process's pending SIGTRAP is gone (took %#x)", value);
		value = take_trap();
		if (value != -1) fail("one SIGTRAP too many is pending (%#x)", value);
		sigset_t unblock;
		sigemptyset(&unblock);
		sigaddset(&unblock, SIGTRAP);
		sigprocmask(SIG_UNBLOCK, &unblock, NULL);
	} else {
		sigset_t now;
		sigpending(&now);
		if (sigismember(&now, SIGTRAP)) fail("a SIGTRAP is pending that was not before");
	}
	/* The action must work too: the handler counts it, an ignored one does nothing. */
	int before = trapped;
	raise(SIGTRAP);
	if (strcmp(mode, "ignored") != 0 && trapped != before + 1) fail("the SIGTRAP handler did not run");

	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
