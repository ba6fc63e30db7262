/*
 * ownuser: a parent and a child started by an ordinary user as themselves,
 * for dumping and restoring with an unprivileged cryo (one holding only file
 * capabilities).
 *
 * It changes nothing: it records what it was started with and, on SIGTERM,
 * the parent and the child each check that it is all still so after the
 * restore: real/effective/saved/fs uids and gids, supplementary groups, the
 * inheritable, permitted, effective, bounding and ambient capability sets,
 * securebits, no_new_privs and the dumpable flag (which must be 1 from the
 * start: a cryo with file capabilities is not dumpable, and its clones would
 * inherit that). Setup refuses to run as root or with any capability, so the
 * test cannot pass vacuously.
 *
 * Before READY it prints "PIDS parent child" and "CREDS uid gid". The child
 * reports to the parent over a pipe. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

/* Everything compared after the restore, as text or numbers. */
struct state {
	char uid[64], gid[64], groups[256];
	char cap_inh[32], cap_prm[32], cap_eff[32], cap_bnd[32], cap_amb[32];
	int dumpable, securebits, no_new_privs;
};

static void record(struct state *s)
{
	status_field("Uid", s->uid, sizeof(s->uid));
	status_field("Gid", s->gid, sizeof(s->gid));
	status_field("Groups", s->groups, sizeof(s->groups));
	status_field("CapInh", s->cap_inh, sizeof(s->cap_inh));
	status_field("CapPrm", s->cap_prm, sizeof(s->cap_prm));
	status_field("CapEff", s->cap_eff, sizeof(s->cap_eff));
	status_field("CapBnd", s->cap_bnd, sizeof(s->cap_bnd));
	status_field("CapAmb", s->cap_amb, sizeof(s->cap_amb));
	s->dumpable = prctl(PR_GET_DUMPABLE);
	s->securebits = prctl(PR_GET_SECUREBITS);
	s->no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
}

static void check(const char *who, const struct state *was)
{
	struct state now;
	record(&now);
#define SAME(field, label) \
	if (strcmp(now.field, was->field) != 0) fail("%s: %s is \"%s\", was \"%s\"", who, label, now.field, was->field)
	SAME(uid, "Uid");
	SAME(gid, "Gid");
	SAME(groups, "Groups");
	SAME(cap_inh, "CapInh");
	SAME(cap_prm, "CapPrm");
	SAME(cap_eff, "CapEff");
	SAME(cap_bnd, "CapBnd");
	SAME(cap_amb, "CapAmb");
#undef SAME
	if (now.dumpable != was->dumpable) fail("%s: dumpable is %d, was %d", who, now.dumpable, was->dumpable);
	if (now.securebits != was->securebits) fail("%s: securebits %#x, was %#x", who, now.securebits, was->securebits);
	if (now.no_new_privs != was->no_new_privs) fail("%s: no_new_privs %d, was %d", who, now.no_new_privs, was->no_new_privs);
}

static void wait_for_term(const sigset_t *mask)
{
	while (!got_term)
		sigsuspend(mask);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) { perror("setup: sigaction"); return 2; }
	signal(SIGPIPE, SIG_IGN);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	sigset_t wait_mask = old;
	sigdelset(&wait_mask, SIGTERM);
	for (int i = 3; i < 1024; i++) close(i);

	pid_t parent = getpid();
	if (getsid(0) != parent) { fprintf(stderr, "setup: not a session leader\n"); return 2; }
	struct state mine;
	record(&mine);
	if (getuid() == 0 || geteuid() == 0) { fprintf(stderr, "setup: must run as an ordinary user, not root\n"); return 2; }
	if (strcmp(mine.cap_prm, "0000000000000000") != 0 || strcmp(mine.cap_eff, "0000000000000000") != 0) {
		fprintf(stderr, "setup: must start without capabilities (CapPrm %s, CapEff %s)\n", mine.cap_prm, mine.cap_eff);
		return 2;
	}
	if (mine.dumpable != 1) { fprintf(stderr, "setup: dumpable is %d, want 1\n", mine.dumpable); return 2; }

	int up[2];
	if (pipe(up) != 0) { perror("setup: pipe"); return 2; }
	pid_t kid = fork();
	if (kid < 0) { perror("setup: fork"); return 2; }
	if (kid == 0) {
		close(up[0]);
		struct state s;
		record(&s);
		wait_for_term(&wait_mask);
		if (getppid() != parent) fail("child: getppid() is %d, want %d", (int)getppid(), (int)parent);
		check("child", &s);
		dprintf(up[1], failbuf[0] ? "FAIL %s\n" : "OK\n", failbuf);
		_exit(failbuf[0] ? 1 : 0);
	}
	close(up[1]);

	printf("PIDS %d %d\n", (int)parent, (int)kid);
	printf("CREDS %d %d\n", (int)getuid(), (int)getgid());
	printf("READY\n");
	fflush(stdout);

	wait_for_term(&wait_mask);

	check("parent", &mine);
	if (kill(kid, SIGTERM) != 0) fail("kill(child %d): %s", (int)kid, strerror(errno));
	char msg[sizeof(failbuf) + 16];
	int len = read_line(up[0], msg, sizeof(msg), 5);
	if (len < 0) fail("no report from child %d", (int)kid);
	else if (strncmp(msg, "FAIL ", 5) == 0) fail("%s", msg + 5);
	else if (strcmp(msg, "OK") != 0) fail("child %d: report \"%.80s\"", (int)kid, msg);
	int st = 0;
	pid_t w = 0;
	double deadline = now() + 5;
	while ((w = waitpid(kid, &st, WNOHANG)) == 0 && now() < deadline)
		usleep(2000);
	if (w != kid) fail("waitpid(child %d): %s", (int)kid, w == 0 ? "still running" : strerror(errno));
	else if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && !failbuf[0])) fail("child ended with status %#x", st);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
