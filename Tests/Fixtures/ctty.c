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
static void member(int ready, int rep)
{
	int t = open("/dev/tty", O_RDWR);
	if (t < 0 || ioctl(t, TIOCNOTTY) != 0) _exit(7);
	close(t);
	if (write(ready, "k", 1) != 1) _exit(8);
	while (!go) pause();
	if (own_tty_nr() != 0) fail("K: tty_nr %lx after TIOCNOTTY", own_tty_nr());
	t = open("/dev/tty", O_RDWR);
	if (t >= 0 || errno != ENXIO) fail("K: open(/dev/tty) gave %d (%s), not ENXIO", t, strerror(errno));
	report(rep, "K");
	for (;;) pause();
}

/* C: the session leader with the terminal. */
static void leader(const char *slave_name, int rep)
{
	if (setsid() < 0) _exit(10);
	int slave = open(slave_name, O_RDWR | O_NOCTTY);
	if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0) _exit(11);
	struct termios t;
	if (tcgetattr(slave, &t)) _exit(12);
	t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
	t.c_lflag |= ICANON | ISIG;
	if (tcsetattr(slave, TCSANOW, &t)) _exit(13);
	int tty = open("/dev/tty", O_RDWR);
	if (tty < 0) _exit(14);
	int sync[2];
	if (pipe(sync)) _exit(15);
	pid_t j = fork();
	if (j == 0) { close(sync[0]); setpgid(0, 0); job(sync[1], rep, slave, getsid(0)); }
	setpgid(j, j);
	wait_byte(sync[0]);
	if (tcsetpgrp(slave, j)) _exit(16);
	pid_t k = fork();
	if (k == 0) { close(sync[0]); close(tty); member(sync[1], rep); }
	wait_byte(sync[0]);
	close(sync[0]);
	close(sync[1]);
	char line[64];
	int n = snprintf(line, sizeof(line), "pids %d %d\n", j, k);
	if (write(rep, line, (size_t)n) != n) _exit(17);

	while (!go) pause();
	kill(j, SIGUSR1);
	kill(k, SIGUSR1);
	pid_t me = getpid();
	if (tcgetsid(slave) != me) fail("C: tcgetsid(slave) %d, not %d (%s)", tcgetsid(slave), me, strerror(errno));
	if (own_tty_nr() != rdev_of(slave)) fail("C: tty_nr %lx, the slave is %lx", own_tty_nr(), rdev_of(slave));
	if (tcgetpgrp(slave) != j) fail("C: foreground group %d, not J's %d", tcgetpgrp(slave), j);
	pid_t s = -1;
	if (ioctl(tty, TIOCGSID, &s) || s != me) fail("C: TIOCGSID on its /dev/tty: %d (%s)", s, strerror(errno));
	if (rdev_of(tty) != makedev(5, 0)) fail("C: its /dev/tty descriptor is %lx", rdev_of(tty));
	/* The root writes ^Z once J answered: J's group stops. */
	int status = 0, stopped = 0;
	for (int i = 0; i < 1000 && !stopped; i++) {
		pid_t w = waitpid(j, &status, WUNTRACED | WNOHANG);
		if (w == j && WIFSTOPPED(status)) stopped = 1;
		else usleep(10000);
	}
	if (!stopped) fail("C: J did not stop on ^Z");
	else if (WSTOPSIG(status) != SIGTSTP) fail("C: J stopped by signal %d, not SIGTSTP", WSTOPSIG(status));
	kill(j, SIGCONT);
	report(rep, "C");
	for (;;) pause();
}

int main(void)
{
	signal(SIGTERM, on_signal);
	signal(SIGUSR1, on_signal);
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master)) { printf("FAIL: posix_openpt\n"); return 1; }
	char slave_name[64];
	snprintf(slave_name, sizeof(slave_name), "%s", ptsname(master));
	int rep[2];
	if (pipe(rep)) { printf("FAIL: pipe\n"); return 1; }
	pid_t c = fork();
	if (c == 0) { close(master); close(rep[0]); leader(slave_name, rep[1]); }
	char line[4300];
	int j = 0, k = 0;
	if (read_line(rep[0], line, sizeof(line), 10) < 0 || sscanf(line, "pids %d %d", &j, &k) != 2) {
		printf("FAIL: set-up: \"%s\"\n", line);
		kill(c, SIGKILL);
		return 1;
	}
	printf("PIDS %d %d %d\n", c, j, k);
	printf("READY\n");
	fflush(stdout);
	while (!go) pause();

	kill(c, SIGUSR1);
	if (own_tty_nr() != 0) fail("root: tty_nr %lx, it has no terminal", own_tty_nr());
	pid_t s = -1, g = -1;
	if (ioctl(master, TIOCGSID, &s) || s != c) fail("root: TIOCGSID on the master %d, not C %d", s, c);
	if (ioctl(master, TIOCGPGRP, &g) || g != j) fail("root: TIOCGPGRP on the master %d, not J %d", g, j);
	if (write(master, "ping\n", 5) != 5) fail("root: write ping: %s", strerror(errno));
	int n = read_line(master, line, sizeof(line), 10);
	if (n < 0 || strncmp(line, "pong", 4) != 0) fail("root: read %d \"%s\" from the master, not pong", n, line);
	if (write(master, "\x1a", 1) != 1) fail("root: write ^Z: %s", strerror(errno));
	int reports = 0;
	while (reports < 3) {
		n = read_line(rep[0], line, sizeof(line), 20);
		if (n < 0) { fail("root: %d of 3 reports", reports); break; }
		reports++;
		if (strstr(line, "FAIL")) fail("%s", line);
	}
	kill(j, SIGKILL);
	kill(k, SIGKILL);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
