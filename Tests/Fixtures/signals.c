/*
 * signals: signal dispositions, masks, pending signals, the alternate signal
 * stack and an interval timer across checkpoint/restore.
 *
 *   SIGUSR1      SA_SIGINFO|SA_RESTART, mask {SIGINT,SIGQUIT}; blocked and
 *                pending (raised twice, so one instance)
 *   SIGRTMIN+3   SA_SIGINFO|SA_RESTART; blocked, two instances queued with
 *                sigqueue() carrying values
 *   SIGHUP       SA_NODEFER, mask {SIGUSR2,SIGWINCH}
 *   SIGINT       SA_ONSTACK|SA_SIGINFO, mask {SIGPIPE}; runs on the altstack
 *   SIGWINCH     SA_RESETHAND|SA_RESTART (never delivered)
 *   SIGALRM      SA_RESTART, counts ITIMER_REAL ticks (50 ms interval)
 *   SIGTERM      plain handler, mask {SIGALRM}
 *   SIGUSR2      ignored
 *   SIGXFSZ      blocked, not pending
 *   everything else: SIG_DFL
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000   /* set by libc; not exported by glibc headers */
#endif

#define ALT_SIZE   (64 * 1024)
#define TICK_USEC  50000
#define RT_VAL1    0x5eed1234
#define RT_VAL2    0x0badcafe

static volatile sig_atomic_t got_term;
static volatile sig_atomic_t ticks;

static volatile sig_atomic_t usr1_calls, usr1_signo, usr1_code, usr1_pid, usr1_uid, usr1_mask_ok;
static volatile sig_atomic_t rt_calls, rt_bad_code, rt_bad_pid;
static volatile int rt_values[8];
static volatile sig_atomic_t hup_calls, hup_self_blocked, hup_winch_blocked;
static volatile sig_atomic_t int_calls, int_on_altstack, int_flag_onstack;
static volatile uintptr_t int_local_addr;
static void *alt_base;


static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_alarm(int sig) { (void)sig; ticks++; }
static void on_winch(int sig) { (void)sig; }

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	usr1_mask_ok = sigismember(&cur, SIGINT) == 1 && sigismember(&cur, SIGQUIT) == 1 &&
		       sigismember(&cur, SIGUSR1) == 1;
	usr1_calls++;
	usr1_signo = si->si_signo;
	usr1_code = si->si_code;
	usr1_pid = si->si_pid;
	usr1_uid = (sig_atomic_t)si->si_uid;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	int n = rt_calls;
	if (n < 8) rt_values[n] = si->si_value.sival_int;
	if (si->si_code != SI_QUEUE) rt_bad_code = 1;
	if (si->si_pid != getpid()) rt_bad_pid = 1;
	rt_calls = n + 1;
}

static void on_hup(int sig)
{
	(void)sig;
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	hup_self_blocked = sigismember(&cur, SIGHUP);
	hup_winch_blocked = sigismember(&cur, SIGWINCH) && sigismember(&cur, SIGUSR2);
	hup_calls++;
}

static void on_int(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)si; (void)uc;
	volatile char local = 0;
	stack_t ss;
	int_local_addr = (uintptr_t)&local;
	int_on_altstack = (uintptr_t)&local >= (uintptr_t)alt_base &&
			  (uintptr_t)&local < (uintptr_t)alt_base + ALT_SIZE;
	int_flag_onstack = sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_ONSTACK);
	int_calls++;
}

struct want {
	int sig;
	void *handler;         /* a function, SIG_IGN or SIG_DFL */
	int flags;
	int mask[4];           /* 0-terminated */
};

static struct want wants[16];
static int nwants;

static void install(int sig, void *handler, int flags, const int *mask)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	if (flags & SA_SIGINFO) sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))handler;
	else sa.sa_handler = (void (*)(int))handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	struct want *w = &wants[nwants++];
	memset(w, 0, sizeof(*w));
	w->sig = sig; w->handler = handler; w->flags = flags;
	for (int i = 0; mask && mask[i]; i++) { sigaddset(&sa.sa_mask, mask[i]); w->mask[i] = mask[i]; }
	if (sigaction(sig, &sa, NULL) != 0) die("sigaction");
}

