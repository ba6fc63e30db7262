/*
 * sharing: processes that share a descriptor table or fs context without
 * being threads, by mode (argv[1]):
 *   files     a child cloned with CLONE_FILES; a grandchild cloned by it with
 *             CLONE_FILES too (all three share one table)
 *   fs        a child cloned with CLONE_FS, in directory argv[2], umask 027
 *   siblings  a child that cloned a sibling with CLONE_PARENT|CLONE_FILES|
 *             CLONE_FS: the two share one table and fs context, the root
 *             neither
 *   apart     a child cloned with CLONE_FILES and a grandchild cloned by it
 *             with CLONE_FILES, after which the child unshared its table:
 *             root and grandchild share one table, neither the other's
 *             parent nor siblings; cryo refuses these
 *   vfork     a vfork child that waits (its parent blocked in vfork) until
 *             SIGTERM: cryo refuses it
 * Prints "PIDS root child...", READY. On SIGTERM the root checks with kcmp
 * that the sharing is still there, and that it works both ways: a
 * descriptor one opens is seen by the other; a chdir and a umask of one
 * change the other's. PASS or "FAIL: ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define KCMP_FILES 2
#define KCMP_FS 3

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static pid_t clone_with(unsigned long flags)
{
	/* Like fork (a copy of the memory, this stack), plus the sharing flags. */
	return (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
}

static long kcmp(pid_t a, pid_t b, int type) { return syscall(SYS_kcmp, a, b, type, 0, 0); }

/* Orders from the root: one pipe per child, or two readers could split a line. */
static int go[2], go2[2], done[2];

/* A sharing child: waits for one order from the root, answers on `done`. */
static void child_loop(int in, int mode_fs)
{
	char line[256];
	for (;;) {
		int n = read_line(in, line, sizeof(line), 1e6);
		if (n < 0) _exit(3);
		if (strcmp(line, "exit") == 0) _exit(0);
		if (!mode_fs && strncmp(line, "check ", 6) == 0) {
			/* The root opened it after restore: this table must have it too. */
			int fd = atoi(line + 6);
			struct stat st;
			const char *verdict = fcntl(fd, F_GETFD) < 0 ? "fd missing" : fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode) ? "fd not /dev/null" : NULL;
			int mine = open("/dev/zero", O_RDONLY);
			if (verdict) dprintf(done[1], "FAIL pid %d: fd %d the root opened: %s\n", (int)getpid(), fd, verdict);
			else dprintf(done[1], "OK %d\n", mine);
		} else if (strcmp(line, "open") == 0) {
			/* For a sibling to check in the table they share. */
			dprintf(done[1], "OPENED %d\n", open("/dev/zero", O_RDONLY));
		} else if (mode_fs && strcmp(line, "chdir") == 0) {
			char cwd[PATH_MAX];
			if (!getcwd(cwd, sizeof(cwd))) snprintf(cwd, sizeof(cwd), "?");
			mode_t old = umask(022);
			int ok = chdir("/") == 0;
			dprintf(done[1], "%s %s %03o\n", ok ? "OK" : "FAIL", cwd, (unsigned)old);
		}
	}
}

