/*
 * unixpending: listeners with connections not yet accepted; argv[1] is a folder.
 *
 *   stream listener   three connections queued: a client here that sent bytes
 *                     (and keeps its end), one that sent bytes and a pipe's read
 *                     end (SCM_RIGHTS) and shut down writing, and one from a
 *                     child that sent bytes and exited
 *   seqpacket         an abstract listener with one connection that sent two
 *                     records
 *
 * After SIGTERM accept must return them in order with their bytes, records,
 * descriptor and end of stream; the clients still here still talk to them, and
 * the listeners take new connections.
 */
#define _GNU_SOURCE
#include "fixture.h"
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static socklen_t address(struct sockaddr_un *un, const char *name, size_t length)
{
	memset(un, 0, sizeof(*un));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, name, length);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
}

static int connected(int type, struct sockaddr_un *un, socklen_t size)
{
	int c = socket(AF_UNIX, type, 0);
	if (c < 0 || connect(c, (struct sockaddr *)un, size) != 0) die("connect");
	return c;
}

/* Reads what is queued on `fd` (waiting up to a second for the first bytes). */
static ssize_t read_some(int fd, char *buf, size_t size, int *passed)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	poll(&p, 1, 1000);
	char control[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = { .iov_base = buf, .iov_len = size };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
	if (passed) *passed = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); n >= 0 && c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && passed) memcpy(passed, CMSG_DATA(c), sizeof(int));
	return n;
}

static void expect(int fd, const char *text, const char *what)
{
	char buf[256];
	ssize_t n = read_some(fd, buf, sizeof(buf), NULL);
	if (n != (ssize_t)strlen(text) || memcmp(buf, text, strlen(text)) != 0)
		fail("%s: read %zd bytes (%.*s), not \"%s\"", what, n, n > 0 ? (int)n : 0, buf, text);
}

static void expect_eof(int fd, const char *what)
{
	char c;
	ssize_t n = read_some(fd, &c, 1, NULL);
	if (n != 0) fail("%s: no end of stream (%zd)", what, n);
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);

	char path[256];
	snprintf(path, sizeof(path), "%s/pending.sock", dir);
	unlink(path);
	struct sockaddr_un un;
	socklen_t size = address(&un, path, strlen(path));
	int listener = socket(AF_UNIX, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&un, size) != 0 || listen(listener, 8) != 0) die("listener");

	int c1 = connected(SOCK_STREAM, &un, size);
	if (write(c1, "first client", 12) != 12) die("write c1");

	int c2 = connected(SOCK_STREAM, &un, size);
	int pp[2];
	if (pipe(pp) != 0 || write(pp[1], "through the pipe", 16) != 16) die("pipe");
	{
		char control[CMSG_SPACE(sizeof(int))];
		memset(control, 0, sizeof(control));
		struct iovec iov = { .iov_base = "second, with a pipe", .iov_len = 19 };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pp[0], sizeof(int));
		if (sendmsg(c2, &m, 0) != 19) die("sendmsg c2");
		close(pp[0]);
	}
	if (shutdown(c2, SHUT_WR) != 0) die("shutdown c2");

	pid_t child = fork();
	if (child < 0) die("fork");
	if (child == 0) {
		int c3 = connected(SOCK_STREAM, &un, size);
		if (write(c3, "from a client gone since", 24) != 24) _exit(3);
		_exit(0);
	}
	if (waitpid(child, NULL, 0) != child) die("waitpid");

	char abstract[64];
	int alen = snprintf(abstract, sizeof(abstract), "%ccryo-pending-%d", 0, (int)getpid());
	struct sockaddr_un aun;
	socklen_t asize = address(&aun, abstract, (size_t)alen);
	int qlistener = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (qlistener < 0 || bind(qlistener, (struct sockaddr *)&aun, asize) != 0 || listen(qlistener, 4) != 0) die("seqpacket listener");
	int q1 = connected(SOCK_SEQPACKET, &aun, asize);
	if (send(q1, "record one", 10, 0) != 10 || send(q1, "record two!", 11, 0) != 11) die("send records");

	ready_then_wait(&term);

	int a1 = accept(listener, NULL, NULL), a2 = -1, a3 = -1;
	if (a1 < 0) fail("accept 1: %s", strerror(errno));
	else {
		expect(a1, "first client", "connection 1");
		if (write(a1, "reply", 5) != 5) fail("connection 1: cannot reply");
		expect(c1, "reply", "client 1 reading the reply");
		if (write(c1, "more", 4) != 4) fail("client 1: cannot write");
		expect(a1, "more", "connection 1, more");
	}
	if (a1 >= 0 && (a2 = accept(listener, NULL, NULL)) < 0) fail("accept 2: %s", strerror(errno));
	if (a2 >= 0) {
		char buf[64];
		int passed;
		ssize_t n = read_some(a2, buf, sizeof(buf), &passed);
		if (n != 19 || memcmp(buf, "second, with a pipe", 19) != 0) fail("connection 2: read %zd bytes", n);
		if (passed < 0) fail("connection 2: the pipe did not come along");
		else if (read(passed, buf, sizeof(buf)) != 16 || memcmp(buf, "through the pipe", 16) != 0) fail("connection 2: the pipe is empty");
		expect_eof(a2, "connection 2 (shut down by its client)");
	}
	if (a2 >= 0 && (a3 = accept(listener, NULL, NULL)) < 0) fail("accept 3: %s", strerror(errno));
	if (a3 >= 0) {
		expect(a3, "from a client gone since", "connection 3");
		expect_eof(a3, "connection 3 (its client exited)");
	}
	fcntl(listener, F_SETFL, O_NONBLOCK);
	if (accept(listener, NULL, NULL) >= 0) fail("a fourth connection was waiting");
	fcntl(listener, F_SETFL, 0);
	int fresh = connected(SOCK_STREAM, &un, size);
	int af = accept(listener, NULL, NULL);
	if (af < 0 || write(fresh, "new", 3) != 3) fail("a new connection fails");
	else expect(af, "new", "new connection");

	int qa = accept(qlistener, NULL, NULL);
	if (qa < 0) fail("seqpacket accept: %s", strerror(errno));
	else {
		expect(qa, "record one", "seqpacket record 1");
		expect(qa, "record two!", "seqpacket record 2");
		if (send(qa, "back", 4, 0) != 4) fail("seqpacket: cannot reply");
		else expect(q1, "back", "seqpacket client reading the reply");
	}

	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
