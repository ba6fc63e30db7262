/*
 * attrs: task attributes kept per thread or per process across
 * checkpoint/restore.
 *   process: audit loginuid 4242 (written while unset, before the threads
 *            exist, so they share it), membarrier registrations
 *            (PRIVATE_EXPEDITED and GLOBAL_EXPEDITED).
 *   threads: main   SCHED_OTHER nice 3, timer slack 123456, pdeathsig SIGWINCH
 *            batch  SCHED_BATCH nice 7, slack 777000, pdeathsig SIGURG,
 *                   only on the first CPU it was started with
 *            idle   SCHED_IDLE (nice 11 under it), slack 50001, only on the
 *                   last CPU it was started with
 *            fifo   SCHED_FIFO priority 3 (nice 4 kept under it)
 *            rr     SCHED_RR priority 9 with SCHED_FLAG_RESET_ON_FORK
 * Each thread reads back its own scheduling (sched_getattr), timer slack
 * (PR_GET_TIMERSLACK), parent-death signal (PR_GET_PDEATHSIG), CPUs
 * (sched_getaffinity: the others on every CPU it was started with) and
 * loginuid after SIGTERM; the main thread checks the membarrier registrations
 * (MEMBARRIER_CMD_GET_REGISTRATIONS) and that an expedited barrier works.
 * Prints "TIDS main batch idle fifo rr" before READY; PASS or FAIL: reasons.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include "fixture.h"

struct attr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

struct want {
	const char *name;
	uint32_t policy, priority;
	int nice;          /* the nice value, set first under SCHED_OTHER */
	uint64_t flags;
	unsigned long slack; /* 0: leave it (real-time threads read 0) */
	int pdeathsig;
	int cpu;           /* -1: every CPU the process started with; 0: only the first of them; 1: only the last */
};

static const struct want wants[] = {
	{ "main", 0, 0, 3, 0, 123456, SIGWINCH, -1 },
	{ "batch", 3, 0, 7, 0, 777000, SIGURG, 0 },
	{ "idle", 5, 0, 11, 0, 50001, 0, 1 },
	{ "fifo", 1, 3, 4, 0, 0, 0, -1 },
	{ "rr", 2, 9, 0, 1, 0, 0, -1 },
};
#define N ((int)(sizeof(wants) / sizeof(wants[0])))
#define MEMBARRIER_GET_REGISTRATIONS (1 << 9)
#define MEMBARRIER_REGISTERED ((1 << 4) | (1 << 2))

static pid_t tids[N];
static _Atomic int started, checking, checked;
static char why[N][512];
static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static cpu_set_t started_on;

/* The CPUs wants[i] runs on. */
static cpu_set_t wanted_cpus(int i)
{
	if (wants[i].cpu < 0) return started_on;
	int pick = -1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &started_on) && (pick < 0 || wants[i].cpu == 1)) pick = c;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(pick, &one);
	return one;
}

static int set_attr(pid_t tid, uint32_t policy, uint32_t priority, int nice, uint64_t flags)
{
	struct attr a = { sizeof(a), policy, flags, nice, priority, 0, 0, 0, 0, 1024 };
	return (int)syscall(SYS_sched_setattr, tid, &a, 0);
}

static int setup(int i)
{
	const struct want *w = &wants[i];
	tids[i] = (pid_t)syscall(SYS_gettid);
	if (w->slack && prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0)) return -1;
	if (prctl(PR_SET_PDEATHSIG, w->pdeathsig, 0, 0, 0)) return -1;
	cpu_set_t cpus = wanted_cpus(i);
	if (sched_setaffinity(0, sizeof(cpus), &cpus)) return -1;
	if (set_attr(0, 0, 0, w->nice, 0)) return -1;
	return set_attr(0, w->policy, w->priority, w->nice, w->flags);
}

static int first_cpu(const cpu_set_t *set)
{
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, set)) return c;
	return -1;
}

