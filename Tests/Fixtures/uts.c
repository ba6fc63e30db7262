/*
 * uts: a process tree in a UTS namespace of its own.
 *
 * The root unshares its UTS namespace, sets a host name and a domain name of
 * its own, and forks a child that shares them. With "other" as argument the
 * child unshares a second UTS namespace (a tree cryo must refuse). On
 * SIGTERM the root checks its names, that its namespace is still not the
 * one of pid 1, asks the child (over a pipe) to check the same and report,
 * then prints PASS or "FAIL: reasons".
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fixture.h"

#define HOST "cryo-uts-fixture"
#define DOMAIN "cryo.example"

static volatile sig_atomic_t got_term;
static void on_term(int sig) { (void)sig; got_term = 1; }

static unsigned long ns_inode(const char *pid)
{
	char path[64];
	struct stat st;
	snprintf(path, sizeof(path), "/proc/%s/ns/uts", pid);
	return stat(path, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* Empty when the names and the namespace are as set up; else why not. */
static void check_names(const char *who, char *why, size_t size)
{
	char host[128] = "", domain[128] = "";
	why[0] = 0;
	gethostname(host, sizeof(host));
	getdomainname(domain, sizeof(domain));
	if (strcmp(host, HOST) != 0)
		snprintf(why, size, "%s: host name is '%s', not " HOST, who, host);
	else if (strcmp(domain, DOMAIN) != 0)
		snprintf(why, size, "%s: domain name is '%s', not " DOMAIN, who, domain);
	else if (ns_inode("self") == ns_inode("1"))
		snprintf(why, size, "%s: back in pid 1's UTS namespace", who);
}

int main(int argc, char **argv)
{
	int other = argc > 1 && strcmp(argv[1], "other") == 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (unshare(CLONE_NEWUTS) != 0) { printf("FAIL: unshare(CLONE_NEWUTS): %s\n", strerror(errno)); return 1; }
	if (sethostname(HOST, strlen(HOST)) != 0 || setdomainname(DOMAIN, strlen(DOMAIN)) != 0) {
		printf("FAIL: sethostname: %s\n", strerror(errno));
		return 1;
	}
	int ask[2], answer[2];
	if (pipe(ask) != 0 || pipe(answer) != 0) { printf("FAIL: pipe\n"); return 1; }
	pid_t child = fork();
	if (child == 0) {
		if (other && unshare(CLONE_NEWUTS) != 0) _exit(3);
		char byte, why[256];
		while (read(ask[0], &byte, 1) != 1) {}
		check_names("child", why, sizeof(why));
		if (write(answer[1], why, strlen(why) + 1) < 0) _exit(2);
		_exit(0);
	}
	signal(SIGTERM, on_term);
	printf("CHILD %d\n", child);
	printf("READY\n");
	while (!got_term) pause();

	char why[256], childWhy[256] = "";
	check_names("root", why, sizeof(why));
	if (why[0]) fail("%s", why);
	if (write(ask[1], "?", 1) != 1) fail("cannot ask the child");
	if (read(answer[0], childWhy, sizeof(childWhy)) <= 0) fail("no answer from the child");
	else if (childWhy[0]) fail("%s", childWhy);
	int status = 0;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail("child ended with status 0x%x", status);
	if (failbuf[0]) printf("FAIL: %s\n", failbuf);
	else printf("PASS\n");
	return 0;
}
