/*
 * fanotify: three groups.
 *  A (FID reporting, non-blocking): an inode mark on argv[1]/watched for
 *    FAN_MODIFY | FAN_CLOSE_WRITE, with FAN_CLOSE_WRITE in its ignore mask
 *    (surviving modification).
 *  B (plain, blocking): a mount mark for FAN_OPEN on the tmpfs argv[2].
 *  C (FID reporting): a file-system mark for FAN_CREATE on that tmpfs, and
 *    an inode mark for FAN_ATTRIB on argv[1]/link, a symlink to the watched
 *    file, marked itself (FAN_MARK_DONT_FOLLOW).
 * After SIGTERM it writes the watched file, opens a file on the tmpfs and
 * creates one there, and changes the symlink's times: A must see the
 * modification and not the ignored close, B the open, C the creation and
 * the symlink's FAN_ATTRIB, and the groups keep their flags (F_GETFL,
 * and the init flags fdinfo shows: FAN_CLOEXEC in A's only). B holds one
 * event at dump, not read (dropped by the dump, which the test checks in
 * the image); B must still report the open made after restore.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include "fixture.h"

/* The "flags:" of a group's fdinfo (fanotify_init's flags), or -1. */
static long init_flags(int fd)
{
    char path[64], line[256];
    long flags = -1;
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "fanotify flags:%lx", &flags) == 1) break;
    if (f) fclose(f);
    return flags;
}

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

/* The union of the event masks that arrive on `group` within `seconds`; event fds are closed. */
static unsigned long long events(int group, double seconds) {
    unsigned long long seen = 0;
    double end = now() + seconds;
    char buffer[8192] __attribute__((aligned(8)));
    while (now() < end) {
        struct pollfd p = { .fd = group, .events = POLLIN };
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t n = read(group, buffer, sizeof(buffer));
        if (n <= 0) continue;
        struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buffer;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            seen |= m->mask;
            if (m->fd >= 0) close(m->fd);
        }
    }
    return seen;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        printf("FAIL: usage: fanotify WORK-FOLDER TMPFS-FOLDER\n");
        return 1;
    }
    signal(SIGTERM, on_term);
    char watched[512], opened[512], created[512], link[512];
    snprintf(watched, sizeof(watched), "%s/watched", argv[1]);
    snprintf(opened, sizeof(opened), "%s/opened", argv[2]);
    snprintf(created, sizeof(created), "%s/created", argv[2]);
    snprintf(link, sizeof(link), "%s/link", argv[1]);
    close(open(watched, O_CREAT | O_WRONLY, 0600));
    close(open(opened, O_CREAT | O_WRONLY, 0600));

    int a = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_FID, O_RDONLY | O_LARGEFILE);
    int b = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY | O_LARGEFILE);
    int c = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
    if (a < 0 || b < 0 || c < 0
        || fanotify_mark(a, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, watched)
        || fanotify_mark(a, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_CLOSE_WRITE, AT_FDCWD, watched)
        || fanotify_mark(b, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, argv[2])
        || fanotify_mark(c, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_CREATE, AT_FDCWD, argv[2])
        || symlink(watched, link)
        || fanotify_mark(c, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW, FAN_ATTRIB, AT_FDCWD, link)) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    /* One event left queued in B at dump. */
    close(open(opened, O_RDONLY));
    long flags_before[3] = { init_flags(a), init_flags(b), init_flags(c) };
    ready_then_wait(&term);
    for (int i = 0; i < 3; i++) {
        long now = init_flags(i == 0 ? a : i == 1 ? b : c);
        if (now != flags_before[i]) fail("group %c: fdinfo flags %#lx, were %#lx", 'A' + i, now, flags_before[i]);
    }

    if (!(fcntl(a, F_GETFL) & O_NONBLOCK)) fail("group A lost O_NONBLOCK");
    if (fcntl(b, F_GETFL) & O_NONBLOCK) fail("group B became non-blocking");
    if (!(fcntl(a, F_GETFD) & FD_CLOEXEC)) fail("group A lost FD_CLOEXEC");

    int w = open(watched, O_WRONLY);
    if (w < 0 || write(w, "x", 1) != 1) fail("cannot write %s: %s", watched, strerror(errno));
    close(w);
    unsigned long long seen_a = events(a, 0.5);
    if (!(seen_a & FAN_MODIFY)) fail("group A saw no FAN_MODIFY of the watched file (events 0x%llx)", seen_a);
    if (seen_a & FAN_CLOSE_WRITE) fail("group A saw FAN_CLOSE_WRITE, which its ignore mask holds back (events 0x%llx)", seen_a);

    close(open(opened, O_RDONLY));
    /* B is blocking: poll first (events() does). */
    unsigned long long seen_b = events(b, 0.5);
    if (!(seen_b & FAN_OPEN)) fail("group B (mount mark) saw no FAN_OPEN (events 0x%llx)", seen_b);

    close(open(created, O_CREAT | O_WRONLY, 0600));
    if (utimensat(AT_FDCWD, link, NULL, AT_SYMLINK_NOFOLLOW) != 0) fail("utimensat %s: %s", link, strerror(errno));
    unsigned long long seen_c = events(c, 0.5);
    if (!(seen_c & FAN_CREATE)) fail("group C (file-system mark) saw no FAN_CREATE (events 0x%llx)", seen_c);
    if (!(seen_c & FAN_ATTRIB)) fail("group C (the symlink's own mark) saw no FAN_ATTRIB (events 0x%llx)", seen_c);
    unlink(link);

    if (failbuf[0]) {
        printf("FAIL: %s\n", failbuf);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
