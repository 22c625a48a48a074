//! `cargo bench --bench ingest_path`: what one core does per event before
//! scoring: decode a `modelwatch-json` message, check it against the door's
//! limits, and push it into its window (eight numeric features, windows of
//! 1,000). The baseline, run alternately in the same process on the same
//! messages, is a bare `serde_json::Value` parse: the least any JSON input
//! costs. Prints events/s for both and their ratio (medians of 7 runs).

use std::hint::black_box;
use std::time::{Duration, Instant};

use modelwatch::decode::{DecoderName, Limits};
use modelwatch::event::{Positioned, SourcePos};
use modelwatch::window::{Progress, WindowKey, WindowSettings, Windower};

const EVENTS: usize = 200_000;

fn messages() -> Vec<Vec<u8>> {
    (0..EVENTS)
        .map(|i| {
            let f = |k: usize| ((i * 7919 + k * 104_729) % 10_000) as f64 / 1000.0;
            serde_json::json!({
                "model": "credit",
                "model_version": "v1",
                "ts": "2026-03-01T00:00:00Z",
                "request_id": format!("req-{i}"),
                "client_id": format!("c{}", i % 50),
                "features": {
                    "f0": f(0), "f1": f(1), "f2": f(2), "f3": f(3),
                    "f4": f(4), "f5": f(5), "f6": f(6), "f7": f(7),
                },
                "output": {"probabilities": [0.3, 0.7]},
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

fn decode_and_window(msgs: &[Vec<u8>]) -> Duration {
    let decoder = DecoderName::default().build(&Default::default());
    let limits = Limits::default();
    let mut windower = Windower::default();
    let key = WindowKey {
        model: "credit".into(),
        version: "v1".into(),
    };
    let settings = WindowSettings {
        count: 1000,
        duration: None,
    };
    windower.add_key(key.clone(), settings, Progress::default());
    let now = Instant::now();
    let start = Instant::now();
    let mut closed = 0;
    for (offset, m) in msgs.iter().enumerate() {
        limits.check_size(m).unwrap();
        for (index, event) in decoder.decode(m, None).unwrap().into_iter().enumerate() {
            limits.check(&event, None).unwrap();
            let pos = SourcePos {
                stream: "telemetry/0".into(),
                offset: offset as i64,
                index: index as i64,
            };
            closed += windower.push(&key, Positioned { event, pos }, now).len();
        }
    }
    assert_eq!(closed, EVENTS / 1000);
    start.elapsed()
}

fn bare_parse(msgs: &[Vec<u8>]) -> Duration {
    let start = Instant::now();
    for m in msgs {
        black_box(serde_json::from_slice::<serde_json::Value>(m).unwrap());
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let msgs = messages();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        bare.push(bare_parse(&msgs));
        ours.push(decode_and_window(&msgs));
    }
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    let (o, b) = (median(ours), median(bare));
    println!(
        "decode + limits + window: {:.0} events/s on one core; bare JSON parse: {:.0} events/s; ratio {:.2}",
        rate(o),
        rate(b),
        o.as_secs_f64() / b.as_secs_f64()
    );
}
