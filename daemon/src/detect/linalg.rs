//! Small dense linear algebra in f64 on the host: the shrunk covariance and
//! its inverse that the out-of-distribution score needs. Fitted once per
//! reference, so clarity beats speed here; the per-request work runs on the
//! device.

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
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / nf)
        .collect();
    // S = Xc^T Xc and sum_i (sum_j x_ij^2)^2, both in one pass.
    let mut s = vec![0.0f64; d * d];
    let mut beta_sum = 0.0f64;
    let mut xc = vec![0.0f64; d];
    for r in rows {
        for j in 0..d {
            xc[j] = r[j] - mean[j];
        }
        let mut norm2 = 0.0;
        for a in 0..d {
            let xa = xc[a];
            norm2 += xa * xa;
            let row = &mut s[a * d..(a + 1) * d];
            for b in a..d {
                row[b] += xa * xc[b];
            }
        }
        beta_sum += norm2 * norm2;
    }
    for a in 0..d {
        for b in 0..a {
            s[a * d + b] = s[b * d + a];
        }
    }
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

/// The inverse of a symmetric positive-definite `d x d` matrix through its
/// Cholesky factor; `None` when it is not positive definite.
pub fn spd_inverse(a: &[f64], d: usize) -> Option<Vec<f64>> {
    // Lower-triangular L with A = L L^T.
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut sum = a[i * d + j];
            for k in 0..j {
                sum -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if !(sum > 0.0 && sum.is_finite()) {
                    return None;
                }
                l[i * d + i] = sum.sqrt();
            } else {
                l[i * d + j] = sum / l[j * d + j];
            }
        }
    }
    // L^{-1} by forward substitution, then A^{-1} = L^{-T} L^{-1}.
    let mut li = vec![0.0f64; d * d];
    for c in 0..d {
        li[c * d + c] = 1.0 / l[c * d + c];
        for i in (c + 1)..d {
            let mut sum = 0.0;
            for k in c..i {
                sum -= l[i * d + k] * li[k * d + c];
            }
            li[i * d + c] = sum / l[i * d + i];
        }
    }
    let mut inv = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let sum: f64 = (i..d).map(|k| li[k * d + i] * li[k * d + j]).sum();
            inv[i * d + j] = sum;
            inv[j * d + i] = sum;
        }
    }
    Some(inv)
}

/// Eigenvalues (descending) and unit eigenvectors (as rows, same order) of
/// a symmetric `d x d` matrix by cyclic Jacobi rotations: slow for large d
/// (O(d^3) per sweep) but simple and accurate to rounding, which is what a
/// once-per-reference fit wants.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut m = a.to_vec();
    let mut v = vec![0.0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = m
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * d + j] * m[i * d + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..d {
            for q in (p + 1)..d {
                let apq = m[p * d + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * d + p], m[q * d + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (mkp, mkq) = (m[k * d + p], m[k * d + q]);
                    m[k * d + p] = c * mkp - s * mkq;
                    m[k * d + q] = s * mkp + c * mkq;
                }
                for k in 0..d {
                    let (mpk, mqk) = (m[p * d + k], m[q * d + k]);
                    m[p * d + k] = c * mpk - s * mqk;
                    m[q * d + k] = s * mpk + c * mqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| m[b * d + b].total_cmp(&m[a * d + a]));
    let values = order.iter().map(|&i| m[i * d + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| (0..d).map(|k| v[k * d + i]).collect())
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
