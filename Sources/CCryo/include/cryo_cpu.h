/* CPUID and XGETBV, which Swift cannot issue itself. */
#ifndef CRYO_CPU_H
#define CRYO_CPU_H

#include <stdint.h>

/* CPUID leaf `leaf`, sub-leaf `subleaf`: out = { eax, ebx, ecx, edx }. */
static inline void cryo_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(subleaf));
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
}

/* XCR0, the state components the kernel enabled; 0 where the OS has not
 * enabled XSAVE (CPUID.1:ECX.OSXSAVE clear), where XGETBV would fault. */
static inline uint64_t cryo_xcr0(void) {
    uint32_t regs[4];
    cryo_cpuid(1, 0, regs);
    if (!(regs[2] & (1u << 27))) return 0;
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

#endif
