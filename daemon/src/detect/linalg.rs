//! Dense linear algebra in f64 on the host, through nalgebra (its products
//! run on matrixmultiply's blocked kernels): the shrunk covariance and its
//! inverse that the out-of-distribution score needs, and the eigenvectors
//! of the reconstruction detector. Fitted once per reference; the
//! per-request work runs on the device.

use nalgebra::{Cholesky, DMatrix, SymmetricEigen};

/// Per-column centring and scaling as scikit-learn's `StandardScaler`:
/// population standard deviations, and a constant column left unscaled
/// (dividing by ~0 would turn any later change in it into an infinity).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardiser {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardiser {
    /// Rows must be non-empty and of equal length.
    pub fn fit(rows: &[Vec<f64>]) -> Self {
        let d = rows[0].len();
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let scale = (0..d)
            .map(|j| {
                let var = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
                if var > 0.0 { var.sqrt() } else { 1.0 }
            })
            .collect();
        Self { mean, scale }
    }

    pub fn apply(&self, rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
        rows.iter()
            .map(|r| {
                r.iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .map(|((v, m), s)| (v - m) / s)
                    .collect()
            })
            .collect()
    }
}

/// A mean and a Ledoit-Wolf shrunk covariance, row-major `d x d`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shrunk {
    pub mean: Vec<f64>,
    pub covariance: Vec<f64>,
    pub shrinkage: f64,
}

/// `sklearn.covariance.LedoitWolf().fit(rows)`: the maximum-likelihood
/// covariance of the centred rows pulled towards `mu * I` (mu the mean
/// variance) by the shrinkage that minimises the expected squared error.
/// Rows must be non-empty and of equal length.
pub fn ledoit_wolf(rows: &[Vec<f64>]) -> Shrunk {
    Moments::of(rows, &column_means(rows)).ledoit_wolf()
}

