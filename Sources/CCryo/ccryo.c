#define _GNU_SOURCE
#include "ccryo.h"
#include "ccryo_kinds.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <sys/auxv.h>
#include <elf.h>
#include <linux/sched.h>
#include <sys/sysmacros.h>
#include <linux/userfaultfd.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <poll.h>

#define RAW(expr) ({ long _r = (long)(expr); _r < 0 ? -(long)errno : _r; })

long cryo_ptrace(long request, pid_t pid, uint64_t addr, uint64_t data) {
    errno = 0;
    long r = ptrace((enum __ptrace_request)request, pid, (void *)addr, (void *)data);
    if (r == -1 && errno) return -errno;
    return r;
}
long cryo_ptrace_seize(pid_t pid, unsigned long options) { return cryo_ptrace(PTRACE_SEIZE, pid, 0, options); }
long cryo_ptrace_interrupt(pid_t pid) { return cryo_ptrace(PTRACE_INTERRUPT, pid, 0, 0); }
long cryo_ptrace_cont(pid_t pid, int signal) { return cryo_ptrace(PTRACE_CONT, pid, 0, (uint64_t)signal); }
long cryo_ptrace_syscall(pid_t pid, int signal) { return cryo_ptrace(PTRACE_SYSCALL, pid, 0, (uint64_t)signal); }
long cryo_ptrace_detach(pid_t pid, int signal) { return cryo_ptrace(PTRACE_DETACH, pid, 0, (uint64_t)signal); }
long cryo_ptrace_getregs(pid_t pid, cryo_regs *regs) { return cryo_ptrace(PTRACE_GETREGS, pid, 0, (uint64_t)regs); }
long cryo_ptrace_setregs(pid_t pid, const cryo_regs *regs) { return cryo_ptrace(PTRACE_SETREGS, pid, 0, (uint64_t)regs); }

long cryo_ptrace_getregset(pid_t pid, int note, void *buffer, size_t length) {
    struct iovec iov = { buffer, length };
    long r = cryo_ptrace(PTRACE_GETREGSET, pid, (uint64_t)note, (uint64_t)&iov);
    return r < 0 ? r : (long)iov.iov_len;
}
long cryo_ptrace_setregset(pid_t pid, int note, const void *buffer, size_t length) {
    struct iovec iov = { (void *)buffer, length };
    return cryo_ptrace(PTRACE_SETREGSET, pid, (uint64_t)note, (uint64_t)&iov);
}
long cryo_ptrace_getsigmask(pid_t pid, uint64_t *mask) { return cryo_ptrace(PTRACE_GETSIGMASK, pid, 8, (uint64_t)mask); }
long cryo_ptrace_setsigmask(pid_t pid, uint64_t mask) { return cryo_ptrace(PTRACE_SETSIGMASK, pid, 8, (uint64_t)&mask); }
long cryo_ptrace_peeksiginfo(pid_t pid, int shared, uint64_t offset, void *buffer, int max) {
    struct __ptrace_peeksiginfo_args args = { .off = offset, .flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0, .nr = max };
    return cryo_ptrace(PTRACE_PEEKSIGINFO, pid, (uint64_t)&args, (uint64_t)buffer);
}
long cryo_ptrace_peekdata(pid_t pid, uint64_t address, uint64_t *word) {
    errno = 0;
    long r = ptrace(PTRACE_PEEKDATA, pid, (void *)address, 0);
    if (r == -1 && errno) return -errno;
    *word = (uint64_t)r;
    return 0;
}
long cryo_ptrace_pokedata(pid_t pid, uint64_t address, uint64_t word) {
    return cryo_ptrace(PTRACE_POKEDATA, pid, address, word);
}
#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
long cryo_ptrace_get_rseq(pid_t pid, cryo_rseq_config *config) {
    memset(config, 0, sizeof(*config));
    long r = cryo_ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, sizeof(*config), (uint64_t)config);
    return r < 0 ? r : 0;
}

int cryo_note_prstatus(void) { return NT_PRSTATUS; }
int cryo_note_prfpreg(void) { return NT_PRFPREG; }
int cryo_note_x86_xstate(void) { return NT_X86_XSTATE; }

