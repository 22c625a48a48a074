//! Bands: the spread a per-window statistic shows on clean data, calibrated
//! on the reference itself, from which a live window's p-value follows.

use serde::Serialize;

use super::stats;

/// At most this many reference windows are scored for a band: each costs
/// a refit or a pass over the rest of the reference, and 30 values pin a
/// mean and spread down well enough.
pub const MAX_WINDOWS: usize = 30;

/// How many non-overlapping windows of `window_rows` a reference of `n`
/// rows gives a band, `None` below `min`.
pub fn windows(n: usize, window_rows: usize, min: usize) -> Option<usize> {
    let k = n.checked_div(window_rows)?.min(MAX_WINDOWS);
    (k >= min.max(2)).then_some(k)
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    pub mean: f64,
    pub sd: f64,
    /// Reference windows behind the band (0 for the analytic band).
    pub windows: usize,
    /// The window size the band holds for.
    pub window_rows: usize,
    /// `reference-windows` (leave-one-out scores of non-overlapping
    /// reference windows) or `analytic` (per-request spread / sqrt(m)).
    pub method: &'static str,
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
            method: "reference-windows",
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
            method: "analytic",
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
        let z = (value - self.mean) / self.sd;
        if self.windows >= 2 {
            let k = self.windows as f64;
            stats::student_t_cdf(z / (1.0 + 1.0 / k).sqrt(), k - 1.0)
        } else {
            stats::normal_cdf(z)
        }
    }

    /// P(a clean window's value >= `value`).
    pub fn upper_tail(&self, value: f64) -> f64 {
        if self.sd <= 0.0 {
            return if value > self.mean { 0.0 } else { 1.0 };
        }
        let z = (value - self.mean) / self.sd;
        let mirrored = Band {
            mean: 0.0,
            sd: 1.0,
            ..self.clone()
        };
        mirrored.lower_tail(-z)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} mean={:.6} sd={:.6} windows={}",
            self.method, self.mean, self.sd, self.windows
        )
    }
}
