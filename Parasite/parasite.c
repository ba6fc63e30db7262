/*
 * The parasite: runs inside a stopped task, one command per call, raw
 * syscalls only (no libc). The controller resumes it at the entry with rdi
 * pointing at the argument area; it returns by trapping (entry.S).
 */
#include "parasite_protocol.h"

typedef unsigned long size_t;
typedef long ssize_t;

/* x86_64 syscall numbers used here (stable ABI). */
enum {
    NR_read = 0, NR_close = 3, NR_mmap = 9, NR_mprotect = 10, NR_munmap = 11, NR_brk = 12,
    NR_rt_sigaction = 13, NR_pread64 = 17, NR_pwrite64 = 18, NR_mremap = 25, NR_madvise = 28, NR_shmat = 30,
    NR_getitimer = 36, NR_setitimer = 38, NR_socket = 41, NR_connect = 42,
    NR_recvmsg = 47, NR_socketpair = 53, NR_preadv = 295, NR_pwritev = 296, NR_clone = 56, NR_rt_sigprocmask = 14, NR_futex = 202, NR_fcntl = 72, NR_fchdir = 81, NR_umask = 95,
    NR_setresuid = 117, NR_setresgid = 119, NR_setgroups = 116, NR_setfsuid = 122,
    NR_setfsgid = 123, NR_capset = 126, NR_rt_tgsigqueueinfo = 297, NR_rt_sigqueueinfo = 129, NR_rt_sigtimedwait = 128,
    NR_sigaltstack = 131, NR_personality = 135, NR_prctl = 157, NR_chroot = 161,
    NR_gettid = 186, NR_set_tid_address = 218, NR_getpid = 39, NR_tgkill = 234, NR_pipe2 = 293, NR_vmsplice = 278,
    NR_set_robust_list = 273, NR_get_robust_list = 274, NR_dup3 = 292, NR_rseq = 334,
    NR_close_range = 436, NR_prlimit64 = 302, NR_epoll_ctl = 233, NR_seccomp = 317, NR_flock = 73, NR_getgroups = 115, NR_timer_create = 222, NR_timer_settime = 223, NR_timer_gettime = 224, NR_timer_getoverrun = 225, NR_madvise_populate = 28,
    NR_membarrier = 324, NR_mlock2 = 325, NR_mlockall = 151, NR_mincore = 27, NR_mseal = 462,
};

#define PR_SET_PDEATHSIG 1
#define CLONE_VM 0x100
#define CLONE_FS 0x200
#define CLONE_FILES 0x400
#define CLONE_SIGHAND 0x800
#define CLONE_UNTRACED 0x800000
#define CLONE_THREAD 0x10000
#define CLONE_SYSVSEM 0x40000
#define CLONE_CHILD_CLEARTID 0x200000
#define FUTEX_WAIT 0
#define SIG_SETMASK 2
#define PR_GET_PDEATHSIG 2
#define PR_GET_DUMPABLE 3
#define PR_SET_DUMPABLE 4
#define PR_SET_KEEPCAPS 8
#define PR_SET_NAME 15
#define PR_GET_NAME 16
#define PR_SET_CHILD_SUBREAPER 36
#define PR_GET_CHILD_SUBREAPER 37
#define PR_CAPBSET_DROP 24
#define PR_GET_SECUREBITS 27
#define PR_SET_SECUREBITS 28
#define PR_SET_MM 35
#define PR_SET_MM_MAP 14
#define PR_GET_TID_ADDRESS 40
#define PR_GET_TIMERSLACK 30
#define PR_GET_THP_DISABLE 42
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#define MAP_FIXED 0x10
#define MREMAP_MAYMOVE 1
#define MREMAP_FIXED 2
#define PROT_WRITE 2
#define MADV_DONTNEED 4
#define MADV_DONTFORK 10
#define MADV_DONTDUMP 16
#define MADV_HUGEPAGE 14
#define MADV_NOHUGEPAGE 15
#define MADV_WIPEONFORK 18
#define MADV_MERGEABLE 12
#define MADV_RANDOM 1
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#define MADV_SEQUENTIAL 2
#define MLOCK_ONFAULT 1
#define MCL_FUTURE 2
#define MCL_ONFAULT 4
#define PROT_READ 1
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define EAGAIN 11
#define EINVAL 22
#define MADV_POPULATE_WRITE 23
#define F_DUPFD 0
#define AF_UNIX 1
#define SOCK_SEQPACKET 5
#define SOCK_DGRAM 2
#define MSG_DONTWAIT 0x40
#define MSG_CMSG_CLOEXEC 0x40000000
#define RLIMIT_FSIZE 1
#define EFBIG 27
#define EIO 5
#define SIGXFSZ 25
#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define O_CLOEXEC 02000000
#define RSEQ_FLAG_UNREGISTER 1
#define EINTR 4
#define EPIPE 32
#define F_SETPIPE_SZ 1031
#define SIGPIPE 13
#define EAGAIN 11

static inline long sys6(long nr, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define sys0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define sys1(n, a) sys6(n, (long)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) sys6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define sys5(n, a, b, c, d, e) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

/* The compiler may emit calls to these even when freestanding. */
void *memset(void *d, int c, size_t n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}

/* The parasite's own log, read by the controller after each command and
 * shown with -v: one line per notable step. */
static void log_text(struct cryo_args_header *h, const char *text) {
    char *log = (char *)h + h->log_offset;
    while (*text && h->log_length + 1 < h->log_capacity) log[h->log_length++] = *text++;
}
static void log_hex(struct cryo_args_header *h, unsigned long value) {
    char digits[19] = "0x";
    int n = 0;
    unsigned long v = value;
    do { n++; v >>= 4; } while (v);
    for (int i = 0; i < n; i++) digits[2 + n - 1 - i] = "0123456789abcdef"[(value >> (4 * i)) & 0xf];
    digits[2 + n] = 0;
    log_text(h, digits);
}
static void log_line(struct cryo_args_header *h, const char *what, unsigned long a, unsigned long b) {
    log_text(h, what);
    log_text(h, " ");
    log_hex(h, a);
    log_text(h, " ");
    log_hex(h, b);
    log_text(h, "\n");
}

/* Records the failing step and returns its -errno, so the controller can say
 * which item, which syscall and which errno. */
static long fail(struct cryo_args_header *h, long result, unsigned long step, long nr, unsigned long addr) {
    log_line(h, "failed: syscall, errno", (unsigned long)nr, (unsigned long)-result);
    h->result = result;
    h->fail_step = step;
    h->fail_syscall = (unsigned long)nr;
    h->fail_addr = addr;
    return result;
}
#define CHECK(h, expr, step, nr, addr) do { long _r = (expr); if (_r < 0) return fail(h, _r, step, nr, addr); } while (0)

static void *payload(struct cryo_args_header *h) { return (char *)h + sizeof(*h); }

/* Whether mlockall(MCL_FUTURE) is in effect: a fresh mapping is then locked, which MADV_DONTNEED
 * refuses with EINVAL, and unless MCL_ONFAULT came with it, the lock brought its page in. Over
 * RLIMIT_MEMLOCK only a locked mapping is refused (EAGAIN). The controller reads the layout before
 * this runs and looks smaps up by it, so the page, gone again at once, is in no image. */
static long locked_future(void) {
    long page = sys6(NR_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == -EAGAIN) return MCL_FUTURE;
    if (page < 0) return page;
    long advised = sys3(NR_madvise, page, 4096, MADV_DONTNEED);
    unsigned char resident = 0;
    long seen = sys3(NR_mincore, page, 4096, &resident);
    sys2(NR_munmap, page, 4096);
    if (advised == 0) return 0;
    if (advised != -EINVAL) return advised;
    if (seen < 0) return seen;
    return MCL_FUTURE | (resident & 1 ? 0 : MCL_ONFAULT);
}

static long dump_process(struct cryo_args_header *h) {
    struct cryo_task_state *st = payload(h);
    memset(st, 0, sizeof(*st));
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == 9 || sig == 19) continue;
        CHECK(h, sys4(NR_rt_sigaction, sig, 0, &st->actions[sig - 1], 8), sig, NR_rt_sigaction, 0);
    }
    for (int which = 0; which < 3; which++)
        CHECK(h, sys2(NR_getitimer, which, &st->itimers[which]), which, NR_getitimer, 0);
    long mask = sys1(NR_umask, 0);
    sys1(NR_umask, mask);
    st->umask = (uint32_t)mask;
    st->brk = (uint64_t)sys1(NR_brk, 0);
    st->dumpable = (uint32_t)sys1(NR_prctl, PR_GET_DUMPABLE);
    st->securebits = (uint32_t)sys1(NR_prctl, PR_GET_SECUREBITS);
    int subreaper = 0;
    CHECK(h, sys2(NR_prctl, PR_GET_CHILD_SUBREAPER, &subreaper), 0, NR_prctl, PR_GET_CHILD_SUBREAPER);
    st->child_subreaper = (uint32_t)subreaper;
    for (int r = 0; r < 16; r++)
        CHECK(h, sys4(NR_prlimit64, 0, r, 0, st->rlimits[r]), r, NR_prlimit64, 0);
    /* Results or -errno: the controller decides what an error means (an old kernel lacks GET_REGISTRATIONS). */
    st->thp_disable = sys1(NR_prctl, PR_GET_THP_DISABLE);
    st->membarrier = sys3(NR_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
    st->lock_future = locked_future();
    return 0;
}

