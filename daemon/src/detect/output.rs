use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, chi2_score};

/// Output distribution: chi-squared on the mix of predicted classes.
pub struct OutputDistribution;

impl Detector for OutputDistribution {
    fn name(&self) -> &'static str {
        "output_distribution"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        Ok(chi2_score(
            engine,
            self.name(),
            Family::Output,
            "predicted_class",
            &reference.frame.predicted,
            &window.predicted,
        )?
        .into_iter()
        .collect())
    }
}
