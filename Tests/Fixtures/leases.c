/*
 * leases: three leases that an open was breaking when the tree was frozen,
 * in the folder argv[1]:
 *   R  a read lease on a file open read-only, broken by a writer: to UNLCK
 *   W  a write lease on a file open for writing, broken by a reader: to READ
 *   X  a write lease on a file open for writing, broken by a writer: to UNLCK
 * Each break was started by an open with O_NONBLOCK (refused, EWOULDBLOCK),
 * and SIGIO came once for each, naming its descriptor. After SIGTERM,
 * F_GETLEASE must still report the type each lease is being broken to, and
 * no further SIGIO may have come: the restore broke them again without
 * telling us twice.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "fixture.h"

static volatile sig_atomic_t got_term, signals, ghost;
static volatile int expected_fd = -1;
static void on_term(int sig) { (void)sig; got_term = 1; }
static void on_io(int sig, siginfo_t *info, void *context)
{
	(void)sig; (void)context;
	if (info->si_fd != expected_fd) ghost = 1;
	expected_fd = -1;
	signals++;
}

static int leased(const char *dir, const char *name, int mode, int lease, int breaker)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, mode | O_CREAT, 0644);
	if (fd < 0 || fcntl(fd, F_SETSIG, SIGIO) || fcntl(fd, F_SETLEASE, lease)) return -1;
	expected_fd = fd;
	int other = open(path, breaker | O_NONBLOCK);
	if (other >= 0 || errno != EWOULDBLOCK) return -1;
	for (int i = 0; i < 200 && expected_fd != -1; i++) usleep(5000);
	return fd;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_sigaction = on_io;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGIO, &sa, NULL);
	int r = leased(dir, "lease-r.dat", O_RDONLY, F_RDLCK, O_WRONLY);
	int w = leased(dir, "lease-w.dat", O_WRONLY, F_WRLCK, O_RDONLY);
	int x = leased(dir, "lease-x.dat", O_RDWR, F_WRLCK, O_WRONLY);
	if (r < 0 || w < 0 || x < 0 || signals != 3 || ghost) {
		printf("setup: leases %d %d %d, %d signals%s: %s\n", r, w, x, (int)signals, ghost ? " (one for another fd)" : "", strerror(errno));
		return 2;
	}
	printf("READY\n");
	sigset_t none;
	sigemptyset(&none);
	while (!got_term) sigsuspend(&none);
	usleep(100000);  /* a SIGIO the restore would have caused comes in this time */
	int got[3] = { fcntl(r, F_GETLEASE), fcntl(w, F_GETLEASE), fcntl(x, F_GETLEASE) };
	int want[3] = { F_UNLCK, F_RDLCK, F_UNLCK };
	const char *names[3] = { "R", "W", "X" };
	for (int i = 0; i < 3; i++)
		if (got[i] != want[i]) fail("lease %s: F_GETLEASE %d, want %d (breaking to it)", names[i], got[i], want[i]);
	if (signals != 3) fail("%d SIGIO in all, want the 3 of the breaks before the dump", (int)signals);
	if (failbuf[0]) { printf("FAIL: %s\n", failbuf); return 1; }
	printf("PASS\n");
	return 0;
}
