//! One TOML file, every field defaulted, then `MODELWATCH_*` environment
//! overrides. Unknown fields are errors, in the file and in the environment.
//!
//! Environment overrides name a path with double underscores:
//! `MODELWATCH_STORE__URL=postgres://...` sets `store.url`,
//! `MODELWATCH_SOURCE__KAFKA__BROKERS=host:9092` sets `source.kafka.brokers`.
//! Values are parsed as TOML when they parse (numbers, booleans, arrays) and
//! taken as strings otherwise. Variables without `__` are not config.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid environment override {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where telemetry comes from.
    #[serde(default)]
    pub source: SourceConfig,
    /// Where scores, references and alerts are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// The scoring engine and its device.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Global window defaults; `models.<name>` overrides them per model.
    #[serde(default)]
    pub windows: WindowConfig,
    /// How each model's reference is obtained.
    #[serde(default)]
    pub reference: ReferenceConfig,
    /// When a score becomes an alert.
    #[serde(default)]
    pub judge: JudgeConfig,
    /// Per-model overrides, keyed by model name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// The monitor's own logs.
    #[serde(default)]
    pub log: LogConfig,
    /// The monitor's own metrics, health endpoints and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Alert lifecycle: when a condition pages and when it resolves.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where alert transitions are delivered.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Optional detectors.
    #[serde(default)]
    pub detect: DetectConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    #[serde(default)]
    pub multivariate: MultivariateConfig,
    #[serde(default)]
    pub ood: OodConfig,
    #[serde(default)]
    pub confidence: ConfidenceConfig,
    #[serde(default)]
    pub drift: DriftConfig,
}

/// Per-feature drift: which test, which effect size and when it gates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Above this many reference rows the effect size must pass its
    /// threshold as well as the p-value (`gate = "auto"`).
    #[serde(default = "default_large_reference")]
    pub large_reference: usize,
    /// The effect-size threshold of every feature without its own.
    #[serde(default = "default_effect_threshold")]
    pub effect_threshold: f64,
    /// Raise a gating effect size's threshold to mean + 3 sd of its values
    /// on leave-one-out reference windows of the live size, where higher:
    /// an effect that noisy on clean windows is no evidence of drift.
    #[serde(default = "default_true")]
    pub calibrate: bool,
    /// Reference windows needed for that calibration.
    #[serde(default = "default_effect_band_windows")]
    pub min_band_windows: usize,
    /// Overrides by feature name (every model) or by `model/feature`, which wins.
    #[serde(default)]
    pub features: BTreeMap<String, FeatureDrift>,
}

const fn default_effect_band_windows() -> usize {
    5
}

const fn default_large_reference() -> usize {
    1000
}
const fn default_effect_threshold() -> f64 {
    0.1
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            large_reference: default_large_reference(),
            effect_threshold: default_effect_threshold(),
            calibrate: true,
            min_band_windows: default_effect_band_windows(),
            features: BTreeMap::new(),
        }
    }
}

impl DriftConfig {
    /// The settings of one feature of one model, overrides applied.
    pub fn resolve(&self, model: &str, feature: &str) -> FeatureDrift {
        let mut out = FeatureDrift::default();
        for key in [feature.to_string(), format!("{model}/{feature}")] {
            if let Some(f) = self.features.get(&key) {
                out.test = f.test.or(out.test);
                out.effect = f.effect.or(out.effect);
                out.effect_threshold = f.effect_threshold.or(out.effect_threshold);
                out.gate = f.gate.or(out.gate);
                out.bins = f.bins.or(out.bins);
                out.epsilon = f.epsilon.or(out.epsilon);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDrift {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<DriftTest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Bins of binned effect sizes (PSI, Jensen-Shannon, Hellinger) on
    /// numeric features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<Bins>,
    /// The proportion PSI gives an empty bin (default: 1e-4, or the smallest
    /// nonzero proportion / 1e6 when that is at most 1e-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bins {
    /// Sturges edges over the pooled sample with more than 20 distinct
    /// reference values, else one bin per value.
    Auto,
    Sturges,
    Values,
}

/// The hypothesis test of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftTest {
    /// KS for numeric features, chi-squared for categorical ones and for
    /// numeric ones with at most 5 distinct reference values.
    Auto,
    Ks,
    Chi2,
}

/// The effect size recorded with a feature's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectSize {
    /// Normalised Wasserstein for KS-tested features, Jensen-Shannon for
    /// chi-squared-tested ones.
    Auto,
    Wasserstein,
    Psi,
    JensenShannon,
    Hellinger,
    None,
}

/// When the effect size must pass its threshold for the score to alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// On references above `large_reference` rows.
    Auto,
    Always,
    /// Recorded, never required.
    Never,
}

/// Per-request out-of-distribution scoring (Mahalanobis distance under a
/// Ledoit-Wolf covariance) on numeric feature rows and on embeddings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A request is out of distribution beyond this quantile of the
    /// reference's own (cross-fitted) distances.
    #[serde(default = "default_ood_quantile")]
    pub quantile: f64,
    /// The first this many reference rows are fitted.
    #[serde(default = "default_ood_reference")]
    pub max_reference: usize,
    /// Folds of the cross-fit that sets the threshold.
    #[serde(default = "default_ood_folds")]
    pub folds: usize,
}

