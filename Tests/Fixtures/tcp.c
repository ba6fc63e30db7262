/*
 * tcp: TCP sockets over loopback.
 *
 *   (no argument)  a listener on 127.0.0.1 (SO_REUSEADDR, backlog 7); a
 *                  forked child connected to it and accepted, with bytes
 *                  queued both ways; an IPv6 connection within the process
 *                  (when ::1 exists), bytes queued both ways, TCP_NODELAY on
 *                  one end
 *   listen         only the listener and an unconnected TCP socket
 *   peer PORT      a connection to 127.0.0.1:PORT, a peer outside the tree
 *                  (the test): "from the fixture" is sent to it before READY;
 *                  after SIGTERM the fixture expects "from the test" (sent
 *                  before the dump), sends "ping" and expects "pong"
 *
 * "PORT N" names the listener's port, before READY. After SIGTERM each
 * connection must hold its queued bytes and carry new bytes both ways, and the
 * listener must accept a new connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }
static int sockopt(int fd, int level, int option) {
    int value = -12345;
    socklen_t size = sizeof(value);
    getsockopt(fd, level, option, &value, &size);
    return value;
}
static void send_text(int fd, const char *text) {
    if (send(fd, text, strlen(text), MSG_NOSIGNAL) != (ssize_t)strlen(text)) die("send");
}
/* Exactly `text` must come next, within 10 s. */
static void expect_text(int fd, const char *text, const char *what) {
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    char buffer[256];
    size_t length = strlen(text), have = 0;
    while (have < length) {
        ssize_t n = recv(fd, buffer + have, length - have, 0);
        if (n <= 0) { fail("%s: %zu of %zu bytes (%s)", what, have, length, n == 0 ? "end of stream" : strerror(errno)); break; }
        have += (size_t)n;
    }
    fcntl(fd, F_SETFL, flags);
    if (have == length && memcmp(buffer, text, length) != 0) fail("%s: bytes changed", what);
}
static void both_ways(int a, int b, const char *what) {
    char label[128];
    send_text(a, "ping");
    snprintf(label, sizeof(label), "%s: ping", what);
    expect_text(b, "ping", label);
    send_text(b, "pong");
    snprintf(label, sizeof(label), "%s: pong", what);
    expect_text(a, "pong", label);
}
static void wait_for_term(void) {
    ready_then_wait(&term);
}
static int finish(void) {
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argc > 1 ? argv[1] : "";
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

    if (strcmp(mode, "peer") == 0) {
        if (argc < 3) die("peer needs a port");
        lo.sin_port = htons((uint16_t)atoi(argv[2]));
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&lo, sizeof(lo)) != 0) die("connect to the peer");
        send_text(fd, "from the fixture");
        wait_for_term();
        expect_text(fd, "from the test", "bytes queued by the peer");
        send_text(fd, "ping");
        expect_text(fd, "pong", "the peer's reply");
        return finish();
    }

    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0
        || bind(listener, (struct sockaddr *)&lo, sizeof(lo)) != 0 || listen(listener, 7) != 0) die("listener");
    struct sockaddr_in name;
    socklen_t size = sizeof(name);
    getsockname(listener, (struct sockaddr *)&name, &size);
    int unconnected = socket(AF_INET, SOCK_STREAM, 0);
    if (strcmp(mode, "listen") == 0) {
        printf("PORT %d\n", ntohs(name.sin_port));
        wait_for_term();
        struct sockaddr_in again;
        size = sizeof(again);
        getsockname(listener, (struct sockaddr *)&again, &size);
        if (again.sin_port != name.sin_port) fail("listener port changed");
        if (sockopt(listener, SOL_SOCKET, SO_ACCEPTCONN) != 1) fail("no longer listening");
        if (sockopt(listener, SOL_SOCKET, SO_REUSEADDR) != 1) fail("SO_REUSEADDR lost");
        if (sockopt(unconnected, SOL_SOCKET, SO_TYPE) != SOCK_STREAM) fail("unconnected socket changed");
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&name, sizeof(name)) != 0) fail("a new connection is refused (%s)", strerror(errno));
        else {
            int a = accept(listener, NULL, NULL);
            if (a < 0) fail("accept: %s", strerror(errno)); else both_ways(c, a, "new connection");
        }
        return finish();
    }

    /* A child of the tree at the other end of a connection. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(listener);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&name, sizeof(name)) != 0) die("child connect");
        send_text(fd, "to the root");
        int sig;
        sigwait(&usr1, &sig);
        expect_text(fd, "to the child", "child: bytes queued by the root");
        send_text(fd, "ping");
        expect_text(fd, "pong", "child: the root's reply");
        if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); _exit(1); }
        _exit(0);
    }
    int accepted = accept(listener, NULL, NULL);
    if (accepted < 0) die("accept");
    send_text(accepted, "to the child");

    /* Both ends in this process, over IPv6. */
    int a6 = -1, b6 = -1;
    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    if (l6 >= 0 && bind(l6, (struct sockaddr *)&lo6, sizeof(lo6)) == 0 && listen(l6, 1) == 0) {
        size = sizeof(lo6);
        getsockname(l6, (struct sockaddr *)&lo6, &size);
        a6 = socket(AF_INET6, SOCK_STREAM, 0);
        if (a6 < 0 || connect(a6, (struct sockaddr *)&lo6, sizeof(lo6)) != 0) die("connect6");
        b6 = accept(l6, NULL, NULL);
        if (b6 < 0) die("accept6");
        if (setsockopt(a6, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) die("TCP_NODELAY");
        send_text(a6, "six to b");
        send_text(b6, "six to a, longer");
    }
    if (l6 >= 0) close(l6);
    usleep(50000);
    printf("PORT %d\n", ntohs(name.sin_port));
    wait_for_term();

    if (sockopt(listener, SOL_SOCKET, SO_ACCEPTCONN) != 1) fail("listener no longer listening");
    kill(child, SIGUSR1);
    expect_text(accepted, "to the root", "root: bytes queued by the child");
    expect_text(accepted, "ping", "root: the child's ping");
    send_text(accepted, "pong");
    int status = -1;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child ended with status %#x", status);
    if (a6 >= 0) {
        if (sockopt(a6, IPPROTO_TCP, TCP_NODELAY) != 1) fail("TCP_NODELAY lost");
        expect_text(b6, "six to b", "IPv6 bytes queued to b");
        expect_text(a6, "six to a, longer", "IPv6 bytes queued to a");
        both_ways(a6, b6, "IPv6 connection");
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&name, sizeof(name)) != 0) fail("a new connection is refused (%s)", strerror(errno));
    else {
        int a = accept(listener, NULL, NULL);
        if (a < 0) fail("accept: %s", strerror(errno)); else both_ways(c, a, "new connection");
    }
    return finish();
}
