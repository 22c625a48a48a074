//! Multivariate drift, the cheap way (NannyML's data-reconstruction
//! detector): standardise the rows by the reference, keep the principal
//! components that explain `pca_variance` of the reference's variance, and
//! score a window by the mean distance between its rows and their
//! reconstruction from those components. A change in how features move
//! together leaves rows off the reference's subspace and the error grows.
//! The band the mean error is judged against comes from the reference
//! itself: leave-one-out reference windows of the live size where there are
//! enough of them, else cross-fitted per-row errors over sqrt(window size).

use super::MultivariateConfig;
use super::band::{self, Band, Spread};
use super::linalg::{self, Standardiser};
use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, stats};

/// A standardiser and the retained principal axes.
#[derive(Debug, Clone)]
pub struct Pca {
    pub scaler: Standardiser,
    /// Unit principal axes, one row each, largest variance first.
    pub components: Vec<Vec<f64>>,
    /// Share of the variance the kept components explain.
    pub explained: f64,
}

/// `StandardScaler` then `PCA(n_components=variance)` as scikit-learn fits
/// them: population standard deviations, and the fewest components whose
/// cumulative explained-variance ratio exceeds `variance`.
pub fn fit_pca(rows: &[Vec<f64>], variance: f64) -> Option<Pca> {
    let n = rows.len();
    let d = rows.first()?.len();
    if n < 2 || d == 0 {
        return None;
    }
    let nf = n as f64;
    let scaler = Standardiser::fit(rows);
    let z = scaler.apply(rows);
    let mut cov = vec![0.0f64; d * d];
    for r in &z {
        for a in 0..d {
            for b in a..d {
                cov[a * d + b] += r[a] * r[b];
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            cov[a * d + b] /= nf - 1.0;
            cov[b * d + a] = cov[a * d + b];
        }
    }
    let (values, vectors) = linalg::symmetric_eigen(&cov, d);
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut cumulative = 0.0;
    let mut k = 0;
    for v in &values {
        if cumulative / total > variance {
            break;
        }
        cumulative += v.max(0.0);
        k += 1;
    }
    Some(Pca {
        scaler,
        components: vectors.into_iter().take(k.max(1)).collect(),
        explained: cumulative / total,
    })
}

/// Each row's reconstruction error under `pca`, on the device.
pub fn errors(engine: &Engine, pca: &Pca, rows: &[Vec<f64>]) -> Result<Vec<f64>, DetectError> {
    engine.reconstruction_errors(&pca.scaler.apply(rows), &pca.components)
}

/// The reference side, fitted once per model.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// `embedding` or `numeric_features`.
    pub feature: &'static str,
    pub pca: Pca,
    /// Spread of cross-fitted per-row errors of the reference, for the
    /// analytic band.
    pub spread: Spread,
    /// From leave-one-out reference windows of the live size, when enough.
    pub band: Option<Band>,
}

pub fn fit(
    engine: &Engine,
    frame: &Frame,
    config: &MultivariateConfig,
    window_rows: usize,
) -> Result<Option<Fitted>, DetectError> {
    let (feature, vectors) = frame.vectors();
    let rows = &vectors[..vectors.len().min(config.max_reference)];
    let d = rows.first().map_or(0, Vec::len);
    let folds = 5;
    if d < 2 || rows.len() < 10 * folds || rows.iter().any(|r| r.len() != d) {
        return Ok(None);
    }
    let Some(pca) = fit_pca(rows, config.pca_variance) else {
        return Ok(None);
    };
    // Keeping every axis rebuilds every row exactly: nothing to measure
    // (independent features end here; the per-feature tests cover them).
    if pca.components.len() >= d {
        tracing::info!(
            feature,
            dimensions = d,
            "pca keeps every dimension at this variance share; no reconstruction score"
        );
        return Ok(None);
    }
    let refit = |train: &[Vec<f64>]| fit_pca(train, config.pca_variance);
    let per_row = band::cross_fitted(rows, folds, |train, test| {
        refit(train).map(|p| errors(engine, &p, test)).transpose()
    })?;
    let Some(spread) = per_row.as_deref().and_then(Spread::of) else {
        return Ok(None);
    };
    let band = match band::windows(rows.len(), window_rows, config.min_band_windows) {
        Some(k) => band::leave_one_window_out(rows, window_rows, k, |rest, window| {
            refit(rest)
                .map(|p| errors(engine, &p, window).map(|e| stats::mean_var(&e).0))
                .transpose()
        })?
        .map(|values| Band::from_windows(&values, window_rows)),
        None => None,
    };
    Ok(Some(Fitted {
        feature,
        pca,
        spread,
        band,
    }))
}

pub struct ReconstructionDrift;

impl Detector for ReconstructionDrift {
    fn name(&self) -> &'static str {
        "multivariate_drift"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let Some(fitted) = &reference.reconstruction else {
            return Ok(Vec::new());
        };
        let d = fitted.pca.scaler.mean.len();
        let rows: Vec<Vec<f64>> = window
            .vectors()
            .1
            .iter()
            .filter(|r| r.len() == d)
            .cloned()
            .collect();
        let Some(band) = Band::for_window(fitted.band.as_ref(), Some(&fitted.spread), rows.len())
        else {
            return Ok(Vec::new());
        };
        let value = stats::mean_var(&errors(engine, &fitted.pca, &rows)?).0;
        Ok(vec![Score {
            detector: self.name().to_string(),
            family: Family::Drift,
            feature: fitted.feature.into(),
            test: "pca_reconstruction".into(),
            statistic: value,
            p_value: band.upper_tail(value),
            n_reference: fitted.spread.n,
            n_window: rows.len(),
            method: format!(
                "components={}/{} explained={:.3}; {}",
                fitted.pca.components.len(),
                d,
                fitted.pca.explained,
                band.describe()
            ),
            effect: None,
            examples: Vec::new(),
            band: Some(band),
            threat: None,
        }])
    }
}
