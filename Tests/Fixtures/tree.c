/*
 * tree: a tree of single-threaded processes with sessions, process groups and
 * pipes between parents and children, across checkpoint/restore.
 *
 * argv[1] is the number of live processes, the root included (default 127).
 * They are numbered 0..N-1; process i > 0 is a child of process (i-1)/3, so
 * every process has up to three children. The root must be a session leader.
 * Some numbers get a role (those beyond N simply do not exist):
 *
 *   setsid()            1, 6, 10, 14   own sessions (6 inside 1's session's
 *                                      subtree, 14 a member of 4's group)
 *   new process group   2, 4, 7, 11, 19, 40   setpgid(0, 0); their children
 *                                      join the group explicitly (the parent
 *                                      calls setpgid(child, pgid), the child
 *                                      setpgid(0, pgid))
 *   join another group  16 -> 4's group (a cousin's, in session 1)
 *                       20 -> 19's group (a sibling's, in session 6)
 *                       28 -> the root's group (from inside group 2)
 *   dead leader         process 8 forks an extra process L that makes its own
 *                       group; 8's children (25, 26, 27) join L's group, then
 *                       L exits and 8 reaps it. The group lives on without
 *                       its leader, and pid L is no process.
 *
 * Each child holds the read end of a pipe from its parent with 16+3*i unread
 * bytes (a pattern of its own); each parent holds the read end of a pipe from
 * every child with 5+2*i unread bytes. Every process closes all other fds
 * above 2, and keeps stdout/stderr (the log, shared by the whole tree).
 *
 * Start-up: each process sets itself up, checks its ids against the design,
 * forks its children, waits until each has reported ready (with the pids of
 * its subtree) over its pipe, then reports to its parent. The root then
 * prints "PIDS <all N pids>", "DEADPGID <L>" (when there is one) and READY.
 *
 * On SIGTERM, each process checks its own pid, ppid (not the root's), pgid,
 * sid, stdout and the unread bytes from its parent, then for each child
 * checks the unread bytes from that child, writes one more byte to it and
 * sends it SIGTERM; it collects each child's report and exit status and
 * passes the sum on. The root prints PASS only when all N processes checked
 * out, else "FAIL: pid X: what; ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FANOUT 3
#define MAXN   2000

enum role { R_INHERIT, R_SETSID, R_NEWPGRP, R_JOIN_PARENT, R_JOIN_INDEX, R_JOIN_DEAD };
static const char *role_names[] = { "inherit", "setsid", "new group", "join parent's group", "join group", "join dead leader's group" };

#define DEAD_PARENT 8   /* the process that makes the leaderless group */

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static int nprocs = 127;
static pid_t pids[MAXN];      /* filled in by each parent as it forks; inherited by later children */
static pid_t dead_leader;     /* pid L, known to DEAD_PARENT and its subtree */

/* this process */
static int me, my_depth, max_depth;
static pid_t my_pid, my_ppid, my_pgid, my_sid;
static pid_t parent_pgid, parent_sid;
static struct stat stdout_st;
static int down_rd = -1, up_wr = -1;   /* from and to the parent */
static int nkids;
static int kid_idx[FANOUT], kid_down_wr[FANOUT], kid_up_rd[FANOUT];
static pid_t kid_pid[FANOUT];

/* ---- reporting ---- */

static char failbuf[3000];
static void append_raw(const char *text)
{
	size_t len = strlen(failbuf);
	if (len >= sizeof(failbuf) - 80) {
		if (!strstr(failbuf, " ..."))
			snprintf(failbuf + len, sizeof(failbuf) - len, " ...");
		return;
	}
	if (len)
		len += (size_t)snprintf(failbuf + len, sizeof(failbuf) - len, "; ");
	snprintf(failbuf + len, sizeof(failbuf) - len, "%s", text);
	for (char *p = failbuf + len; *p; p++)
		if ((unsigned char)*p < 0x20) *p = '.';
}

static void fail(const char *fmt, ...)
{
	char msg[600];
	int n = snprintf(msg, sizeof(msg), "pid %d: ", (int)my_pid);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	append_raw(msg);
}

static pid_t *subtree;          /* pids reported ready by the subtree, this process first */
static int subtree_count;

/* Takes down the children and every descendant that has reported ready
 * (those still setting up notice their parent's pipe close and die too). */
static void kill_kids(void)
{
	for (int k = 0; k < nkids; k++)
		kill(kid_pid[k], SIGKILL);
	for (int i = 1; i < subtree_count; i++)
		kill(subtree[i], SIGKILL);
}

