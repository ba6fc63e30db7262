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
 * packets buffered bytes keep their packet boundaries; each read after restore
 *         must return one packet, as before:
 *           pipe     pipe2(O_DIRECT): packets of 5, 1, 300 and 4096 bytes
 *           plain    pipe(): two writes, read back as one run of 7 bytes
 *           mixed    pipe2(O_DIRECT): a packet of 2, then (O_DIRECT off,
 *                    then on again) 9 plain bytes: reads of 2 and 9
 *           fifo     a FIFO whose writer has O_DIRECT: packets of 3, 5, 5
 *
 * sameino two FIFOs with one inode number, ARGV[1]/a/f and ARGV[1]/b/f (the
 *         test mounts a file system of its own at a and at b), each with a
 *         reader and a writer and bytes of its own, which must come back to
 *         it, the ends of each still one FIFO.
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

/* What each packet-mode end holds, as the reads that must come out of it. */
struct packets { const char *name; int rfd; int count; int lengths[8]; char bytes[8192]; };
static struct packets held[4];
static int nheld;

static void packet(struct packets *p, int wfd, const char *what, int n)
{
	char buf[4096];
	int at = 0;
	for (int i = 0; i < p->count; i++) at += abs(p->lengths[i]);
	for (int i = 0; i < n; i++) buf[i] = (char)(at + i * 13 + p->count);
	if (write(wfd, buf, n) != n) die(what);
	memcpy(p->bytes + at, buf, n);
}

/* A write that is a packet of its own, or (plain) bytes added to the last read. */
static void add(struct packets *p, int wfd, int n, int plain)
{
	packet(p, wfd, p->name, n);
	if (plain && p->count > 0 && p->lengths[p->count - 1] < 0) p->lengths[p->count - 1] -= n;
	else p->lengths[p->count++] = plain ? -n : n;
}

static void packets_setup(const char *dir)
{
	int p[2];
	char path[PATH_MAX];
	struct packets *h;

	if (pipe2(p, O_DIRECT) != 0) die("pipe2(O_DIRECT)");
	place(p[0], 10), place(p[1], 11);
	h = &held[nheld++], h->name = "pipe", h->rfd = 10;
	add(h, 11, 5, 0), add(h, 11, 1, 0), add(h, 11, 300, 0), add(h, 11, 4096, 0);

	if (pipe(p) != 0) die("pipe");
	place(p[0], 12), place(p[1], 13);
	h = &held[nheld++], h->name = "plain", h->rfd = 12;
	add(h, 13, 3, 1), add(h, 13, 4, 1);

	if (pipe2(p, O_DIRECT) != 0) die("pipe2(O_DIRECT)");
	place(p[0], 14), place(p[1], 15);
	h = &held[nheld++], h->name = "mixed", h->rfd = 14;
	add(h, 15, 2, 0);
	if (fcntl(15, F_SETFL, 0) != 0) die("F_SETFL mixed");
	add(h, 15, 5, 1), add(h, 15, 4, 1);
	if (fcntl(15, F_SETFL, O_DIRECT) != 0) die("F_SETFL mixed O_DIRECT");

	snprintf(path, sizeof(path), "%s/packets.fifo", dir);
	unlink(path);
	if (mkfifo(path, 0600) != 0) die("mkfifo");
	place(open(path, O_RDONLY | O_NONBLOCK), 16);
	place(open(path, O_WRONLY), 17);
	if (fcntl(17, F_SETFL, O_DIRECT) != 0) die("F_SETFL fifo O_DIRECT");
	h = &held[nheld++], h->name = "fifo", h->rfd = 16;
	add(h, 17, 3, 0), add(h, 17, 5, 0), add(h, 17, 5, 0);

	for (int fd = 10; fd <= 17; fd++) track("packets", fd);
}

static void packets_check(void)
{
	check_flags();
	for (int i = 0; i < nheld; i++) {
		struct packets *h = &held[i];
		char buf[65536];
		int at = 0;
		fcntl(h->rfd, F_SETFL, fcntl(h->rfd, F_GETFL) | O_NONBLOCK);
		for (int j = 0; j < h->count; j++) {
			int want = h->lengths[j] < 0 ? -h->lengths[j] : h->lengths[j];
			ssize_t n = read(h->rfd, buf, sizeof(buf));
			if (n != want) { fail("%s: read %d gave %zd bytes, want %d", h->name, j + 1, n, want); break; }
			if (memcmp(buf, h->bytes + at, want) != 0) { fail("%s: read %d gave other bytes", h->name, j + 1); break; }
			at += want;
		}
		if (unread(h->rfd) > 0) fail("%s: %d bytes left after the reads", h->name, unread(h->rfd));
	}
}

static void sameino_setup(const char *dir)
{
	char a[PATH_MAX], b[PATH_MAX];
	struct stat sa, sb;

	snprintf(a, sizeof(a), "%s/a/f", dir);
	snprintf(b, sizeof(b), "%s/b/f", dir);
	if (mkfifo(a, 0600) != 0 || mkfifo(b, 0600) != 0) die("mkfifo");
	if (stat(a, &sa) != 0 || stat(b, &sb) != 0) die("stat");
	if (sa.st_ino != sb.st_ino || sa.st_dev == sb.st_dev) {
		printf("setup: %s and %s are inodes %lu and %lu on devices %#lx and %#lx, want one inode number on two\n", a, b,
		       (unsigned long)sa.st_ino, (unsigned long)sb.st_ino, (unsigned long)sa.st_dev, (unsigned long)sb.st_dev);
		fflush(stdout);
		exit(2);
	}
	place(open(a, O_RDONLY | O_NONBLOCK), 10);
	place(open(a, O_WRONLY), 11);
	place(open(b, O_RDONLY | O_NONBLOCK), 12);
	place(open(b, O_WRONLY), 13);
	if (write(11, "first fifo", 10) != 10 || write(13, "the second fifo", 15) != 15) die("write");
	for (int fd = 10; fd <= 13; fd++) track("sameino", fd);
}

static void sameino_check(void)
{
	char buf[64];
	ssize_t n;

	check_flags();
	if ((n = read(10, buf, sizeof(buf))) != 10 || memcmp(buf, "first fifo", 10) != 0)
		fail("a: read %zd bytes: %.*s", n, n > 0 ? (int)n : 0, buf);
	if ((n = read(12, buf, sizeof(buf))) != 15 || memcmp(buf, "the second fifo", 15) != 0)
		fail("b: read %zd bytes: %.*s", n, n > 0 ? (int)n : 0, buf);
	if (write(11, "A", 1) != 1 || write(13, "B", 1) != 1) fail("write after restore: %s", strerror(errno));
	if (read(10, buf, sizeof(buf)) != 1 || buf[0] != 'A' || read(12, buf, sizeof(buf)) != 1 || buf[0] != 'B')
		fail("the ends of each FIFO are no longer one FIFO");
}

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: pipeends FOLDER flags|hangup|packets|sameino\n"); return 2; }
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

	static const struct { const char *name; void (*setup)(const char *); void (*check)(void); } variants[] = {
		{ "flags", flags_setup, flags_check }, { "hangup", hangup_setup, hangup_check },
		{ "packets", packets_setup, packets_check }, { "sameino", sameino_setup, sameino_check },
	};
	int v = 0;
	while (v < 4 && strcmp(argv[2], variants[v].name) != 0) v++;
	if (v == 4) { fprintf(stderr, "unknown variant %s\n", argv[2]); return 2; }
	variants[v].setup(argv[1]);

	ready_then_wait(&got_term);

	variants[v].check();

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
