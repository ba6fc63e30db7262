/*
 * inotify: one instance watching two paths of the work folder (argv[1]): the
 * folder itself (IN_CREATE) and a file in it (IN_MODIFY | IN_ATTRIB), with a
 * third watch added and removed so the live watch descriptors are 1 and 3.
 * After SIGTERM it creates a file in the folder and modifies the watched file:
 * both events must arrive with the watch descriptors of before.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
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
    char file[PATH_MAX], other[PATH_MAX], created[PATH_MAX];
    snprintf(file, sizeof file, "%s/watched", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    snprintf(created, sizeof created, "%s/created-after-restore", dir);
    close(open(file, O_CREAT | O_WRONLY, 0644));
    close(open(other, O_CREAT | O_WRONLY, 0644));

    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int dir_wd = inotify_add_watch(in, dir, IN_CREATE);
    int gone_wd = inotify_add_watch(in, other, IN_MODIFY);
    int file_wd = inotify_add_watch(in, file, IN_MODIFY | IN_ATTRIB);
    inotify_rm_watch(in, gone_wd);
    /* Drain the IN_IGNORED of the removed watch: nothing is queued at dump. */
    char buf[4096] __attribute__((aligned(8)));
    while (read(in, buf, sizeof buf) > 0) {}
    if (dir_wd != 1 || file_wd != 3) { printf("FAIL: unexpected wds %d %d\n", dir_wd, file_wd); return 1; }

    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    close(open(created, O_CREAT | O_WRONLY, 0644));
    int w = open(file, O_WRONLY);
    write(w, "x", 1);
    close(w);
    int saw_create = 0, saw_modify = 0;
    for (int tries = 0; tries < 50 && !(saw_create && saw_modify); tries++) {
        struct pollfd p = { in, POLLIN, 0 };
        poll(&p, 1, 100);
        ssize_t n = read(in, buf, sizeof buf);
        for (char *q = buf; n > 0 && q < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)q;
            if (e->wd == dir_wd && (e->mask & IN_CREATE) && e->len && strcmp(e->name, "created-after-restore") == 0) saw_create = 1;
            else if (e->wd == file_wd && (e->mask & IN_MODIFY)) saw_modify = 1;
            else {
                char what[128];
                snprintf(what, sizeof what, "unexpected event wd %d mask %#x", e->wd, e->mask);
                fail(what);
            }
            q += sizeof(*e) + e->len;
        }
    }
    if (!saw_create) fail("no IN_CREATE on the folder's watch");
    if (!saw_modify) fail("no IN_MODIFY on the file's watch");
    if (!(fcntl(in, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    /* A new watch gets a fresh descriptor, not one of the old ones. */
    int again = inotify_add_watch(in, other, IN_MODIFY);
    if (again == dir_wd || again == file_wd || again < 0) fail("new watch reuses an old descriptor");
    unlink(created);
    if (failures[0]) printf("FAIL: %s\n", failures); else printf("PASS\n");
    return failures[0] ? 1 : 0;
}
