use super::{
    DetectError, Detector, Engine, Family, Frame, Reference, Score, chi2_score, ks_scores,
};

/// Per-feature input drift: KS on numeric features, chi-squared on categorical.
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
        for (i, name) in reference.schema.categorical.iter().enumerate() {
            scores.extend(chi2_score(
                engine,
                self.name(),
                Family::Drift,
                name,
                &reference.frame.categorical[i],
                &window.categorical[i],
            )?);
        }
        Ok(scores)
    }
}
