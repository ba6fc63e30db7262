/*
 * sysvipc: System V objects the tree owns but has not attached.
 *
 * The root makes, in the host's IPC namespace: a keyed shared memory segment
 * (2 pages plus 10 bytes, mode 0640) and a private one (1 page, mode 0600),
 * written and detached again; a keyed semaphore set of 3 (mode 0660) moved
 * by semop to 5, 0, 7; a keyed message queue (mode 0620) holding four
 * messages of types 2, 1, 5, 2, one of them empty. It prints
 * "IPC shmid privid semid msqid" and READY. On SIGTERM it checks, through
 * the same ids, with IPC_STAT: keys, modes, sizes, contents, semaphore
 * values, the number of messages, then receives them in order with their
 * types and texts; removes everything; PASS or "FAIL: reasons".
 * With the argument "undo" it also does one semop with SEM_UNDO (which
 * cryo refuses at dump) and is expected to go on running unchanged.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>
#include "fixture.h"

#define PAGE 4096
#define KEYED_SIZE (2 * PAGE + 10)

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

struct message { long type; char text[64]; };
static const struct { long type; const char *text; } messages[] = {
	{2, "first, of type 2"}, {1, "second"}, {5, ""}, {2, "fourth and last: of type 2 again"},
};
#define NMESSAGES (int)(sizeof(messages) / sizeof(messages[0]))

static void check_segment(const char *what, int id, key_t key, size_t size, int mode, unsigned char fill)
{
	struct shmid_ds ds;
	if (shmctl(id, IPC_STAT, &ds) != 0) { fail("%s: IPC_STAT of id %d: %s", what, id, strerror(errno)); return; }
	if (ds.shm_perm.__key != key) fail("%s: key 0x%x, not 0x%x", what, ds.shm_perm.__key, key);
	if (ds.shm_segsz != size) fail("%s: %zu bytes, not %zu", what, (size_t)ds.shm_segsz, size);
	if ((ds.shm_perm.mode & 0777) != mode) fail("%s: mode %o, not %o", what, ds.shm_perm.mode & 0777, mode);
	if (ds.shm_nattch != 0) fail("%s: %lu attaches, not 0", what, (unsigned long)ds.shm_nattch);
	unsigned char *p = shmat(id, NULL, SHM_RDONLY);
	if (p == (void *)-1) { fail("%s: shmat: %s", what, strerror(errno)); return; }
	for (size_t i = 0; i < size; i++) {
		/* Page 1 of the keyed segment was never written: zeros. */
		unsigned char want = (i / PAGE == 1) ? 0 : (unsigned char)(fill + i % 7);
		if (p[i] != want) { fail("%s: byte %zu is 0x%02x, not 0x%02x", what, i, p[i], want); break; }
	}
	shmdt(p);
}

