//! Confidence shift: per request the largest class probability, the margin
//! to the runner-up and the entropy; per window a KS test and a Welch test of
//! the mean for each, and the expected accuracy (the mean of the max
//! probability, isotonic-calibrated on the reference where the reference
//! carries true labels) against a band set by the reference itself.

use super::band::{Band, Spread};
use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, ks_scores, stats};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Per-request confidence columns of a frame: max probability, margin,
/// entropy, and whether the prediction was right where that is known.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub max: Vec<f64>,
    pub margin: Vec<f64>,
    pub entropy: Vec<f64>,
    pub correct: Vec<Option<bool>>,
    /// The longest probability vector seen.
    pub classes: usize,
}

impl Columns {
    pub fn of(frame: &Frame) -> Self {
        let mut c = Columns::default();
        for (p, correct) in frame.probabilities.iter().zip(&frame.correct) {
            c.classes = c.classes.max(p.len());
            if let Some((max, margin, entropy)) = stats::confidence(p) {
                c.max.push(max);
                c.margin.push(margin);
                c.entropy.push(entropy);
                c.correct.push(*correct);
            }
        }
        c
    }
}

/// The reference side of the confidence detectors.
#[derive(Debug, Clone, Default)]
pub struct Fitted {
    pub columns: Columns,
    /// Max probability, margin and entropy, sorted once for every window's KS.
    pub sorted: [stats::Sorted; 3],
    /// Isotonic map from max probability to P(correct), when the reference
    /// has at least `min_labels` true labels.
    pub calibration: Option<stats::Isotonic>,
    pub labelled: usize,
    /// Spread of the reference's per-request expected accuracy under
    /// `calibration`, for the analytic band.
    pub spread: Option<Spread>,
    /// Calibrated from the reference's own windows of the live size.
    pub band: Option<Band>,
}

fn calibrate(
    columns: &Columns,
    skip: std::ops::Range<usize>,
    min_labels: usize,
) -> Option<stats::Isotonic> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, (max, correct)) in columns.max.iter().zip(&columns.correct).enumerate() {
        if let (false, Some(c)) = (skip.contains(&i), correct) {
            x.push(*max);
            y.push(f64::from(u8::from(*c)));
        }
    }
    (x.len() >= min_labels.max(1))
        .then(|| stats::Isotonic::fit(&x, &y))
        .flatten()
}

fn expected_accuracy(max: &[f64], calibration: Option<&stats::Isotonic>) -> f64 {
    match calibration {
        Some(iso) => max.iter().map(|p| iso.predict(*p)).sum::<f64>() / max.len() as f64,
        None => stats::mean_var(max).0,
    }
}

pub fn fit(frame: &Frame, window_rows: usize, config: &ConfidenceConfig) -> Fitted {
    let columns = Columns::of(frame);
    let n = columns.max.len();
    if n == 0 {
        return Fitted::default();
    }
    let labelled = columns.correct.iter().filter(|c| c.is_some()).count();
    let calibration = calibrate(&columns, 0..0, config.min_labels);
    let spread = match &calibration {
        Some(iso) => Spread::of(
            &columns
                .max
                .iter()
                .map(|p| iso.predict(*p))
                .collect::<Vec<_>>(),
        ),
        None => Spread::of(&columns.max),
    };
    let band = super::band::windows(n, window_rows, config.min_band_windows).map(|k| {
        // Each reference window scored as a live one would be, against a
        // calibration that never saw it.
        let values: Vec<f64> = (0..k)
            .map(|i| {
                let part = i * window_rows..(i + 1) * window_rows;
                let iso = calibration
                    .as_ref()
                    .and_then(|_| calibrate(&columns, part.clone(), config.min_labels));
                expected_accuracy(&columns.max[part], iso.as_ref())
            })
            .collect();
        Band::from_windows(&values, window_rows)
    });
    let sorted = [&columns.max, &columns.margin, &columns.entropy].map(|c| stats::Sorted::new(c));
    Fitted {
        columns,
        sorted,
        calibration,
        labelled,
        spread,
        band,
    }
}

pub struct ConfidenceShift {
    pub ks: stats::KsPolicy,
}

impl Detector for ConfidenceShift {
    fn name(&self) -> &'static str {
        "confidence_shift"
    }

    fn score(
        &self,
        _engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let fitted = &reference.confidence;
        let current = Columns::of(window);
        if fitted.columns.max.is_empty() || current.max.is_empty() {
            return Ok(Vec::new());
        }
        let mut aspects = vec![
            ("max_probability", &fitted.columns.max, &current.max),
            ("margin", &fitted.columns.margin, &current.margin),
            ("entropy", &fitted.columns.entropy, &current.entropy),
        ];
        // With two classes margin (2 max - 1) and entropy are monotone
        // functions of the max probability: the same KS statistic, the same
        // information, and two more pages for one event.
        if fitted.columns.classes.max(current.classes) <= 2 {
            aspects.truncate(1);
        }
        let windows: Vec<Vec<f64>> = aspects.iter().map(|(_, _, c)| stats::sorted(c)).collect();
        let mut scores = ks_scores(
            &self.ks,
            self.name(),
            Family::Confidence,
            aspects
                .iter()
                .zip(&fitted.sorted)
                .zip(&windows)
                .map(|(((name, _, _), r), c)| (name.to_string(), r, c.as_slice()))
                .collect(),
        );
        for (name, r, c) in aspects {
            if let Some(w) = stats::welch_t(r, c) {
                scores.push(Score {
                    detector: "confidence_mean".into(),
                    family: Family::Confidence,
                    feature: name.into(),
                    test: "welch_t".into(),
                    statistic: w.change,
                    p_value: w.p_value,
                    n_reference: r.len(),
                    n_window: c.len(),
                    method: format!("t={:.4} df={:.1}", w.statistic, w.df),
                    effect: None,
                    examples: Vec::new(),
                    band: None,
                    threat: None,
                });
            }
        }
        scores.extend(expected_accuracy_score(fitted, &current));
        Ok(scores)
    }
}

/// Expected accuracy against its band. Only a drop matters: a model that
/// got more sure is a confidence shift, which the tests before report.
fn expected_accuracy_score(fitted: &Fitted, current: &Columns) -> Option<Score> {
    let m = current.max.len();
    let band = Band::for_window(fitted.band.as_ref(), fitted.spread.as_ref(), m)?;
    let value = expected_accuracy(&current.max, fitted.calibration.as_ref());
    Some(Score {
        detector: "expected_accuracy".into(),
        family: Family::Confidence,
        feature: if fitted.calibration.is_some() {
            "calibrated_max_probability".into()
        } else {
            "max_probability".into()
        },
        test: "band".into(),
        statistic: value,
        p_value: band.lower_tail(value),
        n_reference: fitted.columns.max.len(),
        n_window: m,
        method: format!("{} labelled={}", band.describe(), fitted.labelled),
        effect: None,
        examples: Vec::new(),
        band: Some(band),
        threat: None,
    })
}

/// Confidence shift and expected accuracy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidenceConfig {
    /// True labels (`actual`) the reference needs before expected accuracy
    /// is isotonic-calibrated; below it the raw max probability is used.
    pub min_labels: usize,
    /// Reference windows of the live size needed for a calibrated band;
    /// with fewer, the band is the per-request spread over sqrt(window size).
    pub min_band_windows: usize,
}

impl Default for ConfidenceConfig {
    fn default() -> Self {
        Self {
            min_labels: 100,
            min_band_windows: 10,
        }
    }
}
