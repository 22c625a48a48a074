//! Independent per-column work spread over the machine's cores: a window's
//! per-feature statistics and a reference's fit parts do not depend on
//! each other, and on a multi-core machine one scoring thread otherwise
//! leaves the other cores idle while a window waits.

use std::sync::OnceLock;

/// Fewer items than this per thread are not worth a thread's start-up
/// (tens of microseconds against a fraction of a millisecond per column).
const MIN_PER_THREAD: usize = 4;

/// The cores this process may use (its affinity mask and cgroup quota),
/// read once.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f(0..n)` in order, the indices cut into contiguous runs, one per core.
/// A panic in `f` is raised again on the caller's thread, where the
/// scorer's guard turns it into an error.
pub fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = cores().min(n / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let run = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..n)
            .step_by(run)
            .map(|start| scope.spawn(move || (start..(start + run).min(n)).map(f).collect()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p: std::thread::ScopedJoinHandle<'_, Vec<T>>| {
                p.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    })
}

/// `a` and `b` at once: two independent parts of one job.
pub fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if cores() == 1 {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = b();
        (a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), b)
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
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught =
            std::panic::catch_unwind(|| map(64, |i| if i == 40 { panic!("column 40") } else { i }));
        assert!(caught.is_err());
        let caught = std::panic::catch_unwind(|| join(|| panic!("left"), || 1));
        assert!(caught.is_err());
    }
}
