/*
 * unix: AF_UNIX sockets; argv[1] is a folder for the named socket.
 *
 *   stream pair     bytes queued both ways (100000 one way), one end with
 *                   SO_PASSCRED and O_NONBLOCK, the other with SO_SNDBUF set
 *   datagram pair   3 datagrams of different sizes queued, SO_RCVBUF set
 *   seqpacket pair  records queued both ways
 *   shutdown pair   a stream pair whose one end is shut down for writing
 *                   after its last words
 *   closed peer     a stream end whose peer has closed, with bytes left
 *   listener        a stream socket bound in argv[1] (mode 0640), listening,
 *                   with a client connected and accepted, bytes queued on
 *                   both the accepted socket and the client
 *   abstract        a datagram socket bound to an abstract name, holding a
 *                   datagram from a sender since closed and one from a
 *                   datagram client connected to it
 *   unconnected     a fresh stream socket, and a seqpacket socket bound to
 *                   an abstract name but neither listening nor connected
 *
 * After SIGTERM everything is checked: queued bytes and message boundaries,
 * names, options, shutdown state, that the listener accepts a new
 * connection, and that every pair still carries data both ways.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static char failures[8192];
static void fail(const char *what) {
    if (strlen(failures) + strlen(what) + 3 < sizeof(failures)) {
        if (failures[0]) strcat(failures, "; ");
        strcat(failures, what);
    }
}
static void failf(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void failf(const char *format, ...) {
    char text[512];
    va_list ap;
    va_start(ap, format);
    vsnprintf(text, sizeof(text), format, ap);
    va_end(ap);
    fail(text);
}

static void fill(char *buffer, size_t length, int seed) {
    for (size_t i = 0; i < length; i++) buffer[i] = (char)(i * 31 + seed);
}

static int sockopt(int fd, int option) {
    int value = -12345;
    socklen_t size = sizeof(value);
    if (getsockopt(fd, SOL_SOCKET, option, &value, &size) != 0) return -12345;
    return value;
}

/* One message (or a stream's next bytes) must be exactly `expect`, already queued. */
static void expect_message(int fd, const char *expect, size_t length, const char *what) {
    char buffer[8192];
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0) failf("%s: nothing queued (%s)", what, strerror(errno));
    else if ((size_t)n != length) failf("%s: %zd bytes instead of %zu", what, n, length);
    else if (memcmp(buffer, expect, length) != 0) failf("%s: bytes changed", what);
}

static void expect_nothing_more(int fd, const char *what) {
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
    if (n >= 0 || errno != EAGAIN) failf("%s: more queued than expected (%zd)", what, n);
}

/* A fresh message each way: the pair still works. */
static void expect_both_ways(int a, int b, const char *what) {
    char buffer[64];
    if (send(a, "ping", 4, MSG_NOSIGNAL) != 4) { failf("%s: cannot send one way (%s)", what, strerror(errno)); return; }
    ssize_t n = recv(b, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 4 || memcmp(buffer, "ping", 4) != 0) failf("%s: ping did not arrive", what);
    if (send(b, "pong", 4, MSG_NOSIGNAL) != 4) { failf("%s: cannot send back (%s)", what, strerror(errno)); return; }
    n = recv(a, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 4 || memcmp(buffer, "pong", 4) != 0) failf("%s: pong did not arrive", what);
}

static socklen_t address(struct sockaddr_un *un, const char *name, size_t length) {
    memset(un, 0, sizeof(*un));
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, name, length);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
}

/* getsockname or getpeername must give back `name` (length bytes, path without its NUL). */
static void expect_name(int fd, int peer, const char *name, size_t length, const char *what) {
    struct sockaddr_un un;
    socklen_t size = sizeof(un);
    memset(&un, 0, sizeof(un));
    if ((peer ? getpeername(fd, (struct sockaddr *)&un, &size) : getsockname(fd, (struct sockaddr *)&un, &size)) != 0) {
        failf("%s: %s", what, strerror(errno));
        return;
    }
    size_t got = size - offsetof(struct sockaddr_un, sun_path);
    if (got > 0 && un.sun_path[0] != 0) got = strnlen(un.sun_path, got);
    if (got != length || memcmp(un.sun_path, name, length) != 0) failf("%s: name changed", what);
}

