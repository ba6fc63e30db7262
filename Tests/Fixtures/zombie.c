/*
 * zombie: zombies and a process group without its leader, across
 * checkpoint/restore.
 *
 * The root (a session leader) is a child subreaper (PR_SET_CHILD_SUBREAPER)
 * and has these children:
 *   Z1  exited with status 42, not reaped (a zombie)
 *   Z2  killed by SIGUSR1 (default action), not reaped (a zombie)
 *   C   alive, blocked in read() on a pipe from the root; C has a child of
 *       its own, Z3, that exited with status 3 and is not reaped
 *   B   alive: a child of A, where A made its own process group, forked B in
 *       it, and exited (reaped by the root). B was reparented to the root
 *       (the subreaper) and lives on in group A, whose pid is no process.
 *
 * Before READY it prints "PIDS root C B Z1 Z2 Z3", "ZOMBIES Z1 Z2 Z3" and
 * "DEADPGID A". On SIGTERM the root checks its own ids and subreaper flag,
 * that Z1/Z2 are zombies it can reap with the right statuses, pings C over
 * its pipes (C answers with its ids, then reaps Z3 and reports), has B check
 * its ids (pgid A, ppid root), and that no other child is left. PASS or
 * "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }



static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "setup: pid %d: ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}


/* Reads up to a newline (or EOF) before the deadline; returns the length, or
 * -1 on error, -3 on timeout. */

static int wait_timeout(pid_t pid, int *status, double seconds)
{
	double deadline = now() + seconds;
	for (;;) {
		pid_t w = waitpid(pid, status, WNOHANG);
		if (w != 0 || now() > deadline) return w;
		usleep(2000);
	}
}

static void close_other_fds(int keep1, int keep2)
{
	for (int fd = 3; fd < 1024; fd++)
		if (fd != keep1 && fd != keep2)
			close(fd);
}

static void sleep_forever_until_term(void)
{
	sigset_t none;
	sigemptyset(&none);
	while (!got_term)
		sigsuspend(&none);
}

/* C: answers "p" with its ids, "x" with the status of its zombie Z3 and exits 7. */
static void live_child(int in, int out, pid_t root)
{
	close_other_fds(in, out);
	pid_t z3 = fork();
	if (z3 < 0) die("fork: %s", strerror(errno));
	if (z3 == 0) _exit(3);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)z3, &si, WEXITED | WNOWAIT) != 0) die("waitid(Z3): %s", strerror(errno));
	dprintf(out, "ready %d\n", (int)z3);
	for (;;) {
		char c;
		ssize_t r = read(in, &c, 1);   /* C sits here while dumped */
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) _exit(5);
		if (c == 'p') {
			dprintf(out, "pong %d %d %d %d\n", (int)getpid(), (int)getppid(), (int)getpgrp(), (int)getsid(0));
		} else if (c == 'x') {
			char state = '?';
			char path[64], buf[512];
			snprintf(path, sizeof(path), "/proc/%d/stat", (int)z3);
			FILE *f = fopen(path, "r");
			if (f) {
				if (fgets(buf, sizeof(buf), f)) {
					char *paren = strrchr(buf, ')');
					if (paren && paren[1]) state = paren[2];
				}
				fclose(f);
			}
			int st = 0;
			pid_t w = waitpid(z3, &st, WNOHANG);
			if (w != z3)
				dprintf(out, "done FAIL C %d: zombie child Z3 %d: waitpid returned %d (%s), state %c\n",
				        (int)getpid(), (int)z3, (int)w, w < 0 ? strerror(errno) : "not ended", state);
			else if (state != 'Z')
				dprintf(out, "done FAIL C %d: zombie child Z3 %d was in state %c, not Z\n", (int)getpid(), (int)z3, state);
			else if (!WIFEXITED(st) || WEXITSTATUS(st) != 3)
				dprintf(out, "done FAIL C %d: zombie child Z3 %d had wait status %#x, want exit 3\n", (int)getpid(), (int)z3, st);
			else
				dprintf(out, "done OK\n");
			(void)root;
			_exit(7);
		}
	}
}

