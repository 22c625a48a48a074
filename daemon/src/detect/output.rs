use std::collections::BTreeMap;

use super::band::{self, Band, Spread};
use super::drift::{DriftConfig, UNCALIBRATED_EFFECT_THRESHOLD};
use super::{
    DetectError, Detector, Effect, Engine, Family, Frame, Reference, Score, chi2_score, ks_scores,
    stats,
};

/// The output aspects a band is kept for.
const CLASS_MIX: &str = "predicted_class";
const REGRESSION: &str = "regression_output";

/// Output distribution: chi-squared on the mix of predicted classes with its
/// Jensen-Shannon distance, and KS on regression outputs with their
/// normalised Wasserstein distance; on large references the distance must
/// pass its threshold too, calibrated on reference windows as a feature's
/// is (`[detect.drift]` governs every distance gate). Where regression
/// events carry their true value, the window's mean absolute error is
/// judged against the error band of the reference.
pub struct OutputDistribution {
    pub drift: DriftConfig,
    pub ks: stats::KsPolicy,
}

/// How many requests of the grown class a class-mix score names.
const EXAMPLES: usize = 5;

/// The first requests answered with the class whose share grew the most
/// against the reference, so that a page opens the calls behind it:
/// `req-17 client=u-3 answer=content_filter`. From the counts both sides
/// already have: no pass over the reference per window.
fn grown(reference: &stats::Counted, now: &stats::Counted, window: &Frame) -> Vec<String> {
    let share = |c: &stats::Counted, class: &str| {
        c.counts.get(class).copied().unwrap_or(0) as f64 / c.total.max(1) as f64
    };
    let Some((class, _)) = now
        .counts
        .keys()
        .map(|c| (c.as_str(), share(now, c) - share(reference, c)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
    else {
        return Vec::new();
    };
    window
        .senders
        .iter()
        .filter(|s| s.predicted.as_deref() == Some(class))
        .take(EXAMPLES)
        .map(|s| format!("{} answer={class}", s.label()))
        .collect()
}

/// The reference side of the output detector.
#[derive(Debug, Clone, Default)]
pub struct Fitted {
    /// Per aspect, its distance on leave-one-out reference windows.
    pub bands: BTreeMap<String, Band>,
    /// Absolute errors of the reference's regression outputs, where true
    /// values came with them: their spread, and their band over windows.
    pub error_spread: Option<Spread>,
    pub error_band: Option<Band>,
}

/// Cuts the reference's outputs into windows of the live size for the
/// bands of their distances and errors.
pub fn fit(
    config: &DriftConfig,
    frame: &Frame,
    predicted: &stats::Counted,
    regression: &stats::Sorted,
    window_rows: usize,
) -> Fitted {
    let cut = |n: usize| {
        band::effect_cut(n, window_rows, config.min_band_windows).filter(|_| config.calibrate)
    };
    let mut bands = BTreeMap::new();
    if let Some((rows, k)) = cut(frame.predicted.len()) {
        let values: Vec<f64> = (0..k)
            .map(|j| {
                let part = stats::Counted::of(&frame.predicted[j * rows..][..rows]);
                let (cr, cc) = stats::bin_counted(&predicted.minus(&part), &part);
                stats::jensen_shannon(&cr, &cc)
            })
            .collect();
        bands.insert(CLASS_MIX.into(), Band::from_windows(&values, rows));
    }
    if let Some((rows, k)) = cut(frame.regression.len()) {
        let values: Vec<f64> = (0..k)
            .map(|j| {
                let part = stats::sorted(&frame.regression[j * rows..][..rows]);
                regression.wasserstein_normalised_without(&part)
            })
            .collect();
        bands.insert(REGRESSION.into(), Band::from_windows(&values, rows));
    }
    let errors = &frame.regression_error;
    let error_band = band::windows_up_to(
        errors.len(),
        window_rows,
        config.min_band_windows,
        band::MAX_EFFECT_WINDOWS,
    )
    .map(|k| {
        let values: Vec<f64> = (0..k)
            .map(|j| stats::mean_var(&errors[j * window_rows..][..window_rows]).0)
            .collect();
        Band::from_windows(&values, window_rows)
    });
    Fitted {
        bands,
        error_spread: Spread::of(errors),
        error_band,
    }
}

impl OutputDistribution {
    /// The distance recorded beside an output test; it gates only on large
    /// references, against its band (rescaled to this window's size).
    fn effect(
        &self,
        reference: &Reference,
        aspect: &str,
        value: f64,
        n: usize,
        m: usize,
    ) -> Effect {
        let band = reference
            .output
            .bands
            .get(aspect)
            .and_then(|b| b.rescaled(m, n));
        let threshold = match (self.drift.effect_threshold, &band) {
            (Some(minimum), _) => minimum,
            (None, Some(_)) => 0.0,
            (None, None) => UNCALIBRATED_EFFECT_THRESHOLD,
        };
        Effect {
            name: if aspect == CLASS_MIX {
                "jensen_shannon".into()
            } else {
                "wasserstein_normalised".into()
            },
            value,
            threshold,
            gating: n > self.drift.large_reference,
            band,
        }
    }

    /// The window's mean absolute error against the reference's error band:
    /// only a rise matters.
    fn error(&self, reference: &Reference, window: &Frame) -> Option<Score> {
        let fitted = &reference.output;
        let errors = &window.regression_error;
        let band = Band::for_window(
            fitted.error_band.as_ref(),
            fitted.error_spread.as_ref(),
            errors.len(),
        )?;
        let value = stats::mean_var(errors).0;
        Some(Score {
            detector: "regression_error".into(),
            family: Family::Output,
            feature: "absolute_error".into(),
            test: "band".into(),
            statistic: value,
            p_value: band.upper_tail(value),
            n_reference: fitted.error_spread.map_or(0, |s| s.n),
            n_window: errors.len(),
            method: band.describe(),
            effect: None,
            examples: Vec::new(),
            band: Some(band),
            threat: None,
        })
    }
}

impl Detector for OutputDistribution {
    fn name(&self) -> &'static str {
        "output_distribution"
    }

    fn score(
        &self,
        _engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let (r, c) = (&reference.predicted, stats::Counted::of(&window.predicted));
        let mut scores: Vec<Score> = chi2_score(
            (self.name(), Family::Output, CLASS_MIX),
            r,
            &c,
            self.drift.pool_sparse_levels,
        )
        .into_iter()
        .collect();
        let current = stats::sorted(&window.regression);
        let mut regression = ks_scores(
            &self.ks,
            self.name(),
            Family::Output,
            vec![(REGRESSION.into(), &reference.regression, &current)],
        );
        // The distance is always recorded beside the test (the class mix's
        // Jensen-Shannon distance is what dashboards plot).
        for s in &mut scores {
            let (cr, cc) = stats::bin_counted(r, &c);
            let value = stats::jensen_shannon(&cr, &cc);
            s.effect = Some(self.effect(reference, CLASS_MIX, value, s.n_reference, s.n_window));
            s.examples = grown(r, &c, window);
        }
        for s in &mut regression {
            let value = stats::wasserstein_normalised_sorted(&reference.regression, &current);
            s.effect = Some(self.effect(reference, REGRESSION, value, s.n_reference, s.n_window));
        }
        scores.extend(regression);
        scores.extend(self.error(reference, window));
        Ok(scores)
    }
}
