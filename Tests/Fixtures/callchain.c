/*
 * callchain: a known call stack for `cryo bt`.
 *
 * main -> level_one -> level_two -> level_three; level_three prints READY
 * and waits in sigsuspend() until SIGTERM arrives, so while it waits the
 * main thread's stack holds exactly that chain under the libc wrapper.
 * Every level is noinline and does arithmetic with its callee's result
 * after the call returns, so no call can become a tail call (which would
 * drop the caller's frame). Built -O1 -g -fno-omit-frame-pointer.
 *
 * On SIGTERM the chain returns and main checks the value computed on the
 * way back up, then prints PASS (or FAIL and why).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t got_term;

static void on_term(int sig) { (void)sig; got_term = 1; }

int level_three(int seed);
int level_two(int seed);
int level_one(int seed);

/* Opaque to the optimiser, so the results cannot be folded at compile time. */
static volatile int base = 5;

__attribute__((noinline)) int level_three(int seed)
{
	sigset_t wait_mask;
	sigemptyset(&wait_mask);
	printf("READY\n");
	fflush(stdout);
	while (!got_term)
		sigsuspend(&wait_mask);   /* SIGTERM is blocked outside this call */
	return seed * 3 + base;
}

__attribute__((noinline)) int level_two(int seed)
{
	int r = level_three(seed + 1);
	return r * 2 + seed;
}

__attribute__((noinline)) int level_one(int seed)
{
	int r = level_two(seed + 1);
	return r * 5 - seed;
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) {
		printf("FAIL sigaction\n");
		return 1;
	}
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);

	int seed = base;
	int got = level_one(seed);
	/* level_three(seed + 2) = 3 * (seed + 2) + base, then level_two and level_one. */
	int expected = ((3 * (seed + 2) + base) * 2 + (seed + 1)) * 5 - seed;
	if (got != expected) {
		printf("FAIL level_one returned %d, expected %d\n", got, expected);
		return 1;
	}
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
