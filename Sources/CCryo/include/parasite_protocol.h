/*
 * The one definition of cryo's own parasite commands and payloads, included by
 * the freestanding parasite (Parasite/) and imported by Swift through CCryo.
 * How a command travels (header, entry, stop) is injector_protocol.h's.
 *
 * The parasite executes a command and stops. At restore it stops on int3,
 * or, in a task whose SIGTRAP is ignored or pending (an int3 would change
 * it), by raising stop_signal without a way home (return_stack 0). At dump,
 * where cryo may be killed at any moment, it raises
 * stop_signal at itself instead: a signal whose action is to be ignored, so it
 * stops the task only while cryo traces it. When cryo is gone the parasite goes
 * on, unmaps itself and returns to the task's own code through a signal frame
 * cryo left on the task's stack. Every structure has fixed-width fields only,
 * so both sides agree on its layout.
 */
#ifndef CRYO_PARASITE_PROTOCOL_H
#define CRYO_PARASITE_PROTOCOL_H

#include <stdint.h>

#include "injector_protocol.h"

/* cryo's own blob (Parasite/): its protocol version, answered to PING. */
#define CRYO_PARASITE_PROTOCOL_VERSION 16u

enum cryo_command {
    CRYO_CMD_PING = CRYO_INJECTOR_CMD_PING, /* answers with the protocol version */
    CRYO_CMD_DUMP_PROCESS = 2, /* out: struct cryo_task_state */
    CRYO_CMD_CONNECT = 3,      /* in: struct cryo_connect */
    CRYO_CMD_RECV_FDS = 4,     /* in: struct cryo_recv_fds */
    CRYO_CMD_RESTORE_MEMORY = 5, /* in: struct cryo_restore_memory + arrays */
    CRYO_CMD_RESTORE_STATE = 6,  /* in: struct cryo_task_state + struct cryo_restore_extra [+ struct cryo_thread_state] */
    CRYO_CMD_INSTALL_FDS = 7,  /* in: struct cryo_install_fds + entries */
    CRYO_CMD_RESTORE_CREDS = 8, /* in: struct cryo_creds + groups + room for as many */
    CRYO_CMD_FAIL_TEST = 9,    /* faults on purpose, writing to fail_addr (error-path tests) */
    CRYO_CMD_DUMP_THREAD = 10, /* out: struct cryo_thread_state (no signals) */
    CRYO_CMD_RESTORE_THREAD = 11, /* in: struct cryo_thread_state */
    CRYO_CMD_EPOLL_ADD = 12,   /* in: struct cryo_epoll_add + targets */
    CRYO_CMD_RESTORE_SECCOMP = 13, /* in: struct cryo_seccomp + filters */
    CRYO_CMD_LOCKS = 14,       /* in: struct cryo_locks + entries */
    CRYO_CMD_DUMP_TIMERS = 15, /* in/out: struct cryo_timers + entries (ids in, times out) */
    CRYO_CMD_RESTORE_TIMERS = 16, /* in: struct cryo_timers + entries */
    CRYO_CMD_PAGE_PIPE = 17,   /* out: struct cryo_page_pipe */
    CRYO_CMD_DUMP_PAGES = 18,  /* in: struct cryo_dump_pages + struct cryo_iovec[count] */

    CRYO_CMD_LAZY_UFFD = 19,   /* in: struct cryo_lazy_uffd + ranges (--lazy-pages) */
    CRYO_CMD_PAGE_SOCKET = 20, /* out: struct cryo_page_socket */
    CRYO_CMD_WRITE_PAGES = 21, /* in: struct cryo_write_pages + struct cryo_iovec[count]; out: struct cryo_write_pages */
    CRYO_CMD_BATCH = 22,       /* in: struct cryo_batch + commands, each a header and its payload (restore only) */
    CRYO_CMD_CLONE_CONNECTED = 23, /* in/out: struct cryo_clone_connected */
    CRYO_CMD_SEAL_MEMORY = 24, /* in: struct cryo_seal_memory + struct cryo_range[count] */
};