struct kernel_stack { unsigned long sp; int flags; int pad; unsigned long size; };

static long dump_thread(struct cryo_args_header *h) {
    struct cryo_thread_state *t = payload(h);
    memset(t, 0, sizeof(*t) - sizeof(t->signals));
    struct kernel_stack ss;
    CHECK(h, sys2(NR_sigaltstack, 0, &ss), 0, NR_sigaltstack, 0);
    t->altstack_sp = ss.sp;
    t->altstack_size = ss.size;
    t->altstack_flags = ss.flags;
    CHECK(h, sys2(NR_prctl, PR_GET_TID_ADDRESS, &t->clear_child_tid), 0, NR_prctl, PR_GET_TID_ADDRESS);
    CHECK(h, sys3(NR_get_robust_list, 0, &t->robust_list, &t->robust_list_len), 0, NR_get_robust_list, 0);
    int pdeath = 0;
    CHECK(h, sys2(NR_prctl, PR_GET_PDEATHSIG, &pdeath), 0, NR_prctl, PR_GET_PDEATHSIG);
    t->parent_death_signal = pdeath;
    CHECK(h, sys2(NR_prctl, PR_GET_NAME, t->name), 0, NR_prctl, PR_GET_NAME);
    t->timer_slack = sys1(NR_prctl, PR_GET_TIMERSLACK);
    return 0;
}

/* Queues siginfos to ourselves (any si_code is allowed then); they stay
 * blocked until the controller puts the thread's own mask back. */
static long queue_signals(struct cryo_args_header *h, struct cryo_queued_signal *signals, uint32_t count) {
    long pid = sys0(NR_getpid), tid = sys0(NR_gettid);
    for (uint32_t i = 0; i < count && i < CRYO_MAX_QUEUED_SIGNALS; i++) {
        struct cryo_queued_signal *q = &signals[i];
        int signo = *(int *)q->siginfo;
        if (q->shared) CHECK(h, sys3(NR_rt_sigqueueinfo, pid, signo, q->siginfo), i, NR_rt_sigqueueinfo, signo);
        else CHECK(h, sys4(NR_rt_tgsigqueueinfo, pid, tid, signo, q->siginfo), i, NR_rt_tgsigqueueinfo, signo);
    }
    return 0;
}

static long restore_thread_state(struct cryo_args_header *h, struct cryo_thread_state *t) {
    struct kernel_stack ss = { t->altstack_sp, t->altstack_flags & 2 /* SS_DISABLE */, 0, t->altstack_size };
    CHECK(h, sys2(NR_sigaltstack, &ss, 0), 0, NR_sigaltstack, t->altstack_sp);
    CHECK(h, sys1(NR_set_tid_address, t->clear_child_tid), 0, NR_set_tid_address, 0);
    if (t->robust_list)
        CHECK(h, sys2(NR_set_robust_list, t->robust_list, t->robust_list_len), 0, NR_set_robust_list, 0);
    if (t->rseq)
        CHECK(h, sys4(NR_rseq, t->rseq, t->rseq_length, 0, t->rseq_signature), 0, NR_rseq, t->rseq);
    CHECK(h, sys2(NR_prctl, PR_SET_PDEATHSIG, t->parent_death_signal), 0, NR_prctl, PR_SET_PDEATHSIG);
    if (t->name[0]) CHECK(h, sys2(NR_prctl, PR_SET_NAME, t->name), 0, NR_prctl, PR_SET_NAME);
    return queue_signals(h, t->signals, t->signal_count);
}

static long restore_thread(struct cryo_args_header *h) { return restore_thread_state(h, payload(h)); }

static long connect_control(struct cryo_args_header *h) {
    struct cryo_connect *c = payload(h);
    long s = sys3(NR_socket, AF_UNIX, SOCK_SEQPACKET | O_CLOEXEC, 0);
    CHECK(h, s, 0, NR_socket, 0);
    struct { unsigned short family; char path[108]; } addr;
    addr.family = AF_UNIX;
    memcpy(addr.path, c->sun_path, sizeof(addr.path));
    long r = sys3(NR_connect, s, &addr, 2 + c->address_length);
    if (r < 0) { sys1(NR_close, s); return fail(h, r, 0, NR_connect, 0); }
    if (s != c->target_fd) {
        r = sys3(NR_dup3, s, c->target_fd, O_CLOEXEC);
        sys1(NR_close, s);
        CHECK(h, r, 0, NR_dup3, (unsigned long)c->target_fd);
    }
    return 0;
}

static long clone_connected(struct cryo_args_header *h) {
    struct cryo_clone_connected *c = payload(h);
    c->result = -9 /* EBADF until cloned */;
    long r = connect_control(h);
    if (r < 0) return r;
    c->clone_args[8] = (uint64_t)&c->set_tid;
    c->result = sys2(435 /* clone3 */, c->clone_args, sizeof(c->clone_args));
    /* The child (stopped at birth by its tracer) never runs past here in the parasite. */
    sys1(NR_close, c->connect.target_fd);
    return 0;
}

/* Moves past `done` bytes of v[*i..count). */
static void consume_iovecs(struct cryo_iovec *v, uint32_t count, uint32_t *i, long done) {
    while (done > 0 && *i < count) {
        uint64_t take = (uint64_t)done < v[*i].length ? (uint64_t)done : v[*i].length;
        v[*i].base += take;
        v[*i].length -= take;
        done -= (long)take;
        if (v[*i].length == 0) (*i)++;
    }
}

/* A failed syscall raised `signal` at the task (SIGPIPE, SIGXFSZ): take it, or it would reach the task after us. */
static void drop_pending(int signal) {
    uint64_t set = 1ul << (signal - 1);
    struct { long sec, nsec; } zero = { 0, 0 };
    sys4(NR_rt_sigtimedwait, &set, 0, &zero, 8);
}

/* Up to `max` descriptors of one message (SCM_RIGHTS) into fds[]: how many, or -errno. */
static long recv_fd_group(int sock, int *fds, uint32_t max, int flags) {
    char byte;
    struct { void *base; size_t len; } iov = { &byte, 1 };
    union { struct { size_t len; int level, type; int fds[CRYO_FDS_PER_MESSAGE]; } c; char buf[16 + 4 * CRYO_FDS_PER_MESSAGE + 8]; } ctl;
    struct {
        void *name; int namelen; int pad; void *iov; size_t iovlen;
        void *control; size_t controllen; int flags;
    } msg = { 0, 0, 0, &iov, 1, &ctl, sizeof(ctl), 0 };
    memset(&ctl, 0, sizeof(ctl));
    long r;
    do { r = sys3(NR_recvmsg, sock, &msg, flags); } while (r == -EINTR);
    if (r < 0) return r;
    if (r == 0 || ctl.c.level != SOL_SOCKET || ctl.c.type != SCM_RIGHTS || ctl.c.len < 20) return -71 /* EPROTO */;
    uint32_t n = (uint32_t)((ctl.c.len - 16) / 4);
    /* MSG_CTRUNC: the task could not take them all (RLIMIT_NOFILE); more than asked for: out of step. */
    if ((msg.flags & 0x8 /* MSG_CTRUNC */) || n > max) {
        for (uint32_t i = 0; i < n; i++) sys1(NR_close, ctl.c.fds[i]);
        return (msg.flags & 0x8) ? -24 /* EMFILE */ : -71 /* EPROTO */;
    }
    for (uint32_t i = 0; i < n; i++) fds[i] = ctl.c.fds[i];
    return n;
}

