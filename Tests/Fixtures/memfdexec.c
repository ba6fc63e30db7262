/*
 * memfdexec: a program held in a memfd and run from it.  /bin/echo is copied
 * into a memfd, which is reopened read-only (FD_EXEC) and its writable
 * descriptor closed, as programs do so the kernel allows executing it.
 * On SIGTERM, after restore: fexecve and execveat(AT_EMPTY_PATH) of FD_EXEC
 * still run it (no writable descriptor of the memfd is left open anywhere,
 * which would make exec fail with ETXTBSY), and it is still a memfd.
 *
 * argv[2] "writable": memfd_create's own read-write descriptor stays open
 * (FD_OWN) and the program is also run through it, as runc does: that
 * descriptor is no writer of the file for exec (it was not made by open()),
 * while any open() for writing would be. "mapped": that, plus a MAP_SHARED
 * writable mapping of FD_OWN and a MAP_PRIVATE one of FD_EXEC, as a program
 * that patches its payload in place; after restore a byte written through
 * the shared mapping must reach the file, the private one keep its copy.
 * (argv[1], the test's work folder, is not used.)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_EXEC 10
#define FD_OWN 11

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
extern char **environ;

/* Runs the memfd (by fexecve, or execveat when `at`) with one argument; its output, or "" */
static void run(int fd, int at, const char *word, char *out, size_t size)
{
	int p[2];
	out[0] = 0;
	if (pipe(p)) return;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		char *argv[] = { "echo", (char *)word, NULL };
		if (at) syscall(SYS_execveat, fd, "", argv, environ, AT_EMPTY_PATH);
		else fexecve(fd, argv, environ);
		printf("exec: %s\n", strerror(errno));
		fflush(stdout);
		_exit(127);
	}
	close(p[1]);
	ssize_t n = read(p[0], out, size - 1);
	out[n < 0 ? 0 : n] = 0;
	close(p[0]);
	waitpid(pid, NULL, 0);
}

int main(int argc, char **argv)
{
	int writable = argc > 2 && (strcmp(argv[2], "writable") == 0 || strcmp(argv[2], "mapped") == 0);
	int mapped = argc > 2 && strcmp(argv[2], "mapped") == 0;
	signal(SIGTERM, on_term);
	int rw = memfd_create("cryo-exec", MFD_CLOEXEC);
	int src = open("/bin/echo", O_RDONLY);
	if (rw < 0 || src < 0) die("memfd/open");
	char buf[65536];
	ssize_t n;
	while ((n = read(src, buf, sizeof buf)) > 0)
		if (write(rw, buf, n) != n) die("write");
	close(src);
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", rw);
	int ro = open(self, O_RDONLY | O_CLOEXEC);
	if (ro < 0 || dup3(ro, FD_EXEC, O_CLOEXEC) != FD_EXEC) die("reopen");
	close(ro);
	off_t end = lseek(rw, 0, SEEK_CUR);
	/* A page past the program, for the mappings: exec ignores what follows an ELF's segments. */
	off_t tail = (end + 8191) / 4096 * 4096;
	volatile char *shared = NULL, *private = NULL;
	if (writable) {
		if (dup3(rw, FD_OWN, O_CLOEXEC) != FD_OWN) die("dup3");
		if (mapped) {
			if (ftruncate(FD_OWN, tail + 4096)) die("ftruncate");
			shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, FD_OWN, tail);
			private = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, FD_EXEC, tail);
			if (shared == MAP_FAILED || private == MAP_FAILED) die("mmap");
			shared[0] = 's';
			private[1] = 'p';
		}
	}
	close(rw);
	char out[256];
	run(FD_EXEC, 0, "before", out, sizeof out);
	if (strcmp(out, "before\n") != 0) die("the memfd does not run before the dump");
	if (writable) {
		run(FD_OWN, 1, "before", out, sizeof out);
		if (strcmp(out, "before\n") != 0) die("the memfd does not run through its own descriptor before the dump");
	}

	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	run(FD_EXEC, 0, "fexecve", out, sizeof out);
	if (strcmp(out, "fexecve\n") != 0) fail("fexecve of the memfd after restore printed \"%s\"", out);
	run(FD_EXEC, 1, "execveat", out, sizeof out);
	if (strcmp(out, "execveat\n") != 0) fail("execveat of the memfd after restore printed \"%s\"", out);
	char link[256] = { 0 };
	snprintf(self, sizeof self, "/proc/self/fd/%d", FD_EXEC);
	if (readlink(self, link, sizeof link - 1) < 0 || strncmp(link, "/memfd:cryo-exec", 16) != 0) fail("fd %d is \"%s\", not the memfd", FD_EXEC, link);
	if ((fcntl(FD_EXEC, F_GETFL) & O_ACCMODE) != O_RDONLY || fcntl(FD_EXEC, F_GETFD) != FD_CLOEXEC) fail("the memfd's flags differ");
	if (writable) {
		run(FD_OWN, 1, "own", out, sizeof out);
		if (strcmp(out, "own\n") != 0) fail("execveat of the memfd's own read-write descriptor after restore printed \"%s\"", out);
		if ((fcntl(FD_OWN, F_GETFL) & O_ACCMODE) != O_RDWR || fcntl(FD_OWN, F_GETFD) != FD_CLOEXEC) fail("the read-write descriptor's flags differ");
		if (lseek(FD_OWN, 0, SEEK_CUR) != end) fail("the read-write descriptor is at %lld, was at %lld", (long long)lseek(FD_OWN, 0, SEEK_CUR), (long long)end);
		struct stat a, b;
		if (fstat(FD_OWN, &a) || fstat(FD_EXEC, &b) || a.st_ino != b.st_ino) fail("fds %d and %d are not one memfd any more", FD_OWN, FD_EXEC);
	}
	if (mapped) {
		char c = 0;
		if (shared[0] != 's' || private[1] != 'p') fail("the mappings lost their bytes");
		shared[2] = 'S';
		if (pread(FD_EXEC, &c, 1, tail + 2) != 1 || c != 'S') fail("a write to the shared mapping after restore did not reach the memfd");
		if (pread(FD_EXEC, &c, 1, tail + 1) != 1 || c != 0) fail("the private mapping's write reached the memfd");
		if (private[0] != 's') fail("the private mapping does not see the memfd's byte");
	}

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