/* The calling thread checks itself against wants[i]. */
static void check(int i)
{
	const struct want *w = &wants[i];
	char *out = why[i];
	struct attr a = { 0 };
	if (syscall(SYS_sched_getattr, 0, &a, sizeof(a), 0))
		snprintf(out + strlen(out), 100, "%s: sched_getattr %s; ", w->name, strerror(errno));
	/* sched_getattr shows nice only under a non-real-time policy; getpriority always. */
	int rt = w->policy == 1 || w->policy == 2;
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	if (nice != w->nice)
		snprintf(out + strlen(out), 100, "%s: getpriority %d, want nice %d; ", w->name, nice, w->nice);
	if (a.policy != w->policy || a.priority != w->priority || a.nice != (rt ? 0 : w->nice) || (a.flags & 1) != w->flags)
		snprintf(out + strlen(out), 200, "%s: policy %u priority %u nice %d flags 0x%llx, want %u %u %d 0x%llx; ", w->name,
			 a.policy, a.priority, a.nice, (unsigned long long)a.flags, w->policy, w->priority, w->nice,
			 (unsigned long long)w->flags);
	long slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
	if (slack != (long)w->slack)
		snprintf(out + strlen(out), 100, "%s: timer slack %ld, want %lu; ", w->name, slack, w->slack);
	int sig = -1;
	prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
	if (sig != w->pdeathsig)
		snprintf(out + strlen(out), 100, "%s: pdeathsig %d, want %d; ", w->name, sig, w->pdeathsig);
	cpu_set_t cpus, want = wanted_cpus(i);
	if (sched_getaffinity(0, sizeof(cpus), &cpus))
		snprintf(out + strlen(out), 100, "%s: sched_getaffinity %s; ", w->name, strerror(errno));
	else if (!CPU_EQUAL(&cpus, &want))
		snprintf(out + strlen(out), 100, "%s: on %d CPUs (first %d), want %d (first %d); ", w->name, CPU_COUNT(&cpus),
			 first_cpu(&cpus), CPU_COUNT(&want), first_cpu(&want));
	char path[64], text[32] = "";
	snprintf(path, sizeof(path), "/proc/self/task/%d/loginuid", (int)syscall(SYS_gettid));
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, text, sizeof(text) - 1);
		text[n > 0 ? n : 0] = 0;
		close(fd);
	}
	if (strcmp(text, "4242"))
		snprintf(out + strlen(out), 100, "%s: loginuid '%s', want 4242; ", w->name, text);
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	if (setup(i)) snprintf(why[i], sizeof(why[i]), "setup of %s: %s", wants[i].name, strerror(errno));
	started++;
	while (!checking) usleep(2000);
	check(i);
	checked++;
	return NULL;
}

int main(void)
{
	signal(SIGTERM, on_term);
	if (sched_getaffinity(0, sizeof(started_on), &started_on)) {
		printf("FAIL: setup: sched_getaffinity: %s\n", strerror(errno));
		return 1;
	}
	int fd = open("/proc/self/loginuid", O_WRONLY);
	if (fd < 0 || write(fd, "4242", 4) != 4) {
		printf("FAIL: setup: write /proc/self/loginuid: %s\n", strerror(errno));
		return 1;
	}
	close(fd);
	if (syscall(SYS_membarrier, 1 << 4, 0, 0) || syscall(SYS_membarrier, 1 << 2, 0, 0)) {
		printf("FAIL: setup: membarrier register: %s\n", strerror(errno));
		return 1;
	}
	if (setup(0)) {
		printf("FAIL: setup of main: %s\n", strerror(errno));
		return 1;
	}
	pthread_t threads[N];
	for (int i = 1; i < N; i++) pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
	while (started < N - 1) usleep(1000);
	for (int i = 1; i < N; i++)
		if (why[i][0]) { printf("FAIL: %s\n", why[i]); return 1; }
	printf("TIDS");
	for (int i = 0; i < N; i++) printf(" %d", tids[i]);
	printf("\nREADY\n");
	fflush(stdout);
	while (!term) pause();

	checking = 1;
	check(0);
	double until = now() + 10;
	while (checked < N - 1 && now() < until) usleep(1000);
	if (checked < N - 1) fail("only %d of %d threads checked themselves", checked, N - 1);
	for (int i = 0; i < N; i++)
		if (why[i][0]) fail("%s", why[i]);
	long registered = syscall(SYS_membarrier, MEMBARRIER_GET_REGISTRATIONS, 0, 0);
	if (registered != MEMBARRIER_REGISTERED) fail("membarrier registrations 0x%lx, want 0x%x", registered, MEMBARRIER_REGISTERED);
	if (syscall(SYS_membarrier, 1 << 3, 0, 0)) fail("MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s", strerror(errno));
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
