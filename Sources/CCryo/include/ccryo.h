/*
 * The C core: only what Swift cannot express. One raw system call (variadic
 * syscall/ptrace/ioctl/prctl all go through it from CryoSystem), clone3 for a
 * child that must not run Swift (cryo_cpu.h: cpuid, xgetbv), and the
 * layouts of kernel structures that Debian 12's headers or Glibc's Swift module
 * lack. Functions return the raw kernel result: >= 0, or -errno; none reads
 * or sets errno.
 */
#ifndef CCRYO_H
#define CCRYO_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/user.h>
#include <sys/syscall.h> /* SYS_* numbers for Swift */
#include <sys/auxv.h>    /* getauxval, AT_SECURE */
#include <sys/prctl.h>   /* PR_* */
#include <signal.h>
#include <linux/userfaultfd.h> /* struct uffdio_*, struct uffd_msg; the ioctl numbers are below */
#include "parasite_protocol.h"

typedef struct user_regs_struct cryo_regs;

/* syscall(2) without errno: the result, or -errno. */
long cryo_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

/* PTRACE_PEEKSIGINFO's argument and PTRACE_GET_RSEQ_CONFIGURATION's result. */
typedef struct {
    uint64_t offset;
    uint32_t flags; /* 1: the shared queue */
    int32_t count;
} cryo_peeksiginfo_args;
typedef struct {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
} cryo_rseq_config;

/* Atomic compare-and-exchange on memory the kernel writes too (a packet ring's status words): 1 if swapped. */
int cryo_compare_exchange_u32(void *address, uint32_t expected, uint32_t desired);
int cryo_compare_exchange_u64(void *address, uint64_t expected, uint64_t desired);

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

/*
 * A child (no set_tid) that parks like cryo_clone3_parked until park_fd
 * gives a byte or EOF, then ends as the wait status `status` says: exit with
 * its code, or killed by its signal (made non-dumpable first, so no core is
 * written). A stand-in for a process that had exited: pidfds opened on it
 * while it parks keep that status once it is reaped.
 */
long cryo_clone3_parked_ending(int park_fd, int status);

/*
 * malloc_trim(0): the allocator's free memory back to the kernel. The tasks
 * a restore creates start as copies of cryo: the less it holds, the cheaper.
 */
int cryo_malloc_trim(void);

/* PAGEMAP_SCAN (Linux 6.7): Debian 12's headers lack it. */
#define CRYO_PAGE_IS_WPALLOWED (1ull << 0)
#define CRYO_PAGE_IS_WRITTEN   (1ull << 1)
#define CRYO_PAGE_IS_FILE      (1ull << 2)
#define CRYO_PAGE_IS_PRESENT   (1ull << 3)
#define CRYO_PAGE_IS_SWAPPED   (1ull << 4)
#define CRYO_PAGE_IS_PFNZERO   (1ull << 5)
#define CRYO_PAGE_IS_HUGE      (1ull << 6)
#define CRYO_PAGE_IS_GUARD     (1ull << 8)  /* Linux 6.15: a guard region's page (MADV_GUARD_INSTALL); 7 is soft-dirty */
typedef struct { uint64_t start, end, categories; } cryo_page_region;
typedef struct {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
} cryo_pm_scan_arg;
#define CRYO_PAGEMAP_SCAN 0xc0606610ul /* _IOWR('f', 16, cryo_pm_scan_arg) */

/* PROCMAP_QUERY (Linux 6.11): one mapping of /proc/PID/maps per ioctl, filtered by the
 * kernel, no text. Its vma_flags are r, w, x and shared only (no VmFlags). Debian 12's headers lack it. */
#define CRYO_PROCMAP_QUERY_VMA_READABLE      0x01ull
#define CRYO_PROCMAP_QUERY_VMA_WRITABLE      0x02ull
#define CRYO_PROCMAP_QUERY_VMA_EXECUTABLE    0x04ull
#define CRYO_PROCMAP_QUERY_VMA_SHARED        0x08ull
#define CRYO_PROCMAP_QUERY_COVERING_OR_NEXT  0x10ull
#define CRYO_PROCMAP_QUERY_FILE_BACKED_VMA   0x20ull
typedef struct {
    uint64_t size, query_flags, query_addr;
    uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
} cryo_procmap_query;
#define CRYO_PROCMAP_QUERY 0xc0686611ul /* _IOWR('f', 17, cryo_procmap_query) */

/* GNU-only numbers Glibc's Swift module hides. */
#define CRYO_F_SETPIPE_SZ 1031
#define CRYO_F_GETPIPE_SZ 1032
#define CRYO_SPLICE_F_NONBLOCK 2
#define CRYO_SPLICE_F_MOVE 1
#define CRYO_O_TMPFILE 020200000 /* __O_TMPFILE | O_DIRECTORY */
#define CRYO_SO_PEERCRED 17

/* userfaultfd: features and ioctl numbers (function-like macros do not reach Swift). */
#define CRYO_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define CRYO_UFFD_FEATURE_WP_ASYNC       (1ull << 15)
#define CRYO_UFFD_USER_MODE_ONLY 1
#define CRYO_NR_USERFAULTFD 323
#define CRYO_UFFDIO_API 0xc018aa3ful
#define CRYO_UFFDIO_REGISTER 0xc020aa00ul
#define CRYO_UFFDIO_WAKE 0x8010aa02ul
#define CRYO_UFFDIO_COPY 0xc028aa03ul
#define CRYO_UFFDIO_ZEROPAGE 0xc020aa04ul
#define CRYO_UFFDIO_WRITEPROTECT 0xc018aa06ul
/* userfaultfd message kinds (uffd_msg.event). */
#define CRYO_UFFD_EVENT_PAGEFAULT 0x12
#define CRYO_UFFD_EVENT_FORK 0x13
#define CRYO_UFFD_EVENT_REMAP 0x14
#define CRYO_UFFD_EVENT_REMOVE 0x15
#define CRYO_UFFD_EVENT_UNMAP 0x16

/* glibc's malloc keeps freed memory up to these sizes instead of giving it back (mallopt
   M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); 0 on success. Not in Swift's Glibc module. */
int cryo_keep_freed_memory(int mmap_threshold, int trim_threshold);

#endif
