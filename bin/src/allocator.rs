//! The binary's allocator: mimalloc, told to give freed memory back to the kernel soon
//! and in small pages. The binary's only unsafe calls: a mimalloc option through its C
//! API, and one `prctl`.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_long};

/// Inference allocates and frees megabyte-sized tensors per layer, and Bitswap a buffer
/// per message: mimalloc reuses them, where glibc would return each large one to the
/// kernel and fault its pages in again on the next.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in the bundled mimalloc v3's `mi_option_t`, which
/// the sys crate does not name (the test below checks it).
const PURGE_DELAY: c_int = 15;
/// How long memory freed stays resident before mimalloc gives it back, in ms. mimalloc
/// v3 waits 1000 ms: a daemon fetching at 200 MB/s frees a Bitswap message buffer every
/// few milliseconds, so a second's worth (about 200 MB) stayed resident, and a 1 GiB
/// `get` peaked at 220–275 MB RSS. At 10 ms (mimalloc v2's delay) and with small pages
/// it peaks at 120–130 MB, at the same speed and CPU time.
const PURGE_DELAY_MS: c_long = 10;

/// Sets mimalloc's purge delay and turns transparent huge pages off for the process;
/// call first thing in `main`.
///
/// mimalloc asks for huge pages on its arenas: a 2 MiB page then stays resident while
/// any 64 KiB of it is in use, and a purge splits it. The engine's throughput is the same
/// with small pages (MiniLM `bench embed`, batch 32 and 1, 1 and 2 threads).
pub(crate) fn give_freed_memory_back_soon() {
    // SAFETY: sets an option, which mimalloc reads atomically each time it purges.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    // SAFETY: a flag of this process; no memory is passed. Where the kernel lacks it,
    // the call fails and huge pages stay on, which costs memory, not correctness.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_names_mimallocs_option_and_huge_pages_go_off() {
        // mimalloc v3 waits 1000 ms by default, and no option before it defaults to
        // that: another index reads another option.
        // SAFETY: reads an option.
        let default = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(default, 1000, "is MIMALLOC_PURGE_DELAY set?");
        give_freed_memory_back_soon();
        // SAFETY: as above.
        let set = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(set, PURGE_DELAY_MS);
        // SAFETY: reads a flag of this process.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}