/* One descriptor passed over a unix socket (SCM_RIGHTS), or -errno (-EPROTO when the message has none). */
static long recv_one_fd(int sock, int flags) {
    int fd;
    long n = recv_fd_group(sock, &fd, 1, flags);
    return n < 0 ? n : n == 1 ? fd : -71 /* EPROTO */;
}

/* Descriptors come in messages of up to CRYO_FDS_PER_MESSAGE. The kernel gives a message's
 * descriptors the lowest free numbers in ascending order, and the targets are free and
 * ascending too, so the i-th received is at most the i-th target: placing them from the
 * last down never overwrites one not yet placed. One dup3 per descriptor, and the
 * originals below the targets go in one close_range per run of numbers. */
static long recv_fds(struct cryo_args_header *h) {
    struct cryo_recv_fds *a = payload(h);
    if (a->close_others) {
        if (a->control_fd > 0) CHECK(h, sys3(NR_close_range, 0, a->control_fd - 1, 0), 0, NR_close_range, 0);
        CHECK(h, sys3(NR_close_range, a->control_fd + 1, ~0u, 0), 0, NR_close_range, a->control_fd + 1);
    }
    int fds[CRYO_FDS_PER_MESSAGE];
    uint32_t done = 0;
    while (done < a->count) {
        uint32_t want = a->count - done < CRYO_FDS_PER_MESSAGE ? a->count - done : CRYO_FDS_PER_MESSAGE;
        long got = recv_fd_group(a->control_fd, fds, want, MSG_CMSG_CLOEXEC);
        CHECK(h, got, done, NR_recvmsg, (unsigned long)a->control_fd);
        uint32_t n = (uint32_t)got;
        int low = a->first_slot_fd + (int)done;
        log_line(h, "received fds, first slot", n, (unsigned long)low);
        for (uint32_t i = 0; i < n; i++) {
            if (fds[i] > low + (int)i || (i > 0 && fds[i] <= fds[i - 1])) {
                for (uint32_t k = 0; k < n; k++) if (fds[k] < low) sys1(NR_close, fds[k]);
                return fail(h, -71 /* EPROTO: not the kernel's order */, done + i, NR_recvmsg, (unsigned long)fds[i]);
            }
        }
        for (uint32_t i = n; i-- > 0;) {
            if (fds[i] != low + (int)i) CHECK(h, sys3(NR_dup3, fds[i], low + (int)i, O_CLOEXEC), done + i, NR_dup3, (unsigned long)(low + (int)i));
        }
        /* Originals inside the targets were replaced by dup3; those below them go now. */
        for (uint32_t i = 0; i < n && fds[i] < low;) {
            uint32_t k = i;
            while (k + 1 < n && fds[k + 1] == fds[k] + 1 && fds[k + 1] < low) k++;
            CHECK(h, sys3(NR_close_range, fds[i], fds[k], 0), done + i, NR_close_range, (unsigned long)fds[i]);
            i = k + 1;
        }
        done += n;
    }
    return 0;
}

/* Fills the runs with one preadv per stretch of the pages file they follow each other in
 * (FILL_RUNS_BATCH runs at most): thousands of small mappings of a page or two each cost a
 * few dozen syscalls, not one per run (each is a microsecond or two here). */
enum { FILL_RUNS_BATCH = 256 };
static long fill_runs(struct cryo_args_header *h, struct cryo_page_run *runs, uint64_t count) {
    struct cryo_iovec v[FILL_RUNS_BATCH];
    uint64_t k = 0;
    while (k < count) {
        uint32_t n = 0;
        uint64_t length = 0;
        while (n < FILL_RUNS_BATCH && k + n < count && runs[k + n].fd == runs[k].fd
               && runs[k + n].file_offset == runs[k].file_offset + length) {
            v[n].base = runs[k + n].address;
            v[n].length = runs[k + n].length;
            length += runs[k + n].length;
            n++;
        }
        uint32_t i = 0;
        uint64_t offset = runs[k].file_offset;
        while (length > 0) {
            long r = sys4(NR_preadv, runs[k].fd, &v[i], n - i, offset);
            if (r == -EINTR) continue;
            /* 0: EIO, the pages file is shorter than its index says. */
            if (r <= 0) return fail(h, r ? r : -5, k + i, NR_preadv, v[i].base);
            offset += (uint64_t)r;
            length -= (uint64_t)r;
            consume_iovecs(v, n, &i, r);
        }
        k += n;
    }
    return 0;
}

/* Whether a guard region lies in the mapping (guards are in address order). */
static int holds_guard(const struct cryo_range *guards, uint64_t count, const struct cryo_vma *v) {
    for (uint64_t i = 0; i < count && guards[i].start < v->end; i++)
        if (guards[i].end > v->start) return 1;
    return 0;
}

