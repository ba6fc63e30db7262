/*
 * memstate: memory whose state is more than its bytes, across checkpoint/restore.
 *
 *   - one page each with data, then made PROT_NONE, PROT_WRITE only,
 *     PROT_EXEC only and PROT_READ only: protection and data must come back
 *     (the PROT_NONE page is opened again to be read)
 *   - 3000 one-page mappings with data, protections cycling r, rw, none so
 *     that none merges with its neighbour
 *   - madvise: MADV_DONTFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
 *     MADV_WIPEONFORK, MADV_SEQUENTIAL, MADV_RANDOM each on a region with
 *     data: VmFlags dc, dd, hg, nh, wf, sr, rr
 *     in /proc/self/smaps after restore, and a fork after restore must not
 *     see the DONTFORK region and must see the WIPEONFORK one zeroed
 *   - prctl(PR_SET_THP_DISABLE): PR_GET_THP_DISABLE still says so
 *   - MAP_SHARED and PROT_READ from a read-write descriptor (closed since):
 *     a file in /tmp, the same file unlinked, a memfd, and a System V
 *     segment attached read-write then made read-only. mprotect(PROT_WRITE)
 *     must work after restore (VM_MAYWRITE, VmFlags mw) and a write must
 *     reach the object; from a read-only descriptor it must still fail
 *     ("MAYWRITE path" names the file)
 *   - MAP_DROPPABLE (Linux 6.11) with data: droppable after restore (VmFlags
 *     dp) and empty, as if the kernel had dropped it ("NOTE" without it);
 *     a process left running (dump --leave-running) keeps the bytes
 * READY, then on SIGTERM the checks: PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define SMALL 3000

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static uint32_t word(int tag, size_t i) { return (uint32_t)tag * 0x9e3779b1u ^ (uint32_t)i; }

static void fill(char *p, size_t bytes, int tag)
{
	for (size_t i = 0; i < bytes / 4; i++) ((uint32_t *)p)[i] = word(tag, i);
}

static int holds(const char *p, size_t bytes, int tag)
{
	for (size_t i = 0; i < bytes / 4; i++)
		if (((const uint32_t *)p)[i] != word(tag, i)) return 0;
	return 1;
}

static char *map(size_t bytes, size_t align)
{
	char *p = mmap(NULL, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) die("mmap");
	if (align) {
		char *aligned = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
		if (aligned > p) munmap(p, (size_t)(aligned - p));
		munmap(aligned + bytes, (size_t)(p + align - aligned));
		p = aligned;
	}
	return p;
}

/* A shared mapping of `fd` (closed here), PROT_READ, holding `tag`'s words. */
static char *shared_read_only(int fd, int tag)
{
	char page[PAGE];
	fill(page, PAGE, tag);
	if (pwrite(fd, page, PAGE, 0) != PAGE) die("pwrite");
	char *p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) die("mmap shared");
	close(fd);
	return p;
}

/* After restore: the mapping may be made writable, and a write through it reaches the object behind it. */
static void expect_may_write(const char *name, char *p, int tag)
{
	char perms[5], flags[512];
	vma_info(p, perms, flags, sizeof(flags));
	if (!has_flag(flags, "mw")) fail("%s: VmFlags \"%s\" lack mw", name, flags);
	if (!holds(p, PAGE, tag)) fail("%s: its data was lost", name);
	if (mprotect(p, PAGE, PROT_READ | PROT_WRITE) != 0) { fail("%s: mprotect(PROT_WRITE): %s", name, strerror(errno)); return; }
	p[1] = 'w';
}

