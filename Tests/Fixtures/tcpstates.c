/*
 * tcpstates: TCP connections over loopback caught in every state a live
 * program leaves them in, both ends in this process (dumped with
 * --tcp-established).
 *
 *   (no argument)  five pairs (a connects, b is accepted):
 *     big      ESTABLISHED, megabytes queued both ways (send and receive
 *              queues of several MB on each end)
 *     half     a wrote "half" and shut down writing: a FIN_WAIT2, b
 *              CLOSE_WAIT with "half" unread
 *     lastack  a shut down writing (FIN_WAIT2, small receive buffer), b
 *              filled a's window and shut down: b LAST_ACK, its FIN queued
 *     closing  a filled b's window and shut down (its FIN queued), b wrote
 *              "y" and shut down: a CLOSING, b FIN_WAIT2
 *     finwait1 a filled b's window and shut down: a FIN_WAIT1, b ESTABLISHED
 *
 *   synsent PORT   a connect to 127.0.0.1:PORT (the test's listener, its accept
 *              queue full) left in SYN_SENT; after SIGTERM the connection
 *              must complete, carry "hello" out and "bye" back, then end
 *   pending    a listener (PORT printed) the test connects to without it
 *              being accepted, dumped with --skip-in-flight: after SIGTERM
 *              accept finds nothing, and a new connection works
 *   closed     a connected pair, dumped and restored with --tcp-close: after
 *              SIGTERM both ends read end of stream and writing fails EPIPE
 *   inflight   a listener (PORT printed) with a handshake cut off in SYN_RECV;
 *              after SIGTERM accepts "one" and "two" from `synpeer PORT`
 *   ports      sockets without a connection that still hold a port (dumped with
 *              --tcp-established), all on 127.0.0.1 beside a listener that stays:
 *                ended   a pair through the listener, each end shut down for
 *                        writing: the client's port held by its TIME_WAIT entry,
 *                        the accepted end's by the listener; both in CLOSE
 *                reset   accepted from the listener, "unread" queued, then reset
 *                        by its client (connect AF_UNSPEC): CLOSE, the reset
 *                        not reported yet
 *                beside  bound (SO_REUSEADDR) to a second listener's port
 *                        before that listener bound it, never listening
 *              After SIGTERM: each is still in CLOSE with its name, and the
 *              ended ones with their peer's (SO_PEERNAME); ended ends read end
 *              of stream, reset reads "unread", then ECONNRESET, then end of
 *              stream; writes fail with EPIPE; both listeners accept anew
 *   dropack    (in a network namespace of its own: it runs iptables) a pair
 *              whose accepted end b is left in LAST_ACK by a DROP rule of the
 *              fixture's own on b's port: a shut down writing, the rule went in,
 *              b shut down (a took b's FIN: CLOSE, its ACK dropped). After
 *              SIGTERM b is still in LAST_ACK; the rule goes, then b and a
 *              read end of stream and a cannot write
 *   synpeer PORT  not dumped: connects "one" at once (left in SYN_SENT), "two"
 *              on SIGUSR1; passes once both connected and were answered
 *   lockpeer       not dumped: the peer outside the tree of `tcp peer PORT`.
 *              Listens (PORT printed), accepts one connection; on SIGUSR1
 *              (sent while the tree is dumped and not yet restored) sends
 *              "from the test"; then expects "from the fixture" and "ping",
 *              answers "pong" and passes if the connection was never reset
 *
 * "STATES ..." lists them before READY. After SIGTERM each end must be in
 * the state it was in, then every pair runs to its normal end: every queued
 * byte arrives intact and in order, each side sees end of stream, and the
 * big pair still carries new bytes both ways.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static const char *names[] = { "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
                               "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING" };
static int state(int fd) {
    struct tcp_info info;
    socklen_t size = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0) return 0;
    return info.tcpi_state;
}
static const char *state_name(int s) { return s > 0 && s <= 11 ? names[s] : "?"; }

static unsigned char pattern(size_t i, int seed) { return (unsigned char)((i * 7 + i / 251 + (size_t)seed) & 0xff); }

static void buffers(int fd, int snd, int rcv) {
    if (snd && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof(snd)) != 0) die("SO_SNDBUFFORCE");
    if (rcv && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv)) != 0) die("SO_RCVBUFFORCE");
}

/* A connected pair over 127.0.0.1; buffer sizes set before the handshake (window scaling). */
static void pair(int *a, int *b, int asnd, int arcv, int bsnd, int brcv) {
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof(lo);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    buffers(l, bsnd, brcv);
    if (bind(l, (struct sockaddr *)&lo, sizeof(lo)) != 0 || listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&lo, &size) != 0)
        die("listener");
    *a = socket(AF_INET, SOCK_STREAM, 0);
    if (*a < 0) die("socket");
    buffers(*a, asnd, arcv);
    if (connect(*a, (struct sockaddr *)&lo, sizeof(lo)) != 0) die("connect");
    *b = accept(l, NULL, NULL);
    if (*b < 0) die("accept");
    close(l);
}