/// Each column's mean, summed row after row. Rows must be non-empty and of
/// equal length.
pub fn column_means(rows: &[Vec<f64>]) -> Vec<f64> {
    let mut mean = vec![0.0f64; rows[0].len()];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    let n = rows.len() as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

/// The whole's second moment against a part's past which the part is not
/// taken by subtraction (about 1e-12 of relative error left at the limit).
const FAR_RATIO: f64 = 100.0;

/// Sums over a set of rows taken about a fixed origin: enough for the
/// Ledoit-Wolf estimate of the set, or of the set less a part of it, without
/// going over the rows again. Cross-fitting sums each fold once and takes
/// every training set by subtraction, where fitting each training set anew
/// went over every row `folds` times (and copied it).
#[derive(Debug, Clone)]
pub struct Moments {
    origin: Vec<f64>,
    n: usize,
    /// Σ y, with y = row - origin.
    sum: Vec<f64>,
    /// Σ y yᵀ.
    gram: DMatrix<f64>,
    /// Σ |y|² y.
    cubic: Vec<f64>,
    /// Σ |y|⁴.
    quartic: f64,
}

impl Moments {
    /// Rows must be non-empty and as long as `origin`. The origin should lie
    /// near the rows' mean (the sums are moved to the mean afterwards, and
    /// far from it they would cancel).
    pub fn of(rows: &[Vec<f64>], origin: &[f64]) -> Self {
        let d = origin.len();
        let (mut sum, mut cubic, mut quartic) = (vec![0.0; d], vec![0.0; d], 0.0f64);
        // The centred rows, row after row (the rows' own order: one pass over
        // memory); read as column-major they are Yᵀ.
        let mut flat = Vec::with_capacity(rows.len() * d);
        for r in rows {
            let start = flat.len();
            flat.extend(r.iter().zip(origin).map(|(v, o)| v - o));
            let y = &flat[start..];
            let norm2: f64 = y.iter().map(|x| x * x).sum();
            quartic += norm2 * norm2;
            for ((s, c), v) in sum.iter_mut().zip(&mut cubic).zip(y) {
                *s += v;
                *c += norm2 * v;
            }
        }
        let yt = DMatrix::from_vec(d, rows.len(), flat);
        // Σ y yᵀ as one blocked product.
        let gram = &yt * yt.transpose();
        Self {
            origin: origin.to_vec(),
            n: rows.len(),
            sum,
            gram,
            cubic,
            quartic,
        }
    }

    /// The sums of two disjoint sets taken about the same origin.
    pub fn plus(mut self, other: &Moments) -> Self {
        debug_assert_eq!(self.origin, other.origin);
        self.n += other.n;
        self.gram += &other.gram;
        self.quartic += other.quartic;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.cubic.iter_mut().zip(&other.cubic) {
            *a += b;
        }
        self
    }

    /// The sums of this set less `part`, a subset of it.
    pub fn less(&self, part: &Moments) -> Self {
        debug_assert_eq!(self.origin, part.origin);
        let minus = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect();
        Self {
            origin: self.origin.clone(),
            n: self.n - part.n,
            sum: minus(&self.sum, &part.sum),
            gram: &self.gram - &part.gram,
            cubic: minus(&self.cubic, &part.cubic),
            quartic: self.quartic - part.quartic,
        }
    }

    /// Whether this set, taken out of `whole` by subtraction, would have
    /// lost most of its digits: where its own second moment (about its own
    /// mean) is a small share of the whole's about the origin, because its
    /// mean lies far from the origin or the rest of the whole is far wider.
    /// The fourth-power sum loses about the square of that ratio.
    pub fn cancels_in(&self, whole: &Moments) -> bool {
        let nf = self.n as f64;
        let shift: f64 = self.sum.iter().map(|s| (s / nf).powi(2)).sum();
        let spread = self.trace() - nf * shift;
        !(whole.trace() <= FAR_RATIO * spread.max(0.0))
    }

    /// Σ |y|².
    fn trace(&self) -> f64 {
        (0..self.origin.len()).map(|j| self.gram[(j, j)]).sum()
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The set's Ledoit-Wolf estimate, as `ledoit_wolf` of its rows. The sums
    /// are moved from the origin to the set's mean: with c the mean less the
    /// origin and z = y - c, Σ z zᵀ = Σ y yᵀ - n c cᵀ, and |z|² expands into
    /// |y|² - 2 y·c + |c|², whose square sums from the stored moments.
    pub fn ledoit_wolf(&self) -> Shrunk {
        let d = self.origin.len();
        let nf = self.n as f64;
        let c: Vec<f64> = self.sum.iter().map(|s| s / nf).collect();
        let mean = self.origin.iter().zip(&c).map(|(o, c)| o + c).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut s = vec![0.0; d * d];
        let mut gram_c = 0.0;
        for a in 0..d {
            for b in a..d {
                let v = self.gram[(a, b)] - nf * c[a] * c[b];
                s[a * d + b] = v;
                s[b * d + a] = v;
            }
            gram_c += c[a] * (0..d).map(|b| self.gram[(a, b)] * c[b]).sum::<f64>();
        }
        let k = dot(&c, &c);
        let trace = self.trace();
        let quartic = self.quartic + 4.0 * gram_c + nf * k * k - 4.0 * dot(&c, &self.cubic)
            + 2.0 * k * trace
            - 4.0 * k * dot(&c, &self.sum);
        shrink(mean, s, quartic, nf)
    }
}

/// The Ledoit-Wolf estimate from the scatter `s` (row-major, of rows
/// centred on `mean`) and the sum of their squared norms squared, as
/// scikit-learn's `ledoit_wolf_shrinkage` writes it.
fn shrink(mean: Vec<f64>, s: Vec<f64>, quartic: f64, nf: f64) -> Shrunk {
    let d = mean.len();
    let emp: Vec<f64> = s.iter().map(|v| v / nf).collect();
    let trace: f64 = (0..d).map(|j| emp[j * d + j]).sum();
    let mu = trace / d as f64;
    if d == 1 {
        return Shrunk {
            mean,
            covariance: emp,
            shrinkage: 0.0,
        };
    }
    let delta_raw = s.iter().map(|v| v * v).sum::<f64>() / (nf * nf);
    let beta = (quartic / nf - delta_raw) / (d as f64 * nf);
    let delta = (delta_raw - 2.0 * mu * trace + d as f64 * mu * mu) / d as f64;
    let beta = beta.min(delta);
    // Kept in [0, 1]: rounding can leave beta a hair below zero.
    let shrinkage = if beta <= 0.0 { 0.0 } else { beta / delta };
    let mut covariance: Vec<f64> = emp.iter().map(|v| (1.0 - shrinkage) * v).collect();
    for j in 0..d {
        covariance[j * d + j] += shrinkage * mu;
    }
    Shrunk {
        mean,
        covariance,
        shrinkage,
    }
}

/// The inverse of a symmetric positive-definite `d x d` matrix (row-major)
/// through its Cholesky factor; `None` when it is not positive definite.
pub fn spd_inverse(a: &[f64], d: usize) -> Option<Vec<f64>> {
    if a.len() != d * d || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = DMatrix::from_row_slice(d, d, a);
    Some(symmetric(Cholesky::new(m)?.inverse()))
}

/// A product that is symmetric in exact arithmetic, as a row-major vector
/// that is symmetric to the bit: the upper triangle mirrored, so that
/// nothing downstream depends on the blocked kernel's summation order.
fn symmetric(m: DMatrix<f64>) -> Vec<f64> {
    let d = m.nrows();
    let mut out = vec![0.0; d * d];
    for a in 0..d {
        for b in a..d {
            out[a * d + b] = m[(a, b)];
            out[b * d + a] = m[(a, b)];
        }
    }
    out
}

/// Eigenvalues (descending) and unit eigenvectors (as rows, same order) of
/// a symmetric `d x d` matrix (row-major).
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let eigen = SymmetricEigen::new(DMatrix::from_row_slice(d, d, a));
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&x, &y| eigen.eigenvalues[y].total_cmp(&eigen.eigenvalues[x]));
    let values = order.iter().map(|&i| eigen.eigenvalues[i]).collect();
    let vectors = order
        .iter()
        .map(|&i| eigen.eigenvectors.column(i).iter().copied().collect())
        .collect();
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = spd_inverse(&a, 3).expect("positive definite");
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((v - f64::from(i == j)).abs() < 1e-12, "{i},{j}: {v}");
            }
        }
        assert!(spd_inverse(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    /// Rows whose folds lie apart (a trend down the rows, an offset of 40)
    /// and whose columns are correlated: a training set's mean is far from
    /// the whole's, so every term of the shift is exercised.
    fn trending_rows(n: usize, d: usize) -> Vec<Vec<f64>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..n)
            .map(|i| {
                let common: f64 = rng.random_range(-1.0..1.0);
                (0..d)
                    .map(|j| {
                        let noise: f64 = rng.random_range(-1.0..1.0);
                        40.0 + 3.0 * i as f64 / n as f64 + common * j as f64 / d as f64 + noise
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_training_set_by_subtraction_is_fitted_as_its_own_rows() {
        for (n, d, folds) in [(200, 2, 5), (1000, 7, 5), (300, 12, 3)] {
            let rows = trending_rows(n, d);
            let origin = column_means(&rows);
            let parts: Vec<_> = (0..folds)
                .map(|f| f * n / folds..(f + 1) * n / folds)
                .collect();
            let moments: Vec<Moments> = parts
                .iter()
                .map(|p| Moments::of(&rows[p.clone()], &origin))
                .collect();
            let whole = moments[1..]
                .iter()
                .fold(moments[0].clone(), |all, m| all.plus(m));
            assert_eq!(whole.len(), n);
            let close = |what: &str, got: f64, want: f64| {
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1e-3),
                    "{what} n={n} d={d}: {got} against {want}"
                );
            };
            for (part, fold) in parts.iter().zip(&moments) {
                let train = crate::detect::band::without(&rows, part.clone());
                let (got, want) = (whole.less(fold).ledoit_wolf(), ledoit_wolf(&train));
                assert!(want.shrinkage > 1e-3, "the shrinkage term is exercised");
                close("shrinkage", got.shrinkage, want.shrinkage);
                for (g, w) in got.mean.iter().zip(&want.mean) {
                    close("mean", *g, *w);
                }
                for (g, w) in got.covariance.iter().zip(&want.covariance) {
                    close("covariance", *g, *w);
                }
            }
        }
    }

    /// A training set whose mean lies far off, or beside a fold far wider
    /// than itself, is flagged; ordinary folds are not.
    #[test]
    fn a_part_is_flagged_where_subtraction_would_cancel() {
        let base = trending_rows(500, 4);
        let apart = |k: usize, v: f64| -> Vec<Vec<f64>> {
            base.iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut r = r.clone();
                    if i < 100 {
                        // Far off (every row) or far wider (alternate signs).
                        r[0] += if k == 0 {
                            v
                        } else {
                            v * (2.0 * (i % 2) as f64 - 1.0)
                        };
                    }
                    r
                })
                .collect()
        };
        for (rows, flagged) in [
            (base.clone(), false),
            (apart(0, 1e6), true),
            (apart(1, 1e6), true),
            (apart(1, 3.0), false),
        ] {
            let origin = column_means(&rows);
            let fold = Moments::of(&rows[..100], &origin);
            let whole = fold.clone().plus(&Moments::of(&rows[100..], &origin));
            let train = whole.less(&fold);
            assert_eq!(train.cancels_in(&whole), flagged, "{:?}", &rows[0]);
        }
    }

    #[test]
    fn eigen_decomposition_rebuilds_the_matrix() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let (values, vectors) = symmetric_eigen(&a, 3);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3)
                    .map(|k| values[k] * vectors[k][i] * vectors[k][j])
                    .sum();
                assert!((v - a[i * 3 + j]).abs() < 1e-12, "{i},{j}: {v}");
            }
        }
    }
}
