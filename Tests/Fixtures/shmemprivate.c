/*
 * shmemprivate: a private mapping of a shared anonymous object. A program
 * maps MAP_SHARED|MAP_ANONYMOUS memory (O, 6 pages), opens the object
 * through /proc/self/map_files and maps it again MAP_PRIVATE from its
 * second page (P, 5 pages), then closes the descriptor. /proc shows P as
 * "/dev/zero (deleted)", like O, but private.
 *   P page 1 is written: a private copy, which later writes to O must not
 *            change.
 *   P page 0 is only read: it still follows O.
 *   P page 2 is never touched: it follows O as well.
 * After restore, O page 1 and O page 3 are written anew: P pages 0 and 2 must
 * show the new words, P page 1 its own. Restoring P as a private mapping of
 * anything but the object (a copy, /dev/zero) loses that link silently.
 * PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static uint32_t word(const char *base, int page) { return *(volatile const uint32_t *)(base + page * PAGE); }
static void set(char *base, int page, uint32_t value) { *(volatile uint32_t *)(base + page * PAGE) = value; }

int main(void) {
    signal(SIGTERM, on_term);
    char *object = mmap(NULL, 6 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (object == MAP_FAILED) { printf("FAIL: mmap shared: %m\n"); return 1; }
    for (int page = 0; page < 6; page++) set(object, page, 0x100 + page);

    char path[128];
    snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)object, (unsigned long)object + 6 * PAGE);
    int fd = open(path, O_RDWR);
    if (fd < 0) { printf("FAIL: open %s: %m\n", path); return 1; }
    char *priv = mmap(NULL, 5 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, PAGE);
    if (priv == MAP_FAILED) { printf("FAIL: mmap private: %m\n"); return 1; }
    close(fd);
    set(priv, 1, 0x222);                                  /* object page 2, copied */
    if (word(priv, 0) != 0x101) fail("before the dump, private page 0 reads %#x, want 0x101", word(priv, 0));

    ready_then_wait(&term);

    if (word(priv, 1) != 0x222) fail("private page 1 (written) reads %#x, want 0x222", word(priv, 1));
    if (word(priv, 0) != 0x101) fail("private page 0 (only read) reads %#x, want 0x101", word(priv, 0));
    if (word(priv, 2) != 0x103) fail("private page 2 (never touched) reads %#x, want the object's 0x103", word(priv, 2));
    if (word(object, 2) != 0x102) fail("object page 2 reads %#x, want 0x102 (the private copy leaked into it)", word(object, 2));
    set(object, 1, 0x555);
    set(object, 3, 0x444);
    set(object, 2, 0x333);
    if (word(priv, 0) != 0x555) fail("private page 0 does not follow the object: %#x after it was written 0x555", word(priv, 0));
    if (word(priv, 2) != 0x444) fail("private page 2 does not follow the object: %#x after it was written 0x444", word(priv, 2));
    if (word(priv, 1) != 0x222) fail("private page 1 changed with the object: %#x, want its own 0x222", word(priv, 1));
    if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
    return failbuf[0] ? 1 : 0;
}
