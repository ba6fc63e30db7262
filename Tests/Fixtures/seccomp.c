/*
 * seccomp: no_new_privs and two seccomp filters, installed in order: the first
 * makes getpriority() fail with errno 42, the second makes getpgid() fail with
 * errno 43 (the newer one wins where both match). After SIGTERM both must
 * still apply, the process must still be in filter mode with two filters, and
 * other system calls must work.
 * With the argument "dropped" (as root): the filters go in without
 * no_new_privs, then the process drops to nobody (65534), as a privileged
 * service that sandboxes itself does; it must come back so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static int install(int nr, int error) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | error),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static int status_value(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int value = -1;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, key, strlen(key))) sscanf(line + strlen(key), " %d", &value);
    if (f) fclose(f);
    return value;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    int dropped = argc > 1 && !strcmp(argv[1], "dropped");
    if ((!dropped && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) || install(SYS_getpriority, 42) || install(SYS_getpgid, 43)
        || (dropped && (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)))) {
        printf("FAIL: setup: %s\n", strerror(errno));
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    while (!term) pause();

    char failures[1024] = "";
    errno = 0;
    if (getpriority(PRIO_PROCESS, 0) != -1 || errno != 42) strcat(failures, "first filter lost; ");
    errno = 0;
    if (getpgid(0) != -1 || errno != 43) strcat(failures, "second filter lost; ");
    if (getpid() <= 0 || getppid() < 0) strcat(failures, "other syscalls blocked; ");
    if (status_value("Seccomp:") != 2) strcat(failures, "not in filter mode; ");
    if (status_value("Seccomp_filters:") != 2) strcat(failures, "not exactly two filters; ");
    if (status_value("NoNewPrivs:") != !dropped) strcat(failures, dropped ? "no_new_privs appeared; " : "no_new_privs lost; ");
    if (dropped && (getuid() != 65534 || geteuid() != 65534 || getgid() != 65534)) strcat(failures, "credentials not those dropped to; ");
    if (failures[0]) printf("FAIL: %s\n", failures);
    else printf("PASS\n");
    fflush(stdout);
    return failures[0] ? 1 : 0;
}
