/*
 * memfdmap: a memfd mapped MAP_SHARED (writes through the mapping must be
 * seen by read() on the descriptor, and writes to the descriptor through the
 * mapping), and a second memfd mapped MAP_PRIVATE whose descriptor was
 * closed: its file contents and the privately written pages must both come
 * back. A third, sealed memfd is mapped read-only without a descriptor.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

#define SIZE (3 * 4096)

int main(void) {
    signal(SIGTERM, on_term);
    int shared_fd = memfd_create("cryo-shared", MFD_CLOEXEC);
    if (shared_fd < 0 || ftruncate(shared_fd, SIZE) != 0) { printf("FAIL: memfd_create\n"); return 1; }
    char *shared = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    strcpy(shared, "written through the shared mapping");
    strcpy(shared + 4096 + 10, "second page");
    pwrite(shared_fd, "via fd", 6, 8192);

    int private_fd = memfd_create("cryo-private", 0);
    char contents[SIZE];
    for (int i = 0; i < SIZE; i++) contents[i] = (char)('a' + i % 26);
    write(private_fd, contents, SIZE);
    char *priv = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, private_fd, 0);
    close(private_fd);
    memcpy(priv + 4096, "private copy", 12);  /* page 1 becomes anonymous; 0 and 2 stay the file's */

    int sealed_fd = memfd_create("cryo-sealed", MFD_ALLOW_SEALING);
    write(sealed_fd, "sealed contents", 15);
    fcntl(sealed_fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK);
    char *sealed = mmap(NULL, 4096, PROT_READ, MAP_SHARED, sealed_fd, 0);
    close(sealed_fd);

    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    char buffer[64] = {0};
    if (pread(shared_fd, buffer, 34, 0) != 34 || strcmp(buffer, "written through the shared mapping") != 0) fail("shared mapping contents not seen through the fd");
    if (strcmp(shared + 4096 + 10, "second page") != 0) fail("shared mapping second page");
    if (memcmp(shared + 8192, "via fd", 6) != 0) fail("fd write not seen through the shared mapping");
    /* Still shared: a new write each way. */
    strcpy(shared + 100, "after restore");
    memset(buffer, 0, sizeof buffer);
    if (pread(shared_fd, buffer, 13, 100) != 13 || strcmp(buffer, "after restore") != 0) fail("mapping and fd no longer share pages");
    pwrite(shared_fd, "fd again", 8, 200);
    if (memcmp(shared + 200, "fd again", 8) != 0) fail("fd write after restore not seen in the mapping");

    if (memcmp(priv, contents, 4096) != 0) fail("private mapping page 0 (file contents)");
    if (memcmp(priv + 4096, "private copy", 12) != 0 || memcmp(priv + 4096 + 12, contents + 4096 + 12, 4096 - 12) != 0)
        fail("private mapping page 1 (written)");
    if (memcmp(priv + 8192, contents + 8192, 4096) != 0) fail("private mapping page 2 (file contents)");
    if (strcmp(sealed, "sealed contents") != 0) fail("sealed mapping contents");

    /* The mapping of the closed private memfd still names a memfd. */
    char self[64], link[256] = {0};
    snprintf(self, sizeof self, "/proc/self/map_files/%lx-%lx", (unsigned long)priv, (unsigned long)priv + SIZE);
    if (readlink(self, link, sizeof link - 1) < 0 || strncmp(link, "/memfd:cryo-private", 19) != 0) fail("private mapping is not of memfd cryo-private");
    int again = open(self, O_RDONLY);
    if (again < 0) fail("cannot open the private memfd through map_files");
    else {
        int seals = fcntl(again, F_GET_SEALS);
        if (seals != F_SEAL_SEAL) fail("private memfd seals changed");
        close(again);
    }

    if (failures[0]) printf("FAIL: %s\n", failures); else printf("PASS\n");
    return failures[0] ? 1 : 0;
}
