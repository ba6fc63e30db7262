/*
 * user: a parent and a child owned by an ordinary user, across
 * checkpoint/restore.
 *
 * Started as root (in its own session), with stdout already open: it sets
 * its supplementary groups to GID,100 (argv[2], default 65534), or with
 * argv[3] to that many groups (GID, 100, then 20000, 20001...), and its real,
 * effective, saved and filesystem gid and uid to GID and UID (argv[1],
 * default 65534), which leaves it no capabilities, then forks a child.
 *
 * Before READY it prints "PIDS parent child" and "CREDS uid gid". On SIGTERM
 * the parent and the child each check their uids and gids (all four of each,
 * from /proc/self/status too), the supplementary groups, that the inheritable,
 * permitted, effective and ambient capability sets are empty, and that the
 * bounding set, securebits and the dumpable flag are as before. The child
 * reports to the parent over a pipe. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }



static void die(const char *what) { fprintf(stderr, "setup: pid %d: %s: %s\n", (int)getpid(), what, strerror(errno)); exit(2); }

static uid_t want_uid = 65534;
static gid_t want_gid = 65534;
static gid_t want_groups[65536];
static int want_count = 2;

static int by_value(const void *a, const void *b)
{
	gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
	return x < y ? -1 : x > y;
}

/* What was true before the dump. */
struct state {
	unsigned long long cap_bnd;
	int dumpable;
	int securebits;
};

static unsigned long long cap_field(const char *name)
{
	char v[64];
	status_field(name, v, sizeof(v));
	return v[0] ? strtoull(v, NULL, 16) : ~0ull;
}

static void record(struct state *s)
{
	s->cap_bnd = cap_field("CapBnd");
	s->dumpable = prctl(PR_GET_DUMPABLE);
	s->securebits = prctl(PR_GET_SECUREBITS);
}

static void check(const char *who, const struct state *s)
{
	uid_t r, e, sv;
	gid_t gr, ge, gs;
	if (getresuid(&r, &e, &sv) != 0 || r != want_uid || e != want_uid || sv != want_uid)
		fail("%s: uids %d/%d/%d, want %d", who, (int)r, (int)e, (int)sv, (int)want_uid);
	if (getresgid(&gr, &ge, &gs) != 0 || gr != want_gid || ge != want_gid || gs != want_gid)
		fail("%s: gids %d/%d/%d, want %d", who, (int)gr, (int)ge, (int)gs, (int)want_gid);
	char v[256], want[256];
	snprintf(want, sizeof(want), "%d\t%d\t%d\t%d", (int)want_uid, (int)want_uid, (int)want_uid, (int)want_uid);
	status_field("Uid", v, sizeof(v));
	if (strcmp(v, want) != 0) fail("%s: Uid: %s, want all %d (real, effective, saved, fs)", who, v, (int)want_uid);
	snprintf(want, sizeof(want), "%d\t%d\t%d\t%d", (int)want_gid, (int)want_gid, (int)want_gid, (int)want_gid);
	status_field("Gid", v, sizeof(v));
	if (strcmp(v, want) != 0) fail("%s: Gid: %s, want all %d (real, effective, saved, fs)", who, v, (int)want_gid);

	static gid_t groups[65536], sorted[65536];
	int n = getgroups(65536, groups);
	memcpy(sorted, want_groups, sizeof(gid_t) * want_count);
	qsort(sorted, want_count, sizeof(gid_t), by_value);
	if (n > 0) qsort(groups, n, sizeof(gid_t), by_value);
	if (n != want_count || memcmp(groups, sorted, sizeof(gid_t) * n) != 0) {
		int first = 0;
		while (first < n && first < want_count && groups[first] == sorted[first]) first++;
		status_field("Groups", v, sizeof(v));
		fail("%s: %d supplementary groups \"%.60s...\", want %d (%d %d...), first difference at %d", who, n, v, want_count,
		     (int)want_groups[0], (int)want_groups[1], first);
	}

	const char *empty[] = { "CapInh", "CapPrm", "CapEff", "CapAmb" };
	for (int i = 0; i < 4; i++) {
		unsigned long long c = cap_field(empty[i]);
		if (c != 0) fail("%s: %s is %016llx, want 0", who, empty[i], c);
	}
	unsigned long long bnd = cap_field("CapBnd");
	if (bnd != s->cap_bnd) fail("%s: CapBnd is %016llx, was %016llx", who, bnd, s->cap_bnd);
	int d = prctl(PR_GET_DUMPABLE);
	if (d != s->dumpable) fail("%s: dumpable is %d, was %d", who, d, s->dumpable);
	int sb = prctl(PR_GET_SECUREBITS);
	if (sb != s->securebits) fail("%s: securebits %#x, was %#x", who, sb, s->securebits);
}


static void wait_for_term(const sigset_t *mask)
{
	while (!got_term)
		sigsuspend(mask);
}

int main(int argc, char **argv)
{
	if (argc > 1) want_uid = (uid_t)atoi(argv[1]);
	if (argc > 2) want_gid = (gid_t)atoi(argv[2]);
	want_groups[0] = want_gid;
	want_groups[1] = want_gid == 100 ? 65534 : 100;
	if (argc > 3) want_count = atoi(argv[3]);
	if (want_count < 2 || want_count > 65536) { fprintf(stderr, "setup: %d groups\n", want_count); return 2; }
	for (int i = 2; i < want_count; i++) want_groups[i] = 20000 + i;
	setvbuf(stdout, NULL, _IOLBF, 0);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
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
	if (geteuid() != 0) { fprintf(stderr, "setup: must start as root\n"); return 2; }

	/* stdout/stderr were opened by root before this and stay writable. */
	if (setgroups(want_count, want_groups) != 0) die("setgroups");
	if (setresgid(want_gid, want_gid, want_gid) != 0) die("setresgid");
	if (setresuid(want_uid, want_uid, want_uid) != 0) die("setresuid");

	struct state mine;
	record(&mine);
	check("setup", &mine);
	if (failbuf[0]) { fprintf(stderr, "setup: %s\n", failbuf); return 2; }

	int up[2];
	if (pipe(up) != 0) die("pipe");
	pid_t kid = fork();
	if (kid < 0) die("fork");
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
	printf("CREDS %d %d\n", (int)want_uid, (int)want_gid);
	printf("READY\n");
	fflush(stdout);

	wait_for_term(&wait_mask);

	if (getpid() != parent) fail("parent: getpid() is %d", (int)getpid());
	check("parent", &mine);
	if (kill(kid, SIGTERM) != 0) fail("kill(child %d): %s", (int)kid, strerror(errno));
	char msg[3100];
	size_t len = 0;
	double deadline = now() + 5;
	while (len + 1 < sizeof(msg) && now() < deadline) {
		struct pollfd pfd = { .fd = up[0], .events = POLLIN };
		if (poll(&pfd, 1, 100) <= 0) continue;
		ssize_t r = read(up[0], msg + len, 1);
		if (r <= 0 || msg[len] == '\n') break;
		len++;
	}
	msg[len] = 0;
	if (strncmp(msg, "FAIL ", 5) == 0) fail("%s", msg + 5);
	else if (strcmp(msg, "OK") != 0) fail("child %d: report \"%.80s\"", (int)kid, msg);
	int st = 0;
	pid_t w = 0;
	while ((w = waitpid(kid, &st, WNOHANG)) == 0 && now() < deadline + 2)
		usleep(2000);
	if (w != kid) fail("waitpid(child %d): %s", (int)kid, w == 0 ? "still running" : strerror(errno));
	else if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && !failbuf[0])) fail("child ended with status %#x", st);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
