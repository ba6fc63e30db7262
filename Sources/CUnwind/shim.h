/*
 * libunwind's remote API (any address space, through accessors) and the
 * ptrace accessors. UNW_LOCAL_ONLY stays undefined so that the unw_* macros
 * name the _Ux86_64_* functions; Swift calls those names directly.
 */
#include <libunwind.h>
#include <libunwind-ptrace.h>

/*
 * Exported by libunwind-x86_64 but declared only in its private headers:
 * finds the FDE for ip in the binary search table described by di
 * (UNW_INFO_FORMAT_REMOTE_TABLE: .eh_frame_hdr read through access_mem).
 * On success pi->unwind_info is owned by libunwind, which frees it itself.
 */
extern int _Ux86_64_dwarf_search_unwind_table(unw_addr_space_t as, unw_word_t ip, unw_dyn_info_t *di,
                                              unw_proc_info_t *pi, int need_unwind_info, void *arg);
