/*
 * stopped: children stopped by each stop signal across checkpoint/restore.
 *
 * The root (a session leader) has children stopped by SIGSTOP, SIGTSTP,
 * SIGTTIN and SIGTTOU, and one with two threads stopped by SIGTSTP. Those
 * stopped by the terminal signals are in process groups of their own, which
 * the root (another group of the session) keeps from being orphaned: the
 * kernel discards those signals in orphaned groups. Before READY it checks
 * each with waitid(WSTOPPED | WNOWAIT) and prints "STOPPED pid...". On
 * SIGTERM it checks that each child is in state T and that waitid(WSTOPPED)
 * reports it stopped by its own signal, then continues it (SIGCONT): each
 * child checks its ids and exits 0. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, got_cont;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_cont(int sig) { (void)sig; got_cont = 1; }

struct kid { pid_t pid; int sig; int threads; };
static struct kid kids[] = { { 0, SIGSTOP, 0 }, { 0, SIGTSTP, 0 }, { 0, SIGTTIN, 0 }, { 0, SIGTTOU, 0 }, { 0, SIGTSTP, 1 } };
#define KIDS (int)(sizeof(kids) / sizeof(kids[0]))

static void die(const char *what)
{
	printf("setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void *idle_thread(void *arg)
{
	(void)arg;
	sigset_t all;   /* SIGCONT must reach the main thread */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) pause();
	return NULL;
}

static char proc_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	char state = '?';
	if (fgets(buf, sizeof(buf), f)) {
		char *paren = strrchr(buf, ')');
		if (paren) sscanf(paren + 1, " %c", &state);
	}
	fclose(f);
	return state;
}

/* The child: default stop actions, then it waits to be stopped and continued. */
static void child(struct kid *k, pid_t root, int ready)
{
	signal(SIGTERM, SIG_DFL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_cont;
	sigaction(SIGCONT, &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	pid_t group = k->sig == SIGSTOP ? root : getpid();
	if (group != root && setpgid(0, 0) != 0) _exit(90);
	if (k->threads) {
		pthread_t t;
		if (pthread_create(&t, NULL, idle_thread, NULL) != 0) _exit(91);
	}
	pid_t me = getpid();
	close(ready);
	while (!got_cont) sigsuspend(&none);
	/* Continued: exit 0 if all is as it was, else a code that says what differs. */
	if (getpid() != me) _exit(10);
	if (getppid() != root) _exit(11);
	if (getpgrp() != group) _exit(12);
	if (getsid(0) != root) _exit(13);
	_exit(0);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	pid_t root = getpid();
	if (getsid(0) != root) { printf("setup: not a session leader\n"); return 2; }

	for (int i = 0; i < KIDS; i++) {
		int ready[2];
		if (pipe(ready) != 0) die("pipe");
		pid_t pid = fork();
		if (pid < 0) die("fork");
		if (pid == 0) { close(ready[0]); child(&kids[i], root, ready[1]); }
		close(ready[1]);
		char c;
		while (read(ready[0], &c, 1) < 0 && errno == EINTR) {}
		close(ready[0]);
		kids[i].pid = pid;
		if (kill(pid, kids[i].sig) != 0) die("kill");
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)pid, &si, WSTOPPED | WNOWAIT) != 0) die("waitid");
		if (si.si_code != CLD_STOPPED || si.si_status != kids[i].sig) {
			printf("setup: child %d: si_code %d si_status %d, want stopped by %d\n", (int)pid, si.si_code, si.si_status, kids[i].sig);
			return 2;
		}
	}
	printf("STOPPED");
	for (int i = 0; i < KIDS; i++) printf(" %d", (int)kids[i].pid);
	printf("\nREADY\n");

	sigset_t none;
	sigemptyset(&none);
	while (!got_term) sigsuspend(&none);

	for (int i = 0; i < KIDS; i++) {
		pid_t pid = kids[i].pid;
		char state = proc_state(pid);
		if (state != 'T') fail("child %d: state %c, want T (stopped by %d)", (int)pid, state ? state : '-', kids[i].sig);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)pid, &si, WSTOPPED | WNOHANG) != 0)
			fail("child %d: waitid(WSTOPPED): %s", (int)pid, strerror(errno));
		else if (si.si_pid != pid || si.si_code != CLD_STOPPED || si.si_status != kids[i].sig)
			fail("child %d: waitid(WSTOPPED) gave pid %d code %d status %d, want stopped by %d", (int)pid,
			     (int)si.si_pid, si.si_code, si.si_status, kids[i].sig);
		kill(pid, SIGCONT);
		int st = 0;
		double deadline = now() + 5;
		pid_t w;
		while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now() < deadline) usleep(2000);
		if (w != pid) fail("child %d: did not end after SIGCONT", (int)pid);
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("child %d: ended with status %#x after SIGCONT", (int)pid, st);
	}
	int st;
	pid_t extra = waitpid(-1, &st, WNOHANG);
	if (extra > 0) fail("an unexpected child %d had ended with status %#x", (int)extra, st);
	else if (extra == 0) fail("an unexpected child is still running");

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
