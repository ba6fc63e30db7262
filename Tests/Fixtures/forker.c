/*
 * forker: forks short-lived children all the time, as a shell or a
 * pre-forking server does, so that a dump catches children that are exiting
 * while they are frozen. Each child exits at once with a code the parent
 * knows (its sequence number mod 100); the parent waits for it and checks.
 * A child caught exiting comes back as a zombie with that code.
 * On SIGTERM: PASS if every child was reaped with its own code.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	printf("READY\n");
	fflush(stdout);

	unsigned long forks = 0;
	while (!got_term) {
		int code = (int)(forks % 100);
		pid_t child = fork();
		if (child < 0) { fail("fork: %s", strerror(errno)); break; }
		if (child == 0) _exit(code);
		forks++;
		int status;
		pid_t got;
		do got = waitpid(child, &status, 0); while (got < 0 && errno == EINTR);
		if (got != child) { fail("waitpid(%d): %s", child, strerror(errno)); break; }
		if (!WIFEXITED(status) || WEXITSTATUS(status) != code) {
			fail("child %lu (pid %d) ended with status 0x%x, want exit %d", forks, child, status, code);
			break;
		}
	}
	if (forks < 10) fail("only %lu children forked", forks);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf); else printf("PASS\n");
	return failbuf[0] != 0;
}
