//! Stage 4: a closed window is scored against its model's reference.
//!
//! Each family has a detector: per-feature drift, confidence shift and output
//! distribution. The bulk work runs on burn (`engine`), the p-values in f64 on
//! the host (`stats`). Scoring blocks; `Scorer` runs on its own thread.

pub mod band;
pub mod clients;
pub mod confidence;
mod drift;
pub mod engine;
pub mod frame;
pub mod history;
pub mod linalg;
pub mod llm;
mod multivariate;
pub mod ood;
pub mod output;
pub mod parallel;
pub mod probing;
pub mod reconstruction;
pub mod stats;
pub mod steps;
pub mod threat;
pub mod volume;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use engine::{DeviceInfo, Engine};
pub use frame::{Frame, Schema};
pub use worker::ScoringHandle;

use crate::event::TelemetryEvent;
pub use confidence::ConfidenceConfig;
pub use drift::{
    Bins, DriftConfig, DriftTest, EffectSize, FeatureSettings, Gate, UNCALIBRATED_EFFECT_THRESHOLD,
};
pub use engine::{DeviceChoice, EngineConfig};
pub use history::{ClassPriorConfig, History, HistoryConfig};
pub use multivariate::{MultivariateConfig, MultivariateMethod};
pub use ood::OodConfig;
pub use probing::ProbingConfig;
use schemars::JsonSchema;
pub use steps::StepsConfig;
pub use volume::VolumeConfig;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("device error: {0}")]
    Device(String),
    #[error("cannot start the scoring thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("scoring failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Drift,
    Confidence,
    Output,
    /// Signals built on the others that point at misuse: out-of-distribution
    /// or adversarial inputs.
    Security,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Drift => "drift",
            Family::Confidence => "confidence",
            Family::Output => "output",
            Family::Security => "security",
        }
    }
}

/// One statistic for one feature (or output aspect) of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub detector: String,
    pub family: Family,
    /// The feature, or the output aspect (`max_probability`, `predicted_class`).
    pub feature: String,
    /// `ks` or `chi2`.
    pub test: String,
    pub statistic: f64,
    pub p_value: f64,
    pub n_reference: usize,
    pub n_window: usize,
    /// How the p-value was computed (`exact`, `asymptotic`, `chi2 dof=3`).
    pub method: String,
    /// On large references, the effect size that must also pass its
    /// threshold: p-values of big samples flag every tiny shift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
    /// The requests behind the statistic, most telling first, where it is
    /// made of requests (`req-17 client=shop-3 distance=9.41`): what an
    /// analyst looks at first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    /// For a score judged against a band (`test = "band"`), the band: the
    /// store turns it into the lines a dashboard draws at the window's
    /// threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<band::Band>,
    /// The attack the score is evidence for when it crosses, where it is a
    /// security signal; its ATLAS and OWASP ids go out with the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat: Option<threat::Threat>,
}

/// An effect size and the threshold it must reach for its score to alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// `wasserstein_normalised`, `jensen_shannon`, `psi` or `hellinger`.
    pub name: String,
    pub value: f64,
    /// What the value must reach. A detector sets the configured minimum
    /// (0 for none; without a band, the uncalibrated default); the judge
    /// raises it to the band's upper 1 - alpha prediction bound.
    pub threshold: f64,
    /// Whether the score needs the effect past threshold to alert; an
    /// effect recorded with `gate = "never"` only informs.
    #[serde(default = "gating_default")]
    pub gating: bool,
    /// The effect's spread on clean reference windows of the live size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<band::Band>,
}

fn gating_default() -> bool {
    true
}

/// A numeric feature with at most this many distinct reference values is
/// a set of categories: KS p-values on a handful of tied values are far too
/// conservative, chi-squared is the right test (the statistics note's default).
pub const DISCRETE_VALUES: usize = 5;

/// A window's scores and how long each detector took on it.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    pub scores: Vec<Score>,
    pub timings: Vec<(&'static str, std::time::Duration)>,
    /// The window's predicted-class mix (`class_mix`), stored with it.
    pub class_mix: Vec<(String, u64)>,
    /// The window's heaviest clients (`top_clients`), stored with it.
    pub top_clients: Vec<(String, u64)>,
    /// Requests of `detect.exempt_clients`, left out of per-client tests.
    pub exempt_requests: u64,
}

