//! Memory held by per-client state, measured by counting what the
//! allocator hands out (this test binary's global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use modelwatch::detect::clients;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A window of a million requests from a million distinct clients (the
/// worst case: every client new, every one under the per-client minimum):
/// the per-client test's own state, beyond the ids the window already
/// holds, stays within 200 bytes per client at its peak (its hash tables
/// while they grow; measured 123 on 2026-11-28), and is freed with the
/// window.
#[test]
fn per_client_state_for_a_million_clients_is_bounded_by_the_window() {
    const CLIENTS: usize = 1_000_000;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("client-{i:07}")).collect();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let requests = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (Some(id.as_str()), i % 7 == 0));
    let worst = clients::worst(requests, (10, 1000));
    let peak = PEAK.load(Ordering::SeqCst) - before;
    drop(worst);
    let after = LIVE.load(Ordering::SeqCst) - before;
    eprintln!(
        "per-client state for {CLIENTS} distinct clients: peak {:.1} MB ({:.1} bytes per client), {after} bytes kept",
        peak as f64 / 1e6,
        peak as f64 / CLIENTS as f64
    );
    assert!(peak <= 200 * CLIENTS, "peak {peak} bytes");
    assert_eq!(after, 0, "nothing outlives the window");
}
