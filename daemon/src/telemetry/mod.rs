//! The monitor's own observability: logs, and the counters behind its
//! summaries (exported as metrics in a later stage).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber: human text by default, JSON on request,
/// filtered by `RUST_LOG` when set, else by the config. Logs go to stderr so
/// that stdout stays for command output.
pub fn init_logging(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Counters of what the pipeline saw and did.
#[derive(Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub events: AtomicU64,
    pub reference_events: AtomicU64,
    pub replayed_events: AtomicU64,
    pub windows: AtomicU64,
    pub windows_failed: AtomicU64,
    pub scores: AtomicU64,
    pub alerts: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn reject(&self, reason: &str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.rejected.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
