/*
 * vector: AVX registers that hold live values while the process is stopped.
 *
 * The main thread loads ymm8..ymm15 with patterns of its own and then spins
 * in a loop of pure instructions (no calls, no syscalls) that compares each
 * register with its pattern, counting mismatches and iterations. A dump or a
 * kill of cryo stops it in the middle of that loop, so the full registers,
 * upper halves included, must come back exactly. On SIGTERM (its handler only
 * sets a flag) the loop ends: PASS if it kept running and no register ever
 * differed from its pattern.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "fixture.h"

static volatile int got_term;
static uint8_t patterns[8][32] __attribute__((aligned(32)));

static void on_term(int sig) { (void)sig; got_term = 1; }

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("avx2")) {
		printf("READY\n");
		while (!got_term) pause();
		printf("PASS\n");   /* nothing to check without AVX2 */
		return 0;
	}
	for (int r = 0; r < 8; r++)
		for (int i = 0; i < 32; i++) patterns[r][i] = (uint8_t)(0x11 * (r + 1) + 7 * i);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	printf("READY\n");

	uint64_t iterations = 0, mismatches = 0;
	__asm__ volatile(
		"vmovdqa 0(%[p]), %%ymm8\n\t"
		"vmovdqa 32(%[p]), %%ymm9\n\t"
		"vmovdqa 64(%[p]), %%ymm10\n\t"
		"vmovdqa 96(%[p]), %%ymm11\n\t"
		"vmovdqa 128(%[p]), %%ymm12\n\t"
		"vmovdqa 160(%[p]), %%ymm13\n\t"
		"vmovdqa 192(%[p]), %%ymm14\n\t"
		"vmovdqa 224(%[p]), %%ymm15\n\t"
		"1:\n\t"
#define CHECK(reg, off) \
		"vpcmpeqb " #off "(%[p]), %%" #reg ", %%ymm0\n\t" \
		"vpmovmskb %%ymm0, %%eax\n\t" \
		"cmp $-1, %%eax\n\t" \
		"je 2f\n\t" \
		"incq %[bad]\n\t" \
		"2:\n\t"
		CHECK(ymm8, 0) CHECK(ymm9, 32) CHECK(ymm10, 64) CHECK(ymm11, 96)
		CHECK(ymm12, 128) CHECK(ymm13, 160) CHECK(ymm14, 192) CHECK(ymm15, 224)
		"incq %[n]\n\t"
		"cmpl $0, %[term]\n\t"
		"je 1b\n\t"
		"vzeroupper\n\t"
		: [n] "+m"(iterations), [bad] "+m"(mismatches)
		: [p] "r"(patterns), [term] "m"(got_term)
		: "rax", "xmm0", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");

	if (mismatches) fail("%llu of %llu checks found a vector register changed", (unsigned long long)mismatches, (unsigned long long)iterations);
	if (iterations < 1000) fail("the loop ran only %llu times", (unsigned long long)iterations);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