/* Writes the pattern without blocking until the kernel takes no more. */
static size_t fill(int fd, int seed) {
    static unsigned char chunk[65536];
    size_t sent = 0;
    int idle = 0;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (idle < 5) {
        for (size_t i = 0; i < sizeof(chunk); i++) chunk[i] = pattern(sent + i, seed);
        ssize_t n = send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL);
        if (n > 0) { sent += (size_t)n; idle = 0; continue; }
        if (n < 0 && errno != EAGAIN) die("send");
        idle++;
        usleep(20000);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return sent;
}

static void send_text(int fd, const char *text) {
    if (send(fd, text, strlen(text), MSG_NOSIGNAL) != (ssize_t)strlen(text)) die("send");
}

/* Reads until end of stream (10 s at most), checking `count` pattern bytes
 * (seed >= 0) or exactly `text`. */
static void drain(int fd, size_t count, int seed, const char *text, const char *what) {
    unsigned char buffer[65536];
    size_t have = 0;
    int eof = 0;
    double deadline = now() + 20;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (text) count = strlen(text);
    while (!eof && now() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
        if (n == 0) { eof = 1; break; }
        if (n < 0) { if (errno == EAGAIN || errno == EINTR) continue; fail("%s: recv: %s", what, strerror(errno)); return; }
        for (ssize_t i = 0; i < n; i++) {
            unsigned char want = text ? (unsigned char)(have + (size_t)i < count ? text[have + (size_t)i] : 0) : pattern(have + (size_t)i, seed);
            if (have + (size_t)i >= count || buffer[i] != want) {
                fail("%s: byte %zu differs or is extra", what, have + (size_t)i);
                return;
            }
        }
        have += (size_t)n;
    }
    if (have != count) fail("%s: %zu of %zu bytes arrived", what, have, count);
    if (!eof) fail("%s: no end of stream", what);
}

/* Both ends of the big pair read everything the other queued, at once (each
 * side's send queue drains only as the other reads). */
static void drain_both(int a, int b, size_t atob, size_t btoa) {
    unsigned char buffer[65536];
    size_t got[2] = { 0, 0 }, want[2] = { btoa, atob };
    int fds[2] = { a, b }, seeds[2] = { 2, 1 };
    double deadline = now() + 30;
    for (int i = 0; i < 2; i++) fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    while ((got[0] < want[0] || got[1] < want[1]) && now() < deadline) {
        struct pollfd p[2] = { { .fd = a, .events = POLLIN }, { .fd = b, .events = POLLIN } };
        if (poll(p, 2, 100) <= 0) continue;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            ssize_t n = recv(fds[i], buffer, sizeof(buffer), 0);
            if (n <= 0) { if (n < 0 && errno == EAGAIN) continue; fail("big %c: recv ended after %zu bytes", "ab"[i], got[i]); return; }
            for (ssize_t k = 0; k < n; k++)
                if (buffer[k] != pattern(got[i] + (size_t)k, seeds[i])) { fail("big %c: byte %zu differs", "ab"[i], got[i] + (size_t)k); return; }
            got[i] += (size_t)n;
        }
    }
    if (got[0] != want[0] || got[1] != want[1]) fail("big: a read %zu of %zu, b read %zu of %zu", got[0], want[0], got[1], want[1]);
}