long cryo_waitpid(pid_t pid, int options, cryo_wait_status *s) {
    int status = 0;
    pid_t r;
    do { r = waitpid(pid, &status, options); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    memset(s, 0, sizeof(*s));
    if (r == 0) return 0;
    if (WIFEXITED(status)) { s->exited = 1; s->exit_code = WEXITSTATUS(status); }
    if (WIFSIGNALED(status)) { s->signaled = 1; s->term_signal = WTERMSIG(status); }
    if (WIFSTOPPED(status)) { s->stopped = 1; s->stop_signal = WSTOPSIG(status); s->event = (status >> 16) & 0xff; }
    return r;
}
int cryo_wall(void) { return __WALL; }

long cryo_process_vm_readv(pid_t pid, void *local, size_t length, uint64_t remote) {
    struct iovec l = { local, length }, r = { (void *)remote, length };
    return RAW(process_vm_readv(pid, &l, 1, &r, 1, 0));
}
long cryo_process_vm_writev(pid_t pid, const void *local, size_t length, uint64_t remote) {
    struct iovec l = { (void *)local, length }, r = { (void *)remote, length };
    return RAW(process_vm_writev(pid, &l, 1, &r, 1, 0));
}
long cryo_process_vm_readv_vec(pid_t pid, void *local, size_t length,
                               const uint64_t *bases, const uint64_t *lengths, size_t count) {
    struct iovec l = { local, length };
    struct iovec r[1024];
    if (count > 1024) return -EINVAL;
    for (size_t i = 0; i < count; i++) { r[i].iov_base = (void *)bases[i]; r[i].iov_len = lengths[i]; }
    return RAW(process_vm_readv(pid, &l, 1, r, count, 0));
}

long cryo_pidfd_open(pid_t pid) { return RAW(syscall(SYS_pidfd_open, pid, 0)); }
long cryo_process_mrelease(int pidfd) { return RAW(syscall(448 /* SYS_process_mrelease */, pidfd, 0)); }
long cryo_pidfd_getfd(int pidfd, int targetfd) { return RAW(syscall(SYS_pidfd_getfd, pidfd, targetfd, 0)); }
long cryo_kcmp_file(pid_t p1, pid_t p2, int fd1, int fd2) { return RAW(syscall(SYS_kcmp, p1, p2, 0 /* KCMP_FILE */, fd1, fd2)); }
long cryo_tee(int fd_in, int fd_out, size_t length, unsigned flags) { return RAW(tee(fd_in, fd_out, length, flags)); }
long cryo_close_range(unsigned first, unsigned last) { return RAW(syscall(SYS_close_range, first, last, 0)); }

long cryo_send_fd(int sock, int fd) {
    char byte = 'F';
    struct iovec iov = { &byte, 1 };
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    long r;
    do { r = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

static inline long raw_syscall3(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

/* clone3 with one set_tid entry; in the child, arms the parent-death signal
 * and parks in a raw read() on park_fd until it returns (EOF, or not EINTR).
 * Returns the child's pid in the parent and 0 in the child, or -errno. The
 * child is a copy of the controller with one thread: raw syscalls only, no
 * libc, no Swift. */
__attribute__((always_inline)) static inline long clone_and_park(pid_t tid, uint64_t flags, int park_fd, int exit_signal) {
    pid_t set_tid[1] = { tid };
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    args.exit_signal = (uint64_t)exit_signal;
    if (tid > 0) { args.set_tid = (uint64_t)(uintptr_t)set_tid; args.set_tid_size = 1; }
    long parent = raw_syscall3(SYS_getpid, 0, 0, 0);
    long r = raw_syscall3(SYS_clone3, (long)&args, sizeof(args), 0);
    if (r != 0) return r;
    raw_syscall3(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0);
    /* cryo may have died before the death signal was armed: then nobody takes this task over. */
    if (!(flags & CLONE_NEWPID) && raw_syscall3(SYS_getppid, 0, 0, 0) != parent) raw_syscall3(SYS_exit_group, 1, 0, 0);
    char byte;
    for (;;) {
        long n = raw_syscall3(SYS_read, park_fd, (long)&byte, 1);
        if (n != -EINTR) break;
    }
    return 0;
}

long cryo_clone3_parked(pid_t tid, uint64_t flags, int park_fd, int exit_signal) {
    long r = clone_and_park(tid, flags, park_fd, exit_signal);
    if (r != 0) return r;
    /* Reached only if the park ends without cryo taking the task over: it dies with the controller. */
    raw_syscall3(SYS_exit_group, 1, 0, 0);
    __builtin_unreachable();
}

long cryo_pagemap_scan(int fd, cryo_pm_scan_arg *arg) {
    arg->size = sizeof(*arg);
    return RAW(ioctl(fd, _IOWR('f', 16, cryo_pm_scan_arg), arg));
}

long cryo_prlimit(pid_t pid, int resource, const uint64_t *new_limit, uint64_t *old_limit) {
    return RAW(syscall(SYS_prlimit64, pid, resource, new_limit, old_limit));
}
long cryo_capbset_read(int cap) { return RAW(prctl(PR_CAPBSET_READ, cap, 0, 0, 0)); }
int cryo_secure_exec(void) { return getauxval(AT_SECURE) != 0; }
long cryo_get_securebits(void) { return RAW(prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)); }
long cryo_getpid_raw(void) { return syscall(SYS_getpid); }
long cryo_set_pdeathsig(int signal) { return RAW(prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0)); }
int cryo_errno(void) { return errno; }

long cryo_pipe2(int fds[2], int flags) { return RAW(pipe2(fds, flags)); }
uint64_t cryo_makedev(unsigned major, unsigned minor) { return makedev(major, minor); }
long cryo_open_tmpfile(const char *folder, int flags, unsigned mode) { return RAW(open(folder, O_TMPFILE | flags, mode)); }
long cryo_accept_cloexec(int socket) { return RAW(accept4(socket, NULL, NULL, SOCK_CLOEXEC)); }

long cryo_probe_uffd_wp_async(void) {
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) return -errno;
    /* Asking for API with no features reports every feature the kernel has. */
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    long r = ioctl((int)fd, UFFDIO_API, &api);
    close((int)fd);
    if (r < 0) return -errno;
    const uint64_t wp_async = 1ull << 15;
    return (api.features & wp_async) && (api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) ? 1 : 0;
}
long cryo_uffd_api(int fd, uint64_t features) {
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) return -errno;
    return (api.features & features) == features ? 0 : -EOPNOTSUPP;
}
long cryo_uffd_register_wp(int fd, uint64_t start, uint64_t length) {
    struct uffdio_register r = { .range = { start, length }, .mode = UFFDIO_REGISTER_MODE_WP };
    return RAW(ioctl(fd, UFFDIO_REGISTER, &r));
}
long cryo_uffd_writeprotect(int fd, uint64_t start, uint64_t length) {
    struct uffdio_writeprotect w = { .range = { start, length }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
    return RAW(ioctl(fd, UFFDIO_WRITEPROTECT, &w));
}
long cryo_copy_file_range(int in_fd, int64_t in_offset, int out_fd, int64_t out_offset, uint64_t length) {
    loff_t in = in_offset, out = out_offset;
    return RAW(copy_file_range(in_fd, &in, out_fd, &out, length, 0));
}
long cryo_peer_uid(int sock) {
    struct ucred c;
    socklen_t n = sizeof(c);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &c, &n) < 0) return -errno;
    return c.uid;
}

