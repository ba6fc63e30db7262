/*
 * zombieleader: a session whose leader has exited and is a zombie of the tree
 * while a live process stays in it. The root is a child subreaper; its child
 * calls setsid, forks a member and exits without being reaped: the member is
 * reparented to the root and stays in the zombie's session. cryo refuses to
 * dump this (in one line naming the member and the zombie leader) and must
 * leave the tree as it was.
 *
 * The root prints "LEADER <pid>" and "MEMBER <pid>", then READY; on SIGTERM it
 * checks that the leader is still its unreaped zombie and the member still in
 * the leader's session (the member answers on a pipe), and reaps both.
 * PASS or FAIL: reasons.
 */
#define _GNU_SOURCE
#include <sys/prctl.h>
#include <sys/wait.h>
#include "fixture.h"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static char state_of(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return stat_state(path);
}

int main(void)
{
	struct sigaction act = { .sa_handler = on_term };
	sigaction(SIGTERM, &act, NULL);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
		printf("FAIL: PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
		return 1;
	}
	int to_member[2], from_member[2], member_pid[2];
	if (pipe(to_member) || pipe(from_member) || pipe(member_pid)) {
		printf("FAIL: pipe: %s\n", strerror(errno));
		return 1;
	}
	pid_t leader = fork();
	if (leader == 0) {
		setsid();
		pid_t member = fork();
		if (member == 0) {
			/* Waits for the root's word, then says which session it is in. */
			char byte;
			if (read(to_member[0], &byte, 1) != 1) _exit(1);
			char answer[32];
			int n = snprintf(answer, sizeof(answer), "%d\n", (int)getsid(0));
			_exit(write(from_member[1], answer, (size_t)n) == n ? 0 : 1);
		}
		if (write(member_pid[1], &member, sizeof(member)) != sizeof(member)) _exit(1);
		_exit(7);
	}
	pid_t member = 0;
	if (read(member_pid[0], &member, sizeof(member)) != sizeof(member)) {
		printf("FAIL: no member pid\n");
		return 1;
	}
	/* Ready once the leader is a zombie and the member is the root's. */
	for (;;) {
		char path[64], text[512];
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)member);
		FILE *f = fopen(path, "r");
		int ppid = 0;
		if (f) {
			size_t n = fread(text, 1, sizeof(text) - 1, f);
			fclose(f);
			text[n] = 0;
			char *close = strrchr(text, ')');
			if (close) sscanf(close + 2, "%*c %d", &ppid);
		}
		if (state_of(leader) == 'Z' && ppid == getpid()) break;
		usleep(1000);
	}
	printf("LEADER %d\nMEMBER %d\n", (int)leader, (int)member);
	ready_then_wait(&got_term);

	if (state_of(leader) != 'Z') fail("the leader %d is in state %c, not an unreaped zombie", (int)leader, state_of(leader));
	if (write(to_member[1], "x", 1) != 1) fail("write: %s", strerror(errno));
	char answer[32] = "";
	ssize_t n = read(from_member[0], answer, sizeof(answer) - 1);
	if (n <= 0) fail("the member gave no answer");
	else if (atoi(answer) != leader) fail("the member is in session %d, not %d", atoi(answer), (int)leader);
	int status = 0;
	if (waitpid(leader, &status, 0) != leader || !WIFEXITED(status) || WEXITSTATUS(status) != 7)
		fail("the leader ended with status %#x, not exit 7", status);
	if (waitpid(member, &status, 0) != member || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("the member ended with status %#x", status);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return failbuf[0] ? 1 : 0;
}
