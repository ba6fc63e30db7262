/*
 * unixnames: AF_UNIX names in unusual states; argv[1] is a folder.
 *
 *   relative   a stream listener bound to "rel.sock" from argv[1]/rel (the
 *              cwd), with a client connected by that relative name and
 *              accepted; a datagram socket bound to "reld.sock" there holding
 *              a datagram
 *   deleted    a datagram socket whose file was removed, holding a datagram
 *   replaced   a datagram socket whose path now holds a regular file
 *   reused     a listener whose file was removed, with an accepted connection,
 *              and a second listener bound to the same path since
 *   renamed    a listener bound to a temporary name whose file was then renamed
 *              over the real one (haproxy's stats socket), with a client
 *              connected by the new path and not yet accepted: clients connect
 *              by the new path, getsockname still tells the old one
 *   fifo       a datagram socket whose path now holds a FIFO
 *   records    a seqpacket pair with 2000 records queued, of sizes 1..2000
 *   senders    an abstract datagram socket holding datagrams from a named
 *              socket still here, from an abstract and a path-named one
 *              closed since, and from an unnamed one: recvfrom must tell
 *              each sender's name again
 *   self       a datagram socket bound to a path and connected to its own
 *              name, holding a datagram it sent itself
 *   passopts   a socketpair end with SO_PASSSEC and SO_PASSPIDFD on (where the
 *              kernel has it), the other end with SO_PASSCRED only
 *
 * `argv[2] == "ext"`, argv[3] a path: only a datagram socket connected to a
 * socket outside the tree bound there; after SIGTERM it sends "after restore".
 *
 * After SIGTERM: names (getsockname), files at the paths untouched, queues,
 * connections, and which listener a new connection to the reused path reaches.
 */
#define _GNU_SOURCE
#include "fixture.h"
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static socklen_t address(struct sockaddr_un *un, const char *name)
{
	memset(un, 0, sizeof(*un));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, name, strlen(name));
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
}

static int bound(int type, const char *name)
{
	struct sockaddr_un un;
	socklen_t size = address(&un, name);
	int fd = socket(AF_UNIX, type, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&un, size) != 0) die(name);
	return fd;
}

static int connected(int type, const char *name)
{
	struct sockaddr_un un;
	socklen_t size = address(&un, name);
	int fd = socket(AF_UNIX, type, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&un, size) != 0) die(name);
	return fd;
}

static void send_to(const char *name, const char *text)
{
	struct sockaddr_un un;
	socklen_t size = address(&un, name);
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || sendto(fd, text, strlen(text), 0, (struct sockaddr *)&un, size) != (ssize_t)strlen(text)) die(text);
	close(fd);
}

static void expect_name(int fd, const char *name, const char *what)
{
	struct sockaddr_un un;
	socklen_t size = sizeof(un);
	memset(&un, 0, sizeof(un));
	if (getsockname(fd, (struct sockaddr *)&un, &size) != 0) { fail("%s: getsockname: %s", what, strerror(errno)); return; }
	if (strcmp(un.sun_path, name) != 0) fail("%s: named \"%s\", not \"%s\"", what, un.sun_path, name);
}

static void expect(int fd, const char *text, const char *what)
{
	char buf[256];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n != (ssize_t)strlen(text) || memcmp(buf, text, strlen(text)) != 0) fail("%s: read %zd bytes, not \"%s\"", what, n, text);
}

/* The next datagram on `fd` is `text`, from `from` ("" for unnamed; a leading '@' for abstract). */
static void expect_from(int fd, const char *text, const char *from, const char *what)
{
	char buf[256];
	struct sockaddr_un un;
	socklen_t size = sizeof(un);
	memset(&un, 0, sizeof(un));
	ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&un, &size);
	if (n != (ssize_t)strlen(text) || memcmp(buf, text, strlen(text)) != 0) { fail("%s: read %zd bytes", what, n); return; }
	char name[120] = "";
	size_t len = size > offsetof(struct sockaddr_un, sun_path) ? size - offsetof(struct sockaddr_un, sun_path) : 0;
	if (len > 0 && un.sun_path[0] == 0) { name[0] = '@'; memcpy(name + 1, un.sun_path + 1, len - 1); name[len] = 0; }
	else if (len > 0) snprintf(name, sizeof(name), "%.*s", (int)strnlen(un.sun_path, len), un.sun_path);
	if (strcmp(name, from) != 0) fail("%s: from \"%s\", not \"%s\"", what, name, from);
}

