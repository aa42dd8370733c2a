//! The binary's allocator: mimalloc, told to keep freed memory mapped a while. The
//! one unsafe call of the binary: setting one of its options through its C API.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long};

/// Inference allocates and frees megabyte-sized tensors per layer, and Bitswap a buffer
/// per message: mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its position in mimalloc v3's `mi_option_t`, which the
/// sys crate does not name.
const PURGE_DELAY: c_int = 15;
/// How long freed memory stays mapped before mimalloc gives it back, in milliseconds.
/// At mimalloc's 10 ms, a fetching daemon gave huge pages back between two Bitswap
/// messages and the kernel zeroed 2 MiB at the next touch: a fifth of its CPU time.
const PURGE_DELAY_MS: c_long = 1000;

/// Sets mimalloc's purge delay; call first thing in `main`.
pub(crate) fn keep_freed_memory_a_while() {
    // SAFETY: sets an option; mimalloc reads options atomically whenever it purges.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // mimalloc documents 10 ms as the default: another index reads another option.
        // SAFETY: reads an option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 10);
    }
}
