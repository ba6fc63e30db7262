/*
 * What the fixtures share: fail(), which collects every problem found into
 * one line for the final report ("FAIL: a; b; c"). Header-only: each
 * fixture stays a single C file to compile.
 */
#ifndef CRYO_FIXTURE_H
#define CRYO_FIXTURE_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char failbuf[4096];
__attribute__((unused, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
	size_t len = strlen(failbuf);
	if (len >= sizeof(failbuf) - 64)
		return;
	if (len)
		len += (size_t)snprintf(failbuf + len, sizeof(failbuf) - len, "; ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failbuf + len, sizeof(failbuf) - len, fmt, ap);
	va_end(ap);
	for (char *p = failbuf + len; *p; p++)   /* keep the report on one line */
		if ((unsigned char)*p < 0x20) *p = '.';
}

/* Prints READY, then sleeps until the SIGTERM handler sets *term. SIGTERM is
 * blocked except inside sigsuspend, so it cannot land between the test of
 * *term and the sleep. */
__attribute__((unused)) static void ready_then_wait(volatile sig_atomic_t *term)
{
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	printf("READY\n");
	fflush(stdout);
	while (!*term) sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Seconds on the monotonic clock. */
__attribute__((unused)) static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A "Name:\tvalue" line of /proc/self/status, or "" */
__attribute__((unused)) static void status_field(const char *name, char *out, size_t size)
{
	out[0] = 0;
	FILE *f = fopen("/proc/self/status", "r");
	if (!f) return;
	char line[512];
	size_t n = strlen(name);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, name, n) == 0 && line[n] == ':') {
			char *v = line + n + 1;
			while (*v == ' ' || *v == '\t') v++;
			v[strcspn(v, "\n")] = 0;
			snprintf(out, size, "%s", v);
			break;
		}
	fclose(f);
}

/* One line from `in` (without its newline), waiting at most `seconds`:
 * its length, -3 on timeout, -1 on error. */
__attribute__((unused)) static int read_line(int in, char *buf, size_t size, double seconds)
{
	double deadline = now() + seconds;
	size_t len = 0;
	while (len + 1 < size) {
		double left = deadline - now();
		if (left <= 0) { buf[len] = 0; return -3; }
		struct pollfd pfd = { .fd = in, .events = POLLIN };
		int r = poll(&pfd, 1, (int)(left * 1000) + 1);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) return -1;
		if (r == 0) continue;
		ssize_t got = read(in, buf + len, 1);
		if (got < 0 && errno == EINTR) continue;
		if (got < 0) return -1;
		if (got == 0 || buf[len] == '\n') break;
		len++;
	}
	buf[len] = 0;
	return (int)len;
}

/* smaps' KernelPageSize of the mapping at `start`, in kB (0 if not found). */
__attribute__((unused)) static long page_kb(void *start)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f) return 0;
	char line[512];
	int in = 0;
	long kb = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') == line + strspn(line, "0123456789abcdef")) {
			in = a == (unsigned long)start;
			continue;
		}
		if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) break;
	}
	fclose(f);
	return kb;
}

/* The mapping of /proc/self/smaps that holds `p`: its start (0 when none does), its permissions
 * ("rw-p", if `perms`) and its VmFlags codes (" rd wr ... ", if `flags`). */
__attribute__((unused)) static unsigned long vma_info(const void *p, char perms[5], char *flags, size_t size)
{
	if (perms) perms[0] = 0;
	if (flags) flags[0] = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f) return 0;
	char line[1024];
	unsigned long found = 0;
	int inside = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end;
		char pm[5];
		if (sscanf(line, "%lx-%lx %4s", &start, &end, pm) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			inside = (uintptr_t)p >= start && (uintptr_t)p < end;
			if (inside) {
				found = start;
				if (perms) memcpy(perms, pm, 5);
			}
		} else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
			if (flags && size > 0) {
				size_t n = strcspn(line + 8, "\n");
				if (n >= size) n = size - 1;
				memcpy(flags, line + 8, n);
				flags[n] = 0;
			}
			break;
		}
	}
	fclose(f);
	return found;
}

/* Whether VmFlags codes as vma_info gives them hold `flag` ("lo", "nr"...). */
__attribute__((unused)) static int has_flag(const char *flags, const char *flag)
{
	char padded[600];
	snprintf(padded, sizeof(padded), " %s ", flags);
	char want[8];
	snprintf(want, sizeof(want), " %s ", flag);
	return strstr(padded, want) != NULL;
}

/* The state letter of a /proc/.../stat file ('?' when unreadable). */
__attribute__((unused)) static char stat_state(const char *path)
{
	char text[512];
	FILE *f = fopen(path, "r");
	if (!f) return '?';
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = 0;
	char *close = strrchr(text, ')');  /* comm may hold spaces and parentheses */
	return close && close[1] == ' ' ? close[2] : '?';
}

/* The "Pid:" of a pidfd's fdinfo: -1 for a reaped process, -100 when unreadable. */
__attribute__((unused)) static pid_t fdinfo_pid(int fd)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f) return -100;
	pid_t pid = -100;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, "Pid:", 4) == 0) pid = (pid_t)strtol(line + 4, NULL, 10);
	fclose(f);
	return pid;
}

#endif