static int make_segment(key_t key, size_t size, int mode, unsigned char fill)
{
	int id = shmget(key, size, IPC_CREAT | IPC_EXCL | mode);
	if (id < 0) return -1;
	unsigned char *p = shmat(id, NULL, 0);
	if (p == (void *)-1) return -1;
	for (size_t i = 0; i < size; i++)
		if (i / PAGE != 1) p[i] = (unsigned char)(fill + i % 7);
	shmdt(p);
	return id;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	int undo = argc > 1 && strcmp(argv[1], "undo") == 0;
	key_t base = (key_t)(0x49500000 | ((getpid() & 0xffff) << 2));
	key_t shm_key = base, sem_key = base + 1, msg_key = base + 2;
	int shm = make_segment(shm_key, KEYED_SIZE, 0640, 0x11);
	int priv = make_segment(IPC_PRIVATE, PAGE, 0600, 0x61);
	int sem = semget(sem_key, 3, IPC_CREAT | IPC_EXCL | 0660);
	int msq = msgget(msg_key, IPC_CREAT | IPC_EXCL | 0620);
	if (shm < 0 || priv < 0 || sem < 0 || msq < 0) { printf("FAIL: setup: %s\n", strerror(errno)); return 1; }
	struct sembuf ops[] = {{0, 5, 0}, {2, 7, 0}};
	if (semop(sem, ops, 2) != 0) { printf("FAIL: semop: %s\n", strerror(errno)); return 1; }
	if (undo) {
		struct sembuf op = {1, 1, SEM_UNDO};
		if (semop(sem, &op, 1) != 0) { printf("FAIL: semop SEM_UNDO: %s\n", strerror(errno)); return 1; }
	}
	for (int i = 0; i < NMESSAGES; i++) {
		struct message m = {messages[i].type, {0}};
		strcpy(m.text, messages[i].text);
		if (msgsnd(msq, &m, strlen(m.text), IPC_NOWAIT) != 0) { printf("FAIL: msgsnd: %s\n", strerror(errno)); return 1; }
	}
	signal(SIGTERM, on_term);
	printf("IPC %d %d %d %d\n", shm, priv, sem, msq);
	printf("READY\n");
	while (!got_term) pause();

	check_segment("keyed segment", shm, shm_key, KEYED_SIZE, 0640, 0x11);
	check_segment("private segment", priv, IPC_PRIVATE, PAGE, 0600, 0x61);
	struct semid_ds sds;
	if (semctl(sem, 0, IPC_STAT, &sds) != 0) fail("semaphores: IPC_STAT of id %d: %s", sem, strerror(errno));
	else {
		if (sds.sem_perm.__key != sem_key) fail("semaphores: key 0x%x, not 0x%x", sds.sem_perm.__key, sem_key);
		if (sds.sem_nsems != 3) fail("semaphores: %lu, not 3", (unsigned long)sds.sem_nsems);
		if ((sds.sem_perm.mode & 0777) != 0660) fail("semaphores: mode %o", sds.sem_perm.mode & 0777);
		unsigned short values[3] = {9, 9, 9};
		int want1 = undo ? 1 : 0;
		if (semctl(sem, 0, GETALL, values) != 0) fail("semaphores: GETALL: %s", strerror(errno));
		else if (values[0] != 5 || values[1] != want1 || values[2] != 7)
			fail("semaphores: values %u %u %u, not 5 %d 7", values[0], values[1], values[2], want1);
	}
	struct msqid_ds mds;
	if (msgctl(msq, IPC_STAT, &mds) != 0) fail("queue: IPC_STAT of id %d: %s", msq, strerror(errno));
	else {
		if (mds.msg_perm.__key != msg_key) fail("queue: key 0x%x, not 0x%x", mds.msg_perm.__key, msg_key);
		if ((mds.msg_perm.mode & 0777) != 0620) fail("queue: mode %o", mds.msg_perm.mode & 0777);
		if (mds.msg_qnum != NMESSAGES) fail("queue: %lu messages, not %d", (unsigned long)mds.msg_qnum, NMESSAGES);
	}
	for (int i = 0; i < NMESSAGES; i++) {
		struct message m;
		memset(&m, 0, sizeof(m));
		ssize_t n = msgrcv(msq, &m, sizeof(m.text), 0, IPC_NOWAIT);
		if (n < 0) { fail("queue: message %d: msgrcv: %s", i, strerror(errno)); break; }
		if (m.type != messages[i].type || (size_t)n != strlen(messages[i].text) || memcmp(m.text, messages[i].text, (size_t)n) != 0)
			fail("queue: message %d is type %ld \"%.*s\", not type %ld \"%s\"", i, m.type, (int)n, m.text,
			     messages[i].type, messages[i].text);
	}
	shmctl(shm, IPC_RMID, NULL);
	shmctl(priv, IPC_RMID, NULL);
	semctl(sem, 0, IPC_RMID);
	msgctl(msq, IPC_RMID, NULL);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return 0;
}