static long restore_memory(struct cryo_args_header *h) {
    struct cryo_restore_memory *m = payload(h);
    struct cryo_range *unmaps = (struct cryo_range *)(m + 1);
    struct cryo_remap *remaps = (struct cryo_remap *)(unmaps + m->unmap_count);
    struct cryo_vma *vmas = (struct cryo_vma *)(remaps + m->remap_count);
    struct cryo_page_run *runs = (struct cryo_page_run *)(vmas + m->vma_count);
    struct cryo_range *discards = (struct cryo_range *)(runs + m->run_count);
    struct cryo_range *guards = discards + m->discard_count;

    /* The controller's rseq area is about to vanish; the kernel must stop writing to it. */
    if (m->old_rseq)
        CHECK(h, sys4(NR_rseq, m->old_rseq, m->old_rseq_length, RSEQ_FLAG_UNREGISTER, m->old_rseq_signature),
              0, NR_rseq, m->old_rseq);
    log_line(h, "unmap ranges, remaps", m->unmap_count, m->remap_count);
    log_line(h, "mappings, page runs", m->vma_count, m->run_count);
    for (uint64_t i = 0; i < m->unmap_count; i++)
        CHECK(h, sys2(NR_munmap, unmaps[i].start, unmaps[i].end - unmaps[i].start), i, NR_munmap, unmaps[i].start);
    for (uint64_t i = 0; i < m->remap_count; i++) {
        long r = sys5(NR_mremap, remaps[i].from, remaps[i].length, remaps[i].length,
                      MREMAP_MAYMOVE | MREMAP_FIXED, remaps[i].to);
        CHECK(h, r, i, NR_mremap, remaps[i].from);
    }
    /* Pages of kept (inherited) mappings that the parent holds and this task did not: zero or the file's again. */
    for (uint64_t i = 0; i < m->discard_count; i++)
        CHECK(h, sys3(NR_madvise, discards[i].start, discards[i].end - discards[i].start, MADV_DONTNEED), i, NR_madvise,
              discards[i].start);
    /* Every mapping first (writable while its pages go in), then every page, then the
     * protections and advice: the pages of all mappings are read in a few batches. */
    for (uint64_t i = 0; i < m->vma_count; i++) {
        struct cryo_vma *v = &vmas[i];
        uint64_t length = v->end - v->start;
        uint32_t prot = v->prot;
        if (v->run_count) prot |= PROT_WRITE;
        log_line(h, "map", v->start, length);
        long addr;
        if (v->keep) {
            /* Inherited with its pages shared copy-on-write: only this task's own pages are written.
             * It has the parent's protection, which may not be this task's, and the parent's guard
             * regions, which may not be this task's either (its own are installed below). */
            addr = (long)v->start;
            CHECK(h, sys3(NR_mprotect, v->start, length, prot), i, NR_mprotect, v->start);
            if (m->drop_kept_guards) CHECK(h, sys3(NR_madvise, v->start, length, MADV_GUARD_REMOVE), i, NR_madvise, v->start);
        } else if (v->sysv_shm) {
            /* A real attach, so shmdt and the segment's attach count work as before. */
            enum { SHM_RDONLY = 010000, SHM_REMAP = 040000, SHM_EXEC = 0100000 };
            /* SHM_RDONLY would leave it without VM_MAYWRITE: a later mprotect(PROT_WRITE) fails with EACCES. */
            int writable = (prot & PROT_WRITE) || (v->madvise & CRYO_VMA_MAYWRITE);
            long shmflg = SHM_REMAP | (writable ? 0 : SHM_RDONLY) | (prot & 4 /* PROT_EXEC */ ? SHM_EXEC : 0);
            addr = sys3(NR_shmat, v->sysv_shm - 1, v->start, shmflg);
            CHECK(h, addr, i, NR_shmat, v->start);
            if (writable && !(prot & PROT_WRITE)) CHECK(h, sys3(NR_mprotect, v->start, length, prot), i, NR_mprotect, v->start);
        } else {
            addr = sys6(NR_mmap, v->start, length, prot, v->flags | MAP_FIXED, v->fd, v->file_offset);
            CHECK(h, addr, i, NR_mmap, v->start);
        }
        if ((uint64_t)addr != v->start) return fail(h, -14 /* EFAULT */, i, NR_mmap, v->start);
    }
    long filled = fill_runs(h, runs, m->run_count);
    if (filled < 0) return filled;
    /* After the pages (a guard page takes none, and a touch of it faults), before mlock: MADV_GUARD_INSTALL
     * refuses a locked mapping (EINVAL). */
    for (uint64_t i = 0; i < m->guard_count; i++)
        CHECK(h, sys3(NR_madvise, guards[i].start, guards[i].end - guards[i].start, MADV_GUARD_INSTALL), i, NR_madvise,
              guards[i].start);
    for (uint64_t i = 0; i < m->vma_count; i++) {
        struct cryo_vma *v = &vmas[i];
        uint64_t length = v->end - v->start;
        if (v->run_count && !(v->prot & PROT_WRITE))
            CHECK(h, sys3(NR_mprotect, v->start, length, v->prot), i, NR_mprotect, v->start);
        static const struct { uint32_t bit; int advice; } advices[] = {
            { CRYO_MADV_DONTDUMP, MADV_DONTDUMP }, { CRYO_MADV_DONTFORK, MADV_DONTFORK },
            { CRYO_MADV_HUGEPAGE, MADV_HUGEPAGE }, { CRYO_MADV_NOHUGEPAGE, MADV_NOHUGEPAGE },
            { CRYO_MADV_WIPEONFORK, MADV_WIPEONFORK }, { CRYO_MADV_MERGEABLE, MADV_MERGEABLE },
            { CRYO_MADV_SEQUENTIAL, MADV_SEQUENTIAL }, { CRYO_MADV_RANDOM, MADV_RANDOM },
        };
        for (unsigned a = 0; a < sizeof(advices) / sizeof(advices[0]); a++)
            if (v->madvise & advices[a].bit)
                CHECK(h, sys3(NR_madvise, v->start, length, advices[a].advice), i, NR_madvise, v->start);
        /* Last: a lock without ONFAULT brings in every page of the mapping, which must hold its own by now. */
        if ((v->madvise & CRYO_VMA_LOCKED) && !(v->madvise & CRYO_VMA_LOCKONFAULT) && holds_guard(guards, m->guard_count, v)) {
            /* Bringing pages in stops at a guard page with ENOMEM, after the lock is set: as for the task
             * itself. Locked on fault first, so a real refusal (RLIMIT_MEMLOCK) still fails here. */
            CHECK(h, sys3(NR_mlock2, v->start, length, MLOCK_ONFAULT), i, NR_mlock2, v->start);
            long locked = sys3(NR_mlock2, v->start, length, 0);
            if (locked != -12 /* ENOMEM */) CHECK(h, locked, i, NR_mlock2, v->start);
        } else if (v->madvise & CRYO_VMA_LOCKED) {
            CHECK(h, sys3(NR_mlock2, v->start, length, v->madvise & CRYO_VMA_LOCKONFAULT ? MLOCK_ONFAULT : 0), i, NR_mlock2, v->start);
        }
    }
    return 0;
}

static long restore_state(struct cryo_args_header *h) {
    struct cryo_task_state *st = payload(h);
    struct cryo_restore_extra *x = (struct cryo_restore_extra *)(st + 1);

    if (x->root_fd >= 0) {
        CHECK(h, sys1(NR_fchdir, x->root_fd), 0, NR_fchdir, x->root_fd);
        CHECK(h, sys1(NR_chroot, "."), 0, NR_chroot, 0);
    }
    if (x->cwd_fd >= 0) CHECK(h, sys1(NR_fchdir, x->cwd_fd), 0, NR_fchdir, x->cwd_fd);
    sys1(NR_umask, st->umask);
    CHECK(h, sys1(NR_personality, x->personality), 0, NR_personality, 0);
    CHECK(h, sys2(NR_prctl, PR_SET_NAME, x->comm), 0, NR_prctl, PR_SET_NAME);
    if (x->set_mm) {
        x->mm.auxv = (uint64_t)x->auxv;
        CHECK(h, sys5(NR_prctl, PR_SET_MM, PR_SET_MM_MAP, &x->mm, sizeof(x->mm), 0), 0, NR_prctl, PR_SET_MM_MAP);
    }
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == 9 || sig == 19) continue;
        CHECK(h, sys4(NR_rt_sigaction, sig, &st->actions[sig - 1], 0, 8), (unsigned long)sig, NR_rt_sigaction, 0);
    }
    CHECK(h, sys2(NR_prctl, PR_SET_DUMPABLE, st->dumpable), 0, NR_prctl, PR_SET_DUMPABLE);
    CHECK(h, sys2(NR_prctl, PR_SET_CHILD_SUBREAPER, st->child_subreaper), 0, NR_prctl, PR_SET_CHILD_SUBREAPER);
    if (x->discard_signals) {
        /* Dequeue without waiting; EAGAIN once none is left. */
        struct { long sec, nsec; } zero = { 0, 0 };
        uint8_t info[128];
        while (sys4(NR_rt_sigtimedwait, &x->discard_signals, info, &zero, 8) > 0) {}
    }
    if (x->signal_count > CRYO_MAX_QUEUED_SIGNALS) return fail(h, -22 /* EINVAL */, x->signal_count, 0, 0);
    long r = queue_signals(h, x->signals, x->signal_count);
    if (r < 0) return r;
    /* Only mappings made from here on: the restored ones have their own locks already. */
    if (st->lock_future > 0) CHECK(h, sys1(NR_mlockall, st->lock_future), 0, NR_mlockall, (unsigned long)st->lock_future);
    /* Timers last, so they do not run while the rest is rebuilt. */
    for (int which = 0; which < 3; which++)
        CHECK(h, sys3(NR_setitimer, which, &st->itimers[which], 0), which, NR_setitimer, 0);
    /* The leader's own state in the same stop: one round-trip less per process. */
    if (x->leader_follows) return restore_thread_state(h, (struct cryo_thread_state *)&x->signals[x->signal_count]);
    return 0;
}

static long seal_memory(struct cryo_args_header *h) {
    struct cryo_seal_memory *a = payload(h);
    struct cryo_range *r = (struct cryo_range *)(a + 1);
    for (uint32_t i = 0; i < a->count; i++)
        CHECK(h, sys3(NR_mseal, r[i].start, r[i].end - r[i].start, 0), i, NR_mseal, r[i].start);
    return 0;
}

static long install_fds(struct cryo_args_header *h) {
    struct cryo_install_fds *a = payload(h);
    struct cryo_fd_install *e = (struct cryo_fd_install *)(a + 1);
    for (uint32_t i = 0; i < a->count; i++) log_line(h, "install fd, from slot", (unsigned long)e[i].to, (unsigned long)e[i].from);
    for (uint32_t i = 0; i < a->count; i++)
        CHECK(h, sys3(NR_dup3, e[i].from, e[i].to, e[i].cloexec ? O_CLOEXEC : 0), i, NR_dup3, (unsigned long)e[i].to);
    CHECK(h, sys3(NR_close_range, a->close_from, ~0u, 0), 0, NR_close_range, (unsigned long)a->close_from);
    return 0;
}