static const char a_to_b[] = "stream bytes from end A to end B";
#define BIG 100000
static char big[BIG];
static char d1[1], d2[300], d3[5000];
static const char record1[] = "first record";
static const char record2[] = "second, longer record";
static const char record3[] = "a record the other way";
static const char last_words[] = "last words before shutdown";
static const char reply[] = "reply to a half-closed end";
static const char goodbye[] = "goodbye from a closed peer";
static const char to_server[] = "to the server, unread";
static const char to_client[] = "to the client, unread";
static const char from_stranger[] = "a datagram from a sender now gone";
static const char from_client[] = "a datagram from the connected client";

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);

    int sp[2], dp[2], qp[2], xp[2], cp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0) die("socketpair stream");
    if (write(sp[0], a_to_b, sizeof(a_to_b)) != (ssize_t)sizeof(a_to_b)) die("write a_to_b");
    fill(big, BIG, 7);
    for (size_t done = 0; done < BIG;) {
        ssize_t n = write(sp[1], big + done, BIG - done);
        if (n <= 0) die("write big");
        done += (size_t)n;
    }
    int one = 1;
    if (setsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) die("SO_PASSCRED");
    if (fcntl(sp[0], F_SETFL, O_NONBLOCK) != 0) die("O_NONBLOCK");
    int sndbuf = 65536;
    if (setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) != 0) die("SO_SNDBUF");
    int sndbuf_seen = sockopt(sp[1], SO_SNDBUF);

    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) != 0) die("socketpair dgram");
    fill(d1, sizeof(d1), 1);
    fill(d2, sizeof(d2), 2);
    fill(d3, sizeof(d3), 3);
    if (send(dp[0], d1, sizeof(d1), 0) != sizeof(d1) || send(dp[0], d2, sizeof(d2), 0) != sizeof(d2)
        || send(dp[0], d3, sizeof(d3), 0) != sizeof(d3)) die("send datagrams");
    int rcvbuf = 50000;
    if (setsockopt(dp[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0) die("SO_RCVBUF");
    int rcvbuf_seen = sockopt(dp[1], SO_RCVBUF);

    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) != 0) die("socketpair seqpacket");
    if (send(qp[0], record1, sizeof(record1), 0) != sizeof(record1) || send(qp[0], record2, sizeof(record2), 0) != sizeof(record2)
        || send(qp[1], record3, sizeof(record3), 0) != sizeof(record3)) die("send records");

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, xp) != 0) die("socketpair shutdown");
    if (write(xp[0], last_words, sizeof(last_words)) != sizeof(last_words)) die("write last words");
    if (shutdown(xp[0], SHUT_WR) != 0) die("shutdown");
    if (write(xp[1], reply, sizeof(reply)) != sizeof(reply)) die("write reply");

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, cp) != 0) die("socketpair closed");
    if (write(cp[1], goodbye, sizeof(goodbye)) != sizeof(goodbye)) die("write goodbye");
    close(cp[1]);

    char path[256];
    snprintf(path, sizeof(path), "%s/unix.sock", dir);
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) { errno = ENAMETOOLONG; die("socket path"); }
    unlink(path);
    struct sockaddr_un un;
    socklen_t size = address(&un, path, strlen(path));
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&un, size) != 0 || listen(listener, 5) != 0) die("listener");
    if (chmod(path, 0640) != 0) die("chmod");
    int client = socket(AF_UNIX, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&un, size) != 0) die("connect");
    int accepted = accept(listener, NULL, NULL);
    if (accepted < 0) die("accept");
    if (write(client, to_server, sizeof(to_server)) != sizeof(to_server)
        || write(accepted, to_client, sizeof(to_client)) != sizeof(to_client)) die("write connection");

    char abstract[64];
    int abstract_length = snprintf(abstract, sizeof(abstract), "%ccryo-unix-%d", 0, (int)getpid());
    struct sockaddr_un aun;
    socklen_t asize = address(&aun, abstract, (size_t)abstract_length);
    int server = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (server < 0 || bind(server, (struct sockaddr *)&aun, asize) != 0) die("bind abstract");
    int stranger = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(stranger, from_stranger, sizeof(from_stranger), 0, (struct sockaddr *)&aun, asize) != sizeof(from_stranger)) die("sendto");
    close(stranger);
    int dclient = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (dclient < 0 || connect(dclient, (struct sockaddr *)&aun, asize) != 0) die("connect abstract");
    if (send(dclient, from_client, sizeof(from_client), 0) != sizeof(from_client)) die("send abstract");

    int fresh_stream = socket(AF_UNIX, SOCK_STREAM, 0);
    char abstract2[64];
    int abstract2_length = snprintf(abstract2, sizeof(abstract2), "%ccryo-unix-seqpacket-%d", 0, (int)getpid());
    struct sockaddr_un aun2;
    socklen_t asize2 = address(&aun2, abstract2, (size_t)abstract2_length);
    int bound_seqpacket = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fresh_stream < 0 || bound_seqpacket < 0 || bind(bound_seqpacket, (struct sockaddr *)&aun2, asize2) != 0) die("unconnected sockets");

    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("READY\n");
    fflush(stdout);
    while (!term) sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);

    /* Options first, before reading changes anything. */
    if (sockopt(sp[0], SO_PASSCRED) != 1) fail("SO_PASSCRED lost");
    if (sockopt(sp[1], SO_PASSCRED) != 0) fail("SO_PASSCRED appeared on the other end");
    if (!(fcntl(sp[0], F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    if (fcntl(sp[1], F_GETFL) & O_NONBLOCK) fail("O_NONBLOCK appeared on the other end");
    if (sockopt(sp[1], SO_SNDBUF) != sndbuf_seen) failf("SO_SNDBUF %d, was %d", sockopt(sp[1], SO_SNDBUF), sndbuf_seen);
    if (sockopt(dp[1], SO_RCVBUF) != rcvbuf_seen) failf("SO_RCVBUF %d, was %d", sockopt(dp[1], SO_RCVBUF), rcvbuf_seen);
    if (sockopt(sp[0], SO_PEEK_OFF) != -1 || sockopt(dp[1], SO_PEEK_OFF) != -1) fail("SO_PEEK_OFF left enabled");
    if (sockopt(sp[0], SO_TYPE) != SOCK_STREAM || sockopt(dp[0], SO_TYPE) != SOCK_DGRAM || sockopt(qp[0], SO_TYPE) != SOCK_SEQPACKET)
        fail("socket types changed");

    /* Stream pair: both queues, then both ways. */
    expect_message(sp[1], a_to_b, sizeof(a_to_b), "stream A->B");
    expect_nothing_more(sp[1], "stream A->B");
    static char got[BIG];
    size_t have = 0;
    while (have < BIG) {
        ssize_t n = recv(sp[0], got + have, BIG - have, MSG_DONTWAIT);
        if (n <= 0) break;
        have += (size_t)n;
    }
    if (have != BIG) failf("stream B->A: %zu of %d bytes", have, BIG);
    else if (memcmp(got, big, BIG) != 0) fail("stream B->A: bytes changed");
    expect_nothing_more(sp[0], "stream B->A");
    expect_both_ways(sp[0], sp[1], "stream pair");

    /* Datagrams keep their boundaries. */
    expect_message(dp[1], d1, sizeof(d1), "datagram 1");
    expect_message(dp[1], d2, sizeof(d2), "datagram 2");
    expect_message(dp[1], d3, sizeof(d3), "datagram 3");
    expect_nothing_more(dp[1], "datagram pair");
    expect_nothing_more(dp[0], "datagram pair, other end");
    expect_both_ways(dp[0], dp[1], "datagram pair");

    expect_message(qp[1], record1, sizeof(record1), "seqpacket record 1");
    expect_message(qp[1], record2, sizeof(record2), "seqpacket record 2");
    expect_message(qp[0], record3, sizeof(record3), "seqpacket record back");
    expect_nothing_more(qp[1], "seqpacket pair");
    expect_both_ways(qp[0], qp[1], "seqpacket pair");

    /* Shut down for writing: the last words, then end of stream; the other way still works. */
    expect_message(xp[1], last_words, sizeof(last_words), "shutdown pair last words");
    char byte;
    if (recv(xp[1], &byte, 1, MSG_DONTWAIT) != 0) fail("shutdown pair: no end of stream after the last words");
    errno = 0;
    if (send(xp[0], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE) fail("shutdown pair: the shut end can write again");
    expect_message(xp[0], reply, sizeof(reply), "shutdown pair reply");
    if (send(xp[1], "back", 4, MSG_NOSIGNAL) != 4) fail("shutdown pair: cannot write towards the shut end");
    else expect_message(xp[0], "back", 4, "shutdown pair, the open way");

    expect_message(cp[0], goodbye, sizeof(goodbye), "closed peer's bytes");
    if (recv(cp[0], &byte, 1, MSG_DONTWAIT) != 0) fail("closed peer: no end of stream");

    /* The listener: its file, its name, and it still accepts. */
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) fail("the listener's socket file is gone");
    else if ((st.st_mode & 07777) != 0640) failf("the socket file's mode is %o, not 640", st.st_mode & 07777);
    expect_name(listener, 0, path, strlen(path), "listener getsockname");
    if (sockopt(listener, SO_ACCEPTCONN) != 1) fail("listener no longer listening");
    expect_message(accepted, to_server, sizeof(to_server), "accepted socket's queue");
    expect_message(client, to_client, sizeof(to_client), "client's queue");
    expect_name(accepted, 0, path, strlen(path), "accepted getsockname");
    expect_name(client, 1, path, strlen(path), "client getpeername");
    expect_both_ways(client, accepted, "accepted connection");
    int fresh = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fresh, (struct sockaddr *)&un, size) != 0) failf("a new connection is refused (%s)", strerror(errno));
    else {
        int second = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (second < 0) failf("accepting a new connection: %s", strerror(errno));
        else expect_both_ways(fresh, second, "new connection");
    }

    /* The abstract datagram socket: name, both datagrams in order, the client still connected. */
    expect_name(server, 0, abstract, (size_t)abstract_length, "abstract getsockname");
    expect_name(dclient, 1, abstract, (size_t)abstract_length, "datagram client getpeername");
    expect_message(server, from_stranger, sizeof(from_stranger), "abstract datagram 1");
    expect_message(server, from_client, sizeof(from_client), "abstract datagram 2");
    expect_nothing_more(server, "abstract socket");
    if (send(dclient, "again", 5, 0) != 5) failf("datagram client cannot send (%s)", strerror(errno));
    else expect_message(server, "again", 5, "datagram client, after");

    /* The unconnected ones: still unnamed, or bound; the fresh one can connect, the bound one listen. */
    if (sockopt(fresh_stream, SO_TYPE) != SOCK_STREAM || sockopt(bound_seqpacket, SO_TYPE) != SOCK_SEQPACKET)
        fail("unconnected sockets changed type");
    expect_name(fresh_stream, 0, "", 0, "fresh socket getsockname");
    expect_name(bound_seqpacket, 0, abstract2, (size_t)abstract2_length, "bound seqpacket getsockname");
    if (connect(fresh_stream, (struct sockaddr *)&un, size) != 0) failf("the fresh socket cannot connect (%s)", strerror(errno));
    if (listen(bound_seqpacket, 1) != 0) failf("the bound seqpacket socket cannot listen (%s)", strerror(errno));

    if (failures[0]) { printf("FAIL: %s\n", failures); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