static int is_reserved(int sig) { return sig >= 32 && sig < SIGRTMIN; }

/* returns 1 if the signal's disposition is exactly as installed */
static int check_disposition(int sig)
{
	size_t before = strlen(failbuf);
	const struct want *w = NULL;
	for (int i = 0; i < nwants; i++) if (wants[i].sig == sig) w = &wants[i];
	struct sigaction old;
	if (sigaction(sig, NULL, &old) != 0) { fail("sigaction(%d) read: %s", sig, strerror(errno)); return 0; }
	int flags = old.sa_flags & ~SA_RESTORER;
	void *h = (old.sa_flags & SA_SIGINFO) ? (void *)old.sa_sigaction : (void *)old.sa_handler;
	if (!w) {
		if (old.sa_handler != SIG_DFL) fail("signal %d (%s) has handler %p, want SIG_DFL", sig, strsignal(sig), h);
		return strlen(failbuf) == before;
	}
	if (h != w->handler)
		fail("signal %d (%s) handler %p, want %p", sig, strsignal(sig), h, w->handler);
	if (w->handler == (void *)SIG_IGN)
		return strlen(failbuf) == before;
	if (flags != w->flags)
		fail("signal %d (%s) sa_flags %#x, want %#x", sig, strsignal(sig), flags, w->flags);
	sigset_t want;
	sigemptyset(&want);
	for (int i = 0; w->mask[i]; i++) sigaddset(&want, w->mask[i]);
	for (int s = 1; s <= SIGRTMAX; s++) {
		if (is_reserved(s) || s == SIGKILL || s == SIGSTOP) continue;
		if (sigismember(&old.sa_mask, s) != sigismember(&want, s)) {
			fail("signal %d (%s) sa_mask: signal %d is %s", sig, strsignal(sig), s,
			     sigismember(&want, s) ? "missing" : "extra");
			break;
		}
	}
	return strlen(failbuf) == before;
}

static void check_set(const char *what, const sigset_t *got, const sigset_t *want)
{
	for (int s = 1; s <= SIGRTMAX; s++) {
		if (is_reserved(s)) continue;
		if (sigismember(got, s) != sigismember(want, s))
			fail("%s: signal %d (%s) is %s", what, s, strsignal(s), sigismember(want, s) ? "missing" : "extra");
	}
}

