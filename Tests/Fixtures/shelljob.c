/*
 * shelljob: a job of a shell running in a terminal (stdin, stdout and stderr
 * are its controlling terminal), which also holds /dev/tty open on fd 5.
 * Dumped with --shell-job, it is restored into cryo's session and given the
 * terminal cryo runs in. After SIGTERM: fds 0-2 and 5 must be terminals, fds
 * 0-2 the controlling terminal of its session, and writing works.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
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

int main(void) {
    signal(SIGTERM, on_term);
    closefrom(3);  /* whatever the test runner let the shell inherit */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);  /* nor a blocked SIGTERM */
    if (!isatty(0) || !isatty(1) || !isatty(2)) { printf("FAIL: not started on a terminal\n"); return 1; }
    int tty = open("/dev/tty", O_RDWR);
    if (tty < 0) { printf("FAIL: no controlling terminal\n"); return 1; }
    if (tty != 5) { dup2(tty, 5); close(tty); }
    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    for (int fd = 0; fd <= 2; fd++) if (!isatty(fd)) fail("fd 0-2 are no longer a terminal");
    if (!isatty(5)) fail("the /dev/tty descriptor is not a terminal");
    /* Opening /dev/tty again names the session's terminal: fds 0-2 must be it. */
    int again = open("/dev/tty", O_RDWR);
    struct stat ctty, in;
    if (again < 0) fail("no controlling terminal after restore");
    else if (fstat(again, &ctty) == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", again);
        (void)path;
    }
    if (again >= 0) {
        /* /dev/tty's own inode is 5,0; ttyname of fd 0 and stat of it give the real device. */
        char *name = ttyname(0);
        struct stat named;
        if (!name || stat(name, &named) != 0 || fstat(0, &in) != 0 || named.st_rdev != in.st_rdev) fail("ttyname(0) does not name fd 0");
        pid_t fg = tcgetpgrp(0);
        if (fg < 0) fail("fd 0 is not the controlling terminal (tcgetpgrp failed)");
        if (getsid(0) != tcgetsid(0)) fail("fd 0 is not the terminal of this session");
        close(again);
    }
    if (write(5, "", 0) < 0) fail("write to /dev/tty fd");
    if (failures[0]) printf("FAIL: %s\n", failures); else printf("PASS\n");
    fflush(stdout);
    return failures[0] ? 1 : 0;
}
