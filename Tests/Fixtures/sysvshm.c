/*
 * sysvshm: System V shared memory across checkpoint/restore.
 *
 * The root makes two segments: KEYED (a key, 3 pages plus 100 bytes, mode
 * 0640) and PRIVATE (IPC_PRIVATE, 2 pages, marked for removal with IPC_RMID
 * once attached). It attaches both, writes a pattern into page 0 and the
 * tail of KEYED, and forks a child that inherits both attaches and writes
 * page 2 of KEYED and page 1 of PRIVATE. On SIGTERM the root checks the
 * patterns, the segments' ids, keys, sizes and modes (IPC_STAT), that a
 * write by the root is seen by the child and one by the child by the root
 * (over a pipe), that the private segment is still marked for removal, and
 * that shmdt works; then PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define KEYED_SIZE (3 * PAGE + 100)
#define PRIVATE_SIZE (2 * PAGE)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static void expect_bytes(const char *what, const unsigned char *p, size_t n, unsigned char value)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != value) { fail("%s: byte %zu is 0x%02x, not 0x%02x", what, i, p[i], value); return; }
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	key_t key = (key_t)(0x43520000 | (getpid() & 0xffff));
	int keyed = shmget(key, KEYED_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	int private = shmget(IPC_PRIVATE, PRIVATE_SIZE, IPC_CREAT | 0600);
	if (keyed < 0 || private < 0) { printf("FAIL: shmget: %s\n", strerror(errno)); return 1; }
	unsigned char *k = shmat(keyed, NULL, 0), *p = shmat(private, NULL, 0);
	if (k == (void *)-1 || p == (void *)-1) { printf("FAIL: shmat: %s\n", strerror(errno)); return 1; }
	shmctl(private, IPC_RMID, NULL);
	memset(k, 0xa1, PAGE);
	memset(k + 3 * PAGE, 0xa3, 100);
	int ask[2], answer[2];
	if (pipe(ask) != 0 || pipe(answer) != 0) { printf("FAIL: pipe\n"); return 1; }
	pid_t child = fork();
	if (child == 0) {
		memset(k + 2 * PAGE, 0xc2, PAGE);
		memset(p + PAGE, 0xc1, PAGE);
		char byte;
		while (read(ask[0], &byte, 1) != 1) {}
		/* The root wrote k[PAGE] just before asking: the child must see it, and answers by writing p[0]. */
		char ok = k[PAGE] == 0x5a ? 'y' : 'n';
		p[0] = 0x77;
		if (write(answer[1], &ok, 1) != 1) _exit(2);
		_exit(shmdt(k) == 0 && shmdt(p) == 0 ? 0 : 3);
	}
	/* The child's writes are in before READY. */
	while (k[2 * PAGE] != 0xc2 || p[PAGE] != 0xc1) usleep(1000);
	signal(SIGTERM, on_term);
	printf("SEGMENTS %d %d\n", keyed, private);
	printf("READY\n");
	while (!got_term) pause();

	expect_bytes("keyed page 0", k, PAGE, 0xa1);
	expect_bytes("keyed page 1", k + PAGE, PAGE, 0);
	expect_bytes("keyed page 2 (child's)", k + 2 * PAGE, PAGE, 0xc2);
	expect_bytes("keyed tail", k + 3 * PAGE, 100, 0xa3);
	expect_bytes("private page 1 (child's)", p + PAGE, PAGE, 0xc1);
	struct shmid_ds ds;
	if (shmctl(keyed, IPC_STAT, &ds) != 0) fail("IPC_STAT keyed (id %d): %s", keyed, strerror(errno));
	else {
		if (ds.shm_perm.__key != key) fail("keyed: key 0x%x, not 0x%x", ds.shm_perm.__key, key);
		if (ds.shm_segsz != KEYED_SIZE) fail("keyed: size %zu", (size_t)ds.shm_segsz);
		if ((ds.shm_perm.mode & 0777) != 0640) fail("keyed: mode %o", ds.shm_perm.mode & 0777);
		if (ds.shm_nattch != 2) fail("keyed: %lu attaches, not 2", (unsigned long)ds.shm_nattch);
	}
	if (shmctl(private, IPC_STAT, &ds) != 0) fail("IPC_STAT private (id %d): %s", private, strerror(errno));
	else if (!(ds.shm_perm.mode & SHM_DEST)) fail("private segment is no longer marked for removal");
	k[PAGE] = 0x5a;
	char ok = 0;
	if (write(ask[1], "?", 1) != 1 || read(answer[0], &ok, 1) != 1) fail("no answer from the child");
	else if (ok != 'y') fail("the child did not see the root's write");
	if (p[0] != 0x77) fail("the root did not see the child's write");
	int status = 0;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("child ended with status 0x%x (3: shmdt failed)", status);
	if (shmdt(k) != 0 || shmdt(p) != 0) fail("shmdt: %s", strerror(errno));
	shmctl(keyed, IPC_RMID, NULL);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return 0;
}
