//! Stage 5: scores become alert conditions, and conditions become alerts.
//!
//! A score crosses when its p-value is below the configured alpha, divided
//! by the number of tests in the window under Bonferroni, so that a model
//! with many features does not page more often than one with few. A score
//! with a gating effect size must also reach the effect's threshold, which
//! is set here from the effect's band: its 1 - alpha prediction bound. How
//! far past its threshold it is sets the severity. `lifecycle` then turns the
//! crossings of consecutive windows into pending, firing and resolved alerts.

pub mod episode;
pub mod lifecycle;
mod record;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use lifecycle::{AlertState, Status, Transition};
pub use record::{Recorded, Route, record_backfill, record_window};

use crate::detect::UNCALIBRATED_EFFECT_THRESHOLD;
use crate::detect::{Effect, Score, band};
use crate::event::{Halves, Mark};
pub use lifecycle::{AlertsConfig, Hysteresis};
use schemars::JsonSchema;

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Past threshold.
    #[default]
    Info,
    /// `warning_factor` times past threshold.
    Warning,
    /// `critical_factor` times past threshold.
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A score with the threshold it was judged against and, when it crossed,
/// how severely.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub score: Score,
    pub threshold: f64,
    pub crossed: Option<Severity>,
}

pub fn judge(config: &JudgeConfig, scores: Vec<Score>) -> Vec<Judged> {
    let mut judged = judge_each(config, scores);
    explain_by_inputs(&mut judged);
    judged
}

/// An output change in a window whose inputs drifted at least as clearly
/// is what the new inputs do to the model, not evidence that the model was
/// tampered with or poisoned: the drift pages as itself, and the output
/// scores lose their threat reading (the method says why). So does the
/// window's out-of-distribution fraction: when the whole population moved
/// (every amount 2.5 times larger), more requests lie far out, and that is
/// the drift, not an evasion campaign; a campaign from a few clients is the
/// per-client scores' to name, and they keep their reading. A weaker drift
/// explains nothing: an attacker who also nudges one input feature must not
/// hide a clear output change behind it. Only an output change the inputs
/// do not explain reads as an attack on the model.
fn explain_by_inputs(judged: &mut [Judged]) {
    use crate::detect::Family;
    use crate::detect::threat::Threat;
    let clearest_drift = judged
        .iter()
        .filter(|j| j.crossed.is_some() && j.score.family == Family::Drift)
        .map(|j| j.score.p_value)
        .min_by(f64::total_cmp);
    let Some(drift_p) = clearest_drift else {
        return;
    };
    // The window's fraction of far-out feature rows: what a drift of the
    // features moves. Not the embedding's (the features do not explain
    // it), nor the per-client or unplaced-request scores.
    let population =
        |s: &crate::detect::Score| s.detector == "out_of_distribution" && s.feature == "features";
    for j in judged.iter_mut().filter(|j| {
        let explained = match j.score.threat {
            Some(Threat::Tampering | Threat::Poisoning) => true,
            Some(Threat::Evasion) => population(&j.score),
            _ => false,
        };
        explained && drift_p <= j.score.p_value
    }) {
        j.score.threat = None;
        j.score.method = format!(
            "{}; the inputs drifted at least as clearly in this window (p={drift_p:.3e}), which explains the change",
            j.score.method
        );
    }
}

