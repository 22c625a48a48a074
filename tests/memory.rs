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
/// The allocation counter is the process's: one test runs both
/// measurements in turn, so that no other test thread allocates or frees
/// while one is taken (the harness frees a finished test's buffers at any
/// moment).
#[test]
fn per_client_state_at_a_million_clients_is_bounded() {
    per_client_state_for_a_million_clients_is_bounded_by_the_window();
    the_state_a_window_keeps_for_volume_is_twenty_clients_at_a_million();
}

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

/// What outlives a window for the volume score: its 20 heaviest clients,
/// however many clients sent. The window's own count table (one entry per
/// client, as `Frame::build` keeps it) is dropped with the window.
fn the_state_a_window_keeps_for_volume_is_twenty_clients_at_a_million() {
    const CLIENTS: usize = 1_000_000;
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let counts: std::collections::HashMap<String, u64> = (0..CLIENTS)
        .map(|i| (format!("client-{i:07}"), 1 + (i % 13) as u64))
        .collect();
    let top = modelwatch::detect::top_clients(&counts);
    let peak = PEAK.load(Ordering::SeqCst) - before;
    drop(counts);
    let kept = LIVE.load(Ordering::SeqCst) - before;
    eprintln!(
        "volume state for {CLIENTS} distinct clients: window peak {:.1} MB, {kept} bytes kept for {} clients",
        peak as f64 / 1e6,
        top.len()
    );
    assert_eq!(top.len(), modelwatch::detect::history::TOP_CLIENTS);
    assert!(top.iter().all(|(_, n)| *n == 13), "{top:?}");
    assert!(kept <= 64 * 1024, "{kept} bytes kept");
    assert!(peak <= 200 * CLIENTS, "peak {peak} bytes");
}
