/*
 * sessions: processes left in their parent's old session by a setsid after fork.
 *
 * The root R leads its session. Its children:
 *   A  forks A1, then calls setsid: A1 stays in R's session and group.
 *   B  forks B1, B1 forks B2; then B1 and B call setsid: B2 stays in R's
 *      session, two setsids below it (B and B1 must be born in it too).
 *   C  forks C1, calls setsid, then forks C2: C1 is in R's session, C2 in C's.
 *   D  calls setsid, forks D1, which makes a group of its own in D's session.
 * Each process notes its parent, session and group before READY (printed once
 * every process is set up). On SIGTERM each checks them again, passes SIGTERM
 * to its children, waits for them, and exits 1 on any problem (a descendant's
 * problem is printed as a FAIL line by that descendant); the root prints PASS
 * when every one of them exited 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static int ready_write = -1;
static pid_t kids[4];
static int kid_count;
static struct { pid_t ppid, sid, pgid; } noted;
static const char *name = "R";

static void die(const char *what)
{
	printf("setup: %s %s: %s\n", name, what, strerror(errno));
	exit(2);
}

/* Checks this process, ends its children, returns its exit status. */
static int finish(void)
{
	if (strcmp(name, "R") != 0 && getppid() != noted.ppid) fail("%s: parent %d, was %d", name, (int)getppid(), (int)noted.ppid);
	if (getsid(0) != noted.sid) fail("%s: session %d, was %d", name, (int)getsid(0), (int)noted.sid);
	if (getpgid(0) != noted.pgid) fail("%s: group %d, was %d", name, (int)getpgid(0), (int)noted.pgid);
	int bad = failbuf[0] != 0;
	for (int i = 0; i < kid_count; i++) kill(kids[i], SIGTERM);
	for (int i = 0; i < kid_count; i++) {
		int st = 0;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			bad = 1;
			if (!failbuf[0]) fail("%s: child %d ended with status %#x", name, (int)kids[i], st);
		}
	}
	if (failbuf[0] && strcmp(name, "R") != 0) printf("FAIL: %s\n", failbuf);
	return bad;
}

/* Set up: note the ids, say so by closing the ready pipe, wait for SIGTERM. */
static void settle(void)
{
	noted.ppid = getppid();
	noted.sid = getsid(0);
	noted.pgid = getpgid(0);
	close(ready_write);
	sigset_t none;
	sigemptyset(&none);
	while (!got_term) sigsuspend(&none);
}

static pid_t spawn(const char *child_name, void (*body)(void))
{
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) {
		name = child_name;
		kid_count = 0;
		body();
		settle();
		exit(finish());
	}
	kids[kid_count++] = pid;
	return pid;
}

static void leaf(void) {}

static void a(void) { spawn("A1", leaf); if (setsid() < 0) die("setsid"); }
static void b1(void) { spawn("B2", leaf); if (setsid() < 0) die("setsid"); }
static void b(void) { spawn("B1", b1); if (setsid() < 0) die("setsid"); }
static void c(void) { spawn("C1", leaf); if (setsid() < 0) die("setsid"); spawn("C2", leaf); }
static void d1(void) { if (setpgid(0, 0) < 0) die("setpgid"); }
static void d(void) { if (setsid() < 0) die("setsid"); spawn("D1", d1); }

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	/* Blocked until each process waits in sigsuspend: none may miss it. */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);
	if (getsid(0) != getpid()) { printf("setup: not a session leader\n"); return 2; }
	int ready[2];
	if (pipe(ready) != 0) die("pipe");
	ready_write = ready[1];
	spawn("A", a);
	spawn("B", b);
	spawn("C", c);
	spawn("D", d);
	close(ready[1]);
	char byte;
	while (read(ready[0], &byte, 1) < 0 && errno == EINTR) {}  /* EOF: every process is set up */
	close(ready[0]);
	noted.ppid = getppid();
	noted.sid = getsid(0);
	noted.pgid = getpgid(0);
	printf("READY\n");
	sigset_t none;
	sigemptyset(&none);
	while (!got_term) sigsuspend(&none);
	int bad = finish();
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else if (bad) printf("FAIL: a process of the tree found a problem (its line above)\n");
	else printf("PASS\n");
	return bad;
}