static long epoll_add(struct cryo_args_header *h) {
    struct cryo_epoll_add *a = payload(h);
    struct cryo_epoll_target *t = (struct cryo_epoll_target *)(a + 1);
    for (uint32_t i = 0; i < a->count; i++) {
        struct __attribute__((packed)) { uint32_t events; uint64_t data; } ev = { t[i].events, t[i].data };
        log_line(h, "epoll watch fd, events", (unsigned long)t[i].target_fd, t[i].events);
        if (t[i].source_fd < 0) {
            CHECK(h, sys4(NR_epoll_ctl, t[i].epoll_fd, 1 /* EPOLL_CTL_ADD */, t[i].target_fd, &ev), i, NR_epoll_ctl,
                  (unsigned long)t[i].target_fd);
            continue;
        }
        /* The watched file's number was closed (or given to another file) after the watch was
         * added: put the file under that number just for the add, then put back what was there. */
        long flags = sys2(NR_fcntl, t[i].target_fd, 1 /* F_GETFD */);
        long saved = -1;
        if (flags >= 0) CHECK(h, saved = sys3(NR_fcntl, t[i].target_fd, 1030 /* F_DUPFD_CLOEXEC */, 0), i, NR_fcntl, 1030);
        CHECK(h, sys3(NR_dup3, t[i].source_fd, t[i].target_fd, 0), i, NR_dup3, (unsigned long)t[i].target_fd);
        long added = sys4(NR_epoll_ctl, t[i].epoll_fd, 1 /* EPOLL_CTL_ADD */, t[i].target_fd, &ev);
        if (saved >= 0) {
            CHECK(h, sys3(NR_dup3, saved, t[i].target_fd, (flags & 1) ? 02000000 /* O_CLOEXEC */ : 0), i, NR_dup3, (unsigned long)saved);
            sys1(NR_close, saved);
        } else {
            sys1(NR_close, t[i].target_fd);
        }
        CHECK(h, added, i, NR_epoll_ctl, (unsigned long)t[i].target_fd);
    }
    return 0;
}

static long restore_seccomp(struct cryo_args_header *h) {
    struct cryo_seccomp *s = payload(h);
    if (s->no_new_privs) CHECK(h, sys5(NR_prctl, 38 /* PR_SET_NO_NEW_PRIVS */, 1, 0, 0, 0), 0, NR_prctl, 38);
    char *cursor = (char *)(s + 1);
    for (uint32_t i = 0; i < s->filter_count; i++) {
        uint32_t count = *(uint32_t *)cursor;
        struct { unsigned short len; unsigned short pad[3]; void *filter; } prog = { (unsigned short)count, {0, 0, 0}, cursor + 8 };
        log_line(h, "seccomp filter, instructions", i, count);
        /* SECCOMP_SET_MODE_FILTER, with TSYNC for the filters every thread shares. */
        CHECK(h, sys3(NR_seccomp, 1, (s->flags & CRYO_SECCOMP_TSYNC) ? 1 : 0, &prog), i, NR_seccomp, count);
        cursor += 8 + 8 * (unsigned long)count;
    }
    if (s->flags & CRYO_SECCOMP_STRICT)
        CHECK(h, sys5(NR_prctl, 22 /* PR_SET_SECCOMP */, 1 /* SECCOMP_MODE_STRICT */, 0, 0, 0), 0, NR_prctl, 22);
    return 0;
}

static long take_locks(struct cryo_args_header *h) {
    struct cryo_locks *a = payload(h);
    struct cryo_lock *l = (struct cryo_lock *)(a + 1);
    for (uint32_t i = 0; i < a->count; i++) {
        log_line(h, "lock fd, kind", (unsigned long)l[i].fd, l[i].kind);
        if (l[i].kind == 0) {
            /* LOCK_EX or LOCK_SH, never waiting: a conflict is an error to report. */
            CHECK(h, sys2(NR_flock, l[i].fd, (l[i].write ? 2 : 1) | 4), i, NR_flock, (unsigned long)l[i].fd);
            continue;
        }
        if (l[i].kind == 3) {
            /* F_SETLEASE with F_WRLCK or F_RDLCK: granted only while no other open conflicts, as at dump. */
            CHECK(h, sys3(NR_fcntl, l[i].fd, 1024, l[i].write ? 1 : 0), i, NR_fcntl, (unsigned long)l[i].fd);
            continue;
        }
        struct { short type, whence; long start, len; int pid; int pad; } fl = {
            (short)(l[i].write ? 1 /* F_WRLCK */ : 0 /* F_RDLCK */), 0, l[i].start, l[i].length, 0, 0 };
        int cmd = l[i].kind == 1 ? 6 /* F_SETLK */ : 37 /* F_OFD_SETLK */;
        CHECK(h, sys3(NR_fcntl, l[i].fd, cmd, &fl), i, NR_fcntl, (unsigned long)l[i].fd);
    }
    return 0;
}

struct kernel_itimerspec { long interval_sec, interval_nsec, value_sec, value_nsec; };

static long dump_timers(struct cryo_args_header *h) {
    struct cryo_timers *a = payload(h);
    struct cryo_posix_timer *t = (struct cryo_posix_timer *)(a + 1);
    for (uint32_t i = 0; i < a->count; i++) {
        struct kernel_itimerspec spec;
        CHECK(h, sys2(NR_timer_gettime, t[i].id, &spec), i, NR_timer_gettime, (unsigned long)t[i].id);
        t[i].remaining_ns = spec.value_sec * 1000000000L + spec.value_nsec;
        t[i].interval_ns = spec.interval_sec * 1000000000L + spec.interval_nsec;
        long overrun = sys1(NR_timer_getoverrun, t[i].id);
        t[i].overrun = overrun < 0 ? 0 : (int32_t)overrun;
    }
    return 0;
}

static long restore_timers(struct cryo_args_header *h) {
    struct cryo_timers *a = payload(h);
    struct cryo_posix_timer *t = (struct cryo_posix_timer *)(a + 1);
    /* timer_create then takes the id it is given instead of the next free one. */
    CHECK(h, sys2(NR_prctl, 77 /* PR_TIMER_CREATE_RESTORE_IDS */, 1), 0, NR_prctl, 77);
    for (uint32_t i = 0; i < a->count; i++) {
        struct { uint64_t value; int signo, notify; int tid; int pad[11]; } sev;
        memset(&sev, 0, sizeof(sev));
        sev.value = t[i].value;
        sev.signo = t[i].signal;
        sev.notify = t[i].notify;
        sev.tid = t[i].thread;
        int id = t[i].id;
        log_line(h, "timer id, clock", (unsigned long)id, (unsigned long)t[i].clock);
        CHECK(h, sys3(NR_timer_create, t[i].clock, &sev, &id), i, NR_timer_create, (unsigned long)t[i].id);
        if (id != t[i].id) return fail(h, -17 /* EEXIST */, i, NR_timer_create, (unsigned long)t[i].id);
    }
    CHECK(h, sys2(NR_prctl, 77, 0), 0, NR_prctl, 77);
    /* Armed last, so they do not run while the rest is rebuilt. */
    for (uint32_t i = 0; i < a->count; i++) {
        if (!t[i].remaining_ns && !t[i].interval_ns) continue;
        struct kernel_itimerspec spec = { t[i].interval_ns / 1000000000L, t[i].interval_ns % 1000000000L,
                                          t[i].remaining_ns / 1000000000L, t[i].remaining_ns % 1000000000L };
        if (!spec.value_sec && !spec.value_nsec) spec.value_nsec = 1; /* expired but periodic: fire at once */
        CHECK(h, sys4(NR_timer_settime, t[i].id, 0, &spec, 0), i, NR_timer_settime, (unsigned long)t[i].id);
    }
    return 0;
}

