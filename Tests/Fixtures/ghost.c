/*
 * ghost: files whose name was removed while they were open.
 *
 * argv[1] is a scratch directory (it becomes the cwd).  The fixture holds:
 *   FD_SPARSE  sparse.dat, O_RDWR, 1 GiB + 123 bytes, data in three runs
 *              (page 0, 8 KiB at 256 MiB, the last 123 bytes), the rest holes;
 *              owner 1234:5678, mode 0640, set times; offset 777; unlinked
 *   FD_SPARSE2 sparse.dat opened again (own description, O_RDONLY): the same file
 *   FD_WO      wo.dat, O_WRONLY, 5000 bytes, offset 4999, unlinked
 *   FD_PATH    path.dat, O_PATH, 3000 bytes, unlinked
 *   FD_LINKED  linked.dat, O_RDWR, hard link other.dat kept, linked.dat unlinked:
 *              after restore it must be other.dat's inode again (no copy)
 *   FD_TMP     an O_TMPFILE file (never named), O_RDWR, 3333 bytes, offset 10:
 *              its description keeps O_TMPFILE (which holds O_DIRECTORY)
 *   FD_TMPNAMED an O_TMPFILE file given the name tmpnamed.dat with linkat
 *   FD_NOFOLLOW nofollow.dat opened O_RDWR|O_NOFOLLOW (as mkstemp does), 700 bytes, unlinked
 * It prints SPARSE with the data runs (offset+length,...) for the test to see.
 * On SIGTERM it compares size, SEEK_DATA/SEEK_HOLE runs, owner, mode, times,
 * offsets, flags and contents with what it recorded, and prints PASS/FAIL.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fixture.h"

#define FD_SPARSE 10
#define FD_SPARSE2 11
#define FD_WO 12
#define FD_PATH 13
#define FD_LINKED 14
#define FD_TMP 15
#define FD_TMPNAMED 16
#define FD_NOFOLLOW 17
#define SPARSE_SIZE ((1LL << 30) + 123)
#define MID (256LL << 20)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static unsigned char pat(unsigned salt, long long i) { return (unsigned char)((i * 131 + salt * 7 + (i >> 8)) & 0xff); }

static void put(int fd, unsigned salt, long long at, size_t n)
{
	unsigned char buf[8192];
	for (size_t i = 0; i < n; i++) buf[i] = pat(salt, at + (long long)i);
	if (pwrite(fd, buf, n, at) != (ssize_t)n) die("pwrite");
}

static int same(int fd, unsigned salt, long long at, size_t n)
{
	unsigned char buf[8192];
	if (pread(fd, buf, n, at) != (ssize_t)n) return 0;
	for (size_t i = 0; i < n; i++) if (buf[i] != pat(salt, at + (long long)i)) return 0;
	return 1;
}

static int make(const char *name, int flags, unsigned salt, size_t n)
{
	int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) die(name);
	if (n) put(fd, salt, 0, n);
	close(fd);
	fd = open(name, flags);
	if (fd < 0) die(name);
	return fd;
}

static void place(int fd, int at)
{
	if (dup2(fd, at) != at) die("dup2");
	close(fd);
}

/* The data runs as "off+len,..." */
static void runs(int fd, long long size, char *out, size_t cap)
{
	out[0] = 0;
	off_t keep = lseek(fd, 0, SEEK_CUR);  /* SEEK_DATA/SEEK_HOLE move the offset */
	long long at = 0;
	while (at < size) {
		off_t d = lseek(fd, at, SEEK_DATA);
		if (d < 0) break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		if (h < 0 || h > size) h = size;
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s%lld+%lld", len ? "," : "", (long long)d, (long long)(h - d));
		at = h;
	}
	lseek(fd, keep, SEEK_SET);
}