/* Several restore commands in one stop, one after the other; the first that fails
 * ends the batch, and the batch's header then carries that command's number and
 * failure. Each command is a struct cryo_args_header (command and payload_size
 * set) followed by its payload, padded to 8 bytes. No stop_signal: restore only. */
struct cryo_batch {
    uint32_t count;
    uint32_t reserved;
};


/* The kernel's struct sigaction for rt_sigaction (not libc's). */
struct cryo_sigaction {
    uint64_t handler;
    uint64_t flags;
    uint64_t restorer;
    uint64_t mask;
};

struct cryo_timeval { int64_t sec; int64_t usec; };
struct cryo_itimer { struct cryo_timeval interval; struct cryo_timeval value; };

/* Process-wide state only the task itself can read; written by
 * DUMP_PROCESS, read by RESTORE_STATE. */
struct cryo_task_state {
    struct cryo_sigaction actions[64]; /* index = signal - 1 */
    struct cryo_itimer itimers[3];     /* ITIMER_REAL, VIRTUAL, PROF */
    uint64_t brk;
    uint32_t umask;
    uint32_t dumpable;
    uint32_t securebits;
    uint32_t child_subreaper;
    uint64_t rlimits[16][2];           /* soft, hard per RLIMIT_*; read from inside (no CAP_SYS_RESOURCE needed) */
    /* Asked by DUMP_PROCESS too, so that the frozen dump needs no injected syscall of its own for them: */
    int64_t thp_disable;               /* prctl(PR_GET_THP_DISABLE), or -errno */
    int64_t membarrier;                /* membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS), or -errno */
    /* mlockall flags in effect for mappings made from now on: 0, MCL_FUTURE (2), or with MCL_ONFAULT (6);
     * or -errno. The address space keeps them, and /proc shows them nowhere: DUMP_PROCESS maps a page to see.
     * RESTORE_STATE calls mlockall with them when not 0. */
    int64_t lock_future;
};

#define CRYO_MAX_QUEUED_SIGNALS 256

struct cryo_queued_signal {
    uint32_t shared;           /* process-wide queue, or the thread's own */
    uint32_t pad;
    uint8_t siginfo[128];
};

/* Per-thread state; written by DUMP_THREAD, read by RESTORE_THREAD (run in
 * that thread), which also queues the thread's own pending signals. Both
 * directions carry signals[] only up to signal_count. */
struct cryo_thread_state {
    uint64_t altstack_sp;
    uint64_t altstack_size;
    int32_t altstack_flags;
    int32_t parent_death_signal;
    uint64_t clear_child_tid;
    uint64_t robust_list;
    uint64_t robust_list_len;
    uint64_t rseq;
    uint32_t rseq_length;
    uint32_t rseq_signature;
    uint32_t signal_count;
    uint32_t pad;
    char name[16];             /* the thread's comm */
    int64_t timer_slack;       /* DUMP_THREAD: prctl(PR_GET_TIMERSLACK), or -errno; not used by RESTORE_THREAD */
    struct cryo_queued_signal signals[CRYO_MAX_QUEUED_SIGNALS];
};

struct cryo_connect {
    uint32_t address_length;   /* bytes of sun_path used (abstract: leading NUL) */
    int32_t target_fd;         /* where the control socket must end up */
    char sun_path[108];
};

/* Restore: the parent clones a child that is born with its control socket
 * already connected to cryo (at connect.target_fd), which saves the child a
 * CONNECT stop of its own. The parent connects, moves the socket there,
 * clones (clone3 with the given struct clone_args, whose set_tid points at
 * set_tid below) and closes its own copy. What the parent holds at that
 * number is left over from the controller, never the task's own (cryo keeps
 * off the number where the parent's own control socket waits). */
struct cryo_clone_connected {
    struct cryo_connect connect;
    uint64_t clone_args[11];   /* struct clone_args (88 bytes) */
    uint64_t set_tid;
    int64_t result;            /* out: clone3's return, the child's pid or -errno (connect errors fail the command) */
};

