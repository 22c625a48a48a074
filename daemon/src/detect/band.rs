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
        let k = values.len();
        let mean = values.iter().sum::<f64>() / k as f64;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        Self {
            mean,
            sd,
            windows: k,
            window_rows,
            method: "reference-windows",
        }
    }

    /// The mean of `m` new independent draws like `per_row`, against the
    /// mean of `per_row` itself: its spread is the per-row spread times
    /// sqrt(1/m + 1/n), the second term for the reference mean's own error.
    /// `None` with fewer than two rows.
    pub fn analytic(per_row: &[f64], m: usize) -> Option<Self> {
        let n = per_row.len();
        if n < 2 || m == 0 {
            return None;
        }
        let mean = per_row.iter().sum::<f64>() / n as f64;
        let var = per_row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Some(Self {
            mean,
            sd: (var * (1.0 / m as f64 + 1.0 / n as f64)).sqrt(),
            windows: 0,
            window_rows: m,
            method: "analytic",
        })
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
