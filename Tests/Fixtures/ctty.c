/*
 * ctty: a session of the tree whose controlling terminal is a pty of the
 * tree. The root (a session leader without a terminal) opens a pty master and
 * forks C, which calls setsid, opens the slave, makes it its controlling
 * terminal (TIOCSCTTY), turns echo off, opens /dev/tty (fd T) and forks:
 *   J  a job: a process group of its own, made the foreground group
 *      (tcsetpgrp); it opens /dev/tty too (fd U, another description)
 *   K  a member of C's group that gave the terminal up (TIOCNOTTY)
 * After SIGTERM (root -> C -> J and K, with SIGUSR1) each checks:
 *   root: it has no controlling terminal (tty_nr 0); TIOCGSID and TIOCGPGRP
 *         on the master name C's session and J's group; "ping" written into
 *         the master is read by J, whose "pong" comes back through the master;
 *         then a ^Z (canonical mode, ISIG) stops the foreground group
 *   C: tcgetsid(slave) is its session, tty_nr is the slave, tcgetpgrp is J,
 *      T is /dev/tty and answers TIOCGSID; J stops on the ^Z (waitpid
 *      WUNTRACED) and goes on after SIGCONT
 *   J: its group is the foreground group, tty_nr is the slave, U answers
 *      TIOCGSID, /dev/tty opens again and is the same terminal; reads "ping"
 *      from U and writes "pong" to it
 *   K: tty_nr 0, open("/dev/tty") fails with ENXIO
 * The root prints "PIDS C J K" before READY, and PASS when all four checked out.
 * With the argument "root" the root itself is C: it leads the session with
 * the terminal and holds the master (PIDS names it first). With "keep" K
 * keeps the /dev/tty descriptor it gave the terminal up through, and "ping"
 * is written before READY (it waits in the terminal while cryo dumps).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t go;
static void on_signal(int sig) { (void)sig; go = 1; }

/* tty_nr of /proc/self/stat (field 7). */
static unsigned long own_tty_nr(void)
{
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "r");
	if (!f) return ~0UL;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	char state;
	int ppid, pgrp, session;
	unsigned long tty = ~0UL;
	if (!p || sscanf(p + 2, "%c %d %d %d %lu", &state, &ppid, &pgrp, &session, &tty) != 5) return ~0UL;
	return tty;
}

static unsigned long rdev_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) ? 0 : (unsigned long)st.st_rdev;
}

static void report(int out, const char *who)
{
	char line[4200];
	int n = snprintf(line, sizeof(line), "%s %s%s\n", who, failbuf[0] ? "FAIL: " : "PASS", failbuf);
	if (write(out, line, (size_t)n) < 0) _exit(3);
}

static void wait_byte(int fd)
{
	char c;
	if (read(fd, &c, 1) != 1) _exit(4);
}

/* J: the foreground job. */
static void job(int ready, int rep, int slave, int sid)
{
	int u = open("/dev/tty", O_RDWR);
	if (u < 0) _exit(5);
	if (write(ready, "j", 1) != 1) _exit(6);
	while (!go) pause();
	if (getpgrp() != getpid()) fail("J: group %d, not its own", getpgrp());
	if (tcgetpgrp(slave) != getpgrp()) fail("J: foreground group %d, not J's %d", tcgetpgrp(slave), getpgrp());
	if (own_tty_nr() != rdev_of(slave)) fail("J: tty_nr %lx, the slave is %lx", own_tty_nr(), rdev_of(slave));
	pid_t s = -1;
	if (ioctl(u, TIOCGSID, &s) || s != sid) fail("J: TIOCGSID on its /dev/tty: %d (%s)", s, strerror(errno));
	if (rdev_of(u) != makedev(5, 0)) fail("J: its /dev/tty descriptor is %lx", rdev_of(u));
	int again = open("/dev/tty", O_RDWR | O_NONBLOCK);
	s = -1;
	if (again < 0) fail("J: open(/dev/tty): %s", strerror(errno));
	else if (ioctl(again, TIOCGSID, &s) || s != sid) fail("J: TIOCGSID on a new /dev/tty: %d", s);
	char line[64];
	int n = read_line(u, line, sizeof(line), 10);
	if (n < 0 || strcmp(line, "ping") != 0) fail("J: read %d \"%s\" from /dev/tty, not ping", n, line);
	else if (write(u, "pong\n", 5) != 5) fail("J: write pong: %s", strerror(errno));
	report(rep, "J");
	for (;;) pause();  /* the ^Z stops it here */
}

