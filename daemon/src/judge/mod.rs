//! Stage 5: scores become alerts when they cross their threshold.
//!
//! The threshold of a p-value is the configured alpha, divided by the number
//! of tests in the window under Bonferroni, so that a model with many
//! features does not page more often than one with few.

use serde::{Deserialize, Serialize};

use crate::config::{Correction, JudgeConfig};
use crate::detect::Score;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A score with the threshold it was judged against and, when it crossed,
/// the alert it raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub score: Score,
    pub threshold: f64,
    pub alert: Option<Severity>,
}

pub fn judge(config: &JudgeConfig, scores: Vec<Score>) -> Vec<Judged> {
    let tests = scores.len().max(1) as f64;
    let threshold = match config.correction {
        Correction::Bonferroni => config.alpha / tests,
        Correction::None => config.alpha,
    };
    scores
        .into_iter()
        .map(|score| {
            let alert = (score.p_value < threshold).then(|| {
                if score.p_value < threshold / config.critical_factor {
                    Severity::Critical
                } else {
                    Severity::Warning
                }
            });
            Judged {
                score,
                threshold,
                alert,
            }
        })
        .collect()
}

/// The key under which repeated alerts of one condition are grouped.
pub fn dedup_key(model: &str, detector: &str, feature: &str) -> String {
    format!("{model}/{detector}/{feature}")
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
        }
    }

    #[test]
    fn bonferroni_divides_alpha_by_tests() {
        let cfg = JudgeConfig {
            alpha: 0.01,
            correction: Correction::Bonferroni,
            critical_factor: 1e3,
        };
        let j = judge(&cfg, vec![score(0.004), score(0.006), score(1e-9)]);
        assert!((j[0].threshold - 0.01 / 3.0).abs() < 1e-15);
        assert_eq!(j[0].alert, None);
        assert_eq!(j[1].alert, None);
        assert_eq!(j[2].alert, Some(Severity::Critical));
        let cfg = JudgeConfig {
            correction: Correction::None,
            ..cfg
        };
        let j = judge(&cfg, vec![score(0.004), score(0.006)]);
        assert_eq!(j[0].alert, Some(Severity::Warning));
        assert_eq!(j[1].alert, Some(Severity::Warning));
    }
}

/// An alert raised by one score of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub model: String,
    pub model_version: String,
    pub detector: String,
    pub feature: String,
    pub severity: Severity,
    pub score: f64,
    pub threshold: f64,
    pub p_value: f64,
    pub window_seq: i64,
    pub window_start: chrono::DateTime<chrono::Utc>,
    pub window_end: chrono::DateTime<chrono::Utc>,
    pub dedup_key: String,
    pub evidence: serde_json::Value,
}

/// Everything one window produced, handed to the store as one unit.
#[derive(Debug, Clone)]
pub struct WindowVerdict {
    pub model: String,
    pub model_version: String,
    pub seq: i64,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub n_events: usize,
    pub close_reason: &'static str,
    pub device: String,
    /// Set when scoring failed; the window is stored so that it is not retried forever.
    pub error: Option<String>,
    pub judged: Vec<Judged>,
    pub alerts: Vec<Alert>,
    /// Highest offset per stream among the window's events.
    pub high_water: std::collections::HashMap<String, i64>,
    /// The trace the window was scored in, stored with its alerts.
    pub trace_id: Option<String>,
}

/// Judges a window's scores and builds its alerts with their evidence.
#[allow(clippy::too_many_arguments)]
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
    let sample_ids: Vec<&str> = window
        .events
        .iter()
        .filter_map(|e| e.event.request_id.as_deref())
        .take(5)
        .collect();
    let alerts = judged
        .iter()
        .filter_map(|j| {
            let severity = j.alert?;
            let s = &j.score;
            Some(Alert {
                model: window.key.model.clone(),
                model_version: window.key.version.clone(),
                detector: s.detector.clone(),
                feature: s.feature.clone(),
                severity,
                score: s.statistic,
                threshold: j.threshold,
                p_value: s.p_value,
                window_seq: window.seq,
                window_start: window.start,
                window_end: window.end,
                dedup_key: dedup_key(&window.key.model, &s.detector, &s.feature),
                evidence: serde_json::json!({
                    "test": s.test,
                    "method": s.method,
                    "statistic": s.statistic,
                    "p_value": s.p_value,
                    "threshold": j.threshold,
                    "n_reference": s.n_reference,
                    "n_window": s.n_window,
                    "window": {"seq": window.seq, "start": window.start, "end": window.end},
                    "model_version": window.key.version,
                    "sample_request_ids": sample_ids,
                }),
            })
        })
        .collect();
    WindowVerdict {
        model: window.key.model.clone(),
        model_version: window.key.version.clone(),
        seq: window.seq,
        start: window.start,
        end: window.end,
        n_events: window.events.len(),
        close_reason: window.reason.as_str(),
        device,
        error,
        judged,
        alerts,
        high_water: window.high_water(),
        trace_id: None,
    }
}