int main(void)
{
	int rtsig = SIGRTMIN + 3;
	pid_t pid = getpid();

	/* alternate signal stack */
	alt_base = mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (alt_base == MAP_FAILED) die("mmap");
	stack_t ss = { .ss_sp = alt_base, .ss_size = ALT_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0) die("sigaltstack");

	install(SIGTERM, (void *)on_term, 0, (int[]){ SIGALRM, 0 });
	install(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, (int[]){ SIGINT, SIGQUIT, 0 });
	install(rtsig, (void *)on_rt, SA_SIGINFO | SA_RESTART, NULL);
	install(SIGHUP, (void *)on_hup, SA_NODEFER, (int[]){ SIGUSR2, SIGWINCH, 0 });
	install(SIGINT, (void *)on_int, SA_ONSTACK | SA_SIGINFO, (int[]){ SIGPIPE, 0 });
	install(SIGWINCH, (void *)on_winch, SA_RESETHAND | SA_RESTART, NULL);
	install(SIGALRM, (void *)on_alarm, SA_RESTART, NULL);
	install(SIGUSR2, (void *)SIG_IGN, 0, NULL);

	/* everything else to SIG_DFL, whatever the launcher left us with */
	for (int s = 1; s <= SIGRTMAX; s++) {
		int ours = 0;
		for (int i = 0; i < nwants; i++) if (wants[i].sig == s) ours = 1;
		if (ours || is_reserved(s) || s == SIGKILL || s == SIGSTOP) continue;
		struct sigaction dfl;
		memset(&dfl, 0, sizeof(dfl));
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		if (sigaction(s, &dfl, NULL) != 0) die("sigaction SIG_DFL");
	}

	/* blocked set, with pending signals */
	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, rtsig);
	sigaddset(&blocked, SIGXFSZ);
	if (sigprocmask(SIG_SETMASK, &blocked, NULL) != 0) die("sigprocmask");
	raise(SIGUSR1);
	raise(SIGUSR1);
	if (sigqueue(pid, rtsig, (union sigval){ .sival_int = RT_VAL1 }) != 0) die("sigqueue");
	if (sigqueue(pid, rtsig, (union sigval){ .sival_int = RT_VAL2 }) != 0) die("sigqueue");
	sigset_t want_pending;
	sigemptyset(&want_pending);
	sigaddset(&want_pending, SIGUSR1);
	sigaddset(&want_pending, rtsig);

	/* interval timer */
	struct itimerval it = { .it_interval = { 0, TICK_USEC }, .it_value = { 0, TICK_USEC } };
	if (setitimer(ITIMER_REAL, &it, NULL) != 0) die("setitimer");

	printf("READY\n");
	fflush(stdout);

	sigset_t wait_mask = blocked;           /* SIGTERM/SIGALRM open while waiting */
	sigset_t loop_mask = blocked;
	sigaddset(&loop_mask, SIGTERM);         /* closed while testing the flag */
	sigprocmask(SIG_SETMASK, &loop_mask, NULL);
	while (!got_term)
		sigsuspend(&wait_mask);
	sigprocmask(SIG_SETMASK, &blocked, NULL);
	int ticks_at_term = ticks;

	/* --- static state --- */
	if (getpid() != pid) fail("pid changed from %d to %d", (int)pid, (int)getpid());

	int disp_ok[SIGRTMAX + 1];
	for (int s = 1; s <= SIGRTMAX; s++)
		disp_ok[s] = !is_reserved(s) && s != SIGKILL && s != SIGSTOP && check_disposition(s);
	if (!disp_ok[SIGALRM]) {
		/* a lost SIGALRM handler would let the next tick kill us */
		sigaddset(&blocked, SIGALRM);
		sigprocmask(SIG_SETMASK, &blocked, NULL);
	}

	stack_t cur_ss;
	if (sigaltstack(NULL, &cur_ss) != 0) fail("sigaltstack read: %s", strerror(errno));
	else if (cur_ss.ss_sp != alt_base || cur_ss.ss_size != ALT_SIZE || cur_ss.ss_flags != 0)
		fail("sigaltstack is sp=%p size=%zu flags=%#x, want sp=%p size=%d flags=0",
		     cur_ss.ss_sp, cur_ss.ss_size, cur_ss.ss_flags, alt_base, ALT_SIZE);

	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	check_set("blocked mask", &cur, &blocked);
	sigset_t pend;
	sigpending(&pend);
	check_set("pending set", &pend, &want_pending);

	struct itimerval cur_it;
	if (getitimer(ITIMER_REAL, &cur_it) != 0) fail("getitimer: %s", strerror(errno));
	else {
		if (cur_it.it_interval.tv_sec != 0 || cur_it.it_interval.tv_usec != TICK_USEC)
			fail("ITIMER_REAL interval %ld.%06ld s, want 0.%06d s",
			     (long)cur_it.it_interval.tv_sec, (long)cur_it.it_interval.tv_usec, TICK_USEC);
		long long v = cur_it.it_value.tv_sec * 1000000LL + cur_it.it_value.tv_usec;
		if (v <= 0 || v > TICK_USEC)
			fail("ITIMER_REAL value %lld us, want 1..%d", v, TICK_USEC);
	}

	if (usr1_calls || rt_calls || hup_calls || int_calls)
		fail("handlers ran too early (usr1 %d, rt %d, hup %d, int %d)",
		     (int)usr1_calls, (int)rt_calls, (int)hup_calls, (int)int_calls);

	/* --- pending signals are delivered once unblocked ---
	 * (only where the handler is right: a default action would kill us
	 * before we could report) */
	sigset_t one;
	if (disp_ok[SIGUSR1]) {
		sigemptyset(&one);
		sigaddset(&one, SIGUSR1);
		sigprocmask(SIG_UNBLOCK, &one, NULL);
		if (usr1_calls != 1)
			fail("SIGUSR1 handler ran %d times after unblocking, want 1", (int)usr1_calls);
		else {
			if (usr1_signo != SIGUSR1) fail("SIGUSR1 si_signo %d", (int)usr1_signo);
			if (usr1_code != SI_TKILL) fail("SIGUSR1 si_code %d, want SI_TKILL (%d)", (int)usr1_code, SI_TKILL);
			if (usr1_pid != pid) fail("SIGUSR1 si_pid %d, want %d", (int)usr1_pid, (int)pid);
			if (usr1_uid != (sig_atomic_t)getuid()) fail("SIGUSR1 si_uid %d", (int)usr1_uid);
			if (!usr1_mask_ok) fail("SIGUSR1 handler ran without SIGINT/SIGQUIT/SIGUSR1 blocked");
		}
	}
	if (disp_ok[rtsig]) {
		sigemptyset(&one);
		sigaddset(&one, rtsig);
		sigprocmask(SIG_UNBLOCK, &one, NULL);
		if (rt_calls != 2)
			fail("SIGRTMIN+3 handler ran %d times, want 2", (int)rt_calls);
		else if (rt_values[0] != RT_VAL1 || rt_values[1] != RT_VAL2)
			fail("SIGRTMIN+3 values %#x, %#x, want %#x, %#x", rt_values[0], rt_values[1], RT_VAL1, RT_VAL2);
		if (rt_bad_code) fail("SIGRTMIN+3 si_code is not SI_QUEUE");
		if (rt_bad_pid) fail("SIGRTMIN+3 si_pid is not our pid");
	}
	if (disp_ok[SIGUSR1] && disp_ok[rtsig]) {
		sigpending(&pend);
		sigemptyset(&want_pending);
		check_set("pending set after unblocking", &pend, &want_pending);
	}

	/* --- the restored dispositions behave --- */
	if (disp_ok[SIGHUP]) {
		raise(SIGHUP);
		if (hup_calls != 1) fail("SIGHUP handler ran %d times", (int)hup_calls);
		else {
			if (hup_self_blocked) fail("SIGHUP blocked inside its SA_NODEFER handler");
			if (!hup_winch_blocked) fail("SIGHUP handler ran without its sa_mask (SIGUSR2, SIGWINCH) blocked");
		}
	}
	if (disp_ok[SIGINT]) {
		raise(SIGINT);
		if (int_calls != 1) fail("SIGINT handler ran %d times", (int)int_calls);
		else {
			if (!int_on_altstack)
				fail("SA_ONSTACK handler ran at %#lx, outside the altstack %p..+%d",
				     (unsigned long)int_local_addr, alt_base, ALT_SIZE);
			if (!int_flag_onstack) fail("sigaltstack() in the SA_ONSTACK handler did not report SS_ONSTACK");
		}
	}
	if (disp_ok[SIGUSR2])
		raise(SIGUSR2);   /* ignored: must not kill us */

	/* --- the timer keeps ticking --- */
	double deadline = now() + 3.0;
	while (disp_ok[SIGALRM] && ticks < ticks_at_term + 3 && now() < deadline) {
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	if (disp_ok[SIGALRM] && ticks < ticks_at_term + 3)
		fail("SIGALRM ticks went from %d to only %d in 3 s", ticks_at_term, (int)ticks);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
