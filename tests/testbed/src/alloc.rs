//! A global allocator that counts, for tests and benchmarks that assert or report
//! allocations on the packet path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static THREAD_LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

/// A global allocator that forwards to [`System`] and counts allocations (`alloc`,
/// `alloc_zeroed` and `realloc` calls) and bytes, process-wide and per thread. Install it
/// in a binary with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

fn note(allocation: bool, grown: i64) {
    if allocation {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
    if grown > 0 {
        ALLOCATED_BYTES.fetch_add(grown as u64, Ordering::Relaxed);
    }
    // Const-initialized thread-locals without destructors: no allocation, no lazy
    // registration, so they are safe to touch from inside the allocator. `try_with`
    // skips counting rather than panicking if a thread is being torn down.
    let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + u64::from(allocation)));
    let _ = THREAD_LIVE_BYTES.try_with(|c| c.set(c.get() + grown));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// returned memory satisfies `GlobalAlloc`'s contract exactly as `System`'s does; the
// counting only touches atomics and destructor-free thread-locals and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract (non-zero size),
        // which is the contract of `System.alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(true, layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's contract is `System.alloc_zeroed`'s.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(true, layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator, i.e. by `System`, with `layout`
        // (the caller's contract), so `System.dealloc` may free it.
        unsafe { System.dealloc(ptr, layout) };
        note(false, -(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`, and `new_size` is valid for it
        // (the caller's contract), which is what `System.realloc` requires.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(true, new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Allocations (including reallocations) made by the whole process through
/// [`CountingAlloc`]; stays 0 if it is not the global allocator.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes ever allocated by the whole process through [`CountingAlloc`] (growth only).
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}

/// Allocations made by the calling thread through [`CountingAlloc`].
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}

/// Bytes allocated minus bytes freed by the calling thread through [`CountingAlloc`].
pub fn thread_live_bytes() -> i64 {
    THREAD_LIVE_BYTES.with(Cell::get)
}

/// Whether [`CountingAlloc`] is the global allocator: an allocation made on purpose
/// moves the counter.
pub fn counting_allocator_installed() -> bool {
    let before = thread_allocations();
    let v: Vec<u8> = black_box(Vec::with_capacity(black_box(64)));
    drop(black_box(v));
    thread_allocations() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    #[test]
    fn allocator_counts() {
        assert!(counting_allocator_installed());
        let live = thread_live_bytes();
        let v = black_box(vec![0u8; 1000]);
        assert!(thread_live_bytes() - live >= 1000);
        drop(v);
        assert_eq!(thread_live_bytes(), live);
        assert!(allocations() > 0 && allocated_bytes() >= 1000);
    }
}
