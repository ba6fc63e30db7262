/*
 * seccompstrict: a child in SECCOMP_MODE_STRICT (read, write, exit and
 * sigreturn only), as sandboxed workers of old used it. It blocks in read()
 * on a socket. On SIGTERM the parent checks that /proc shows the child in
 * strict mode, sends it a byte, and wants back that byte plus the child's
 * counter (state kept in its memory), then the child's own exit(0): a child
 * that is not in strict mode, or one killed for a syscall strict mode forbids
 * (SIGKILL), fails. PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }

static void child(int sk) {
    static volatile char counter = 40;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) syscall(SYS_exit, 3);
    counter++;
    char c = 'k';
    if (write(sk, &c, 1) != 1) syscall(SYS_exit, 4);
    if (read(sk, &c, 1) != 1) syscall(SYS_exit, 5);
    char reply[2] = { c, counter };
    if (write(sk, reply, 2) != 2) syscall(SYS_exit, 6);
    syscall(SYS_exit, 0);  /* exit_group is not allowed in strict mode */
}

static int seccomp_mode(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    int mode = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp:\t%d", &mode) == 1) break;
    if (f) fclose(f);
    return mode;
}

int main(void) {
    signal(SIGTERM, on_term);
    int sk[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sk) != 0) { printf("FAIL: socketpair: %m\n"); return 1; }
    pid_t pid = fork();
    if (pid == 0) { close(sk[0]); child(sk[1]); }
    close(sk[1]);
    char c;
    if (read(sk[0], &c, 1) != 1 || c != 'k') { printf("FAIL: the child did not enter strict mode\n"); return 1; }

    ready_then_wait(&term);

    int mode = seccomp_mode(pid);
    if (mode != SECCOMP_MODE_STRICT) fail("the child's seccomp mode is %d, want %d (strict)", mode, SECCOMP_MODE_STRICT);
    c = 'x';
    char reply[2] = {0, 0};
    if (write(sk[0], &c, 1) != 1) fail("write to the child: %m");
    else if (read(sk[0], reply, 2) != 2) fail("no answer from the child");
    else if (reply[0] != 'x' || reply[1] != 41) fail("the child answered %d %d, want 'x' 41", reply[0], reply[1]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) fail("waitpid: %m");
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("the child ended with %s %d", WIFSIGNALED(status) ? "signal" : "status", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
    return failbuf[0] ? 1 : 0;
}