/* B, reparented to the root: checks its ids on SIGTERM and reports. */
static void orphan_child(int out, pid_t root, pid_t a)
{
	/* Wait to be reparented to the root once A is gone. */
	double deadline = now() + 10;
	while (getppid() != root && now() < deadline)
		usleep(1000);
	if (getppid() != root) die("B: ppid %d, want the root %d", (int)getppid(), (int)root);
	if (getpgrp() != a) die("B: pgid %d, want A %d", (int)getpgrp(), (int)a);
	pid_t me = getpid();
	dprintf(out, "ready\n");
	sleep_forever_until_term();

	char fails[1000] = "";
	size_t n = 0;
#define BFAIL(...) n += (size_t)snprintf(fails + n, n < sizeof(fails) ? sizeof(fails) - n : 0, __VA_ARGS__)
	if (getpid() != me) BFAIL(" getpid() is %d;", (int)getpid());
	if (getppid() != root) BFAIL(" getppid() is %d, want the root %d;", (int)getppid(), (int)root);
	if (getpgrp() != a) BFAIL(" getpgrp() is %d, want the dead leader A %d;", (int)getpgrp(), (int)a);
	if (getsid(0) != root) BFAIL(" getsid(0) is %d, want %d;", (int)getsid(0), (int)root);
	if (kill(a, 0) == 0 || errno != ESRCH) BFAIL(" pid A %d exists;", (int)a);
	if (n && n < sizeof(fails) && fails[n - 1] == ';') fails[n - 1] = 0;
	if (n) dprintf(out, "FAIL B %d:%s\n", (int)me, fails);
	else dprintf(out, "OK\n");
	_exit(n ? 1 : 0);
}

static char proc_state(pid_t pid, pid_t *ppid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	char state = '?';
	if (fgets(buf, sizeof(buf), f)) {
		char *paren = strrchr(buf, ')');
		int pp = 0;
		if (paren && sscanf(paren + 1, " %c %d", &state, &pp) == 2 && ppid) *ppid = pp;
	}
	fclose(f);
	return state;
}

