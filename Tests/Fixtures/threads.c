/*
 * threads: a process with many threads across checkpoint/restore.
 *
 * argv[1] is the number of worker threads (default 64), besides the main
 * thread. Each worker:
 *   - sets __thread variables (a long and a 200-byte block) to values of its own
 *   - records gettid(), pthread_self() and a thread name ("thr-NN")
 *   - counts in a loop with 1 ms sleeps
 * Workers 1 and 2 have their own sigaltstack (64 and 128 KiB, mmap'd), used
 * by a SA_ONSTACK SIGUSR1 handler; worker 5 additionally blocks SIGUSR1 and
 * SIGUSR2 with pthread_sigmask. SIGTERM is blocked in every thread but the
 * main one, which waits for it in sigsuspend.
 *
 * Before READY it prints "TIDS <main> <worker tids...>". On SIGTERM the main
 * thread checks that every counter is at least where it was at READY and
 * moves on within 200 ms, then asks every worker to check itself (TLS, tid,
 * pthread_self, name, sigaltstack and that the handler runs on it, signal
 * mask) and waits for each result; then the workers return and are joined
 * (with a timeout: a lost clear-child-tid futex would hang pthread_join).
 * PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

#define MAXT 1000
#define TLS_BLOCK 200
#define MASK_THREAD 5

struct slot {
	_Atomic unsigned long counter;
	_Atomic int started;
	_Atomic int result;           /* 0 pending, 1 ok, 2 failed */
	pid_t tid;
	pthread_t self;
	char name[16];
	void *alt_sp;                 /* NULL: no sigaltstack */
	size_t alt_size;
	sigset_t mask;
	unsigned long at_ready;
	char why[400];
} __attribute__((aligned(64)));

static struct slot *slots;
static int nthreads = 64;
static _Atomic int phase;         /* 0 run, 1 check, 2 stop */
static volatile sig_atomic_t got_term;

static __thread long tls_value;
static __thread unsigned char tls_block[TLS_BLOCK];
static __thread void *tls_alt_lo, *tls_alt_hi;
static __thread volatile int tls_handler_hits, tls_handler_on_alt;

static long tls_want(int i) { return 0x5eed0000L + (long)i * 7919L; }
static unsigned char block_want(int i, int k) { return (unsigned char)(i * 13 + k * 7 + 1); }

static void on_term(int sig) { (void)sig; got_term = 1; }

static void on_usr1(int sig)
{
	(void)sig;
	char probe;
	uintptr_t p = (uintptr_t)&probe;
	tls_handler_hits++;
	tls_handler_on_alt = p >= (uintptr_t)tls_alt_lo && p < (uintptr_t)tls_alt_hi;
}


static void die(const char *what, int err) { fprintf(stderr, "setup: %s: %s\n", what, strerror(err)); exit(2); }

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}


