/*
 * unixpass: descriptors in flight (SCM_RIGHTS) and senders' credentials
 * (SCM_CREDENTIALS) in AF_UNIX receive queues; argv[1] is a folder.
 *
 *   datagram     a message carrying a regular file (offset 5) and a pipe's
 *                read end with bytes buffered, both closed here since
 *   stream       "hello", then "with-fds" carrying a socket whose only other
 *                reference is gone and which holds a message of its own,
 *                then "tail"
 *   self         a seqpacket socket's own descriptor in its own queue
 *   epoll held   an epoll instance this process holds, also in flight
 *   credentials  with SO_PASSCRED on the receiver: datagrams from a child
 *                running as uid 4242 gid 4343 (alive, in the tree), from
 *                another such child that has exited since, and from this
 *                process (root); stream bytes from the living child
 *
 * `argv[2] == "epoll"`: an epoll descriptor in flight instead, which dump
 * must refuse; the fixture then checks nothing was taken from the queue.
 *
 * After SIGTERM every descriptor received is used (read, written, its offset
 * checked) and every message's credentials are compared with its sender's.
 */
#define _GNU_SOURCE
#include "fixture.h"
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

#define OTHER_UID 4242
#define OTHER_GID 4343

static int send_fds(int sock, const void *data, size_t len, const int *fds, int nfds)
{
	char control[CMSG_SPACE(sizeof(int) * 8)];
	memset(control, 0, sizeof(control));
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		m.msg_control = control;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	return sendmsg(sock, &m, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* One recvmsg: bytes, descriptors and credentials that came with them. */
struct received {
	ssize_t len;
	char data[256];
	int fds[8];
	int nfds;
	int have_cred;
	struct ucred cred;
};

static void receive(int sock, struct received *r)
{
	char control[CMSG_SPACE(sizeof(int) * 8) + CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { .iov_base = r->data, .iov_len = sizeof(r->data) - 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	memset(r, 0, sizeof(*r));
	r->len = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (r->len < 0) return;
	r->data[r->len] = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < n && r->nfds < 8; i++) memcpy(&r->fds[r->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		} else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
			memcpy(&r->cred, CMSG_DATA(c), sizeof(r->cred));
			r->have_cred = 1;
		}
	}
}

static void expect_message(int sock, const char *text, int nfds, const char *what, struct received *r)
{
	receive(sock, r);
	if (r->len < 0) { fail("%s: nothing queued (%s)", what, strerror(errno)); return; }
	if ((size_t)r->len != strlen(text) || memcmp(r->data, text, strlen(text)) != 0)
		fail("%s: got \"%s\", not \"%s\"", what, r->data, text);
	if (r->nfds != nfds) fail("%s: %d descriptors came along, not %d", what, r->nfds, nfds);
}

static void expect_cred(struct received *r, pid_t pid, uid_t uid, gid_t gid, const char *what)
{
	if (!r->have_cred) { fail("%s: no credentials", what); return; }
	if (r->cred.pid != pid || r->cred.uid != uid || r->cred.gid != gid)
		fail("%s: credentials pid %d uid %u gid %u, sender was pid %d uid %u gid %u", what,
		     (int)r->cred.pid, r->cred.uid, r->cred.gid, (int)pid, uid, gid);
}

/* A child as another user that sends `text` on `dgram` and `stream`, then waits (or exits). */
static pid_t sender(int dgram, int stream, const char *text, int stay)
{
	int ready[2];
	if (pipe(ready) != 0) die("pipe");
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) die("fork");
	if (pid == 0) {
		if (setresgid(OTHER_GID, OTHER_GID, OTHER_GID) != 0 || setresuid(OTHER_UID, OTHER_UID, OTHER_UID) != 0) _exit(3);
		if (send(dgram, text, strlen(text), 0) != (ssize_t)strlen(text)) _exit(4);
		if (stream >= 0 && send(stream, text, strlen(text), MSG_NOSIGNAL) != (ssize_t)strlen(text)) _exit(5);
		if (write(ready[1], "k", 1) != 1) _exit(6);
		if (!stay) _exit(0);
		while (getppid() == parent) sleep(1);
		_exit(0);
	}
	char c;
	if (read(ready[0], &c, 1) != 1) die("sender child");
	close(ready[0]);
	close(ready[1]);
	return pid;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	int epoll_mode = argc > 2 && strcmp(argv[2], "epoll") == 0;
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);
	int one = 1;

	/* Datagram: a file and a pipe's read end in flight. */
	int dp[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) != 0) die("socketpair dgram");
	char path[512];
	snprintf(path, sizeof(path), "%s/in-flight.txt", dir);
	int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (file < 0 || write(file, "0123456789 file contents", 24) != 24 || lseek(file, 5, SEEK_SET) != 5) die("file");
	int pp[2];
	if (pipe(pp) != 0 || write(pp[1], "pipe bytes", 10) != 10) die("pipe");
	if (epoll_mode) {
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 7 };
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, pp[0], &ev) != 0) die("epoll");
		if (send_fds(dp[0], "epoll", 5, &ep, 1) != 0) die("send epoll");
		close(ep);
	} else {
		int fds[2] = { file, pp[0] };
		if (send_fds(dp[0], "m1", 2, fds, 2) != 0) die("send m1");
		close(file);
		close(pp[0]);
	}

	/* Stream: a socket that lives only in flight, with its own queue. */
	int sp[2], op[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, op) != 0) die("socketpair stream");
	if (write(op[1], "to op0", 6) != 6) die("write op");
	if (send_fds(sp[0], "hello", 5, NULL, 0) != 0 || send_fds(sp[0], "with-fds", 8, &op[0], 1) != 0
	    || send_fds(sp[0], "tail", 4, NULL, 0) != 0) die("send stream");
	close(op[0]);

	/* An epoll held here and in flight too: it is dumped as the process's own. */
	int held_ep = -1, ep_pair[2] = { -1, -1 }, evp[2] = { -1, -1 };
	if (!epoll_mode) {
		held_ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 9 };
		if (held_ep < 0 || pipe(evp) != 0 || epoll_ctl(held_ep, EPOLL_CTL_ADD, evp[0], &ev) != 0) die("held epoll");
		if (socketpair(AF_UNIX, SOCK_DGRAM, 0, ep_pair) != 0 || send_fds(ep_pair[0], "ep", 2, &held_ep, 1) != 0) die("send held epoll");
	}

	/* A seqpacket socket receives its own descriptor. */
	int qp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) != 0) die("socketpair seqpacket");
	if (send_fds(qp[0], "self", 4, &qp[1], 1) != 0) die("send self");

	/* Credentials. */
	int cp[2], cs[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, cp) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, cs) != 0) die("socketpair creds");
	if (setsockopt(cp[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0
	    || setsockopt(cs[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) die("SO_PASSCRED");
	pid_t alive = sender(cp[0], cs[0], "from the living child", 1);
	pid_t gone = sender(cp[0], -1, "from a child gone since", 0);
	if (waitpid(gone, NULL, 0) != gone) die("waitpid");
	if (send(cp[0], "from root", 9, 0) != 9) die("send root");

	ready_then_wait(&term);

	struct received r;
	char buf[64];
	if (epoll_mode) {
		/* The refused dump took nothing: the epoll is still there and watches the pipe. */
		expect_message(dp[1], "epoll", 1, "epoll message", &r);
		if (r.nfds == 1) {
			struct epoll_event ev;
			if (epoll_wait(r.fds[0], &ev, 1, 0) != 1 || ev.data.u64 != 7) fail("epoll in flight: the pipe is not ready in it");
		}
		goto done;
	}

	expect_message(dp[1], "m1", 2, "datagram with a file and a pipe", &r);
	if (r.nfds == 2) {
		if (lseek(r.fds[0], 0, SEEK_CUR) != 5) fail("file in flight: offset %ld, not 5", (long)lseek(r.fds[0], 0, SEEK_CUR));
		ssize_t n = read(r.fds[0], buf, sizeof(buf));
		if (n != 19 || memcmp(buf, "56789 file contents", 19) != 0) fail("file in flight: read %zd bytes", n);
		if (write(r.fds[0], "!", 1) != 1) fail("file in flight: not writable (%s)", strerror(errno));
		n = read(r.fds[1], buf, sizeof(buf));
		if (n != 10 || memcmp(buf, "pipe bytes", 10) != 0) fail("pipe in flight: read %zd bytes", n);
		if (write(pp[1], "more", 4) != 4 || read(r.fds[1], buf, sizeof(buf)) != 4 || memcmp(buf, "more", 4) != 0)
			fail("pipe in flight: no longer joined to its write end");
	}

	/* The kernel stops a stream read after the bytes that brought descriptors. */
	expect_message(sp[1], "hellowith-fds", 1, "stream up to its descriptor", &r);
	if (r.nfds == 1) {
		int o = r.fds[0];
		ssize_t n = recv(o, buf, sizeof(buf), MSG_DONTWAIT);
		if (n != 6 || memcmp(buf, "to op0", 6) != 0) fail("socket in flight: its own queue held %zd bytes", n);
		if (send(o, "back", 4, MSG_NOSIGNAL) != 4 || recv(op[1], buf, sizeof(buf), MSG_DONTWAIT) != 4 || memcmp(buf, "back", 4) != 0)
			fail("socket in flight: no longer connected to its peer");
	}
	expect_message(sp[1], "tail", 0, "stream after the descriptor", &r);

	expect_message(qp[1], "self", 1, "seqpacket carrying itself", &r);
	if (r.nfds == 1) {
		struct stat a, b;
		if (fstat(r.fds[0], &a) != 0 || fstat(qp[1], &b) != 0 || a.st_ino != b.st_ino) fail("self in flight: another socket came back");
		if (send(qp[0], "again", 5, 0) != 5 || recv(r.fds[0], buf, sizeof(buf), MSG_DONTWAIT) != 5)
			fail("self in flight: cannot read through the received descriptor");
	}

	expect_message(ep_pair[1], "ep", 1, "epoll held and in flight", &r);
	if (r.nfds == 1) {
		struct epoll_event ev;
		if (write(evp[1], "x", 1) != 1 || epoll_wait(r.fds[0], &ev, 1, 0) != 1 || ev.data.u64 != 9)
			fail("epoll in flight: its watch did not fire");
		/* One instance: a watch added through the received descriptor shows in the one held. */
		int np[2];
		struct epoll_event add = { .events = EPOLLIN, .data.u64 = 10 }, got[2];
		if (pipe(np) != 0 || epoll_ctl(r.fds[0], EPOLL_CTL_ADD, np[0], &add) != 0 || write(np[1], "y", 1) != 1)
			fail("epoll in flight: cannot add a watch (%s)", strerror(errno));
		else if (epoll_wait(held_ep, got, 2, 0) != 2) fail("epoll in flight: not the instance held here");
	}

	expect_message(cp[1], "from the living child", 0, "datagram from the living child", &r);
	expect_cred(&r, alive, OTHER_UID, OTHER_GID, "datagram from the living child");
	expect_message(cp[1], "from a child gone since", 0, "datagram from a child gone since", &r);
	expect_cred(&r, gone, OTHER_UID, OTHER_GID, "datagram from a child gone since");
	expect_message(cp[1], "from root", 0, "datagram from root", &r);
	expect_cred(&r, getpid(), 0, 0, "datagram from root");
	expect_message(cs[1], "from the living child", 0, "stream from the living child", &r);
	expect_cred(&r, alive, OTHER_UID, OTHER_GID, "stream from the living child");
	/* A new message shows the living child still sends as itself. */
	kill(alive, SIGKILL);
	waitpid(alive, NULL, 0);

done:
	kill(alive, SIGKILL);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