/* A set-up error: say so on stderr, take the subtree down, and exit 2 (the
 * parent sees its pipe close and gives up too). */
static void die(const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "setup: pid %d (process %d): %s\n", (int)getpid(), me, msg);
	fflush(stderr);
	kill_kids();
	_exit(2);
}

/* ---- the design ---- */

static int parent_of(int i) { return (i - 1) / FANOUT; }

static int depth_of(int i)
{
	int d = 0;
	while (i > 0) { i = parent_of(i); d++; }
	return d;
}

static enum role role_of(int i, int *target)
{
	switch (i) {
	case 1: case 6: case 10: case 14: return R_SETSID;
	case 2: case 4: case 7: case 11: case 19: case 40: return R_NEWPGRP;
	case 16: *target = 4; return R_JOIN_INDEX;
	case 20: *target = 19; return R_JOIN_INDEX;
	case 28: *target = 0; return R_JOIN_INDEX;
	}
	if (i == 0)
		return R_INHERIT;
	int parent = parent_of(i), ignored;
	if (parent == DEAD_PARENT)
		return R_JOIN_DEAD;
	if (role_of(parent, &ignored) == R_NEWPGRP)
		return R_JOIN_PARENT;
	return R_INHERIT;
}

static size_t down_bytes(int i) { return 16 + 3 * (size_t)i; }
static size_t up_bytes(int i) { return 5 + 2 * (size_t)i; }
static unsigned char pattern(int i, size_t k, int dir)
{
	return (unsigned char)((unsigned)i * 131u + (unsigned)k * 29u + (unsigned)dir * 77u + (unsigned)(k >> 8));
}

/* ---- i/o helpers ---- */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads exactly n bytes before `deadline`: 0 on success, -1 on error (errno),
 * -2 at EOF, -3 on timeout. */
static int read_full(int fd, void *buf, size_t n, double deadline)
{
	char *p = buf;
	while (n) {
		double left = deadline - now();
		if (left <= 0) return -3;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int r = poll(&pfd, 1, (int)(left * 1000) + 1);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) return -1;
		if (r == 0) continue;
		ssize_t got = read(fd, p, n);
		if (got < 0 && errno == EINTR) continue;
		if (got < 0) return -1;
		if (got == 0) return -2;
		p += got;
		n -= (size_t)got;
	}
	return 0;
}

static const char *read_error(int rc)
{
	return rc == -2 ? "end of file" : rc == -3 ? "timed out" : strerror(errno);
}

/* Checks that `fd` holds exactly `want` unread bytes of pattern (i, dir),
 * plus `extra` more that are not read, without blocking. */
static void check_unread(int fd, const char *what, int i, int dir, size_t want, size_t extra)
{
	int avail = -1;
	if (ioctl(fd, FIONREAD, &avail) != 0) { fail("%s (fd %d): FIONREAD: %s", what, fd, strerror(errno)); return; }
	if ((size_t)avail != want + extra)
		fail("%s (fd %d): %d unread bytes, want %zu", what, fd, avail, want + extra);
	size_t n = (size_t)avail < want ? (size_t)avail : want;
	unsigned char buf[8192];
	if (n > sizeof(buf)) n = sizeof(buf);
	int rc = read_full(fd, buf, n, now() + 5);
	if (rc != 0) { fail("%s (fd %d): read: %s", what, fd, read_error(rc)); return; }
	for (size_t k = 0; k < n; k++)
		if (buf[k] != pattern(i, k, dir)) {
			fail("%s (fd %d): unread byte %zu is %#x, want %#x", what, fd, k, buf[k], pattern(i, k, dir));
			return;
		}
}

static void close_other_fds(int keep1, int keep2)
{
	for (int fd = 3; fd < 1024; fd++)
		if (fd != keep1 && fd != keep2)
			close(fd);
}

/* ---- set-up ---- */

static void record_self(void)
{
	my_pgid = getpgrp();
	my_sid = getsid(0);
	if (fstat(1, &stdout_st) != 0)
		die("fstat(1): %s", strerror(errno));
}

