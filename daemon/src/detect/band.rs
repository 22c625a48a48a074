//! Bands: the spread a per-window statistic shows on clean data, calibrated
//! on the reference itself, from which a live window's p-value follows.

use serde::{Deserialize, Serialize};

use super::stats;

/// At most this many reference windows are scored for a band that needs a
/// refit per window (a calibration, a projection): 30 values pin a mean
/// and spread down well enough for a p-value.
pub const MAX_WINDOWS: usize = 30;

/// Effect-size bands cost one pass over a prepared column per window, so
/// they take more: the bound a gate sets from k windows carries Student's
/// t with k - 1 degrees of freedom, whose far quantiles shrink quickly
/// with k (the factor on the sd at 1 - 1e-4: 14.3 for k = 5, 4.3 for
/// k = 30, 3.9 for k = 100).
pub const MAX_EFFECT_WINDOWS: usize = 100;

/// How many non-overlapping windows of `window_rows` a reference of `n`
/// rows gives a band, `None` below `min`.
pub fn windows(n: usize, window_rows: usize, min: usize) -> Option<usize> {
    windows_up_to(n, window_rows, min, MAX_WINDOWS)
}

/// `windows` with its own cap.
pub fn windows_up_to(n: usize, window_rows: usize, min: usize, max: usize) -> Option<usize> {
    let k = n.checked_div(window_rows)?.min(max);
    (k >= min.max(2)).then_some(k)
}

/// Where live windows are too large for the reference to hold `min` of
/// them, or close by time and have no one size, an effect band is cut at
/// the size that gives this many windows and rescaled to each live window.
pub const FALLBACK_WINDOWS: usize = 20;

/// Smaller cuts than this are too noisy to scale from.
pub const MIN_CUT_ROWS: usize = 50;

/// The (rows, count) of the windows an effect band of a reference of `n`
/// rows is cut into: the live size where it gives at least `min` windows,
/// else `FALLBACK_WINDOWS` (or `min`, if more) windows of equal size.
pub fn effect_cut(n: usize, window_rows: usize, min: usize) -> Option<(usize, usize)> {
    if let Some(k) = windows_up_to(n, window_rows, min, MAX_EFFECT_WINDOWS) {
        return Some((window_rows, k));
    }
    let k = FALLBACK_WINDOWS.max(min);
    let rows = n / k;
    (rows >= MIN_CUT_ROWS).then_some((rows, k))
}

/// `rows` without `part`: what a leave-out fit trains on.
pub fn without<T: Clone>(rows: &[T], part: std::ops::Range<usize>) -> Vec<T> {
    rows[..part.start]
        .iter()
        .chain(&rows[part.end..])
        .cloned()
        .collect()
}