static const struct timespec atime = { 1000000000, 123456789 }, mtime = { 1200000000, 987654321 };

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) != 0) die("chdir");
	signal(SIGTERM, on_term);

	place(make("sparse.dat", O_RDWR, 1, 4096), FD_SPARSE);
	if (ftruncate(FD_SPARSE, SPARSE_SIZE) != 0) die("ftruncate");
	put(FD_SPARSE, 2, MID, 8192);
	put(FD_SPARSE, 3, SPARSE_SIZE - 123, 123);
	if (fchown(FD_SPARSE, 1234, 5678) != 0 || fchmod(FD_SPARSE, 0640) != 0) die("fchown/fchmod");
	struct timespec times[2] = { atime, mtime };
	if (futimens(FD_SPARSE, times) != 0) die("futimens");
	lseek(FD_SPARSE, 777, SEEK_SET);
	place(open("sparse.dat", O_RDONLY), FD_SPARSE2);
	place(make("wo.dat", O_WRONLY, 4, 5000), FD_WO);
	lseek(FD_WO, 4999, SEEK_SET);
	place(make("path.dat", O_PATH, 5, 3000), FD_PATH);
	place(make("linked.dat", O_RDWR, 6, 2000), FD_LINKED);
	if (link("linked.dat", "other.dat") != 0) die("link");
	place(open(".", O_TMPFILE | O_RDWR, 0600), FD_TMP);
	put(FD_TMP, 8, 0, 3333);
	lseek(FD_TMP, 10, SEEK_SET);
	place(open(".", O_TMPFILE | O_RDWR, 0600), FD_TMPNAMED);
	put(FD_TMPNAMED, 9, 0, 1111);
	char tmpname[64];
	snprintf(tmpname, sizeof tmpname, "/proc/self/fd/%d", FD_TMPNAMED);
	if (linkat(AT_FDCWD, tmpname, AT_FDCWD, "tmpnamed.dat", AT_SYMLINK_FOLLOW) != 0) die("linkat");
	place(make("nofollow.dat", O_RDWR | O_NOFOLLOW, 11, 700), FD_NOFOLLOW);
	if (unlink("nofollow.dat")) die("unlink nofollow.dat");
	if (unlink("sparse.dat") || unlink("wo.dat") || unlink("path.dat") || unlink("linked.dat")) die("unlink");

	struct stat before, linked_before;
	if (fstat(FD_SPARSE, &before) != 0 || fstat(FD_LINKED, &linked_before) != 0) die("fstat");
	char want_runs[512], got_runs[512];
	runs(FD_SPARSE, SPARSE_SIZE, want_runs, sizeof want_runs);
	printf("SPARSE %s\n", want_runs);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	struct stat st;
	if (fstat(FD_SPARSE, &st) != 0) fail("fstat sparse: %s", strerror(errno));
	else {
		if (st.st_size != SPARSE_SIZE) fail("sparse size %lld, want %lld", (long long)st.st_size, SPARSE_SIZE);
		if (st.st_nlink != 0) fail("sparse has %lu links, want 0", (unsigned long)st.st_nlink);
		if (st.st_uid != 1234 || st.st_gid != 5678) fail("sparse owner %u:%u, want 1234:5678", st.st_uid, st.st_gid);
		if ((st.st_mode & 07777) != 0640) fail("sparse mode %o, want 640", st.st_mode & 07777);
		if (st.st_atim.tv_sec != atime.tv_sec || st.st_atim.tv_nsec != atime.tv_nsec)
			fail("sparse atime %lld.%09ld, want %lld.%09ld", (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
			     (long long)atime.tv_sec, atime.tv_nsec);
		if (st.st_mtim.tv_sec != mtime.tv_sec || st.st_mtim.tv_nsec != mtime.tv_nsec)
			fail("sparse mtime %lld.%09ld, want %lld.%09ld", (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
			     (long long)mtime.tv_sec, mtime.tv_nsec);
		if ((long long)st.st_blocks * 512 > (4LL << 20))
			fail("sparse uses %lld bytes on disk: its holes were filled", (long long)st.st_blocks * 512);
	}
	runs(FD_SPARSE, SPARSE_SIZE, got_runs, sizeof got_runs);
	if (strcmp(got_runs, want_runs) != 0) fail("sparse data runs %s, want %s", got_runs, want_runs);
	if (lseek(FD_SPARSE, 0, SEEK_CUR) != 777) fail("sparse offset %lld, want 777", (long long)lseek(FD_SPARSE, 0, SEEK_CUR));
	if (!same(FD_SPARSE, 1, 0, 4096) || !same(FD_SPARSE, 2, MID, 8192) || !same(FD_SPARSE, 3, SPARSE_SIZE - 123, 123))
		fail("sparse data differs");
	unsigned char z[4096], zero[4096] = { 0 };
	if (pread(FD_SPARSE, z, sizeof z, MID - 4096) != (ssize_t)sizeof z || memcmp(z, zero, sizeof z) != 0) fail("sparse hole not zero");
	char link_text[PATH_MAX] = { 0 }, self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", FD_SPARSE);
	if (readlink(self, link_text, sizeof link_text - 1) < 0 || !strstr(link_text, "/sparse.dat (deleted)"))
		fail("sparse fd links to \"%s\", want .../sparse.dat (deleted)", link_text);

	struct stat st2;
	if (fstat(FD_SPARSE2, &st2) != 0 || st2.st_ino != st.st_ino || st2.st_dev != st.st_dev) fail("the second description of sparse.dat is another file");
	if ((fcntl(FD_SPARSE2, F_GETFL) & O_ACCMODE) != O_RDONLY) fail("second sparse description is not O_RDONLY");
	put(FD_SPARSE, 7, 100, 50);
	if (!same(FD_SPARSE2, 7, 100, 50)) fail("a write to sparse.dat is not seen through its second description");

	if ((fcntl(FD_WO, F_GETFL) & O_ACCMODE) != O_WRONLY) fail("wo.dat is not O_WRONLY");
	if (lseek(FD_WO, 0, SEEK_CUR) != 4999) fail("wo.dat offset %lld", (long long)lseek(FD_WO, 0, SEEK_CUR));
	char buf[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", FD_WO);
	int r = open(self, O_RDONLY);
	if (r < 0 || !same(r, 4, 0, 5000) || fstat(r, &st) != 0 || st.st_size != 5000) fail("wo.dat contents or size differ");
	if (r >= 0) close(r);
	if (pread(FD_WO, buf, 1, 0) != -1 || errno != EBADF) fail("wo.dat can be read: its access mode is wrong");

	int fl = fcntl(FD_PATH, F_GETFL);
	if (fl < 0 || !(fl & O_PATH)) fail("path.dat is not O_PATH (flags %#x)", fl);
	if (fstat(FD_PATH, &st) != 0 || st.st_size != 3000 || st.st_nlink != 0) fail("path.dat size or links differ");
	snprintf(self, sizeof self, "/proc/self/fd/%d", FD_PATH);
	r = open(self, O_RDONLY);
	if (r < 0 || !same(r, 5, 0, 3000)) fail("path.dat contents differ");
	if (r >= 0) close(r);

	struct stat other;
	if (fstat(FD_LINKED, &st) != 0 || stat("other.dat", &other) != 0) fail("fstat linked/other: %s", strerror(errno));
	else {
		if (st.st_ino != other.st_ino || st.st_dev != other.st_dev)
			fail("linked.dat is inode %lu, other.dat %lu: it was copied, not reopened", (unsigned long)st.st_ino, (unsigned long)other.st_ino);
		if (st.st_ino != linked_before.st_ino) fail("linked.dat is another inode than before");
		if (!same(FD_LINKED, 6, 0, 2000)) fail("linked.dat contents differ");
	}

	if ((fcntl(FD_TMP, F_GETFL) & O_ACCMODE) != O_RDWR) fail("the O_TMPFILE file is not O_RDWR");
	if (lseek(FD_TMP, 0, SEEK_CUR) != 10) fail("O_TMPFILE offset %lld, want 10", (long long)lseek(FD_TMP, 0, SEEK_CUR));
	if (fstat(FD_TMP, &st) != 0 || st.st_size != 3333 || st.st_nlink != 0 || !same(FD_TMP, 8, 0, 3333))
		fail("the O_TMPFILE file's size, links or contents differ");
	put(FD_TMP, 10, 3333, 100);
	if (fstat(FD_TMPNAMED, &st) != 0 || stat("tmpnamed.dat", &other) != 0 || st.st_ino != other.st_ino || !same(FD_TMPNAMED, 9, 0, 1111))
		fail("the O_TMPFILE file named by linkat is not tmpnamed.dat or its contents differ");
	fl = fcntl(FD_NOFOLLOW, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) != O_RDWR || fstat(FD_NOFOLLOW, &st) != 0 || st.st_size != 700 || !same(FD_NOFOLLOW, 11, 0, 700))
		fail("the O_NOFOLLOW ghost's mode, size or contents differ (flags %#x)", fl);

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