/* Runs in a freshly forked child: become process `idx`. */
static void become(int idx, int drd, int uwr)
{
	parent_pgid = my_pgid;
	parent_sid = my_sid;
	my_ppid = my_pid;
	my_pid = getpid();
	me = idx;
	my_depth = depth_of(idx);
	nkids = 0;
	down_rd = drd;
	up_wr = uwr;
	close_other_fds(drd, uwr);

	int target = -1;
	enum role role = role_of(idx, &target);
	pid_t want_pgid = parent_pgid, want_sid = parent_sid;
	switch (role) {
	case R_INHERIT:
		break;
	case R_SETSID:
		if (setsid() < 0) die("setsid: %s", strerror(errno));
		want_pgid = want_sid = my_pid;
		break;
	case R_NEWPGRP:
		if (setpgid(0, 0) != 0) die("setpgid(0, 0): %s", strerror(errno));
		want_pgid = my_pid;
		break;
	case R_JOIN_PARENT:
		if (setpgid(0, parent_pgid) != 0) die("setpgid(0, %d): %s", (int)parent_pgid, strerror(errno));
		break;
	case R_JOIN_INDEX:
		if (setpgid(0, pids[target]) != 0) die("setpgid(0, %d): %s", (int)pids[target], strerror(errno));
		want_pgid = pids[target];
		break;
	case R_JOIN_DEAD:
		if (setpgid(0, dead_leader) != 0) die("setpgid(0, %d): %s", (int)dead_leader, strerror(errno));
		want_pgid = dead_leader;
		break;
	}
	record_self();
	if (getppid() != my_ppid) die("getppid() %d, want %d", (int)getppid(), (int)my_ppid);
	if (my_pgid != want_pgid || my_sid != want_sid)
		die("role %s: pgid %d sid %d, want pgid %d sid %d", role_names[role],
		    (int)my_pgid, (int)my_sid, (int)want_pgid, (int)want_sid);
}