static long restore_creds(struct cryo_args_header *h) {
    struct cryo_creds *c = payload(h);
    const uint32_t keep_caps = 1u << 4; /* SECBIT_KEEP_CAPS, what PR_SET_KEEPCAPS sets */
    if (c->group_count > CRYO_MAX_GROUPS || h->payload_size < sizeof(*c) + 8ul * c->group_count)
        return fail(h, -22 /* EINVAL */, c->group_count, NR_setgroups, 0);
    uint32_t *groups = (uint32_t *)(c + 1), *current = groups + c->group_count;
    /* setgroups needs CAP_SETGID even for the same list: skip it when nothing changes. */
    long have = sys2(NR_getgroups, 0, 0);
    int same = have == (long)c->group_count && sys2(NR_getgroups, have, current) == have;
    for (long i = 0; same && i < have; i++) same = current[i] == groups[i];
    if (!same) CHECK(h, sys2(NR_setgroups, c->group_count, groups), 0, NR_setgroups, 0);
    CHECK(h, sys3(NR_setresgid, c->gid, c->egid, c->sgid), 0, NR_setresgid, c->gid);
    sys1(NR_setfsgid, c->fsgid);
    /* Securebits while still privileged (changing them needs CAP_SETPCAP),
     * with KEEP_CAPS so the uid change below does not empty the permitted set;
     * capset then sets the sets exactly. KEEP_CAPS alone needs no privilege
     * (PR_SET_KEEPCAPS): an unprivileged cryo, whose bits already match, gets by. */
    uint32_t now_bits = (uint32_t)sys1(NR_prctl, PR_GET_SECUREBITS);
    if ((now_bits & ~keep_caps) != (c->securebits & ~keep_caps))
        CHECK(h, sys2(NR_prctl, PR_SET_SECUREBITS, c->securebits | keep_caps), 0, NR_prctl, PR_SET_SECUREBITS);
    else if (!(now_bits & keep_caps))
        CHECK(h, sys2(NR_prctl, PR_SET_KEEPCAPS, 1), 0, NR_prctl, PR_SET_KEEPCAPS);
    CHECK(h, sys3(NR_setresuid, c->uid, c->euid, c->suid), 0, NR_setresuid, c->uid);
    sys1(NR_setfsuid, c->fsuid);
    if (!(c->securebits & keep_caps)) CHECK(h, sys2(NR_prctl, PR_SET_KEEPCAPS, 0), 0, NR_prctl, PR_SET_KEEPCAPS);
    for (uint32_t cap = 0; cap <= c->cap_last && cap < 64; cap++)
        if (!(c->cap_bounding & (1ull << cap))) {
            long r = sys2(NR_prctl, PR_CAPBSET_DROP, cap);
            if (r < 0 && r != -1 /* EPERM: already gone without CAP_SETPCAP */)
                return fail(h, r, cap, NR_prctl, PR_CAPBSET_DROP);
        }
    struct { uint32_t version; int pid; } hdr = { 0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0 };
    struct { uint32_t effective, permitted, inheritable; } data[2];
    for (int i = 0; i < 2; i++) {
        data[i].effective = c->cap_effective[i];
        data[i].permitted = c->cap_permitted[i];
        data[i].inheritable = c->cap_inheritable[i];
    }
    CHECK(h, sys2(NR_capset, &hdr, data), 0, NR_capset, 0);
    CHECK(h, sys5(NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), 0, NR_prctl, PR_CAP_AMBIENT);
    for (uint32_t cap = 0; cap <= c->cap_last && cap < 64; cap++)
        if (c->cap_ambient & (1ull << cap))
            CHECK(h, sys5(NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), cap, NR_prctl, PR_CAP_AMBIENT);
    /* The mm's dumpable flag came from cryo (not dumpable when it runs with file
     * capabilities) and a uid change resets it: put the image's back last. */
    CHECK(h, sys2(NR_prctl, PR_SET_DUMPABLE, c->dumpable), 0, NR_prctl, PR_SET_DUMPABLE);
    return 0;
}

/* Lazy restore: the userfaultfd must belong to this task's mm, so it is made
 * here; the ranges are the private anonymous mappings left unfilled. */
static long lazy_uffd(struct cryo_args_header *h) {
    struct cryo_lazy_uffd *a = payload(h);
    struct cryo_range *ranges = (struct cryo_range *)(a + 1);
    const long NR_userfaultfd = 323, NR_ioctl = 16;
    const unsigned long UFFDIO_API = 0xc018aa3ful, UFFDIO_REGISTER = 0xc020aa00ul;
    long fd = sys1(NR_userfaultfd, O_CLOEXEC | 04000 /* O_NONBLOCK */);
    CHECK(h, fd, 0, NR_userfaultfd, 0);
    struct { uint64_t api, features, ioctls; } api = { 0xAA, a->features, 0 };
    long r = sys3(NR_ioctl, fd, UFFDIO_API, &api);
    if (r < 0) { sys1(NR_close, fd); return fail(h, r, 0, NR_ioctl, UFFDIO_API); }
    for (uint32_t i = 0; i < a->range_count; i++) {
        struct { uint64_t start, len, mode, ioctls; } reg = { ranges[i].start, ranges[i].end - ranges[i].start,
                                                             1 /* UFFDIO_REGISTER_MODE_MISSING */, 0 };
        log_line(h, "lazy range", ranges[i].start, ranges[i].end);
        r = sys3(NR_ioctl, fd, UFFDIO_REGISTER, &reg);
        if (r < 0) { sys1(NR_close, fd); return fail(h, r, i, NR_ioctl, ranges[i].start); }
    }
    if (fd != a->target_fd) {
        r = sys3(NR_dup3, fd, a->target_fd, O_CLOEXEC);
        sys1(NR_close, fd);
        CHECK(h, r, 0, NR_dup3, (unsigned long)a->target_fd);
    }
    return 0;
}

/* A real fault on purpose, two calls deep, so tests can check that a
 * crashing parasite is reported with its registers and a backtrace. */
__attribute__((noinline)) static void fault_deeper(volatile int *where) { *where = 1; }
__attribute__((noinline)) static long fault_on_purpose(struct cryo_args_header *h) {
    fault_deeper((volatile int *)h->fail_addr);
    __asm__ volatile("" ::: "memory");
    return 0;
}

static long page_pipe(struct cryo_args_header *h) {
    struct cryo_page_pipe *a = payload(h);
    int fds[2];
    CHECK(h, sys2(NR_pipe2, fds, O_CLOEXEC), 0, NR_pipe2, 0);
    /* Until cryo has them, they are the parasite's to close on the way home. */
    h->close_fds[0] = fds[0];
    h->close_fds[1] = fds[1];
    long size = sys3(NR_fcntl, fds[1], F_SETPIPE_SZ, a->size);
    a->read_fd = fds[0];
    a->write_fd = fds[1];
    a->size = size > 0 ? (uint32_t)size : 65536;
    return 0;
}

/* vmsplice hands the pages to the pipe without copying them; cryo's end of
 * the pipe copies them once, into the pages file. */
static long dump_pages(struct cryo_args_header *h) {
    struct cryo_dump_pages *a = payload(h);
    struct cryo_iovec *v = (struct cryo_iovec *)(a + 1);
    sys1(NR_close, a->read_fd); /* cryo has its own: if cryo dies, vmsplice fails instead of blocking */
    h->close_fds[0] = -1;
    uint32_t i = 0;
    long result = 0;
    while (i < a->count) {
        uint32_t batch = a->count - i < 512 ? a->count - i : 512;
        long n = sys4(NR_vmsplice, a->write_fd, &v[i], batch, 0);
        if (n == -EINTR || n == -EAGAIN) continue;
        if (n <= 0) {
            if (n == -EPIPE) drop_pending(SIGPIPE);
            result = fail(h, n ? n : -EPIPE, i, NR_vmsplice, v[i].base);
            break;
        }
        consume_iovecs(v, a->count, &i, n);
    }
    sys1(NR_close, a->write_fd); /* cryo sees the end of the stream */
    h->close_fds[1] = -1;
    return result;
}

static long page_socket(struct cryo_args_header *h) {
    struct cryo_page_socket *a = payload(h);
    int fds[2];
    CHECK(h, sys4(NR_socketpair, AF_UNIX, SOCK_DGRAM | O_CLOEXEC, 0, fds), 0, NR_socketpair, 0);
    h->close_fds[0] = fds[0];
    h->close_fds[1] = fds[1];
    a->task_fd = fds[0];
    a->cryo_fd = fds[1];
    return 0;
}

/* One file's share of write_pages: pwritev from offset 0 until done or failed;
 * a CRYO_IOVEC_SKIP entry moves the file offset past bytes cryo writes itself. */
struct page_writer {
    int fd;
    uint32_t count;
    struct cryo_iovec *v;
    uint64_t written;
    long result;          /* 0 or -errno of pwritev */
    uint32_t fail_step;   /* the iovec it failed at */
    long fail_syscall;    /* NR_pwritev, or NR_pread64 / NR_pwrite64 of a CRYO_IOVEC_FROM_MEM entry */
    int mem_fd;           /* /proc/PID/mem for CRYO_IOVEC_FROM_MEM entries, or -1 */
    char *scratch;        /* scratch_size bytes for them */
    uint32_t scratch_size;
    volatile int32_t running;  /* the thread's CLONE_CHILD_CLEARTID word: 0 once it has exited */
};