static int queued(int fd, unsigned long request) {
    int n = -1;
    ioctl(fd, request, &n);
    return n;
}

static void wait_term(void) {
    ready_then_wait(&term);
}

static int finish(void) {
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

static int synsent(int port) {
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&to, sizeof(to)) == 0 || errno != EINPROGRESS) die("connect should be in progress");
    usleep(100000);
    printf("STATES synsent=%s\n", state_name(state(fd)));
    if (state(fd) != 2) die("not in SYN_SENT");
    wait_term();
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    if (poll(&p, 1, 20000) != 1) fail("the connection did not complete in 20 s (state %s)", state_name(state(fd)));
    int error = -1;
    socklen_t size = sizeof(error);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error) fail("connect: %s", strerror(error));
    else {
        fcntl(fd, F_SETFL, 0);
        send_text(fd, "hello");
        drain(fd, 0, -1, "bye", "synsent: the reply");
    }
    return finish();
}

static int pending(void) {
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof(lo);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&lo, sizeof(lo)) != 0 || listen(l, 4) != 0 || getsockname(l, (struct sockaddr *)&lo, &size) != 0)
        die("listener");
    printf("PORT %d\n", ntohs(lo.sin_port));
    wait_term();
    fcntl(l, F_SETFL, O_NONBLOCK);
    int a = accept(l, NULL, NULL);
    if (a >= 0) fail("a connection not yet accepted at dump came back");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&lo, sizeof(lo)) != 0) fail("new connection: %s", strerror(errno));
    struct pollfd p = { .fd = l, .events = POLLIN };
    poll(&p, 1, 5000);
    a = accept(l, NULL, NULL);
    if (a < 0) fail("accept: %s", strerror(errno));
    else {
        fcntl(a, F_SETFL, 0);
        send_text(c, "new");
        shutdown(c, SHUT_WR);
        drain(a, 0, -1, "new", "pending: a new connection");
    }
    return finish();
}

