//! Per-request out-of-distribution scoring: the Mahalanobis distance of each
//! request to the reference under a Ledoit-Wolf shrunk covariance, and per
//! window the fraction of requests beyond the reference's own high quantile.
//!
//! The quantile is taken over cross-fitted reference distances (each fold
//! scored by a covariance fitted without it): in-sample distances are
//! systematically short, and a threshold from them would flag more than its
//! nominal share of clean traffic. The window's exceedances are then tested
//! against the reference's with Fisher's exact test, so the estimate of the
//! quantile itself is accounted for.

use super::band;
use super::clients;
use super::frame::Sender;
use super::threat::Threat;
use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, linalg, stats};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many of the farthest requests a score names.
const EXAMPLES: usize = 5;

/// One vector space (features or embedding) fitted on the reference.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// `features` or `embedding`.
    pub space: &'static str,
    pub mean: Vec<f64>,
    pub precision: Vec<f64>,
    pub shrinkage: f64,
    /// The `quantile` of the cross-fitted reference distances.
    pub threshold: f64,
    pub quantile: f64,
    /// Cross-fitted reference distances above `threshold`, of `reference_rows`.
    pub reference_exceed: usize,
    pub reference_rows: usize,
    /// The reference's outer shell begins at this distance (its
    /// `coverage_quantile`), and so many reference rows lie in it.
    pub shell: f64,
    pub reference_shell: usize,
}

pub fn fit_space(
    engine: &Engine,
    space: &'static str,
    rows: &[Vec<f64>],
    config: &OodConfig,
) -> Result<Option<Fitted>, DetectError> {
    let rows = &rows[..rows.len().min(config.max_reference)];
    let d = rows.first().map_or(0, Vec::len);
    let folds = config.folds.max(2);
    // Each training part needs more rows than folds; below a few dozen rows
    // a 99.9% quantile means nothing.
    if d < 2 || rows.len() < folds.saturating_mul(10) || rows.iter().any(|r| r.len() != d) {
        return Ok(None);
    }
    let n = rows.len();
    let parts: Vec<_> = (0..folds)
        .map(|f| f * n / folds..(f + 1) * n / folds)
        .collect();
    let held_out = cross_fitted(engine, rows, &parts)?;
    let Some((held_out, whole)) = held_out else {
        return Ok(None);
    };
    let mut sorted = held_out.clone();
    sorted.sort_by(f64::total_cmp);
    let threshold = stats::quantile_sorted(&sorted, config.quantile);
    let reference_exceed = held_out.iter().filter(|v| **v > threshold).count();
    let shell = stats::quantile_sorted(&sorted, config.coverage_quantile);
    let reference_shell = held_out.iter().filter(|v| **v > shell).count();
    let Some((mean, precision, shrinkage)) = inverted(whole) else {
        return Ok(None);
    };
    Ok(Some(Fitted {
        space,
        mean,
        precision,
        shrinkage,
        threshold,
        quantile: config.quantile,
        reference_exceed,
        reference_rows: n,
        shell,
        reference_shell,
    }))
}

/// Past this many elements in all (folds x d x d), each fold's sums are
/// taken again when its training set is fitted rather than kept from the
/// first pass: wide embeddings would otherwise hold a d x d matrix per fold.
const KEPT_FOLD_ELEMENTS: usize = 1 << 22;

/// Each row's distance under the covariance fitted without its fold, and
/// the whole reference's estimate; `None` where a covariance cannot be
/// inverted. Each fold is summed about the reference's mean, and each
/// training set is the whole less a fold, unless the sums would cancel (its
/// mean far off, or the fold left out far wider than it: a cluster apart,
/// a sentinel value): that training set is then copied and fitted on its
/// own rows.
fn cross_fitted(
    engine: &Engine,
    rows: &[Vec<f64>],
    parts: &[std::ops::Range<usize>],
) -> Result<Option<(Vec<f64>, linalg::Shrunk)>, DetectError> {
    let origin = linalg::column_means(rows);
    let fold = |p: &std::ops::Range<usize>| linalg::Moments::of(&rows[p.clone()], &origin);
    let keep = parts.len() * origin.len() * origin.len() <= KEPT_FOLD_ELEMENTS;
    let mut kept = Vec::new();
    let mut whole: Option<linalg::Moments> = None;
    for p in parts {
        let m = fold(p);
        whole = Some(match whole {
            Some(w) => w.plus(&m),
            None => m.clone(),
        });
        if keep {
            kept.push(m);
        }
    }
    let whole = whole.expect("at least two folds");
    let mut held_out = Vec::with_capacity(rows.len());
    for (i, part) in parts.iter().enumerate() {
        let summed;
        let part_sums = match kept.get(i) {
            Some(m) => m,
            None => {
                summed = fold(part);
                &summed
            }
        };
        let train = whole.less(part_sums);
        let shrunk = match train.cancels_in(&whole) {
            true => linalg::ledoit_wolf(&band::without(rows, part.clone())),
            false => train.ledoit_wolf(),
        };
        let Some((mean, precision, _)) = inverted(shrunk) else {
            return Ok(None);
        };
        held_out.extend(engine.mahalanobis(&rows[part.clone()], &mean, &precision)?);
    }
    Ok(Some((held_out, whole.ledoit_wolf())))
}