/* K: a member of C's group without a terminal. */
static int keep_dev_tty;  /* K keeps the /dev/tty it gave the terminal up through */

static void member(int ready, int rep)
{
	int t = open("/dev/tty", O_RDWR);
	if (t < 0 || ioctl(t, TIOCNOTTY) != 0) _exit(7);
	if (!keep_dev_tty) close(t);
	if (write(ready, "k", 1) != 1) _exit(8);
	while (!go) pause();
	if (own_tty_nr() != 0) fail("K: tty_nr %lx after TIOCNOTTY", own_tty_nr());
	t = open("/dev/tty", O_RDWR);
	if (t >= 0 || errno != ENXIO) fail("K: open(/dev/tty) gave %d (%s), not ENXIO", t, strerror(errno));
	report(rep, "K");
	for (;;) pause();
}

/* The session leader's side: its terminal, its /dev/tty and its two children. */
struct leader { int slave, tty; pid_t j, k; };
static int master_fd = -1;  /* closed in J and K */

static struct leader leader_setup(const char *slave_name, int rep)
{
	struct leader l;
	l.slave = open(slave_name, O_RDWR | O_NOCTTY);
	if (l.slave < 0 || ioctl(l.slave, TIOCSCTTY, 0) != 0) _exit(11);
	struct termios t;
	if (tcgetattr(l.slave, &t)) _exit(12);
	t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	t.c_lflag |= ICANON | ISIG;
	if (tcsetattr(l.slave, TCSANOW, &t)) _exit(13);
	l.tty = open("/dev/tty", O_RDWR);
	if (l.tty < 0) _exit(14);
	int sync[2];
	if (pipe(sync)) _exit(15);
	l.j = fork();
	if (l.j == 0) { close(sync[0]); close(master_fd); setpgid(0, 0); job(sync[1], rep, l.slave, getsid(0)); }
	setpgid(l.j, l.j);
	wait_byte(sync[0]);
	if (tcsetpgrp(l.slave, l.j)) _exit(16);
	l.k = fork();
	if (l.k == 0) { close(sync[0]); close(master_fd); close(l.tty); member(sync[1], rep); }
	wait_byte(sync[0]);
	close(sync[0]);
	close(sync[1]);
	return l;
}

/* After the go: its own checks, then J must stop on the ^Z the root writes once J answered. */
static void leader_check(const struct leader *l, const char *who)
{
	pid_t me = getpid();
	if (tcgetsid(l->slave) != me) fail("%s: tcgetsid(slave) %d, not %d (%s)", who, tcgetsid(l->slave), me, strerror(errno));
	if (own_tty_nr() != rdev_of(l->slave)) fail("%s: tty_nr %lx, the slave is %lx", who, own_tty_nr(), rdev_of(l->slave));
	if (tcgetpgrp(l->slave) != l->j) fail("%s: foreground group %d, not J's %d", who, tcgetpgrp(l->slave), l->j);
	pid_t s = -1;
	if (ioctl(l->tty, TIOCGSID, &s) || s != me) fail("%s: TIOCGSID on its /dev/tty: %d (%s)", who, s, strerror(errno));
	if (rdev_of(l->tty) != makedev(5, 0)) fail("%s: its /dev/tty descriptor is %lx", who, rdev_of(l->tty));
	int status = 0, stopped = 0;
	for (int i = 0; i < 1000 && !stopped; i++) {
		pid_t w = waitpid(l->j, &status, WUNTRACED | WNOHANG);
		if (w == l->j && WIFSTOPPED(status)) stopped = 1;
		else usleep(10000);
	}
	if (!stopped) fail("%s: J did not stop on ^Z", who);
	else if (WSTOPSIG(status) != SIGTSTP) fail("%s: J stopped by signal %d, not SIGTSTP", who, WSTOPSIG(status));
	kill(l->j, SIGCONT);
}