/* Appends to this thread's report. */
static void why(struct slot *s, const char *fmt, ...)
{
	size_t len = strlen(s->why);
	if (len >= sizeof(s->why) - 32) return;
	if (len) len += (size_t)snprintf(s->why + len, sizeof(s->why) - len, ", ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->why + len, sizeof(s->why) - len, fmt, ap);
	va_end(ap);
}

static int same_mask(const sigset_t *a, const sigset_t *b, int *which)
{
	for (int sig = 1; sig < 65; sig++)
		if (sigismember(a, sig) != sigismember(b, sig)) { *which = sig; return 0; }
	return 1;
}

/* Runs SIGUSR1 on this thread; 1 if the handler ran on the alternate stack. */
static int handler_on_altstack(void)
{
	int hits = tls_handler_hits;
	tls_handler_on_alt = 0;
	syscall(SYS_tgkill, getpid(), gettid(), SIGUSR1);
	return tls_handler_hits == hits + 1 && tls_handler_on_alt;
}

static void self_check(int i)
{
	struct slot *s = &slots[i];
	if (tls_value != tls_want(i)) why(s, "__thread long is %#lx, want %#lx", tls_value, tls_want(i));
	for (int k = 0; k < TLS_BLOCK; k++)
		if (tls_block[k] != block_want(i, k)) { why(s, "__thread block byte %d is %#x", k, tls_block[k]); break; }
	if (gettid() != s->tid) why(s, "gettid() is %d", (int)gettid());
	if (!pthread_equal(pthread_self(), s->self)) why(s, "pthread_self() is %#lx, was %#lx", (unsigned long)pthread_self(), (unsigned long)s->self);
	char name[17] = "";
	prctl(PR_GET_NAME, name);
	if (strcmp(name, s->name) != 0) why(s, "name is \"%s\", want \"%s\"", name, s->name);

	stack_t cur;
	if (sigaltstack(NULL, &cur) != 0) why(s, "sigaltstack: %s", strerror(errno));
	else if (s->alt_sp) {
		if (cur.ss_flags & SS_DISABLE) why(s, "sigaltstack is disabled, want %p size %zu", s->alt_sp, s->alt_size);
		else if (cur.ss_sp != s->alt_sp || cur.ss_size != s->alt_size)
			why(s, "sigaltstack is %p size %zu, want %p size %zu", cur.ss_sp, cur.ss_size, s->alt_sp, s->alt_size);
		else if (!handler_on_altstack()) why(s, "the SA_ONSTACK handler did not run on the sigaltstack");
	} else if (!(cur.ss_flags & SS_DISABLE)) {
		why(s, "has a sigaltstack %p size %zu, want none", cur.ss_sp, cur.ss_size);
	}

	sigset_t mask;
	int which = 0;
	pthread_sigmask(SIG_BLOCK, NULL, &mask);
	if (!same_mask(&mask, &s->mask, &which))
		why(s, "signal %d is %s", which, sigismember(&mask, which) ? "blocked, want unblocked" : "unblocked, want blocked");
	atomic_store(&s->result, s->why[0] ? 2 : 1);
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	struct slot *s = &slots[i];
	tls_value = tls_want(i);
	for (int k = 0; k < TLS_BLOCK; k++) tls_block[k] = block_want(i, k);
	s->tid = gettid();
	s->self = pthread_self();
	snprintf(s->name, sizeof(s->name), "thr-%02d", i);
	prctl(PR_SET_NAME, s->name);

	if (i == 1 || i == 2) {
		size_t size = i == 1 ? 64 << 10 : 128 << 10;
		void *sp = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (sp == MAP_FAILED) die("mmap", errno);
		stack_t ss = { .ss_sp = sp, .ss_size = size, .ss_flags = 0 };
		if (sigaltstack(&ss, NULL) != 0) die("sigaltstack", errno);
		s->alt_sp = sp;
		s->alt_size = size;
		tls_alt_lo = sp;
		tls_alt_hi = (char *)sp + size;
		if (!handler_on_altstack()) { fprintf(stderr, "setup: thread %d: handler not on the altstack\n", i); exit(2); }
	}
	if (i == MASK_THREAD) {
		sigset_t more;
		sigemptyset(&more);
		sigaddset(&more, SIGUSR1);
		sigaddset(&more, SIGUSR2);
		pthread_sigmask(SIG_BLOCK, &more, NULL);
	}
	pthread_sigmask(SIG_BLOCK, NULL, &s->mask);
	atomic_store(&s->started, 1);

	int p;
	while ((p = atomic_load(&phase)) != 2) {
		atomic_fetch_add(&s->counter, 1);
		if (p == 1 && atomic_load(&s->result) == 0)
			self_check(i);
		sleep_ms(1);
	}
	return (void *)(intptr_t)(i + 1000);
}

static int count_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	if (!d) return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.') n++;
	closedir(d);
	return n;
}

