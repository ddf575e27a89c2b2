//! Giving memory back after a burst: glibc's malloc keeps the pages of freed buffers (a
//! thousand agent.sock connections' partial requests, a storm of sessions) inside the heap,
//! so the daemon's RSS would stay at the burst's peak for good. Every
//! [`CHECK_INTERVAL`], if more than [`SLACK`] bytes of the heap are free, `malloc_trim(0)`
//! returns them, on the blocking pool (never on the relay's thread, and never per request:
//! the hot path does no trimming). Knows nothing of what the memory held.

use std::time::Duration;

/// How often the heap's free bytes are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Free heap bytes kept without trimming (the next burst reuses them).
pub const SLACK: usize = 2 * 1024 * 1024;

/// Bytes free inside malloc's arenas (glibc `mallinfo2().fordblks`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn free_heap_bytes() -> usize {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's own statistics.
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    info.fordblks
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn free_heap_bytes() -> usize {
    0
}

/// Return free heap pages to the system; true if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only releases memory malloc holds free; no pointer we own moves.
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Above this size malloc maps a buffer on its own (glibc's default starts at 128 KiB and
/// moves with the sizes freed).
pub const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free bytes at the heap's top that malloc keeps rather than handing back at each free.
pub const TRIM_THRESHOLD: i32 = 64 << 20;

/// Keep freed memory in the heap between trims, so no free on the relay's path calls the
/// kernel. glibc otherwise shrinks the heap's top (`brk`) whenever a free leaves more than
/// its trim threshold there, and maps and unmaps buffers above its mmap threshold, so a bulk
/// transfer's 64 KiB buffers cost system calls (2.3 `brk` per MiB relayed, issue 18). With
/// fixed thresholds (which also stop glibc's sliding of them) frees stay in user space, and
/// [`keep_heap_trimmed`] gives the memory back once more than [`SLACK`] is free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn hold_freed_memory() {
    // SAFETY: mallopt only changes the allocator's tuning parameters.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn hold_freed_memory() {}

/// Run for the life of the daemon: trim when more than [`SLACK`] is free.
pub(crate) async fn keep_heap_trimmed() {
    let mut every = tokio::time::interval(CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let r = tokio::task::spawn_blocking(|| {
            let free = free_heap_bytes();
            (free > SLACK).then(|| (free, trim()))
        })
        .await;
        if let Ok(Some((free, true))) = r {
            tracing::debug!(free_kib = free / 1024, "returned free heap memory");
        }
    }
}

#[cfg(test)]
mod tests {
    /// Once the thresholds are held, a 1 MiB buffer comes from the heap, so freeing it is a
    /// user-space operation; with glibc's defaults (128 KiB) it is mapped on its own and its
    /// free calls `munmap`. Read from malloc's own count of bytes in separately mapped chunks,
    /// which does not depend on what else is free in the heap.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_large_buffer_comes_from_the_heap_not_its_own_mapping() {
        super::hold_freed_memory();
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        #[allow(unsafe_code)]
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let big = vec![1u8; 1 << 20];
        let during = mapped();
        drop(big);
        assert!(
            during < before + (1 << 20),
            "a 1 MiB buffer was mapped on its own ({before} -> {during} bytes in mapped \
             chunks): freeing it would call munmap"
        );
    }

    /// Freed buffers interleaved with live ones stay in the heap as free bytes (glibc only
    /// shrinks the heap's top on its own); `free_heap_bytes` sees them and `trim` runs.
    #[test]
    fn freed_buffers_are_seen_and_trimmed() {
        let mut bufs = Vec::new();
        let mut keep = Vec::new();
        for _ in 0..400 {
            bufs.push(vec![1u8; 30 * 1024]);
            keep.push(vec![2u8; 64]);
        }
        drop(bufs);
        let free = super::free_heap_bytes();
        assert!(free >= 4 << 20, "only {free} bytes were free");
        // Whether pages were released depends on the other tests' heap; the call must run.
        let _ = super::trim();
        drop(keep);
    }
}
