/*
 * files: regular files and devices held open across checkpoint/restore.
 *
 * argv[1] is a scratch directory (it becomes the cwd).  The fixture holds:
 *   FD_RW      rw.dat, O_RDWR, 10000 bytes, offset 4321, FD_CLOEXEC set
 *   FD_APPEND  append.log, O_WRONLY|O_APPEND, three lines written
 *   FD_GHOST   ghost.dat, O_RDWR, 8192 bytes, offset 3000, unlinked while open
 *   FD_DUP_A/B shared.dat, one open file description via dup(), offset 1234
 *   FD_SEP     shared.dat opened again separately (own offset 99), O_RDONLY
 *   FD_NULL    /dev/null, O_WRONLY
 *   FD_ZERO    /dev/zero, O_RDONLY|O_NONBLOCK
 *   100        high.dat via dup2(), offset 2222, O_RDWR
 * plus umask 027.  On SIGTERM every offset, content, flag and the sharing
 * relations are checked, and /proc/self/fd must list exactly these fds.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

#define RW_SIZE     10000
#define RW_OFF      4321
#define GHOST_SIZE  8192
#define GHOST_OFF   3000
#define SHARED_SIZE 5000
#define SHARED_OFF  1234
#define SEP_OFF     99
#define HIGH_FD     100
#define HIGH_SIZE   6000
#define HIGH_OFF    2222
#define UMASK       027



static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static unsigned char pat(unsigned salt, size_t i) { return (unsigned char)((i * 131 + salt * 7 + (i >> 8)) & 0xff); }

static void fill(int fd, unsigned salt, size_t n)
{
	unsigned char buf[16384];
	for (size_t i = 0; i < n; i++) buf[i] = pat(salt, i);
	if (write(fd, buf, n) != (ssize_t)n) die("write");
}

static off_t cur(int fd) { return lseek(fd, 0, SEEK_CUR); }

static void check_offset(const char *name, int fd, off_t want)
{
	off_t got = cur(fd);
	if (got != want)
		fail("%s (fd %d) offset %lld, want %lld%s%s", name, fd, (long long)got, (long long)want,
		     got < 0 ? ": " : "", got < 0 ? strerror(errno) : "");
}

static void check_content(const char *name, int fd, unsigned salt, size_t n)
{
	unsigned char buf[16384];
	ssize_t got = pread(fd, buf, sizeof(buf), 0);
	if (got != (ssize_t)n) {
		fail("%s (fd %d) pread returned %zd bytes, want %zu", name, fd, got, n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pat(salt, i)) { fail("%s (fd %d) byte %zu is %#x, want %#x", name, fd, i, buf[i], pat(salt, i)); return; }
}

static void check_flags(const char *name, int fd, int accmode, int want_status, int want_cloexec)
{
	int fl = fcntl(fd, F_GETFL);
	int fdfl = fcntl(fd, F_GETFD);
	if (fl < 0 || fdfl < 0) { fail("%s: fd %d is not open", name, fd); return; }
	if ((fl & O_ACCMODE) != accmode)
		fail("%s (fd %d) access mode %#x, want %#x", name, fd, fl & O_ACCMODE, accmode);
	int mask = O_APPEND | O_NONBLOCK | O_SYNC | O_DSYNC | O_NOATIME | O_DIRECT;
	if ((fl & mask) != want_status)
		fail("%s (fd %d) status flags %#x, want %#x", name, fd, fl & mask, want_status);
	if (!!(fdfl & FD_CLOEXEC) != want_cloexec)
		fail("%s (fd %d) FD_CLOEXEC is %s", name, fd, want_cloexec ? "missing" : "set");
}

static int open_at(const char *path, int flags, int want_fd)
{
	int fd = open(path, flags, 0644);
	if (fd < 0) die(path);
	if (fd != want_fd) {
		if (dup2(fd, want_fd) != want_fd) die("dup2");
		close(fd);
	}
	return want_fd;
}

enum { FD_RW = 3, FD_APPEND, FD_GHOST, FD_DUP_A, FD_DUP_B, FD_SEP, FD_NULL, FD_ZERO };

int main(int argc, char **argv)
{
	if (argc < 2) { fprintf(stderr, "usage: files DIR\n"); return 2; }
	char dir[PATH_MAX];
	if (!realpath(argv[1], dir)) die(argv[1]);
	if (chdir(dir) != 0) die("chdir");
	umask(UMASK);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");

	/* make sure fd numbers from 3 upward are ours */
	for (int fd = 3; fd < 1024; fd++)
		if (fd != HIGH_FD) close(fd);

	/* rw.dat: O_RDWR, offset in the middle, close-on-exec */
	open_at("rw.dat", O_RDWR | O_CREAT | O_TRUNC, FD_RW);
	fill(FD_RW, 1, RW_SIZE);
	if (lseek(FD_RW, RW_OFF, SEEK_SET) != RW_OFF) die("lseek rw");
	if (fcntl(FD_RW, F_SETFD, FD_CLOEXEC) != 0) die("F_SETFD");

	/* append.log */
	open_at("append.log", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, FD_APPEND);
	const char *lines = "first line\nsecond line\nthird line\n";
	if (write(FD_APPEND, lines, strlen(lines)) != (ssize_t)strlen(lines)) die("write append");
	/* a stray lseek must not matter for O_APPEND writes */
	if (lseek(FD_APPEND, 5, SEEK_SET) != 5) die("lseek append");

	/* ghost.dat: written, positioned, then unlinked */
	open_at("ghost.dat", O_RDWR | O_CREAT | O_TRUNC, FD_GHOST);
	fill(FD_GHOST, 2, GHOST_SIZE);
	if (lseek(FD_GHOST, GHOST_OFF, SEEK_SET) != GHOST_OFF) die("lseek ghost");
	if (unlink("ghost.dat") != 0) die("unlink");

	/* shared.dat: a dup()ed pair plus an independent open */
	open_at("shared.dat", O_RDWR | O_CREAT | O_TRUNC, FD_DUP_A);
	fill(FD_DUP_A, 3, SHARED_SIZE);
	if (lseek(FD_DUP_A, SHARED_OFF, SEEK_SET) != SHARED_OFF) die("lseek shared");
	if (dup(FD_DUP_A) != FD_DUP_B) die("dup");
	open_at("shared.dat", O_RDONLY, FD_SEP);
	if (lseek(FD_SEP, SEP_OFF, SEEK_SET) != SEP_OFF) die("lseek sep");

	/* devices */
	open_at("/dev/null", O_WRONLY, FD_NULL);
	open_at("/dev/zero", O_RDONLY, FD_ZERO);
	if (fcntl(FD_ZERO, F_SETFL, O_NONBLOCK) != 0) die("F_SETFL");

	/* a file at a high descriptor number, placed with dup2 */
	int tmp = open("high.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (tmp < 0) die("high.dat");
	fill(tmp, 4, HIGH_SIZE);
	if (lseek(tmp, HIGH_OFF, SEEK_SET) != HIGH_OFF) die("lseek high");
	if (dup2(tmp, HIGH_FD) != HIGH_FD) die("dup2 high");
	close(tmp);

	struct stat st_ghost, st_shared;
	if (fstat(FD_GHOST, &st_ghost) != 0 || fstat(FD_DUP_A, &st_shared) != 0) die("fstat");

	printf("READY\n");
	fflush(stdout);

	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	while (!got_term)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);

	/* --- checks --- */
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		fail("getcwd: %s", strerror(errno));
	else if (strcmp(cwd, dir) != 0)
		fail("cwd is %s, want %s", cwd, dir);
	mode_t um = umask(UMASK);
	if (um != UMASK)
		fail("umask %03o, want %03o", (unsigned)um, UMASK);

	/* exactly the expected descriptors are open */
	int want_fds[] = { 0, 1, 2, FD_RW, FD_APPEND, FD_GHOST, FD_DUP_A, FD_DUP_B, FD_SEP, FD_NULL, FD_ZERO, HIGH_FD };
	int nwant = (int)(sizeof(want_fds) / sizeof(want_fds[0]));
	DIR *d = opendir("/proc/self/fd");
	if (!d) fail("opendir /proc/self/fd: %s", strerror(errno));
	else {
		int seen = 0;
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.') continue;
			int fd = atoi(e->d_name);
			if (fd == dirfd(d)) continue;
			int known = 0;
			for (int i = 0; i < nwant; i++) if (want_fds[i] == fd) known = 1;
			if (known) seen++;
			else {
				char link[PATH_MAX] = "", p[64];
				snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
				ssize_t n = readlink(p, link, sizeof(link) - 1);
				if (n > 0) link[n] = 0;
				fail("unexpected fd %d open (%s)", fd, link);
			}
		}
		closedir(d);
		if (seen != nwant) fail("only %d of the %d expected fds are open", seen, nwant);
	}

	/* stdio: stdin /dev/null, stdout/stderr one append-mode description */
	check_flags("stdout", 1, O_WRONLY, O_APPEND, 0);

	/* rw.dat */
	check_flags("rw.dat", FD_RW, O_RDWR, 0, 1);
	check_offset("rw.dat", FD_RW, RW_OFF);
	check_content("rw.dat", FD_RW, 1, RW_SIZE);
	unsigned char rb[16];
	if (read(FD_RW, rb, sizeof(rb)) != (ssize_t)sizeof(rb))
		fail("rw.dat read at offset failed");
	else
		for (size_t i = 0; i < sizeof(rb); i++)
			if (rb[i] != pat(1, RW_OFF + i)) { fail("rw.dat read() at offset returned wrong data"); break; }
	if (write(FD_RW, "XYZ", 3) != 3) fail("rw.dat write failed: %s", strerror(errno));
	check_offset("rw.dat after read+write", FD_RW, RW_OFF + 16 + 3);
	if (pread(FD_RW, rb, 3, RW_OFF + 16) != 3 || memcmp(rb, "XYZ", 3) != 0)
		fail("rw.dat write did not land at the current offset");

	/* append.log */
	check_flags("append.log", FD_APPEND, O_WRONLY, O_APPEND, 0);
	check_offset("append.log", FD_APPEND, 5);
	struct stat st;
	off_t alen = (off_t)strlen(lines);
	if (stat("append.log", &st) != 0 || st.st_size != alen)
		fail("append.log size %lld, want %lld", (long long)st.st_size, (long long)alen);
	if (lseek(FD_APPEND, 0, SEEK_SET) != 0) fail("lseek append.log");
	if (write(FD_APPEND, "tail\n", 5) != 5) fail("append.log write: %s", strerror(errno));
	check_offset("append.log after append", FD_APPEND, alen + 5);
	int rd = open("append.log", O_RDONLY);
	char abuf[128] = "";
	if (rd < 0 || pread(rd, abuf, sizeof(abuf) - 1, 0) != alen + 5 ||
	    memcmp(abuf, lines, (size_t)alen) != 0 || memcmp(abuf + alen, "tail\n", 5) != 0)
		fail("append.log contents wrong after appending: \"%.60s\"", abuf);
	if (rd >= 0) close(rd);

	/* ghost.dat: still unlinked, same data and offset */
	check_flags("ghost.dat", FD_GHOST, O_RDWR, 0, 0);
	if (fstat(FD_GHOST, &st) != 0) fail("fstat ghost.dat: %s", strerror(errno));
	else {
		if (st.st_nlink != 0) fail("unlinked ghost.dat has st_nlink %lu", (unsigned long)st.st_nlink);
		if (st.st_size != GHOST_SIZE) fail("ghost.dat size %lld, want %d", (long long)st.st_size, GHOST_SIZE);
		if ((st.st_mode & 07777) != (st_ghost.st_mode & 07777))
			fail("ghost.dat mode %04o, want %04o", st.st_mode & 07777, st_ghost.st_mode & 07777);
	}
	check_offset("ghost.dat", FD_GHOST, GHOST_OFF);
	check_content("ghost.dat", FD_GHOST, 2, GHOST_SIZE);
	if (access("ghost.dat", F_OK) == 0 || errno != ENOENT)
		fail("ghost.dat reappeared in %s", dir);
	{
		/* nothing else should have appeared in the directory either */
		DIR *dd = opendir(".");
		struct dirent *e;
		while (dd && (e = readdir(dd))) {
			const char *n = e->d_name;
			if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "rw.dat") || !strcmp(n, "append.log") ||
			    !strcmp(n, "shared.dat") || !strcmp(n, "high.dat"))
				continue;
			fail("unexpected file %s in %s", n, dir);
		}
		if (dd) closedir(dd);
	}

	/* shared.dat: dup pair shares an offset, separate open does not */
	check_flags("shared.dat dup A", FD_DUP_A, O_RDWR, 0, 0);
	check_flags("shared.dat dup B", FD_DUP_B, O_RDWR, 0, 0);
	check_flags("shared.dat separate", FD_SEP, O_RDONLY, 0, 0);
	check_offset("shared.dat dup A", FD_DUP_A, SHARED_OFF);
	check_offset("shared.dat dup B", FD_DUP_B, SHARED_OFF);
	check_offset("shared.dat separate", FD_SEP, SEP_OFF);
	check_content("shared.dat", FD_SEP, 3, SHARED_SIZE);
	if (fstat(FD_DUP_A, &st) == 0 && st.st_ino != st_shared.st_ino)
		fail("shared.dat inode changed");
	if (lseek(FD_DUP_A, 777, SEEK_SET) != 777) fail("lseek dup A");
	check_offset("dup B after seeking dup A", FD_DUP_B, 777);
	check_offset("separate fd after seeking dup A", FD_SEP, SEP_OFF);
	if (lseek(FD_DUP_B, 4000, SEEK_SET) != 4000) fail("lseek dup B");
	check_offset("dup A after seeking dup B", FD_DUP_A, 4000);
	if (lseek(FD_SEP, 10, SEEK_SET) != 10) fail("lseek separate");
	check_offset("dup A after seeking separate fd", FD_DUP_A, 4000);
	int fl_a = fcntl(FD_DUP_A, F_GETFL);
	if (fcntl(FD_DUP_B, F_SETFL, fl_a | O_NONBLOCK) == 0) {
		if (!(fcntl(FD_DUP_A, F_GETFL) & O_NONBLOCK))
			fail("dup pair does not share status flags");
		fcntl(FD_DUP_B, F_SETFL, fl_a);
	}

	/* devices */
	struct stat sn, sz;
	if (fstat(FD_NULL, &sn) != 0 || !S_ISCHR(sn.st_mode) || major(sn.st_rdev) != 1 || minor(sn.st_rdev) != 3)
		fail("fd %d is not /dev/null", FD_NULL);
	if (fstat(FD_ZERO, &sz) != 0 || !S_ISCHR(sz.st_mode) || major(sz.st_rdev) != 1 || minor(sz.st_rdev) != 5)
		fail("fd %d is not /dev/zero", FD_ZERO);
	check_flags("/dev/null", FD_NULL, O_WRONLY, 0, 0);
	check_flags("/dev/zero", FD_ZERO, O_RDONLY, O_NONBLOCK, 0);
	if (write(FD_NULL, "discard", 7) != 7) fail("write to /dev/null failed");
	unsigned char zb[64];
	memset(zb, 0xff, sizeof(zb));
	if (read(FD_ZERO, zb, sizeof(zb)) != (ssize_t)sizeof(zb)) fail("read from /dev/zero failed");
	for (size_t i = 0; i < sizeof(zb); i++) if (zb[i]) { fail("/dev/zero gave non-zero data"); break; }

	/* fd 100 */
	check_flags("high.dat", HIGH_FD, O_RDWR, 0, 0);
	check_offset("high.dat", HIGH_FD, HIGH_OFF);
	check_content("high.dat", HIGH_FD, 4, HIGH_SIZE);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
