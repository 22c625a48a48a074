use super::{
    DetectError, Detector, EFFECT_THRESHOLD, Effect, Engine, Family, Frame, LARGE_REFERENCE,
    Reference, Score, chi2_score, ks_scores, stats,
};

/// Per-feature input drift: KS on numeric features, chi-squared on
/// categorical ones; on references above `LARGE_REFERENCE` rows each score
/// also carries its effect size (normalised Wasserstein for numeric,
/// Jensen-Shannon distance for categorical), which must pass
/// `EFFECT_THRESHOLD` too before the score alerts.
pub struct FeatureDrift;

impl Detector for FeatureDrift {
    fn name(&self) -> &'static str {
        "feature_drift"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let pairs = reference
            .schema
            .numeric
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.clone(),
                    &reference.frame.numeric[i],
                    &window.numeric[i],
                )
            })
            .collect();
        let mut scores = ks_scores(engine, self.name(), Family::Drift, pairs)?;
        for s in &mut scores {
            if s.n_reference > LARGE_REFERENCE {
                let i = reference
                    .schema
                    .numeric
                    .iter()
                    .position(|n| *n == s.feature)
                    .unwrap_or_default();
                s.effect = Some(Effect {
                    name: "wasserstein_normalised".into(),
                    value: stats::wasserstein_normalised(
                        &reference.frame.numeric[i],
                        &window.numeric[i],
                    ),
                    threshold: EFFECT_THRESHOLD,
                });
            }
        }
        for (i, name) in reference.schema.categorical.iter().enumerate() {
            let (r, c) = (&reference.frame.categorical[i], &window.categorical[i]);
            if let Some(mut s) = chi2_score(engine, self.name(), Family::Drift, name, r, c)? {
                if s.n_reference > LARGE_REFERENCE {
                    let (cr, cc) = stats::bin_categorical(r, c);
                    s.effect = Some(Effect {
                        name: "jensen_shannon".into(),
                        value: stats::jensen_shannon(&cr, &cc),
                        threshold: EFFECT_THRESHOLD,
                    });
                }
                scores.push(s);
            }
        }
        Ok(scores)
    }
}