struct cryo_recv_fds {
    int32_t control_fd;
    int32_t first_slot_fd;     /* the k-th received descriptor lands on first_slot_fd + k */
    uint32_t count;            /* in messages of up to CRYO_FDS_PER_MESSAGE each */
    uint32_t close_others;     /* 1: close every other descriptor first */
};
/* Descriptors one SCM_RIGHTS message carries at most (the kernel's SCM_MAX_FD). */
#define CRYO_FDS_PER_MESSAGE 253

struct cryo_remap { uint64_t from; uint64_t length; uint64_t to; };
struct cryo_range { uint64_t start; uint64_t end; };

#define CRYO_MADV_DONTDUMP   (1u << 0)
#define CRYO_MADV_DONTFORK   (1u << 1)
#define CRYO_MADV_HUGEPAGE   (1u << 2)
#define CRYO_MADV_NOHUGEPAGE (1u << 3)
#define CRYO_MADV_WIPEONFORK (1u << 4)
#define CRYO_MADV_MERGEABLE  (1u << 5)
/* Not advice, but set the same way once the pages are in: mlock2, with MLOCK_ONFAULT for LOCKONFAULT. */
#define CRYO_VMA_LOCKED      (1u << 6)
#define CRYO_VMA_LOCKONFAULT (1u << 7)
/* Sealed with mseal: not at RESTORE_MEMORY but by SEAL_MEMORY, once nothing changes the mapping any more
 * (children cloned, the parent's mappings unmapped where they are not kept). */
#define CRYO_VMA_SEALED      (1u << 8)
#define CRYO_MADV_SEQUENTIAL (1u << 9)
#define CRYO_MADV_RANDOM     (1u << 10)
/* Not stored in an image: set by cryo for a shared mapping whose file may be written (VM_MAYWRITE), so a
 * System V segment is attached read-write and then made read-only, not attached SHM_RDONLY. */
#define CRYO_VMA_MAYWRITE    (1u << 11)

struct cryo_seal_memory { uint32_t count; uint32_t reserved; };

struct cryo_vma {
    uint64_t start;
    uint64_t end;
    uint64_t file_offset;
    uint32_t prot;
    uint32_t flags;            /* MAP_* without MAP_FIXED */
    int32_t fd;                /* -1 for anonymous */
    uint32_t madvise;          /* CRYO_MADV_* and CRYO_VMA_LOCKED/LOCKONFAULT */
    uint64_t first_run;        /* its page runs: runs[first_run ..< first_run + run_count] */
    uint64_t run_count;
    uint32_t sysv_shm;         /* 1 + the id of the System V segment to shmat here; 0: mmap as above */
    uint32_t keep;             /* 1: inherited from the parent at fork, already in place: not mapped again */
};

/* Bytes of the pages file `fd` (the page stream may span several) that belong at [address, address + length). */
struct cryo_page_run { uint64_t address; uint64_t length; uint64_t file_offset; int32_t fd; uint32_t pad; };

/* Followed in the argument area by unmaps[], remaps[], vmas[], runs[], discards[], guards[]. */
struct cryo_restore_memory {
    uint64_t unmap_count;
    uint64_t remap_count;
    uint64_t vma_count;
    uint64_t run_count;
    uint64_t old_rseq;         /* the inherited rseq registration to drop first */
    uint32_t old_rseq_length;
    uint32_t old_rseq_signature;
    uint64_t discard_count;    /* ranges of kept mappings whose inherited pages go (MADV_DONTNEED) */
    uint64_t guard_count;      /* guard regions to install (MADV_GUARD_INSTALL) once the pages are in */
    uint64_t drop_kept_guards; /* 1: an ancestor had guard regions: kept mappings lose those they came with first */
};

/* The kernel's struct prctl_mm_map. */
struct cryo_mm_map {
    uint64_t start_code, end_code, start_data, end_data;
    uint64_t start_brk, brk, start_stack;
    uint64_t arg_start, arg_end, env_start, env_end;
    uint64_t auxv;             /* set by the parasite to point at auxv[] below */
    uint32_t auxv_size;
    uint32_t exe_fd;
};

#define CRYO_AUXV_WORDS 128