fn judge_each(config: &JudgeConfig, scores: Vec<Score>) -> Vec<Judged> {
    let tests = scores.len().max(1) as f64;
    let threshold = match config.correction {
        Correction::Bonferroni => config.alpha / tests,
        Correction::None => config.alpha,
        Correction::BenjaminiHochberg => bh_threshold(config.alpha, &scores),
    };
    let mut factors = HashMap::new();
    scores
        .into_iter()
        .map(|mut score| {
            if let Some(e) = score.effect.as_mut() {
                bound_effect(e, config.alpha, &mut factors);
            }
            // On large samples the effect size must pass its threshold too.
            let large_enough = score
                .effect
                .as_ref()
                .is_none_or(|e| !e.gating || e.value >= e.threshold);
            let crossed = (score.p_value < threshold && large_enough).then(|| {
                let factor = threshold / score.p_value.max(f64::MIN_POSITIVE);
                if factor >= config.critical_factor {
                    Severity::Critical
                } else if factor >= config.warning_factor {
                    Severity::Warning
                } else {
                    Severity::Info
                }
            });
            Judged {
                score,
                threshold,
                crossed,
            }
        })
        .collect()
}

/// Raises a banded effect's threshold to the band's one-sided 1 - alpha
/// prediction bound: what a clean window of the live size stays under,
/// reference-to-reference spread included, which the p-value (assuming
/// independent rows) does not see. Multiplicity is the p-value's part:
/// bounding at alpha / tests as well would ask a real shift to pass two
/// corrected tests, and with ten reference windows Student's tail costs
/// the gate most of its power (a five-point class-mix move on 1,000-row
/// windows passed in 0 of 40 windows at alpha / tests). At alpha the gate
/// is about as strict as NannyML's mean + 3 sd band, whose real rate with
/// ten windows is about 1%. `factors` keeps the t quantile per band size.
/// A band that is not a number (a reference window whose effect was not)
/// bounds nothing: the uncalibrated threshold stands in, so the gate never
/// silently opens.
fn bound_effect(effect: &mut Effect, level: f64, factors: &mut HashMap<usize, f64>) {
    let Some(b) = &effect.band else { return };
    let factor = *factors
        .entry(b.windows)
        .or_insert_with(|| band::tail_factor(b.windows, level));
    let bound = b.bound_with(factor);
    effect.threshold = match bound.is_nan() {
        true => effect.threshold.max(UNCALIBRATED_EFFECT_THRESHOLD),
        false => effect.threshold.max(bound),
    };
}

/// The p-value threshold the Benjamini-Hochberg step-up procedure sets for a
/// family: just above the largest p(k) with p(k) <= k/m alpha, so that
/// "p below threshold" rejects exactly the hypotheses BH rejects; alpha/m
/// (what a single test would need) when it rejects none.
fn bh_threshold(alpha: f64, scores: &[Score]) -> f64 {
    let mut p: Vec<f64> = scores.iter().map(|s| s.p_value).collect();
    p.sort_by(f64::total_cmp);
    let m = p.len().max(1) as f64;
    p.iter()
        .enumerate()
        .filter(|(k, pk)| **pk <= (*k + 1) as f64 / m * alpha)
        .map(|(_, pk)| pk.next_up())
        .last()
        .unwrap_or(alpha / m)
}

/// The key that groups one condition across windows: model, version (when
/// the events name one: a canary's versions are judged apart), detector,
/// feature.
pub fn dedup_key(model: &str, version: &str, detector: &str, feature: &str) -> String {
    match version {
        "" => format!("{model}/{detector}/{feature}"),
        v => format!("{model}/{v}/{detector}/{feature}"),
    }
}

/// Everything one window produced, handed to the store as one unit.
#[derive(Debug, Clone)]
pub struct WindowVerdict {
    pub model: String,
    pub model_version: String,
    pub seq: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub n_events: usize,
    pub close_reason: &'static str,
    pub device: String,
    /// Set when scoring failed; the window is stored so that it is not retried forever.
    pub error: Option<String>,
    pub judged: Vec<Judged>,
    /// Request ids of a few of the window's events, quoted as evidence.
    pub sample_request_ids: Vec<String>,
    /// The furthest position per stream among the window's events.
    pub high_water: HashMap<String, Mark>,
    /// The first position per stream among the window's events.
    pub low_water: HashMap<String, Mark>,
    /// The messages of the halves of the window's pairs.
    pub halves: Halves,
    /// The trace the window was scored in, stored with its alerts.
    pub trace_id: Option<String>,
    /// Events per predicted class, stored with the window for dashboards.
    pub class_mix: Vec<(String, u64)>,
    /// The window's heaviest clients, stored for later windows' volume.
    pub top_clients: Vec<(String, u64)>,
}