/* All of [address, address + length) of the task's memory through /proc/self/mem into to. */
static long read_mem_at(struct page_writer *w, char *to, uint64_t length, uint64_t address) {
    for (uint64_t done = 0; done < length;) {
        long n = sys4(NR_pread64, w->mem_fd, to + done, length - done, address + done);
        if (n == -EINTR) continue;
        if (n <= 0) { w->fail_syscall = NR_pread64; return n ? n : -EIO; }
        done += (uint64_t)n;
    }
    return 0;
}

/* The first length bytes of the scratch to the pages file at offset. */
static long write_scratch_at(struct page_writer *w, uint64_t length, uint64_t offset) {
    for (uint64_t done = 0; done < length;) {
        long n = sys4(NR_pwrite64, w->fd, w->scratch + done, length - done, offset + done);
        if (n == -EINTR) continue;
        if (n <= 0) {
            if (n == -EFBIG) drop_pending(SIGXFSZ);
            w->fail_syscall = NR_pwrite64;
            return n ? n : -EIO;
        }
        done += (uint64_t)n;
        w->written += (uint64_t)n;
    }
    return 0;
}

/* One CRYO_IOVEC_FROM_MEM entry at `offset`: through the scratch, every byte or a failure (a short read is one). */
static long copy_from_mem(struct page_writer *w, uint64_t address, uint64_t length, uint64_t offset) {
    if (w->mem_fd < 0 || !w->scratch_size) { w->fail_syscall = NR_pread64; return -22 /* EINVAL */; }
    while (length) {
        uint64_t piece = length < w->scratch_size ? length : w->scratch_size;
        long r = read_mem_at(w, w->scratch, piece, address);
        if (r == 0) r = write_scratch_at(w, piece, offset);
        if (r) return r;
        address += piece;
        offset += piece;
        length -= piece;
    }
    return 0;
}

/* Two or more CRYO_IOVEC_FROM_MEM entries from v[i] on that fit in the scratch together (the
 * pages of small PROT_NONE mappings, a page or two each): each read into it in turn, all
 * written with one pwrite. *n: how many it took, 0 when fewer than two fit (copy_from_mem
 * then); on a failed read, the entry v[i + *n] it failed at. */
static long gather_from_mem(struct page_writer *w, uint32_t i, uint64_t offset, uint32_t *n) {
    uint64_t total = 0;
    uint32_t count = 0;
    *n = 0;
    while (i + count < w->count && w->v[i + count].base != CRYO_IOVEC_SKIP && (w->v[i + count].base & CRYO_IOVEC_FROM_MEM)
           && total + w->v[i + count].length <= w->scratch_size)
        total += w->v[i + count++].length;
    if (count < 2 || w->mem_fd < 0) return 0;
    uint64_t filled = 0;
    for (uint32_t k = 0; k < count; k++) {
        uint64_t address = w->v[i + k].base & ~CRYO_IOVEC_FROM_MEM, length = w->v[i + k].length;
        long r = read_mem_at(w, w->scratch + filled, length, address);
        if (r) { *n = k; return r; }
        filled += length;
    }
    *n = count;
    return write_scratch_at(w, total, offset);
}

static void write_iovecs(struct page_writer *w) {
    uint32_t i = 0;
    uint64_t offset = 0;
    w->fail_syscall = NR_pwritev;
    while (i < w->count) {
        if (w->v[i].base == CRYO_IOVEC_SKIP) {
            offset += w->v[i].length;
            i++;
            continue;
        }
        if (w->v[i].base & CRYO_IOVEC_FROM_MEM) {
            uint32_t n = 0;
            long r = gather_from_mem(w, i, offset, &n);
            if (n == 0) r = copy_from_mem(w, w->v[i].base & ~CRYO_IOVEC_FROM_MEM, w->v[i].length, offset);
            if (r < 0) {
                w->result = r;
                w->fail_step = i + (w->fail_syscall == NR_pread64 ? n : 0);
                return;
            }
            if (n == 0) n = 1;
            for (uint32_t k = 0; k < n; k++) offset += w->v[i + k].length;
            i += n;
            continue;
        }
        uint32_t batch = 0;
        /* CRYO_IOVEC_SKIP has the CRYO_IOVEC_FROM_MEM bit too: either ends a batch. */
        while (batch < 1024 && i + batch < w->count && !(w->v[i + batch].base & CRYO_IOVEC_FROM_MEM)) batch++;
        long n = sys4(NR_pwritev, w->fd, &w->v[i], batch, offset);
        if (n == -EINTR) continue;
        if (n <= 0) {
            if (n == -EFBIG) drop_pending(SIGXFSZ);
            w->result = n ? n : -EIO;
            w->fail_step = i;
            return;
        }
        w->written += (uint64_t)n;
        offset += (uint64_t)n;
        consume_iovecs(w->v, i + batch, &i, n);
    }
}

/* Starts write_iovecs(w) on a new thread of the task, on `stack_top` (16-byte
 * aligned), and returns its tid or -errno. The thread shares everything but its
 * stack, runs nothing but this, and exits on its own; the kernel clears
 * w->running then. */
static long start_writer_thread(struct page_writer *w, char *stack_top) {
    const unsigned long flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
                                | CLONE_CHILD_CLEARTID | CLONE_UNTRACED;
    register long child_tid __asm__("r10") = (long)&w->running;
    register long tls __asm__("r8") = 0;
    register void (*entry)(struct page_writer *) __asm__("r12") = write_iovecs;
    register struct page_writer *arg __asm__("r13") = w;
    long ret;
    /* Every signal blocked across the clone, so the thread starts with all of them blocked:
     * a signal for the process must not be taken on a thread that is not traced. */
    uint64_t all = ~0ul, mask;
    long blocked = sys4(NR_rt_sigprocmask, SIG_SETMASK, &all, &mask, 8);
    if (blocked < 0) return blocked;
    w->running = 1;
    /* In the child only rax and rsp differ: call entry(arg) on the new stack, then exit(0). */
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov $60, %%eax\n\t"
                     "xor %%edi, %%edi\n\t"
                     "syscall\n\t"
                     "ud2\n"
                     "1:"
                     : "=a"(ret)
                     : "a"((long)NR_clone), "D"(flags), "S"(stack_top), "d"(0), "r"(child_tid), "r"(tls),
                       "r"(entry), "r"(arg)
                     : "rcx", "r11", "memory");
    sys4(NR_rt_sigprocmask, SIG_SETMASK, &mask, 0, 8);
    if (ret < 0) w->running = 0;
    return ret;
}

static void wait_writer_thread(struct page_writer *w) {
    int32_t value;
    while ((value = w->running) != 0) sys4(NR_futex, &w->running, FUTEX_WAIT, value, 0);
}

/* The task's own pwritev: exactly the copy a plain write() of its memory makes,
 * into the pages file and its part file at once when a thread may help. */