static int closed(void) {
    int a, b;
    pair(&a, &b, 0, 0, 0, 0);
    send_text(a, "lost");
    wait_term();
    char byte;
    for (int i = 0; i < 2; i++) {
        int fd = i ? b : a;
        ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
        if (n != 0) fail("%c: read gave %zd (%s), not end of stream", "ab"[i], n, n < 0 ? strerror(errno) : "bytes");
        if (send(fd, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE) fail("%c: writing did not fail with EPIPE", "ab"[i]);
    }
    return finish();
}

/* The rule on b's port, added or deleted with iptables (`-A` or `-D`). */
static int drop_rule(const char *how, int port) {
    char command[128];
    snprintf(command, sizeof(command), "iptables -w %s INPUT -p tcp --dport %d -j DROP", how, port);
    return system(command);
}

static int dropack(void) {
    int a, b;
    pair(&a, &b, 0, 0, 0, 0);
    struct sockaddr_in at;
    socklen_t size = sizeof(at);
    if (getsockname(b, (struct sockaddr *)&at, &size) != 0) die("getsockname");
    int port = ntohs(at.sin_port);
    if (shutdown(a, SHUT_WR) != 0) die("shutdown a");
    for (int i = 0; i < 200 && state(b) != TCP_CLOSE_WAIT; i++) usleep(5000);
    if (drop_rule("-A", port) != 0) { errno = 0; die("iptables -A"); }
    if (shutdown(b, SHUT_WR) != 0) die("shutdown b");
    for (int i = 0; i < 200 && (state(b) != TCP_LAST_ACK || state(a) != TCP_CLOSE); i++) usleep(5000);
    if (state(b) != TCP_LAST_ACK || state(a) != TCP_CLOSE) {
        drop_rule("-D", port);
        fprintf(stderr, "setup: b %s, a %s\n", state_name(state(b)), state_name(state(a)));
        return 2;
    }
    printf("STATES b LAST_ACK a CLOSE\n");
    wait_term();
    if (state(b) != TCP_LAST_ACK) fail("b: %s, not LAST_ACK", state_name(state(b)));
    if (drop_rule("-D", port) != 0) fail("iptables -D: the rule is gone");
    char byte;
    for (int i = 0; i < 2; i++) {
        int fd = i ? a : b;
        ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
        if (n != 0) fail("%c: read gave %zd (%s), not end of stream", "ba"[i], n, n < 0 ? strerror(errno) : "bytes");
    }
    if (send(a, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE) fail("a: writing did not fail with EPIPE");
    return finish();
}

static volatile sig_atomic_t usr1;
static void on_usr1(int sig) { (void)sig; usr1 = 1; }

static int lockpeer(void) {
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof(lo);
    signal(SIGUSR1, on_usr1);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&lo, sizeof(lo)) != 0 || listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&lo, &size) != 0)
        die("listener");
    printf("PORT %d\nREADY\n", ntohs(lo.sin_port));
    fflush(stdout);
    int fd = accept(l, NULL, NULL);
    if (fd < 0) die("accept");
    while (!usr1) usleep(10000);
    send_text(fd, "from the test");
    printf("SENT\n");
    fflush(stdout);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    const char *want = "from the fixtureping";
    char buffer[64];
    size_t have = 0, length = strlen(want);
    double deadline = now() + 60;
    while (have < length && now() < deadline) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, buffer + have, length - have, 0);
        if (n == 0) { fail("end of stream after %zu bytes", have); break; }
        if (n < 0) { if (errno == EAGAIN || errno == EINTR) continue; fail("recv: %s (after %zu bytes)", strerror(errno), have); break; }
        have += (size_t)n;
    }
    if (have == length && memcmp(buffer, want, length) != 0) fail("bytes changed");
    else if (have < length && !failbuf[0]) fail("%zu of %zu bytes in 60 s", have, length);
    if (!failbuf[0] && send(fd, "pong", 4, MSG_NOSIGNAL) != 4) fail("send pong: %s", strerror(errno));
    usleep(200000);
    return finish();
}

/* inflight: a listener (PORT printed) with one handshake left in SYN_RECV by the test
 * (its SYN-ACKs are dropped); after SIGTERM it accepts two connections (40 s at most):
 * from the peer whose handshake was cut off and from one that connected after the
 * dump. Each says its name and gets "ok" back. */
static int inflight(void) {
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof(lo);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&lo, sizeof(lo)) != 0 || listen(l, 4) != 0 || getsockname(l, (struct sockaddr *)&lo, &size) != 0)
        die("listener");
    printf("PORT %d\n", ntohs(lo.sin_port));
    wait_term();
    const char *seen[2] = { NULL, NULL };
    for (int i = 0; i < 2; i++) {
        struct pollfd p = { .fd = l, .events = POLLIN };
        if (poll(&p, 1, 40000) != 1) { fail("connection %d never came", i + 1); break; }
        int a = accept(l, NULL, NULL);
        if (a < 0) { fail("accept: %s", strerror(errno)); break; }
        char name[8] = { 0 };
        struct timeval tv = { 5, 0 };
        setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (recv(a, name, 3, MSG_WAITALL) != 3) fail("connection %d said nothing", i + 1);
        seen[i] = strcmp(name, "one") == 0 ? "one" : strcmp(name, "two") == 0 ? "two" : "?";
        send_text(a, "ok");
        close(a);
    }
    if (!failbuf[0] && (seen[0] == seen[1] || seen[0][0] == '?' || seen[1][0] == '?')) fail("connections said %s and %s", seen[0], seen[1]);
    return finish();
}

