/*
 * lazyprobe: times one `cryo restore -d` of a bigmem fixture from the outside.
 *
 *   lazyprobe PID LOG CRYO ARGS...
 *
 * Starts CRYO ARGS (a detached restore of pid PID, whose output goes to LOG)
 * and measures from the moment it starts:
 *   running_s  until the restored process answers: as soon as PID is
 *              released (not traced, not stopped, SIGUSR2 caught) it gets
 *              SIGUSR2, and bigmem answers with a "PONG" line in LOG. With
 *              --lazy-pages that needs its stack and code, so it is the
 *              time until the process really runs, not until it exists;
 *   cryo_s     until the cryo command returns (exit status must be 0);
 *   loaded_s   until no process of cryo's is left but the restored one:
 *              with --lazy-pages the background loader exits only once all
 *              memory is in. lazyprobe is a child subreaper, so that loader
 *              becomes its child when the cryo command returns.
 * Prints key=value lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Released: a restored, running task with its SIGUSR2 handler. */
static int released(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	const char *state = strstr(buf, "\nState:\t"), *tracer = strstr(buf, "\nTracerPid:\t"), *caught = strstr(buf, "\nSigCgt:\t");
	if (!state || !tracer || !caught) return 0;
	char s = state[8];
	if (s == 't' || s == 'T' || s == 'Z' || atoi(tracer + 12) != 0) return 0;
	unsigned long long mask = strtoull(caught + 9, NULL, 16);
	return (mask >> (SIGUSR2 - 1)) & 1;
}

static int log_has_pong(const char *log, off_t from)
{
	char buf[65536];
	int fd = open(log, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, from);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	return strstr(buf, "PONG") != NULL;
}

/* Any child of ours other than `root`? */
static int others_left(pid_t root)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	for (char *p = strtok(buf, " \n"); p; p = strtok(NULL, " \n"))
		if (atoi(p) != root) return 1;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) { fprintf(stderr, "usage: lazyprobe PID LOG CRYO ARGS...\n"); return 2; }
	pid_t root = atoi(argv[1]);
	const char *log = argv[2];
	off_t from = 0;
	int lfd = open(log, O_RDONLY | O_CLOEXEC);
	if (lfd >= 0) { from = lseek(lfd, 0, SEEK_END); close(lfd); }
	prctl(PR_SET_CHILD_SUBREAPER, 1);

	double t0 = now();
	pid_t cryo = fork();
	if (cryo == 0) {
		execv(argv[3], argv + 3);
		perror("lazyprobe: execv");
		_exit(127);
	}
	if (cryo < 0) { perror("lazyprobe: fork"); return 1; }

	double running = -1, cryo_done = -1, signalled = -1;
	int cryo_status = -1;
	double deadline = t0 + 600;
	while (now() < deadline) {
		int status;
		pid_t got;
		while ((got = waitpid(-1, &status, WNOHANG)) > 0) {
			if (got == cryo) { cryo_status = status; cryo_done = now() - t0; }
			if (got == root) { fprintf(stderr, "lazyprobe: the restored pid %d exited\n", (int)root); return 1; }
		}
		if (running < 0) {
			if (signalled < 0 && released(root)) { kill(root, SIGUSR2); signalled = now(); }
			if (signalled >= 0 && log_has_pong(log, from)) running = now() - t0;
			/* A signal sent before the handler was really in place is lost: ask again. */
			if (signalled >= 0 && running < 0 && now() - signalled > 0.5) signalled = -1;
		}
		if (cryo_done >= 0 && cryo_status != -1 && (!WIFEXITED(cryo_status) || WEXITSTATUS(cryo_status) != 0)) {
			fprintf(stderr, "lazyprobe: %s failed (status %#x)\n", argv[3], cryo_status);
			return 1;
		}
		if (running >= 0 && cryo_done >= 0 && !others_left(root)) {
			printf("running_s=%.6f\ncryo_s=%.6f\nloaded_s=%.6f\n", running, cryo_done, now() - t0);
			return 0;
		}
		usleep(running < 0 ? 100 : 1000);
	}
	fprintf(stderr, "lazyprobe: timed out (running %.3f, cryo %.3f)\n", running, cryo_done);
	return 1;
}