/// Classes a window's stored mix names at most; the rarer ones are summed
/// under `OTHER_CLASSES`, so a producer inventing labels adds at most this
/// many rows per window. A label that is itself `OTHER_CLASSES` is counted
/// with them.
pub const MAX_MIX_CLASSES: usize = 100;
pub const OTHER_CLASSES: &str = "(other)";
/// Longest class name stored, in bytes: labels may be longer (up to
/// `limits.max_value_bytes`), and a PostgreSQL index row holds about 2.7 KB.
pub const MAX_CLASS_BYTES: usize = 256;

/// How many events were predicted as each class, commonest first (ties by
/// name) and `OTHER_CLASSES` last, names cut to `MAX_CLASS_BYTES`.
pub fn class_mix(predicted: &[String]) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for p in predicted {
        *counts.entry(cut(p, MAX_CLASS_BYTES)).or_default() += 1;
    }
    let mut other = counts.remove(OTHER_CLASSES).unwrap_or(0);
    let mut mix: Vec<(String, u64)> = counts
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect();
    mix.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if mix.len() + usize::from(other > 0) > MAX_MIX_CLASSES {
        other += mix
            .drain(MAX_MIX_CLASSES - 1..)
            .map(|(_, n)| n)
            .sum::<u64>();
    }
    if other > 0 {
        mix.push((OTHER_CLASSES.to_string(), other));
    }
    mix
}