/// The `k` non-overlapping windows of `window_rows` at the start of `rows`,
/// each scored by `score(rest, window)`; stops at the first `None` or error.
pub fn leave_one_window_out<T: Clone, E>(
    rows: &[T],
    window_rows: usize,
    k: usize,
    mut score: impl FnMut(&[T], &[T]) -> Result<Option<f64>, E>,
) -> Result<Option<Vec<f64>>, E> {
    let mut values = Vec::with_capacity(k);
    for j in 0..k {
        let part = j * window_rows..(j + 1) * window_rows;
        match score(&without(rows, part.clone()), &rows[part])? {
            Some(v) => values.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(values))
}

/// Each row's value from a model fitted on the other `folds - 1` contiguous
/// folds (`fold(train, test)` scores `test`); in-sample values of a fitted
/// model are systematically kind to it.
pub fn cross_fitted<T: Clone, E>(
    rows: &[T],
    folds: usize,
    mut fold: impl FnMut(&[T], &[T]) -> Result<Option<Vec<f64>>, E>,
) -> Result<Option<Vec<f64>>, E> {
    let n = rows.len();
    let mut out = Vec::with_capacity(n);
    for f in 0..folds {
        let part = f * n / folds..(f + 1) * n / folds;
        match fold(&without(rows, part.clone()), &rows[part])? {
            Some(v) => out.extend(v),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Mean and variance of per-request values of the reference, kept at fit
/// time for the analytic band of any window size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub var: f64,
    pub n: usize,
}

impl Spread {
    /// `None` with fewer than two values.
    pub fn of(per_row: &[f64]) -> Option<Self> {
        (per_row.len() >= 2).then(|| {
            let (mean, var) = stats::mean_var(per_row);
            Self {
                mean,
                var,
                n: per_row.len(),
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub mean: f64,
    pub sd: f64,
    /// Reference windows behind the band (0 for the analytic band).
    pub windows: usize,
    /// The window size the band holds for.
    pub window_rows: usize,
    /// `reference-windows` (leave-one-out scores of non-overlapping
    /// reference windows) or `analytic` (per-request spread / sqrt(m)).
    pub method: String,
}

impl Band {
    /// From the values of k >= 2 reference windows of `window_rows` rows.
    pub fn from_windows(values: &[f64], window_rows: usize) -> Self {
        let (mean, var) = stats::mean_var(values);
        Self {
            mean,
            sd: var.sqrt(),
            windows: values.len(),
            window_rows,
            method: "reference-windows".into(),
        }
    }

    /// The mean of `m` new independent draws like the reference's rows,
    /// against the reference's own mean: its spread is the per-row spread
    /// times sqrt(1/m + 1/n), the second term for the reference mean's own
    /// error. `None` for an empty window.
    pub fn analytic(spread: &Spread, m: usize) -> Option<Self> {
        if m == 0 {
            return None;
        }
        Some(Self {
            mean: spread.mean,
            sd: (spread.var * (1.0 / m as f64 + 1.0 / spread.n as f64)).sqrt(),
            windows: 0,
            window_rows: m,
            method: "analytic".into(),
        })
    }

    /// This band, cut at windows of `window_rows` against the rest of the
    /// reference, for a window of `m` rows against all `n` reference rows.
    /// A distance between two samples that differ by chance alone shrinks
    /// as sqrt(1/m + 1/n) (Wasserstein, and Jensen-Shannon, whose square
    /// is a chi-squared over the effective sample size), so its mean and
    /// spread are scaled by that ratio. `None` for an empty window.
    pub fn rescaled(&self, m: usize, n: usize) -> Option<Band> {
        if m == self.window_rows {
            return Some(self.clone());
        }
        let rest = n.checked_sub(self.window_rows).filter(|r| *r > 0)?;
        if m == 0 || self.window_rows == 0 || n == 0 {
            return None;
        }
        let noise = |m: usize, n: usize| (1.0 / m as f64 + 1.0 / n as f64).sqrt();
        let s = noise(m, n) / noise(self.window_rows, rest);
        Some(Band {
            mean: self.mean * s,
            sd: self.sd * s,
            windows: self.windows,
            window_rows: m,
            method: format!("{} scaled from {} rows", self.method, self.window_rows),
        })
    }

    /// The band for a window of `m` rows: `calibrated` (from reference
    /// windows) when it was cut at that size, else the analytic one.
    pub fn for_window(
        calibrated: Option<&Band>,
        spread: Option<&Spread>,
        m: usize,
    ) -> Option<Band> {
        match calibrated {
            Some(b) if b.window_rows == m => Some(b.clone()),
            _ => spread.and_then(|s| Band::analytic(s, m)),
        }
    }

    /// P(a clean window's value <= `value`). A band from k reference windows
    /// knows its mean and spread only roughly, so a new window's value
    /// follows Student's t with k - 1 degrees of freedom scaled by
    /// sqrt(1 + 1/k) (the prediction interval), not the normal: with five
    /// windows the normal tail would page several times too often.
    pub fn lower_tail(&self, value: f64) -> f64 {
        if self.sd <= 0.0 {
            return if value < self.mean { 0.0 } else { 1.0 };
        }
        standard_cdf((value - self.mean) / self.sd, self.windows)
    }

    /// P(a clean window's value >= `value`).
    pub fn upper_tail(&self, value: f64) -> f64 {
        if self.sd <= 0.0 {
            return if value > self.mean { 0.0 } else { 1.0 };
        }
        standard_cdf((self.mean - value) / self.sd, self.windows)
    }

    /// The value a clean window exceeds with probability `level`: the
    /// upper prediction bound `upper_tail` inverts.
    pub fn upper_bound(&self, level: f64) -> f64 {
        self.bound_with(tail_factor(self.windows, level))
    }

    /// The bound at a `tail_factor` already found for this band's size.
    pub fn bound_with(&self, factor: f64) -> f64 {
        self.mean + self.sd * factor
    }

    pub fn describe(&self) -> String {
        format!(
            "{} mean={:.6} sd={:.6} windows={}",
            self.method, self.mean, self.sd, self.windows
        )
    }
}

/// P(Z <= z) for a clean window's standardised value: Student's t with
/// k - 1 degrees of freedom scaled by sqrt(1 + 1/k) for a band of k >= 2
/// windows, the normal for an analytic one (see `Band::lower_tail`).
fn standard_cdf(z: f64, windows: usize) -> f64 {
    if windows >= 2 {
        let k = windows as f64;
        stats::student_t_cdf(z / (1.0 + 1.0 / k).sqrt(), k - 1.0)
    } else {
        stats::normal_cdf(z)
    }
}

/// The standardised value a new clean window exceeds with probability
/// `level`, for a band from `windows` reference windows (the normal for an
/// analytic band): `upper_tail`'s inverse, found by bisection on its CDF,
/// which keeps its precision far into the tail.
/// A level that is not a number bounds at infinity (nothing passes), and
/// the search stops at 1e12 sds, where a gate is shut in any case.
pub fn tail_factor(windows: usize, level: f64) -> f64 {
    if level.is_nan() {
        return f64::INFINITY;
    }
    let level = level.clamp(1e-300, 0.5);
    let above = |z: f64| standard_cdf(-z, windows);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while above(hi) > level && hi < 1e12 {
        (lo, hi) = (hi, hi * 2.0);
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if above(mid) > level {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    hi
}
