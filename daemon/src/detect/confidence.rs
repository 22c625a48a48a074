use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, ks_scores};

/// Confidence shift: KS on the per-request maximum class probability.
pub struct ConfidenceShift;

impl Detector for ConfidenceShift {
    fn name(&self) -> &'static str {
        "confidence_shift"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        if reference.max_probability.is_empty() || window.probabilities.is_empty() {
            return Ok(Vec::new());
        }
        let current = engine.row_max(&window.probabilities)?;
        ks_scores(
            engine,
            self.name(),
            Family::Confidence,
            vec![(
                "max_probability".into(),
                &reference.max_probability,
                &current,
            )],
        )
    }
}
