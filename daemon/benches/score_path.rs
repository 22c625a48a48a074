//! `cargo bench --bench score_path`: what fitting a reference and scoring a
//! window cost in the daemon's scorer (flex, default detectors), for
//! references of 1k, 10k and 50k rows x 50 numeric features and windows of
//! 5,000 rows: the fit once, then ten windows, each timed alone (median),
//! with the per-detector split of the median window. The yardstick beside
//! it, in the same process, is the least a window can cost: sorting its 50
//! columns (every rank statistic starts there). `MODELWATCH_BENCH_SIZES`
//! (comma-separated reference rows) narrows the run.

use std::time::{Duration, Instant};

use modelwatch::detect::{DeviceChoice, Engine, Scorer, stats};
use modelwatch::event::TelemetryEvent;

const FEATURES: usize = 50;
const WINDOW: usize = 5000;
const WINDOWS: usize = 10;

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
}

/// Roughly normal values (a sum of four uniforms), rounded as logged
/// features often are, so ties occur.
fn events(n: usize, shift: f64, seed: &mut u64) -> Vec<TelemetryEvent> {
    (0..n)
        .map(|_| {
            let features: serde_json::Map<String, serde_json::Value> = (0..FEATURES)
                .map(|j| {
                    let v: f64 = (0..4).map(|_| lcg(seed)).sum::<f64>() - 2.0;
                    let v = if j >= FEATURES - 5 { v + shift } else { v };
                    (format!("f{j:02}"), ((v * 1e4).round() / 1e4).into())
                })
                .collect();
            let p = 0.5 + 0.5 * lcg(seed);
            serde_json::from_value(serde_json::json!({
                "model": "m", "ts": "2026-01-01T00:00:00Z",
                "features": features, "output": {"probabilities": [p, 1.0 - p]},
            }))
            .expect("event")
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MODELWATCH_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000]);
    let scorer = Scorer::with_config(
        Engine::open(DeviceChoice::Cpu, 1 << 26).expect("flex"),
        &modelwatch::detect::DetectConfig::default(),
    );
    println!(
        "{:>9} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "reference", "fit ms", "window ms", "sort ms", "ratio", "scores"
    );
    let mut seed = 11u64;
    for rows in sizes {
        let reference = events(rows, 0.0, &mut seed);
        let windows: Vec<Vec<TelemetryEvent>> = (0..WINDOWS)
            .map(|w| events(WINDOW, if w % 2 == 1 { 0.2 } else { 0.0 }, &mut seed))
            .collect();
        let started = Instant::now();
        let fitted = scorer.fit("m", &reference, &[], WINDOW).expect("fit");
        let fit = started.elapsed();
        let mut took = Vec::new();
        let mut sorts = Vec::new();
        let mut frames = Vec::new();
        let mut last = None;
        for w in &windows {
            let started = Instant::now();
            let scored = scorer.score(&fitted, w).expect("score");
            took.push(started.elapsed());
            let started = Instant::now();
            let frame = modelwatch::detect::Frame::build(w, &fitted.schema, &fitted.classes);
            frames.push(started.elapsed());
            std::hint::black_box(frame);
            let columns: Vec<Vec<f64>> = (0..FEATURES)
                .map(|j| {
                    w.iter()
                        .map(|e| {
                            e.features[format!("f{j:02}").as_str()]
                                .as_number()
                                .unwrap_or(0.0)
                        })
                        .collect()
                })
                .collect();
            let started = Instant::now();
            let sorted: usize = columns.iter().map(|c| stats::sorted(c).len()).sum();
            sorts.push(started.elapsed());
            std::hint::black_box(sorted);
            last = Some(scored);
        }
        let (window, sort, frame) = (median(took), median(sorts), median(frames));
        let scored = last.expect("ten windows");
        println!(
            "{rows:>9} {:>9.1} {:>10.2} {:>10.2} {:>9.1}x {:>8}",
            fit.as_secs_f64() * 1e3,
            window.as_secs_f64() * 1e3,
            sort.as_secs_f64() * 1e3,
            window.as_secs_f64() / sort.as_secs_f64(),
            scored.scores.len()
        );
        println!(
            "{:>20} {:<24} {:>8.2} ms",
            "",
            "columns from events",
            frame.as_secs_f64() * 1e3
        );
        for (name, t) in &scored.timings {
            println!("{:>20} {:<24} {:>8.2} ms", "", name, t.as_secs_f64() * 1e3);
        }
    }
}
