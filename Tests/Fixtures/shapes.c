/*
 * shapes: memory and descriptors laid out the way real programs have them,
 * for Scripts/bench.sh (and tests) to dump and restore.
 *
 *   shapes holes MIB   MIB of anonymous memory, every 4th page never touched:
 *                      a fragmented heap, MIB*64 runs of 3 pages
 *   shapes half MIB    MIB of anonymous memory, a pseudo-random half of the
 *                      pages touched (fixed seed)
 *   shapes maps N      N mappings of 4 pages (2 written), protections cycling
 *                      r, rw, rx, none, each followed by an unmapped page
 *   shapes fds N       N descriptors of 16 regular files in a scratch folder
 *                      (argv[3], default /var/tmp), each its own open file
 *                      description at offset = its number
 *
 * Memory pages hold words derived from their page number. The memory is
 * MADV_NOHUGEPAGE so that untouched pages stay untouched. SIGUSR1 rewrites
 * the first 3 touched pages with a new generation ("REWROTE <n>", for
 * pre-copy); SIGUSR2 answers "PONG" (is it running?). "MAP <hex> <bytes>"
 * and "READY" are printed once set up.
 *
 * On SIGTERM: every written word holds its value, every untouched page is
 * not resident and reads as zeros, every mapping has its protection, every
 * descriptor its file and offset. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, got_usr1;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }
static void on_usr2(int sig) { (void)sig; (void)!write(1, "PONG\n", 5); }

enum { PAGE = 4096, WORDS = PAGE / 8, FILES = 16 };
static uint64_t generation;
static size_t rewritten[3];  /* pages SIGUSR1 rewrites */

static inline uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t word(size_t page, size_t w)
{
	uint64_t v = mix(page) + w * 0xd1342543de82ef95ull;
	for (int i = 0; i < 3; i++)
		if (generation && rewritten[i] == page) v ^= generation * 0x9e3779b97f4a7c15ull;
	return v;
}

static void fill(uint64_t *page, size_t number)
{
	for (size_t w = 0; w < WORDS; w++) page[w] = word(number, w);
}

/* A written page that does not hold its words, or an untouched one that is resident or not zero. */
static size_t check_page(const unsigned char *page, size_t number, int touched, unsigned char resident)
{
	const uint64_t *words = (const uint64_t *)page;
	if (touched) {
		for (size_t w = 0; w < WORDS; w++)
			if (words[w] != word(number, w)) return 1;
		return 0;
	}
	if (resident & 1) return 1;
	for (size_t w = 0; w < WORDS; w++)
		if (words[w]) return 1;
	return 0;
}