/* Process DEAD_PARENT's extra child L: leads its own group until told to exit. */
static pid_t start_dead_leader(int *tell)
{
	int ctl[2];
	if (pipe(ctl) != 0) die("pipe: %s", strerror(errno));
	pid_t p = fork();
	if (p < 0) die("fork: %s", strerror(errno));
	if (p == 0) {
		close_other_fds(ctl[0], -1);
		if (setpgid(0, 0) != 0) _exit(3);
		char c;
		while (read(ctl[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(ctl[0]);
	setpgid(p, p);   /* also done by L itself; whichever comes first */
	*tell = ctl[1];
	return p;
}

static void child_main(void);

static void fork_kids(void)
{
	int tell_leader = -1;
	pid_t leader = 0;
	for (int c = FANOUT * me + 1; c <= FANOUT * me + FANOUT && c < nprocs; c++) {
		if (me == DEAD_PARENT && leader == 0) {
			leader = start_dead_leader(&tell_leader);
			dead_leader = leader;
		}
		int down[2], up[2];
		if (pipe(down) != 0 || pipe(up) != 0) die("pipe: %s", strerror(errno));
		size_t n = down_bytes(c);
		unsigned char buf[8192];
		for (size_t k = 0; k < n; k++) buf[k] = pattern(c, k, 0);
		if (write_all(down[1], buf, n) != 0) die("write: %s", strerror(errno));

		pid_t p = fork();
		if (p < 0) die("fork: %s", strerror(errno));
		if (p == 0) {
			close(down[1]);
			close(up[0]);
			become(c, down[0], up[1]);
			child_main();
			_exit(0);
		}
		close(down[0]);
		close(up[1]);
		pids[c] = p;
		kid_idx[nkids] = c;
		kid_pid[nkids] = p;
		kid_down_wr[nkids] = down[1];
		kid_up_rd[nkids] = up[0];
		nkids++;

		/* the parent's half of the group changes (the child does the same) */
		int target = -1;
		switch (role_of(c, &target)) {
		case R_NEWPGRP: setpgid(p, p); break;
		case R_JOIN_PARENT: setpgid(p, my_pgid); break;
		case R_JOIN_INDEX: setpgid(p, pids[target]); break;
		case R_JOIN_DEAD: setpgid(p, dead_leader); break;
		default: break;
		}
	}
	if (leader) {
		/* Every child is in L's group now: let L go and reap it. */
		if (write_all(tell_leader, "x", 1) != 0) die("write to L: %s", strerror(errno));
		close(tell_leader);
		int st;
		if (waitpid(leader, &st, 0) != leader) die("waitpid(L %d): %s", (int)leader, strerror(errno));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) die("group leader L %d ended with status %#x", (int)leader, st);
		if (kill(leader, 0) == 0 || errno != ESRCH) die("pid %d still exists after its reaping", (int)leader);
	}
}

/* The ready report: 'R', count, dead leader pid, count pids, then up_bytes(me)
 * pattern bytes that stay unread until the check. */
struct ready_head { char tag; int32_t count; int32_t dead; } __attribute__((packed));

static pid_t subtree_dead;

static void collect_ready(void)
{
	subtree = malloc(sizeof(pid_t) * (size_t)nprocs);
	if (!subtree) die("malloc");
	subtree[0] = my_pid;
	subtree_count = 1;
	subtree_dead = me == DEAD_PARENT ? dead_leader : 0;
	double deadline = now() + 120;
	for (int k = 0; k < nkids; k++) {
		struct ready_head h;
		int rc = read_full(kid_up_rd[k], &h, sizeof(h), deadline);
		if (rc != 0) die("ready report of child %d (pid %d): %s", kid_idx[k], (int)kid_pid[k], read_error(rc));
		if (h.tag != 'R' || h.count < 1 || subtree_count + h.count > nprocs)
			die("bad ready report from child %d (pid %d)", kid_idx[k], (int)kid_pid[k]);
		rc = read_full(kid_up_rd[k], subtree + subtree_count, sizeof(pid_t) * (size_t)h.count, deadline);
		if (rc != 0) die("pid list of child %d (pid %d): %s", kid_idx[k], (int)kid_pid[k], read_error(rc));
		subtree_count += h.count;
		if (h.dead) subtree_dead = h.dead;
	}
}

static void send_ready(void)
{
	size_t extra = up_bytes(me);
	size_t len = sizeof(struct ready_head) + sizeof(pid_t) * (size_t)subtree_count + extra;
	unsigned char *buf = malloc(len);
	if (!buf) die("malloc");
	struct ready_head h = { 'R', subtree_count, subtree_dead };
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), subtree, sizeof(pid_t) * (size_t)subtree_count);
	for (size_t k = 0; k < extra; k++)
		buf[len - extra + k] = pattern(me, k, 1);
	/* One write: the extra bytes are in the pipe as soon as the parent sees 'R'. */
	if (write_all(up_wr, buf, len) != 0) die("write ready report: %s", strerror(errno));
	free(buf);
}

static void wait_for_term(void)
{
	sigset_t none;
	sigemptyset(&none);
	while (!got_term)
		sigsuspend(&none);   /* SIGTERM stays blocked outside of this */
}

/* ---- the check ---- */

static int ok_count;   /* processes in this subtree that checked out */

static void check_subtree(void)
{
	size_t before = strlen(failbuf);

	if (getpid() != my_pid) fail("getpid() is %d", (int)getpid());
	if (me != 0 && getppid() != my_ppid) fail("getppid() is %d, want %d", (int)getppid(), (int)my_ppid);
	if (getpgrp() != my_pgid) fail("getpgrp() is %d, want %d", (int)getpgrp(), (int)my_pgid);
	if (getsid(0) != my_sid) fail("getsid(0) is %d, want %d", (int)getsid(0), (int)my_sid);
	struct stat st;
	if (fstat(1, &st) != 0) fail("fstat(1): %s", strerror(errno));
	else if (st.st_dev != stdout_st.st_dev || st.st_ino != stdout_st.st_ino) fail("stdout is another file");

	if (me != 0) {
		check_unread(down_rd, "pipe from parent", me, 0, down_bytes(me), 1);
		char c = 0;
		int rc = read_full(down_rd, &c, 1, now() + 5);
		if (rc != 0) fail("pipe from parent: reading the byte written after restore: %s", read_error(rc));
		else if (c != 'G') fail("pipe from parent: byte written after restore is %#x, want 'G'", (unsigned char)c);
	}

	/* Wake the children. */
	for (int k = 0; k < nkids; k++) {
		char what[64];
		snprintf(what, sizeof(what), "pipe from child %d", (int)kid_pid[k]);
		check_unread(kid_up_rd[k], what, kid_idx[k], 1, up_bytes(kid_idx[k]), 0);
		if (write_all(kid_down_wr[k], "G", 1) != 0)
			fail("write to the pipe to child %d: %s", (int)kid_pid[k], strerror(errno));
		if (kill(kid_pid[k], SIGTERM) != 0)
			fail("kill(child %d, SIGTERM): %s", (int)kid_pid[k], strerror(errno));
	}
	int mine_ok = strlen(failbuf) == before;

	/* Collect their reports: "OK n" or "FAIL n text". */
	double deadline = now() + 10 + 5 * (max_depth - my_depth);
	for (int k = 0; k < nkids; k++) {
		char msg[sizeof(failbuf) + 32];
		size_t len = 0;
		int rc;
		for (;;) {
			rc = read_full(kid_up_rd[k], msg + len, 1, deadline);
			if (rc != 0 || len + 1 >= sizeof(msg)) break;
			len++;
		}
		msg[len] = 0;
		int n = 0, off = 0;
		if (rc == -2 && sscanf(msg, "OK %d%n", &n, &off) == 1 && off == (int)len) {
			ok_count += n;
		} else if (rc == -2 && sscanf(msg, "FAIL %d %n", &n, &off) == 1 && off > 0) {
			ok_count += n;
			append_raw(msg + off);
		} else if (rc == -2 && len == 0) {
			fail("child %d ended without a report", (int)kid_pid[k]);
		} else if (rc == -2) {
			fail("child %d sent a garbled report \"%.60s\"", (int)kid_pid[k], msg);
		} else {
			fail("no report from child %d: %s", (int)kid_pid[k], read_error(rc));
		}

		int status = 0;
		pid_t w = 0;
		while ((w = waitpid(kid_pid[k], &status, WNOHANG)) == 0 && now() < deadline + 2)
			usleep(2000);
		if (w != kid_pid[k])
			fail("waitpid(child %d): %s", (int)kid_pid[k], w == 0 ? "still running" : strerror(errno));
		else if (!WIFEXITED(status))
			fail("child %d was killed by signal %d", (int)kid_pid[k], WTERMSIG(status));
		else if (WEXITSTATUS(status) != (rc == -2 && msg[0] == 'O' ? 0 : 1))
			fail("child %d exited with status %d after reporting \"%.20s\"", (int)kid_pid[k], WEXITSTATUS(status), msg);
	}
	if (mine_ok)
		ok_count++;
}

static void child_main(void)
{
	fork_kids();
	collect_ready();
	send_ready();
	wait_for_term();
	check_subtree();
	char msg[sizeof(failbuf) + 32];
	if (failbuf[0]) snprintf(msg, sizeof(msg), "FAIL %d %s", ok_count, failbuf);
	else snprintf(msg, sizeof(msg), "OK %d", ok_count);
	write_all(up_wr, msg, strlen(msg));
	_exit(failbuf[0] ? 1 : 0);
}

/* After a failure, processes cut off from the root (a parent lost, a child
 * never woken) would wait forever: kill those still running under our name. */
static void sweep(void)
{
	char self[64] = "", path[64], buf[512];
	FILE *f = fopen("/proc/self/comm", "r");
	if (!f) return;
	if (fgets(self, sizeof(self), f)) self[strcspn(self, "\n")] = 0;
	fclose(f);
	for (int i = 1; i < subtree_count; i++) {
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)subtree[i]);
		if (!(f = fopen(path, "r"))) continue;
		char *open = NULL, *close = NULL;
		if (fgets(buf, sizeof(buf), f) && (open = strchr(buf, '(')) && (close = strrchr(buf, ')')) && close[1] == ' ') {
			*close = 0;
			if (strcmp(open + 1, self) == 0 && close[2] != 'Z')
				kill(subtree[i], SIGKILL);
		}
		fclose(f);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1) nprocs = atoi(argv[1]);
	if (nprocs < 1 || nprocs > MAXN) { fprintf(stderr, "usage: tree [processes 1..%d]\n", MAXN); return 2; }
	max_depth = depth_of(nprocs - 1);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction: %s", strerror(errno));
	signal(SIGPIPE, SIG_IGN);   /* a lost reader shows up as EPIPE */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	close_other_fds(-1, -1);
	me = 0;
	my_pid = getpid();
	my_ppid = getppid();
	pids[0] = my_pid;
	record_self();
	if (my_sid != my_pid || my_pgid != my_pid) die("the root must be a session leader (sid %d, pgid %d)", (int)my_sid, (int)my_pgid);

	fork_kids();
	collect_ready();
	if (subtree_count != nprocs) die("%d processes reported ready, want %d", subtree_count, nprocs);

	printf("PIDS");
	for (int i = 0; i < subtree_count; i++) printf(" %d", (int)subtree[i]);
	printf("\n");
	if (subtree_dead) printf("DEADPGID %d\n", (int)subtree_dead);
	printf("READY\n");
	fflush(stdout);

	wait_for_term();
	check_subtree();
	if (!failbuf[0] && ok_count != nprocs)
		append_raw("not every process checked out");   /* cannot happen without a report above */
	if (failbuf[0]) {
		printf("FAIL: %s (%d of %d processes checked out)\n", failbuf, ok_count, nprocs);
		sweep();
		return 1;
	}
	printf("PASS\n");
	return 0;
}
