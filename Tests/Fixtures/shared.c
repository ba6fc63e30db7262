/*
 * shared: a parent and a child that share memory and a file offset, across
 * checkpoint/restore.
 *
 * argv[1] is a scratch directory. Before the fork the parent (a session
 * leader) sets up:
 *   - a 5-page MAP_SHARED|MAP_ANONYMOUS mapping filled with a pattern
 *   - a 2-page MAP_PRIVATE|MAP_ANONYMOUS mapping filled with a pattern
 *   - DIR/shared.dat, O_RDWR, 100 bytes written, offset moved to 50: one open
 *     file description for both processes
 * After the fork the child writes a marker into the shared mapping (the
 * parent checks that it sees it) and overwrites the start of its private
 * copy. The child then sits in read() on a pipe from the parent.
 *
 * On SIGTERM the parent checks the shared pattern, the child's marker, that
 * its private copy is untouched and that the offset is 50, then tells the
 * child to go: the child checks the same from its side (with its own private
 * change), stores a new word in the shared mapping and writes 10 bytes
 * through the shared fd. The parent must see the word and the offset at 60.
 * The parent then stores a word and seeks to 7, and the child must see both.
 * PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

#define PAGE       4096
#define SHM_BYTES  (5 * PAGE)
#define PRIV_BYTES (2 * PAGE)
#define FILE_SIZE  100
#define START_OFF  50
#define MARKER     0xC0DE0001u   /* child -> parent, before READY, shm[1] */
#define CHILD_WORD 0x5EED1234u   /* child -> parent, after restore, shm[0] */
#define PARENT_WORD 0xFEEDF00Du  /* parent -> child, after restore, shm[2] */
#define CHILD_PRIV 0x0BADu       /* the child's private change, priv[0] */
#define SEEK_TO    7



static void die(const char *what) { fprintf(stderr, "setup: pid %d: %s: %s\n", (int)getpid(), what, strerror(errno)); exit(2); }

static uint32_t *shm, *priv;
static int fd;
static struct stat file_st;

static uint32_t shm_pat(size_t i) { return (uint32_t)(i * 2654435761u) ^ 0x51a7edu; }
static uint32_t priv_pat(size_t i) { return (uint32_t)(i * 40503u) ^ 0x9e3779b9u; }



/* Checks the mappings and the file from this process's point of view.
 * Shared words 0 and 2 change during the check and are checked apart. */
static void check_common(const char *who, uint32_t priv0)
{
	for (size_t i = 3; i < SHM_BYTES / 4; i++)
		if (shm[i] != shm_pat(i)) { fail("%s: shared word %zu is %#x, want %#x", who, i, shm[i], shm_pat(i)); break; }
	if (shm[1] != MARKER) fail("%s: shared word 1 is %#x, want the child's marker %#x", who, shm[1], MARKER);
	if (priv[0] != priv0) fail("%s: private word 0 is %#x, want %#x", who, priv[0], priv0);
	for (size_t i = 1; i < PRIV_BYTES / 4; i++)
		if (priv[i] != priv_pat(i)) { fail("%s: private word %zu is %#x, want %#x", who, i, priv[i], priv_pat(i)); break; }
	struct stat st;
	if (fstat(fd, &st) != 0) fail("%s: fstat(%d): %s", who, fd, strerror(errno));
	else if (st.st_ino != file_st.st_ino || st.st_dev != file_st.st_dev) fail("%s: fd %d is another file", who, fd);
	int fl = fcntl(fd, F_GETFL);
	if ((fl & O_ACCMODE) != O_RDWR) fail("%s: fd %d access mode %#x, want O_RDWR", who, fd, fl & O_ACCMODE);
}

static void child(int in, int out, pid_t parent)
{
	shm[1] = MARKER;
	priv[0] = CHILD_PRIV;
	dprintf(out, "ready\n");

	char c;
	ssize_t r;
	while ((r = read(in, &c, 1)) < 0 && errno == EINTR)   /* the child sits here while dumped */
		;
	if (r != 1 || c != 'a') { dprintf(out, "a FAIL child: read %zd byte(s) %#x, want 'a'\n", r, r == 1 ? (unsigned char)c : 0); _exit(1); }
	if (getppid() != parent) fail("child: getppid() is %d, want %d", (int)getppid(), (int)parent);
	check_common("child", CHILD_PRIV);
	off_t off = lseek(fd, 0, SEEK_CUR);
	if (off != START_OFF) fail("child: offset %lld, want %d", (long long)off, START_OFF);
	shm[0] = CHILD_WORD;
	if (write(fd, "0123456789", 10) != 10) fail("child: write(fd %d): %s", fd, strerror(errno));
	dprintf(out, failbuf[0] ? "a FAIL %s\n" : "a OK\n", failbuf);
	failbuf[0] = 0;

	while ((r = read(in, &c, 1)) < 0 && errno == EINTR)
		;
	if (r != 1 || c != 'b') { dprintf(out, "b FAIL child: read %zd byte(s), want 'b'\n", r); _exit(1); }
	if (shm[2] != PARENT_WORD) fail("child: shared word 2 is %#x, want the parent's %#x", shm[2], PARENT_WORD);
	off = lseek(fd, 0, SEEK_CUR);
	if (off != SEEK_TO) fail("child: offset %lld after the parent's lseek, want %d", (long long)off, SEEK_TO);
	dprintf(out, failbuf[0] ? "b FAIL %s\n" : "b OK\n", failbuf);
	_exit(failbuf[0] ? 1 : 0);
}

