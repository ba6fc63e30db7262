/*
 * locks: an exclusive flock on one file, a POSIX write lock on bytes 10..29
 * of another and an open-file-description read lock on a third, in the
 * folder argv[1]. After SIGTERM a child process (forked then, so it holds no
 * lock itself) must find every lock held, by us, over the same range.
 * Two leases too: a write lease on a file open read-write, a read lease on
 * one open read-only. After SIGTERM F_GETLEASE must report both, and a child's
 * open of the write-leased file must be refused (EWOULDBLOCK) and signal us
 * (SIGIO) as the lease's break: the kernel holds it, not just our records.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t term, lease_broken;
static void on_term(int sig) { (void)sig; term = 1; }
static void on_io(int sig) { (void)sig; lease_broken = 1; }

static int open_in(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return open(path, O_RDWR | O_CREAT, 0600);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    signal(SIGTERM, on_term);
    int a = open_in(dir, "flock.dat"), b = open_in(dir, "posix.dat"), c = open_in(dir, "ofd.dat");
    struct flock posix = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
    struct flock ofd = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
    if (a < 0 || b < 0 || c < 0 || flock(a, LOCK_EX) || fcntl(b, F_SETLK, &posix) || fcntl(c, F_OFD_SETLK, &ofd)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    signal(SIGIO, on_io);
    int w = open_in(dir, "lease-w.dat"), r = open_in(dir, "lease-r.dat");
    if (r >= 0) {
        /* A read lease needs the file open for writing nowhere. */
        close(r);
        char path[512];
        snprintf(path, sizeof(path), "%s/lease-r.dat", dir);
        r = open(path, O_RDONLY);
    }
    if (w < 0 || r < 0 || fcntl(w, F_SETLEASE, F_WRLCK) || fcntl(r, F_SETLEASE, F_RDLCK)) {
        printf("FAIL: setup of leases: %s\n", strerror(errno));
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    pid_t self = getpid();
    pid_t child = fork();
    if (child == 0) {
        int bad = 0;
        /* A new description of the same file: flock conflicts across descriptions. */
        int a2 = open_in(dir, "flock.dat");
        if (flock(a2, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) bad |= 1;
        struct flock probe = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
        if (fcntl(b, F_GETLK, &probe) || probe.l_type != F_WRLCK || probe.l_pid != self || probe.l_start != 10 || probe.l_len != 20)
            bad |= 2;
        struct flock probe2 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
        int c2 = open_in(dir, "ofd.dat");
        if (fcntl(c2, F_OFD_GETLK, &probe2) || probe2.l_type != F_RDLCK) bad |= 4;
        _exit(bad);
    }
    int status = 0;
    waitpid(child, &status, 0);
    int bad = WIFEXITED(status) ? WEXITSTATUS(status) : 8;
    int write_lease = fcntl(w, F_GETLEASE), read_lease = fcntl(r, F_GETLEASE);
    if (write_lease != F_WRLCK || read_lease != F_RDLCK) {
        printf("FAIL: leases after restore: write-leased file has %d (want %d), read-leased %d (want %d)\n",
               write_lease, F_WRLCK, read_lease, F_RDLCK);
        return 1;
    }
    child = fork();
    if (child == 0) {
        char path[512];
        snprintf(path, sizeof(path), "%s/lease-w.dat", dir);
        int opened = open(path, O_RDONLY | O_NONBLOCK);
        _exit(opened < 0 && errno == EWOULDBLOCK ? 0 : 1);
    }
    waitpid(child, &status, 0);
    for (int i = 0; i < 200 && !lease_broken; i++) usleep(10000);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !lease_broken) {
        printf("FAIL: the write lease did not act: another open %s, %s\n",
               WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "was refused" : "was not refused",
               lease_broken ? "SIGIO came" : "no SIGIO");
        return 1;
    }
    fcntl(w, F_SETLEASE, F_UNLCK);
    if (bad) {
        printf("FAIL:%s%s%s%s\n", bad & 1 ? " flock not held;" : "", bad & 2 ? " POSIX lock not held by us over 10..29;" : "",
               bad & 4 ? " OFD read lock not held;" : "", bad & 8 ? " checker crashed;" : "");
    } else {
        printf("PASS\n");
    }
    fflush(stdout);
    return bad ? 1 : 0;
}
