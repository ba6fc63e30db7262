/*
 * seccompthreads: threads with different seccomp filters. Each filter makes
 * one syscall fail with an errno of its own:
 *   F1 getpriority -> 42, installed by main with no_new_privs, inherited by all;
 *   F2 getpgid -> 43, installed by thread "a" for itself only;
 *   F3 getsid -> 44 and exit -> 45, installed by main after "a" and "b"
 *      exist (no TSYNC): main and thread "c" (created afterwards) have it,
 *      "a" and "b" do not. A thread with F3 cannot end (glibc retries exit
 *      forever): given to "a" or "b" by mistake, they would hang.
 * So: main [F1 F3], a [F1 F2], b [F1], c [F1 F3]. Threads wait in blocking
 * syscalls (futex, nanosleep, read on a pipe). After SIGTERM each thread
 * checks which filters apply to it, its Seccomp_filters count and NoNewPrivs;
 * "a" and "b" then end and main joins them (with a timeout), "c" stays.
 * PASS or FAIL: reasons.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include "fixture.h"

/* nr fails with error, nr2 (if not -1) with error + 1. */
static int install(int nr, int error, int nr2)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | error),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (error + 1)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

struct thread {
	const char *name;
	int f2, f3, filters;
	pthread_t self;
	char why[300];
	_Atomic int done;
};
static struct thread threads[] = { { "main", 0, 1, 2 }, { "a", 1, 0, 2 }, { "b", 0, 0, 1 }, { "c", 0, 1, 2 } };
#define N 4
static _Atomic int ready, go;
static int pipefd[2];
static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

/* A "Name:\tvalue" line of this thread's own status. */
static void thread_field(const char *name, char *out, size_t size)
{
	out[0] = 0;
	FILE *f = fopen("/proc/thread-self/status", "r");
	if (!f) return;
	char line[256];
	size_t n = strlen(name);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, n) && line[n] == ':') {
			snprintf(out, size, "%s", line + n + 1 + strspn(line + n + 1, " \t"));
			out[strcspn(out, "\n")] = 0;
		}
	fclose(f);
}

static void check(struct thread *t)
{
	char *out = t->why;
	errno = 0;
	if (getpriority(PRIO_PROCESS, 0) != -1 || errno != 42) snprintf(out + strlen(out), 60, "%s: F1 lost; ", t->name);
	errno = 0;
	int r = getpgid(0);
	if (t->f2 != (r == -1 && errno == 43)) snprintf(out + strlen(out), 60, "%s: F2 %s; ", t->name, t->f2 ? "lost" : "gained");
	errno = 0;
	r = getsid(0);
	if (t->f3 != (r == -1 && errno == 44)) snprintf(out + strlen(out), 60, "%s: F3 %s; ", t->name, t->f3 ? "lost" : "gained");
	char v[32];
	thread_field("Seccomp_filters", v, sizeof(v));
	if (atoi(v) != t->filters) snprintf(out + strlen(out), 60, "%s: %s filters, want %d; ", t->name, v, t->filters);
	thread_field("NoNewPrivs", v, sizeof(v));
	if (atoi(v) != 1) snprintf(out + strlen(out), 60, "%s: NoNewPrivs %s; ", t->name, v);
}

static void *run(void *arg)
{
	struct thread *t = arg;
	if (t->f2 && install(SYS_getpgid, 43, -1)) snprintf(t->why, sizeof(t->why), "%s: install F2: %s", t->name, strerror(errno));
	ready++;
	if (t == &threads[1]) {
		char c;
		if (read(pipefd[0], &c, 1) != 1) snprintf(t->why + strlen(t->why), 60, "a: read: %s; ", strerror(errno));
	} else if (t == &threads[2]) {
		while (!go) { struct timespec ts = { 0, 50 * 1000 * 1000 }; nanosleep(&ts, NULL); }
	} else {
		while (!go) syscall(SYS_futex, &go, 0 /* FUTEX_WAIT */, 0, NULL, NULL, 0);
	}
	check(t);
	t->done = 1;
	if (t == &threads[3]) for (;;) pause();
	return NULL;
}

int main(void)
{
	signal(SIGTERM, on_term);
	if (pipe(pipefd) || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || install(SYS_getpriority, 42, -1)) {
		printf("FAIL: setup: %s\n", strerror(errno));
		return 1;
	}
	pthread_create(&threads[1].self, NULL, run, &threads[1]);
	pthread_create(&threads[2].self, NULL, run, &threads[2]);
	while (ready < 2) usleep(1000);
	if (install(SYS_getsid, 44, SYS_exit)) {
		printf("FAIL: setup: install F3: %s\n", strerror(errno));
		return 1;
	}
	pthread_create(&threads[3].self, NULL, run, &threads[3]);
	while (ready < 3) usleep(1000);
	for (int i = 1; i < N; i++)
		if (threads[i].why[0]) { printf("FAIL: %s\n", threads[i].why); return 1; }
	printf("READY\n");
	fflush(stdout);
	while (!term) pause();

	go = 1;
	syscall(SYS_futex, &go, 1 /* FUTEX_WAKE */, 10, NULL, NULL, 0);
	if (write(pipefd[1], "x", 1) != 1) fail("write to the pipe: %s", strerror(errno));
	check(&threads[0]);
	double until = now() + 10;
	for (int i = 1; i < N; i++) {
		while (!threads[i].done && now() < until) usleep(1000);
		if (!threads[i].done) fail("thread %s did not finish its check (hung)", threads[i].name);
	}
	for (int i = 1; i < 3; i++) {
		int joined;
		while (!(joined = !pthread_tryjoin_np(threads[i].self, NULL)) && now() < until) usleep(1000);
		if (!joined) fail("thread %s did not end (hung in exit)", threads[i].name);
	}
	for (int i = 0; i < N; i++)
		if (threads[i].why[0]) fail("%s", threads[i].why);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
