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
 * hangup  poll(POLLIN) revents of FIFO readers must be what they were:
 *           never    reader (O_NONBLOCK), no writer ever, 256 KiB: nothing;
 *                    a writer coming and going after restore makes it hang up
 *           gone     reader; a writer wrote 7 bytes and closed: IN|HUP
 *           mixed    reader 1; a writer wrote 5 bytes and closed; reader 2
 *                    opened after: IN|HUP for 1, IN alone for 2
 *           live     reader and a writer still open: nothing; HUP once the
 *                    writer is closed after restore
 *           blocking reader opened O_NONBLOCK, made blocking, no writer: nothing
 *           unlinked reader of a FIFO unlinked since, no writer ever: nothing
 *           rdwr     reader, then an O_RDWR description: nothing; HUP once
 *                    the O_RDWR one is closed after restore
 *           pipe     an anonymous pipe's read end, its write end closed: HUP
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

static int revents(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 0) < 0) return -1;
	return p.revents;
}

static const char *events_name(int ev)
{
	static char s[8][32];
	static int slot;
	char *out = s[slot++ % 8];
	snprintf(out, 32, "%s%s%s%s", ev & POLLIN ? "IN " : "", ev & POLLHUP ? "HUP " : "", ev & POLLERR ? "ERR " : "",
		 ev & POLLNVAL ? "NVAL " : "");
	if (!*out) snprintf(out, 32, "nothing");
	return out;
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

static const char *hup_names[] = { "never", "gone", "mixed 1", "mixed 2", "live", "blocking", "unlinked", "rdwr", "pipe" };
#define NHUP (int)(sizeof(hup_names) / sizeof(hup_names[0]))
static int hup_fd[NHUP], hup_before[NHUP];
static const int hup_want[NHUP] = { 0, POLLIN | POLLHUP, POLLIN | POLLHUP, POLLIN, 0, 0, 0, 0, POLLHUP };
enum { NEVER, GONE, MIXED1, MIXED2, LIVE, BLOCKING, UNLINKED, RDWR, PIPE };
static char never_path[PATH_MAX];

static int fifo(const char *dir, const char *name, char *path)
{
	static char own[PATH_MAX];
	if (!path) path = own;
	snprintf(path, PATH_MAX, "%s/%s.fifo", dir, name);
	unlink(path);
	if (mkfifo(path, 0600) != 0) die("mkfifo");
	return open(path, O_RDONLY | O_NONBLOCK);
}

static void hangup_setup(const char *dir)
{
	char path[PATH_MAX];
	int w;

	hup_fd[NEVER] = place(fifo(dir, "never", never_path), 10);
	if (fcntl(10, F_SETPIPE_SZ, 256 * 1024) < 0) die("F_SETPIPE_SZ");

	hup_fd[GONE] = place(fifo(dir, "gone", path), 11);
	if ((w = open(path, O_WRONLY)) < 0) die("open gone writer");
	put(w, "gone bytes", 7);
	close(w);

	hup_fd[MIXED1] = place(fifo(dir, "mixed", path), 12);
	if ((w = open(path, O_WRONLY)) < 0) die("open mixed writer");
	put(w, "mixed bytes", 5);
	close(w);
	hup_fd[MIXED2] = place(open(path, O_RDONLY | O_NONBLOCK), 13);

	hup_fd[LIVE] = place(fifo(dir, "live", path), 14);
	place(open(path, O_WRONLY), 20);

	hup_fd[BLOCKING] = place(fifo(dir, "blocking", NULL), 15);
	if (fcntl(15, F_SETFL, 0) != 0) die("F_SETFL blocking");

	hup_fd[UNLINKED] = place(fifo(dir, "unlinked", path), 16);
	if (unlink(path) != 0) die("unlink");

	hup_fd[RDWR] = place(fifo(dir, "rdwr", path), 17);
	place(open(path, O_RDWR), 21);

	int p[2];
	if (pipe(p) != 0) die("pipe");
	hup_fd[PIPE] = place(p[0], 18);
	close(p[1]);

	for (int i = 0; i < NHUP; i++) {
		hup_before[i] = revents(hup_fd[i]);
		if (hup_before[i] != hup_want[i]) {
			printf("setup: %s: poll says %s before the dump, want %s\n", hup_names[i], events_name(hup_before[i]),
			       events_name(hup_want[i]));
			fflush(stdout);
			exit(2);
		}
		track(hup_names[i], hup_fd[i]);
	}
	track("live: writer", 20);
	track("rdwr: O_RDWR", 21);
}

static void hangup_check(void)
{
	check_flags();
	for (int i = 0; i < NHUP; i++) {
		int now = revents(hup_fd[i]);
		if (now != hup_before[i])
			fail("%s (fd %d): poll says %s, was %s", hup_names[i], hup_fd[i], events_name(now), events_name(hup_before[i]));
	}
	if (fcntl(10, F_GETPIPE_SZ) != 256 * 1024) fail("never: pipe size %d", fcntl(10, F_GETPIPE_SZ));
	if (unread(11) != 7 || unread(12) != 5) fail("gone/mixed: %d and %d unread bytes, want 7 and 5", unread(11), unread(12));

	/* Still live FIFOs: a writer coming and going makes a quiet reader hang up. */
	int w = open(never_path, O_WRONLY | O_NONBLOCK);
	if (w < 0) fail("never: open a writer: %s", strerror(errno));
	else {
		close(w);
		if (revents(10) != POLLHUP) fail("never: after a writer came and went poll says %s, want HUP", events_name(revents(10)));
	}
	close(20);
	if (revents(14) != POLLHUP) fail("live: its writer closed, poll says %s, want HUP", events_name(revents(14)));
	close(21);
	if (revents(17) != POLLHUP) fail("rdwr: the O_RDWR one closed, poll says %s, want HUP", events_name(revents(17)));
}

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: pipeends FOLDER flags|hangup\n"); return 2; }
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

	int flags = strcmp(argv[2], "flags") == 0;
	if (flags) flags_setup(argv[1]);
	else if (strcmp(argv[2], "hangup") == 0) hangup_setup(argv[1]);
	else { fprintf(stderr, "unknown variant %s\n", argv[2]); return 2; }

	ready_then_wait(&got_term);

	if (flags) flags_check();
	else hangup_check();

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