/// The mean, the precision (inverse Ledoit-Wolf covariance) and the
/// shrinkage of `rows`; none where the covariance cannot be inverted.
pub(super) fn covariance(rows: &[Vec<f64>]) -> Option<(Vec<f64>, Vec<f64>, f64)> {
    inverted(linalg::ledoit_wolf(rows))
}

fn inverted(shrunk: linalg::Shrunk) -> Option<(Vec<f64>, Vec<f64>, f64)> {
    let precision = linalg::spd_inverse(&shrunk.covariance, shrunk.mean.len())?;
    Some((shrunk.mean, precision, shrunk.shrinkage))
}

/// Fits the feature space and the embedding space, where the reference has them.
pub fn fit(engine: &Engine, frame: &Frame, config: &OodConfig) -> Result<Vec<Fitted>, DetectError> {
    let mut out = Vec::new();
    for (space, rows) in [
        ("features", &frame.feature_rows),
        ("embedding", &frame.embeddings),
    ] {
        match fit_space(engine, space, rows, config)? {
            Some(f) => out.push(f),
            None if !rows.is_empty() => tracing::info!(
                space,
                rows = rows.len(),
                "out-of-distribution scoring needs at least 2 dimensions and {} complete reference rows",
                10 * config.folds.max(2)
            ),
            None => {}
        }
    }
    Ok(out)
}

/// The fraction of a window's requests beyond the reference threshold, with
/// the one-sided Fisher p-value that it exceeds the reference's own rate.
pub struct OutOfDistribution;

impl Detector for OutOfDistribution {
    fn name(&self) -> &'static str {
        "out_of_distribution"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let mut scores = Vec::new();
        for fitted in &reference.ood {
            let (rows, senders) = window.space(fitted.space);
            let d = fitted.mean.len();
            let (rows, senders): (Vec<Vec<f64>>, Vec<&Sender>) = rows
                .iter()
                .zip(senders)
                .filter(|(r, _)| r.len() == d)
                .map(|(r, s)| (r.clone(), s))
                .unzip();
            scores.extend(unplaced(self.name(), fitted, reference, window));
            if rows.is_empty() {
                continue;
            }
            let distances = engine.mahalanobis(&rows, &fitted.mean, &fitted.precision)?;
            let k = distances.iter().filter(|v| **v > fitted.threshold).count();
            let examples = farthest(fitted.threshold, &distances, &senders, |_| true);
            let m = rows.len();
            scores.push(Score {
                detector: self.name().to_string(),
                family: Family::Security,
                feature: fitted.space.into(),
                test: "ood_fraction".into(),
                statistic: k as f64 / m as f64,
                p_value: stats::fisher_greater(
                    k as u64,
                    m as u64,
                    fitted.reference_exceed as u64,
                    fitted.reference_rows as u64,
                ),
                n_reference: fitted.reference_rows,
                n_window: m,
                method: format!(
                    "mahalanobis ledoit-wolf shrinkage={:.4} q{}={:.4} reference_rate={}/{} fisher",
                    fitted.shrinkage,
                    fitted.quantile,
                    fitted.threshold,
                    fitted.reference_exceed,
                    fitted.reference_rows
                ),
                effect: None,
                examples,
                band: None,
                threat: Some(Threat::Evasion),
            });
            scores.extend(worst_client(self.name(), fitted, &distances, &senders));
            scores.extend(widest_client(self.name(), fitted, &distances, &senders));
        }
        Ok(scores)
    }
}