static const int protections[4] = { PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC, PROT_NONE };

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: shapes holes|half MIB | maps N | fds N [dir]\n"); return 2; }
	const char *shape = argv[1];
	char *end;
	unsigned long n = strtoul(argv[2], &end, 10);
	if (*end || n < 1) { fprintf(stderr, "bad number %s\n", argv[2]); return 2; }

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);

	int holes = !strcmp(shape, "holes"), half = !strcmp(shape, "half");
	int maps = !strcmp(shape, "maps"), fds = !strcmp(shape, "fds");
	if (!holes && !half && !maps && !fds) { fprintf(stderr, "bad shape %s\n", shape); return 2; }

	unsigned char *memory = NULL;
	size_t pages = 0, slot = 5;  /* maps: 4 pages mapped, 1 not */
	char dir[4096] = "";
	int first_fd = -1;
	if (holes || half) {
		pages = n * 256;
		memory = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (memory == MAP_FAILED) { perror("mmap"); return 1; }
		madvise(memory, pages * PAGE, MADV_NOHUGEPAGE);
	} else if (maps) {
		pages = n * slot;
		memory = mmap(NULL, pages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (memory == MAP_FAILED) { perror("mmap"); return 1; }
		munmap(memory, pages * PAGE);
		for (size_t i = 0; i < n; i++) {
			unsigned char *m = mmap(memory + i * slot * PAGE, 4 * PAGE, PROT_READ | PROT_WRITE,
						MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (m == MAP_FAILED) { perror("mmap"); return 1; }
			fill((uint64_t *)m, i * slot);
			fill((uint64_t *)(m + 2 * PAGE), i * slot + 2);
			if (mprotect(m, 4 * PAGE, protections[i % 4])) { perror("mprotect"); return 1; }
		}
	} else {
		struct rlimit limit;
		getrlimit(RLIMIT_NOFILE, &limit);
		limit.rlim_cur = limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &limit) || limit.rlim_cur < n + 64) { fprintf(stderr, "RLIMIT_NOFILE below %lu\n", n + 64); return 1; }
		snprintf(dir, sizeof(dir), "%s/shapes-fds.XXXXXX", argc > 3 ? argv[3] : "/var/tmp");
		if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
		for (int f = 0; f < FILES; f++) {
			char path[4200];
			snprintf(path, sizeof(path), "%s/f%d", dir, f);
			int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
			if (fd < 0 || ftruncate(fd, 65536)) { perror("open"); return 1; }
			close(fd);
		}
		first_fd = 10;
		for (unsigned long i = 0; i < n; i++) {
			char path[4200];
			snprintf(path, sizeof(path), "%s/f%lu", dir, i % FILES);
			int fd = open(path, (i % 3 == 0 ? O_RDONLY : O_RDWR));
			if (fd < 0 || dup2(fd, first_fd + (int)i) < 0) { perror("open"); return 1; }
			if (fd != first_fd + (int)i) close(fd);
			lseek(first_fd + (int)i, (off_t)i, SEEK_SET);
		}
	}

	/* holes: pages 0, 1, 2 of every 4; half: those whose mix() is odd */
	#define TOUCHED(p) (holes ? (p) % 4 != 3 : (mix((p) ^ 0x5eed) & 1))
	size_t touched = 0;
	if (holes || half) {
		for (size_t p = 0; p < pages; p++)
			if (TOUCHED(p)) {
				if (touched < 3) rewritten[touched] = p;
				fill((uint64_t *)(memory + p * PAGE), p);
				touched++;
			}
	} else if (maps) {
		for (int i = 0; i < 3; i++) rewritten[i] = (size_t)-1;  /* maps and fds rewrite nothing */
	}

	printf("MAP %lx %zu\n", (unsigned long)memory, pages * PAGE);
	printf("READY\n");
	fflush(stdout);

	sigset_t block, empty;
	sigemptyset(&empty);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	while (!got_term) {
		sigsuspend(&empty);
		if (got_usr1) {
			got_usr1 = 0;
			generation++;
			if (holes || half)
				for (int i = 0; i < 3; i++) fill((uint64_t *)(memory + rewritten[i] * PAGE), rewritten[i]);
			printf("REWROTE %llu\n", (unsigned long long)generation);
			fflush(stdout);
		}
	}

	if (holes || half) {
		unsigned char *resident = malloc(pages);
		if (!resident || mincore(memory, pages * PAGE, resident)) { fail("mincore: %s", strerror(errno)); pages = 0; }
		size_t bad = 0, first_bad = 0;
		for (size_t p = 0; p < pages; p++)
			if (check_page(memory + p * PAGE, p, TOUCHED(p), resident[p]) && !bad++) first_bad = p;
		if (bad) fail("%zu of %zu pages wrong (first: page %zu, %s)", bad, pages, first_bad, TOUCHED(first_bad) ? "written" : "never touched");
	} else if (maps) {
		FILE *f = fopen("/proc/self/maps", "r");
		char line[512];
		size_t found = 0, bad = 0;
		while (f && fgets(line, sizeof(line), f)) {
			unsigned long start, stop;
			char perms[5];
			if (sscanf(line, "%lx-%lx %4s", &start, &stop, perms) != 3) continue;
			if (start < (unsigned long)memory || start >= (unsigned long)(memory + pages * PAGE)) continue;
			size_t i = (start - (unsigned long)memory) / PAGE / slot;
			int prot = protections[i % 4];
			int want_r = !!(prot & PROT_READ), want_w = !!(prot & PROT_WRITE), want_x = !!(prot & PROT_EXEC);
			if (start != (unsigned long)(memory + i * slot * PAGE) || stop != start + 4 * PAGE
			    || (perms[0] == 'r') != want_r || (perms[1] == 'w') != want_w || (perms[2] == 'x') != want_x) {
				if (!bad++) fail("mapping %lx-%lx %s is not as made", start, stop, perms);
			}
			found++;
		}
		if (f) fclose(f);
		if (found != n) fail("%zu of %lu mappings found", found, n);
		for (size_t i = 0; i < n; i++) {
			unsigned char *m = memory + i * slot * PAGE;
			unsigned char resident[4];
			mprotect(m, 4 * PAGE, PROT_READ);
			if (mincore(m, 4 * PAGE, resident)) { fail("mincore: %s", strerror(errno)); break; }
			for (size_t p = 0; p < 4; p++)
				if (check_page(m + p * PAGE, i * slot + p, p % 2 == 0, resident[p])) { if (!bad++) fail("mapping %zu page %zu wrong", i, p); }
		}
	} else {
		struct stat files[FILES];
		for (int f = 0; f < FILES; f++) {
			char path[4200];
			snprintf(path, sizeof(path), "%s/f%d", dir, f);
			if (stat(path, &files[f])) fail("%s: %s", path, strerror(errno));
		}
		size_t bad = 0;
		for (unsigned long i = 0; i < n; i++) {
			int fd = first_fd + (int)i;
			struct stat st;
			int flags = fcntl(fd, F_GETFL);
			if (fstat(fd, &st) || st.st_ino != files[i % FILES].st_ino || lseek(fd, 0, SEEK_CUR) != (off_t)i
			    || (flags & O_ACCMODE) != (i % 3 == 0 ? O_RDONLY : O_RDWR)) {
				if (!bad++) fail("fd %d is not file f%lu at offset %lu", fd, i % FILES, i);
			}
		}
		if (fcntl(first_fd + (int)n, F_GETFD) != -1) fail("fd %d is open", first_fd + (int)n);
		for (int f = 0; f < FILES; f++) {
			char path[4200];
			snprintf(path, sizeof(path), "%s/f%d", dir, f);
			unlink(path);
		}
		rmdir(dir);
	}
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
