//! Boundary probing. A decision-based evasion search (a boundary attack,
//! HopSkipJump) walks its queries to the model's decision boundary, where
//! the top two classes are nearly tied; so does a model-extraction attack
//! that maps the boundary. Real traffic seldom sits there. Per client, the
//! share of its requests whose top-1/top-2 probability margin is under the
//! reference's low quantile, against the reference's own share
//! (`clients::worst`). One attacker among hundreds of clients is found
//! while the window's confidence as a whole stays within its band.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clients;
use super::frame::Sender;
use super::threat::Threat;
use super::{DetectError, Detector, Engine, Frame, Reference, Score, stats};

/// How many of the client's closest calls a score names.
const EXAMPLES: usize = 5;

/// The reference's margins: where "near the boundary" begins.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub quantile: f64,
    /// Margins at or under this are near the boundary.
    pub threshold: f64,
    /// Reference margins at or under `threshold`, of `reference_rows`.
    pub reference_low: usize,
    pub reference_rows: usize,
}

/// Top-1 minus top-2 probability; none for fewer than two classes or a
/// vector that is not all numbers.
pub fn margin(p: &[f64]) -> Option<f64> {
    if p.len() < 2 || p.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in p {
        if v > first {
            (first, second) = (v, first);
        } else if v > second {
            second = v;
        }
    }
    Some(first - second)
}

/// Needs a reference of at least 20 margins per expected low one, so that
/// its rate is estimated from a handful of requests or more.
pub fn fit(frame: &Frame, config: &ProbingConfig) -> Option<Fitted> {
    let mut margins: Vec<f64> = frame
        .probabilities
        .iter()
        .filter_map(|p| margin(p))
        .collect();
    let n = margins.len();
    if (n as f64) * config.margin_quantile < 5.0 {
        return None;
    }
    margins.sort_by(f64::total_cmp);
    let threshold = stats::quantile_sorted(&margins, config.margin_quantile);
    // At or under: a reference whose low margins tie at the quantile (a
    // model that often answers exactly 50/50) still marks them.
    let reference_low = margins.iter().filter(|m| **m <= threshold).count();
    Some(Fitted {
        quantile: config.margin_quantile,
        threshold,
        reference_low,
        reference_rows: n,
    })
}

pub struct BoundaryProbing;

impl Detector for BoundaryProbing {
    fn name(&self) -> &'static str {
        "boundary_probing"
    }

    fn score(
        &self,
        _engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let Some(fitted) = &reference.probing else {
            return Ok(Vec::new());
        };
        let calls: Vec<(f64, &Sender)> = window
            .probabilities
            .iter()
            .zip(&window.probability_senders)
            .filter_map(|(p, s)| Some((margin(p)?, s)))
            .collect();
        let requests = calls.iter().map(|(m, s)| (*s, *m <= fitted.threshold));
        let reference_rate = (fitted.reference_low as u64, fitted.reference_rows as u64);
        let Some(w) = clients::worst_of(requests, reference_rate) else {
            return Ok(Vec::new());
        };
        let signal = clients::Signal {
            detector: self.name(),
            feature: "margin_per_client".into(),
            test: "low_margin_client_fisher",
            marks: format!(
                "with top-2 margin <= {:.4} (reference q{})",
                fitted.threshold, fitted.quantile
            ),
            reference: reference_rate,
            threat: Threat::Evasion,
        };
        Ok(vec![w.score(signal, closest(&calls, &w, fitted.threshold))])
    }
}

/// The client's requests nearest the boundary: `req-17 client=m margin=0.0031`.
fn closest(calls: &[(f64, &Sender)], worst: &clients::Worst, threshold: f64) -> Vec<String> {
    let mut near: Vec<&(f64, &Sender)> = calls
        .iter()
        .filter(|(m, s)| *m <= threshold && worst.sent(s.client_id.as_deref()))
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0));
    near.iter()
        .take(EXAMPLES)
        .map(|(m, s)| format!("{} margin={m:.4}", s.label()))
        .collect()
}

/// Clients whose requests crowd the decision boundary.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProbingConfig {
    /// Score each client's share of near-boundary requests.
    pub enabled: bool,
    /// A request is near the boundary when its top-1/top-2 probability
    /// margin is under this quantile of the reference's margins.
    pub margin_quantile: f64,
}

impl Default for ProbingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            margin_quantile: 0.01,
        }
    }
}

impl ProbingConfig {
    pub fn validate(&self) -> Result<(), String> {
        let q = self.margin_quantile;
        if !(q > 0.0 && q < 0.5) {
            return Err(format!(
                "detect.probing.margin_quantile must lie in (0, 0.5), got {q}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_are_top_one_minus_top_two_and_refuse_what_is_not_a_vector() {
        assert_eq!(margin(&[0.2, 0.5, 0.3]), Some(0.5 - 0.3));
        assert_eq!(margin(&[0.5, 0.5]), Some(0.0));
        assert_eq!(margin(&[0.9, 0.05, 0.05]), Some(0.9 - 0.05));
        assert_eq!(margin(&[1.0]), None);
        assert_eq!(margin(&[0.5, f64::NAN]), None);
    }
}
