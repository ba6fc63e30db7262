/*
 * aioring: a process with an AIO context (io_setup) whose ring is mapped
 * into it, used once before the dump (so its head and tail have moved).
 *
 * argv[1] is a scratch directory: DIR/aio.dat gets 8 KiB of a pattern.
 * Before READY one read of its first 4 KiB is submitted (io_submit) and
 * reaped (io_getevents). On SIGTERM: the context id is still the ring's
 * address and its header still says "AIO ring", with the head and tail it
 * had; a read of the second 4 KiB
 * through the same context completes with the right bytes and the caller's
 * data word; io_destroy succeeds. MAPPING ctx, READY, then PASS or
 * "FAIL: reasons". With "unreaped" as argv[2] it first moves the ring's
 * head and tail to 3 slots before its end (reads reaped at once), then
 * leaves 5 completed reads not reaped, which wrap around the ring's end; on
 * SIGTERM io_getevents must give those 5, in order, with their data words,
 * iocb pointers and results, before the read through the context is checked
 * as above.
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

/* The iocbs of the reads left unreaped: their events point at them. */
static struct iocb unreaped_cb[5];

static long read_once(aio_context_t ctx, int fd, long long offset, uint64_t data, int reap)
{
	static struct iocb reaped_cb;
	struct iocb *cbp = reap ? &reaped_cb : &unreaped_cb[data & 7];
	struct iocb cb;
	memset(&cb, 0, sizeof(cb));
	cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_fildes = (uint32_t)fd;
	cb.aio_buf = (uint64_t)(uintptr_t)buffer;
	cb.aio_nbytes = sizeof(buffer);
	cb.aio_offset = offset;
	cb.aio_data = data;
	*cbp = cb;
	struct iocb *list[1] = { cbp };
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
	if (argc < 2) { fprintf(stderr, "usage: aioring DIR [unreaped]\n"); return 2; }
	int unreaped = argc > 2 && strcmp(argv[2], "unreaped") == 0;
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
	const uint32_t *header = (const uint32_t *)(uintptr_t)ctx;
	/* Moves head and tail to 3 slots before the ring's end: the unreaped events wrap. */
	while (unreaped && !failbuf[0] && header[2] != header[1] - 3) read_once(ctx, fd, 0, 0x1111, 1);
	for (int i = 0; unreaped && i < 5; i++) read_once(ctx, fd, 512 * i, 0x2220 + (uint64_t)i, 0);
	/* Until they have all completed (a read of a page-cache file completes at once, mostly). */
	for (int i = 0; unreaped && i < 500 && (header[3] + header[1] - header[2]) % header[1] != 5; i++) usleep(10000);
	if (unreaped && (header[3] + header[1] - header[2]) % header[1] != 5) fail("the 5 reads did not complete");
	if (failbuf[0]) { printf("FAIL: before the dump: %s\n", failbuf); return 1; }
	uint32_t head_before = header[2], tail_before = header[3];
	printf("MAPPING %llx\n", (unsigned long long)ctx);
	ready_then_wait(&got_term);

	const uint32_t *ring = (const uint32_t *)(uintptr_t)ctx;
	if (ring[4] != 0xa10a10a1u) fail("the ring at %#llx has magic %#x", (unsigned long long)ctx, ring[4]);
	if (ring[2] != head_before || ring[3] != tail_before)
		fail("the ring's head and tail are %u and %u, were %u and %u", ring[2], ring[3], head_before, tail_before);
	if (unreaped) {
		struct io_event ev[8];
		struct timespec none = { 0, 0 };
		long n = syscall(SYS_io_getevents, ctx, 1, 8, ev, &none);
		if (n != 5) fail("io_getevents gave %ld events, want the 5 unreaped", n);
		for (long i = 0; i < n && i < 5; i++)
			if (ev[i].data != 0x2220 + (uint64_t)i || ev[i].obj != (uint64_t)(uintptr_t)&unreaped_cb[i] ||
			    ev[i].res != 4096 || ev[i].res2 != 0)
				fail("event %ld: data %#llx obj %#llx res %lld, want %#llx %p 4096", i, (unsigned long long)ev[i].data,
				     (unsigned long long)ev[i].obj, (long long)ev[i].res, 0x2220ULL + (unsigned long long)i, (void *)&unreaped_cb[i]);
	}
	read_once(ctx, fd, 4096, 0x3333, 1);
	if (syscall(SYS_io_destroy, ctx) != 0) fail("io_destroy: %s", strerror(errno));
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	fflush(stdout);
	return failbuf[0] ? 1 : 0;
}