struct cryo_restore_extra {
    int32_t cwd_fd;            /* -1: leave as is */
    int32_t root_fd;           /* -1: leave as is */
    uint64_t personality;
    char comm[16];
    uint32_t set_mm;           /* 1: apply mm below */
    uint32_t signal_count;
    uint64_t discard_signals;  /* drop these if pending (SIGCHLD of helpers cryo made) */
    struct cryo_mm_map mm;
    uint64_t auxv[CRYO_AUXV_WORDS];
    uint32_t leader_follows;   /* 1: a struct cryo_thread_state follows, the leader's RESTORE_THREAD, done last */
    uint32_t pad2;
    /* Last, and sent only up to signal_count: the full array is 34 KiB a process, almost always
     * empty. A following thread state starts right after signals[signal_count]. */
    struct cryo_queued_signal signals[CRYO_MAX_QUEUED_SIGNALS];
};

struct cryo_fd_install { int32_t from; int32_t to; uint32_t cloexec; uint32_t pad; };

/* Followed by entries[]. Afterwards every fd >= close_from is closed. */
struct cryo_install_fds {
    uint32_t count;
    int32_t close_from;
};

/* source_fd -1: watch target_fd. Otherwise the watched file is at source_fd and target_fd (the number
 * it was added under, closed since) holds another file or none: it is moved aside for the add. */
struct cryo_epoll_target { int32_t epoll_fd; int32_t target_fd; uint32_t events; int32_t source_fd; uint64_t data; };

/* Followed by targets[]: epoll_ctl(EPOLL_CTL_ADD) each, from inside the owner. */
struct cryo_epoll_add { uint32_t count; uint32_t pad; };

/* Followed by, per filter (oldest first), a uint32_t instruction count, 4
 * bytes of padding and that many 8-byte BPF instructions. Installed in the
 * thread that runs the command; with CRYO_SECCOMP_TSYNC (version 7) synced to
 * every thread of the process. CRYO_SECCOMP_STRICT (version 16): the thread
 * enters SECCOMP_MODE_STRICT instead (no filters); cryo's suspension of seccomp
 * while it traces the task keeps that from acting before the task is released. */
#define CRYO_SECCOMP_TSYNC 1u
#define CRYO_SECCOMP_STRICT 2u
struct cryo_seccomp { uint32_t no_new_privs; uint32_t filter_count; uint32_t flags; uint32_t pad; };

/* kind: 0 flock, 1 POSIX (F_SETLK), 2 open file description (F_OFD_SETLK), 3 lease (F_SETLEASE); length 0 = to EOF. */
struct cryo_lock { int32_t fd; uint16_t kind; uint8_t write; uint8_t pad; int64_t start; int64_t length; };
struct cryo_locks { uint32_t count; uint32_t pad; };

/* A POSIX timer: its id (kept at restore through PR_TIMER_CREATE_RESTORE_IDS),
 * clock, how it notifies, and its time left and interval in nanoseconds. */
struct cryo_posix_timer {
    int32_t id;
    int32_t clock;
    int32_t notify;            /* SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4 */
    int32_t signal;
    int32_t thread;            /* for SIGEV_THREAD_ID */
    int32_t overrun;
    uint64_t value;            /* sigev_value */
    int64_t remaining_ns;
    int64_t interval_ns;
};
struct cryo_timers { uint32_t count; uint32_t pad; };

/* Dump of large memory: the parasite vmsplices its own pages into a pipe whose
 * read end cryo took with pidfd_getfd, and cryo splices them into the pages
 * file, so each page is copied once. */
struct cryo_page_pipe { int32_t read_fd; int32_t write_fd; uint32_t size; uint32_t pad; };
struct cryo_iovec { uint64_t base; uint64_t length; };
struct cryo_dump_pages { int32_t read_fd; int32_t write_fd; uint32_t count; uint32_t pad; };

/* Dump of large memory, preferred: the task itself writes its pages into the
 * pages file, the one copy a plain write() makes. The file reaches the task as
 * SCM_RIGHTS over a socketpair the parasite makes (PAGE_SOCKET); cryo takes
 * cryo_fd with pidfd_getfd and sends the file through it. WRITE_PAGES closes
 * cryo_fd, receives the file, pwritev()s every iovec in order from offset 0,
 * closes what it holds and reports how many bytes went out in `written`. */