static void check_zombie(const char *name, pid_t pid, pid_t root, int want_exit, int want_sig)
{
	pid_t ppid = 0;
	char state = proc_state(pid, &ppid);
	if (state != 'Z') fail("%s %d: state %c, want Z", name, (int)pid, state ? state : '-');
	if (state && ppid != root) fail("%s %d: ppid %d, want %d", name, (int)pid, (int)ppid, (int)root);
	int st = 0;
	pid_t w = waitpid(pid, &st, WNOHANG);
	if (w != pid) {
		fail("%s %d: waitpid returned %d (%s)", name, (int)pid, (int)w, w < 0 ? strerror(errno) : "still running");
		return;
	}
	if (want_sig == 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == want_exit))
		fail("%s %d: wait status %#x, want exit status %d", name, (int)pid, st, want_exit);
	if (want_sig != 0 && !(WIFSIGNALED(st) && WTERMSIG(st) == want_sig && !WCOREDUMP(st)))
		fail("%s %d: wait status %#x, want killed by signal %d", name, (int)pid, st, want_sig);
	if (kill(pid, 0) == 0 || errno != ESRCH) fail("%s %d: still exists after waitpid", name, (int)pid);
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction: %s", strerror(errno));
	signal(SIGPIPE, SIG_IGN);
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	close_other_fds(-1, -1);

	pid_t root = getpid();
	if (getsid(0) != root || getpgrp() != root) die("the root must be a session leader");
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));

	/* Z1: exit status 42 */
	pid_t z1 = fork();
	if (z1 < 0) die("fork: %s", strerror(errno));
	if (z1 == 0) _exit(42);

	/* Z2: killed by SIGUSR1 */
	pid_t z2 = fork();
	if (z2 < 0) die("fork: %s", strerror(errno));
	if (z2 == 0) { for (;;) pause(); }
	if (kill(z2, SIGUSR1) != 0) die("kill(Z2): %s", strerror(errno));

	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)z1, &si, WEXITED | WNOWAIT) != 0 || si.si_code != CLD_EXITED || si.si_status != 42)
		die("Z1 %d did not end with status 42", (int)z1);
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)z2, &si, WEXITED | WNOWAIT) != 0 || si.si_code != CLD_KILLED || si.si_status != SIGUSR1)
		die("Z2 %d was not killed by SIGUSR1", (int)z2);

	/* C, with its zombie Z3 */
	int to_c[2], from_c[2];
	if (pipe(to_c) != 0 || pipe(from_c) != 0) die("pipe: %s", strerror(errno));
	pid_t c = fork();
	if (c < 0) die("fork: %s", strerror(errno));
	if (c == 0) live_child(to_c[0], from_c[1], root);
	close(to_c[0]);
	close(from_c[1]);
	char line[3000];
	int z3 = 0;
	if (read_line(from_c[0], line, sizeof(line), 10) < 0 || sscanf(line, "ready %d", &z3) != 1) die("C did not get ready");

	/* A makes a group, forks B into it, and exits; B is reparented to us. */
	int info[2], from_b[2];
	if (pipe(info) != 0 || pipe(from_b) != 0) die("pipe: %s", strerror(errno));
	pid_t a = fork();
	if (a < 0) die("fork: %s", strerror(errno));
	if (a == 0) {
		close_other_fds(info[1], from_b[1]);
		if (setpgid(0, 0) != 0) _exit(3);
		pid_t self = getpid();
		pid_t b = fork();
		if (b < 0) _exit(4);
		if (b == 0) {
			close(info[1]);
			if (setpgid(0, self) != 0) die("B: setpgid: %s", strerror(errno));
			orphan_child(from_b[1], root, self);
		}
		setpgid(b, self);
		dprintf(info[1], "%d\n", (int)b);
		_exit(0);
	}
	setpgid(a, a);
	close(info[1]);
	close(from_b[1]);
	int b = 0;
	if (read_line(info[0], line, sizeof(line), 10) < 0 || sscanf(line, "%d", &b) != 1) die("A sent no pid for B");
	close(info[0]);
	int st = 0;
	if (waitpid(a, &st, 0) != a || !WIFEXITED(st) || WEXITSTATUS(st) != 0) die("A %d did not exit cleanly (%#x)", (int)a, st);
	if (read_line(from_b[0], line, sizeof(line), 10) < 0 || strcmp(line, "ready") != 0) die("B did not get ready");

	printf("PIDS %d %d %d %d %d %d\n", (int)root, (int)c, b, (int)z1, (int)z2, z3);
	printf("ZOMBIES %d %d %d\n", (int)z1, (int)z2, z3);
	printf("DEADPGID %d\n", (int)a);
	printf("READY\n");
	fflush(stdout);

	sleep_forever_until_term();

	/* ---- checks ---- */
	if (getpid() != root) fail("getpid() is %d", (int)getpid());
	if (getpgrp() != root) fail("getpgrp() is %d", (int)getpgrp());
	if (getsid(0) != root) fail("getsid(0) is %d", (int)getsid(0));
	int subreaper = -1;
	if (prctl(PR_GET_CHILD_SUBREAPER, &subreaper) != 0 || subreaper != 1)
		fail("PR_GET_CHILD_SUBREAPER is %d, want 1", subreaper);

	check_zombie("zombie Z1", z1, root, 42, 0);
	check_zombie("zombie Z2", z2, root, 0, SIGUSR1);

	/* C answers a ping with its ids, then reaps Z3 and ends with 7. */
	if (write(to_c[1], "p", 1) != 1) fail("write to C %d: %s", (int)c, strerror(errno));
	int rc = read_line(from_c[0], line, sizeof(line), 5);
	int cp = 0, cpp = 0, cpg = 0, cs = 0;
	if (rc < 0) fail("C %d: no answer to a ping (%s)", (int)c, rc == -3 ? "timed out" : strerror(errno));
	else if (sscanf(line, "pong %d %d %d %d", &cp, &cpp, &cpg, &cs) != 4) fail("C %d: answered \"%.80s\"", (int)c, line);
	else if (cp != c || cpp != root || cpg != root || cs != root)
		fail("C %d: pid %d ppid %d pgid %d sid %d, want %d %d %d %d", (int)c, cp, cpp, cpg, cs, (int)c, (int)root, (int)root, (int)root);
	if (write(to_c[1], "x", 1) != 1) fail("write to C %d: %s", (int)c, strerror(errno));
	rc = read_line(from_c[0], line, sizeof(line), 5);
	if (rc < 0) fail("C %d: no final report (%s)", (int)c, rc == -3 ? "timed out" : strerror(errno));
	else if (strncmp(line, "done FAIL ", 10) == 0) fail("%s", line + 10);
	else if (strcmp(line, "done OK") != 0) fail("C %d: final report \"%.80s\"", (int)c, line);
	if (wait_timeout(c, &st, 5) != c) fail("C %d: waitpid: %s", (int)c, strerror(errno));
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 7) fail("C %d: wait status %#x, want exit 7", (int)c, st);

	/* B checks itself. */
	if (kill(b, SIGTERM) != 0) fail("kill(B %d): %s", b, strerror(errno));
	rc = read_line(from_b[0], line, sizeof(line), 5);
	if (rc < 0) fail("B %d: no report (%s)", b, rc == -3 ? "timed out" : strerror(errno));
	else if (strncmp(line, "FAIL ", 5) == 0) fail("%s", line + 5);
	else if (strcmp(line, "OK") != 0) fail("B %d: report \"%.80s\"", b, line);
	if (wait_timeout(b, &st, 5) != b) fail("B %d: waitpid: %s", b, strerror(errno));
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("B %d: wait status %#x, want exit 0", b, st);

	/* Nothing else is our child (no helper left behind by a restore). */
	pid_t extra = waitpid(-1, &st, WNOHANG);
	if (extra > 0) fail("an unexpected child %d had ended with status %#x", (int)extra, st);
	else if (extra == 0) fail("an unexpected child is still running");
	else if (errno != ECHILD) fail("waitpid(-1): %s", strerror(errno));

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
