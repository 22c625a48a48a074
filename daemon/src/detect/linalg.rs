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
    let n = rows.len();
    let d = rows[0].len();
    let nf = n as f64;
    // Summed row after row, each column in row order as before.
    let mut mean = vec![0.0f64; d];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v;
        }
    }
    for m in &mut mean {
        *m /= nf;
    }
    // The centred rows, row after row (the rows' own order: one pass over
    // memory); read as column-major they are Xc^T.
    let mut flat = Vec::with_capacity(n * d);
    let mut beta_sum = 0.0f64;
    for r in rows {
        let start = flat.len();
        flat.extend(r.iter().zip(&mean).map(|(v, m)| v - m));
        let norm2: f64 = flat[start..].iter().map(|x| x * x).sum();
        beta_sum += norm2 * norm2;
    }
    let xct = DMatrix::from_vec(d, n, flat);
    // S = Xc^T Xc as one blocked product; sum_i (sum_j x_ij^2)^2 above.
    let s = symmetric(&xct * xct.transpose());
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
    // The estimator as scikit-learn's `ledoit_wolf_shrinkage` writes it.
    let delta_raw = s.iter().map(|v| v * v).sum::<f64>() / (nf * nf);
    let beta = (beta_sum / nf - delta_raw) / (d as f64 * nf);
    let delta = (delta_raw - 2.0 * mu * trace + d as f64 * mu * mu) / d as f64;
    let beta = beta.min(delta);
    let shrinkage = if beta == 0.0 { 0.0 } else { beta / delta };
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