const fn default_ood_quantile() -> f64 {
    0.999
}
const fn default_ood_reference() -> usize {
    50_000
}
const fn default_ood_folds() -> usize {
    5
}

impl Default for OodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            quantile: default_ood_quantile(),
            max_reference: default_ood_reference(),
            folds: default_ood_folds(),
        }
    }
}

/// Confidence shift and expected accuracy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidenceConfig {
    /// True labels (`actual`) the reference needs before expected accuracy
    /// is isotonic-calibrated; below it the raw max probability is used.
    #[serde(default = "default_min_labels")]
    pub min_labels: usize,
    /// Reference windows of the live size needed for a calibrated band;
    /// with fewer, the band is the per-request spread over sqrt(window size).
    #[serde(default = "default_band_windows")]
    pub min_band_windows: usize,
}

const fn default_min_labels() -> usize {
    100
}
const fn default_band_windows() -> usize {
    10
}

impl Default for ConfidenceConfig {
    fn default() -> Self {
        Self {
            min_labels: default_min_labels(),
            min_band_windows: default_band_windows(),
        }
    }
}

/// Multivariate drift: an MMD^2 permutation test on each window's rows
/// (embeddings, or the numeric features standardised by the reference).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultivariateConfig {
    /// Off by default until its false-alarm rate is calibrated in the stream.
    #[serde(default)]
    pub enabled: bool,
    /// Permutations per window; the smallest possible p-value is 1/(1 + this),
    /// so it must exceed the number of tests in a window divided by alpha.
    #[serde(default = "default_permutations")]
    pub permutations: usize,
    /// The first this many reference rows are used (the kernel grows with the square).
    #[serde(default = "default_mmd_reference")]
    pub max_reference: usize,
    /// Seed of the permutations: the same window gives the same p-value.
    #[serde(default)]
    pub seed: u64,
    /// `mmd` (the permutation test) or `pca` (reconstruction error, far
    /// cheaper per window, judged against a band from the reference).
    #[serde(default)]
    pub method: MultivariateMethod,
    /// `pca`: keep the components that explain this share of the variance.
    #[serde(default = "default_pca_variance")]
    pub pca_variance: f64,
    /// `pca`: reference windows of the live size needed for a band from
    /// them; with fewer, cross-fitted per-row errors over sqrt(window size).
    #[serde(default = "default_band_windows")]
    pub min_band_windows: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultivariateMethod {
    #[default]
    Mmd,
    Pca,
}

const fn default_pca_variance() -> f64 {
    0.65
}

const fn default_permutations() -> usize {
    1000
}
const fn default_mmd_reference() -> usize {
    2000
}

