/*
 * udp: UDP sockets over loopback, IPv4 and (when the host has ::1) IPv6.
 *
 *   server   bound to 127.0.0.1 (an ephemeral port), SO_REUSEADDR, SO_RCVBUF
 *            and IP_TTL set, not connected; holds datagrams from the client
 *            and from a sender since closed
 *   client   bound, connected to the server, O_NONBLOCK; holds one datagram
 *            from the server
 *   server6  bound to ::1, IPV6_V6ONLY; client6 connected to it, a datagram
 *            queued each way
 *   fresh    an unbound UDP socket
 *
 * After SIGTERM: names, options, every queued datagram with its source, and
 * new datagrams both ways.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

typedef struct sockaddr_storage addr_t;
static socklen_t name_of(int fd, addr_t *a, int peer) {
    socklen_t size = sizeof(*a);
    memset(a, 0, sizeof(*a));
    if ((peer ? getpeername(fd, (struct sockaddr *)a, &size) : getsockname(fd, (struct sockaddr *)a, &size)) != 0) return 0;
    return size;
}
static int same(const addr_t *a, const addr_t *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}
static int sockopt(int fd, int level, int option) {
    int value = -12345;
    socklen_t size = sizeof(value);
    getsockopt(fd, level, option, &value, &size);
    return value;
}
static void expect_datagram(int fd, const char *text, const addr_t *from, const char *what) {
    char buffer[2048];
    addr_t source;
    socklen_t size = sizeof(source);
    memset(&source, 0, sizeof(source));
    ssize_t n = recvfrom(fd, buffer, sizeof(buffer), MSG_DONTWAIT, (struct sockaddr *)&source, &size);
    if (n < 0) { fail("%s: nothing queued (%s)", what, strerror(errno)); return; }
    if ((size_t)n != strlen(text) || memcmp(buffer, text, n) != 0) fail("%s: datagram changed", what);
    if (from && !same(&source, from)) fail("%s: the source address changed", what);
}
static void expect_empty(int fd, const char *what) {
    char byte;
    if (recv(fd, &byte, 1, MSG_DONTWAIT) >= 0 || errno != EAGAIN) fail("%s: more queued than expected", what);
}
/* A new datagram each way between a connected client and its server. */
static void both_ways(int server, int client, const char *what) {
    addr_t client_name;
    name_of(client, &client_name, 0);
    if (send(client, "ping", 4, 0) != 4) { fail("%s: client cannot send (%s)", what, strerror(errno)); return; }
    usleep(20000);
    expect_datagram(server, "ping", &client_name, what);
    if (sendto(server, "pong", 4, 0, (struct sockaddr *)&client_name, sizeof(client_name)) != 4) { fail("%s: server cannot send (%s)", what, strerror(errno)); return; }
    usleep(20000);
    expect_datagram(client, "pong", NULL, what);
}

