//! Independent per-column work spread over the machine's cores: a window's
//! per-feature statistics and a reference's fit parts do not depend on
//! each other, and on a multi-core machine one scoring thread otherwise
//! leaves the other cores idle while a window waits.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fewer columns than this per thread are not worth a thread's start-up
/// (tens of microseconds, against a fraction of a millisecond per column of
/// a window of thousands of rows).
const MIN_PER_THREAD: usize = 4;

/// `[engine] host_threads`: 0 for every core.
static LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Caps the threads any one job uses (0: one per core), for a daemon that
/// shares its machine.
pub fn limit(threads: usize) {
    LIMIT.store(threads, Ordering::Relaxed);
}

/// The threads one job may use: the cores this process may use (its
/// affinity mask and cgroup quota, read once), under the configured limit.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    match LIMIT.load(Ordering::Relaxed) {
        0 => cores,
        limit => cores.min(limit),
    }
}

/// `f(0..n)` in order, on a thread per core, up to one per
/// `MIN_PER_THREAD` indices.
pub fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    map_runs(n, cores().min(n / MIN_PER_THREAD), f)
}

/// `f(0..n)` in order, on `threads` threads (at least one) that each take
/// the next index not yet taken. Not fixed runs: a thread that shares its
/// core (with the file reader, another job) then takes fewer indices
/// rather than holding the others up. A panic in `f` is raised again on
/// the caller's thread, where the scorer's guard turns it into an error; a
/// thread that cannot be started (a process at its thread limit) leaves
/// its share to the others and the caller.
pub fn map_runs<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let take = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(n).collect();
    std::thread::scope(|scope| {
        let spawned: Vec<_> = (1..threads.min(n))
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, take).ok())
            .collect();
        let mut parts = vec![take()];
        for h in spawned {
            parts.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        for (i, v) in parts.into_iter().flatten() {
            slots[i] = Some(v);
        }
    });
    slots
        .into_iter()
        .map(|v| v.expect("every index is taken once"))
        .collect()
}

/// `a` and `b` at once: two independent parts of one job (one after the
/// other where a thread cannot be started).
pub fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if cores() == 1 {
        return (a(), b());
    }
    // Taken by whichever thread runs it: the spawned one, or the caller's
    // when the spawn fails.
    let a = std::sync::Mutex::new(Some(a));
    let run = || a.lock().ok().and_then(|mut a| a.take()).map(|a| a());
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().spawn_scoped(scope, run);
        let b = b();
        let a = match spawned {
            Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            Err(_) => run(),
        };
        (a.expect("the first part ran once"), b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_in_order() {
        for n in [0, 1, 3, 4, 7, 8, 9, 31, 100] {
            let got = map(n, |i| i * 2);
            assert_eq!(got, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "n = {n}");
            for threads in 1..=5 {
                let got = map_runs(n, threads, |i| i * 2);
                assert_eq!(got, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "n = {n}");
            }
        }
        assert_eq!(join(|| 1, || 2), (1, 2));
    }

    #[test]
    fn a_held_up_thread_leaves_the_rest_to_the_others() {
        // Index 0 waits until every other index is done. With the indices
        // cut into fixed runs, its run's later indices wait behind it and
        // it times out; taken one at a time, the other thread does them.
        let n = 16;
        let done = AtomicUsize::new(0);
        let got = map_runs(n, 2, |i| {
            if i > 0 {
                done.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            let started = std::time::Instant::now();
            while done.load(Ordering::SeqCst) < n - 1 {
                if started.elapsed() > std::time::Duration::from_secs(10) {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            true
        });
        assert_eq!(got, vec![true; n], "index 0 waited for indices behind it");
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            map_runs(64, 4, |i| if i == 40 { panic!("column 40") } else { i })
        });
        let payload = caught.expect_err("the panic is raised again");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"column 40"));
        let caught = std::panic::catch_unwind(|| join(|| panic!("left"), || 1));
        assert!(caught.is_err());
    }
}