/// The farthest requests past `line` among those `keep` picks, for the
/// analyst: `req-17 client=shop-3 distance=9.41`.
fn farthest(
    line: f64,
    distances: &[f64],
    senders: &[&Sender],
    keep: impl Fn(&Sender) -> bool,
) -> Vec<String> {
    let mut beyond: Vec<(f64, &Sender)> = distances
        .iter()
        .zip(senders.iter().copied())
        .filter(|(d, s)| **d > line && keep(s))
        .map(|(d, s)| (*d, s))
        .collect();
    beyond.sort_by(|a, b| b.0.total_cmp(&a.0));
    beyond
        .iter()
        .take(EXAMPLES)
        .map(|(d, s)| format!("{} distance={d:.3}", s.label()))
        .collect()
}

/// The window's worst client by its share of requests farther than `line`
/// (`clients::worst`), named with its farthest requests.
fn client_past(
    line: f64,
    distances: &[f64],
    senders: &[&Sender],
    signal: clients::Signal<'_>,
) -> Option<Score> {
    let requests = distances.iter().zip(senders).map(|(d, s)| (*s, *d > line));
    let w = clients::worst_of(requests, signal.reference)?;
    let examples = farthest(line, distances, senders, |s| w.sent(s.client_id.as_deref()));
    Some(w.score(signal, examples))
}

/// The window's most out-of-distribution client against the reference's
/// rate: one client probing with crafted inputs hides in a large window's
/// total.
fn worst_client(
    detector: &str,
    fitted: &Fitted,
    distances: &[f64],
    senders: &[&Sender],
) -> Option<Score> {
    let signal = clients::Signal {
        detector,
        feature: format!("{}_per_client", fitted.space),
        test: "ood_client_fisher",
        marks: format!("beyond q{}", fitted.quantile),
        reference: (fitted.reference_exceed as u64, fitted.reference_rows as u64),
        threat: Threat::Evasion,
    };
    client_past(fitted.threshold, distances, senders, signal)
}

/// Input-space coverage: real clients ask about the inputs the model was
/// built for, so about `1 - coverage_quantile` of their requests lie in the
/// reference's outer shell; an extraction attack sweeping the space evenly
/// puts most of its queries there without any needing to be far out. The
/// window's client with the largest share in the shell against the
/// reference's.
fn widest_client(
    detector: &str,
    fitted: &Fitted,
    distances: &[f64],
    senders: &[&Sender],
) -> Option<Score> {
    let signal = clients::Signal {
        detector,
        feature: format!("{}_coverage_per_client", fitted.space),
        test: "shell_client_fisher",
        marks: format!(
            "in the reference's outer shell (distance > {:.4})",
            fitted.shell
        ),
        reference: (fitted.reference_shell as u64, fitted.reference_rows as u64),
        threat: Threat::Extraction,
    };
    client_past(fitted.shell, distances, senders, signal)
}

/// How many of a frame's events have a row of the fitted space's width.
fn placed(frame: &Frame, fitted: &Fitted) -> usize {
    let (rows, _) = frame.space(fitted.space);
    rows.iter().filter(|r| r.len() == fitted.mean.len()).count()
}

/// Requests that cannot be placed in the space (a numeric feature missing or
/// not a number, an embedding of another width) are where evasion hides: their
/// share of the window against the reference's, Fisher's exact test. Only
/// scored when the window or the reference has such requests.
fn unplaced(
    detector: &str,
    fitted: &Fitted,
    reference: &Reference,
    window: &Frame,
) -> Option<Score> {
    let (n, k) = (window.rows, window.rows - placed(window, fitted));
    let ref_n = reference.frame.rows;
    let ref_k = ref_n - placed(&reference.frame, fitted);
    if n == 0 || (k == 0 && ref_k == 0) {
        return None;
    }
    Some(Score {
        detector: detector.to_string(),
        family: Family::Security,
        feature: format!("{}_unplaced", fitted.space),
        test: "unplaced_fraction".into(),
        statistic: k as f64 / n as f64,
        p_value: stats::fisher_greater(k as u64, n as u64, ref_k as u64, ref_n as u64),
        n_reference: ref_n,
        n_window: n,
        method: format!(
            "requests without a complete {} row of width {}; reference_rate={ref_k}/{ref_n} fisher",
            fitted.space,
            fitted.mean.len()
        ),
        effect: None,
        examples: Vec::new(),
        band: None,
        threat: Some(Threat::Evasion),
    })
}

