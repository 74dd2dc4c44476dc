//! Bytes allocated by each thread, for the memory backstop
//! (`script_limits.max_memory_mb`).
//!
//! Rhai's size limits see a value only when a function is called on it; a
//! map filled key by key grows unmeasured. Resident memory read from /proc
//! costs microseconds, so it could only be sampled every few thousand
//! operations, and a script adding a megabyte a step overshot a 128 MiB
//! limit fourfold between samples. Counting in the allocator costs a
//! thread-local add per allocation and lets `on_progress` check on every
//! operation. A call runs on one thread from start to end, so the net
//! bytes its thread allocated since it started are what it holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialized and without a destructor: safe to touch from
    // inside the allocator, even while the thread is being torn down.
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: i64) {
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

/// Net bytes this thread has allocated (allocations minus frees) since it
/// started; only differences mean something.
pub fn allocated() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// The system allocator, counting per thread.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counting has
// no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;
