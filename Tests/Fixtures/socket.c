/*
 * socket: holds sockets cryo must refuse, next to a connected AF_UNIX
 * socketpair at fds 42 and 43 (with some unread bytes in it) that it can
 * dump.  Dumping this process must fail cleanly and leave it running; the
 * harness checks the error names the pid, the refused socket's fd number and
 * the word "socket".  "SOCKETS N" names the refused socket, before READY.
 *
 *   (no argument)  fd 44 is an AF_NETLINK (NETLINK_ROUTE) socket holding the
 *                  answer to a request, not read yet (the rest of a dump)
 *   packet         fd 44 is an AF_PACKET socket (SOCK_RAW, ETH_P_ALL) in a
 *                  PACKET_FANOUT group whose selector is a classic BPF program
 *   mptcp          fd 44 is an AF_INET MPTCP socket
 *   scm            fd 45 is a unix datagram socket with a descriptor in
 *                  flight (SCM_RIGHTS) in its receive queue, sent from fd 46
 *
 * On SIGTERM the unread bytes must still be there, the pair must still carry
 * data both ways, and the descriptor in flight must still arrive.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/if_packet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define FD_A 42
#define FD_B 43
#define FD_NETLINK 44
#define FD_SCM_RECEIVER 45
#define FD_SCM_SENDER 46

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static const char hello[] = "unread bytes in a socket";

static void move_to(int fd, int target) {
	if (dup2(fd, target) != target) die("dup2");
	close(fd);
}

/* Sends one byte with `passed` attached as SCM_RIGHTS. */
static void send_descriptor(int sock, int passed) {
	char byte = 'F';
	struct iovec iov = { &byte, 1 };
	union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } u;
	memset(&u, 0, sizeof(u));
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &passed, sizeof(int));
	if (sendmsg(sock, &msg, 0) != 1) die("sendmsg(SCM_RIGHTS)");
}

/* The byte with its descriptor: it must be the same file as `expected`. */
static const char *receive_descriptor(int sock, int expected) {
	char byte = 0;
	struct iovec iov = { &byte, 1 };
	union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } u;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	if (recvmsg(sock, &msg, MSG_DONTWAIT) != 1 || byte != 'F') return "the message carrying a descriptor is gone";
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS) return "the descriptor in flight is gone";
	int got;
	memcpy(&got, CMSG_DATA(c), sizeof(int));
	struct stat a, b;
	if (fstat(got, &a) != 0 || fstat(expected, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		return "the descriptor in flight names another file";
	close(got);
	return NULL;
}

int main(int argc, char **argv)
{
	int scm = argc > 1 && strcmp(argv[1], "scm") == 0;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	signal(SIGPIPE, SIG_IGN);

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
	move_to(sv[0], FD_A);
	move_to(sv[1], FD_B);
	if (write(FD_A, hello, sizeof(hello)) != (ssize_t)sizeof(hello)) die("write");

	int refused;
	if (scm) {
		if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0) die("socketpair dgram");
		move_to(sv[0], FD_SCM_RECEIVER);
		move_to(sv[1], FD_SCM_SENDER);
		send_descriptor(FD_SCM_SENDER, FD_A);
		refused = FD_SCM_RECEIVER;
	} else {
		const char *kind = argc > 1 ? argv[1] : "netlink";
		int inet;
		if (strcmp(kind, "packet") == 0) inet = socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */));
		else if (strcmp(kind, "mptcp") == 0) inet = socket(AF_INET, SOCK_STREAM, 262 /* IPPROTO_MPTCP */);
		else inet = socket(AF_NETLINK, SOCK_RAW, 0 /* NETLINK_ROUTE */);
		if (inet < 0) die(kind);
		if (strcmp(kind, "packet") == 0) {
			/* A fanout group that picks members by a program (groups of the other types round-trip):
			   no call reads the program back. */
			int fanout = 4242 | (PACKET_FANOUT_CBPF << 16);
			if (setsockopt(inet, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof(fanout)) != 0) die("PACKET_FANOUT");
			struct sock_filter pick_first[] = { BPF_STMT(BPF_RET | BPF_K, 0) };
			struct sock_fprog program = { .len = 1, .filter = pick_first };
			if (setsockopt(inet, SOL_PACKET, PACKET_FANOUT_DATA, &program, sizeof(program)) != 0) die("PACKET_FANOUT_DATA");
		}
		if (argc < 2) {
			/* RTM_GETLINK dump request, NLM_F_REQUEST | NLM_F_DUMP: the answer waits unread. */
			struct { struct nlmsghdr h; unsigned char family; unsigned char pad[15]; } request = {
				.h = { .nlmsg_len = sizeof(request), .nlmsg_type = 18 /* RTM_GETLINK */, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
			};
			struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
			if (sendto(inet, &request, sizeof(request), 0, (struct sockaddr *)&kernel, sizeof(kernel)) != sizeof(request)) die("netlink request");
			usleep(20000);
		}
		move_to(inet, FD_NETLINK);
		refused = FD_NETLINK;
	}

	printf("SOCKETS %d\n", refused);
	printf("READY\n");
	fflush(stdout);

	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	while (!got_term)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);

	const char *why = NULL;
	char buf[128];
	fcntl(FD_B, F_SETFL, O_NONBLOCK);
	ssize_t n = read(FD_B, buf, sizeof(buf));
	if (n != (ssize_t)sizeof(hello) || memcmp(buf, hello, sizeof(hello)) != 0)
		why = "the unread bytes in the socketpair were lost or changed";
	else if (write(FD_B, "pong", 4) != 4 || read(FD_A, buf, 4) != 4 || memcmp(buf, "pong", 4) != 0)
		why = "the socketpair no longer carries data";
	else if (scm)
		why = receive_descriptor(FD_SCM_RECEIVER, FD_A);

	if (why) { printf("FAIL: %s\n", why); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
