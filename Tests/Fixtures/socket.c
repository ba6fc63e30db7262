/*
 * socket: holds a connected AF_UNIX socketpair at fds 42 and 43 (with some
 * unread bytes in it).  cryo does not support sockets, so dumping this
 * process must fail cleanly and leave it running; the harness checks the
 * error names the pid, a socket fd number and the word "socket".
 * "SOCKETS 42 43" is printed before READY.
 *
 * On SIGTERM the unread bytes must still be there and the pair must still
 * carry data both ways.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FD_A 42
#define FD_B 43

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static const char hello[] = "unread bytes in a socket";

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0) die("sigaction");
	signal(SIGPIPE, SIG_IGN);

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
	if (dup2(sv[0], FD_A) != FD_A || dup2(sv[1], FD_B) != FD_B) die("dup2");
	close(sv[0]);
	close(sv[1]);
	if (write(FD_A, hello, sizeof(hello)) != (ssize_t)sizeof(hello)) die("write");

	printf("SOCKETS %d %d\n", FD_A, FD_B);
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

	if (why) { printf("FAIL: %s\n", why); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}
