/*
 * events: eventfd (plain and semaphore), signalfd, timerfd (periodic and
 * one-shot), epoll (level, edge-triggered and one-shot watches), a memfd with
 * contents and seals, and a named FIFO holding unread bytes; argv[1] is a
 * folder for the FIFO. After SIGTERM every object is checked for the state
 * set up before READY and for still working.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static char failures[4096];
static void fail(const char *what) {
    if (strlen(failures) + strlen(what) + 3 < sizeof(failures)) {
        if (failures[0]) strcat(failures, "; ");
        strcat(failures, what);
    }
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    signal(SIGTERM, on_term);

    int efd = eventfd(0, EFD_NONBLOCK);
    uint64_t add = 5000000000ull; /* beyond 32 bits */
    write(efd, &add, 8);
    int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    int sfd = signalfd(-1, &usr1, SFD_NONBLOCK);

    int periodic = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec every = { { 0, 20000000 }, { 0, 20000000 } };
    timerfd_settime(periodic, 0, &every, NULL);
    int oneshot = timerfd_create(CLOCK_REALTIME, 0);
    struct itimerspec later = { { 0, 0 }, { 3600, 0 } };
    timerfd_settime(oneshot, 0, &later, NULL);

    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1111 };
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = 0x2222;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = 0x3333;
    epoll_ctl(ep, EPOLL_CTL_ADD, periodic, &ev);

    int mfd = memfd_create("cryo-events", MFD_ALLOW_SEALING);
    char pattern[10000];
    for (int i = 0; i < (int)sizeof(pattern); i++) pattern[i] = (char)(i * 7 + 3);
    write(mfd, pattern, sizeof(pattern));
    lseek(mfd, 1234, SEEK_SET);
    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);

    char fifo[512];
    snprintf(fifo, sizeof(fifo), "%s/events.fifo", dir);
    unlink(fifo);
    mkfifo(fifo, 0600);
    int fin = open(fifo, O_RDONLY | O_NONBLOCK);
    int fout = open(fifo, O_WRONLY);
    write(fout, "fifo-bytes-still-here", 21);

    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    uint64_t v = 0;
    if (read(efd, &v, 8) != 8 || v != add) fail("eventfd count changed");
    if (read(sem, &v, 8) != 8 || v != 1) fail("semaphore eventfd does not count down by one");
    if (read(sem, &v, 8) != 8 || read(sem, &v, 8) != 8 || read(sem, &v, 8) != -1 || errno != EAGAIN)
        fail("semaphore eventfd did not hold 3");

    struct epoll_event out[8];
    kill(getpid(), SIGUSR1);
    write(efd, &(uint64_t){1}, 8);
    usleep(50000);
    int n = epoll_wait(ep, out, 8, 1000);
    int seen1 = 0, seen2 = 0, seen3 = 0;
    for (int i = 0; i < n; i++) {
        if (out[i].data.u64 == 0x1111) seen1 = 1;
        if (out[i].data.u64 == 0x2222) seen2 = 1;
        if (out[i].data.u64 == 0x3333) seen3 = 1;
    }
    if (!seen1) fail("epoll: eventfd watch lost");
    if (!seen2) fail("epoll: signalfd watch lost");
    if (!seen3) fail("epoll: timerfd watch lost");
    n = epoll_wait(ep, out, 8, 100);
    for (int i = 0; i < n; i++) {
        if (out[i].data.u64 == 0x2222) fail("epoll: edge-triggered watch fired twice");
        if (out[i].data.u64 == 0x3333) fail("epoll: one-shot watch fired twice");
    }
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR1) fail("signalfd did not read SIGUSR1");

    uint64_t ticks = 0;
    if (read(periodic, &ticks, 8) != 8 || ticks < 1) fail("periodic timerfd not firing");
    struct pollfd next = { .fd = periodic, .events = POLLIN };
    if (poll(&next, 1, 500) != 1) fail("periodic timerfd stopped after its first expiry");
    struct itimerspec cur;
    timerfd_gettime(periodic, &cur);
    if (cur.it_interval.tv_nsec != 20000000 || cur.it_interval.tv_sec != 0) fail("periodic timerfd interval changed");
    timerfd_gettime(oneshot, &cur);
    if (cur.it_value.tv_sec < 3000 || cur.it_value.tv_sec > 3600 || cur.it_interval.tv_sec != 0) fail("one-shot timerfd changed");

    char buf[10000];
    if (lseek(mfd, 0, SEEK_CUR) != 1234) fail("memfd offset changed");
    if (pread(mfd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf) || memcmp(buf, pattern, sizeof(buf))) fail("memfd contents changed");
    if (fcntl(mfd, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW)) fail("memfd seals changed");
    if (ftruncate(mfd, 10) == 0) fail("memfd shrink seal not enforced");
    char link[256] = {0};
    char self[64];
    snprintf(self, sizeof(self), "/proc/self/fd/%d", mfd);
    readlink(self, link, sizeof(link) - 1);
    if (!strstr(link, "memfd:cryo-events")) fail("memfd name lost");

    char got[64] = {0};
    if (read(fin, got, sizeof(got)) != 21 || memcmp(got, "fifo-bytes-still-here", 21)) fail("FIFO bytes lost");
    if (write(fout, "again", 5) != 5 || read(fin, got, 5) != 5 || memcmp(got, "again", 5)) fail("FIFO does not carry data");
    struct stat st;
    if (fstat(fin, &st) != 0 || !S_ISFIFO(st.st_mode)) fail("FIFO is not a FIFO");
    unlink(fifo);

    if (failures[0]) printf("FAIL: %s\n", failures);
    else printf("PASS\n");
    fflush(stdout);
    return failures[0] ? 1 : 0;
}
