/*
 * mqueue: POSIX message queue descriptors across checkpoint/restore.
 *
 * The root opens NAME ("/cryo-mq-PID", mode 0640, 8 messages of at most 64
 * bytes) read-write and sends six messages of priorities 1, 5, 1, 3, 0, 5
 * (one empty); opens NAME again write-only and non-blocking; makes a second
 * queue (4 x 16 bytes) holding one message, and unlinks it. It prints
 * "MQ NAME" and READY. On SIGTERM it checks each descriptor's limits,
 * O_NONBLOCK and access mode, the queue's mode and message count, that NAME
 * still names the queue and the unlinked one is not there, then receives
 * every message in priority order (oldest first within a priority), sends
 * one through the write-only descriptor and reads it back; unlinks NAME;
 * PASS or "FAIL: reasons". With the argument "notify" it also registers
 * for a signal (mq_notify), which cryo refuses at dump; it goes on unchanged.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, notified;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_notify(int sig) { (void)sig; notified = 1; }

static const struct { const char *text; unsigned priority; } sent[] = {
	{"a: first of priority 1", 1}, {"b: first of 5", 5}, {"c: second of priority 1", 1},
	{"d: of 3", 3}, {"", 0}, {"e: second of 5", 5},
};
/* Indexes into sent[] in the order mq_receive must return them. */
static const int order[] = {1, 5, 3, 0, 2, 4};
#define NSENT (int)(sizeof(sent) / sizeof(sent[0]))

static void check_attr(const char *what, mqd_t q, long maxmsg, long msgsize, long cur, long flags)
{
	struct mq_attr a;
	if (mq_getattr(q, &a) != 0) { fail("%s: mq_getattr: %s", what, strerror(errno)); return; }
	if (a.mq_maxmsg != maxmsg || a.mq_msgsize != msgsize || a.mq_curmsgs != cur || a.mq_flags != flags)
		fail("%s: maxmsg %ld msgsize %ld curmsgs %ld flags 0x%lx, not %ld %ld %ld 0x%lx", what, a.mq_maxmsg, a.mq_msgsize,
		     a.mq_curmsgs, a.mq_flags, maxmsg, msgsize, cur, flags);
}

int main(int argc, char **argv)
{
	int notify = argc > 1 && strcmp(argv[1], "notify") == 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	char name[64], gone[64];
	snprintf(name, sizeof(name), "/cryo-mq-%d", getpid());
	snprintf(gone, sizeof(gone), "/cryo-mq-%d-gone", getpid());
	mode_t old = umask(0);
	struct mq_attr attr = {0, 8, 64, 0}, small = {0, 4, 16, 0};
	mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0640, &attr);
	mqd_t w = mq_open(name, O_WRONLY | O_NONBLOCK);
	mqd_t g = mq_open(gone, O_CREAT | O_EXCL | O_RDWR, 0600, &small);
	umask(old);
	if (q < 0 || w < 0 || g < 0) { printf("FAIL: mq_open: %s\n", strerror(errno)); return 1; }
	for (int i = 0; i < NSENT; i++)
		if (mq_send(q, sent[i].text, strlen(sent[i].text), sent[i].priority) != 0) { printf("FAIL: mq_send: %s\n", strerror(errno)); return 1; }
	if (mq_send(g, "ghost", 5, 2) != 0 || mq_unlink(gone) != 0) { printf("FAIL: unlinked queue: %s\n", strerror(errno)); return 1; }
	if (notify) {
		/* An empty queue (unlinked at once) with a registration that never fires. */
		char third[80];
		snprintf(third, sizeof(third), "%s-notify", name);
		mqd_t n = mq_open(third, O_CREAT | O_EXCL | O_RDWR, 0600, &small);
		signal(SIGUSR2, on_notify);
		struct sigevent ev;
		memset(&ev, 0, sizeof(ev));
		ev.sigev_notify = SIGEV_SIGNAL;
		ev.sigev_signo = SIGUSR2;
		if (n < 0 || mq_notify(n, &ev) != 0 || mq_unlink(third) != 0) { printf("FAIL: mq_notify: %s\n", strerror(errno)); return 1; }
	}
	signal(SIGTERM, on_term);
	printf("MQ %s\n", name);
	printf("READY\n");
	while (!got_term) pause();

	check_attr("queue", q, 8, 64, NSENT, 0);
	check_attr("write-only descriptor", w, 8, 64, NSENT, O_NONBLOCK);
	check_attr("unlinked queue", g, 4, 16, 1, 0);
	int fl = fcntl(w, F_GETFL);
	if ((fl & O_ACCMODE) != O_WRONLY) fail("write-only descriptor: flags 0%o", fl);
	struct stat st;
	if (fstat(q, &st) != 0 || (st.st_mode & 0777) != 0640) fail("queue: mode %o, not 640", st.st_mode & 0777);
	mqd_t again = mq_open(name, O_RDONLY);
	if (again < 0) fail("%s no longer names the queue: %s", name, strerror(errno));
	else mq_close(again);
	if (mq_open(gone, O_RDONLY) >= 0 || errno != ENOENT) fail("the unlinked queue %s has a name again", gone);
	char buf[64];
	unsigned priority;
	for (int i = 0; i < NSENT; i++) {
		struct timespec soon;
		clock_gettime(CLOCK_REALTIME, &soon);
		soon.tv_sec += 1;
		ssize_t n = mq_timedreceive(q, buf, sizeof(buf), &priority, &soon);
		int want = order[i];
		if (n < 0) { fail("message %d: %s", i, strerror(errno)); break; }
		if ((size_t)n != strlen(sent[want].text) || memcmp(buf, sent[want].text, (size_t)n) != 0 || priority != sent[want].priority)
			fail("message %d is \"%.*s\" of priority %u, not \"%s\" of %u", i, (int)n, buf, priority, sent[want].text, sent[want].priority);
	}
	ssize_t n = mq_receive(g, buf, sizeof(buf), &priority);
	if (n != 5 || memcmp(buf, "ghost", 5) != 0 || priority != 2) fail("unlinked queue: message of %zd bytes, priority %u", n, priority);
	if (mq_send(w, "after", 5, 7) != 0) fail("mq_send through the write-only descriptor: %s", strerror(errno));
	else if (mq_receive(q, buf, sizeof(buf), &priority) != 5 || priority != 7) fail("the message sent after restore did not come back");
	if (notified) fail("a notification came for the empty queue");
	mq_unlink(name);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return 0;
}