uint64_t cryo_uffd_lazy_features(void) {
    return UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
}

long cryo_uffd_probe(uint64_t features, int *failed_call) {
    *failed_call = 0;
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    *failed_call = 1;
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    long r = ioctl((int)fd, UFFDIO_API, &api);
    int saved = errno;
    close((int)fd);
    return r < 0 ? -saved : 0;
}

long cryo_uffd_read(int fd, cryo_uffd_event *events, int max) {
    struct uffd_msg msgs[64];
    if (max > 64) max = 64;
    ssize_t n = read(fd, msgs, sizeof(msgs[0]) * (size_t)max);
    if (n < 0) return errno == EAGAIN ? 0 : -errno;
    long count = n / (ssize_t)sizeof(msgs[0]);
    for (long i = 0; i < count; i++) {
        struct uffd_msg *m = &msgs[i];
        cryo_uffd_event *e = &events[i];
        memset(e, 0, sizeof(*e));
        e->event = m->event;
        switch (m->event) {
        case UFFD_EVENT_PAGEFAULT: e->address = m->arg.pagefault.address; e->flags = m->arg.pagefault.flags; break;
        case UFFD_EVENT_FORK: e->ufd = m->arg.fork.ufd; break;
        case UFFD_EVENT_REMAP: e->address = m->arg.remap.from; e->to = m->arg.remap.to; e->length = m->arg.remap.len; break;
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP: e->address = m->arg.remove.start; e->length = m->arg.remove.end - m->arg.remove.start; break;
        }
    }
    return count;
}

long cryo_uffd_copy(int fd, uint64_t address, const void *source, uint64_t length, int64_t *done) {
    struct uffdio_copy c = { .dst = address, .src = (uint64_t)(uintptr_t)source, .len = length, .mode = 0, .copy = 0 };
    long r = ioctl(fd, UFFDIO_COPY, &c);
    *done = c.copy > 0 ? c.copy : 0;
    return r < 0 ? -errno : 0;
}

