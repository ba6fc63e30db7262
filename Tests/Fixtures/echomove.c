/*
 * An echo service whose connection moves to another host with its address
 * (cryo migrate --tcp-established --move-address), and its client.
 *
 *   server PORT [6]      listens on every address (IPv6 ones with 6), prints READY, serves one
 *                        client: every byte must follow the pattern, and goes
 *                        back. After SIGTERM: PASS if no byte was wrong, the
 *                        connection was never reset and every byte received
 *                        was echoed ("ECHOED n" before).
 *   client ADDR PORT     connects (to an IPv4 or IPv6 ADDR), prints READY, then until SIGTERM sends
 *                        256 pattern bytes, waits for them to come back and
 *                        checks each (every 10 ms), printing "BYTES n" about
 *                        every 0.2 s. After SIGTERM (the echo in flight
 *                        finished first): "BYTES n", "GAP s" (the longest time
 *                        between two echoes) and PASS if nothing was reset,
 *                        closed or wrong.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
static void die(const char *what) { fprintf(stderr, "setup: %s: %s\n", what, strerror(errno)); exit(2); }

static unsigned char pattern(unsigned long long i) { return (unsigned char)((i * 7 + i / 251 + 3) & 0xff); }

/* Every byte, blocking; 0, or the errno. */
static int send_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int server(int port, int v6) {
    int one = 1;
    struct sockaddr_in any = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    struct sockaddr_in6 any6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = IN6ADDR_ANY_INIT };
    int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0
        || (v6 ? bind(l, (struct sockaddr *)&any6, sizeof(any6)) : bind(l, (struct sockaddr *)&any, sizeof(any))) != 0
        || listen(l, 1) != 0)
        die("listener");
    printf("READY\n");
    fflush(stdout);
    int fd = accept(l, NULL, NULL);
    if (fd < 0) die("accept");
    close(l);  /* only the connection moves */
    unsigned long long received = 0, echoed = 0;
    int ended = 0;
    unsigned char buffer[4096];
    while (!term) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (ended || poll(&p, 1, 100) <= 0) { if (ended) usleep(100000); continue; }
        ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n == 0) { ended = 1; continue; }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            fail("recv: %s after %llu bytes", strerror(errno), received);
            ended = 1;
            continue;
        }
        for (ssize_t i = 0; i < n; i++)
            if (buffer[i] != pattern(received + (unsigned long long)i)) {
                fail("byte %llu is %u, not %u", received + (unsigned long long)i, buffer[i], pattern(received + (unsigned long long)i));
                break;
            }
        received += (unsigned long long)n;
        int e = send_all(fd, buffer, (size_t)n);
        if (e) { fail("send: %s after %llu bytes echoed", strerror(e), echoed); ended = 1; continue; }
        echoed += (unsigned long long)n;
    }
    if (received == 0) fail("no byte came");
    if (echoed != received) fail("%llu bytes received, %llu echoed", received, echoed);
    printf("ECHOED %llu\n", echoed);
    printf(failbuf[0] ? "FAIL: %s\n" : "PASS\n", failbuf);
    fflush(stdout);
    return failbuf[0] ? 1 : 0;
}

static int client(const char *address, int port) {
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    struct sockaddr_in6 to6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port) };
    int v6 = strchr(address, ':') != NULL;
    if (v6 ? inet_pton(AF_INET6, address, &to6.sin6_addr) != 1 : inet_pton(AF_INET, address, &to.sin_addr) != 1) die("address");
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || (v6 ? connect(fd, (struct sockaddr *)&to6, sizeof(to6)) : connect(fd, (struct sockaddr *)&to, sizeof(to))) != 0)
        die("connect");
    printf("READY\n");
    fflush(stdout);
    unsigned long long sent = 0, checked = 0;
    unsigned char out[256], in[256];
    double last = now(), gap = 0, printed = 0;
    int broken = 0;
    while (!term && !broken) {
        for (size_t i = 0; i < sizeof(out); i++) out[i] = pattern(sent + i);
        int e = send_all(fd, out, sizeof(out));
        if (e) { fail("send: %s after %llu bytes checked", strerror(e), checked); broken = 1; break; }
        sent += sizeof(out);
        /* The whole echo, even after SIGTERM: the service must have echoed every byte counted. */
        size_t have = 0;
        double deadline = now() + 120;
        while (have < sizeof(in)) {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            if (now() > deadline) { fail("no echo for 120 s after %llu bytes", checked); broken = 1; break; }
            if (poll(&p, 1, 100) <= 0) continue;
            ssize_t n = recv(fd, in + have, sizeof(in) - have, MSG_DONTWAIT);
            if (n == 0) { fail("end of stream after %llu bytes checked", checked + have); broken = 1; break; }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                fail("recv: %s after %llu bytes checked", strerror(errno), checked + have);
                broken = 1;
                break;
            }
            have += (size_t)n;
        }
        if (broken) break;
        if (memcmp(in, out, sizeof(in)) != 0) { fail("echo of bytes %llu.. differs", checked); broken = 1; break; }
        checked += sizeof(in);
        double t = now();
        if (t - last > gap) gap = t - last;
        last = t;
        if (t - printed > 0.2) {
            printf("BYTES %llu\n", checked);
            fflush(stdout);
            printed = t;
        }
        usleep(10000);
    }
    while (!term) usleep(50000);
    printf("BYTES %llu\nGAP %.3f\n", checked, gap);
    printf(failbuf[0] ? "FAIL: %s\n" : "PASS\n", failbuf);
    fflush(stdout);
    close(fd);
    return failbuf[0] ? 1 : 0;
}

int main(int argc, char **argv) {
    struct sigaction sa = { .sa_handler = on_term };  /* no SA_RESTART: poll and sleeps return */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]), argc == 4 && strcmp(argv[3], "6") == 0);
    if (argc == 4 && strcmp(argv[1], "client") == 0) return client(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: echomove server PORT | client ADDR PORT\n");
    return 2;
}
