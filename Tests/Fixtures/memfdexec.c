/*
 * memfdexec: a program held in a memfd and run from it.  /bin/echo is copied
 * into a memfd, which is reopened read-only (FD_EXEC) and its writable
 * descriptor closed, as programs do so the kernel allows executing it.
 * On SIGTERM, after restore: fexecve and execveat(AT_EMPTY_PATH) of FD_EXEC
 * still run it (no writable descriptor of the memfd is left open anywhere,
 * which would make exec fail with ETXTBSY), and it is still a memfd.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define FD_EXEC 10

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
extern char **environ;

/* Runs the memfd (by fexecve, or execveat when `at`) with one argument; its output, or "" */
static void run(int at, const char *word, char *out, size_t size)
{
	int p[2];
	out[0] = 0;
	if (pipe(p)) return;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		char *argv[] = { "echo", (char *)word, NULL };
		if (at) syscall(SYS_execveat, FD_EXEC, "", argv, environ, AT_EMPTY_PATH);
		else fexecve(FD_EXEC, argv, environ);
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

int main(void)
{
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
	close(rw);
	char out[256];
	run(0, "before", out, sizeof out);
	if (strcmp(out, "before\n") != 0) die("the memfd does not run before the dump");

	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();

	run(0, "fexecve", out, sizeof out);
	if (strcmp(out, "fexecve\n") != 0) fail("fexecve of the memfd after restore printed \"%s\"", out);
	run(1, "execveat", out, sizeof out);
	if (strcmp(out, "execveat\n") != 0) fail("execveat of the memfd after restore printed \"%s\"", out);
	char link[256] = { 0 };
	snprintf(self, sizeof self, "/proc/self/fd/%d", FD_EXEC);
	if (readlink(self, link, sizeof link - 1) < 0 || strncmp(link, "/memfd:cryo-exec", 16) != 0) fail("fd %d is \"%s\", not the memfd", FD_EXEC, link);
	if ((fcntl(FD_EXEC, F_GETFL) & O_ACCMODE) != O_RDONLY || fcntl(FD_EXEC, F_GETFD) != FD_CLOEXEC) fail("the memfd's flags differ");

	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
