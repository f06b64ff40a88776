//! Allocations counted at the Rust allocator, for the bench's allocations per request.
//!
//! `Counting` wraps a [`GlobalAlloc`] and counts the calls and bytes of alloc (zeroed ones
//! included), dealloc and realloc in relaxed atomics. With the cargo feature `alloc-count` it is
//! the `#[global_allocator]` of every binary that links this crate: the sidecar, and the bare
//! Pingora example (`examples/bare_proxy.rs`, which names this module so it is linked). Unlike
//! `bench/malloc_count.c` (LD_PRELOAD over libc's malloc) it sees whatever allocator is linked
//! into the binary: the inner allocator is the one line `static GLOBAL` names, mimalloc, as in
//! the sidecar's release build (`main.rs`).
//!
//! The counts are read with [`global`]: the sidecar serves them on its admin port as
//! `GET /debug/allocations`, the bare proxy on a loopback listener of its own ([`serve`]); both
//! answer the JSON of [`Snapshot`]. Without the feature nothing is installed and [`global`]
//! answers `None`.
//!
//! Cost, with the feature: two relaxed atomic adds per allocator call, on counters every thread
//! shares (a contended cache line with several threads). It is for the bench's separate
//! allocation pass only; release images are built without it.

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// The process's allocator with the feature: counting over mimalloc, the allocator the
/// sidecar links (`main.rs`; the bare Pingora example links it through this too). Not in this
/// crate's own unit tests: `select.rs` installs a per-thread counter there, and a program has
/// one global allocator (the binaries and the integration tests get this one).
#[cfg(all(feature = "alloc-count", not(test)))]
#[global_allocator]
static GLOBAL: Counting<mimalloc::MiMalloc> = Counting::new(mimalloc::MiMalloc);

/// A [`GlobalAlloc`] that counts the calls into `A` and the bytes they ask for.
pub struct Counting<A> {
    inner: A,
    allocs: AtomicU64,
    alloc_bytes: AtomicU64,
    deallocs: AtomicU64,
    dealloc_bytes: AtomicU64,
    reallocs: AtomicU64,
    realloc_bytes: AtomicU64,
}

/// The counters at one moment, since the process started. `allocs` counts `alloc` and
/// `alloc_zeroed` calls (malloc, calloc and posix_memalign underneath `System`);
/// `realloc_bytes` sums the new sizes asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Where the figures come from, for the bench's report.
    pub counter: &'static str,
    /// The allocator underneath, e.g. `std::alloc::System`.
    pub allocator: &'static str,
    pub allocs: u64,
    pub alloc_bytes: u64,
    pub deallocs: u64,
    pub dealloc_bytes: u64,
    pub reallocs: u64,
    pub realloc_bytes: u64,
}

impl<A> Counting<A> {
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            allocs: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            deallocs: AtomicU64::new(0),
            dealloc_bytes: AtomicU64::new(0),
            reallocs: AtomicU64::new(0),
            realloc_bytes: AtomicU64::new(0),
        }
    }

    /// The counters now (each read on its own: other threads may move them in between).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counter: "rust-global-allocator",
            allocator: std::any::type_name::<A>(),
            allocs: self.allocs.load(Relaxed),
            alloc_bytes: self.alloc_bytes.load(Relaxed),
            deallocs: self.deallocs.load(Relaxed),
            dealloc_bytes: self.dealloc_bytes.load(Relaxed),
            reallocs: self.reallocs.load(Relaxed),
            realloc_bytes: self.realloc_bytes.load(Relaxed),
        }
    }

    fn count_alloc(&self, layout: Layout) {
        self.allocs.fetch_add(1, Relaxed);
        self.alloc_bytes.fetch_add(layout.size() as u64, Relaxed);
    }
}

// SAFETY: every method forwards to `A` with the caller's arguments unchanged; counting touches
// only atomics and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count_alloc(layout);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count_alloc(layout);
        // SAFETY: as `alloc`.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.deallocs.fetch_add(1, Relaxed);
        self.dealloc_bytes.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: `ptr` came from this allocator, hence from `inner`, with this layout.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.reallocs.fetch_add(1, Relaxed);
        self.realloc_bytes.fetch_add(new_size as u64, Relaxed);
        // SAFETY: as `dealloc`; `new_size` is the caller's, checked by the caller's contract.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// The process's counts when the `alloc-count` feature installed the counting allocator.
#[cfg(all(feature = "alloc-count", not(test)))]
pub fn global() -> Option<Snapshot> {
    Some(GLOBAL.snapshot())
}

/// Without the `alloc-count` feature (or in this crate's unit tests): nothing is counted.
#[cfg(not(all(feature = "alloc-count", not(test))))]
pub fn global() -> Option<Snapshot> {
    None
}

/// Answers every connection on `listener` with the JSON of [`global`] (`HTTP/1.1 200`, then
/// close), on a thread of its own: the bare proxy's stand-in for the sidecar's
/// `/debug/allocations`, since it has no admin port. One request at a time; any path.
pub fn serve(listener: TcpListener) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("alloc-count".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // The request head fits one read on loopback; its content does not matter.
                let mut head = [0u8; 1024];
                let _ = conn.read(&mut head);
                let body = serde_json::to_string(&global()).unwrap_or_default();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn each_call_and_its_bytes_are_counted() {
        let a = Counting::new(System);
        let layout = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: a non-zero layout; every pointer goes back with the layout it has.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "System gave no memory for 100 bytes");
            let p = a.realloc(p, layout, 300);
            a.dealloc(p, Layout::from_size_align(300, 8).unwrap());
            let z = a.alloc_zeroed(layout);
            a.dealloc(z, layout);
        }
        let want = Snapshot {
            counter: "rust-global-allocator",
            allocator: "std::alloc::System",
            allocs: 2,
            alloc_bytes: 200,
            deallocs: 2,
            dealloc_bytes: 400,
            reallocs: 1,
            realloc_bytes: 300,
        };
        assert_eq!(
            a.snapshot(),
            want,
            "100 bytes twice (once zeroed), one realloc to 300, two deallocs, over System"
        );
    }
}