int main(void) {
    signal(SIGTERM, on_term);
    int one = 1, ttl = 33, rcvbuf = 50000;
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int server = socket(AF_INET, SOCK_DGRAM, 0);
    if (server < 0 || setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0
        || setsockopt(server, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0
        || setsockopt(server, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl)) != 0
        || bind(server, (struct sockaddr *)&lo, sizeof(lo)) != 0) die("server");
    int rcvbuf_seen = sockopt(server, SOL_SOCKET, SO_RCVBUF);
    addr_t server_name, client_name, stranger_name;
    name_of(server, &server_name, 0);
    int client = socket(AF_INET, SOCK_DGRAM, 0);
    if (client < 0 || bind(client, (struct sockaddr *)&lo, sizeof(lo)) != 0
        || connect(client, (struct sockaddr *)&server_name, sizeof(struct sockaddr_in)) != 0) die("client");
    name_of(client, &client_name, 0);
    int stranger = socket(AF_INET, SOCK_DGRAM, 0);
    if (stranger < 0 || bind(stranger, (struct sockaddr *)&lo, sizeof(lo)) != 0) die("stranger bind");
    if (sendto(stranger, "from a stranger", 15, 0, (struct sockaddr *)&server_name, sizeof(struct sockaddr_in)) != 15) die("stranger");
    name_of(stranger, &stranger_name, 0);
    close(stranger);
    if (send(client, "first", 5, 0) != 5 || send(client, "second, longer", 14, 0) != 14) die("client send");
    if (sendto(server, "to the client", 13, 0, (struct sockaddr *)&client_name, sizeof(struct sockaddr_in)) != 13) die("server send");
    if (fcntl(client, F_SETFL, O_NONBLOCK) != 0) die("O_NONBLOCK");
    int fresh = socket(AF_INET, SOCK_DGRAM, 0);

    int server6 = socket(AF_INET6, SOCK_DGRAM, 0), client6 = -1;
    addr_t server6_name, client6_name;
    struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    if (server6 >= 0 && (setsockopt(server6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0
                         || bind(server6, (struct sockaddr *)&lo6, sizeof(lo6)) != 0)) {
        close(server6);
        server6 = -1; /* no IPv6 loopback here */
    }
    if (server6 >= 0) {
        name_of(server6, &server6_name, 0);
        client6 = socket(AF_INET6, SOCK_DGRAM, 0);
        if (client6 < 0 || connect(client6, (struct sockaddr *)&server6_name, sizeof(struct sockaddr_in6)) != 0) die("client6");
        name_of(client6, &client6_name, 0);
        if (send(client6, "six", 3, 0) != 3) die("send6");
        if (sendto(server6, "six back", 8, 0, (struct sockaddr *)&client6_name, sizeof(struct sockaddr_in6)) != 8) die("send6 back");
    }
    usleep(20000);

    ready_then_wait(&term);

    addr_t a;
    if (!name_of(server, &a, 0) || !same(&a, &server_name)) fail("server address changed");
    if (!name_of(client, &a, 0) || !same(&a, &client_name)) fail("client address changed");
    if (!name_of(client, &a, 1) || !same(&a, &server_name)) fail("client no longer connected to the server");
    if (name_of(server, &a, 1)) fail("server became connected");
    if (sockopt(server, SOL_SOCKET, SO_REUSEADDR) != 1) fail("SO_REUSEADDR lost");
    if (sockopt(client, SOL_SOCKET, SO_REUSEADDR) != 0) fail("SO_REUSEADDR appeared on the client");
    if (sockopt(server, SOL_SOCKET, SO_RCVBUF) != rcvbuf_seen) fail("SO_RCVBUF %d, was %d", sockopt(server, SOL_SOCKET, SO_RCVBUF), rcvbuf_seen);
    if (sockopt(server, IPPROTO_IP, IP_TTL) != 33) fail("IP_TTL %d, was 33", sockopt(server, IPPROTO_IP, IP_TTL));
    if (!(fcntl(client, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    if (fcntl(server, F_GETFL) & O_NONBLOCK) fail("O_NONBLOCK appeared on the server");
    if (sockopt(fresh, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM || sockopt(fresh, SOL_SOCKET, SO_DOMAIN) != AF_INET) fail("fresh socket changed");
    else if (name_of(fresh, &a, 0) && ((struct sockaddr_in *)&a)->sin_port != 0) fail("fresh socket became bound");

    expect_datagram(server, "from a stranger", &stranger_name, "stranger's datagram");
    expect_datagram(server, "first", &client_name, "client's first datagram");
    expect_datagram(server, "second, longer", &client_name, "client's second datagram");
    expect_empty(server, "server");
    expect_datagram(client, "to the client", &server_name, "server's datagram");
    expect_empty(client, "client");
    both_ways(server, client, "IPv4 pair");

    if (server6 >= 0) {
        if (!name_of(server6, &a, 0) || !same(&a, &server6_name)) fail("IPv6 server address changed");
        if (sockopt(server6, IPPROTO_IPV6, IPV6_V6ONLY) != 1) fail("IPV6_V6ONLY lost");
        if (!name_of(client6, &a, 1) || !same(&a, &server6_name)) fail("IPv6 client no longer connected");
        expect_datagram(server6, "six", &client6_name, "IPv6 client's datagram");
        expect_datagram(client6, "six back", &server6_name, "IPv6 server's datagram");
        expect_empty(server6, "IPv6 server");
        both_ways(server6, client6, "IPv6 pair");
    }
    if (failbuf[0]) { printf("FAIL: %s\n", failbuf); fflush(stdout); return 1; }
    printf("PASS\n");
    fflush(stdout);
    return 0;
}
