/*
 * pipeends: pipe and FIFO ends whose status flags and poll() state must come
 * back exactly. argv[1] is a folder for the FIFOs, argv[2] the variant:
 *
 * flags   F_GETFL of every end is compared with its value before the dump
 *         (pipe() never sets O_LARGEFILE; open() always does):
 *           plain    pipe(), 3000 unread bytes
 *           nonblk   pipe2(O_NONBLOCK), then the read end made blocking
 *           packet   pipe2(O_DIRECT) (packet mode, write end), read end
 *                    given O_DIRECT|O_NONBLOCK by F_SETFL; two writes after
 *                    restore must come out as two packets
 *           async    O_ASYNC on both ends, owner this process, F_SETSIG
 *                    SIGIO, 64 KiB, 5000 unread bytes; a write after
 *                    restore must raise SIGIO
 *           second   pipe() plus a second description of each end opened
 *                    through /proc/self/fd (with O_LARGEFILE), placed at
 *                    lower fd numbers than the pipe's own; each description
 *                    keeps its own O_NONBLOCK
 *           fifo     a FIFO's reader and writer, the writer in packet mode
 *                    (F_SETFL O_DIRECT), 11 unread bytes
 *
 * Prints READY, then PASS or FAIL: reasons after SIGTERM.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include "fixture.h"

/* As F_GETFL shows it: glibc's O_LARGEFILE is 0 on 64-bit targets. */
#define OPEN_LARGEFILE 0100000

static volatile sig_atomic_t got_term, sigio_count;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_io(int sig) { (void)sig; sigio_count++; }

static void die(const char *what) { printf("setup: %s: %s\n", what, strerror(errno)); fflush(stdout); exit(2); }

static int place(int fd, int at)
{
	if (fd < 0) die("open");
	if (fd == at) return fd;
	if (dup2(fd, at) != at) die("dup2");
	close(fd);
	return at;
}

static void put(int fd, const char *what, size_t n)
{
	char buf[8192];
	for (size_t i = 0; i < n && i < sizeof(buf); i++) buf[i] = (char)(i * 7 + 3);
	if (n > sizeof(buf) || write(fd, buf, n) != (ssize_t)n) die(what);
}

/* The descriptors checked for exact F_GETFL, with their values before the dump. */
struct end { const char *name; int fd; int flags; };
static struct end ends[32];
static int nends;

static void track(const char *name, int fd)
{
	ends[nends].name = name;
	ends[nends].fd = fd;
	ends[nends].flags = fcntl(fd, F_GETFL);
	nends++;
}

static void check_flags(void)
{
	for (int i = 0; i < nends; i++) {
		int now = fcntl(ends[i].fd, F_GETFL);
		if (now != ends[i].flags)
			fail("%s (fd %d): F_GETFL %#o, was %#o", ends[i].name, ends[i].fd, now, ends[i].flags);
	}
}

static int unread(int fd)
{
	int n = -1;
	return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

static void flags_setup(const char *dir)
{
	int p[2];
	char path[PATH_MAX];

	/* The extra descriptions of "second" go first, at fds 3 and 4. */
	if (pipe(p) != 0) die("pipe");
	place(p[0], 10), place(p[1], 11);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", 10);
	place(open(path, O_RDONLY | O_NONBLOCK), 3);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", 11);
	place(open(path, O_WRONLY), 4);
	track("second: own read end", 10);
	track("second: own write end", 11);
	track("second: read end through /proc", 3);
	track("second: write end through /proc", 4);

	if (pipe(p) != 0) die("pipe");
	place(p[0], 12), place(p[1], 13);
	put(13, "plain bytes", 3000);
	track("plain: read end", 12);
	track("plain: write end", 13);

	if (pipe2(p, O_NONBLOCK) != 0) die("pipe2");
	place(p[0], 14), place(p[1], 15);
	if (fcntl(14, F_SETFL, 0) != 0) die("F_SETFL nonblk");
	track("nonblk: read end", 14);
	track("nonblk: write end", 15);

	if (pipe2(p, O_DIRECT) != 0) die("pipe2(O_DIRECT)");
	place(p[0], 16), place(p[1], 17);
	if (fcntl(16, F_SETFL, O_DIRECT | O_NONBLOCK) != 0) die("F_SETFL packet");
	track("packet: read end", 16);
	track("packet: write end", 17);

	if (pipe(p) != 0) die("pipe");
	place(p[0], 18), place(p[1], 19);
	for (int fd = 18; fd <= 19; fd++)
		if (fcntl(fd, F_SETOWN, getpid()) != 0 || fcntl(fd, F_SETSIG, SIGIO) != 0 ||
		    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) != 0)
			die("async fcntl");
	if (fcntl(19, F_SETPIPE_SZ, 65536) < 0) die("F_SETPIPE_SZ");
	put(19, "async bytes", 5000);
	track("async: read end", 18);
	track("async: write end", 19);

	snprintf(path, sizeof(path), "%s/flags.fifo", dir);
	unlink(path);
	if (mkfifo(path, 0600) != 0) die("mkfifo");
	place(open(path, O_RDONLY | O_NONBLOCK), 20);
	place(open(path, O_WRONLY), 21);
	if (fcntl(21, F_SETFL, O_DIRECT) != 0) die("F_SETFL fifo O_DIRECT");
	put(21, "fifo bytes", 11);
	track("fifo: reader", 20);
	track("fifo: writer", 21);
}

