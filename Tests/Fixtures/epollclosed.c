/*
 * epollclosed: an epoll instance watching a pipe through a descriptor that
 * was closed afterwards. Argument "closed": the pipe stays open through a dup;
 * "reused": likewise, and the closed number is then given to /dev/null (close
 * on exec), so the number no longer names what epoll watches; "child": only a
 * child keeps the pipe open (as apache's prefork workers watch listeners their
 * parent keeps); "outside": only a process outside the tree does (a grandchild
 * left to init; cryo refuses that one). After SIGTERM the watch must still
 * report the pipe with its data, and the number must hold what it held before
 * (nothing, or /dev/null with FD_CLOEXEC).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

int main(int argc, char **argv) {
    const char *variant = argc > 1 ? argv[1] : "closed";
    signal(SIGTERM, on_term);
    int p[2];
    int ep = epoll_create1(0);
    if (ep < 0 || pipe(p)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x4242 };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    int watched = p[0];
    pid_t child = 0;
    pid_t outsider = 0;
    if (strcmp(variant, "child") == 0) {
        child = fork();
        if (child == 0) {
            signal(SIGTERM, SIG_DFL);
            for (;;) pause();
        }
    } else if (strcmp(variant, "outside") == 0) {
        int report[2];
        if (pipe(report)) {
            printf("FAIL: setup: pipe: %s\n", strerror(errno));
            return 1;
        }
        pid_t middle = fork();
        if (middle == 0) {
            if (fork() == 0) {
                signal(SIGTERM, SIG_DFL);
                pid_t me = getpid();
                if (write(report[1], &me, sizeof me) != sizeof me) _exit(1);
                for (;;) pause();
            }
            _exit(0);
        }
        waitpid(middle, NULL, 0);
        if (read(report[0], &outsider, sizeof outsider) != sizeof outsider) {
            printf("FAIL: setup: no pid from the grandchild\n");
            return 1;
        }
        close(report[0]);
        close(report[1]);
    } else if (dup(p[0]) < 0) {
        printf("FAIL: setup: dup: %s\n", strerror(errno));
        return 1;
    }
    close(p[0]);
    if (strcmp(variant, "reused") == 0 && open("/dev/null", O_RDONLY | O_CLOEXEC) != watched) {
        printf("FAIL: setup: /dev/null did not get fd %d\n", watched);
        return 1;
    }
    printf("WATCHED %d\n", watched);
    ready_then_wait(&term);
    if (write(p[1], "x", 1) != 1) fail("write: %s", strerror(errno));
    struct epoll_event out;
    int n = epoll_wait(ep, &out, 1, 1000);
    if (n != 1 || out.data.u64 != 0x4242) fail("the pipe's watch did not report (%d events, data 0x%llx)", n, n == 1 ? (unsigned long long)out.data.u64 : 0ULL);
    if (child > 0) {
        /* Only now: it holds the pipe's only read end. */
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    if (outsider > 0) kill(outsider, SIGKILL);
    int flags = fcntl(watched, F_GETFD);
    if (strcmp(variant, "reused") == 0) {
        struct stat st;
        if (flags < 0 || !(flags & FD_CLOEXEC)) fail("fd %d lost /dev/null or its FD_CLOEXEC (flags %d)", watched, flags);
        else if (fstat(watched, &st) || !S_ISCHR(st.st_mode)) fail("fd %d is not /dev/null any more", watched);
    } else if (flags >= 0) {
        fail("fd %d is open after restore; it was closed", watched);
    }
    if (failbuf[0]) {
        printf("FAIL: %s\n", failbuf);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