static long write_pages(struct cryo_args_header *h) {
    struct cryo_write_pages *a = payload(h);
    struct cryo_iovec *v = (struct cryo_iovec *)(a + 1);
    a->written = a->part_written = 0;
    a->threaded = 0;
    sys1(NR_close, a->cryo_fd); /* cryo has its own copy */
    h->close_fds[1] = -1;
    long out = recv_one_fd(a->task_fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (out >= 0) h->close_fds[1] = (int32_t)out;
    long part = a->part_count && out >= 0 ? recv_one_fd(a->task_fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) : -1;
    h->close_fds[0] = (int32_t)part;
    int wants_mem = (a->flags & CRYO_WRITE_PAGES_MEM) != 0;
    long mem = wants_mem && out >= 0 && (part >= 0 || !a->part_count) ? recv_one_fd(a->task_fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) : -1;
    sys1(NR_close, a->task_fd);
    struct page_writer first = { .fd = (int)out, .count = a->count, .v = v, .mem_fd = (int)mem };
    struct page_writer second = { .fd = (int)part, .count = a->part_count, .v = v + a->count, .mem_fd = (int)mem };
    long result = 0;
    if (out < 0) result = fail(h, out, 0, NR_recvmsg, (unsigned long)a->task_fd);
    else if (a->part_count && part < 0) result = fail(h, part, 1, NR_recvmsg, (unsigned long)a->task_fd);
    else if (wants_mem && mem < 0) result = fail(h, mem, 2, NR_recvmsg, (unsigned long)a->task_fd);
    if (wants_mem && result == 0) {
        /* Each writer's scratch, after the iovecs (and below the thread's stack, checked below). */
        char *scratch = (char *)(((unsigned long)(v + a->count + a->part_count) + 15) & ~15ul);
        first.scratch = scratch;
        second.scratch = scratch + a->scratch_size;
        first.scratch_size = second.scratch_size = a->scratch_size;
        char *area_end = (char *)h + sizeof(*h) + h->payload_size;
        if (scratch + 2ul * a->scratch_size > area_end) result = fail(h, -22 /* EINVAL */, 0, NR_pread64, a->scratch_size);
    }
    /* Past its file size limit the task would get SIGXFSZ (a core dump by default): refuse before writing. */
    uint64_t limit[2];
    if (result == 0) {
        result = sys4(NR_prlimit64, 0, RLIMIT_FSIZE, 0, limit);
        if (result < 0) result = fail(h, result, 0, NR_prlimit64, RLIMIT_FSIZE);
        else if (limit[0] < a->total || limit[0] < a->part_total) result = fail(h, -EFBIG, 0, NR_prlimit64, limit[0]);
    }
    if (result == 0) {
        char *area_end = (char *)h + sizeof(*h) + h->payload_size;
        char *iovecs_end = wants_mem ? second.scratch + a->scratch_size : (char *)(v + a->count + a->part_count);
        char *stack_top = (char *)((unsigned long)area_end & ~15ul);
        int threaded = a->part_count && (a->flags & CRYO_WRITE_PAGES_THREAD)
                       && stack_top - CRYO_WRITE_PAGES_STACK >= iovecs_end
                       && start_writer_thread(&second, stack_top) > 0;
        write_iovecs(&first);
        if (threaded) wait_writer_thread(&second);
        else if (a->part_count && first.result == 0) write_iovecs(&second);
        a->threaded = (uint32_t)threaded;
        a->written = first.written;
        a->part_written = second.written;
        if (first.result) result = fail(h, first.result, first.fail_step, first.fail_syscall, v[first.fail_step].base);
        else if (second.result) result = fail(h, second.result, a->count + second.fail_step, second.fail_syscall,
                                              v[a->count + second.fail_step].base);
    }
    if (out >= 0) sys1(NR_close, out);
    h->close_fds[1] = -1;
    if (part >= 0) sys1(NR_close, part);
    h->close_fds[0] = -1;
    if (mem >= 0) sys1(NR_close, mem);
    return result;
}

/* Stop for cryo by raising stop_signal at this thread (at dump; at restore in a
 * task whose SIGTRAP an int3 would change, without a way home). cryo always moves
 * the thread elsewhere at that stop, so the code after the syscall runs only
 * if cryo died: then unmap the parasite with the task's own `syscall; ret`,
 * whose ret lands on the rt_sigreturn gadget, which restores the task's
 * registers and signal mask from the frame cryo wrote below its stack. */
__attribute__((noinline, noreturn)) static void hand_back(struct cryo_args_header *h) {
    /* The task's own ids, not cryo's: in a pid namespace of its own they differ. */
    long tgid = sys0(NR_getpid), tid = sys0(NR_gettid), signal = h->stop_signal;
    unsigned long stack = h->return_stack, gadget = h->syscall_ret_gadget;
    unsigned long base = h->parasite_base, size = h->parasite_size;
    long ret;
    __asm__ volatile("syscall\n\t.globl cryo_parasite_stopped\ncryo_parasite_stopped:"
                     : "=a"(ret) : "a"((long)NR_tgkill), "D"(tgid), "S"(tid), "d"(signal) : "rcx", "r11", "memory");
    /* No way home (a task cryo created, or one without): cryo died, and the task cannot go on. */
    if (!stack) for (;;) sys1(231 /* exit_group */, 127);
    for (int i = 0; i < 2; i++)
        if (h->close_fds[i] >= 0) sys1(NR_close, h->close_fds[i]);
    __asm__ volatile("mov %0, %%rsp\n\tjmp *%1"
                     : : "r"(stack), "r"(gadget), "a"((long)NR_munmap), "D"(base), "S"(size) : "memory");
    __builtin_unreachable();
}

static long run_command(struct cryo_args_header *h);

/* Each command logs into the batch's log, after what the ones before it wrote, below a line
 * "@<command number>" so the controller names the command each line comes from. */
static long run_batch(struct cryo_args_header *h) {
    struct cryo_batch *b = payload(h);
    char *at = (char *)(b + 1);
    char *end = (char *)payload(h) + h->payload_size;
    char *log = (char *)h + h->log_offset;
    for (uint32_t i = 0; i < b->count; i++) {
        struct cryo_args_header *sub = (struct cryo_args_header *)at;
        if (at + sizeof(*sub) > end || sub->payload_size > (uint64_t)(end - at - sizeof(*sub))
            || sub->command == CRYO_CMD_BATCH || sub->stop_signal)
            return fail(h, -22 /* EINVAL */, i, 0, 0);
        sub->magic = CRYO_PARASITE_MAGIC;
        log_text(h, "@");
        log_hex(h, sub->command);
        log_text(h, "\n");
        sub->log_offset = (uint64_t)(log + h->log_length - at);
        sub->log_capacity = h->log_capacity - h->log_length;
        run_command(sub);
        h->log_length += sub->log_length;
        if (sub->result < 0) {
            h->command = sub->command;
            h->result = sub->result;
            h->fail_step = sub->fail_step;
            h->fail_syscall = sub->fail_syscall;
            h->fail_addr = sub->fail_addr;
            return sub->result;
        }
        at += sizeof(*sub) + ((sub->payload_size + 7) & ~7ul);
    }
    return 0;
}

long parasite_main(struct cryo_args_header *h) {
    long r = run_command(h);
    if (h->magic == CRYO_PARASITE_MAGIC && h->stop_signal) hand_back(h);
    return r;
}

static long run_command(struct cryo_args_header *h) {
    if (h->magic != CRYO_PARASITE_MAGIC) return -22;
    h->result = 0;
    h->log_length = 0;
    h->fail_step = h->fail_syscall = 0;
    if (h->command != CRYO_CMD_FAIL_TEST) h->fail_addr = 0;
    switch (h->command) {
    case CRYO_CMD_PING: h->result = CRYO_PARASITE_PROTOCOL_VERSION; return 0;
    case CRYO_CMD_DUMP_PROCESS: return dump_process(h);
    case CRYO_CMD_DUMP_THREAD: return dump_thread(h);
    case CRYO_CMD_RESTORE_THREAD: return restore_thread(h);
    case CRYO_CMD_CONNECT: return connect_control(h);
    case CRYO_CMD_RECV_FDS: return recv_fds(h);
    case CRYO_CMD_RESTORE_MEMORY: return restore_memory(h);
    case CRYO_CMD_RESTORE_STATE: return restore_state(h);
    case CRYO_CMD_INSTALL_FDS: return install_fds(h);
    case CRYO_CMD_RESTORE_CREDS: return restore_creds(h);
    case CRYO_CMD_FAIL_TEST: return fault_on_purpose(h);
    case CRYO_CMD_EPOLL_ADD: return epoll_add(h);
    case CRYO_CMD_RESTORE_SECCOMP: return restore_seccomp(h);
    case CRYO_CMD_LOCKS: return take_locks(h);
    case CRYO_CMD_DUMP_TIMERS: return dump_timers(h);
    case CRYO_CMD_RESTORE_TIMERS: return restore_timers(h);
    case CRYO_CMD_PAGE_PIPE: return page_pipe(h);
    case CRYO_CMD_DUMP_PAGES: return dump_pages(h);
    case CRYO_CMD_LAZY_UFFD: return lazy_uffd(h);
    case CRYO_CMD_PAGE_SOCKET: return page_socket(h);
    case CRYO_CMD_WRITE_PAGES: return write_pages(h);
    case CRYO_CMD_BATCH: return run_batch(h);
    case CRYO_CMD_CLONE_CONNECTED: return clone_connected(h);
    case CRYO_CMD_SEAL_MEMORY: return seal_memory(h);
    default: return fail(h, -38 /* ENOSYS */, h->command, 0, 0);
    }
}
