/*
 * inotify: one instance watching two paths of the work folder (argv[1]): the
 * folder itself (IN_CREATE) and a file in it (IN_MODIFY | IN_ATTRIB), with a
 * third watch added and removed so the live watch descriptors are 1 and 3.
 * After SIGTERM it creates a file in the folder and modifies the watched file:
 * both events must arrive with the watch descriptors of before.
 * With argv[2] "many", 40 more files are watched (watch descriptors 4 to 43,
 * which fdinfo prints in hex: "wd:10" is 16); after restore the files of
 * watches 16 and 43 are modified and must report under those numbers.
 * With argv[2] "unlinked", a file opened read-write after the instance is
 * watched (IN_MODIFY | IN_CLOSE_WRITE, watch 4) and unlinked while open:
 * after restore, writing to it and closing it must report on watch 4, and
 * the folder's watch must see nothing of how the file was brought back.
 * With argv[2] "queued", the watched file's mode is changed before READY and
 * the IN_ATTRIB it queues is left unread: the dump must still be taken (the
 * event is dropped, as cryo's documentation says) and the watches work.
 * With argv[2] "symlink", a symlink to the watched file is itself watched
 * (IN_DONT_FOLLOW, IN_ATTRIB, watch 4): after restore, changing the
 * symlink's times must report on watch 4, and the file's IN_MODIFY only on
 * the file's watch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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
    enum { MANY = 40 };
    int many = argc > 2 && strcmp(argv[2], "many") == 0;
    int unlinked = argc > 2 && strcmp(argv[2], "unlinked") == 0;
    int queued = argc > 2 && strcmp(argv[2], "queued") == 0;
    int symlinked = argc > 2 && strcmp(argv[2], "symlink") == 0;
    int link_wd = -1;
    char link_path[PATH_MAX];
    int doomed = -1, doomed_wd = -1;
    int many_wd[MANY];
    char many_path[MANY][PATH_MAX];
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
    for (int i = 0; many && i < MANY; i++) {
        snprintf(many_path[i], PATH_MAX, "%s/many-%d", dir, i);
        close(open(many_path[i], O_CREAT | O_WRONLY, 0644));
        many_wd[i] = inotify_add_watch(in, many_path[i], IN_MODIFY);
        if (many_wd[i] != 4 + i) { printf("FAIL: watch of %s is %d, not %d\n", many_path[i], many_wd[i], 4 + i); return 1; }
    }
    if (unlinked) {
        char path[PATH_MAX], link[PATH_MAX + 32], self[64];
        snprintf(path, sizeof path, "%s/doomed", dir);
        doomed = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
        if (doomed < 0 || write(doomed, "before", 6) != 6) { printf("FAIL: %s: cannot write\n", path); return 1; }
        doomed_wd = inotify_add_watch(in, path, IN_MODIFY | IN_CLOSE_WRITE);
        if (doomed_wd != 4 || unlink(path) != 0) { printf("FAIL: watch %d of %s, or unlink\n", doomed_wd, path); return 1; }
        snprintf(self, sizeof self, "/proc/self/fd/%d", doomed);
        ssize_t n = readlink(self, link, sizeof link - 1);
        link[n < 0 ? 0 : n] = 0;
        if (!strstr(link, "(deleted)")) { printf("FAIL: %s is \"%s\", not deleted\n", self, link); return 1; }
    }
    if (symlinked) {
        snprintf(link_path, sizeof link_path, "%s/link", dir);
        if (symlink(file, link_path) != 0) { printf("FAIL: symlink %s: %s\n", link_path, strerror(errno)); return 1; }
        link_wd = inotify_add_watch(in, link_path, IN_ATTRIB | IN_DONT_FOLLOW);
        if (link_wd != 4) { printf("FAIL: watch of the symlink is %d, not 4\n", link_wd); return 1; }
    }
    while (read(in, buf, sizeof buf) > 0) {}
    if (queued) {
        int unread = 0;
        if (chmod(file, 0600) != 0 || ioctl(in, FIONREAD, &unread) != 0 || unread == 0) { printf("FAIL: no event queued\n"); return 1; }
    }

    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    close(open(created, O_CREAT | O_WRONLY, 0644));
    int w = open(file, O_WRONLY);
    write(w, "x", 1);
    close(w);
    /* Watches 16 (many-12) and 43 (many-39): two hex digits in fdinfo, one of them a letter. */
    const int touched[2] = { 12, MANY - 1 };
    int saw_many[2] = { !many, !many };
    for (int k = 0; many && k < 2; k++) {
        int m = open(many_path[touched[k]], O_WRONLY);
        write(m, "y", 1);
        close(m);
    }
    int saw_link = !symlinked;
    if (symlinked && utimensat(AT_FDCWD, link_path, NULL, AT_SYMLINK_NOFOLLOW) != 0) fail("utimensat of the symlink");
    int saw_doomed_modify = !unlinked, saw_doomed_close = !unlinked;
    if (unlinked) {
        char back[7] = { 0 };
        if (pread(doomed, back, 6, 0) != 6 || strcmp(back, "before") != 0) fail("the unlinked file lost its bytes");
        if (write(doomed, "after", 5) != 5) fail("write to the unlinked file");
        close(doomed);
    }
    int saw_create = 0, saw_modify = 0;
    for (int tries = 0; tries < 50 && !(saw_create && saw_modify && saw_many[0] && saw_many[1] && saw_doomed_modify && saw_doomed_close && saw_link); tries++) {
        struct pollfd p = { in, POLLIN, 0 };
        poll(&p, 1, 100);
        ssize_t n = read(in, buf, sizeof buf);
        for (char *q = buf; n > 0 && q < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)q;
            if (e->wd == dir_wd && (e->mask & IN_CREATE) && e->len && strcmp(e->name, "created-after-restore") == 0) saw_create = 1;
            else if (e->wd == file_wd && (e->mask & IN_MODIFY)) saw_modify = 1;
            else if (queued && e->wd == file_wd && e->mask == IN_ATTRIB) {}
            else if (symlinked && e->wd == link_wd && (e->mask & IN_ATTRIB)) saw_link = 1;
            else if (many && e->wd == many_wd[touched[0]] && (e->mask & IN_MODIFY)) saw_many[0] = 1;
            else if (many && e->wd == many_wd[touched[1]] && (e->mask & IN_MODIFY)) saw_many[1] = 1;
            else if (unlinked && e->wd == doomed_wd && (e->mask & (IN_MODIFY | IN_CLOSE_WRITE))) {
                if (e->mask & IN_MODIFY) saw_doomed_modify = 1;
                if (e->mask & IN_CLOSE_WRITE) saw_doomed_close = 1;
            }
            /* The last close frees the unlinked file: its watch goes. */
            else if (unlinked && e->wd == doomed_wd && (e->mask & (IN_DELETE_SELF | IN_IGNORED | IN_ATTRIB))) {}
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
    if (!saw_doomed_modify) fail("no IN_MODIFY on the unlinked file's watch");
    if (!saw_doomed_close) fail("no IN_CLOSE_WRITE on the unlinked file's watch");
    if (!saw_link) fail("no IN_ATTRIB on the symlink's own watch");
    for (int k = 0; k < 2; k++)
        if (!saw_many[k]) {
            char what[128];
            snprintf(what, sizeof what, "no IN_MODIFY on watch %d (many-%d)", many_wd[touched[k]], touched[k]);
            fail(what);
        }
    if (!(fcntl(in, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
    /* A new watch gets a fresh descriptor, not one of the old ones. */
    int again = inotify_add_watch(in, other, IN_MODIFY);
    if (again == dir_wd || again == file_wd || again < 0) fail("new watch reuses an old descriptor");
    if (many && again <= many_wd[MANY - 1]) fail("new watch reuses an old descriptor of the many");
    unlink(created);
    if (symlinked) unlink(link_path);
    if (failures[0]) printf("FAIL: %s\n", failures); else printf("PASS\n");
    return failures[0] ? 1 : 0;
}