static int run_vfork(void)
{
	pid_t root = getpid();
	fflush(stdout);
	pid_t kid = vfork();
	if (kid < 0) die("vfork");
	if (kid == 0) {
		/* Shares the root's memory: only raw writes and waits here. */
		char line[80];
		int n = snprintf(line, sizeof(line), "PIDS %d %d\nREADY\n", (int)root, (int)getpid());
		if (write(1, line, (size_t)n) != n) _exit(4);
		while (!got_term) pause();
		_exit(0);
	}
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("the vfork child ended badly (%#x)", st);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) { fprintf(stderr, "usage: sharing files|fs DIR|siblings|apart|vfork\n"); return 2; }
	const char *mode = argv[1];
	signal(SIGTERM, on_term);
	if (strcmp(mode, "vfork") == 0) return run_vfork();
	int fs = strcmp(mode, "fs") == 0, siblings = strcmp(mode, "siblings") == 0, apart = strcmp(mode, "apart") == 0;
	if (!fs && !siblings && !apart && strcmp(mode, "files") != 0) { fprintf(stderr, "unknown mode %s\n", mode); return 2; }
	if (pipe(go) != 0 || pipe(go2) != 0 || pipe(done) != 0) die("pipe");
	char dir[PATH_MAX] = "";
	if (fs) {
		if (argc < 3) die("fs needs a directory");
		if (chdir(argv[2]) != 0) die("chdir");
		if (!getcwd(dir, sizeof(dir))) die("getcwd");
		umask(027);
	}
	/* A descriptor from before the dump, at a number of its own. */
	int before = open("/dev/null", O_RDONLY);
	if (before < 0 || dup2(before, 40) != 40) die("dup2");
	close(before);

	pid_t kids[2] = {0, 0};
	int nkids = 0;
	unsigned long flags = fs ? CLONE_FS : siblings ? 0 : CLONE_FILES;
	pid_t kid = clone_with(flags);
	if (kid < 0) die("clone");
	if (kid == 0) {
		if (siblings) {
			/* The sibling: the root's child too, sharing this one's table and fs context. */
			pid_t other = clone_with(CLONE_PARENT | CLONE_FILES | CLONE_FS);
			if (other < 0) _exit(5);
			if (other == 0) child_loop(go2[0], 0);
			dprintf(done[1], "SIBLING %d\n", (int)other);
		} else if (!fs) {
			/* The grandchild shares the same table through its parent. */
			pid_t grand = clone_with(CLONE_FILES);
			if (grand < 0) _exit(5);
			if (grand == 0) child_loop(go2[0], 0);
			dprintf(done[1], "GRAND %d\n", (int)grand);
			/* Apart: the child leaves the table to the root and the grandchild. */
			if (apart && unshare(CLONE_FILES) != 0) _exit(6);
		}
		child_loop(go[0], fs);
	}
	kids[nkids++] = kid;
	char line[512];
	pid_t grand = 0;
	if (siblings) {
		pid_t other = 0;
		if (read_line(done[0], line, sizeof(line), 10) < 0 || sscanf(line, "SIBLING %d", &other) != 1) die("sibling");
		kids[nkids++] = other;
	} else if (!fs) {
		if (read_line(done[0], line, sizeof(line), 10) < 0 || sscanf(line, "GRAND %d", &grand) != 1) die("grandchild");
	}
	printf("PIDS %d %d", (int)getpid(), (int)kids[0]);
	if (siblings) printf(" %d", (int)kids[1]);
	if (grand) printf(" %d", (int)grand);
	printf("\n");
	ready_then_wait(&got_term);

	pid_t root = getpid();
	if (siblings) {
		if (kcmp(kids[0], kids[1], KCMP_FILES) != 0) fail("the siblings no longer share their descriptor table");
		if (kcmp(kids[0], kids[1], KCMP_FS) != 0) fail("the siblings no longer share their fs context");
		if (kcmp(root, kids[0], KCMP_FILES) == 0 || kcmp(root, kids[0], KCMP_FS) == 0) fail("the root shares with its children, which it did not");
		if (kcmp(root, kids[1], KCMP_FILES) < 0) fail("the second sibling is not there");
		/* One sibling opens, the other must have it, and the other way round. */
		for (int i = 0; i < 2; i++) {
			int fd = -1;
			dprintf(i ? go2[1] : go[1], "open\n");
			if (read_line(done[0], line, sizeof(line), 10) < 0 || sscanf(line, "OPENED %d", &fd) != 1 || fd < 0) { fail("no fd from sibling %d", i); continue; }
			dprintf(i ? go[1] : go2[1], "check %d\n", fd);
			if (read_line(done[0], line, sizeof(line), 10) < 0 || strncmp(line, "OK ", 3) != 0) fail("sibling %d: %s", 1 - i, line);
		}
		dprintf(go[1], "exit\n");
		dprintf(go2[1], "exit\n");
	} else if (apart) {
		if (kcmp(root, grand, KCMP_FILES) != 0) fail("root and grandchild no longer share their descriptor table");
		dprintf(go[1], "exit\n");
		dprintf(go2[1], "exit\n");
	} else if (fs) {
		if (kcmp(root, kid, KCMP_FS) != 0) fail("root and child no longer share their fs context (kcmp KCMP_FS)");
		if (kcmp(root, kid, KCMP_FILES) == 0) fail("root and child share their descriptor table, which they did not");
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, dir) != 0) fail("root cwd is %s, not %s", cwd, dir);
		mode_t mine = umask(027);
		if (mine != 027) fail("root umask is %03o, not 027", (unsigned)mine);
		/* The child reports the cwd and umask it sees, then changes both. */
		dprintf(go[1], "chdir\n");
		if (read_line(done[0], line, sizeof(line), 10) < 0) fail("no answer from the child");
		else {
			char what[16], seen[PATH_MAX];
			unsigned seen_mask = 0;
			if (sscanf(line, "%15s %4095s %o", what, seen, &seen_mask) != 3 || strcmp(what, "OK") != 0) fail("child: %s", line);
			else {
				if (strcmp(seen, dir) != 0) fail("child cwd was %s, not %s", seen, dir);
				if (seen_mask != 027) fail("child umask was %03o, not 027", seen_mask);
			}
		}
		if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, "/") != 0) fail("the child's chdir(/) did not change the root's cwd (%s)", cwd);
		mine = umask(022);
		if (mine != 022) fail("the child's umask(022) did not change the root's (%03o)", (unsigned)mine);
		dprintf(go[1], "exit\n");
	} else {
		if (kcmp(root, kid, KCMP_FILES) != 0) fail("root and child no longer share their descriptor table (kcmp KCMP_FILES)");
		if (kcmp(root, grand, KCMP_FILES) != 0) fail("root and grandchild no longer share their descriptor table");
		if (kcmp(root, kid, KCMP_FS) == 0) fail("root and child share their fs context, which they did not");
		struct stat st;
		if (fstat(40, &st) != 0 || !S_ISCHR(st.st_mode)) fail("fd 40 (/dev/null) is gone");
		int fd = open("/dev/null", O_RDONLY);
		if (fd < 0) fail("open /dev/null: %s", strerror(errno));
		/* One "check" each for the child and the grandchild: each answers with an fd it opened. */
		dprintf(go[1], "check %d\n", fd);
		dprintf(go2[1], "check %d\n", fd);
		for (int i = 0; i < 2; i++) {
			int theirs = -1;
			if (read_line(done[0], line, sizeof(line), 10) < 0) { fail("no answer %d from the sharing processes", i); break; }
			if (sscanf(line, "OK %d", &theirs) != 1) { fail("%s", line); continue; }
			if (fstat(theirs, &st) != 0 || !S_ISCHR(st.st_mode)) fail("fd %d a sharing process opened is not in the root's table", theirs);
		}
		dprintf(go[1], "exit\n");
		dprintf(go2[1], "exit\n");
	}
	for (int i = 0; i < nkids; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("child %d ended badly (%#x)", (int)kids[i], st);
	}
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