/* synpeer PORT: not dumped. Connects "one" to 127.0.0.1:PORT at once (the test drops the
 * SYN-ACKs, so it waits in SYN_SENT), prints READY; on SIGUSR1 (sent between dump and
 * restore) connects "two". Passes once both connected, said their names and got "ok". */
static int synpeer(int port) {
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    signal(SIGUSR1, on_usr1);
    int fds[2] = { -1, -1 };
    const char *names[2] = { "one", "two" };
    fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fds[0] < 0 || (connect(fds[0], (struct sockaddr *)&to, sizeof(to)) != 0 && errno != EINPROGRESS)) die("connect one");
    printf("READY\n");
    fflush(stdout);
    double deadline = now() + 60;
    int done[2] = { 0, 0 };
    while ((!done[0] || !done[1]) && now() < deadline && !failbuf[0]) {
        if (usr1 && fds[1] < 0) {
            fds[1] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fds[1] < 0 || (connect(fds[1], (struct sockaddr *)&to, sizeof(to)) != 0 && errno != EINPROGRESS)) die("connect two");
            printf("SENT\n");
            fflush(stdout);
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i] < 0 || done[i]) continue;
            struct pollfd p = { .fd = fds[i], .events = POLLOUT };
            if (poll(&p, 1, 50) != 1) continue;
            int error = 0;
            socklen_t size = sizeof(error);
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &error, &size);
            if (error) { fail("%s: connect: %s", names[i], strerror(error)); break; }
            fcntl(fds[i], F_SETFL, 0);
            send_text(fds[i], names[i]);
            char reply[3] = { 0 };
            struct timeval tv = { 10, 0 };
            setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            if (recv(fds[i], reply, 2, MSG_WAITALL) != 2 || strcmp(reply, "ok") != 0) fail("%s: no ok back", names[i]);
            done[i] = 1;
        }
        usleep(20000);
    }
    if (!failbuf[0] && (!done[0] || !done[1])) fail("not connected within 60 s: one %s, two %s", done[0] ? "yes" : "no", done[1] ? "yes" : "no");
    return finish();
}

static struct sockaddr_in name_of(int fd, int peer) {
    struct sockaddr_in a;
    socklen_t size = sizeof(a);
    memset(&a, 0, sizeof(a));
    if (peer ? getsockopt(fd, SOL_SOCKET, SO_PEERNAME, &a, &size) : getsockname(fd, (struct sockaddr *)&a, &size)) memset(&a, 0, sizeof(a));
    return a;
}

static int same_address(struct sockaddr_in a, struct sockaddr_in b) {
    return a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port != 0;
}

static int listener_on(struct sockaddr_in *at) {
    socklen_t size = sizeof(*at);
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 || bind(l, (struct sockaddr *)at, sizeof(*at)) != 0
        || listen(l, 4) != 0 || getsockname(l, (struct sockaddr *)at, &size) != 0) die("listener");
    return l;
}

/* A new connection to `at` is accepted by `l`. */
static void accepts(int l, struct sockaddr_in at, const char *what) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&at, sizeof(at)) != 0) { fail("%s: connect: %s", what, strerror(errno)); close(c); return; }
    struct pollfd p = { .fd = l, .events = POLLIN };
    int a = poll(&p, 1, 5000) == 1 ? accept(l, NULL, NULL) : -1;
    if (a < 0) fail("%s: nothing to accept", what);
    close(a);
    close(c);
}

