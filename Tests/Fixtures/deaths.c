/*
 * deaths: zombies of every kind across checkpoint/restore.
 *
 * The root (a session leader) has one unreaped child per way to die:
 *   - exit status 0, 1, 42 and 255
 *   - killed by each signal whose default action ends a process (SIGKILL
 *     included), without a core file
 *   - killed by SIGQUIT, SIGABRT and SIGSEGV with a core file (WCOREDUMP):
 *     those children dump a minimal core (coredump_filter 0) into a
 *     temporary folder that the root removes again. When the machine's
 *     core_pattern pipes cores to a program, no such child is made and
 *     "NOCORE" is printed instead.
 * Before READY it prints "ZOMBIES pid..." and checks each status with
 * waitid(WNOWAIT). On SIGTERM it checks that each is still a zombie of its
 * own and that waitpid returns exactly the status it had, that nothing else
 * is its child, and prints PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

#define MAX_CHILDREN 96
static struct { pid_t pid; int status; } children[MAX_CHILDREN];
static int child_count;

static void die(const char *what)
{
	printf("setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* The child: default actions, nothing blocked, then it waits to be killed
 * (or exits with `code` when sig is 0). */
static void child(int sig, int code, int core, const char *core_dir, int ready)
{
	/* Raw rt_sigaction: glibc refuses 32 and 33, which a parent may have left ignored. */
	struct { unsigned long handler, flags, restorer, mask; } dfl = { 0, 0, 0, 0 };
	for (int s = 1; s < 65; s++)
		if (s != SIGKILL && s != SIGSTOP) syscall(SYS_rt_sigaction, s, &dfl, NULL, 8);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (sig == 0) _exit(code);
	struct rlimit limit;
	getrlimit(RLIMIT_CORE, &limit);
	if (core) {
		int fd = open("/proc/self/coredump_filter", O_WRONLY);
		if (fd < 0 || write(fd, "0", 1) != 1) _exit(90);
		close(fd);
		if (chdir(core_dir) != 0) _exit(91);
		limit.rlim_cur = limit.rlim_max;
		prctl(PR_SET_DUMPABLE, 1);
	} else {
		limit.rlim_cur = 0;
		prctl(PR_SET_DUMPABLE, 0);   /* also no core where core_pattern pipes */
	}
	setrlimit(RLIMIT_CORE, &limit);
	close(ready);   /* its actions are the defaults now: the root may kill it */
	for (;;) pause();
}

static void make(int sig, int code, int core, const char *core_dir)
{
	if (child_count == MAX_CHILDREN) { errno = ENOSPC; die("too many children"); }
	int ready[2];
	if (pipe(ready) != 0) die("pipe");
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) { close(ready[0]); child(sig, code, core, core_dir, ready[1]); }
	close(ready[1]);
	char c;
	while (read(ready[0], &c, 1) < 0 && errno == EINTR) {}
	close(ready[0]);
	if (sig && kill(pid, sig) != 0) die("kill");
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0) die("waitid");
	int want_code = sig == 0 ? CLD_EXITED : core ? CLD_DUMPED : CLD_KILLED;
	int want_status = sig == 0 ? code : sig;
	if (si.si_code != want_code || si.si_status != want_status) {
		printf("setup: child %d: si_code %d si_status %d, want %d %d\n", (int)pid, si.si_code, si.si_status,
		       want_code, want_status);
		exit(2);
	}
	children[child_count].pid = pid;
	children[child_count].status = sig == 0 ? code << 8 : sig | (core ? 0x80 : 0);
	child_count++;
}

static int is_fatal_by_default(int sig)
{
	switch (sig) {
	case SIGSTOP: case SIGTSTP: case SIGTTIN: case SIGTTOU:
	case SIGCHLD: case SIGCONT: case SIGURG: case SIGWINCH:
		return 0;
	default:
		return 1;
	}
}

static char proc_state(pid_t pid, int *ppid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	char state = '?';
	if (fgets(buf, sizeof(buf), f)) {
		char *paren = strrchr(buf, ')');
		if (paren) sscanf(paren + 1, " %c %d", &state, ppid);
	}
	fclose(f);
	return state;
}

static void remove_folder(const char *path)
{
	DIR *d = opendir(path);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				unlinkat(dirfd(d), e->d_name, 0);
		closedir(d);
	}
	rmdir(path);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	pid_t root = getpid();
	if (getsid(0) != root) { printf("setup: not a session leader\n"); return 2; }

	char pattern[256] = "";
	FILE *f = fopen("/proc/sys/kernel/core_pattern", "r");
	if (f) { if (!fgets(pattern, sizeof(pattern), f)) pattern[0] = 0; fclose(f); }
	int cores = pattern[0] != '|' && !strchr(pattern, '/');
	char core_dir[] = "/tmp/deaths-core-XXXXXX";
	if (cores && !mkdtemp(core_dir)) die("mkdtemp");

	make(0, 0, 0, NULL);
	make(0, 1, 0, NULL);
	make(0, 42, 0, NULL);
	make(0, 255, 0, NULL);
	for (int sig = 1; sig < 65; sig++)
		if (is_fatal_by_default(sig)) make(sig, 0, 0, NULL);
	if (cores) {
		/* One at a time: a core file left by the one before would be in the way. */
		int core_signals[] = { SIGQUIT, SIGABRT, SIGSEGV };
		for (int i = 0; i < 3; i++) {
			if (mkdir(core_dir, 0700) != 0 && errno != EEXIST) die("mkdir");
			make(core_signals[i], 0, 1, core_dir);
			remove_folder(core_dir);
		}
	} else {
		printf("NOCORE core_pattern %s", pattern);
	}

	printf("ZOMBIES");
	for (int i = 0; i < child_count; i++) printf(" %d", (int)children[i].pid);
	printf("\nREADY\n");

	sigset_t none;
	sigemptyset(&none);
	while (!got_term) sigsuspend(&none);

	for (int i = 0; i < child_count; i++) {
		pid_t pid = children[i].pid;
		int ppid = 0;
		char state = proc_state(pid, &ppid);
		if (state != 'Z') fail("child %d: state %c, want Z", (int)pid, state ? state : '-');
		else if (ppid != root) fail("child %d: ppid %d, want %d", (int)pid, ppid, (int)root);
		int st = 0;
		pid_t w = waitpid(pid, &st, WNOHANG);
		if (w != pid) fail("child %d: waitpid returned %d (%s)", (int)pid, (int)w, w < 0 ? strerror(errno) : "not ended");
		else if (st != children[i].status) fail("child %d: wait status %#x, want %#x", (int)pid, st, children[i].status);
	}
	int st;
	pid_t extra = waitpid(-1, &st, WNOHANG);
	if (extra > 0) fail("an unexpected child %d had ended with status %#x", (int)extra, st);
	else if (extra == 0) fail("an unexpected child is still running");

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