/// Judges a window's scores.
pub fn verdict(
    config: &JudgeConfig,
    window: &crate::window::ClosedWindow,
    device: String,
    scores: Result<Vec<Score>, String>,
) -> WindowVerdict {
    let (judged, error) = match scores {
        Ok(s) => (judge(config, s), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    WindowVerdict {
        model: window.key.model.clone(),
        model_version: window.key.version.clone(),
        // The store allocates the number when it stores the window; until
        // then the window's order among its key's windows here.
        seq: window.ordinal,
        start: window.start,
        end: window.end,
        n_events: window.events.len(),
        close_reason: window.reason.as_str(),
        device,
        error,
        judged,
        sample_request_ids: window
            .events
            .iter()
            .filter_map(|e| e.event.request_id.clone())
            .take(5)
            .collect(),
        high_water: window.high_water(),
        low_water: window.low_water(),
        halves: Halves::of(&window.events),
        trace_id: None,
        class_mix: Vec::new(),
        top_clients: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// When a score crosses its threshold, and how severely.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Significance level of one window's family of tests.
    pub alpha: f64,
    /// Multiple-testing correction across the tests of one window.
    pub correction: Correction,
    /// Severity `critical` when the p-value is this many times below threshold.
    pub critical_factor: f64,
    /// Severity `warning` when the p-value is this many times below threshold
    /// (and `info` when it is below threshold by less).
    pub warning_factor: f64,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            correction: Correction::default(),
            critical_factor: 1e6,
            warning_factor: 10.0,
        }
    }
}

impl JudgeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(format!(
                "judge.alpha must lie in (0, 1), got {}",
                self.alpha
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Family;

    fn score(p: f64) -> Score {
        Score {
            detector: "feature_drift".into(),
            family: Family::Drift,
            feature: "x".into(),
            test: "ks".into(),
            statistic: 0.5,
            p_value: p,
            n_reference: 10,
            n_window: 10,
            method: "exact".into(),
            effect: None,
            examples: Vec::new(),
            band: None,
            threat: None,
        }
    }

    /// An output move reads as tampering only when the inputs did not
    /// move with it: a drift of the inputs explains it.
    #[test]
    fn an_output_change_the_inputs_explain_is_not_read_as_tampering() {
        use crate::detect::threat::Threat;
        let config = JudgeConfig::default();
        let output = Score {
            detector: "output_distribution".into(),
            family: Family::Output,
            feature: "predicted_class".into(),
            threat: Some(Threat::Tampering),
            ..score(1e-9)
        };
        let alone = judge(&config, vec![output.clone(), score(0.5)]);
        assert_eq!(alone[0].score.threat, Some(Threat::Tampering));
        let with_drift = judge(&config, vec![output.clone(), score(1e-12)]);
        assert!(with_drift[0].crossed.is_some() && with_drift[1].crossed.is_some());
        assert_eq!(with_drift[0].score.threat, None);
        assert!(with_drift[0].score.method.contains("inputs drifted"));
        // A weaker drift (one nudged feature) explains nothing.
        let nudged = judge(&config, vec![output, score(1e-5)]);
        assert!(nudged[1].crossed.is_some());
        assert_eq!(nudged[0].score.threat, Some(Threat::Tampering));
    }

    /// The window's out-of-distribution fraction rising with a clearer
    /// drift is the population moving, not evasion; one client's share of
    /// far-out requests keeps its reading whatever the window does.
    #[test]
    fn far_out_requests_the_drift_explains_are_not_read_as_evasion() {
        use crate::detect::threat::Threat;
        let config = JudgeConfig::default();
        let far = |feature: &str| Score {
            detector: "out_of_distribution".into(),
            family: Family::Security,
            feature: feature.into(),
            threat: Some(Threat::Evasion),
            ..score(1e-9)
        };
        let judged = judge(
            &config,
            vec![far("features"), far("features_per_client"), score(1e-30)],
        );
        assert_eq!(judged[0].score.threat, None);
        assert!(judged[0].score.method.contains("inputs drifted"));
        assert_eq!(judged[1].score.threat, Some(Threat::Evasion));
        let alone = judge(&config, vec![far("features"), score(0.5)]);
        assert_eq!(alone[0].score.threat, Some(Threat::Evasion));
    }

    #[test]
    fn bonferroni_divides_alpha_by_tests_and_severity_grows_with_distance() {
        let cfg = JudgeConfig {
            alpha: 0.03,
            correction: Correction::Bonferroni,
            critical_factor: 1e3,
            warning_factor: 10.0,
        };
        let j = judge(
            &cfg,
            vec![score(0.005), score(0.011), score(1e-9), score(0.0005)],
        );
        assert!((j[0].threshold - 0.03 / 4.0).abs() < 1e-15);
        assert_eq!(j[0].crossed, Some(Severity::Info));
        assert_eq!(j[1].crossed, None);
        assert_eq!(j[2].crossed, Some(Severity::Critical));
        assert_eq!(j[3].crossed, Some(Severity::Warning));
        let cfg = JudgeConfig {
            correction: Correction::None,
            ..cfg
        };
        let j = judge(&cfg, vec![score(0.011)]);
        assert_eq!(j[0].crossed, Some(Severity::Info));
    }

    #[test]
    fn on_large_samples_the_effect_size_must_pass_too() {
        let cfg = JudgeConfig::default();
        let with_effect = |value: f64| Score {
            effect: Some(crate::detect::Effect {
                name: "wasserstein_normalised".into(),
                value,
                threshold: 0.1,
                gating: true,
                band: None,
            }),
            ..score(1e-12)
        };
        let j = judge(
            &cfg,
            vec![with_effect(0.05), with_effect(0.1), score(1e-12)],
        );
        assert_eq!(j[0].crossed, None, "significant but tiny: no alert");
        assert!(j[1].crossed.is_some());
        assert!(
            j[2].crossed.is_some(),
            "no effect size: the p-value alone decides"
        );
    }

    #[test]
    fn benjamini_hochberg_rejects_what_the_step_up_procedure_rejects() {
        let cfg = JudgeConfig {
            alpha: 0.05,
            correction: Correction::BenjaminiHochberg,
            ..JudgeConfig::default()
        };
        // Sorted p: .001 .008 .039 .041 .042 .06 .074 .205; boundaries k/8 * .05:
        // .00625 .0125 .01875 .025 .03125 .0375 .04375 .05 -> the largest k with
        // p(k) <= boundary is k = 2, so .001 and .008 are rejected.
        let ps = [0.039, 0.001, 0.041, 0.008, 0.042, 0.06, 0.074, 0.205];
        let j = judge(&cfg, ps.iter().map(|p| score(*p)).collect());
        let rejected: Vec<f64> = j
            .iter()
            .filter(|x| x.crossed.is_some())
            .map(|x| x.score.p_value)
            .collect();
        assert_eq!(rejected, vec![0.001, 0.008]);
        // Agrees with the adjusted p-values.
        let adjusted = crate::detect::stats::benjamini_hochberg(&ps);
        for (x, a) in j.iter().zip(adjusted) {
            assert_eq!(x.crossed.is_some(), a < 0.05, "p {}", x.score.p_value);
        }
        let none = judge(&cfg, vec![score(0.5), score(0.9)]);
        assert!(none.iter().all(|x| x.crossed.is_none()));
        assert_eq!(none[0].threshold, 0.025);
    }
}
