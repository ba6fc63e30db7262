/* The blob's entry: the controller sets rip here, rdi to the argument area and
 * rsp to the top of the parasite stack; the int3 hands control back. */
    .text
    .globl cryo_parasite_entry
    .type cryo_parasite_entry, @function
cryo_parasite_entry:
    call parasite_main
    int3

/* Used by the injector to run single syscalls once the blob is mapped. */
    .globl cryo_parasite_syscall_gadget
    .type cryo_parasite_syscall_gadget, @function
cryo_parasite_syscall_gadget:
    syscall
    int3

    .section .note.GNU-stack,"",@progbits