/// The `history::TOP_CLIENTS` clients with the most requests, heaviest
/// first (ties by name), names cut to `MAX_CLASS_BYTES` (a client id may be
/// as long as any value); ids equal once cut are one client.
pub fn top_clients(clients: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut cut_ids: HashMap<&str, u64> = HashMap::new();
    for (c, n) in clients {
        *cut_ids.entry(cut(c, MAX_CLASS_BYTES)).or_default() += n;
    }
    let mut top: Vec<(&str, u64)> = cut_ids.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(history::TOP_CLIENTS);
    top.into_iter().map(|(c, n)| (c.to_string(), n)).collect()
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A model's reference, typed and columnar, ready to score windows against.
#[derive(Debug, Clone)]
pub struct Reference {
    pub model: String,
    pub schema: Schema,
    pub classes: Vec<String>,
    pub frame: Frame,
    /// Per numeric feature, its reference column prepared once: sorted,
    /// with its spread, for every window's KS statistic and effect size.
    pub sorted: Vec<stats::Sorted>,
    /// The regression outputs, likewise.
    pub regression: stats::Sorted,
    /// Per categorical feature, its reference labels counted once.
    pub counted: Vec<stats::Counted>,
    /// Per numeric feature tested as categories (few distinct values), its
    /// values counted as labels; `None` for the others.
    pub counted_numeric: Vec<Option<stats::Counted>>,
    /// The predicted classes, counted.
    pub predicted: stats::Counted,
    /// Per numeric feature: at most `DISCRETE_VALUES` distinct reference
    /// values, so tested as categories (chi-squared) rather than by KS.
    pub discrete: Vec<bool>,
    /// Per feature, the band of its gating effect size on reference windows.
    pub effect_bands: std::collections::BTreeMap<String, band::Band>,
    /// The bands of the output distances and of regression errors.
    pub output: output::Fitted,
    /// Per-request confidence of the reference, its calibration and band.
    pub confidence: confidence::Fitted,
    /// What the multivariate detector compares against, when it is enabled.
    pub multivariate: Option<multivariate::Fitted>,
    /// What the reconstruction-error detector compares against, when enabled.
    pub reconstruction: Option<reconstruction::Fitted>,
    /// Out-of-distribution fits, one per vector space the reference has.
    pub ood: Vec<ood::Fitted>,
    /// Where the reference's decision boundary begins, for boundary probing.
    pub probing: Option<probing::Fitted>,
    /// The reference's steps between a client's consecutive requests, one
    /// per vector space, for near-duplicates and label flips.
    pub steps: Vec<steps::Fitted>,
}

impl Reference {
    /// What was calibrated on the reference, stored beside it so that a
    /// reader can see the thresholds a score was judged by.
    pub fn calibration(&self) -> serde_json::Value {
        serde_json::json!({
            "expected_accuracy": {
                "band": self.confidence.band,
                "labelled": self.confidence.labelled,
                "isotonic": self.confidence.calibration.is_some(),
            },
            "effect_sizes": self.effect_bands,
            "output_effect_sizes": self.output.bands,
            "regression_error": {
                "band": self.output.error_band,
                "spread": self.output.error_spread,
            },
            "out_of_distribution": self.ood.iter().map(|f| serde_json::json!({
                "space": f.space,
                "dimensions": f.mean.len(),
                "shrinkage": f.shrinkage,
                "quantile": f.quantile,
                "threshold": f.threshold,
                "reference_exceed": f.reference_exceed,
                "reference_rows": f.reference_rows,
                "shell": f.shell,
                "reference_shell": f.reference_shell,
            })).collect::<Vec<_>>(),
            "boundary_probing": self.probing.as_ref().map(|p| serde_json::json!({
                "quantile": p.quantile,
                "threshold": p.threshold,
                "reference_low": p.reference_low,
                "reference_rows": p.reference_rows,
            })),
            "query_steps": self.steps.iter().map(|s| serde_json::json!({
                "space": s.space,
                "near_quantile": s.near_quantile,
                "near": s.near,
                "flip_quantile": s.flip_quantile,
                "flip": s.flip,
                "reference_steps": s.reference_steps,
                "reference_near": s.reference_near,
                "reference_flips": s.reference_flips,
            })).collect::<Vec<_>>(),
            "multivariate": self.multivariate.as_ref().map(|m| serde_json::json!({
                "method": "mmd",
                "sigma": m.sigma(),
                "rows": m.rows(),
            })).or_else(|| self.reconstruction.as_ref().map(|r| serde_json::json!({
                "method": "pca",
                "components": r.pca.components.len(),
                "explained": r.pca.explained,
                "band": r.band,
                "rows": r.spread.n,
            }))),
        })
    }
}

/// A detector of one family.
pub trait Detector: Send {
    fn name(&self) -> &'static str;
    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError>;
}

/// The engine and the detectors that run on it.
pub struct Scorer {
    engine: Engine,
    detectors: Vec<Box<dyn Detector>>,
    config: DetectConfig,
}

impl Scorer {
    pub fn new(engine: Engine) -> Self {
        Self::with_config(engine, &DetectConfig::default())
    }

    pub fn with_config(engine: Engine, config: &DetectConfig) -> Self {
        let ks = config.ks_policy();
        let mut detectors: Vec<Box<dyn Detector>> = vec![
            Box::new(drift::FeatureDrift {
                config: config.drift.clone(),
                ks,
            }),
            Box::new(confidence::ConfidenceShift { ks }),
            Box::new(output::OutputDistribution {
                drift: config.drift.clone(),
                ks,
            }),
        ];
        if config.ood.enabled {
            detectors.push(Box::new(ood::OutOfDistribution));
        }
        if config.probing.enabled {
            detectors.push(Box::new(probing::BoundaryProbing));
        }
        if config.class_prior.enabled {
            detectors.push(Box::new(history::ClassPrior {
                config: config.class_prior.clone(),
                history: config.history.clone(),
            }));
        }
        if config.volume.enabled {
            detectors.push(Box::new(volume::ClientVolume {
                history: config.history.clone(),
            }));
        }
        if config.steps.enabled {
            detectors.push(Box::new(steps::QuerySteps));
        }
        if config.llm_clients.enabled {
            detectors.push(Box::new(llm::LlmClients {
                config: config.llm_clients.clone(),
            }));
        }
        if config.multivariate.enabled {
            match config.multivariate.method {
                MultivariateMethod::Mmd => {
                    detectors.push(Box::new(multivariate::MultivariateDrift {
                        config: config.multivariate.clone(),
                    }))
                }
                MultivariateMethod::Pca => {
                    detectors.push(Box::new(reconstruction::ReconstructionDrift))
                }
            }
        }
        Self {
            engine,
            detectors,
            config: config.clone(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Types the reference events and precomputes what every window reuses;
    /// `window_rows` is the live window size the reference's own windows are
    /// cut to for calibration (0 when windows close by time only). A panic
    /// becomes an error.
    pub fn fit(
        &self,
        model: &str,
        events: &[TelemetryEvent],
        classes: &[String],
        window_rows: usize,
    ) -> Result<Arc<Reference>, DetectError> {
        guarded(|| {
            let (schema, frame) = typed(model, events, classes);
            self.fit_frame(model, schema, frame, classes, window_rows)
        })
    }

    /// As `fit`, letting go of the events once they are columns: the fit's
    /// own buffers then take memory the process already holds, not fresh
    /// pages (which these machines pay dearly for).
    pub fn fit_owned(
        &self,
        model: &str,
        events: Vec<TelemetryEvent>,
        classes: &[String],
        window_rows: usize,
    ) -> Result<Arc<Reference>, DetectError> {
        guarded(|| {
            let (schema, frame) = typed(model, &events, classes);
            drop(events);
            self.fit_frame(model, schema, frame, classes, window_rows)
        })
    }

    fn fit_frame(
        &self,
        model: &str,
        schema: Schema,
        frame: Frame,
        classes: &[String],
        window_rows: usize,
    ) -> Result<Arc<Reference>, DetectError> {
        let (sorted, discrete, counted) = prepare_columns(&frame);
        let counted_numeric =
            drift::count_discrete(&self.config.drift, model, &schema, &frame, &discrete);
        let columns = drift::Prepared {
            frame: &frame,
            sorted: &sorted,
            discrete: &discrete,
            counted: &counted,
        };
        // The effect bands and the per-request fits share nothing: at once.
        let drift = &self.config.drift;
        let (effect_bands, requests) = parallel::join(
            || drift::calibrate(drift, model, &schema, &columns, window_rows),
            || self.fit_requests(&frame),
        );
        let confidence = confidence::fit(&frame, window_rows, &self.config.confidence);
        let regression = stats::Sorted::new(&frame.regression);
        let predicted = stats::Counted::of(&frame.predicted);
        let output = output::fit(
            &self.config.drift,
            &frame,
            &predicted,
            &regression,
            window_rows,
        );
        let mv = &self.config.multivariate;
        let multivariate = if mv.enabled && mv.method == MultivariateMethod::Mmd {
            multivariate::fit(&self.engine, &frame, mv)?
        } else {
            None
        };
        let reconstruction = if mv.enabled && mv.method == MultivariateMethod::Pca {
            reconstruction::fit(&self.engine, &frame, mv, window_rows)?
        } else {
            None
        };
        let (ood, probing, steps) = requests?;
        Ok(Arc::new(Reference {
            model: model.to_string(),
            schema,
            classes: classes.to_vec(),
            regression,
            predicted,
            output,
            counted,
            counted_numeric,
            frame,
            sorted,
            discrete,
            effect_bands,
            confidence,
            multivariate,
            reconstruction,
            ood,
            probing,
            steps,
        }))
    }

    /// What the per-request security detectors compare against: each
    /// space's distances, the decision boundary's margins, and the steps
    /// between a client's requests (under the distances' covariance).
    #[allow(clippy::type_complexity)]
    fn fit_requests(
        &self,
        frame: &Frame,
    ) -> Result<
        (
            Vec<ood::Fitted>,
            Option<probing::Fitted>,
            Vec<steps::Fitted>,
        ),
        DetectError,
    > {
        let ood = if self.config.ood.enabled {
            ood::fit(&self.engine, frame, &self.config.ood)?
        } else {
            Vec::new()
        };
        let probing = self
            .config
            .probing
            .enabled
            .then(|| probing::fit(frame, &self.config.probing))
            .flatten();
        let steps = if self.config.steps.enabled {
            steps::fit(&self.engine, frame, &ood, &self.config.steps)?
        } else {
            Vec::new()
        };
        Ok((ood, probing, steps))
    }

    /// Scores one window with every detector; a panic becomes an error.
    pub fn score<'a>(
        &self,
        reference: &Reference,
        events: impl IntoIterator<Item = &'a TelemetryEvent>,
    ) -> Result<Scored, DetectError> {
        self.score_with(reference, events, History::default())
    }

    /// As `score`, judging the class mix against the model's stored past.
    pub fn score_with<'a>(
        &self,
        reference: &Reference,
        events: impl IntoIterator<Item = &'a TelemetryEvent>,
        history: History,
    ) -> Result<Scored, DetectError> {
        let mut window = Frame::build(events, &reference.schema, &reference.classes);
        window.history = history;
        let exempt_requests = window.exempt(&self.config.exempt_clients);
        guarded(|| {
            let mut scored = Scored {
                class_mix: class_mix(&window.predicted),
                top_clients: top_clients(&window.clients),
                exempt_requests,
                ..Scored::default()
            };
            for d in &self.detectors {
                let started = std::time::Instant::now();
                scored
                    .scores
                    .extend(d.score(&self.engine, reference, &window)?);
                scored.timings.push((d.name(), started.elapsed()));
            }
            Ok(scored)
        })
    }
}

/// The reference's schema, and its events as columns of that schema.
fn typed(model: &str, events: &[TelemetryEvent], classes: &[String]) -> (Schema, Frame) {
    let schema = Schema::infer(events);
    if !schema.mixed.is_empty() {
        tracing::warn!(model, features = ?schema.mixed, "features of mixed type are not scored");
    }
    let frame = Frame::build(events, &schema, classes);
    (schema, frame)
}

/// Each numeric column sorted with its spread, whether it has few enough
/// distinct values to be tested as categories, and each categorical column
/// counted: what every window's statistics reuse.
fn prepare_columns(frame: &Frame) -> (Vec<stats::Sorted>, Vec<bool>, Vec<stats::Counted>) {
    let sorted = parallel::map(frame.numeric.len(), |i| {
        stats::Sorted::new(&frame.numeric[i])
    });
    let discrete = sorted
        .iter()
        .map(|s| s.distinct <= DISCRETE_VALUES)
        .collect();
    let counted = frame
        .categorical
        .iter()
        .map(|c| stats::Counted::of(c))
        .collect();
    (sorted, discrete, counted)
}

/// Runs `f`, turning a panic (in the tensor library, or a statistic meeting
/// values it did not expect) into an error: one model's bad data must never
/// take the daemon down.
fn guarded<T>(f: impl FnOnce() -> Result<T, DetectError>) -> Result<T, DetectError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(DetectError::Failed(format!("scoring panicked: {msg}")))
    })
}

