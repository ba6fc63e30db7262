/*
 * tracer: a stand-in debugger for cryo's tests.  Attaches to the pid given as
 * its argument with PTRACE_SEIZE (which neither stops the tracee nor sends
 * it a signal), prints READY and waits to be killed; the kernel detaches
 * the tracee when the tracer exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: tracer PID\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) != 0) {
        printf("FAIL PTRACE_SEIZE %d: %s\n", pid, strerror(errno));
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}