/// Per-request out-of-distribution scoring (Mahalanobis distance under a
/// Ledoit-Wolf covariance) on numeric feature rows and on embeddings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OodConfig {
    /// Score requests' distances to the reference.
    pub enabled: bool,
    /// A request is out of distribution beyond this quantile of the
    /// reference's own (cross-fitted) distances.
    pub quantile: f64,
    /// The first this many reference rows are fitted.
    pub max_reference: usize,
    /// Folds of the cross-fit that sets the threshold, 2 to 20: each fold
    /// is one more covariance fitted and inverted, and the reference needs
    /// ten rows per fold.
    pub folds: usize,
    /// The reference's outer shell, for input-space coverage per client,
    /// begins at this quantile of its distances.
    pub coverage_quantile: f64,
}

impl Default for OodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            quantile: 0.999,
            max_reference: 50_000,
            folds: 5,
            coverage_quantile: 0.9,
        }
    }
}

impl OodConfig {
    pub fn validate(&self) -> Result<(), String> {
        let q = self.quantile;
        if !(q > 0.5 && q < 1.0) {
            return Err(format!("detect.ood.quantile must lie in (0.5, 1), got {q}"));
        }
        let c = self.coverage_quantile;
        if !(0.5..1.0).contains(&c) {
            return Err(format!(
                "detect.ood.coverage_quantile must lie in [0.5, 1), got {c}"
            ));
        }
        if !(2..=MAX_FOLDS).contains(&self.folds) {
            return Err(format!(
                "detect.ood.folds must lie in 2..={MAX_FOLDS}, got {}",
                self.folds
            ));
        }
        Ok(())
    }
}

/// More folds than this add covariance fits and little else: the
/// threshold's rows are already all held out.
const MAX_FOLDS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn folds_outside_two_to_twenty_are_refused() {
        // Before, 0 and 1 were taken as 2 without a word, and a huge count
        // overflowed `10 * folds` into a list of that many folds.
        for (folds, ok) in [(0, false), (1, false), (2, true), (20, true), (21, false)] {
            let config = OodConfig {
                folds,
                ..OodConfig::default()
            };
            let got = config.validate();
            assert_eq!(got.is_ok(), ok, "folds {folds}: {got:?}");
        }
        let config = OodConfig {
            folds: usize::MAX / 5,
            ..OodConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("detect.ood.folds"));
    }

    /// The cross-fit by sums gives each row the distance a covariance fitted
    /// on its training set's own rows gives it, also where one fold lies a
    /// cluster apart (there the training set is fitted on its rows) and
    /// where the folds' sums are taken twice (a wide space).
    #[test]
    fn cross_fitted_distances_are_those_of_each_training_set_fitted_alone() {
        let engine = Engine::open(super::super::DeviceChoice::Cpu, 1 << 20).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (n, d, far) in [
            (500, 6, 0.0),
            (500, 6, 1e6),
            (500, 6, -1e6),
            (120, 1000, 0.0),
        ] {
            let rows: Vec<Vec<f64>> = (0..n)
                .map(|i| {
                    (0..d)
                        .map(|j| {
                            let v: f64 = rng.random_range(-1.0..1.0);
                            // The last fold's first column a cluster apart
                            // (far > 0), or far wider about the same mean
                            // (far < 0: alternate signs).
                            let apart = match far > 0.0 {
                                true => far,
                                false => far * (2.0 * (i % 2) as f64 - 1.0),
                            };
                            v + if j == 0 && i >= n * 4 / 5 { apart } else { 0.0 }
                        })
                        .collect()
                })
                .collect();
            let parts: Vec<_> = (0..5).map(|f| f * n / 5..(f + 1) * n / 5).collect();
            let (got, _) = cross_fitted(&engine, &rows, &parts)
                .unwrap()
                .expect("invertible");
            let want = band::cross_fitted(&rows, 5, |train, test| {
                let (mean, precision, _) = covariance(train).expect("invertible");
                engine.mahalanobis(test, &mean, &precision).map(Some)
            })
            .unwrap()
            .unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "n={n} d={d} far={far} row {i}: {g} against {w}"
                );
            }
        }
    }
}
