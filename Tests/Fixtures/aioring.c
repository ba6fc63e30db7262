/*
 * aioring: a process with an AIO context (io_setup), whose ring is mapped
 * into it.  cryo refuses it; on SIGTERM the context must still work
 * (io_destroy succeeds), showing the refused dump left it untouched.
 */
#define _GNU_SOURCE
#include <linux/aio_abi.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

int main(void)
{
	signal(SIGTERM, on_term);
	aio_context_t ctx = 0;
	if (syscall(SYS_io_setup, 16, &ctx) != 0) { printf("FAIL: io_setup: %s\n", strerror(errno)); return 1; }
	printf("MAPPING %llx\n", (unsigned long long)ctx);
	printf("READY\n");
	fflush(stdout);
	while (!got_term) pause();
	if (syscall(SYS_io_destroy, ctx) != 0) fail("io_destroy: %s", strerror(errno));
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
