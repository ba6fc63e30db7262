/*
 * deferaccept: a TCP listener with TCP_DEFER_ACCEPT (apache2 sets it) and a
 * client outside the tree (a grandchild left to init) that connected and
 * has sent nothing: the listener keeps it in SYN_RECV though the client sees
 * its connection established. cryo refuses the dump in one line that says
 * so; after SIGTERM the client's first bytes must still reach an accept.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(void) {
    signal(SIGTERM, on_term);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t size = sizeof(address);
    int seconds = 30;
    if (listener < 0 || setsockopt(listener, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, sizeof(seconds))
        || bind(listener, (struct sockaddr *)&address, size) || listen(listener, 8)
        || getsockname(listener, (struct sockaddr *)&address, &size)) {
        printf("FAIL: setup: listener: %s\n", strerror(errno));
        return 1;
    }
    int report[2], go[2];
    if (pipe(report) || pipe(go)) {
        printf("FAIL: setup: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t middle = fork();
    if (middle == 0) {
        if (fork() == 0) {
            close(listener);
            int client = socket(AF_INET, SOCK_STREAM, 0);
            if (client < 0 || connect(client, (struct sockaddr *)&address, sizeof(address))) _exit(1);
            pid_t me = getpid();
            if (write(report[1], &me, sizeof me) != sizeof me) _exit(1);
            char byte;
            if (read(go[0], &byte, 1) != 1) _exit(1);  /* the fixture's word, after SIGTERM */
            _exit(write(client, "hello", 5) == 5 ? 0 : 1);
        }
        _exit(0);
    }
    waitpid(middle, NULL, 0);
    pid_t client = 0;
    if (read(report[0], &client, sizeof client) != sizeof client) {
        printf("FAIL: setup: the client did not connect\n");
        return 1;
    }
    close(report[0]);
    close(report[1]);
    close(go[0]);
    printf("PORT %d\n", ntohs(address.sin_port));
    ready_then_wait(&term);
    if (write(go[1], "g", 1) != 1) fail("cannot wake the client: %s", strerror(errno));
    int accepted = accept(listener, NULL, NULL);
    char buffer[8] = { 0 };
    if (accepted < 0) fail("accept: %s", strerror(errno));
    else if (recv(accepted, buffer, sizeof buffer, MSG_WAITALL) != 5 || memcmp(buffer, "hello", 5)) fail("the client's bytes did not arrive");
    kill(client, SIGKILL);
    if (failbuf[0]) {
        printf("FAIL: %s\n", failbuf);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