/* C: the session leader with the terminal, a child of the root. */
static void leader(const char *slave_name, int rep)
{
	if (setsid() < 0) _exit(10);
	struct leader l = leader_setup(slave_name, rep);
	char line[64];
	int n = snprintf(line, sizeof(line), "pids %d %d\n", l.j, l.k);
	if (write(rep, line, (size_t)n) != n) _exit(17);
	while (!go) pause();
	kill(l.j, SIGUSR1);
	kill(l.k, SIGUSR1);
	leader_check(&l, "C");
	report(rep, "C");
	for (;;) pause();
}

/* The root's side of the master: the session, the group, a line each way, then ^Z. */
static void master_check(int master, pid_t c, pid_t j, int ping_written)
{
	char line[64];
	pid_t s = -1, g = -1;
	if (ioctl(master, TIOCGSID, &s) || s != c) fail("root: TIOCGSID on the master %d, not C %d", s, c);
	if (ioctl(master, TIOCGPGRP, &g) || g != j) fail("root: TIOCGPGRP on the master %d, not J %d", g, j);
	if (!ping_written && write(master, "ping\n", 5) != 5) fail("root: write ping: %s", strerror(errno));
	int n = read_line(master, line, sizeof(line), 10);
	if (n < 0 || strncmp(line, "pong", 4) != 0) fail("root: read %d \"%s\" from the master, not pong", n, line);
	if (write(master, "\x1a", 1) != 1) fail("root: write ^Z: %s", strerror(errno));
}

static void collect(int rep, int expected)
{
	char line[4300];
	for (int reports = 0; reports < expected; reports++) {
		if (read_line(rep, line, sizeof(line), 20) < 0) { fail("root: %d of %d reports", reports, expected); break; }
		if (strstr(line, "FAIL")) fail("%s", line);
	}
}

int main(int argc, char **argv)
{
	/* "root": the root itself leads the session with the terminal (no C). */
	int root_leads = argc > 1 && strcmp(argv[1], "root") == 0;
	keep_dev_tty = argc > 1 && strcmp(argv[1], "keep") == 0;
	signal(SIGTERM, on_signal);
	signal(SIGUSR1, on_signal);
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master)) { printf("FAIL: posix_openpt\n"); return 1; }
	master_fd = master;
	char slave_name[64];
	snprintf(slave_name, sizeof(slave_name), "%s", ptsname(master));
	int rep[2];
	if (pipe(rep)) { printf("FAIL: pipe\n"); return 1; }
	if (root_leads) {
		struct leader l = leader_setup(slave_name, rep[1]);
		printf("PIDS %d %d %d\nREADY\n", getpid(), l.j, l.k);
		fflush(stdout);
		while (!go) pause();
		kill(l.j, SIGUSR1);
		kill(l.k, SIGUSR1);
		master_check(master, getpid(), l.j, 0);
		leader_check(&l, "root");
		collect(rep[0], 2);
		kill(l.j, SIGKILL);
		kill(l.k, SIGKILL);
	} else {
		pid_t c = fork();
		if (c == 0) { close(master); master_fd = -1; close(rep[0]); leader(slave_name, rep[1]); }
		char line[4300];
		int j = 0, k = 0;
		if (read_line(rep[0], line, sizeof(line), 10) < 0 || sscanf(line, "pids %d %d", &j, &k) != 2) {
			printf("FAIL: set-up: \"%s\"\n", line);
			kill(c, SIGKILL);
			return 1;
		}
		/* "keep": the line waits in the terminal while cryo tries (and refuses) to dump. */
		if (keep_dev_tty && write(master, "ping\n", 5) != 5) { printf("FAIL: write ping\n"); return 1; }
		printf("PIDS %d %d %d\nREADY\n", c, j, k);
		fflush(stdout);
		while (!go) pause();
		kill(c, SIGUSR1);
		if (own_tty_nr() != 0) fail("root: tty_nr %lx, it has no terminal", own_tty_nr());
		master_check(master, c, j, keep_dev_tty);
		collect(rep[0], 3);
		kill(j, SIGKILL);
		kill(k, SIGKILL);
		kill(c, SIGKILL);
		waitpid(c, NULL, 0);
	}
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
