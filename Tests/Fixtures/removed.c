/*
 * removed: a directory, a cwd, a FIFO and a symlink whose names were removed
 * while they were open, and a symlink opened O_PATH|O_NOFOLLOW.
 *
 * argv[1] is a scratch directory.  The fixture holds:
 *   FD_DIR    gone/, O_RDONLY|O_DIRECTORY, mode 0751, owner 4321:8765, set times; rmdir'ed
 *   FD_DIR2   gone/ again, O_PATH: the same directory
 *   cwd       cwdgone/, mode 0705, rmdir'ed while it is the cwd
 *   FD_FIFO_RW/W/R  pipe.fifo (mode 0640): O_RDWR|O_NONBLOCK, O_WRONLY, O_RDONLY|O_NONBLOCK,
 *             17 bytes buffered, unlinked
 *   FD_LINK   link1 -> target-file, O_PATH|O_NOFOLLOW
 *   FD_LINK2  link2 -> somewhere/else, O_PATH|O_NOFOLLOW, unlinked
 * On SIGTERM each is checked (fstat, /proc/self/fd names, bytes, sharing).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fixture.h"

#define FD_DIR 10
#define FD_DIR2 11
#define FD_FIFO_RW 12
#define FD_FIFO_W 13
#define FD_FIFO_R 14
#define FD_LINK 15
#define FD_LINK2 16
#define BUFFERED "hello fifo bytes!"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static void place(int fd, int at) { if (fd < 0) die("open"); if (dup2(fd, at) != at) die("dup2"); close(fd); }
static const struct timespec atime = { 1100000000, 111 }, mtime = { 1300000000, 222333 };

static void link_name(int fd, char *out, size_t size)
{
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(self, out, size - 1);
	out[n < 0 ? 0 : n] = 0;
}

static int ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);
	return a >= b && strcmp(s + a - b, tail) == 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) != 0) die("chdir");
	signal(SIGTERM, on_term);
	umask(0);

	if (mkdir("gone", 0700) != 0) die("mkdir gone");
	place(open("gone", O_RDONLY | O_DIRECTORY), FD_DIR);
	place(open("gone", O_PATH), FD_DIR2);
	if (fchmod(FD_DIR, 0751) || fchown(FD_DIR, 4321, 8765)) die("fchmod/fchown gone");
	if (rmdir("gone") != 0) die("rmdir gone");
	struct timespec times[2] = { atime, mtime };
	if (futimens(FD_DIR, times) != 0) die("futimens gone");

	if (mkfifo("pipe.fifo", 0640) != 0) die("mkfifo");
	place(open("pipe.fifo", O_RDWR | O_NONBLOCK), FD_FIFO_RW);
	place(open("pipe.fifo", O_WRONLY), FD_FIFO_W);
	place(open("pipe.fifo", O_RDONLY | O_NONBLOCK), FD_FIFO_R);
	if (write(FD_FIFO_W, BUFFERED, strlen(BUFFERED)) != (ssize_t)strlen(BUFFERED)) die("write fifo");
	if (unlink("pipe.fifo") != 0) die("unlink fifo");

	if (symlink("target-file", "link1") || symlink("somewhere/else", "link2")) die("symlink");
	place(open("link1", O_PATH | O_NOFOLLOW), FD_LINK);
	place(open("link2", O_PATH | O_NOFOLLOW), FD_LINK2);
	if (unlink("link2") != 0) die("unlink link2");

	if (mkdir("cwdgone", 0705) != 0 || chdir("cwdgone") != 0) die("cwdgone");
	char work[PATH_MAX];
	snprintf(work, sizeof work, "%s", argv[1]);
	if (rmdir("../cwdgone") != 0) die("rmdir cwdgone");

	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	char name[PATH_MAX];
	struct stat st, st2;
	if (fstat(FD_DIR, &st) != 0) fail("fstat gone: %s", strerror(errno));
	else {
		if (!S_ISDIR(st.st_mode) || st.st_nlink != 0) fail("gone: mode %o, %lu links; want a removed directory", st.st_mode, (unsigned long)st.st_nlink);
		if ((st.st_mode & 07777) != 0751) fail("gone mode %o, want 751", st.st_mode & 07777);
		if (st.st_uid != 4321 || st.st_gid != 8765) fail("gone owner %u:%u, want 4321:8765", st.st_uid, st.st_gid);
		if (st.st_atim.tv_sec != atime.tv_sec || st.st_atim.tv_nsec != atime.tv_nsec || st.st_mtim.tv_sec != mtime.tv_sec ||
		    st.st_mtim.tv_nsec != mtime.tv_nsec)
			fail("gone times %lld.%ld/%lld.%ld differ", (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec,
			     st.st_mtim.tv_nsec);
		if (fstat(FD_DIR2, &st2) != 0 || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev) fail("the O_PATH gone/ is another directory");
	}
	if (!(fcntl(FD_DIR2, F_GETFL) & O_PATH)) fail("gone/ (fd %d) is not O_PATH", FD_DIR2);
	link_name(FD_DIR, name, sizeof name);
	if (!ends_with(name, "/gone (deleted)")) fail("gone links to \"%s\"", name);
	if (openat(FD_DIR, "x", O_CREAT | O_RDWR, 0600) >= 0 || errno != ENOENT) fail("a file could be made in removed gone/");

	if (stat(".", &st) != 0) fail("stat cwd: %s", strerror(errno));
	else if (!S_ISDIR(st.st_mode) || st.st_nlink != 0 || (st.st_mode & 07777) != 0705)
		fail("cwd: mode %o, %lu links; want removed 0705", st.st_mode, (unsigned long)st.st_nlink);
	ssize_t n = readlink("/proc/self/cwd", name, sizeof name - 1);
	name[n < 0 ? 0 : n] = 0;
	char want[PATH_MAX + 32];
	snprintf(want, sizeof want, "%s/cwdgone (deleted)", work);
	if (strcmp(name, want) != 0) fail("cwd is \"%s\", want \"%s\"", name, want);

	if (fstat(FD_FIFO_RW, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_nlink != 0 || (st.st_mode & 07777) != 0640)
		fail("pipe.fifo is not a removed FIFO of mode 640");
	link_name(FD_FIFO_R, name, sizeof name);
	if (!ends_with(name, "/pipe.fifo (deleted)")) fail("fifo links to \"%s\"", name);
	if ((fcntl(FD_FIFO_W, F_GETFL) & O_ACCMODE) != O_WRONLY || (fcntl(FD_FIFO_R, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != (O_RDONLY | O_NONBLOCK))
		fail("fifo ends' flags differ");
	char buf[64] = { 0 };
	n = read(FD_FIFO_R, buf, sizeof buf - 1);
	if (n != (ssize_t)strlen(BUFFERED) || strcmp(buf, BUFFERED) != 0) fail("fifo held \"%s\" (%zd bytes), want \"%s\"", buf, n, BUFFERED);
	if (write(FD_FIFO_W, "again", 5) != 5 || read(FD_FIFO_RW, buf, sizeof buf) != 5 || memcmp(buf, "again", 5) != 0)
		fail("the fifo's ends are not one pipe");

	char target[256] = { 0 };
	if (readlinkat(FD_LINK, "", target, sizeof target - 1) < 0 || strcmp(target, "target-file") != 0) fail("link1 says \"%s\"", target);
	if (fstat(FD_LINK, &st) != 0 || !S_ISLNK(st.st_mode)) fail("link1 fd is not the symlink itself");
	memset(target, 0, sizeof target);
	if (readlinkat(FD_LINK2, "", target, sizeof target - 1) < 0 || strcmp(target, "somewhere/else") != 0) fail("link2 says \"%s\"", target);
	if (fstat(FD_LINK2, &st) != 0 || !S_ISLNK(st.st_mode) || st.st_nlink != 0) fail("link2 fd is not the unlinked symlink");
	link_name(FD_LINK2, name, sizeof name);
	if (!ends_with(name, "/link2 (deleted)")) fail("link2 links to \"%s\"", name);

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
