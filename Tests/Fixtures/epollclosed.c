/*
 * epollclosed: an epoll instance watching a pipe through a descriptor that
 * was closed afterwards (the pipe stays open through a dup). With argument
 * "reused" the closed number is then given to another file (/dev/null), so
 * the number no longer names what epoll watches. cryo must refuse either;
 * after SIGTERM the process checks the watch still reports the pipe.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/epoll.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    int p[2];
    int ep = epoll_create1(0);
    if (ep < 0 || pipe(p)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x4242 };
    int kept = dup(p[0]);
    if (kept < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    int watched = p[0];
    close(p[0]);
    if (argc > 1 && strcmp(argv[1], "reused") == 0 && open("/dev/null", O_RDONLY) != watched) {
        printf("FAIL: setup: /dev/null did not get fd %d\n", watched);
        return 1;
    }
    printf("WATCHED %d\n", watched);
    ready_then_wait(&term);
    if (write(p[1], "x", 1) != 1) fail("write: %s", strerror(errno));
    struct epoll_event out;
    if (epoll_wait(ep, &out, 1, 1000) != 1 || out.data.u64 != 0x4242) fail("the pipe's watch did not report");
    if (failbuf[0]) {
        printf("FAIL: %s\n", failbuf);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
