/*
 * leaderexit: a process whose main thread called pthread_exit while another
 * thread runs; /proc then shows the process as a zombie. cryo refuses to dump
 * it (in one line naming it) and must leave it running as it was.
 *
 *   leaderexit        the process is the root of the tree
 *   leaderexit child  such a process is the child of the root (which must not
 *                     be taken for a zombie)
 *
 * Prints READY, waits for SIGTERM, then checks that its main thread is still
 * the exited one and that the thread still runs under its own id. In child
 * mode the root prints "CHILD <pid>", passes SIGTERM on and wants the
 * child's verdict on a pipe.
 * PASS or FAIL: reasons.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "fixture.h"

static char task_state(pid_t pid, pid_t tid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int)pid, (int)tid);
	return stat_state(path);
}

static volatile sig_atomic_t got_term;
static pid_t thread_tid;
static int verdict_fd = -1;

static void on_term(int sig) { (void)sig; got_term = 1; }

static void *survivor(void *unused)
{
	(void)unused;
	thread_tid = (pid_t)syscall(SYS_gettid);
	/* Only this thread takes SIGTERM: the main thread is gone. */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_UNBLOCK, &term, NULL);
	while (!got_term) pause();
	pid_t pid = getpid();
	if ((pid_t)syscall(SYS_gettid) != thread_tid) fail("the thread's id changed");
	char leader = task_state(pid, pid);
	if (leader != 'Z') fail("the main thread %d is in state %c, not Z", (int)pid, leader);
	char self = task_state(pid, thread_tid);
	if (self != 'R' && self != 'S') fail("the thread %d is in state %c", (int)thread_tid, self);
	const char *line = failbuf[0] ? "FAIL" : "PASS";
	if (verdict_fd >= 0) {
		char out[4200];
		int n = snprintf(out, sizeof(out), "%s%s%s\n", line, failbuf[0] ? ": " : "", failbuf);
		if (write(verdict_fd, out, (size_t)n) != n) {}
	} else {
		if (failbuf[0]) printf("FAIL: %s\n", failbuf);
		else printf("PASS\n");
		fflush(stdout);
	}
	exit(failbuf[0] ? 1 : 0);
}

/* Main thread: start the survivor, say READY (unless a parent speaks for us), exit alone. */
static void become_leaderless(int announce)
{
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);
	pthread_t thread;
	if (pthread_create(&thread, NULL, survivor, NULL) != 0) {
		printf("FAIL: pthread_create\n");
		exit(1);
	}
	while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST)) usleep(1000);
	if (announce) {
		printf("READY\n");
		fflush(stdout);
	}
	pthread_exit(NULL);
}

int main(int argc, char **argv)
{
	struct sigaction act = { .sa_handler = on_term };
	sigaction(SIGTERM, &act, NULL);
	if (argc < 2) become_leaderless(1);
	if (strcmp(argv[1], "child") != 0) {
		printf("FAIL: unknown mode %s\n", argv[1]);
		return 1;
	}
	int verdict[2];
	if (pipe(verdict) != 0) {
		printf("FAIL: pipe: %s\n", strerror(errno));
		return 1;
	}
	pid_t child = fork();
	if (child == 0) {
		close(verdict[0]);
		verdict_fd = verdict[1];
		become_leaderless(0);
	}
	close(verdict[1]);
	/* Ready once the child's main thread has exited. */
	while (task_state(child, child) != 'Z') usleep(1000);
	printf("CHILD %d\n", (int)child);
	ready_then_wait(&got_term);
	kill(child, SIGTERM);
	char answer[4200] = "";
	ssize_t n = read(verdict[0], answer, sizeof(answer) - 1);
	if (n <= 0) fail("the child (pid %d) gave no verdict", (int)child);
	else {
		answer[n] = 0;
		answer[strcspn(answer, "\n")] = 0;
		if (strcmp(answer, "PASS") != 0) fail("child: %s", answer);
	}
	int status = 0;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("the child ended with status %#x", status);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
