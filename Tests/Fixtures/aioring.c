/*
 * aioring: a process with an AIO context (io_setup) whose ring is mapped
 * into it, used once before the dump (so its head and tail have moved).
 *
 * argv[1] is a scratch directory: DIR/aio.dat gets 8 KiB of a pattern.
 * Before READY one read of its first 4 KiB is submitted (io_submit) and
 * reaped (io_getevents). On SIGTERM: the context id is still the ring's
 * address and its header still says "AIO ring"; a read of the second 4 KiB
 * through the same context completes with the right bytes and the caller's
 * data word; io_destroy succeeds. MAPPING ctx, READY, then PASS or
 * "FAIL: reasons". With "refuse" as argv[2] it leaves one completed event
 * unread (a dump must refuse that) and on SIGTERM only checks it is there.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static char buffer[4096] __attribute__((aligned(4096)));

static unsigned char pattern(size_t i) { return (unsigned char)(i * 131 + 7); }

static long read_once(aio_context_t ctx, int fd, long long offset, uint64_t data, int reap)
{
	struct iocb cb;
	memset(&cb, 0, sizeof(cb));
	cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_fildes = (uint32_t)fd;
	cb.aio_buf = (uint64_t)(uintptr_t)buffer;
	cb.aio_nbytes = sizeof(buffer);
	cb.aio_offset = offset;
	cb.aio_data = data;
	struct iocb *list[1] = { &cb };
	memset(buffer, 0, sizeof(buffer));
	long n = syscall(SYS_io_submit, ctx, 1, list);
	if (n != 1) { fail("io_submit: %ld (%s)", n, strerror(errno)); return -1; }
	if (!reap) return 0;
	struct io_event ev;
	struct timespec wait = { 5, 0 };
	n = syscall(SYS_io_getevents, ctx, 1, 1, &ev, &wait);
	if (n != 1) { fail("io_getevents: %ld (%s)", n, strerror(errno)); return -1; }
	if (ev.data != data) fail("event data %#llx, want %#llx", (unsigned long long)ev.data, (unsigned long long)data);
	if (ev.res != (long long)sizeof(buffer)) fail("event res %lld, want %zu", (long long)ev.res, sizeof(buffer));
	for (size_t i = 0; i < sizeof(buffer); i++)
		if ((unsigned char)buffer[i] != pattern((size_t)offset + i)) { fail("byte %zu read at %lld is wrong", i, offset); break; }
	return ev.res;
}

int main(int argc, char **argv)
{
	if (argc < 2) { fprintf(stderr, "usage: aioring DIR [refuse]\n"); return 2; }
	int refuse = argc > 2 && strcmp(argv[2], "refuse") == 0;
	signal(SIGTERM, on_term);
	char path[4096];
	snprintf(path, sizeof(path), "%s/aio.dat", argv[1]);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) { printf("FAIL: open %s: %s\n", path, strerror(errno)); return 1; }
	unsigned char data[8192];
	for (size_t i = 0; i < sizeof(data); i++) data[i] = pattern(i);
	if (write(fd, data, sizeof(data)) != (ssize_t)sizeof(data)) { printf("FAIL: write: %s\n", strerror(errno)); return 1; }

	aio_context_t ctx = 0;
	if (syscall(SYS_io_setup, 16, &ctx) != 0) { printf("FAIL: io_setup: %s\n", strerror(errno)); return 1; }
	read_once(ctx, fd, 0, 0x1111, 1);
	if (refuse) read_once(ctx, fd, 0, 0x2222, 0);
	if (failbuf[0]) { printf("FAIL: before the dump: %s\n", failbuf); return 1; }
	printf("MAPPING %llx\n", (unsigned long long)ctx);
	ready_then_wait(&got_term);

	const uint32_t *ring = (const uint32_t *)(uintptr_t)ctx;
	if (ring[4] != 0xa10a10a1u) fail("the ring at %#llx has magic %#x", (unsigned long long)ctx, ring[4]);
	if (refuse) {
		struct io_event ev;
		struct timespec none = { 0, 0 };
		long n = syscall(SYS_io_getevents, ctx, 1, 1, &ev, &none);
		if (n != 1 || ev.data != 0x2222) fail("the unread event is gone (io_getevents: %ld)", n);
	} else {
		read_once(ctx, fd, 4096, 0x3333, 1);
	}
	if (syscall(SYS_io_destroy, ctx) != 0) fail("io_destroy: %s", strerror(errno));
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
