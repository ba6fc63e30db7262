/*
 * The injector's side of every blob (CryoInjector): how a command reaches a
 * blob mapped in a traced task and how its answer comes back. A blob of any
 * tool includes this header; its own commands and payloads are its business
 * (cryo's are in parasite_protocol.h).
 *
 * The controller writes a cryo_args_header and the command's payload into the
 * argument area inside the mapping, points the task's rip at the entry symbol
 * with rdi = argument area and rsp at the blob's stack, and resumes it. The
 * blob runs the command, puts its result (>= 0, or -errno) in the header and
 * stops: with int3, or (optional) by raising stop_signal at the stopped
 * symbol: for a live task that must survive the controller's death, and for a
 * task whose SIGTRAP an int3 would change (ignored or pending: the kernel
 * forces the trap's SIGTRAP). Fixed-width fields only, so both sides agree on
 * the layout.
 */
#ifndef CRYO_INJECTOR_PROTOCOL_H
#define CRYO_INJECTOR_PROTOCOL_H

#include <stdint.h>

#define CRYO_PARASITE_MAGIC 0x43525950u /* "CRYP" */

/* Symbols the injector looks up in the blob's ELF. */
#define CRYO_PARASITE_ENTRY_SYMBOL "cryo_parasite_entry"           /* required */
#define CRYO_PARASITE_GADGET_SYMBOL "cryo_parasite_syscall_gadget" /* required: `syscall; int3` */
/* Optional: rip when the blob stops on stop_signal after a command. Without
 * it every command ends on int3. */
#define CRYO_PARASITE_STOPPED_SYMBOL "cryo_parasite_stopped"

/* Every blob answers PING with its protocol version; the injector checks it. */
#define CRYO_INJECTOR_CMD_PING 1u

/* Where a failing command stopped: which step, which syscall, which errno. */
struct cryo_args_header {
    uint32_t magic;
    uint32_t command;
    int64_t result;        /* 0, or -errno of the failing syscall */
    uint64_t fail_step;    /* index of the item being worked on */
    uint64_t fail_syscall; /* syscall number that failed */
    uint64_t fail_addr;    /* address or fd concerned */
    uint64_t payload_size; /* bytes available after this header */
    uint64_t log_offset;   /* the parasite's log: text lines at header + log_offset; in a batch, each command's lines follow a line "@0x<command>" */
    uint32_t log_capacity;
    uint32_t log_length;   /* bytes written by this command */
    /* How to hand back control (stop_signal 0: int3). */
    int32_t stop_signal;   /* raised at the thread itself (its own getpid/gettid) when a command is done */
    int32_t tgid;          /* cryo's view of the ids; the parasite does not use them (its pid namespace may differ) */
    int32_t tid;
    int32_t close_fds[2];  /* the parasite's own descriptors, closed on the way home (-1: none) */
    uint32_t reserved;
    uint64_t return_stack;       /* rsp for the way home: [rsp] = rt_sigreturn gadget, then the signal frame; 0: none */
    uint64_t syscall_ret_gadget; /* `syscall; ret` in the task's own code, for the munmap of the parasite */
    uint64_t parasite_base;
    uint64_t parasite_size;
};

#endif