/// KS scores for column pairs: a reference column sorted at fit and a
/// window column sorted once per window (the effect sizes reuse it). Pairs
/// where either side is empty are skipped.
fn ks_scores(
    policy: &stats::KsPolicy,
    detector: &str,
    family: Family,
    pairs: Vec<(String, &stats::Sorted, &[f64])>,
) -> Vec<Score> {
    pairs
        .into_iter()
        .filter(|(_, r, c)| !r.values.is_empty() && !c.is_empty())
        .map(|(feature, r, c)| {
            let diff = stats::ks_max_diff_sorted(&r.values, c);
            let ks = policy.two_sample(r.values.len(), c.len(), diff);
            Score {
                detector: detector.to_string(),
                family,
                feature,
                test: "ks".into(),
                statistic: ks.statistic,
                p_value: ks.p_value,
                n_reference: r.values.len(),
                n_window: c.len(),
                method: ks.method.as_str().into(),
                effect: None,
                examples: Vec::new(),
                band: None,
                threat: None,
            }
        })
        .collect()
}

/// A chi-squared homogeneity score of two counted label columns (the
/// reference's counted at fit), sparse levels pooled when `pool` is set
/// (`stats::pool_sparse`); `None` when either side is empty.
fn chi2_score(
    (detector, family, feature): (&str, Family, &str),
    reference: &stats::Counted,
    window: &stats::Counted,
    pool: bool,
) -> Option<Score> {
    if reference.total == 0 || window.total == 0 {
        return None;
    }
    let (r, c) = stats::bin_counted(reference, window);
    let (r, c, pooled) = match pool {
        true => stats::pool_sparse(&r, &c),
        false => (r, c, 0),
    };
    let result = stats::chi2_homogeneity(&r, &c);
    Some(Score {
        detector: detector.to_string(),
        family,
        feature: feature.to_string(),
        test: "chi2".into(),
        statistic: result.statistic,
        p_value: result.p_value,
        n_reference: reference.total as usize,
        n_window: window.total as usize,
        method: match pooled {
            0 => format!("chi2 dof={}", result.dof),
            k => format!("chi2 dof={} pooled {k} sparse levels", result.dof),
        },
        effect: None,
        examples: Vec::new(),
        band: None,
        threat: None,
    })
}

