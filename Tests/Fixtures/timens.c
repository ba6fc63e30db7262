/*
 * timens: a tree across time namespaces. The root R gives its children a
 * time namespace T (monotonic +1 day, boottime +2 days; with "inside", R was
 * started in T itself, by nsenter, and needs no unshare). R forks A in T; A
 * forks B in T, then unshares U (monotonic +3 days, boottime +3 days) and
 * forks C in U. Each process notes its clocks and CLOCK_REALTIME.
 *
 * On SIGTERM R stops A, A stops B and C; each checks that it is in the
 * namespace it was (its parent's own or its parent's children's, by inode),
 * and that CLOCK_MONOTONIC and CLOCK_BOOTTIME went on from where they were
 * (not backwards, and not more than the wall clock moved: a restore on
 * cryo's clocks would be a day or more off). R also checks that U's offsets
 * are still T's plus 2 days (monotonic) and 1 day (boottime). Children exit 0
 * when they pass; R prints PASS or FAIL for the whole tree.
 *
 * With "childless", R unshares T and forks nothing until SIGTERM: then its
 * first child must see CLOCK_MONOTONIC one day ahead of R's.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x80
#endif

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static double clock_of(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct clocks { double monotonic, boottime, wall; };
static struct clocks read_clocks(void)
{
	struct clocks c = { clock_of(CLOCK_MONOTONIC), clock_of(CLOCK_BOOTTIME), clock_of(CLOCK_REALTIME) };
	return c;
}

static void check_clocks(const char *who, struct clocks before)
{
	struct clocks after = read_clocks();
	double wall = after.wall - before.wall;
	double mono = after.monotonic - before.monotonic, boot = after.boottime - before.boottime;
	if (mono < 0 || mono > wall + 2) fail("%s: CLOCK_MONOTONIC moved %.3f s while the wall clock moved %.3f s", who, mono, wall);
	if (boot < 0 || boot > wall + 2) fail("%s: CLOCK_BOOTTIME moved %.3f s while the wall clock moved %.3f s", who, boot, wall);
}

static unsigned long ns_inode(pid_t pid, const char *name)
{
	char path[64];
	struct stat st;
	if (pid) snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, name);
	else snprintf(path, sizeof(path), "/proc/self/ns/%s", name);
	if (stat(path, &st) != 0) { fail("stat %s: %s", path, strerror(errno)); return 0; }
	return (unsigned long)st.st_ino;
}

static void set_offsets(long monotonic, long boottime)
{
	char text[128];
	int n = snprintf(text, sizeof(text), "monotonic %ld 0\nboottime %ld 0\n", monotonic, boottime);
	int fd = open("/proc/self/timens_offsets", O_WRONLY);
	if (fd < 0 || write(fd, text, (size_t)n) != n) { printf("FAIL: write timens_offsets: %s\n", strerror(errno)); exit(1); }
	close(fd);
}

/* Monotonic and boottime offsets (seconds, fractional) of PID's children's namespace. */
static int read_offsets(pid_t pid, double *monotonic, double *boottime)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/timens_offsets", pid);
	FILE *f = fopen(path, "r");
	if (!f) return -1;
	char name[32];
	long long sec;
	long nsec;
	int found = 0;
	while (fscanf(f, "%31s %lld %ld", name, &sec, &nsec) == 3) {
		double v = (double)sec + (double)nsec / 1e9;
		if (!strcmp(name, "monotonic")) { *monotonic = v; found++; }
		if (!strcmp(name, "boottime")) { *boottime = v; found++; }
	}
	fclose(f);
	return found == 2 ? 0 : -1;
}

static void wait_term(void)
{
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	while (!got_term) sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

static void report_child(const char *who)
{
	if (failbuf[0]) { printf("FAIL: %s: %s\n", who, failbuf); fflush(stdout); _exit(1); }
	_exit(0);
}

static int reap(pid_t pid, const char *who)
{
	int status;
	if (waitpid(pid, &status, 0) != pid) { fail("waitpid(%s): %s", who, strerror(errno)); return -1; }
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fail("%s ended with status 0x%x", who, status); return -1; }
	return 0;
}