int main(int argc, char **argv)
{
	if (argc > 1) nthreads = atoi(argv[1]);
	if (nthreads < 6 || nthreads > MAXT - 1) { fprintf(stderr, "usage: threads [workers 6..%d]\n", MAXT - 1); return 2; }
	setvbuf(stdout, NULL, _IOLBF, 0);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction", errno);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK;
	if (sigaction(SIGUSR1, &sa, NULL) != 0) die("sigaction", errno);

	/* Workers inherit SIGTERM blocked; only the main thread takes it. */
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, &old);

	slots = aligned_alloc(64, sizeof(struct slot) * (size_t)(nthreads + 1));
	if (!slots) die("malloc", ENOMEM);
	memset(slots, 0, sizeof(struct slot) * (size_t)(nthreads + 1));

	/* slot 0 is the main thread */
	tls_value = tls_want(0);
	for (int k = 0; k < TLS_BLOCK; k++) tls_block[k] = block_want(0, k);
	slots[0].tid = gettid();
	slots[0].self = pthread_self();
	prctl(PR_GET_NAME, slots[0].name);

	pthread_t *th = calloc((size_t)nthreads + 1, sizeof(pthread_t));
	for (int i = 1; i <= nthreads; i++) {
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 256 << 10);
		int rc = pthread_create(&th[i], &attr, worker, (void *)(intptr_t)i);
		pthread_attr_destroy(&attr);
		if (rc != 0) die("pthread_create", rc);
	}
	double deadline = now() + 20;
	for (int i = 1; i <= nthreads; i++)
		while (!atomic_load(&slots[i].started) || atomic_load(&slots[i].counter) == 0) {
			if (now() > deadline) { fprintf(stderr, "setup: thread %d did not start\n", i); return 2; }
			sleep_ms(1);
		}
	pthread_sigmask(SIG_BLOCK, NULL, &slots[0].mask);
	if (count_tasks() != nthreads + 1) { fprintf(stderr, "setup: %d tasks, want %d\n", count_tasks(), nthreads + 1); return 2; }
	for (int i = 1; i <= nthreads; i++) {
		int want_usr = i == MASK_THREAD;
		if (!sigismember(&slots[i].mask, SIGTERM) || sigismember(&slots[i].mask, SIGUSR1) != want_usr ||
		    sigismember(&slots[i].mask, SIGUSR2) != want_usr) {
			fprintf(stderr, "setup: thread %d has the wrong signal mask\n", i);
			return 2;
		}
	}

	printf("TIDS");
	for (int i = 0; i <= nthreads; i++) printf(" %d", (int)slots[i].tid);
	printf("\n");
	for (int i = 1; i <= nthreads; i++) slots[i].at_ready = atomic_load(&slots[i].counter);
	printf("READY\n");
	fflush(stdout);

	sigset_t wait_mask = old;
	sigdelset(&wait_mask, SIGTERM);
	while (!got_term)
		sigsuspend(&wait_mask);

	/* ---- checks ---- */
	if (getpid() != slots[0].tid || gettid() != slots[0].tid) fail("main thread: getpid() %d gettid() %d, want %d", (int)getpid(), (int)gettid(), (int)slots[0].tid);
	if (tls_value != tls_want(0)) fail("main thread: __thread long is %#lx", tls_value);
	for (int k = 0; k < TLS_BLOCK; k++)
		if (tls_block[k] != block_want(0, k)) { fail("main thread: __thread block byte %d is %#x", k, tls_block[k]); break; }
	if (!pthread_equal(pthread_self(), slots[0].self)) fail("main thread: pthread_self() changed");
	stack_t cur;
	if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) fail("main thread: has a sigaltstack %p", cur.ss_sp);
	int tasks = count_tasks();
	if (tasks != nthreads + 1) fail("%d threads, want %d", tasks, nthreads + 1);

	unsigned long *c0 = calloc((size_t)nthreads + 1, sizeof(unsigned long));
	for (int i = 1; i <= nthreads; i++) {
		c0[i] = atomic_load(&slots[i].counter);
		if (c0[i] < slots[i].at_ready)
			fail("thread %d (tid %d): counter went back from %lu at READY to %lu", i, (int)slots[i].tid, slots[i].at_ready, c0[i]);
	}
	sleep_ms(200);
	int stuck = 0;
	for (int i = 1; i <= nthreads; i++)
		if (atomic_load(&slots[i].counter) == c0[i]) {
			if (stuck++ < 8) fail("thread %d (tid %d): counter stuck at %lu", i, (int)slots[i].tid, c0[i]);
		}
	if (stuck > 8) fail("%d threads in all have a stuck counter", stuck);

	/* Reports of the first few failing threads, and always of the special
	 * ones (altstacks, mask), so that a failure common to all threads does
	 * not hide the rest. */
	atomic_store(&phase, 1);
	deadline = now() + 5;
	int shown = 0, hidden = 0;
	for (int i = 1; i <= nthreads; i++) {
		while (atomic_load(&slots[i].result) == 0 && now() < deadline)
			sleep_ms(1);
		int r = atomic_load(&slots[i].result);
		if (r == 1) continue;
		if (shown >= 4 && i != 1 && i != 2 && i != MASK_THREAD) { hidden++; continue; }
		shown++;
		if (r == 0) fail("thread %d (tid %d): did not check itself within 5 s", i, (int)slots[i].tid);
		else fail("thread %d (tid %d): %s", i, (int)slots[i].tid, slots[i].why);
	}
	if (hidden) fail("%d more threads failed their own checks", hidden);

	atomic_store(&phase, 2);
	for (int i = 1; i <= nthreads; i++) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 5;
		void *ret = NULL;
		int rc = pthread_timedjoin_np(th[i], &ret, &until);
		if (rc == ETIMEDOUT) { fail("thread %d (tid %d): pthread_join timed out", i, (int)slots[i].tid); break; }
		else if (rc != 0) fail("thread %d: pthread_join: %s", i, strerror(rc));
		else if ((intptr_t)ret != i + 1000) fail("thread %d: returned %ld", i, (long)(intptr_t)ret);
	}

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); _exit(1); }
	printf("PASS\n");
	return 0;
}
