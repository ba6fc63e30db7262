/*
 * rseqcs: a thread that spends its time inside an rseq critical section.
 *
 * The thread uses glibc's rseq area: it points rseq_cs at a section whose
 * body loops forever and whose abort handler counts, points rseq_cs at the
 * section again and goes back in. The main thread sends it a signal every
 * few milliseconds: each delivery inside the section makes the kernel move
 * the thread to the abort handler. So the thread is almost always inside the
 * section when the tree is frozen. After restore it must still be aborted by
 * each signal: a thread left in the middle of the section with rseq_cs
 * cleared would loop on and never count again.
 * Prints NORSEQ and exits when glibc registered no rseq area.
 * On SIGTERM: PASS when 20 more signals bring at least 10 more aborts.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/rseq.h>
#include <unistd.h>
#include "fixture.h"

static volatile uint64_t aborts;
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_nudge(int sig) { (void)sig; }

static void *spin(void *unused)
{
	(void)unused;
	char *area = (char *)__builtin_thread_pointer() + __rseq_offset;
	__asm__ volatile(
		".pushsection .data.rseqcs, \"aw\"\n"
		".balign 32\n"
		"6: .long 0, 0\n"
		".quad 3f, 4f - 3f, 5f\n"
		".popsection\n"
		"2: leaq 6b(%%rip), %%rax\n"
		"movq %%rax, 8(%[area])\n"      /* struct rseq's rseq_cs */
		"3: jmp 3b\n"                   /* the section: start_ip */
		"4:\n"                          /* its end (never reached) */
		".long 0x53053053\n"            /* RSEQ_SIG before the abort handler */
		"5: lock incq %[aborts]\n"
		"jmp 2b\n"
		: [aborts] "+m"(aborts)
		: [area] "r"(area)
		: "rax", "memory", "cc");
	return NULL;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (__rseq_size == 0) { printf("NORSEQ glibc registered no rseq area\n"); return 0; }
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_nudge;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	pthread_t thread;
	if (pthread_create(&thread, NULL, spin, NULL) != 0) { printf("setup: pthread_create failed\n"); return 2; }
	/* It is in the section once the first nudge aborted it. */
	while (aborts == 0) { pthread_kill(thread, SIGUSR1); usleep(1000); }
	printf("READY\n");
	while (!got_term) { pthread_kill(thread, SIGUSR1); usleep(5000); }
	uint64_t before = aborts;
	for (int i = 0; i < 20; i++) { pthread_kill(thread, SIGUSR1); usleep(5000); }
	uint64_t gained = aborts - before;
	if (gained < 10) {
		printf("FAIL: 20 signals aborted the section %llu times (want at least 10): the thread runs on in it unaborted\n",
		       (unsigned long long)gained);
		return 1;
	}
	printf("PASS\n");
	return 0;
}