static void flags_check(void)
{
	check_flags();
	for (int i = 0; i < nends; i++)
		if (ends[i].fd >= 10 && ends[i].fd <= 19 && (ends[i].flags & OPEN_LARGEFILE))
			fail("%s: O_LARGEFILE before the dump: not pipe()'s end", ends[i].name);

	/* second: the four descriptions are two pairs of separate ones on one pipe */
	if (fcntl(3, F_SETFL, 0) != 0 || (fcntl(10, F_GETFL) & O_NONBLOCK) || !(fcntl(4, F_GETFL) & OPEN_LARGEFILE))
		fail("second: the descriptions through /proc are not their own");
	if (fcntl(10, F_SETFL, O_NONBLOCK) != 0 || (fcntl(3, F_GETFL) & O_NONBLOCK))
		fail("second: the pipe's own read end shares its flags with the one through /proc");
	if (write(4, "ab", 2) != 2 || write(11, "cd", 2) != 2 || unread(3) != 4 || unread(10) != 4)
		fail("second: the descriptions are not one pipe");

	if (unread(12) != 3000) fail("plain: %d unread bytes, want 3000", unread(12));
	if (unread(18) != 5000) fail("async: %d unread bytes, want 5000", unread(18));
	if (fcntl(18, F_GETPIPE_SZ) != 65536) fail("async: pipe size %d", fcntl(18, F_GETPIPE_SZ));
	if (unread(20) != 11) fail("fifo: %d unread bytes, want 11", unread(20));
	for (int fd = 18; fd <= 19; fd++)
		if (fcntl(fd, F_GETOWN) != getpid() || fcntl(fd, F_GETSIG) != SIGIO)
			fail("async: fd %d owner %d signal %d, want %d and SIGIO", fd, fcntl(fd, F_GETOWN), fcntl(fd, F_GETSIG), getpid());

	/* packet mode still on: two writes are two reads */
	char buf[64];
	if (write(17, "0123456789", 10) != 10 || write(17, "abc", 3) != 3)
		fail("packet: write after restore: %s", strerror(errno));
	else if (read(16, buf, sizeof(buf)) != 10 || read(16, buf, sizeof(buf)) != 3)
		fail("packet: the writes did not come out as two packets");

	/* O_ASYNC armed: a write raises SIGIO */
	sig_atomic_t before = sigio_count;
	if (write(19, "x", 1) != 1) fail("async: write: %s", strerror(errno));
	for (int i = 0; i < 100 && sigio_count == before; i++) usleep(10000);
	if (sigio_count == before) fail("async: no SIGIO after a write");
}

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: pipeends FOLDER flags\n"); return 2; }
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	sa.sa_handler = on_io;
	sa.sa_flags = SA_RESTART;
	if (sigaction(SIGIO, &sa, NULL) != 0) die("sigaction SIGIO");
	signal(SIGPIPE, SIG_IGN);
	for (int fd = 3; fd < 1024; fd++)
		close(fd);

	if (strcmp(argv[2], "flags") == 0) flags_setup(argv[1]);
	else { fprintf(stderr, "unknown variant %s\n", argv[2]); return 2; }

	ready_then_wait(&got_term);

	flags_check();

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
