/*
 * cgroups: cgroup membership across checkpoint/restore.
 *
 * The root starts one thread, prints "THREAD tid" and READY, and waits. The
 * test moves the process (and perhaps the thread alone, into a threaded
 * cgroup v2) into cgroups of its own, then sends SIGUSR1: the fixture
 * keeps /proc/self/cgroup and the thread's /proc/self/task/TID/cgroup and
 * prints SNAPSHOT. On SIGTERM it reads both again; any difference from the
 * snapshot is a failure. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, got_usr1;
static void on_signal(int sig) { if (sig == SIGTERM) got_term = 1; else got_usr1 = 1; }
static volatile pid_t thread_tid;

static void *parked(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) pause();
	return NULL;
}

static void slurp(const char *path, char *out, size_t size)
{
	out[0] = 0;
	FILE *f = fopen(path, "r");
	if (!f) { fail("open %s: %s", path, strerror(errno)); return; }
	size_t n = fread(out, 1, size - 1, f);
	out[n] = 0;
	fclose(f);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_t thread;
	if (pthread_create(&thread, NULL, parked, NULL) != 0) { printf("FAIL: pthread_create\n"); return 1; }
	while (!thread_tid) usleep(1000);
	signal(SIGTERM, on_signal);
	signal(SIGUSR1, on_signal);
	char thread_path[64];
	snprintf(thread_path, sizeof(thread_path), "/proc/self/task/%d/cgroup", (int)thread_tid);
	printf("THREAD %d\n", (int)thread_tid);
	printf("READY\n");
	static char process_before[4096], thread_before[4096], process_after[4096], thread_after[4096];
	while (!got_usr1) pause();
	slurp("/proc/self/cgroup", process_before, sizeof(process_before));
	slurp(thread_path, thread_before, sizeof(thread_before));
	printf("SNAPSHOT\n");
	while (!got_term) pause();
	slurp("/proc/self/cgroup", process_after, sizeof(process_after));
	slurp(thread_path, thread_after, sizeof(thread_after));
	if (strcmp(process_before, process_after) != 0) fail("process cgroups were [%s], now [%s]", process_before, process_after);
	if (strcmp(thread_before, thread_after) != 0) fail("thread cgroups were [%s], now [%s]", thread_before, thread_after);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return 0;
}
