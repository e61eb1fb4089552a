//! Returning freed memory to the operating system.

/// Asks the allocator to return its free memory to the operating system.
///
/// glibc keeps freed memory in per-thread arenas for reuse. After replaying a large store, the
/// decoded changes that were freed stay mapped and count in the resident memory: with 1,000,000
/// stored posts, about as much again as the state itself (see docs/benchmarks.md). A replay calls
/// this once at its end. Elsewhere, and with other C libraries, it does nothing.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists. It takes no pointer
    // from us, so it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
