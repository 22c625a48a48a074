//! Prometheus metrics about the monitor itself, and the health flags behind
//! `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn seconds_histogram() -> Histogram {
    // 100 us to ~100 s.
    Histogram::new(exponential_buckets(1e-4, 2.5, 16))
}

/// Every metric the monitor exports, registered once.
pub struct Metrics {
    registry: Registry,
    pub messages: Counter,
    pub events_decoded: Counter,
    rejected: Family<Labels, Counter>,
    pub reference_events: Counter,
    pub replayed_events: Counter,
    windows: Family<Labels, Counter>,
    pub windows_failed: Counter,
    pub scores: Counter,
    alerts: Family<Labels, Counter>,
    detector_duration: Family<Labels, Histogram, fn() -> Histogram>,
    store_write: Histogram,
    consumer_lag: Family<Labels, Gauge>,
    pub positions_held: Gauge,
    pub pairs_joined: Counter,
    pub halves_waiting: Gauge,
    unpaired: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    outbox_backlog: Family<Labels, Gauge>,
    step_retries: Family<Labels, Counter>,
    pub windows_quarantined: Counter,
    pub models_evicted: Counter,
    pub reference_events_dropped: Counter,
    pub revocations: Counter,
    pub events_returned: Counter,
    pub source_pauses: Counter,
    pub exempt_requests: Counter,
    pub history_unread: Counter,
    ready: Gauge,
    rejected_summary: Mutex<BTreeMap<String, u64>>,
    /// Models with a series of their own, at most `max_model_labels`; the
    /// rest share `model="_other"`, so sprayed names cannot grow the series.
    model_labels: Mutex<std::collections::BTreeSet<String>>,
    max_model_labels: std::sync::atomic::AtomicUsize,
    alerts_total: Counter,
    windows_total: Counter,
    device: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` and hands it back, so the constructor reads as a list.
fn reg<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

fn with_unit<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

impl Metrics {
    // Over 80 lines: one registration per metric, a flat list that reads
    // best whole (and in the order `/metrics` prints them).
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("modelwatch");
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
            .set(1);
        r.register(
            "build_info",
            "1, labelled with the version of this binary",
            build,
        );
        Self {
            messages: reg(
                &mut r,
                "messages",
                "messages read from the source",
                Counter::default(),
            ),
            events_decoded: reg(
                &mut r,
                "events_decoded",
                "telemetry events decoded from messages",
                Counter::default(),
            ),
            rejected: reg(
                &mut r,
                "messages_rejected",
                "undecodable messages sent to the dead-letter destination, by reason",
                Family::<Labels, Counter>::default(),
            ),
            reference_events: reg(
                &mut r,
                "reference_events",
                "events taken into model references",
                Counter::default(),
            ),
            replayed_events: reg(
                &mut r,
                "replayed_events",
                "events skipped because a stored window or reference already holds them",
                Counter::default(),
            ),
            windows: reg(
                &mut r,
                "windows_scored",
                "windows scored and stored, by model",
                Family::<Labels, Counter>::default(),
            ),
            windows_failed: reg(
                &mut r,
                "windows_failed",
                "windows whose scoring failed (stored with their error)",
                Counter::default(),
            ),
            scores: reg(&mut r, "scores", "scores written", Counter::default()),
            alerts: reg(
                &mut r,
                "alerts",
                "alerts written, by severity and status",
                Family::<Labels, Counter>::default(),
            ),
            detector_duration: with_unit(
                &mut r,
                "detector_duration",
                "time one detector took on one window, by detector and device",
                Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
                    seconds_histogram,
                ),
            ),
            store_write: with_unit(
                &mut r,
                "store_write_duration",
                "time to write one window's results",
                seconds_histogram(),
            ),
            consumer_lag: reg(
                &mut r,
                "kafka_consumer_lag",
                "messages between the consumer position and the partition's high watermark",
                Family::<Labels, Gauge>::default(),
            ),
            notifications: reg(
                &mut r,
                "notifications",
                "alert notifications attempted, by receiver and outcome (sent, failed)",
                Family::<Labels, Counter>::default(),
            ),
            outbox_backlog: reg(
                &mut r,
                "outbox_backlog",
                "notifications waiting for delivery, by receiver",
                Family::<Labels, Gauge>::default(),
            ),
            positions_held: reg(
                &mut r,
                "positions_held",
                "source positions waiting for their windows to be stored",
                Gauge::default(),
            ),
            pairs_joined: reg(
                &mut r,
                "pairs_joined",
                "request and response halves joined into one event per row",
                Counter::default(),
            ),
            halves_waiting: reg(
                &mut r,
                "halves_waiting",
                "halves of pairs waiting for their other half (their messages stay unacknowledged)",
                Gauge::default(),
            ),
            unpaired: reg(
                &mut r,
                "unpaired",
                "halves that met no other half within join.within_secs, by side and what became of them (scored alone, dead-lettered)",
                Family::<Labels, Counter>::default(),
            ),
            step_retries: reg(
                &mut r,
                "step_retries",
                "failed attempts of a pipeline step that were retried, by step",
                Family::<Labels, Counter>::default(),
            ),
            windows_quarantined: reg(
                &mut r,
                "windows_quarantined",
                "windows whose scores could not be stored (stored with the error instead)",
                Counter::default(),
            ),
            models_evicted: reg(
                &mut r,
                "models_evicted",
                "models forgotten after limits.idle_model_secs without an event",
                Counter::default(),
            ),
            reference_events_dropped: reg(
                &mut r,
                "reference_events_dropped",
                "events of unfinished references dropped when their model was evicted",
                Counter::default(),
            ),
            revocations: reg(
                &mut r,
                "partition_revocations",
                "consumer-group rebalances that took this member's partitions",
                Counter::default(),
            ),
            events_returned: reg(
                &mut r,
                "events_returned",
                "events of open windows and references dropped at a revocation, to be read again from the last commit",
                Counter::default(),
            ),
            source_pauses: reg(
                &mut r,
                "source_pauses",
                "times the consumer paused its partitions because the pipeline was saturated",
                Counter::default(),
            ),
            exempt_requests: reg(
                &mut r,
                "exempt_requests",
                "requests of detect.exempt_clients, scored by the window-level detectors but not tested per client",
                Counter::default(),
            ),
            history_unread: reg(
                &mut r,
                "history_unread",
                "windows scored without their stored past (class prior and client volume unscored) because it could not be read",
                Counter::default(),
            ),
            ready: reg(
                &mut r,
                "ready",
                "1 when /readyz answers ready (device initialised, store reachable, partitions assigned, no step retrying), else 0; read at each scrape",
                Gauge::default(),
            ),
            device: reg(
                &mut r,
                "device_info",
                "1 for the device scoring runs on (backend flex is burn's CPU backend), with the device the config asked for",
                Family::default(),
            ),
            registry: r,
            rejected_summary: Mutex::new(BTreeMap::new()),
            model_labels: Mutex::new(Default::default()),
            max_model_labels: std::sync::atomic::AtomicUsize::new(1000),
            alerts_total: Counter::default(),
            windows_total: Counter::default(),
        }
    }

    /// Records the device scoring opened, so that a fallback to the CPU
    /// under `device = "auto"` shows on a dashboard and in an alert rule,
    /// not only in the start-up log.
    pub fn set_device(&self, backend: &str, adapter: &str, kind: &str, requested: &str) {
        let l = [
            ("backend", backend),
            ("adapter", adapter),
            ("kind", kind),
            ("requested", requested),
        ];
        self.device.get_or_create(&labels(&l)).set(1);
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        if let Ok(mut m) = self.rejected_summary.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn unpaired(&self, side: &str, outcome: &str) {
        self.unpaired
            .get_or_create(&labels(&[("side", side), ("outcome", outcome)]))
            .inc();
    }

    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.rejected_summary
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Caps the models that get a series of their own.
    pub fn limit_model_labels(&self, n: usize) {
        self.max_model_labels.store(n, Ordering::Relaxed);
    }

    fn model_label(&self, model: &str) -> String {
        let max = self.max_model_labels.load(Ordering::Relaxed);
        let Ok(mut known) = self.model_labels.lock() else {
            return "_other".into();
        };
        if known.contains(model) || known.len() < max {
            known.insert(model.to_string());
            model.to_string()
        } else {
            "_other".into()
        }
    }

    pub fn window_scored(&self, model: &str) {
        self.windows
            .get_or_create(&labels(&[("model", &self.model_label(model))]))
            .inc();
        self.windows_total.inc();
    }

    pub fn windows(&self) -> u64 {
        self.windows_total.get()
    }

    pub fn alert(&self, severity: &str, status: &str) {
        self.alerts
            .get_or_create(&labels(&[("severity", severity), ("status", status)]))
            .inc();
        self.alerts_total.inc();
    }

    pub fn alerts(&self) -> u64 {
        self.alerts_total.get()
    }

    pub fn detector_took(&self, detector: &str, device: &str, took: Duration) {
        self.detector_duration
            .get_or_create(&labels(&[("detector", detector), ("device", device)]))
            .observe(took.as_secs_f64());
    }

    pub fn store_write_took(&self, took: Duration) {
        self.store_write.observe(took.as_secs_f64());
    }

    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&labels(&[
                ("topic", topic),
                ("partition", &partition.to_string()),
            ]))
            .set(lag);
    }

    pub fn notification(&self, receiver: &str, outcome: &str) {
        self.notifications
            .get_or_create(&labels(&[("receiver", receiver), ("outcome", outcome)]))
            .inc();
    }

    pub fn step_retry(&self, step: &str) {
        self.step_retries
            .get_or_create(&labels(&[("step", step)]))
            .inc();
    }

    pub fn set_backlog(&self, receiver: &str, pending: i64) {
        self.outbox_backlog
            .get_or_create(&labels(&[("receiver", receiver)]))
            .set(pending);
    }

    /// Whether the monitor is ready, as `/readyz` would answer now.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// What `/healthz` and `/readyz` report.
#[derive(Default)]
pub struct Health {
    /// Unix milliseconds of the pipeline loop's last turn.
    loop_beat_ms: AtomicI64,
    pub device_ready: AtomicBool,
    pub store_reachable: AtomicBool,
    pub partitions_assigned: AtomicBool,
    /// The pipeline step failing and being retried, with its last error.
    failing_step: Mutex<Option<String>>,
}

impl Health {
    pub fn beat(&self) {
        self.loop_beat_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Alive when the pipeline loop turned within `stale`.
    pub fn alive(&self, stale: Duration) -> bool {
        let last = self.loop_beat_ms.load(Ordering::Relaxed);
        last > 0 && chrono::Utc::now().timestamp_millis() - last <= stale.as_millis() as i64
    }

    /// The readiness conditions not met yet; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let mut missing: Vec<String> = Vec::new();
        if !self.device_ready.load(Ordering::Relaxed) {
            missing.push("scoring device not initialised".into());
        }
        if !self.store_reachable.load(Ordering::Relaxed) {
            missing.push("store unreachable".into());
        }
        if !self.partitions_assigned.load(Ordering::Relaxed) {
            missing.push("no partitions assigned".into());
        }
        if let Some(step) = self.lock_failing().as_ref() {
            missing.push(format!("retrying {step}"));
        }
        missing
    }

    pub fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }

    /// Records the step being retried and why (`None` once it succeeded).
    pub fn set_failing(&self, step: Option<String>) {
        *self.lock_failing() = step;
    }

    fn lock_failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing_step.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_prometheus_conventions() {
        let m = Metrics::new();
        m.messages.inc();
        m.reject("invalid_json");
        m.detector_took("feature_drift", "flex:cpu", Duration::from_millis(3));
        let text = m.encode();
        assert!(text.contains("modelwatch_messages_total 1"), "{text}");
        assert!(
            text.contains(r#"modelwatch_messages_rejected_total{reason="invalid_json"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# UNIT modelwatch_detector_duration_seconds seconds"),
            "{text}"
        );
        assert!(text.contains(r#"modelwatch_detector_duration_seconds_count{detector="feature_drift",device="flex:cpu"} 1"#), "{text}");
        let build = format!(
            r#"modelwatch_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        m.set_device("flex", "cpu", "flex", "auto");
        assert!(
            m.encode().contains(r#"modelwatch_device_info{backend="flex",adapter="cpu",kind="flex",requested="auto"} 1"#),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn readiness_lists_what_is_missing() {
        let h = Health::default();
        assert_eq!(h.not_ready().len(), 3);
        assert!(!h.alive(Duration::from_secs(30)));
        h.beat();
        Health::set(&h.device_ready, true);
        Health::set(&h.store_reachable, true);
        Health::set(&h.partitions_assigned, true);
        assert!(h.not_ready().is_empty());
        assert!(h.alive(Duration::from_secs(30)));
    }
}
