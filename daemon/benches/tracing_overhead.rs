//! `cargo bench --bench tracing_overhead`: the whole pipeline over the demo
//! fleet (12,000 events, 36 windows, flex, in-memory SQLite) without any
//! tracing subscriber, then with the subscriber the daemon installs by
//! default (logs at info, OpenTelemetry spans for every message and window,
//! no exporter). Runs alternate, and the figure is the ratio of medians.

use std::time::{Duration, Instant};

use modelwatch::config::Config;
use modelwatch::detect::DeviceChoice;
use modelwatch::ingest::SourceKind;
use modelwatch::ingest::demo;
use modelwatch::telemetry::LogConfig;

fn config() -> Config {
    let mut c = Config::default();
    c.source.kind = SourceKind::Demo;
    c.store.url = "sqlite::memory:".into();
    c.engine.device = DeviceChoice::Cpu;
    c.telemetry.listen = String::new();
    c.models.extend(demo::model_configs());
    c
}

fn run_once(rt: &tokio::runtime::Runtime) -> Duration {
    let start = Instant::now();
    let metrics = rt
        .block_on(modelwatch::daemon::run(
            config(),
            tokio_util::sync::CancellationToken::new(),
            false,
        ))
        .expect("pipeline");
    assert_eq!(metrics.windows(), 36);
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // One thread, so that a scoped subscriber covers every span.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = LogConfig::default();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        off.push(tracing::subscriber::with_default(
            tracing::subscriber::NoSubscriber::default(),
            || run_once(&rt),
        ));
        let (subscriber, provider) =
            modelwatch::telemetry::subscriber(&log, &config().telemetry.otlp).unwrap();
        on.push(tracing::subscriber::with_default(subscriber, || {
            run_once(&rt)
        }));
        let _ = provider.shutdown();
    }
    let (a, b) = (median(off), median(on));
    println!("pipeline over 12000 events, median of 7 runs each");
    println!("  no subscriber:        {:>8.1} ms", a.as_secs_f64() * 1e3);
    println!("  default tracing:      {:>8.1} ms", b.as_secs_f64() * 1e3);
    println!(
        "  overhead ratio:       {:>8.3}x",
        b.as_secs_f64() / a.as_secs_f64()
    );
}
