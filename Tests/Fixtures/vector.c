/*
 * vector: AVX registers that hold live values while the process is stopped.
 *
 * The main thread loads ymm8..ymm15 with patterns of its own (where the CPU
 * has AVX-512 also zmm16..zmm31, whose every bit only the XSAVE area's
 * AVX-512 components hold, and the opmask registers k1..k7) and then spins
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
static uint8_t wide[16][64] __attribute__((aligned(64)));
static uint64_t masks[8];

static void on_term(int sig) { (void)sig; got_term = 1; }

/* Clobbering zmm16-31 and k0-k7 needs the compiler told the CPU has them. */
static void __attribute__((target("avx512f,avx512bw"), noinline)) spin_avx512(uint64_t *iterations, uint64_t *mismatches)
{
	__asm__ volatile(
		"vmovdqa 0(%[p]), %%ymm8\n\t"
		"vmovdqa 32(%[p]), %%ymm9\n\t"
		"vmovdqa 64(%[p]), %%ymm10\n\t"
		"vmovdqa 96(%[p]), %%ymm11\n\t"
		"vmovdqa 128(%[p]), %%ymm12\n\t"
		"vmovdqa 160(%[p]), %%ymm13\n\t"
		"vmovdqa 192(%[p]), %%ymm14\n\t"
		"vmovdqa 224(%[p]), %%ymm15\n\t"
#define LOADZ(n) "vmovdqa64 " #n "*64-1024(%[w]), %%zmm" #n "\n\t"
		LOADZ(16) LOADZ(17) LOADZ(18) LOADZ(19) LOADZ(20) LOADZ(21) LOADZ(22) LOADZ(23)
		LOADZ(24) LOADZ(25) LOADZ(26) LOADZ(27) LOADZ(28) LOADZ(29) LOADZ(30) LOADZ(31)
#define LOADK(n) "kmovq " #n "*8(%[m]), %%k" #n "\n\t"
		LOADK(1) LOADK(2) LOADK(3) LOADK(4) LOADK(5) LOADK(6) LOADK(7)
		"1:\n\t"
#define CHECKY(reg, off) \
		"vpcmpeqb " #off "(%[p]), %%" #reg ", %%ymm0\n\t" \
		"vpmovmskb %%ymm0, %%eax\n\t" \
		"cmp $-1, %%eax\n\t" \
		"je 2f\n\t" \
		"incq %[bad]\n\t" \
		"2:\n\t"
		CHECKY(ymm8, 0) CHECKY(ymm9, 32) CHECKY(ymm10, 64) CHECKY(ymm11, 96)
		CHECKY(ymm12, 128) CHECKY(ymm13, 160) CHECKY(ymm14, 192) CHECKY(ymm15, 224)
#define CHECKZ(n) \
		"vpcmpeqq " #n "*64-1024(%[w]), %%zmm" #n ", %%k0\n\t" \
		"kmovw %%k0, %%eax\n\t" \
		"cmp $0xff, %%eax\n\t" \
		"je 2f\n\t" \
		"incq %[bad]\n\t" \
		"2:\n\t"
		CHECKZ(16) CHECKZ(17) CHECKZ(18) CHECKZ(19) CHECKZ(20) CHECKZ(21) CHECKZ(22) CHECKZ(23)
		CHECKZ(24) CHECKZ(25) CHECKZ(26) CHECKZ(27) CHECKZ(28) CHECKZ(29) CHECKZ(30) CHECKZ(31)
#define CHECKK(n) \
		"kmovq %%k" #n ", %%rax\n\t" \
		"cmp " #n "*8(%[m]), %%rax\n\t" \
		"je 2f\n\t" \
		"incq %[bad]\n\t" \
		"2:\n\t"
		CHECKK(1) CHECKK(2) CHECKK(3) CHECKK(4) CHECKK(5) CHECKK(6) CHECKK(7)
		"incq %[n]\n\t"
		"cmpl $0, %[term]\n\t"
		"je 1b\n\t"
		"vzeroupper\n\t"
		: [n] "+m"(*iterations), [bad] "+m"(*mismatches)
		: [p] "r"(patterns), [w] "r"(wide), [m] "r"(masks), [term] "m"(got_term)
		: "rax", "xmm0", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
		  "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
		  "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
		  "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "memory", "cc");
}

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
	/* kmovq needs AVX512BW; with AVX512F alone the opmask registers are 16 bits. */
	int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
	printf("checking %s\n", avx512 ? "ymm8-15, zmm16-31, k1-k7" : "ymm8-15 (no AVX512F/BW here)");
	printf("READY\n");

	uint64_t iterations = 0, mismatches = 0;
	for (int r = 0; r < 16; r++)
		for (int i = 0; i < 64; i++) wide[r][i] = (uint8_t)(0x3b * (r + 1) + 13 * i + (i >> 5));
	for (int k = 1; k < 8; k++) masks[k] = 0x9e3779b97f4a7c15ull * (uint64_t)k ^ ((uint64_t)k << 59);
	if (avx512) spin_avx512(&iterations, &mismatches);
	else __asm__ volatile(
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
