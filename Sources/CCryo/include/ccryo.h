/*
 * The thin C layer: only what Swift cannot import from Glibc (variadic ptrace
 * and syscall, clone3, register structures, wait-status macros, PAGEMAP_SCAN).
 * Every function returns the raw kernel result: >= 0, or -errno.
 */
#ifndef CCRYO_H
#define CCRYO_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/user.h>
#include <signal.h>
#include "parasite_protocol.h"

typedef struct user_regs_struct cryo_regs;

/* ptrace */
long cryo_ptrace(long request, pid_t pid, uint64_t addr, uint64_t data);
long cryo_ptrace_seize(pid_t pid, unsigned long options);
long cryo_ptrace_interrupt(pid_t pid);
long cryo_ptrace_cont(pid_t pid, int signal);
/* PTRACE_SYSCALL: resume until the next syscall entry or exit. */
long cryo_ptrace_syscall(pid_t pid, int signal);
long cryo_ptrace_detach(pid_t pid, int signal);
long cryo_ptrace_getregs(pid_t pid, cryo_regs *regs);
long cryo_ptrace_setregs(pid_t pid, const cryo_regs *regs);
/* NT_X86_XSTATE or NT_PRFPREG; returns the length the kernel used. */
long cryo_ptrace_getregset(pid_t pid, int note, void *buffer, size_t length);
long cryo_ptrace_setregset(pid_t pid, int note, const void *buffer, size_t length);
long cryo_ptrace_getsigmask(pid_t pid, uint64_t *mask);
long cryo_ptrace_setsigmask(pid_t pid, uint64_t mask);
/* Copies up to max siginfos (128 bytes each) from the private or shared queue. */
long cryo_ptrace_peeksiginfo(pid_t pid, int shared, uint64_t offset, void *buffer, int max);
long cryo_ptrace_peekdata(pid_t pid, uint64_t address, uint64_t *word);
long cryo_ptrace_pokedata(pid_t pid, uint64_t address, uint64_t word);
typedef struct {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
} cryo_rseq_config;
long cryo_ptrace_get_rseq(pid_t pid, cryo_rseq_config *config);

/* splice(2) from a pipe into a file at *offset (advanced), without blocking. */
long cryo_splice_to_file(int pipe_fd, int file_fd, int64_t *offset, size_t length);
/* poll(2) one descriptor for input: 1 ready (or hung up), 0 timed out, -errno. */
long cryo_poll_in(int fd, int timeout_ms);

/* Offset of the first `needle` in `haystack`, or -1. */
long cryo_memmem(const void *haystack, size_t length, const void *needle, size_t needle_length);

int cryo_note_prstatus(void);
int cryo_note_prfpreg(void);
int cryo_note_x86_xstate(void);

/* waitpid with the status decoded; returns the pid or -errno. */
typedef struct {
    int exited, exit_code;
    int signaled, term_signal;
    int stopped, stop_signal;
    int event; /* PTRACE_EVENT_* from status >> 16 */
} cryo_wait_status;
long cryo_waitpid(pid_t pid, int options, cryo_wait_status *status);
int cryo_wall(void);

/* Memory of another process. */
long cryo_process_vm_readv(pid_t pid, void *local, size_t length, uint64_t remote);
long cryo_process_vm_writev(pid_t pid, const void *local, size_t length, uint64_t remote);
long cryo_process_vm_readv_vec(pid_t pid, void *local, size_t length,
                               const uint64_t *remote_bases, const uint64_t *remote_lengths, size_t count);

/* Descriptors */
long cryo_pidfd_open(pid_t pid);
long cryo_process_mrelease(int pidfd);
long cryo_pidfd_getfd(int pidfd, int targetfd);
long cryo_kcmp_file(pid_t pid1, pid_t pid2, int fd1, int fd2);
/* KCMP_VM = 1, KCMP_FILES = 2, KCMP_FS = 3 */
long cryo_kcmp(pid_t pid1, pid_t pid2, int type);
/// Joins the namespace open at `fd` (this thread only, for most kinds); -errno on failure.
long cryo_setns(int fd, int nstype);
long cryo_tee(int fd_in, int fd_out, size_t length, unsigned flags);
long cryo_send_fd(int socket, int fd);
long cryo_close_range(unsigned first, unsigned last);

/*
 * clone3 with set_tid. The child never returns into Swift: it parks in a raw
 * read() on park_fd (interrupted later by ptrace) and exits if that returns.
 * Returns the child pid or -errno.
 */
long cryo_clone3_parked(pid_t tid, uint64_t flags, int park_fd, int exit_signal);

/*
 * The init of a new pid namespace (pid 1 there). It parks like the above
 * until park_fd reaches EOF, then reaps every child until none is left and
 * exits with the status of root_pid (as the namespace sees it), so waiting
 * for it is waiting for the restored tree's root.
 */
long cryo_clone3_namespace_init(int park_fd, pid_t root_pid);

