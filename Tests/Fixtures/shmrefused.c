/*
 * shmrefused: shared memory cryo must refuse rather than restore wrong, held by
 * a child while the root (a session leader) waits:
 *   sysv     a System V segment (shmget/shmat): the child wrote its page 1
 *            (once refused; SysVTests now round-trips it)
 *   hugetlb  MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB|MAP_NORESERVE, never touched
 *            (prints NOHUGETLB instead of READY when the kernel refuses it;
 *            once refused, HugetlbTests now round-trips it)
 * Prints "PIDS root child", "MAPPING start-end" (hex, the child's mapping)
 * and READY. On SIGTERM the root tells the child to check that its segment
 * still holds what it wrote, waits for it, and prints PASS or "FAIL: ...".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	int huge = argc > 1 && strcmp(argv[1], "hugetlb") == 0;
	signal(SIGTERM, on_term);
	int go[2], done[2];
	if (pipe(go) != 0 || pipe(done) != 0) die("pipe");
	char *base;
	size_t size;
	int shmid = -1;
	if (huge) {
		size = 2 << 20;
		base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE, -1, 0);
		if (base == MAP_FAILED) { printf("NOHUGETLB %s\n", strerror(errno)); return 0; }
	} else {
		size = 4 * PAGE;
		shmid = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600);
		if (shmid < 0) die("shmget");
		base = shmat(shmid, NULL, 0);
		if (base == (void *)-1) die("shmat");
		shmctl(shmid, IPC_RMID, NULL);   /* goes away with its last attachment */
	}
	pid_t kid = fork();
	if (kid < 0) die("fork");
	if (kid == 0) {
		if (!huge) strcpy(base + PAGE, "written by the child");
		char c;
		while (read(go[0], &c, 1) < 0 && errno == EINTR)
			;
		if (!huge && strcmp(base + PAGE, "written by the child") != 0) fail("child: page 1 of the segment lost what it held");
		dprintf(done[1], "%s\n", failbuf[0] ? failbuf : "OK");
		_exit(0);
	}
	if (huge) munmap(base, size);
	else shmdt(base);
	/* The child's mapping is at the same address as the root's was. */
	printf("PIDS %d %d\n", (int)getpid(), (int)kid);
	printf("MAPPING %lx-%lx\n", (unsigned long)base, (unsigned long)base + size);
	printf("READY\n");
	while (!got_term) pause();
	if (write(go[1], "g", 1) != 1) fail("root: write to the child: %s", strerror(errno));
	char line[4200];
	if (read_line(done[0], line, sizeof(line), 10) < 0) fail("root: no reply from the child");
	else if (strcmp(line, "OK") != 0) fail("%s", line);
	int st;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("root: the child ended badly (%#x)", st);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
