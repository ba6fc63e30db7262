/*
 * deadline: two threads under SCHED_DEADLINE with parameters of their own:
 *   main    runtime 2 ms, deadline 15 ms, period 30 ms
 *   worker  runtime 1 ms, deadline 5 ms, period 50 ms, SCHED_FLAG_RESET_ON_FORK
 * (the worker is made first: a deadline thread cannot clone). After SIGTERM
 * both are read back with sched_getattr. Where the kernel refuses
 * SCHED_DEADLINE the fixture says "SKIP: why" before READY and checks nothing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

struct attr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static _Atomic pid_t worker_tid;

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	for (;;) pause();
	return NULL;
}

static int set_deadline(pid_t tid, uint64_t runtime, uint64_t deadline, uint64_t period, uint64_t flags)
{
	struct attr a = { sizeof(a), 6 /* SCHED_DEADLINE */, flags, 0, 0, runtime, deadline, period, 0, 0 };
	return (int)syscall(SYS_sched_setattr, tid, &a, 0);
}

static void check(const char *name, pid_t tid, uint64_t runtime, uint64_t deadline, uint64_t period, uint64_t flags)
{
	struct attr a;
	memset(&a, 0, sizeof(a));
	if (syscall(SYS_sched_getattr, tid, &a, sizeof(a), 0)) { fail("%s: sched_getattr: %s", name, strerror(errno)); return; }
	if (a.policy != 6 || a.runtime != runtime || a.deadline != deadline || a.period != period || (a.flags & 0x7) != flags)
		fail("%s: policy %u runtime %llu deadline %llu period %llu flags 0x%llx, not SCHED_DEADLINE %llu/%llu/%llu 0x%llx",
		     name, a.policy, (unsigned long long)a.runtime, (unsigned long long)a.deadline, (unsigned long long)a.period,
		     (unsigned long long)a.flags, (unsigned long long)runtime, (unsigned long long)deadline,
		     (unsigned long long)period, (unsigned long long)flags);
}

int main(void)
{
	signal(SIGTERM, on_term);
	pthread_t t;
	if (pthread_create(&t, NULL, worker, NULL)) { printf("FAIL: pthread_create\n"); return 1; }
	while (!worker_tid) usleep(1000);
	if (set_deadline(worker_tid, 1000000, 5000000, 50000000, 1) || set_deadline(0, 2000000, 15000000, 30000000, 0)) {
		printf("SKIP: sched_setattr(SCHED_DEADLINE): %s\n", strerror(errno));
		printf("READY\n");
		fflush(stdout);
		while (!term) pause();
		printf("PASS\n");
		return 0;
	}
	check("main", 0, 2000000, 15000000, 30000000, 0);
	check("worker", worker_tid, 1000000, 5000000, 50000000, 1);
	if (failbuf[0]) { printf("FAIL: before: %s\n", failbuf); return 1; }
	printf("READY\n");
	fflush(stdout);
	while (!term) pause();
	check("main", 0, 2000000, 15000000, 30000000, 0);
	check("worker", worker_tid, 1000000, 5000000, 50000000, 1);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