struct cryo_page_socket { int32_t task_fd; int32_t cryo_fd; };
/* Followed by struct cryo_iovec[count + part_count]: the first `count` go to the
 * pages file, the rest to its part file, each from offset 0. cryo sends the pages
 * file, then (part_count > 0) the part file, over cryo_fd. With
 * CRYO_WRITE_PAGES_THREAD the part is written at the same time by a thread the
 * parasite starts in the task (its stack: the top CRYO_WRITE_PAGES_STACK bytes of
 * the argument area), else after the first. An iovec whose base is
 * CRYO_IOVEC_SKIP writes nothing: the file offset moves on by its length, past
 * pages cryo writes itself (those the task cannot read: no PROT_READ). `total`
 * and `part_total` count them; `written` and `part_written` do not. */
#define CRYO_IOVEC_SKIP 0xffffffffffffffffull
/* With CRYO_WRITE_PAGES_MEM, an entry whose base has this bit (and is not
 * CRYO_IOVEC_SKIP) is read by the task from /proc/PID/mem, a descriptor cryo
 * opened and sends after the files, at the address in the other bits, into
 * scratch space after the iovecs (scratch_size bytes per writer), then written
 * at its place: the pages the task cannot read, without cryo writing into the
 * same file meanwhile (ext4 lets one writer of a file in at a time).
 * `written` and `part_written` count them then. */
#define CRYO_IOVEC_FROM_MEM 0x8000000000000000ull
#define CRYO_WRITE_PAGES_THREAD 1u
#define CRYO_WRITE_PAGES_MEM    2u
#define CRYO_WRITE_PAGES_STACK  (16u << 10)
struct cryo_write_pages {
    int32_t task_fd;
    int32_t cryo_fd;
    uint32_t count;
    uint32_t part_count;
    uint64_t total;         /* bytes for the pages file: refused up front if RLIMIT_FSIZE is lower */
    uint64_t part_total;    /* bytes for the part file, likewise */
    uint32_t flags;         /* CRYO_WRITE_PAGES_* */
    uint32_t threaded;      /* out: 1 when a thread wrote the part */
    uint64_t written;       /* out: bytes written into the pages file */
    uint64_t part_written;  /* out: into the part file */
    uint32_t scratch_size;  /* CRYO_WRITE_PAGES_MEM: bytes of scratch per writer, 16-byte aligned after the iovecs */
    uint32_t padding;
};

/* Followed by ranges[range_count] (struct cryo_range): the task creates a
 * userfaultfd (O_CLOEXEC | O_NONBLOCK) with `features`, registers every range
 * for missing-page faults and leaves it at target_fd, a slot descriptor that
 * INSTALL_FDS closes later; cryo takes its own copy with pidfd_getfd first. */
struct cryo_lazy_uffd {
    int32_t target_fd;
    uint32_t range_count;
    uint64_t features;
};

/* Followed by uint32_t groups[group_count], then group_count more words the
 * parasite fills with the groups the task has now (setgroups is skipped when
 * they are the same: it needs CAP_SETGID even then). Up to NGROUPS_MAX groups,
 * so the payload grows with them instead of every payload holding the most. */
#define CRYO_MAX_GROUPS 65536
struct cryo_creds {
    uint32_t uid, euid, suid, fsuid;
    uint32_t gid, egid, sgid, fsgid;
    uint32_t group_count;
    uint32_t securebits;
    uint32_t cap_effective[2], cap_permitted[2], cap_inheritable[2];
    uint64_t cap_bounding;
    uint64_t cap_ambient;
    uint32_t cap_last;         /* highest capability number this kernel knows */
    uint32_t dumpable;         /* set again last: a uid or gid change resets it */
};
/* The groups start right after it on both sides (Swift counts MemoryLayout.size, C sizeof). */
_Static_assert(sizeof(struct cryo_creds) % 8 == 0, "cryo_creds must have no tail padding");

#endif