static void expect_reply(int in, char step)
{
	char line[3200];
	int rc = read_line(in, line, sizeof(line), 5);
	if (rc < 0) { fail("no reply %c from the child (%s)", step, rc == -3 ? "timed out" : strerror(errno)); return; }
	if (line[0] != step || (strcmp(line + 1, " OK") != 0 && strncmp(line + 1, " FAIL ", 6) != 0)) {
		fail("reply %c from the child is \"%.80s\"", step, line);
		return;
	}
	if (line[2] == 'F') fail("%s", line + 7);
}

int main(int argc, char **argv)
{
	if (argc < 2) { fprintf(stderr, "usage: shared DIR\n"); return 2; }
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	signal(SIGPIPE, SIG_IGN);
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	for (int i = 3; i < 1024; i++) close(i);

	pid_t parent = getpid();
	if (getsid(0) != parent) { fprintf(stderr, "setup: not a session leader\n"); return 2; }

	shm = mmap(NULL, SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	priv = mmap(NULL, PRIV_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED || priv == MAP_FAILED) die("mmap");
	for (size_t i = 0; i < SHM_BYTES / 4; i++) shm[i] = shm_pat(i);
	for (size_t i = 0; i < PRIV_BYTES / 4; i++) priv[i] = priv_pat(i);

	char path[4096];
	snprintf(path, sizeof(path), "%s/shared.dat", argv[1]);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) die(path);
	char data[FILE_SIZE];
	for (int i = 0; i < FILE_SIZE; i++) data[i] = (char)('a' + i % 26);
	if (write(fd, data, FILE_SIZE) != FILE_SIZE) die("write");
	if (lseek(fd, START_OFF, SEEK_SET) != START_OFF) die("lseek");
	if (fstat(fd, &file_st) != 0) die("fstat");

	int to_child[2], from_child[2];
	if (pipe(to_child) != 0 || pipe(from_child) != 0) die("pipe");
	pid_t kid = fork();
	if (kid < 0) die("fork");
	if (kid == 0) {
		close(to_child[1]);
		close(from_child[0]);
		child(to_child[0], from_child[1], parent);
	}
	close(to_child[0]);
	close(from_child[1]);
	char line[256];
	if (read_line(from_child[0], line, sizeof(line), 10) < 0 || strcmp(line, "ready") != 0) { fprintf(stderr, "setup: the child did not get ready\n"); return 2; }
	if (shm[1] != MARKER) { fprintf(stderr, "setup: the child's marker is not visible\n"); return 2; }

	printf("PIDS %d %d\n", (int)parent, (int)kid);
	printf("READY\n");
	fflush(stdout);

	sigset_t wait_mask = old;
	sigdelset(&wait_mask, SIGTERM);
	while (!got_term)
		sigsuspend(&wait_mask);

	/* ---- checks ---- */
	if (getpid() != parent) fail("parent: getpid() is %d", (int)getpid());
	check_common("parent", priv_pat(0));
	if (shm[0] != shm_pat(0) || shm[2] != shm_pat(2)) fail("parent: shared words 0/2 changed before the child ran");
	off_t off = lseek(fd, 0, SEEK_CUR);
	if (off != START_OFF) fail("parent: offset %lld, want %d", (long long)off, START_OFF);

	if (write(to_child[1], "a", 1) != 1) fail("parent: write to the child: %s", strerror(errno));
	expect_reply(from_child[0], 'a');
	if (shm[0] != CHILD_WORD) fail("parent: shared word 0 is %#x, want the child's %#x (memory not shared)", shm[0], CHILD_WORD);
	off = lseek(fd, 0, SEEK_CUR);
	if (off != START_OFF + 10) fail("parent: offset %lld after the child wrote 10 bytes, want %d (offset not shared)", (long long)off, START_OFF + 10);
	char back[11] = "";
	if (pread(fd, back, 10, START_OFF) != 10 || memcmp(back, "0123456789", 10) != 0)
		fail("parent: the child's 10 bytes are not in the file at %d", START_OFF);

	shm[2] = PARENT_WORD;
	if (lseek(fd, SEEK_TO, SEEK_SET) != SEEK_TO) fail("parent: lseek: %s", strerror(errno));
	if (write(to_child[1], "b", 1) != 1) fail("parent: write to the child: %s", strerror(errno));
	expect_reply(from_child[0], 'b');

	int st = 0;
	pid_t w = 0;
	double deadline = now() + 5;
	while ((w = waitpid(kid, &st, WNOHANG)) == 0 && now() < deadline)
		usleep(2000);
	if (w != kid) fail("parent: waitpid(child %d): %s", (int)kid, w == 0 ? "still running" : strerror(errno));
	else if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && !failbuf[0])) fail("parent: child ended with status %#x", st);

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
