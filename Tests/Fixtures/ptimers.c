/*
 * ptimers: three POSIX timers. A: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR1 with
 * value 7, every 30 ms, counted by a handler. B: CLOCK_REALTIME,
 * SIGEV_THREAD_ID to the main thread, SIGRTMIN+1, one shot in an hour.
 * C: CLOCK_MONOTONIC, SIGEV_NONE, disarmed. After SIGTERM the same ids must
 * exist with the same settings, A must keep firing with its value, B must
 * still be an hour away and C disarmed.
 * With the argument "deadthread", a fourth timer D, SIGEV_THREAD_ID aimed at
 * a thread that has exited since, armed for an hour: it must come back (the
 * same id, still an hour away), though nothing can receive its signal.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t term, ticks, wrong_value;
static void on_term(int sig) { (void)sig; term = 1; }
static void on_tick(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)context;
    if (info->si_value.sival_int != 7 || info->si_code != SI_TIMER) wrong_value = 1;
    ticks++;
}

static timer_t d;
static void *make_d(void *unused) {
    (void)unused;
    struct sigevent ed = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 2 };
    ed._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    return timer_create(CLOCK_MONOTONIC, &ed, &d) ? (void *)1 : NULL;
}

int main(int argc, char **argv) {
    int dead_thread = argc > 1 && !strcmp(argv[1], "deadthread");
    signal(SIGTERM, on_term);
    struct sigaction sa = { .sa_sigaction = on_tick, .sa_flags = SA_SIGINFO | SA_RESTART };
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGRTMIN + 1, SIG_IGN);

    timer_t a, b, c;
    struct sigevent ea = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1, .sigev_value.sival_int = 7 };
    struct sigevent eb = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 1 };
    eb._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    struct sigevent ec = { .sigev_notify = SIGEV_NONE };
    if (timer_create(CLOCK_MONOTONIC, &ea, &a) || timer_create(CLOCK_REALTIME, &eb, &b) || timer_create(CLOCK_MONOTONIC, &ec, &c)) {
        printf("FAIL: timer_create\n");
        return 1;
    }
    struct itimerspec every = { { 0, 30000000 }, { 0, 30000000 } }, hour = { { 0, 0 }, { 3600, 0 } };
    timer_settime(a, 0, &every, NULL);
    timer_settime(b, 0, &hour, NULL);
    if (dead_thread) {
        pthread_t t;
        void *made = (void *)1;
        if (pthread_create(&t, NULL, make_d, NULL) || pthread_join(t, &made) || made) {
            printf("FAIL: timer D\n");
            return 1;
        }
        timer_settime(d, 0, &hour, NULL);
    }
    printf("TIMERS %ld %ld %ld\nREADY\n", (long)a, (long)b, (long)c);
    fflush(stdout);
    while (!term) pause();

    char failures[1024] = "";
    int before = ticks;
    struct timespec wait = { 0, 200000000 };
    while (nanosleep(&wait, &wait)) {}
    if (ticks - before < 2) strcat(failures, "timer A stopped firing; ");
    if (wrong_value) strcat(failures, "timer A lost its value or code; ");
    struct itimerspec now;
    if (timer_gettime(a, &now) || now.it_interval.tv_nsec != 30000000 || now.it_interval.tv_sec) strcat(failures, "timer A interval changed; ");
    if (timer_gettime(b, &now) || now.it_value.tv_sec < 3000 || now.it_value.tv_sec > 3600 || now.it_interval.tv_sec)
        strcat(failures, "timer B is not an hour away; ");
    if (timer_gettime(c, &now) || now.it_value.tv_sec || now.it_value.tv_nsec) strcat(failures, "timer C armed or gone; ");
    if (dead_thread && (timer_gettime(d, &now) || now.it_value.tv_sec < 3000 || now.it_value.tv_sec > 3600))
        strcat(failures, "timer D (its thread gone) is lost or not an hour away; ");
    FILE *f = fopen("/proc/self/timers", "r");
    char line[256];
    int ids = 0, thread_notify = 0;
    while (f && fgets(line, sizeof(line), f)) {
        long id;
        if (sscanf(line, "ID: %ld", &id) == 1 && (id == (long)a || id == (long)b || id == (long)c || (dead_thread && id == (long)d))) ids++;
        if (!strncmp(line, "notify: ", 8) && strstr(line, "/tid.")) thread_notify++;
    }
    if (f) fclose(f);
    if (ids != 3 + dead_thread) strcat(failures, "timer ids changed; ");
    if (thread_notify != 1) strcat(failures, "SIGEV_THREAD_ID lost; ");
    if (failures[0]) printf("FAIL: %s\n", failures);
    else printf("PASS\n");
    fflush(stdout);
    return failures[0] ? 1 : 0;
}
