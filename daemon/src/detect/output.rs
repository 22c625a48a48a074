use super::{
    DetectError, Detector, Effect, Engine, Family, Frame, Reference, Score, chi2_score, ks_scores,
    stats,
};

/// Output distribution: chi-squared on the mix of predicted classes with its
/// Jensen-Shannon distance, and KS on regression outputs with their
/// normalised Wasserstein distance; on large references the distance must
/// pass its threshold too. `[detect.drift]`'s large-reference size and effect threshold apply here
/// too, so one setting governs every distance gate.
pub struct OutputDistribution {
    pub large_reference: usize,
    pub effect_threshold: f64,
    pub ks: stats::KsPolicy,
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
        let mut scores: Vec<Score> =
            chi2_score(self.name(), Family::Output, "predicted_class", r, &c)
                .into_iter()
                .collect();
        let current = stats::sorted(&window.regression);
        let mut regression = ks_scores(
            &self.ks,
            self.name(),
            Family::Output,
            vec![("regression_output".into(), &reference.regression, &current)],
        );
        // The distance is always recorded beside the test (the class mix's
        // Jensen-Shannon distance is what dashboards plot); it gates only on
        // large references.
        for s in &mut scores {
            let (cr, cc) = stats::bin_counted(r, &c);
            s.effect = Some(Effect {
                name: "jensen_shannon".into(),
                value: stats::jensen_shannon(&cr, &cc),
                threshold: self.effect_threshold,
                gating: s.n_reference > self.large_reference,
            });
        }
        for s in &mut regression {
            s.effect = Some(Effect {
                name: "wasserstein_normalised".into(),
                value: stats::wasserstein_normalised_sorted(&reference.regression, &current),
                threshold: self.effect_threshold,
                gating: s.n_reference > self.large_reference,
            });
        }
        // A changed output mix means different things with and without a
        // new model version: a deploy regression, or someone changing what
        // the serving model does (tampering, poisoning) behind the same
        // version. Say which, so the page reaches the right people.
        if let (Some(now), Some(then)) = (&window.version, &reference.frame.version) {
            let reading = if now == then {
                format!(
                    "same version as the reference ({now}): a change here is a tampering signal"
                )
            } else {
                format!("version {now} against reference {then}: a deploy change")
            };
            for s in scores.iter_mut().chain(regression.iter_mut()) {
                s.method = format!("{}; {reading}", s.method);
            }
        }
        scores.extend(regression);
        Ok(scores)
    }
}