int main(int argc, char **argv)
{
	int inside = argc > 1 && !strcmp(argv[1], "inside");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	int ready[2];
	if (pipe(ready)) { printf("FAIL: pipe\n"); return 1; }

	if (argc > 1 && !strcmp(argv[1], "childless")) {
		if (unshare(CLONE_NEWTIME)) { printf("FAIL: unshare(CLONE_NEWTIME): %s\n", strerror(errno)); return 1; }
		set_offsets(86400, 2 * 86400);
		struct clocks mine = read_clocks();
		ready_then_wait(&got_term);
		if (ns_inode(0, "time") == ns_inode(0, "time_for_children")) fail("R gives its children its own time namespace");
		pid_t k = fork();
		if (k == 0) {
			double m = clock_of(CLOCK_MONOTONIC);
			_exit(write(ready[1], &m, sizeof(m)) == sizeof(m) ? 0 : 1);
		}
		double theirs = 0;
		if (read(ready[0], &theirs, sizeof(theirs)) != sizeof(theirs)) fail("no clock from the child");
		double ahead = theirs - clock_of(CLOCK_MONOTONIC);
		if (ahead < 86400 - 300 || ahead > 86400 + 2) fail("the first child's CLOCK_MONOTONIC is %.3f s ahead of R's, want about 86400", ahead);
		reap(k, "the first child");
		check_clocks("R", mine);
		if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
		return failbuf[0] != 0;
	}
	if (!inside) {
		if (unshare(CLONE_NEWTIME)) { printf("FAIL: unshare(CLONE_NEWTIME): %s\n", strerror(errno)); return 1; }
		set_offsets(86400, 2 * 86400);
	}
	pid_t a = fork();
	if (a == 0) {
		struct clocks mine = read_clocks();
		pid_t b = fork();
		if (b == 0) {
			struct clocks own = read_clocks();
			if (write(ready[1], "b", 1) != 1) _exit(1);
			wait_term();
			if (ns_inode(0, "time") != ns_inode(getppid(), "time")) fail("B is not in A's time namespace");
			check_clocks("B", own);
			report_child("B");
		}
		if (unshare(CLONE_NEWTIME)) { printf("FAIL: A: unshare(CLONE_NEWTIME): %s\n", strerror(errno)); _exit(1); }
		set_offsets(3 * 86400, 3 * 86400);
		pid_t c = fork();
		if (c == 0) {
			struct clocks own = read_clocks();
			if (write(ready[1], "c", 1) != 1) _exit(1);
			wait_term();
			if (ns_inode(0, "time") != ns_inode(getppid(), "time_for_children")) fail("C is not in the namespace A gives its children");
			if (ns_inode(0, "time") == ns_inode(getppid(), "time")) fail("C is in A's own time namespace");
			check_clocks("C", own);
			report_child("C");
		}
		if (write(ready[1], "a", 1) != 1) _exit(1);
		wait_term();
		kill(b, SIGTERM);
		kill(c, SIGTERM);
		reap(b, "B");
		reap(c, "C");
		if (ns_inode(0, "time") != ns_inode(getppid(), "time_for_children")) fail("A is not in the namespace R gives its children");
		if (ns_inode(0, "time") == ns_inode(0, "time_for_children")) fail("A gives its children its own time namespace");
		check_clocks("A", mine);
		report_child("A");
	}
	struct clocks mine = read_clocks();
	char byte;
	for (int i = 0; i < 3; i++)
		if (read(ready[0], &byte, 1) != 1) { printf("FAIL: a child did not get ready\n"); return 1; }
	ready_then_wait(&got_term);

	/* While A lives: its timens_offsets are U's (the namespace it gives its children). */
	double t_mono = 0, t_boot = 0, u_mono = 0, u_boot = 0;
	if (read_offsets(getpid(), &t_mono, &t_boot)) fail("cannot read R's timens_offsets");
	else if (read_offsets(a, &u_mono, &u_boot)) fail("cannot read A's timens_offsets");
	else {
		double mono = u_mono - t_mono - 2 * 86400, boot = u_boot - t_boot - 86400;
		if (mono < -2 || mono > 2) fail("U's monotonic offset is T's %+.3f s, want +172800", u_mono - t_mono);
		if (boot < -2 || boot > 2) fail("U's boottime offset is T's %+.3f s, want +86400", u_boot - t_boot);
	}
	kill(a, SIGTERM);
	reap(a, "A");
	unsigned long own = ns_inode(0, "time"), children = ns_inode(0, "time_for_children");
	if (inside && own != children) fail("R gives its children another time namespace than its own");
	if (!inside && own == children) fail("R gives its children its own time namespace");
	check_clocks("R", mine);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] != 0;
}