static void expect_perms(const char *name, const void *p, const char *want)
{
	char perms[5], flags[512];
	vma_info(p, perms, flags, sizeof(flags));
	if (strcmp(perms, want) != 0) fail("%s: permissions %s, want %s", name, perms, want);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGTERM, on_term);

	struct { const char *name; int prot; const char *perms; char *p; } prots[] = {
		{ "PROT_NONE page", PROT_NONE, "---p", NULL },
		{ "PROT_WRITE page", PROT_WRITE, "-w-p", NULL },
		{ "PROT_EXEC page", PROT_EXEC, "--xp", NULL },
		{ "PROT_READ page", PROT_READ, "r--p", NULL },
	};
	for (int i = 0; i < 4; i++) {
		prots[i].p = map(PAGE, 0);
		fill(prots[i].p, PAGE, 10 + i);
		if (mprotect(prots[i].p, PAGE, prots[i].prot) != 0) die("mprotect");
	}

	/* Reserved as one range, then remapped page by page so they sit side by side. */
	char *small = map((size_t)SMALL * PAGE, 0);
	static const int cycle[] = { PROT_READ, PROT_READ | PROT_WRITE, PROT_NONE };
	for (int i = 0; i < SMALL; i++) {
		char *p = small + (size_t)i * PAGE;
		fill(p, PAGE, 100 + i);
		if (mprotect(p, PAGE, cycle[i % 3]) != 0) die("mprotect small");
	}

	struct { const char *name; int advice; const char *flag; size_t bytes; size_t align; char *p; } advised[] = {
		{ "MADV_DONTFORK", MADV_DONTFORK, "dc", 4 * PAGE, 0, NULL },
		{ "MADV_DONTDUMP", MADV_DONTDUMP, "dd", 4 * PAGE, 0, NULL },
		{ "MADV_HUGEPAGE", MADV_HUGEPAGE, "hg", 2 << 20, 2 << 20, NULL },
		{ "MADV_NOHUGEPAGE", MADV_NOHUGEPAGE, "nh", 4 * PAGE, 0, NULL },
		{ "MADV_WIPEONFORK", MADV_WIPEONFORK, "wf", 4 * PAGE, 0, NULL },
		{ "MADV_SEQUENTIAL", MADV_SEQUENTIAL, "sr", 4 * PAGE, 0, NULL },
		{ "MADV_RANDOM", MADV_RANDOM, "rr", 4 * PAGE, 0, NULL },
	};
	const int advised_count = (int)(sizeof(advised) / sizeof(advised[0]));
	for (int i = 0; i < advised_count; i++) {
		advised[i].p = map(advised[i].bytes, advised[i].align);
		if (madvise(advised[i].p, advised[i].bytes, advised[i].advice) != 0) die(advised[i].name);
		fill(advised[i].p, advised[i].bytes, 50 + i);
	}
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) die("PR_SET_THP_DISABLE");

	char path[] = "/tmp/cryo-memstate-XXXXXX", ghost_path[] = "/tmp/cryo-memstate-ghost-XXXXXX";
	int file_fd = mkstemp(path), ghost_fd = mkstemp(ghost_path);
	if (file_fd < 0 || ghost_fd < 0) die("mkstemp");
	int file_check = open(path, O_RDONLY);
	char *file_map = shared_read_only(file_fd, 200);
	int read_only_fd = open(path, O_RDONLY);
	if (file_check < 0 || read_only_fd < 0) die("open read-only");
	char *read_only_map = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, read_only_fd, 0);
	if (read_only_map == MAP_FAILED) die("mmap read-only");
	close(read_only_fd);
	char *ghost_map = shared_read_only(ghost_fd, 201);
	if (unlink(ghost_path) != 0) die("unlink");
	int memfd = memfd_create("memstate-maywrite", 0);
	if (memfd < 0 || ftruncate(memfd, PAGE) != 0) die("memfd_create");
	int memfd_check = dup(memfd);
	char *memfd_map = shared_read_only(memfd, 202);
	int shm_id = shmget(IPC_PRIVATE, PAGE, IPC_CREAT | 0600);
	char *shm_map = shm_id < 0 ? (char *)-1 : shmat(shm_id, NULL, 0);
	if (shm_map == (char *)-1) die("shmget/shmat");
	fill(shm_map, PAGE, 203);
	if (mprotect(shm_map, PAGE, PROT_READ) != 0) die("mprotect shm");

	/* MAP_DROPPABLE is a mapping type of its own (0x08), in place of MAP_PRIVATE. */
	char *droppable = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, 0x08 /* MAP_DROPPABLE */ | MAP_ANONYMOUS, -1, 0);
	if (droppable == MAP_FAILED) {
		if (errno != EINVAL) die("mmap MAP_DROPPABLE");
		printf("NOTE: no MAP_DROPPABLE here (%s): not checked\n", strerror(errno));
		droppable = NULL;
	} else {
		fill(droppable, 4 * PAGE, 204);
	}

	/* A restored process is another process to procfs: its /proc/self files have new inodes. */
	struct stat before, after;
	if (stat("/proc/self/status", &before) != 0) die("stat /proc/self/status");

	printf("MAYWRITE %s\n", path);
	printf("READY\n");
	while (!got_term) pause();
	if (stat("/proc/self/status", &after) != 0) die("stat /proc/self/status");
	int restored = before.st_ino != after.st_ino;

	for (int i = 0; i < 4; i++) {
		expect_perms(prots[i].name, prots[i].p, prots[i].perms);
		if (mprotect(prots[i].p, PAGE, PROT_READ) != 0) fail("%s: mprotect(PROT_READ): %s", prots[i].name, strerror(errno));
		else if (!holds(prots[i].p, PAGE, 10 + i)) fail("%s: its data was lost", prots[i].name);
	}
	int small_bad = 0;
	for (int i = 0; i < SMALL; i++) {
		char *p = small + (size_t)i * PAGE;
		static const char *want[] = { "r--p", "rw-p", "---p" };
		char perms[5], flags[512];
		if (i % 97 == 0) {   /* smaps is long: sample the permissions */
			vma_info(p, perms, flags, sizeof(flags));
			if (strcmp(perms, want[i % 3]) != 0 && small_bad++ < 3) fail("small mapping %d: permissions %s, want %s", i, perms, want[i % 3]);
		}
		if (mprotect(p, PAGE, PROT_READ) != 0) { if (small_bad++ < 3) fail("small mapping %d: mprotect: %s", i, strerror(errno)); continue; }
		if (!holds(p, PAGE, 100 + i) && small_bad++ < 3) fail("small mapping %d: its data was lost", i);
	}
	for (int i = 0; i < advised_count; i++) {
		char perms[5], flags[512];
		vma_info(advised[i].p, perms, flags, sizeof(flags));
		if (!has_flag(flags, advised[i].flag)) fail("%s: VmFlags \"%s\" lack %s", advised[i].name, flags, advised[i].flag);
		if (!holds(advised[i].p, advised[i].bytes, 50 + i)) fail("%s: its data was lost", advised[i].name);
	}
	expect_may_write("shared file mapping", file_map, 200);
	char byte = 0;
	if (pread(file_check, &byte, 1, 1) != 1 || byte != 'w') fail("shared file mapping: the write did not reach the file");
	expect_may_write("shared mapping of a deleted file", ghost_map, 201);
	expect_may_write("shared memfd mapping", memfd_map, 202);
	if (pread(memfd_check, &byte, 1, 1) != 1 || byte != 'w') fail("shared memfd mapping: the write did not reach the memfd");
	expect_may_write("System V segment attached read-write", shm_map, 203);
	char ro_flags[512];
	vma_info(read_only_map, NULL, ro_flags, sizeof(ro_flags));
	if (has_flag(ro_flags, "mw")) fail("shared mapping from a read-only descriptor: VmFlags \"%s\" have mw", ro_flags);
	if (mprotect(read_only_map, PAGE, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
		fail("shared mapping from a read-only descriptor: mprotect(PROT_WRITE) did not fail with EACCES");
	unlink(path);
	shmdt(shm_map);
	shmctl(shm_id, IPC_RMID, NULL);
	if (droppable) {
		char flags[512];
		vma_info(droppable, NULL, flags, sizeof(flags));
		if (!has_flag(flags, "dp")) fail("MAP_DROPPABLE: VmFlags \"%s\" lack dp", flags);
		if (!restored && !holds(droppable, 4 * PAGE, 204)) fail("MAP_DROPPABLE: its data changed without a restore");
		for (size_t i = 0; restored && i < 4 * PAGE; i++)
			if (droppable[i] != 0) { fail("MAP_DROPPABLE: byte %zu came back (%d), want it dropped", i, droppable[i]); break; }
	}

	int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
	if (thp != 1) fail("PR_GET_THP_DISABLE is %d, want 1", thp);

	pid_t kid = fork();
	if (kid == 0) {
		unsigned char vec;
		int gone = mincore(advised[0].p, PAGE, &vec) != 0 && errno == ENOMEM;
		int wiped = advised[4].p[0] == 0 && advised[4].p[advised[4].bytes - 1] == 0;
		_exit((gone ? 0 : 1) | (wiped ? 0 : 2));
	}
	int st = 0;
	if (kid < 0 || waitpid(kid, &st, 0) != kid || !WIFEXITED(st)) fail("fork after restore: status %#x", st);
	else {
		if (WEXITSTATUS(st) & 1) fail("MADV_DONTFORK: a child forked after restore still has the region");
		if (WEXITSTATUS(st) & 2) fail("MADV_WIPEONFORK: a child forked after restore sees the data");
	}

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