long cryo_uffd_zeropage(int fd, uint64_t address, uint64_t length, int64_t *done) {
    struct uffdio_zeropage z = { .range = { .start = address, .len = length }, .mode = 0, .zeropage = 0 };
    long r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
    *done = z.zeropage > 0 ? z.zeropage : 0;
    return r < 0 ? -errno : 0;
}

long cryo_uffd_wake(int fd, uint64_t address, uint64_t length) {
    struct uffdio_range range = { .start = address, .len = length };
    return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? -errno : 0;
}
long cryo_kcmp(pid_t p1, pid_t p2, int type) { return RAW(syscall(SYS_kcmp, p1, p2, type, 0, 0)); }
long cryo_setns(int fd, int nstype) { return RAW(syscall(SYS_setns, fd, nstype)); }

static inline long raw_syscall4(long nr, long a, long b, long c, long d) {
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return r;
}

long cryo_clone3_namespace_init(int park_fd, pid_t root_pid) {
    long r = clone_and_park(1, CLONE_NEWPID, park_fd, SIGCHLD);
    if (r != 0) return r;
    raw_syscall3(SYS_close, park_fd, 0, 0);
    int status = 0, root_status = 0;
    for (;;) {
        long w = raw_syscall4(SYS_wait4, -1, (long)&status, __WALL, 0);
        if (w == -EINTR) continue;
        if (w < 0) break;
        if (w == root_pid) root_status = status;
    }
    int code = (root_status & 0x7f) ? 128 + (root_status & 0x7f) : (root_status >> 8) & 0xff;
    raw_syscall3(SYS_exit_group, code, 0, 0);
    __builtin_unreachable();
}

/* Constants ccryo_kinds.h spells out because Swift sees no GNU declarations. */
_Static_assert(CRYO_MFD_CLOEXEC == MFD_CLOEXEC && CRYO_MFD_ALLOW_SEALING == MFD_ALLOW_SEALING && CRYO_O_PATH == O_PATH
               && CRYO_F_ADD_SEALS == F_ADD_SEALS && CRYO_F_GET_SEALS == F_GET_SEALS, "GNU constants");

_Static_assert(CRYO_SOL_SOCKET == SOL_SOCKET && CRYO_SO_SNDBUF == SO_SNDBUF && CRYO_SO_RCVBUF == SO_RCVBUF
               && CRYO_SO_SNDBUFFORCE == SO_SNDBUFFORCE && CRYO_SO_RCVBUFFORCE == SO_RCVBUFFORCE
               && CRYO_SO_PEEK_OFF == SO_PEEK_OFF && CRYO_SO_REUSEADDR == SO_REUSEADDR && CRYO_SO_BROADCAST == SO_BROADCAST
               && CRYO_SO_KEEPALIVE == SO_KEEPALIVE && CRYO_SO_REUSEPORT == SO_REUSEPORT && CRYO_IP_TTL == IP_TTL
               && CRYO_IPV6_UNICAST_HOPS == IPV6_UNICAST_HOPS && CRYO_IPV6_V6ONLY == IPV6_V6ONLY
               && CRYO_TCP_NODELAY == TCP_NODELAY && CRYO_TCP_MAXSEG == TCP_MAXSEG && CRYO_TCP_REPAIR == TCP_REPAIR
               && CRYO_TCP_REPAIR_QUEUE == TCP_REPAIR_QUEUE && CRYO_TCP_QUEUE_SEQ == TCP_QUEUE_SEQ
               && CRYO_TCP_TIMESTAMP == TCP_TIMESTAMP && CRYO_TCP_RECV_QUEUE == TCP_RECV_QUEUE
               && CRYO_TCP_SEND_QUEUE == TCP_SEND_QUEUE, "socket option numbers");

long cryo_memmem(const void *haystack, size_t length, const void *needle, size_t needle_length) {
    const void *hit = memmem(haystack, length, needle, needle_length);
    return hit ? (long)((const char *)hit - (const char *)haystack) : -1;
}

long cryo_splice_to_file(int pipe_fd, int file_fd, int64_t *offset, size_t length) {
    loff_t off = *offset;
    long n = RAW(splice(pipe_fd, NULL, file_fd, &off, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
    if (n > 0) *offset = off;
    return n;
}

long cryo_poll_in(int fd, int timeout_ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return RAW(poll(&p, 1, timeout_ms));
}
