/*
 * pty: a pseudo-terminal pair made inside the process (opened with
 * O_NOCTTY: it is not the controlling terminal), its slave in raw mode with
 * a custom VMIN/VTIME and c_lflag, a window size, bytes written into the
 * master and not yet read from the slave and the reverse, and a second
 * master that stays locked and is in packet mode (TIOCPKT), and a third, unlocked, whose slave
 * was never opened (its termios set through the master, its node's owner 4321:6
 * and mode 0640 by name): neither of these two
 * may read EIO (POLLHUP) after restore, as no slave ever went away; the
 * third's slave opens by name and works. After SIGTERM: termios, window size, the queued
 * bytes, the lock, packet mode, the slave's owner (1234:5) and mode (0604)
 * and the pairing (ptsname of the master names the slave
 * open; its number may differ from before) are checked, and the pair still
 * carries bytes both ways.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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

static ssize_t read_some(int fd, char *buf, size_t size) {
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, 2000) <= 0) return -1;
    return read(fd, buf, size);
}

int main(void) {
    signal(SIGTERM, on_term);
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) { printf("FAIL: posix_openpt\n"); return 1; }
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (slave < 0) { printf("FAIL: open slave\n"); return 1; }

    struct termios t;
    tcgetattr(slave, &t);
    cfmakeraw(&t);
    t.c_cc[VMIN] = 5;
    t.c_cc[VTIME] = 7;
    t.c_lflag |= TOSTOP;
    cfsetspeed(&t, B57600);
    tcsetattr(slave, TCSANOW, &t);
    struct termios want;
    tcgetattr(slave, &want);
    struct winsize ws = { 42, 132, 640, 480 };
    ioctl(master, TIOCSWINSZ, &ws);

    write(master, "to the slave", 12);
    write(slave, "to the master", 13);
    if (fchown(slave, 1234, 5) || fchmod(slave, 0604)) { printf("FAIL: fchown/fchmod of the slave\n"); return 1; }
    int fresh = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (fresh < 0 || grantpt(fresh) || unlockpt(fresh)) { printf("FAIL: posix_openpt (third)\n"); return 1; }
    struct termios ft;
    tcgetattr(fresh, &ft);  /* a master's termios are its slave's */
    ft.c_cc[VMIN] = 3;
    ft.c_lflag &= ~(tcflag_t)ECHO;
    tcsetattr(fresh, TCSANOW, &ft);
    if (chown(ptsname(fresh), 4321, 6) || chmod(ptsname(fresh), 0640)) { printf("FAIL: chown/chmod of the third slave\n"); return 1; }
    int locked = posix_openpt(O_RDWR | O_NOCTTY);  /* never unlocked */
    int on = 1;
    if (locked < 0 || ioctl(locked, TIOCPKT, &on)) { printf("FAIL: TIOCPKT\n"); return 1; }
    /* Wait until the bytes are queued on both sides. */
    for (int i = 0; i < 200; i++) {
        int a = 0, b = 0;
        ioctl(slave, FIONREAD, &a);
        ioctl(master, FIONREAD, &b);
        if (a == 12 && b == 13) break;
        usleep(5000);
    }

    struct pollfd hup[2] = { { locked, POLLIN, 0 }, { fresh, POLLIN, 0 } };
    if (poll(hup, 2, 0) != 0) { printf("FAIL: a master whose slave was never opened polls 0x%x 0x%x\n", hup[0].revents, hup[1].revents); return 1; }
    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    struct termios got;
    if (tcgetattr(slave, &got) != 0) fail("tcgetattr on the slave");
    else {
        if (got.c_iflag != want.c_iflag || got.c_oflag != want.c_oflag || got.c_lflag != want.c_lflag
            || (got.c_cflag & ~CBAUD) != (want.c_cflag & ~CBAUD)) fail("termios flags differ");
        if (got.c_cc[VMIN] != 5 || got.c_cc[VTIME] != 7) fail("VMIN/VTIME differ");
        if (cfgetospeed(&got) != B57600) fail("speed differs");
    }
    struct winsize wg = {0};
    ioctl(slave, TIOCGWINSZ, &wg);
    if (wg.ws_row != 42 || wg.ws_col != 132 || wg.ws_xpixel != 640 || wg.ws_ypixel != 480) fail("window size differs");

    char buf[64] = {0};
    ssize_t n = read_some(slave, buf, sizeof buf);
    if (n != 12 || memcmp(buf, "to the slave", 12) != 0) fail("bytes queued for the slave lost");
    memset(buf, 0, sizeof buf);
    n = read_some(master, buf, sizeof buf);
    if (n != 13 || memcmp(buf, "to the master", 13) != 0) fail("bytes queued for the master lost");

    /* Pairing: the master's slave is the one open (numbers may differ). */
    struct stat named, open_slave;
    char *name = ptsname(master);
    if (!name || stat(name, &named) != 0 || fstat(slave, &open_slave) != 0 || named.st_rdev != open_slave.st_rdev)
        fail("the open slave is not the master's");
    int lock = 0;
    if (ioctl(locked, TIOCGPTLCK, &lock) != 0 || lock != 1) fail("second pty is no longer locked");
    if (ioctl(master, TIOCGPTLCK, &lock) != 0 || lock != 0) fail("first pty became locked");
    struct stat node;
    if (fstat(slave, &node) || node.st_uid != 1234 || node.st_gid != 5 || (node.st_mode & 07777) != 0604)
        fail("the slave's owner or mode differs");
    int packet = -1;
    if (ioctl(locked, TIOCGPKT, &packet) != 0 || packet != 1) fail("second pty left packet mode");
    if (ioctl(master, TIOCGPKT, &packet) != 0 || packet != 0) fail("first pty entered packet mode");
    if (!(fcntl(slave, F_GETFL) & O_NONBLOCK)) fail("slave lost O_NONBLOCK");

    struct pollfd later[2] = { { locked, POLLIN, 0 }, { fresh, POLLIN, 0 } };
    if (poll(later, 2, 0) != 0 && ((later[0].revents | later[1].revents) & POLLHUP))
        fail("a master whose slave was never opened says POLLHUP (reads EIO)");
    char none;
    errno = 0;
    if (read(fresh, &none, 1) != -1 || errno != EAGAIN) fail("third master: read gave EIO or data, not EAGAIN");
    struct termios fg;
    if (tcgetattr(fresh, &fg) || fg.c_cc[VMIN] != 3 || (fg.c_lflag & ECHO)) fail("third pty's termios differ");
    struct stat fresh_node;
    if (stat(ptsname(fresh), &fresh_node) || fresh_node.st_uid != 4321 || fresh_node.st_gid != 6 || (fresh_node.st_mode & 07777) != 0640)
        fail("third pty's slave node lost its owner or mode");
    int fresh_slave = open(ptsname(fresh), O_RDWR | O_NOCTTY);
    if (fresh_slave < 0) fail("third pty's slave does not open");
    else {
        struct termios st;
        if (tcgetattr(fresh_slave, &st) || st.c_cc[VMIN] != 3) fail("third pty's slave has other termios");
        if (write(fresh_slave, "x\n", 2) != 2) fail("third pty: write to the slave");
        struct pollfd in = { fresh, POLLIN, 0 };
        if (poll(&in, 1, 2000) != 1 || read(fresh, buf, sizeof buf) <= 0) fail("third pty: nothing reached the master");
    }

    write(master, "again", 5);
    memset(buf, 0, sizeof buf);
    if (read_some(slave, buf, sizeof buf) != 5 || memcmp(buf, "again", 5) != 0) fail("master to slave after restore");
    write(slave, "back", 4);
    memset(buf, 0, sizeof buf);
    if (read_some(master, buf, sizeof buf) != 4 || memcmp(buf, "back", 4) != 0) fail("slave to master after restore");

    if (failures[0]) printf("FAIL: %s\n", failures); else printf("PASS\n");
    return failures[0] ? 1 : 0;
}