static int ports(void) {
    struct sockaddr_in at = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int l = listener_on(&at);
    /* ended: FIN both ways; the client waits in TIME_WAIT (its socket in CLOSE). */
    int a = socket(AF_INET, SOCK_STREAM, 0);
    if (a < 0 || connect(a, (struct sockaddr *)&at, sizeof(at)) != 0) die("connect ended");
    int b = accept(l, NULL, NULL);
    if (b < 0) die("accept ended");
    shutdown(a, SHUT_WR);
    usleep(20000);
    shutdown(b, SHUT_WR);
    /* reset: the client goes away with an RST after "unread". */
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&at, sizeof(at)) != 0) die("connect reset");
    int d = accept(l, NULL, NULL);
    if (d < 0) die("accept reset");
    struct sockaddr_in c_name = name_of(c, 0);
    send_text(c, "unread");
    usleep(20000);
    struct sockaddr unspec = { .sa_family = AF_UNSPEC };
    if (connect(c, &unspec, sizeof(unspec)) != 0) die("disconnect");
    /* beside: bound first, then a listener on the same port. */
    struct sockaddr_in second = at;
    second.sin_port = 0;
    int one = 1, e = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t size = sizeof(second);
    if (e < 0 || setsockopt(e, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 || bind(e, (struct sockaddr *)&second, sizeof(second)) != 0
        || getsockname(e, (struct sockaddr *)&second, &size) != 0) die("beside");
    int m = listener_on(&second);
    usleep(100000);
    struct sockaddr_in names[4] = { name_of(a, 0), name_of(b, 0), name_of(d, 0), name_of(e, 0) };
    struct sockaddr_in peers[3] = { name_of(a, 1), name_of(b, 1), name_of(d, 1) };
    int fds[4] = { a, b, d, e };
    const char *labels[4] = { "ended client", "ended server", "reset", "beside" };
    printf("STATES ended=%s/%s reset=%s beside=%s\n", state_name(state(a)), state_name(state(b)), state_name(state(d)), state_name(state(e)));
    for (int i = 0; i < 4; i++) if (state(fds[i]) != 7) die("not in CLOSE");
    if (!same_address(peers[0], names[1]) || !same_address(peers[1], names[0]) || !same_address(peers[2], c_name)) die("peer names");
    if (names[1].sin_port != at.sin_port || names[2].sin_port != at.sin_port || names[3].sin_port != second.sin_port) die("ports");
    wait_term();
    for (int i = 0; i < 4; i++) {
        if (state(fds[i]) != 7) fail("%s: state %s, not CLOSE", labels[i], state_name(state(fds[i])));
        if (!same_address(name_of(fds[i], 0), names[i])) fail("%s: its name changed", labels[i]);
        if (i < 3 && !same_address(name_of(fds[i], 1), peers[i])) fail("%s: SO_PEERNAME changed", labels[i]);
    }
    char buffer[16];
    for (int i = 0; i < 2; i++) {
        ssize_t n = recv(fds[i], buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n != 0) fail("%s: read gave %zd (%s), not end of stream", labels[i], n, n < 0 ? strerror(errno) : "bytes");
    }
    ssize_t n = recv(d, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 6 || memcmp(buffer, "unread", 6) != 0) fail("reset: read gave %zd, not \"unread\"", n);
    n = recv(d, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != -1 || errno != ECONNRESET) fail("reset: then read gave %zd (%s), not ECONNRESET", n, n < 0 ? strerror(errno) : "bytes");
    n = recv(d, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n != 0) fail("reset: at last read gave %zd, not end of stream", n);
    for (int i = 0; i < 3; i++)
        if (send(fds[i], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE) fail("%s: writing did not fail with EPIPE", labels[i]);
    accepts(l, at, "listener");
    accepts(m, second, "second listener");
    return finish();
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    if (argc > 2 && strcmp(argv[1], "synsent") == 0) return synsent(atoi(argv[2]));
    if (argc > 1 && strcmp(argv[1], "pending") == 0) return pending();
    if (argc > 1 && strcmp(argv[1], "closed") == 0) return closed();
    if (argc > 1 && strcmp(argv[1], "dropack") == 0) return dropack();
    if (argc > 1 && strcmp(argv[1], "ports") == 0) return ports();
    if (argc > 1 && strcmp(argv[1], "lockpeer") == 0) return lockpeer();
    if (argc > 1 && strcmp(argv[1], "inflight") == 0) return inflight();
    if (argc > 2 && strcmp(argv[1], "synpeer") == 0) { signal(SIGTERM, SIG_DFL); return synpeer(atoi(argv[2])); }
    enum { BIG, HALF, LASTACK, CLOSING, FINWAIT1, PAIRS };
    static const char *pair_names[] = { "big", "half", "lastack", "closing", "finwait1" };
    int a[PAIRS], b[PAIRS], sa[PAIRS], sb[PAIRS];
    size_t atob = 0, btoa = 0, lastack = 0, closing = 0, finwait1 = 0;

    pair(&a[BIG], &b[BIG], 8 << 20, 4 << 20, 8 << 20, 4 << 20);
    atob = fill(a[BIG], 1);
    btoa = fill(b[BIG], 2);

    pair(&a[HALF], &b[HALF], 0, 0, 0, 0);
    send_text(a[HALF], "half");
    shutdown(a[HALF], SHUT_WR);

    pair(&a[LASTACK], &b[LASTACK], 0, 65536, 65536, 0);
    shutdown(a[LASTACK], SHUT_WR);
    usleep(20000);
    lastack = fill(b[LASTACK], 3);
    shutdown(b[LASTACK], SHUT_WR);

    pair(&a[CLOSING], &b[CLOSING], 65536, 0, 0, 65536);
    closing = fill(a[CLOSING], 4);
    shutdown(a[CLOSING], SHUT_WR);
    send_text(b[CLOSING], "y");
    shutdown(b[CLOSING], SHUT_WR);

    pair(&a[FINWAIT1], &b[FINWAIT1], 65536, 0, 0, 65536);
    finwait1 = fill(a[FINWAIT1], 5);
    shutdown(a[FINWAIT1], SHUT_WR);
    usleep(100000);

    static const int want_a[] = { 1, 5, 5, 11, 4 }, want_b[] = { 1, 8, 9, 5, 1 };
    printf("STATES");
    for (int i = 0; i < PAIRS; i++) {
        sa[i] = state(a[i]);
        sb[i] = state(b[i]);
        printf(" %s=%s/%s", pair_names[i], state_name(sa[i]), state_name(sb[i]));
        if (sa[i] != want_a[i] || sb[i] != want_b[i]) die("a pair is not in the state it should be in");
    }
    printf("\nQUEUES big a: %d to send, %d to read; b: %d to send, %d to read\n",
           queued(a[BIG], SIOCOUTQ), queued(a[BIG], SIOCINQ), queued(b[BIG], SIOCOUTQ), queued(b[BIG], SIOCINQ));
    fflush(stdout);
    if (queued(a[BIG], SIOCOUTQ) < (2 << 20) || queued(b[BIG], SIOCINQ) < (1 << 20)) die("the big queues are not big");

    ready_then_wait(&term);

    for (int i = 0; i < PAIRS; i++) {
        int na = state(a[i]), nb = state(b[i]);
        if (na != sa[i] || nb != sb[i])
            fail("%s: states %s/%s, were %s/%s", pair_names[i], state_name(na), state_name(nb), state_name(sa[i]), state_name(sb[i]));
    }

    drain_both(a[BIG], b[BIG], atob, btoa);
    fcntl(a[BIG], F_SETFL, 0);
    fcntl(b[BIG], F_SETFL, 0);
    send_text(a[BIG], "ping");
    shutdown(a[BIG], SHUT_WR);
    drain(b[BIG], 0, -1, "ping", "big b: after restore");
    shutdown(b[BIG], SHUT_WR);
    drain(a[BIG], 0, -1, "", "big a: end");

    drain(b[HALF], 0, -1, "half", "half b");
    send_text(b[HALF], "reply");
    shutdown(b[HALF], SHUT_WR);
    drain(a[HALF], 0, -1, "reply", "half a");

    drain(a[LASTACK], lastack, 3, NULL, "lastack a");

    drain(b[CLOSING], closing, 4, NULL, "closing b");
    drain(a[CLOSING], 0, -1, "y", "closing a");

    drain(b[FINWAIT1], finwait1, 5, NULL, "finwait1 b");
    shutdown(b[FINWAIT1], SHUT_WR);
    drain(a[FINWAIT1], 0, -1, "", "finwait1 a");

    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
