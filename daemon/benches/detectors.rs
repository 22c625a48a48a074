//! `cargo bench --bench detectors`: the KS kernel on the configured device
//! against a host sort-merge KS in f64 run in the same process, so the
//! figures read as ratios on a shared, noisy machine.
//!
//! MODELWATCH_BENCH_DEVICE=cpu|wgpu-cpu|gpu picks the device (default cpu).

use std::time::{Duration, Instant};

use modelwatch::config::DeviceChoice;
use modelwatch::detect::engine::Engine;

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
}

fn columns(features: usize, rows: usize, shift: f64, seed: &mut u64) -> Vec<Vec<f64>> {
    (0..features)
        .map(|_| {
            (0..rows)
                .map(|_| ((lcg(seed) + shift) * 1000.0).round() / 1000.0)
                .collect()
        })
        .collect()
}

/// The same integer statistic by sorting and merging on the host.
fn host_max_diff(r: &[f64], c: &[f64]) -> u64 {
    let mut r = r.to_vec();
    let mut c = c.to_vec();
    r.sort_by(f64::total_cmp);
    c.sort_by(f64::total_cmp);
    let (n, m) = (r.len() as i64, c.len() as i64);
    let (mut i, mut j, mut best) = (0usize, 0usize, 0u64);
    while i < r.len() || j < c.len() {
        let z = match (r.get(i), c.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        while i < r.len() && r[i] <= z {
            i += 1;
        }
        while j < c.len() && c[j] <= z {
            j += 1;
        }
        best = best.max((i as i64 * m - j as i64 * n).unsigned_abs());
    }
    best
}

fn time<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = f(); // warm: kernel compilation is not what is measured
    let start = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || start.elapsed() < Duration::from_millis(500) {
        out = f();
        runs += 1;
    }
    (start.elapsed() / runs, out)
}

fn main() {
    let device = match std::env::var("MODELWATCH_BENCH_DEVICE").as_deref() {
        Ok("wgpu-cpu") => DeviceChoice::WgpuCpu,
        Ok("gpu") => DeviceChoice::Gpu,
        _ => DeviceChoice::Cpu,
    };
    let engine = Engine::open(device, 1 << 26).expect("bench device");
    println!("device {}", engine.info().label());
    println!(
        "{:>8} {:>8} {:>8} {:>12} {:>12} {:>14} {:>8}",
        "ref", "window", "features", "device ms", "host ms", "device rows/s", "ratio"
    );
    let mut seed = 42u64;
    for (n, m, f) in [
        (1000, 500, 8),
        (1000, 500, 64),
        (5000, 1000, 8),
        (10_000, 2000, 8),
    ] {
        let refs = columns(f, n, 0.0, &mut seed);
        let curs = columns(f, m, 0.05, &mut seed);
        let (dt, dev) = time(|| engine.ks_max_diffs(&refs, &curs).expect("ks"));
        let (ht, host) = time(|| {
            refs.iter()
                .zip(&curs)
                .map(|(r, c)| host_max_diff(r, c))
                .collect::<Vec<_>>()
        });
        assert_eq!(dev, host, "device and host disagree");
        println!(
            "{n:>8} {m:>8} {f:>8} {:>12.2} {:>12.2} {:>14.0} {:>7.2}x",
            dt.as_secs_f64() * 1e3,
            ht.as_secs_f64() * 1e3,
            (m * f) as f64 / dt.as_secs_f64(),
            dt.as_secs_f64() / ht.as_secs_f64()
        );
    }
}