/// The detectors' settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// KS p-values are computed exactly (SciPy's `auto` rule: both samples
    /// of at most 10,000 values) only where the asymptotic value lies in
    /// this range, or where the exact one is cheap; elsewhere the asymptotic
    /// value is reported and marked `exact skipped`. The exact value costs
    /// O(n·m) per feature, and at these sample sizes differs from the
    /// asymptotic one by about 1% near alpha, so it moves no verdict far from
    /// alpha. Default: from 1e-12 to twice `judge.alpha`. `[0, 1]` computes it
    /// wherever SciPy would. The upper end must be at least twice `judge.alpha`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks_exact_between: Option<[f64; 2]>,
    /// The judge's alpha, copied in when the config is loaded: the default
    /// exact range follows it.
    #[serde(skip)]
    pub alpha: f64,
    /// Client ids left out of the per-client tests (health checks,
    /// synthetic probes, load tests); `*` matches any run of characters.
    /// Their requests still count in every window-level detector.
    pub exempt_clients: clients::ExemptClients,
    /// Joint drift of all features or of the embedding (opt-in).
    pub multivariate: MultivariateConfig,
    /// Out-of-distribution requests.
    pub ood: OodConfig,
    /// Clients whose requests crowd the decision boundary.
    pub probing: ProbingConfig,
    /// Clients whose consecutive requests take small steps or flip answers.
    pub steps: StepsConfig,
    /// The stored past the class-mix and volume detectors judge against.
    pub history: HistoryConfig,
    /// The class mix against the model's own recent windows (tampering,
    /// poisoning).
    pub class_prior: ClassPriorConfig,
    /// Clients sending far more than they used to.
    pub volume: VolumeConfig,
    /// Clients whose LLM calls are refused, or use tokens, far more than
    /// others'.
    pub llm_clients: llm::LlmClientsConfig,
    /// Confidence shift and expected accuracy.
    pub confidence: ConfidenceConfig,
    /// Per-feature drift.
    pub drift: DriftConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            ks_exact_between: None,
            alpha: crate::judge::JudgeConfig::default().alpha,
            exempt_clients: Default::default(),
            multivariate: MultivariateConfig::default(),
            ood: OodConfig::default(),
            probing: ProbingConfig::default(),
            steps: StepsConfig::default(),
            history: HistoryConfig::default(),
            class_prior: ClassPriorConfig::default(),
            volume: VolumeConfig::default(),
            llm_clients: Default::default(),
            confidence: ConfidenceConfig::default(),
            drift: DriftConfig::default(),
        }
    }
}

