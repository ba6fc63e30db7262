/*
 * ptyhangup: pseudo-terminals whose other side is gone.
 *   A: the master was closed while the slave stays open: the slave is hung
 *      up (poll says POLLHUP, read gives end of file, write EIO, tcgetattr
 *      fails). Two descriptors (dup) share its description.
 *   B: the slave was opened and closed while the master stays open: the
 *      master's poll says POLLHUP and read fails with EIO; opening the slave
 *      again (by ptsname) brings the pair back to life.
 * Each state is checked before READY (so the test matches the kernel here)
 * and again after SIGTERM.
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
#include <termios.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static short revents(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };
	return poll(&p, 1, 0) < 0 ? -1 : p.revents;
}

static void check_hung_slave(const char *when, int slave, int copy)
{
	char c;
	struct termios t;
	if (!(revents(slave) & POLLHUP)) fail("%s: A's slave: poll 0x%x, no POLLHUP", when, revents(slave));
	ssize_t n = read(slave, &c, 1);
	if (n != 0) fail("%s: A's slave: read gave %zd (%s), not end of file", when, n, strerror(errno));
	errno = 0;
	n = write(copy, "x", 1);
	if (n != -1 || errno != EIO) fail("%s: A's slave: write gave %zd (%s), not EIO", when, n, strerror(errno));
	if (tcgetattr(slave, &t) == 0) fail("%s: A's slave: tcgetattr works on a hung-up terminal", when);
}

static void check_closed_master(const char *when, int master)
{
	char c;
	if (!(revents(master) & POLLHUP)) fail("%s: B's master: poll 0x%x, no POLLHUP", when, revents(master));
	errno = 0;
	ssize_t n = read(master, &c, 1);
	if (n != -1 || errno != EIO) fail("%s: B's master: read gave %zd (%s), not EIO", when, n, strerror(errno));
}

int main(void)
{
	signal(SIGTERM, on_term);
	int a = posix_openpt(O_RDWR | O_NOCTTY);
	if (a < 0 || grantpt(a) || unlockpt(a)) { printf("FAIL: posix_openpt\n"); return 1; }
	int a_slave = open(ptsname(a), O_RDWR | O_NOCTTY);
	int a_copy = dup(a_slave);
	close(a);

	int b = posix_openpt(O_RDWR | O_NOCTTY);
	if (b < 0 || grantpt(b) || unlockpt(b)) { printf("FAIL: posix_openpt\n"); return 1; }
	int b_slave = open(ptsname(b), O_RDWR | O_NOCTTY);
	if (a_slave < 0 || a_copy < 0 || b_slave < 0) { printf("FAIL: open the slaves\n"); return 1; }
	close(b_slave);

	check_hung_slave("before", a_slave, a_copy);
	check_closed_master("before", b);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("READY\n");
	fflush(stdout);
	while (!term) pause();

	check_hung_slave("after", a_slave, a_copy);
	check_closed_master("after", b);
	b_slave = open(ptsname(b), O_RDWR | O_NOCTTY);
	if (b_slave < 0) fail("B: the slave %s does not open again: %s", ptsname(b), strerror(errno));
	else {
		struct termios t;
		tcgetattr(b_slave, &t);
		cfmakeraw(&t);
		tcsetattr(b_slave, TCSANOW, &t);
		char buf[8] = { 0 };
		if (write(b_slave, "hi", 2) != 2) fail("B: write to the slave again: %s", strerror(errno));
		struct pollfd p = { b, POLLIN, 0 };
		if (poll(&p, 1, 2000) != 1 || read(b, buf, sizeof(buf)) != 2 || memcmp(buf, "hi", 2) != 0)
			fail("B: the master did not get the slave's bytes (\"%s\", %s)", buf, strerror(errno));
	}
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