impl Default for MultivariateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            permutations: default_permutations(),
            max_reference: default_mmd_reference(),
            seed: 0,
            method: MultivariateMethod::Mmd,
            pca_variance: default_pca_variance(),
            min_band_windows: default_band_windows(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Kafka consumer group (production).
    Kafka,
    /// NDJSON file, or `-` for standard input.
    File,
    /// Built-in simulated fleet with scheduled drift episodes.
    #[default]
    Demo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `kafka`, `file` or `demo`.
    #[serde(default)]
    pub kind: SourceKind,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub file: FileConfig,
    #[serde(default)]
    pub demo: DemoConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group id; instances sharing it split the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics carrying telemetry events.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Where undecodable messages go, with the reason in a header.
    #[serde(default = "default_dlq")]
    pub dead_letter_topic: String,
    /// Decoder per topic; topics not listed use `modelwatch-json`.
    #[serde(default)]
    pub decoders: BTreeMap<String, String>,
    /// Any librdkafka property, passed through verbatim to consumer and producer
    /// (for example `"security.protocol" = "SASL_SSL"`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "modelwatch".into()
}
fn default_topics() -> Vec<String> {
    vec!["model-telemetry".into()]
}
fn default_dlq() -> String {
    "modelwatch-dead-letter".into()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            group_id: default_group(),
            topics: default_topics(),
            dead_letter_topic: default_dlq(),
            decoders: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// NDJSON path, or `-` for standard input.
    #[serde(default = "default_file_path")]
    pub path: String,
    /// Where undecodable lines go (NDJSON with the reason); empty: log only.
    #[serde(default)]
    pub dead_letter_path: String,
}

fn default_file_path() -> String {
    "-".into()
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: default_file_path(),
            dead_letter_path: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Windows simulated per model (reference excluded).
    #[serde(default = "default_demo_windows")]
    pub windows_per_model: usize,
    /// Random seed; the same seed gives the same stream.
    #[serde(default = "default_demo_seed")]
    pub seed: u64,
}

