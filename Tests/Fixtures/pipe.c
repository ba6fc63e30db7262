/*
 * pipe: pipes with unread data across checkpoint/restore.
 *
 *   pipe A: both ends held, 3000 unread bytes, blocking, default size
 *   pipe B: both ends held, read end O_NONBLOCK, 1000 unread bytes
 *   pipe C: both ends held, resized to 128 KiB with F_SETPIPE_SZ, 100000
 *           unread bytes (more than a default-sized pipe can hold)
 *
 * On SIGTERM: sizes, flags, the pairing of ends (same inode), the unread byte
 * counts (FIONREAD) and the bytes themselves are checked, then each pipe must
 * still carry new data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

#define A_BYTES 3000
#define B_BYTES 1000
#define C_BYTES 100000
#define C_SIZE  (128 * 1024)



static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static unsigned char pat(unsigned salt, size_t i) { return (unsigned char)((i * 37 + salt * 101 + (i >> 9)) & 0xff); }

static unsigned char buf[C_BYTES + 4096];

static void put(int fd, unsigned salt, size_t n)
{
	for (size_t i = 0; i < n; i++) buf[i] = pat(salt, i);
	size_t done = 0;
	while (done < n) {
		ssize_t w = write(fd, buf + done, n - done);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) die("write");
		done += (size_t)w;
	}
}

struct pipe_info { const char *name; int rd, wr; int size; int rd_nonblock; };

static void check_pipe(struct pipe_info *p, unsigned salt, size_t want_bytes)
{
	struct stat sr, sw;
	if (fstat(p->rd, &sr) != 0 || fstat(p->wr, &sw) != 0) { fail("%s: fds %d/%d not open", p->name, p->rd, p->wr); return; }
	if (!S_ISFIFO(sr.st_mode) || !S_ISFIFO(sw.st_mode)) { fail("%s: fds %d/%d are not pipes", p->name, p->rd, p->wr); return; }
	if (sr.st_ino != sw.st_ino) fail("%s: read end fd %d and write end fd %d are different pipes", p->name, p->rd, p->wr);

	int frd = fcntl(p->rd, F_GETFL), fwr = fcntl(p->wr, F_GETFL);
	if ((frd & O_ACCMODE) != O_RDONLY) fail("%s: read end fd %d access mode %#x", p->name, p->rd, frd & O_ACCMODE);
	if ((fwr & O_ACCMODE) != O_WRONLY) fail("%s: write end fd %d access mode %#x", p->name, p->wr, fwr & O_ACCMODE);
	if (!!(frd & O_NONBLOCK) != p->rd_nonblock) fail("%s: read end O_NONBLOCK is %s", p->name, p->rd_nonblock ? "missing" : "set");
	if (fwr & O_NONBLOCK) fail("%s: write end has O_NONBLOCK", p->name);
	if (fcntl(p->rd, F_GETFD) & FD_CLOEXEC) fail("%s: read end has FD_CLOEXEC", p->name);

	int size = fcntl(p->rd, F_GETPIPE_SZ);
	if (size != p->size) fail("%s: pipe size %d, want %d", p->name, size, p->size);

	int avail = -1;
	if (ioctl(p->rd, FIONREAD, &avail) != 0 || avail != (int)want_bytes)
		fail("%s: %d unread bytes, want %zu", p->name, avail, want_bytes);

	/* read back exactly what was left in the pipe, without blocking */
	int oldfl = fcntl(p->rd, F_GETFL);
	fcntl(p->rd, F_SETFL, oldfl | O_NONBLOCK);
	size_t got = 0;
	for (;;) {
		ssize_t r = read(p->rd, buf + got, sizeof(buf) - got);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) {
			if (r < 0 && errno != EAGAIN) fail("%s: read: %s", p->name, strerror(errno));
			if (r == 0) fail("%s: read end reports EOF (write end lost?)", p->name);
			break;
		}
		got += (size_t)r;
	}
	if (got != want_bytes) fail("%s: read back %zu bytes, want %zu", p->name, got, want_bytes);
	for (size_t i = 0; i < got && i < want_bytes; i++)
		if (buf[i] != pat(salt, i)) { fail("%s: byte %zu is %#x, want %#x", p->name, i, buf[i], pat(salt, i)); break; }

	/* still a working pipe (read without blocking: a miswired pipe must
	 * fail the check, not hang it) */
	const char msg[] = "still flowing";
	char back[sizeof(msg)] = "";
	if (write(p->wr, msg, sizeof(msg)) != (ssize_t)sizeof(msg)) fail("%s: write after restore: %s", p->name, strerror(errno));
	else if (read(p->rd, back, sizeof(back)) != (ssize_t)sizeof(msg) || memcmp(back, msg, sizeof(msg)) != 0)
		fail("%s: data written after restore did not come out", p->name);
	fcntl(p->rd, F_SETFL, oldfl);
	if (p->rd_nonblock && (fcntl(p->rd, F_GETFL) & O_NONBLOCK)) {
		char c;
		ssize_t r = read(p->rd, &c, 1);
		if (!(r < 0 && errno == EAGAIN)) fail("%s: empty non-blocking read returned %zd (%s), want EAGAIN", p->name, r, r < 0 ? strerror(errno) : "data");
	}
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	signal(SIGPIPE, SIG_IGN);    /* a lost read end shows up as EPIPE, not death */

	for (int fd = 3; fd < 1024; fd++)   /* start from a clean fd table */
		close(fd);

	int a[2], b[2], c[2];
	if (pipe(a) != 0 || pipe(b) != 0 || pipe(c) != 0) die("pipe");

	struct pipe_info pa = { "pipe A", a[0], a[1], 0, 0 };
	struct pipe_info pb = { "pipe B", b[0], b[1], 0, 1 };
	struct pipe_info pc = { "pipe C", c[0], c[1], 0, 0 };

	if (fcntl(b[0], F_SETFL, O_NONBLOCK) != 0) die("F_SETFL");
	if (fcntl(c[1], F_SETPIPE_SZ, C_SIZE) < 0) die("F_SETPIPE_SZ");
	pa.size = fcntl(a[0], F_GETPIPE_SZ);
	pb.size = fcntl(b[0], F_GETPIPE_SZ);
	pc.size = fcntl(c[0], F_GETPIPE_SZ);
	if (pc.size != C_SIZE) { fprintf(stderr, "setup: pipe C size %d\n", pc.size); return 2; }
	if (pa.size >= C_BYTES) { fprintf(stderr, "setup: default pipe size %d too big for the test\n", pa.size); return 2; }

	put(a[1], 1, A_BYTES);
	put(b[1], 2, B_BYTES);
	put(c[1], 3, C_BYTES);

	printf("READY\n");
	fflush(stdout);

	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	while (!got_term)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);

	check_pipe(&pa, 1, A_BYTES);
	check_pipe(&pb, 2, B_BYTES);
	check_pipe(&pc, 3, C_BYTES);

	struct stat s1, s2, s3;
	if (fstat(a[0], &s1) == 0 && fstat(b[0], &s2) == 0 && fstat(c[0], &s3) == 0 &&
	    (s1.st_ino == s2.st_ino || s1.st_ino == s3.st_ino || s2.st_ino == s3.st_ino))
		fail("two of the pipes were merged into one");

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
