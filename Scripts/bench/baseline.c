/*
 * baseline: what the hardware does for a given amount of memory, measured
 * right before cryo dumps and restores that much, so that cryo's times can be
 * read against them.
 *
 *   baseline MIB DIR
 *
 * For MIB mebibytes it measures
 *   memcpy      copying between two already-touched buffers (best of 3),
 *   fresh touch mmap'ing anonymous memory and writing one byte per 4 KiB
 *               page, which is the page-fault and zeroing cost every restore
 *               has to pay at least once (best of 3, each on a new mapping),
 *   file write  creating a new file in DIR and pwrite'ing MIB of (touched)
 *               memory into it in 8 MiB chunks, no fsync, then unlinking it,
 *               which is roughly what writing the page image costs (best
 *               of 2),
 * and prints key=value lines (seconds, and GB/s with GB = 1e9 bytes).
 *
 * The first round of the fresh touch and of the file write is also printed
 * (*_first_s).  In a virtual machine it can be several times slower than the
 * later ones, because guest memory that has not been used for a while first
 * has to be backed by the host again; the best round is what a restore sees
 * when it reuses the memory the dumped process just gave back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/userfaultfd.h>
#include <time.h>
#include <unistd.h>

#define TOUCH_STRIDE 4096u
#define CHUNK        (8u << 20)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *map_anonymous(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) { perror("baseline: mmap"); exit(1); }
	return p;
}

/* Keep the compiler from dropping stores it thinks nobody reads. */
static void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: baseline MIB DIR\n");
		return 2;
	}
	char *end;
	unsigned long mib = strtoul(argv[1], &end, 10);
	if (*end || mib == 0) { fprintf(stderr, "baseline: bad size %s\n", argv[1]); return 2; }
	const char *dir = argv[2];
	size_t bytes = (size_t)mib << 20;

	/* Source buffer: touched and filled, not timed. */
	uint64_t *src = map_anonymous(bytes);
	for (size_t i = 0; i < bytes / 8; i++)
		src[i] = i * 0x9e3779b97f4a7c15ull + 1;

	/* (b) fresh touch: a new mapping every round */
	double touch_first_s = 0, touch_s = 1e30;
	for (int round = 0; round < 3; round++) {
		volatile uint8_t *fresh = map_anonymous(bytes);
		double t0 = now();
		for (size_t off = 0; off < bytes; off += TOUCH_STRIDE)
			fresh[off] = 1;
		double s = now() - t0;
		escape((void *)fresh);
		munmap((void *)fresh, bytes);
		if (round == 0) touch_first_s = s;
		if (s < touch_s) touch_s = s;
	}

	/* (a) memcpy between touched buffers */
	uint8_t *dst = map_anonymous(bytes);
	memset(dst, 0x5a, bytes);
	double copy_s = 1e30;
	for (int round = 0; round < 3; round++) {
		double t0 = now();
		memcpy(dst, src, bytes);
		escape(dst);
		double s = now() - t0;
		if (s < copy_s) copy_s = s;
	}
	munmap(dst, bytes);

	/* (c) file write: a new file every round */
	double write_first_s = 0, write_s = 1e30;
	for (int round = 0; round < 2; round++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/baseline-%d-%d.tmp", dir, (int)getpid(), round);
		double t0 = now();
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0) { fprintf(stderr, "baseline: open %s: %s\n", path, strerror(errno)); return 1; }
		const char *from = (const char *)src;
		for (size_t off = 0; off < bytes;) {
			size_t want = bytes - off < CHUNK ? bytes - off : CHUNK;
			ssize_t n = pwrite(fd, from + off, want, (off_t)off);
			if (n < 0) {
				if (errno == EINTR) continue;
				fprintf(stderr, "baseline: pwrite %s: %s\n", path, strerror(errno));
				unlink(path);
				return 1;
			}
			off += (size_t)n;
		}
		if (close(fd) != 0) {
			fprintf(stderr, "baseline: close %s: %s\n", path, strerror(errno));
			unlink(path);
			return 1;
		}
		double s = now() - t0;
		unlink(path);
		if (round == 0) write_first_s = s;
		if (s < write_s) write_s = s;
	}
	/* (d) UFFDIO_COPY into fresh memory registered with a userfaultfd, in 256 KiB
	 * pieces: what a restore through userfaultfd can at best do (best of 2). */
	double uffd_s = -1;
	for (int round = 0; round < 2; round++) {
		int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		if (uffd < 0) break;
		struct uffdio_api api = { .api = UFFD_API };
		uint8_t *target = map_anonymous(bytes);
		struct uffdio_register reg = { .range = { (uintptr_t)target, bytes }, .mode = UFFDIO_REGISTER_MODE_MISSING };
		if (ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) { close(uffd); munmap(target, bytes); break; }
		double t0 = now();
		for (size_t off = 0; off < bytes; off += 256 << 10) {
			size_t want = bytes - off < (256 << 10) ? bytes - off : (256 << 10);
			struct uffdio_copy copy = { .dst = (uintptr_t)target + off, .src = (uintptr_t)src + off, .len = want };
			if (ioctl(uffd, UFFDIO_COPY, &copy)) { fprintf(stderr, "baseline: UFFDIO_COPY: %s\n", strerror(errno)); return 1; }
		}
		double s = now() - t0;
		close(uffd);
		munmap(target, bytes);
		if (uffd_s < 0 || s < uffd_s) uffd_s = s;
	}
	munmap(src, bytes);

	double gb = (double)bytes / 1e9;
	printf("mib=%lu\n", mib);
	printf("bytes=%zu\n", bytes);
	printf("memcpy_s=%.6f\n", copy_s);
	printf("memcpy_gbps=%.3f\n", gb / copy_s);
	printf("fresh_touch_s=%.6f\n", touch_s);
	printf("fresh_touch_gbps=%.3f\n", gb / touch_s);
	printf("fresh_touch_first_s=%.6f\n", touch_first_s);
	printf("file_write_s=%.6f\n", write_s);
	printf("file_write_gbps=%.3f\n", gb / write_s);
	printf("file_write_first_s=%.6f\n", write_first_s);
	printf("uffd_copy_s=%.6f\n", uffd_s);
	return 0;
}