static int bound_abstract(const char *name)
{
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path + 1, name, strlen(name));
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))) != 0) die(name);
	return fd;
}

static void send_abstract(int from, const char *to, const char *text)
{
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path + 1, to, strlen(to));
	if (sendto(from, text, strlen(text), 0, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(to)))
	    != (ssize_t)strlen(text)) die(text);
}

static void expect_type(const char *path, mode_t type, const char *what)
{
	struct stat st;
	if (lstat(path, &st) != 0) { if (type) fail("%s: %s is gone", what, path); return; }
	if (!type) fail("%s: %s exists (mode %o)", what, path, st.st_mode);
	else if ((st.st_mode & S_IFMT) != type) fail("%s: %s has mode %o", what, path, st.st_mode);
}

static int wait_term(void)
{
	ready_then_wait(&term);
	return 0;
}

static int finish(void)
{
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
	printf("PASS\n");
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);
	char path[512];

	if (argc > 3 && strcmp(argv[2], "ext") == 0) {
		int ext = connected(SOCK_DGRAM, argv[3]);
		if (send(ext, "before dump", 11, 0) != 11) die("send ext");
		wait_term();
		struct sockaddr_un un;
		socklen_t size = sizeof(un);
		memset(&un, 0, sizeof(un));
		if (getpeername(ext, (struct sockaddr *)&un, &size) != 0 || strcmp(un.sun_path, argv[3]) != 0) fail("ext: peer name changed");
		if (send(ext, "after restore", 13, 0) != 13) fail("ext: cannot send (%s)", strerror(errno));
		return finish();
	}

	/* Relative names, from a working directory of their own. */
	snprintf(path, sizeof(path), "%s/rel", dir);
	if (mkdir(path, 0755) != 0 || chdir(path) != 0) die("rel folder");
	int rl = bound(SOCK_STREAM, "rel.sock");
	if (listen(rl, 4) != 0) die("listen rel");
	int rc = connected(SOCK_STREAM, "rel.sock");
	int ra = accept(rl, NULL, NULL);
	if (ra < 0 || write(rc, "relative", 8) != 8) die("accept rel");
	int rd = bound(SOCK_DGRAM, "reld.sock");
	send_to("reld.sock", "to a relative name");

	/* Deleted, replaced, FIFO. */
	char deleted[512], replaced[512], fifo[512], reused[512];
	snprintf(deleted, sizeof(deleted), "%s/deleted.sock", dir);
	snprintf(replaced, sizeof(replaced), "%s/replaced.sock", dir);
	snprintf(fifo, sizeof(fifo), "%s/fifo.sock", dir);
	snprintf(reused, sizeof(reused), "%s/reused.sock", dir);
	int dd = bound(SOCK_DGRAM, deleted);
	send_to(deleted, "to a deleted name");
	unlink(deleted);
	int dr = bound(SOCK_DGRAM, replaced);
	unlink(replaced);
	int file = open(replaced, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (file < 0 || write(file, "a file", 6) != 6) die("replacement");
	close(file);
	int df = bound(SOCK_DGRAM, fifo);
	unlink(fifo);
	if (mkfifo(fifo, 0600) != 0) die("mkfifo");

	/* A name reused: the first listener's file is removed, a second binds it. */
	int l1 = bound(SOCK_STREAM, reused);
	if (listen(l1, 4) != 0) die("listen l1");
	int c1 = connected(SOCK_STREAM, reused);
	int a1 = accept(l1, NULL, NULL);
	if (a1 < 0) die("accept l1");
	unlink(reused);
	int l2 = bound(SOCK_STREAM, reused);
	if (listen(l2, 4) != 0) die("listen l2");

	/* Bound to a temporary name, then its file renamed over the real one. */
	char renamed_tmp[512], renamed[512];
	snprintf(renamed_tmp, sizeof(renamed_tmp), "%s/renamed.sock.tmp", dir);
	snprintf(renamed, sizeof(renamed), "%s/renamed.sock", dir);
	int lr = bound(SOCK_STREAM, renamed_tmp);
	if (listen(lr, 4) != 0) die("listen renamed");
	if (rename(renamed_tmp, renamed) != 0) die("rename");
	int pending_renamed = connected(SOCK_STREAM, renamed);

	/* Many seqpacket records. */
	int qp[2];
	static char record[2000];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) != 0) die("socketpair");
	int big = 4 << 20;
	setsockopt(qp[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	for (int i = 1; i <= 2000; i++) {
		memset(record, (char)i, (size_t)i);
		if (send(qp[0], record, (size_t)i, MSG_DONTWAIT) != i) die("send record");
	}

	/* Named senders. */
	char server_name[64], live_name[64], gone_name[64], gone_path[512];
	snprintf(server_name, sizeof(server_name), "cryo-names-server-%d", (int)getpid());
	snprintf(live_name, sizeof(live_name), "cryo-names-live-%d", (int)getpid());
	snprintf(gone_name, sizeof(gone_name), "cryo-names-gone-%d", (int)getpid());
	snprintf(gone_path, sizeof(gone_path), "%s/gone-sender.sock", dir);
	int server = bound_abstract(server_name);
	int live = bound_abstract(live_name);
	send_abstract(live, server_name, "from the live one");
	int gone = bound_abstract(gone_name);
	send_abstract(gone, server_name, "from one gone");
	close(gone);
	int gonep = bound(SOCK_DGRAM, gone_path);
	send_abstract(gonep, server_name, "from a path gone");
	close(gonep);
	unlink(gone_path);
	int unnamed = socket(AF_UNIX, SOCK_DGRAM, 0);
	send_abstract(unnamed, server_name, "from nobody");
	close(unnamed);

	/* Connected to itself. */
	char self_path[512];
	snprintf(self_path, sizeof(self_path), "%s/self.sock", dir);
	int self = bound(SOCK_DGRAM, self_path);
	{
		struct sockaddr_un me;
		socklen_t size = address(&me, self_path);
		if (connect(self, (struct sockaddr *)&me, size) != 0 || send(self, "to myself", 9, 0) != 9) die("self");
	}

	/* Pass options: SO_PASSSEC and SO_PASSPIDFD on one end, SO_PASSCRED on the other. */
	int po[2], on = 1, has_pidfd = 1;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, po) != 0) die("socketpair passopts");
	if (setsockopt(po[0], SOL_SOCKET, SO_PASSSEC, &on, sizeof(on)) != 0) die("SO_PASSSEC");
	if (setsockopt(po[0], SOL_SOCKET, 76 /* SO_PASSPIDFD */, &on, sizeof(on)) != 0) {
		if (errno != ENOPROTOOPT) die("SO_PASSPIDFD");
		has_pidfd = 0;
	}
	if (setsockopt(po[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) != 0) die("SO_PASSCRED");

	wait_term();

	expect_name(self, self_path, "self-connected socket");
	{
		struct sockaddr_un peer;
		socklen_t size = sizeof(peer);
		memset(&peer, 0, sizeof(peer));
		if (getpeername(self, (struct sockaddr *)&peer, &size) != 0 || strcmp(peer.sun_path, self_path) != 0)
			fail("self: peer is \"%s\", not its own name", peer.sun_path);
		expect(self, "to myself", "self-connected socket's datagram");
		if (send(self, "again", 5, 0) != 5) fail("self: cannot send to itself: %s", strerror(errno));
		else expect(self, "again", "self-connected socket after restore");
	}
	{
		static const struct { int end, option, want; const char *name; } opts[] = {
			{ 0, SO_PASSSEC, 1, "SO_PASSSEC" }, { 0, 76, 1, "SO_PASSPIDFD" }, { 0, SO_PASSCRED, 0, "SO_PASSCRED" },
			{ 1, SO_PASSSEC, 0, "SO_PASSSEC" }, { 1, 76, 0, "SO_PASSPIDFD" }, { 1, SO_PASSCRED, 1, "SO_PASSCRED" },
		};
		for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
			int value = -1;
			socklen_t size = sizeof(value);
			if (opts[i].option == 76 && !has_pidfd) continue;
			if (getsockopt(po[opts[i].end], SOL_SOCKET, opts[i].option, &value, &size) != 0)
				fail("passopts %d: %s: %s", opts[i].end, opts[i].name, strerror(errno));
			else if (value != opts[i].want)
				fail("passopts end %d: %s is %d, was %d", opts[i].end, opts[i].name, value, opts[i].want);
		}
	}

	char at[80];
	snprintf(at, sizeof(at), "@%s", live_name);
	expect_from(server, "from the live one", at, "datagram from a named socket still here");
	snprintf(at, sizeof(at), "@%s", gone_name);
	expect_from(server, "from one gone", at, "datagram from an abstract name gone");
	expect_from(server, "from a path gone", gone_path, "datagram from a path gone");
	expect_from(server, "from nobody", "", "datagram from an unnamed socket");
	expect_type(gone_path, 0, "the gone sender's path");

	expect_name(rl, "rel.sock", "relative listener");
	expect_name(rd, "reld.sock", "relative datagram socket");
	expect_name(ra, "rel.sock", "relative accepted socket");
	snprintf(path, sizeof(path), "%s/rel/rel.sock", dir);
	expect_type(path, S_IFSOCK, "relative listener's file");
	expect(ra, "relative", "relative connection");
	if (write(ra, "back", 4) != 4) fail("relative connection: cannot reply");
	else expect(rc, "back", "relative connection reply");
	expect(rd, "to a relative name", "relative datagram");
	int rn = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un un;
	socklen_t size = address(&un, "rel.sock");
	if (connect(rn, (struct sockaddr *)&un, size) != 0) fail("a new connection to rel.sock: %s", strerror(errno));
	else if (accept(rl, NULL, NULL) < 0) fail("relative listener does not accept");

	expect_name(dd, deleted, "deleted");
	expect_type(deleted, 0, "deleted");
	expect(dd, "to a deleted name", "deleted socket's datagram");
	expect_name(dr, replaced, "replaced");
	expect_type(replaced, S_IFREG, "replaced");
	char buf[16];
	int rf = open(replaced, O_RDONLY);
	if (rf < 0 || read(rf, buf, sizeof(buf)) != 6 || memcmp(buf, "a file", 6) != 0) fail("replaced: the file there changed");
	expect_name(df, fifo, "fifo");
	expect_type(fifo, S_IFIFO, "fifo");

	expect_name(l1, reused, "first listener of the reused name");
	expect_name(l2, reused, "second listener of the reused name");
	expect_type(reused, S_IFSOCK, "reused name");
	if (write(c1, "still", 5) != 5) fail("reused: the first listener's connection cannot write");
	else expect(a1, "still", "reused: the first listener's connection");
	int rn2 = connected(SOCK_STREAM, reused);
	fcntl(l1, F_SETFL, O_NONBLOCK);
	fcntl(l2, F_SETFL, O_NONBLOCK);
	if (accept(l1, NULL, NULL) >= 0) fail("reused: a new connection reached the first listener");
	if (accept(l2, NULL, NULL) < 0) fail("reused: a new connection did not reach the second listener");
	close(rn2);

	expect_name(lr, renamed_tmp, "renamed listener");
	expect_type(renamed, S_IFSOCK, "renamed listener's file");
	expect_type(renamed_tmp, 0, "renamed listener's old name");
	fcntl(lr, F_SETFL, O_NONBLOCK);
	{
		int a = accept(lr, NULL, NULL);
		if (a < 0) fail("renamed: its pending connection is gone: %s", strerror(errno));
		else if (write(pending_renamed, "pend", 4) != 4) fail("renamed: the pending client cannot write: %s", strerror(errno));
		else expect(a, "pend", "renamed: the pending connection");
		if (a >= 0) close(a);
	}
	{
		struct sockaddr_un un;
		socklen_t size = address(&un, renamed);
		int c = socket(AF_UNIX, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&un, size) != 0) {
			fail("renamed: connect to %s: %s", renamed, strerror(errno));
		} else {
			int a = accept(lr, NULL, NULL);
			if (a < 0) fail("renamed: a connection to %s did not reach the listener", renamed);
			else close(a);
		}
		if (c >= 0) close(c);
	}

	for (int i = 1; i <= 2000; i++) {
		ssize_t n = recv(qp[1], record, sizeof(record), MSG_DONTWAIT);
		if (n != i) { fail("record %d: %zd bytes", i, n); break; }
		if (record[0] != (char)i || record[i - 1] != (char)i) { fail("record %d: bytes changed", i); break; }
	}
	if (recv(qp[1], record, sizeof(record), MSG_DONTWAIT) >= 0) fail("records: more than 2000");
	return finish();
}