/* PAGEMAP_SCAN (Linux 6.7): Debian 12's headers lack it. */
#define CRYO_PAGE_IS_WPALLOWED (1ull << 0)
#define CRYO_PAGE_IS_WRITTEN   (1ull << 1)
#define CRYO_PAGE_IS_FILE      (1ull << 2)
#define CRYO_PAGE_IS_PRESENT   (1ull << 3)
#define CRYO_PAGE_IS_SWAPPED   (1ull << 4)
#define CRYO_PAGE_IS_PFNZERO   (1ull << 5)
#define CRYO_PAGE_IS_HUGE      (1ull << 6)
typedef struct { uint64_t start, end, categories; } cryo_page_region;
typedef struct {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
} cryo_pm_scan_arg;
long cryo_pagemap_scan(int pagemap_fd, cryo_pm_scan_arg *arg);

/* GNU-only pieces Glibc's Swift module hides. */
#define CRYO_F_SETPIPE_SZ 1031
#define CRYO_F_GETPIPE_SZ 1032
#define CRYO_SPLICE_F_NONBLOCK 2
long cryo_pipe2(int fds[2], int flags);
long cryo_open_tmpfile(const char *folder, int flags, unsigned mode);
long cryo_accept_cloexec(int socket);
uint64_t cryo_makedev(unsigned major, unsigned minor);

/* userfaultfd with write-protect in async mode (UFFD_FEATURE_WP_ASYNC, 6.7):
 * 1 when offered, 0 when not, -errno when userfaultfd itself fails. */
long cryo_probe_uffd_wp_async(void);

/* Write tracking for pre-copy: a userfaultfd in write-protect async mode
 * (written pages lose their protection without any fault reaching a reader). */
#define CRYO_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define CRYO_UFFD_FEATURE_WP_ASYNC       (1ull << 15)
#define CRYO_UFFD_USER_MODE_ONLY 1
#define CRYO_NR_USERFAULTFD 323
long cryo_uffd_api(int fd, uint64_t features);
long cryo_uffd_register_wp(int fd, uint64_t start, uint64_t length);
long cryo_uffd_writeprotect(int fd, uint64_t start, uint64_t length);
long cryo_copy_file_range(int in_fd, int64_t in_offset, int out_fd, int64_t out_offset, uint64_t length);
/* The uid of a connected unix socket's peer (SO_PEERCRED). */
long cryo_peer_uid(int socket);

/* userfaultfd for lazy restore (--lazy-pages). The features cryo needs:
 * fork, mremap, madvise(DONTNEED) and munmap events, so no change the
 * restored process makes to its lazy memory goes unseen. */
uint64_t cryo_uffd_lazy_features(void);
/* Creates a userfaultfd as this process and asks for `features`; 0, or
 * -errno of the first call that failed (*failed_call: 0 userfaultfd, 1 UFFDIO_API). */
long cryo_uffd_probe(uint64_t features, int *failed_call);
/* One message read from a userfaultfd, decoded. */
typedef struct {
    uint32_t event;            /* CRYO_UFFD_EVENT_* */
    uint32_t ufd;              /* fork: the child's new userfaultfd */
    uint64_t address;          /* pagefault: the address; remap: from; remove/unmap: start */
    uint64_t flags;            /* pagefault: UFFD_PAGEFAULT_FLAG_* */
    uint64_t to;               /* remap: new address */
    uint64_t length;           /* remap: length; remove/unmap: end - start */
} cryo_uffd_event;
#define CRYO_UFFD_EVENT_PAGEFAULT 0x12
#define CRYO_UFFD_EVENT_FORK 0x13
#define CRYO_UFFD_EVENT_REMAP 0x14
#define CRYO_UFFD_EVENT_REMOVE 0x15
#define CRYO_UFFD_EVENT_UNMAP 0x16
/* Reads up to max messages without blocking: the count (0 when none), or -errno. */
long cryo_uffd_read(int fd, cryo_uffd_event *events, int max);
/* UFFDIO_COPY / UFFDIO_ZEROPAGE / UFFDIO_WAKE: 0 or -errno; *done is the
 * byte count the kernel installed before an error (copy and zeropage). */
long cryo_uffd_copy(int fd, uint64_t address, const void *source, uint64_t length, int64_t *done);
long cryo_uffd_zeropage(int fd, uint64_t address, uint64_t length, int64_t *done);
long cryo_uffd_wake(int fd, uint64_t address, uint64_t length);

/* Misc syscalls */
long cryo_prlimit(pid_t pid, int resource, const uint64_t *new_limit, uint64_t *old_limit);
long cryo_capbset_read(int cap);
/* prctl(PR_GET_SECUREBITS): prctl is variadic. */
long cryo_get_securebits(void);
/* getauxval(AT_SECURE): 1 when cryo was exec'd set-uid or with file capabilities. */
int cryo_secure_exec(void);
long cryo_getpid_raw(void);
long cryo_set_pdeathsig(int signal);
int cryo_errno(void);

#endif
