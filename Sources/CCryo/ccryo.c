#define _GNU_SOURCE
#include "ccryo.h"
#include "ccryo_kinds.h"
#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/udp.h>
#include <sys/prctl.h>
#include <linux/sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <malloc.h>

/* The numbers ccryo.h spells out for Swift, checked against the system's own. */
_Static_assert(CRYO_UFFDIO_API == UFFDIO_API && CRYO_UFFDIO_REGISTER == UFFDIO_REGISTER && CRYO_UFFDIO_WAKE == UFFDIO_WAKE
               && CRYO_UFFDIO_COPY == UFFDIO_COPY && CRYO_UFFDIO_ZEROPAGE == UFFDIO_ZEROPAGE
               && CRYO_UFFDIO_WRITEPROTECT == UFFDIO_WRITEPROTECT && CRYO_UFFD_USER_MODE_ONLY == UFFD_USER_MODE_ONLY
               && CRYO_NR_USERFAULTFD == SYS_userfaultfd, "userfaultfd numbers");
_Static_assert(CRYO_PAGEMAP_SCAN == _IOWR('f', 16, cryo_pm_scan_arg), "PAGEMAP_SCAN");
_Static_assert(CRYO_F_SETPIPE_SZ == F_SETPIPE_SZ && CRYO_F_GETPIPE_SZ == F_GETPIPE_SZ && CRYO_SPLICE_F_NONBLOCK == SPLICE_F_NONBLOCK
               && CRYO_SPLICE_F_MOVE == SPLICE_F_MOVE && CRYO_O_TMPFILE == O_TMPFILE && CRYO_SO_PEERCRED == SO_PEERCRED,
               "GNU numbers");
_Static_assert(CRYO_UFFD_EVENT_PAGEFAULT == UFFD_EVENT_PAGEFAULT && CRYO_UFFD_EVENT_FORK == UFFD_EVENT_FORK
               && CRYO_UFFD_EVENT_REMAP == UFFD_EVENT_REMAP && CRYO_UFFD_EVENT_REMOVE == UFFD_EVENT_REMOVE
               && CRYO_UFFD_EVENT_UNMAP == UFFD_EVENT_UNMAP, "userfaultfd events");

long cryo_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) {
    long r;
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    __asm__ volatile("syscall" : "=a"(r) : "a"(number), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return r;
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

static inline long raw_syscall4(long nr, long a, long b, long c, long d) {
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return r;
}

long cryo_clone3_parked_ending(int park_fd, int status) {
    long r = clone_and_park(0, 0, park_fd, SIGCHLD);
    if (r != 0) return r;
    int sig = status & 0x7f;
    if (sig != 0) {
        /* A core dump would write a file somewhere and set the core bit the status does not have. */
        raw_syscall3(SYS_prctl, PR_SET_DUMPABLE, 0, 0);
        struct { unsigned long handler, flags, restorer, mask; } deflt = { 0, 0, 0, 0 };  /* SIG_DFL */
        raw_syscall4(SYS_rt_sigaction, sig, (long)&deflt, 0, 8);
        unsigned long unblock = 1UL << (sig - 1);
        raw_syscall4(SYS_rt_sigprocmask, SIG_UNBLOCK, (long)&unblock, 0, 8);
        raw_syscall3(SYS_kill, raw_syscall3(SYS_getpid, 0, 0, 0), sig, 0);
    }
    raw_syscall3(SYS_exit_group, (status >> 8) & 0xff, 0, 0);
    __builtin_unreachable();
}

int cryo_malloc_trim(void) { return malloc_trim(0); }

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
_Static_assert(CRYO_SO_DONTROUTE == SO_DONTROUTE && CRYO_SO_OOBINLINE == SO_OOBINLINE && CRYO_SO_PRIORITY == SO_PRIORITY
               && CRYO_SO_LINGER == SO_LINGER && CRYO_SO_RCVLOWAT == SO_RCVLOWAT && CRYO_SO_RCVTIMEO_OLD == SO_RCVTIMEO
               && CRYO_SO_SNDTIMEO_OLD == SO_SNDTIMEO && CRYO_SO_BINDTODEVICE == SO_BINDTODEVICE
               && CRYO_SO_ATTACH_FILTER == SO_ATTACH_FILTER && CRYO_SO_ATTACH_FILTER == SO_GET_FILTER
               && CRYO_SO_LOCK_FILTER == SO_LOCK_FILTER && CRYO_IP_TOS == IP_TOS && CRYO_IP_FREEBIND == IP_FREEBIND
               && CRYO_IP_TRANSPARENT == IP_TRANSPARENT && CRYO_IP_MULTICAST_TTL == IP_MULTICAST_TTL
               && CRYO_IP_MULTICAST_LOOP == IP_MULTICAST_LOOP && CRYO_MCAST_JOIN_GROUP == MCAST_JOIN_GROUP
               && CRYO_MCAST_MSFILTER == MCAST_MSFILTER && CRYO_IPV6_MULTICAST_HOPS == IPV6_MULTICAST_HOPS
               && CRYO_IPV6_MULTICAST_LOOP == IPV6_MULTICAST_LOOP && CRYO_IPV6_TCLASS == IPV6_TCLASS
               && CRYO_IPV6_TRANSPARENT == IPV6_TRANSPARENT && CRYO_TCP_CORK == TCP_CORK && CRYO_TCP_KEEPIDLE == TCP_KEEPIDLE
               && CRYO_TCP_KEEPINTVL == TCP_KEEPINTVL && CRYO_TCP_KEEPCNT == TCP_KEEPCNT
               && CRYO_TCP_CONGESTION == TCP_CONGESTION && CRYO_TCP_USER_TIMEOUT == TCP_USER_TIMEOUT
               && CRYO_UDP_CORK == UDP_CORK && CRYO_SO_BUF_LOCK == SO_BUF_LOCK && CRYO_SOL_NETLINK == SOL_NETLINK
               && CRYO_NETLINK_ADD_MEMBERSHIP == NETLINK_ADD_MEMBERSHIP && CRYO_NETLINK_PKTINFO == NETLINK_PKTINFO
               && CRYO_NETLINK_BROADCAST_ERROR == NETLINK_BROADCAST_ERROR && CRYO_NETLINK_NO_ENOBUFS == NETLINK_NO_ENOBUFS
               && CRYO_NETLINK_LISTEN_ALL_NSID == NETLINK_LISTEN_ALL_NSID && CRYO_NETLINK_LIST_MEMBERSHIPS == NETLINK_LIST_MEMBERSHIPS
               && CRYO_NETLINK_CAP_ACK == NETLINK_CAP_ACK && CRYO_NETLINK_EXT_ACK == NETLINK_EXT_ACK
               && CRYO_NETLINK_GET_STRICT_CHK == NETLINK_GET_STRICT_CHK && CRYO_SOL_PACKET == SOL_PACKET,
               "more socket option numbers");

/* A status word of a packet socket's ring, which the kernel writes too: put back only if still ours. */
int cryo_compare_exchange_u32(void *address, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n((uint32_t *)address, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

int cryo_compare_exchange_u64(void *address, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n((uint64_t *)address, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

int cryo_keep_freed_memory(int mmap_threshold, int trim_threshold) {
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 ? 0 : -1;
}
