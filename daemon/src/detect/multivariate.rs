//! Multivariate drift: an MMD^2 permutation test between the reference's
//! rows and the window's, standardised by the reference so that no feature
//! dominates the kernel by its units.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::linalg::Standardiser;
use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The reference side of the test, prepared once per model.
#[derive(Debug, Clone)]
pub struct Fitted {
    scaler: Standardiser,
    rows: Vec<Vec<f64>>,
    sigma: f64,
    /// `embedding` or `numeric_features`: what the rows are.
    feature: &'static str,
}

impl Fitted {
    pub fn sigma(&self) -> f64 {
        self.sigma
    }
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// Standardises the first `max_reference` rows and fits the bandwidth; none
/// when the reference has too few rows or rows of unequal length.
pub fn fit(
    engine: &Engine,
    frame: &Frame,
    config: &MultivariateConfig,
) -> Result<Option<Fitted>, DetectError> {
    let (feature, vectors) = frame.vectors();
    let rows: Vec<Vec<f64>> = vectors
        .iter()
        .take(config.max_reference.max(2))
        .cloned()
        .collect();
    let d = rows.first().map_or(0, Vec::len);
    if rows.len() < 10 || d < 2 || rows.iter().any(|r| r.len() != d) {
        return Ok(None);
    }
    let scaler = Standardiser::fit(&rows);
    let rows = scaler.apply(&rows);
    let sigma = engine.median_bandwidth(&rows)?;
    if !(sigma.is_finite() && sigma > 0.0) {
        return Ok(None);
    }
    Ok(Some(Fitted {
        scaler,
        rows,
        sigma,
        feature,
    }))
}

pub struct MultivariateDrift {
    pub config: MultivariateConfig,
}

impl Detector for MultivariateDrift {
    fn name(&self) -> &'static str {
        "multivariate_drift"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let Some(fitted) = &reference.multivariate else {
            return Ok(Vec::new());
        };
        let d = fitted.scaler.mean.len();
        let current: Vec<Vec<f64>> = window
            .vectors()
            .1
            .iter()
            .filter(|r| r.len() == d)
            .cloned()
            .collect();
        if current.len() < 2 {
            return Ok(Vec::new());
        }
        let current = fitted.scaler.apply(&current);
        let total = fitted.rows.len() + current.len();
        // Seeded by configuration and size: the same window always gets the
        // same p-value, on a replay too.
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ total as u64);
        let permutations: Vec<Vec<usize>> = (0..self.config.permutations.max(1))
            .map(|_| {
                let mut p: Vec<usize> = (0..total).collect();
                p.shuffle(&mut rng);
                p
            })
            .collect();
        let r = engine.mmd_permutation(&fitted.rows, &current, fitted.sigma, &permutations)?;
        Ok(vec![Score {
            detector: self.name().to_string(),
            family: Family::Drift,
            feature: fitted.feature.into(),
            test: "mmd".into(),
            statistic: r.statistic,
            p_value: r.p_value,
            n_reference: fitted.rows.len(),
            n_window: current.len(),
            method: format!("permutations={} sigma={:.6}", r.permutations, r.sigma),
            effect: None,
            examples: Vec::new(),
            band: None,
            threat: None,
        }])
    }
}

/// Multivariate drift on each window's rows (embeddings, or the numeric
/// features standardised by the reference).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MultivariateConfig {
    /// Off by default until its false-alarm rate is calibrated in the stream.
    pub enabled: bool,
    /// Permutations per window; the smallest possible p-value is 1/(1 + this),
    /// so it must exceed the number of tests in a window divided by alpha.
    pub permutations: usize,
    /// The first this many reference rows are used (the kernel grows with the square).
    pub max_reference: usize,
    /// Seed of the permutations: the same window gives the same p-value.
    pub seed: u64,
    /// `mmd` (the permutation test) or `pca` (reconstruction error, far
    /// cheaper per window, judged against a band from the reference).
    pub method: MultivariateMethod,
    /// `pca`: keep the components that explain this share of the variance.
    pub pca_variance: f64,
    /// `pca`: reference windows of the live size needed for a band from
    /// them; with fewer, cross-fitted per-row errors over sqrt(window size).
    pub min_band_windows: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MultivariateMethod {
    /// MMD² permutation test (Gaussian kernel); meant for a GPU.
    #[default]
    Mmd,
    /// PCA reconstruction error against a band from the reference.
    Pca,
}

impl Default for MultivariateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            permutations: 1000,
            max_reference: 2000,
            seed: 0,
            method: MultivariateMethod::Mmd,
            pca_variance: 0.65,
            min_band_windows: 10,
        }
    }
}

impl MultivariateConfig {
    pub fn validate(&self) -> Result<(), String> {
        let v = self.pca_variance;
        if !(v > 0.0 && v < 1.0) {
            return Err(format!(
                "detect.multivariate.pca_variance must lie in (0, 1), got {v}"
            ));
        }
        Ok(())
    }
}