impl DetectConfig {
    pub fn ks_policy(&self) -> stats::KsPolicy {
        stats::KsPolicy {
            exact_between: self
                .ks_exact_between
                .unwrap_or([1e-12, (2.0 * self.alpha).min(1.0)]),
        }
    }

    /// `alpha` is the judge's: the exact range must reach well past it.
    pub fn validate(&self, alpha: f64) -> Result<(), String> {
        let Some([lo, hi]) = self.ks_exact_between else {
            return self.validate_sections();
        };
        if !(0.0 <= lo && lo < hi && hi <= 1.0) {
            return Err(format!(
                "detect.ks_exact_between must be [low, high] with 0 <= low < high <= 1, got [{lo}, {hi}]"
            ));
        }
        if hi < (2.0 * alpha).min(1.0) {
            return Err(format!(
                "detect.ks_exact_between's upper end {hi} must be at least twice judge.alpha ({alpha}): p-values near alpha need their exact value"
            ));
        }
        self.validate_sections()
    }

    fn validate_sections(&self) -> Result<(), String> {
        self.exempt_clients.validate()?;
        self.llm_clients.validate()?;
        self.drift.validate()?;
        self.multivariate.validate()?;
        self.ood.validate()?;
        self.probing.validate()?;
        self.steps.validate()?;
        self.history.validate()?;
        self.class_prior.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_mix_counts_commonest_first_and_bounds_invented_labels() {
        let labels = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert_eq!(
            class_mix(&labels(&["b", "a", "b", "c", "a", "b"])),
            [
                ("b".to_string(), 3),
                ("a".to_string(), 2),
                ("c".to_string(), 1)
            ]
        );
        // 500 invented labels, one of them spelt like the bucket, plus a
        // common real class: the mix keeps MAX_MIX_CLASSES rows, no name
        // twice, and every event.
        let mut many: Vec<String> = (0..499).map(|i| format!("x{i:03}")).collect();
        many.push(OTHER_CLASSES.to_string());
        many.extend(std::iter::repeat_n("cat".to_string(), 50));
        let mix = class_mix(&many);
        assert_eq!(mix.len(), MAX_MIX_CLASSES);
        assert_eq!(mix[0], ("cat".to_string(), 50));
        assert_eq!(mix[MAX_MIX_CLASSES - 1], (OTHER_CLASSES.to_string(), 402));
        let names: std::collections::BTreeSet<&str> = mix.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names.len(), mix.len());
        assert_eq!(mix.iter().map(|(_, n)| n).sum::<u64>(), many.len() as u64);

        // Labels longer than a class name may be are cut (at a character
        // boundary), and labels equal once cut are one class.
        let long = |tail: &str| format!("{}{tail}", "é".repeat(MAX_CLASS_BYTES));
        let mix = class_mix(&[long("a"), long("b")]);
        assert_eq!(mix.len(), 1);
        assert_eq!(mix[0].0.len(), MAX_CLASS_BYTES);
        assert_eq!(mix[0].1, 2);
    }
}