const fn default_demo_windows() -> usize {
    12
}
const fn default_demo_seed() -> u64 {
    7
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            windows_per_model: default_demo_windows(),
            seed: default_demo_seed(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host/db` for production, `sqlite:PATH` or
    /// `sqlite::memory:` for the embedded store.
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Connection pool size.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
}

fn default_store_url() -> String {
    "sqlite:modelwatch.db".into()
}
const fn default_pool() -> u32 {
    4
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            max_connections: default_pool(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// A discrete GPU through wgpu when there is one, else burn's flex CPU backend.
    #[default]
    Auto,
    /// A hardware GPU through wgpu (discrete, then integrated); error if none.
    Gpu,
    /// burn's flex CPU backend.
    Cpu,
    /// wgpu on a software adapter such as Mesa lavapipe (tests).
    WgpuCpu,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto`, `gpu`, `cpu` or `wgpu-cpu`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Run every kernel once at start-up so the first window is not slow;
    /// readiness waits for it.
    #[serde(default = "default_true")]
    pub warmup: bool,
    /// Largest tensor, in elements, one kernel launch may touch; larger work is
    /// tiled. wgpu refuses single buffers near 4 GB.
    #[serde(default = "default_tile")]
    pub max_tile_elements: usize,
}

const fn default_true() -> bool {
    true
}
const fn default_tile() -> usize {
    1 << 26
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: DeviceChoice::default(),
            warmup: true,
            max_tile_elements: default_tile(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Close a window after this many events (0: no count limit).
    #[serde(default = "default_window_count")]
    pub count: usize,
    /// Close a window this many seconds after its first event, by event time,
    /// or when it has been open that long on the wall clock (0: no time limit).
    #[serde(default = "default_window_secs")]
    pub duration_secs: u64,
}

const fn default_window_count() -> usize {
    500
}
const fn default_window_secs() -> u64 {
    300
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            count: default_window_count(),
            duration_secs: default_window_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// Events taken from the stream as the reference of a model that has none
    /// (neither stored nor imported).
    #[serde(default = "default_ref_size")]
    pub size: usize,
}

const fn default_ref_size() -> usize {
    1000
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            size: default_ref_size(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Correction {
    /// Divide alpha by the number of tests in the window (family-wise control).
    #[default]
    Bonferroni,
    /// Compare each p-value with alpha as it is.
    None,
    /// Control the false-discovery rate across the window's tests at alpha.
    BenjaminiHochberg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Significance level of one window's family of tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Multiple-testing correction across the tests of one window.
    #[serde(default)]
    pub correction: Correction,
    /// Severity `critical` when the p-value is this many times below threshold.
    #[serde(default = "default_critical_factor")]
    pub critical_factor: f64,
    /// Severity `warning` when the p-value is this many times below threshold
    /// (and `info` when it is below threshold by less).
    #[serde(default = "default_warning_factor")]
    pub warning_factor: f64,
}

const fn default_warning_factor() -> f64 {
    10.0
}

const fn default_alpha() -> f64 {
    0.01
}
const fn default_critical_factor() -> f64 {
    1e6
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
            correction: Correction::default(),
            critical_factor: default_critical_factor(),
            warning_factor: default_warning_factor(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Window size in events for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_count: Option<usize>,
    /// Window duration in seconds for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// Reference size taken from the stream for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_size: Option<usize>,
    /// Class names, in the order of `output.probabilities` lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// tracing filter directive, overridden by `RUST_LOG`.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

fn default_log_filter() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            filter: default_log_filter(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints; empty disables them.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub otlp: OtlpConfig,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            otlp: OtlpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL (`http://collector:4317`). Empty: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// variables, else no export.
    #[serde(default)]
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Extra request headers (authentication); `OTEL_EXPORTER_OTLP_HEADERS` also applies.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Export timeout in seconds.
    #[serde(default = "default_otlp_timeout")]
    pub timeout_secs: u64,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

const fn default_otlp_timeout() -> u64 {
    10
}
fn default_service_name() -> String {
    "modelwatch".into()
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: None,
            headers: BTreeMap::new(),
            timeout_secs: default_otlp_timeout(),
            service_name: default_service_name(),
        }
    }
}

/// Hysteresis, as Prometheus' `for:`: a condition first seen makes a pending
/// alert (stored, not paged); it fires after `pending_windows` consecutive
/// windows past threshold and resolves after `resolve_windows` clean ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default = "default_pending_windows")]
    pub pending_windows: u32,
    #[serde(default = "default_resolve_windows")]
    pub resolve_windows: u32,
    /// Overrides by severity of the window (`critical = { pending_windows = 1 }`).
    #[serde(default)]
    pub per_severity: BTreeMap<String, Hysteresis>,
    /// Overrides by detector; a severity override wins over a detector one.
    #[serde(default)]
    pub per_detector: BTreeMap<String, Hysteresis>,
    /// Link put in every notification; `{model}`, `{detector}`, `{feature}`,
    /// `{model_version}` and `{dedup_key}` are replaced.
    #[serde(default)]
    pub link_template: String,
    /// How many of the latest windows an alert's evidence keeps.
    #[serde(default = "default_evidence_windows")]
    pub evidence_windows: usize,
}

const fn default_pending_windows() -> u32 {
    2
}
const fn default_resolve_windows() -> u32 {
    3
}
const fn default_evidence_windows() -> usize {
    5
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            pending_windows: default_pending_windows(),
            resolve_windows: default_resolve_windows(),
            per_severity: BTreeMap::new(),
            per_detector: BTreeMap::new(),
            link_template: String::new(),
            evidence_windows: default_evidence_windows(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hysteresis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_windows: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_windows: Option<u32>,
}

impl AlertsConfig {
    /// Windows past threshold before an alert of `detector` at `severity` pages.
    pub fn pending_for(&self, detector: &str, severity: &str) -> u32 {
        self.per_severity
            .get(severity)
            .and_then(|h| h.pending_windows)
            .or_else(|| {
                self.per_detector
                    .get(detector)
                    .and_then(|h| h.pending_windows)
            })
            .unwrap_or(self.pending_windows)
            .max(1)
    }

    /// Clean windows before a firing alert of `detector` resolves.
    pub fn resolve_for(&self, detector: &str) -> u32 {
        self.per_detector
            .get(detector)
            .and_then(|h| h.resolve_windows)
            .unwrap_or(self.resolve_windows)
            .max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverKind {
    /// Prometheus Alertmanager, API v2.
    Alertmanager,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Any HTTP endpoint: JSON body signed with HMAC-SHA256.
    Webhook,
    /// A Kafka topic of alert transitions.
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Unique name; notifications are queued per receiver.
    pub name: String,
    pub kind: ReceiverKind,
    /// Alertmanager base URL, PagerDuty events URL, or webhook URL.
    #[serde(default)]
    pub url: String,
    /// Lowest severity delivered: `info`, `warning` or `critical`.
    #[serde(default = "default_min_severity")]
    pub min_severity: String,
    /// Deliver only alerts whose labels (`model`, `model_version`,
    /// `detector`, `feature`, `severity`) equal these.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Alertmanager: re-send firing alerts this often, as Prometheus does.
    #[serde(default = "default_repeat_secs")]
    pub repeat_secs: u64,
    /// PagerDuty routing key / webhook secret, from this environment variable ...
    #[serde(default)]
    pub secret_env: String,
    /// ... or from this file. Secrets are never taken from the config itself.
    #[serde(default)]
    pub secret_file: String,
    /// Kafka receiver: topic and brokers (default: the source's brokers).
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub brokers: String,
    /// Request timeout in seconds.
    #[serde(default = "default_receiver_timeout")]
    pub timeout_secs: u64,
}

fn default_min_severity() -> String {
    "info".into()
}
const fn default_repeat_secs() -> u64 {
    60
}
const fn default_receiver_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    /// First retry delay of a failed delivery; doubles per attempt, with jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest delay between retries.
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
    /// When a finite source ends, wait this long for pending deliveries
    /// before exiting (they stay queued for the next start).
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

const fn default_retry_base_ms() -> u64 {
    500
}
const fn default_retry_max_secs() -> u64 {
    60
}
const fn default_drain_secs() -> u64 {
    10
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_secs: default_retry_max_secs(),
            drain_secs: default_drain_secs(),
        }
    }
}

/// Window and reference settings of one model, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub window_count: usize,
    pub window_duration: Option<Duration>,
    pub reference_size: usize,
    pub classes: Vec<String>,
}

impl Config {
    /// Reads `path` (when given), applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_sources(&text, std::env::vars())
    }

    /// Builds the config from file text and environment pairs; pure, for tests.
    pub fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MODELWATCH_") && k.contains("__"))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            // A value that parses as TOML (a number, a list) is taken typed,
            // unless only its string form fits the field: a group id `123`.
            let typed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"));
            let as_string = toml::Value::String(value.clone());
            match typed {
                Some(v) if !matches!(v, toml::Value::String(_)) => {
                    let mut trial = root.clone();
                    apply_override(&mut trial, &var, v)?;
                    let typed_fits = trial.clone().try_into::<Config>().is_ok();
                    let mut with_string = root.clone();
                    apply_override(&mut with_string, &var, as_string)?;
                    root = if !typed_fits && with_string.clone().try_into::<Config>().is_ok() {
                        with_string
                    } else {
                        trial
                    };
                }
                _ => apply_override(&mut root, &var, as_string)?,
            }
        }
        let config: Config = root
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.judge.alpha > 0.0 && self.judge.alpha < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "judge.alpha must lie in (0, 1), got {}",
                self.judge.alpha
            )));
        }
        if self.windows.count == 0 && self.windows.duration_secs == 0 {
            return Err(ConfigError::Invalid(
                "windows.count and windows.duration_secs cannot both be 0".into(),
            ));
        }
        if self.reference.size < 2 {
            return Err(ConfigError::Invalid(
                "reference.size must be at least 2".into(),
            ));
        }
        for (key, f) in &self.detect.drift.features {
            if let Some(e) = f.epsilon.filter(|e| !(*e > 0.0 && *e < 1.0)) {
                return Err(ConfigError::Invalid(format!(
                    "detect.drift.features.{key}.epsilon must lie in (0, 1), got {e}"
                )));
            }
        }
        let v = self.detect.multivariate.pca_variance;
        if !(v > 0.0 && v < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "detect.multivariate.pca_variance must lie in (0, 1), got {v}"
            )));
        }
        let q = self.detect.ood.quantile;
        if !(q > 0.5 && q < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "detect.ood.quantile must lie in (0.5, 1), got {q}"
            )));
        }
        if self.source.kind == SourceKind::Kafka && self.source.kafka.topics.is_empty() {
            return Err(ConfigError::Invalid("source.kafka.topics is empty".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.notify.receivers {
            if !names.insert(r.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "notify.receivers: name {:?} used twice",
                    r.name
                )));
            }
            if !["info", "warning", "critical"].contains(&r.min_severity.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "notify.receivers.{}: min_severity must be info, warning or critical",
                    r.name
                )));
            }
            let needs_url = r.kind != ReceiverKind::Kafka && r.kind != ReceiverKind::Pagerduty;
            if needs_url && r.url.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "notify.receivers.{}: url is required",
                    r.name
                )));
            }
            if r.kind == ReceiverKind::Kafka && r.topic.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "notify.receivers.{}: topic is required",
                    r.name
                )));
            }
            if r.kind == ReceiverKind::Pagerduty
                && r.secret_env.is_empty()
                && r.secret_file.is_empty()
            {
                return Err(ConfigError::Invalid(format!(
                    "notify.receivers.{}: the routing key needs secret_env or secret_file",
                    r.name
                )));
            }
        }
        for (name, m) in &self.models {
            if m.window_count == Some(0) && m.window_secs == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "models.{name}: window_count and window_secs cannot both be 0"
                )));
            }
        }
        Ok(())
    }

    /// The effective settings of `model`: its overrides over the global defaults.
    pub fn model_settings(&self, model: &str) -> ModelSettings {
        let m = self.models.get(model);
        let secs = m
            .and_then(|m| m.window_secs)
            .unwrap_or(self.windows.duration_secs);
        ModelSettings {
            window_count: m.and_then(|m| m.window_count).unwrap_or(self.windows.count),
            window_duration: (secs > 0).then(|| Duration::from_secs(secs)),
            reference_size: m
                .and_then(|m| m.reference_size)
                .unwrap_or(self.reference.size),
            classes: m.map(|m| m.classes.clone()).unwrap_or_default(),
        }
    }

    /// The effective config as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn apply_override(
    root: &mut toml::Table,
    var: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let path: Vec<String> = var["MODELWATCH_".len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            reason: "empty path segment".into(),
        });
    }
    let mut table = root;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            reason: format!("{seg} is not a table"),
        })?;
    }
    table.insert(path[path.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::from_sources("", []).unwrap();
        assert_eq!(c.source.kind, SourceKind::Demo);
        assert_eq!(c.windows.count, 500);
        assert_eq!(c.engine.device, DeviceChoice::Auto);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = Config::from_sources("[store]\nurll = \"x\"\n", []).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        let err =
            Config::from_sources("", [("MODELWATCH_STORE__NOPE".into(), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::from_sources(
            "[store]\nurl = \"sqlite:a.db\"\n[windows]\ncount = 10\n",
            [
                ("MODELWATCH_STORE__URL".into(), "postgres://x@y/z".into()),
                ("MODELWATCH_WINDOWS__COUNT".into(), "20".into()),
                (
                    "MODELWATCH_SOURCE__KAFKA__TOPICS".into(),
                    "[\"a\", \"b\"]".into(),
                ),
                ("MODELWATCH_UNRELATED".into(), "ignored".into()),
                ("MODELWATCH_SOURCE__KAFKA__GROUP_ID".into(), "123".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.store.url, "postgres://x@y/z");
        assert_eq!(c.windows.count, 20);
        assert_eq!(c.source.kafka.topics, vec!["a", "b"]);
        assert_eq!(c.source.kafka.group_id, "123");
    }

    #[test]
    fn model_overrides_apply() {
        let c = Config::from_sources(
            "[models.fraud]\nwindow_count = 50\nclasses = [\"ok\", \"fraud\"]\n",
            [],
        )
        .unwrap();
        let s = c.model_settings("fraud");
        assert_eq!(s.window_count, 50);
        assert_eq!(s.reference_size, 1000);
        assert_eq!(s.classes, vec!["ok", "fraud"]);
        assert_eq!(c.model_settings("other").window_count, 500);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::from_sources("[judge]\nalpha = 0.001\n", []).unwrap();
        let again = Config::from_sources(&c.to_toml(), []).unwrap();
        assert_eq!(again.judge.alpha, 0.001);
    }

    #[test]
    fn shipped_production_config_is_valid() {
        let text = include_str!("../../deploy/modelwatch.toml");
        let c = Config::from_sources(text, []).unwrap();
        assert_eq!(c.source.kind, SourceKind::Kafka);
        assert_eq!(c.model_settings("fraud-scorer").window_count, 1000);
    }

    #[test]
    fn invalid_alpha_is_rejected() {
        assert!(Config::from_sources("[judge]\nalpha = 2.0\n", []).is_err());
    }
}
