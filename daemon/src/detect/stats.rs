//! Host-side f64 finishing of the statistics whose bulk work ran on the
//! device: p-values that must agree with SciPy to 1e-9.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::gamma::ln_gamma;

/// SciPy's `ks_2samp` uses the exact distribution while both samples have at
/// most this many values (its `MAX_AUTO_N`).
pub const KS_EXACT_MAX_N: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KsMethod {
    Exact,
    Asymptotic,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    pub statistic: f64,
    pub p_value: f64,
    pub method: KsMethod,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Two-sided two-sample KS from the exact integer statistic:
/// `max_diff = max_z |n2 * #{r <= z} - n1 * #{c <= z}|`, so `D = max_diff / (n1 n2)`.
/// Mirrors `scipy.stats.ks_2samp(r, c)` in its default `auto` mode.
pub fn ks_two_sample(n1: usize, n2: usize, max_diff: u64) -> KsResult {
    assert!(n1 > 0 && n2 > 0, "ks needs two non-empty samples");
    let (a, b) = (n1 as u64, n2 as u64);
    let g = gcd(a, b);
    let d = max_diff as f64 / (a as f64 * b as f64);
    if n1.max(n2) <= KS_EXACT_MAX_N {
        // h = round(d * lcm) in SciPy; with an integer statistic it is exact.
        let h = max_diff / g;
        if h == 0 {
            return KsResult {
                statistic: 0.0,
                p_value: 1.0,
                method: KsMethod::Exact,
            };
        }
        let p = if n1 == n2 {
            prob_outside_square(a, h)
        } else {
            outer_prob_inside_method(a, b, g, h)
        };
        if p.is_finite() && (0.0..=1.0).contains(&p) {
            let lcm = (a / g) * b;
            return KsResult {
                statistic: h as f64 / lcm as f64,
                p_value: p,
                method: KsMethod::Exact,
            };
        }
    }
    let (m, n) = if a >= b {
        (a as f64, b as f64)
    } else {
        (b as f64, a as f64)
    };
    let en = (m * n / (m + n)).round();
    KsResult {
        statistic: d,
        p_value: kolmogorov_n_sf(en as u64, d).clamp(0.0, 1.0),
        method: KsMethod::Asymptotic,
    }
}

/// Proportion of lattice paths of an n x n grid leaving the band |x - y| < h.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let mut p = 0.0f64;
    let mut k = (n / h) as i64;
    while k >= 0 {
        let kk = k as u64;
        let mut p1 = 1.0f64;
        for j in 0..h {
            let num = n as f64 - (kk * h) as f64 - j as f64;
            let den = n as f64 + (kk * h) as f64 + j as f64 + 1.0;
            p1 = num * p1 / den;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// Probability that a uniformly random monotone lattice path from (0,0) to
/// (m,n) leaves the band |n x - m y| / g < h, computed column by column as a
/// running probability (Hodges' inside method in Viehmann's 1-p form) so that
/// no binomial coefficient is ever formed.
fn outer_prob_inside_method(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = ((m / g) as i64, (n / g) as i64);
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let ceil_div = |a: i64, b: i64| -> i64 { (a as f64 / b as f64).ceil() as i64 };
    let floor_div = |a: i64, b: i64| -> i64 { (a as f64 / b as f64).floor() as i64 };
    let mut minj: i64 = 0;
    let mut maxj: i64 = ceil_div(h, mg).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = ((2 * maxj + 2).min(n + 1)) as usize;
    let mut a = vec![1.0f64; len_a.max(1)];
    for v in a.iter_mut().take(maxj as usize) {
        *v = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = (floor_div(ng * i - h, mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let idx = (jj + minj - lastminj) as usize;
            let prev = a.get(idx).copied().unwrap_or(1.0);
            val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = (start + (lastlen - curlen) as usize).min(a.len());
            for v in &mut a[start..end] {
                *v = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

/// Survival function of the one-sample two-sided Kolmogorov statistic D_n,
/// SciPy's `kstwo.sf(x, n)`, by the branches of its `_kolmogn`.
pub fn kolmogorov_n_sf(n: u64, x: f64) -> f64 {
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        if t <= 0.5 {
            return 1.0;
        }
        // Ruben-Gambino: P(D_n <= x) = n!/n^n (2t-1)^n for 1/2n <= x <= 1/n.
        let cdf = if n <= 140 {
            (1..=n).fold(1.0, |acc, i| acc * (i as f64 / nf) * (2.0 * t - 1.0))
        } else {
            (ln_gamma(nf + 1.0) - nf * nf.ln() + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return 1.0 - cdf;
    }
    if t >= nf - 1.0 {
        return 2.0 * (1.0 - x).powf(nf);
    }
    if x >= 0.5 {
        return 2.0 * smirnov(n, x);
    }
    let nxsq = t * x;
    if n <= 140 {
        if nxsq <= 4.0 {
            return 1.0 - durbin_matrix_cdf(n, x);
        }
        return 2.0 * smirnov(n, x);
    }
    if nxsq >= 370.0 {
        return 0.0;
    }
    if nxsq >= 2.2 {
        return 2.0 * smirnov(n, x);
    }
    // SciPy switches to the Pelz-Good series when n x^1.5 > 1.4; the Durbin
    // matrix here is exact there too, and agrees with that series to ~1e-6.
    1.0 - durbin_matrix_cdf(n, x)
}

/// One-sided Smirnov survival P(D_n^+ >= x), Birnbaum-Tingey sum in log space.
pub fn smirnov(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let jmax = (nf * (1.0 - x)).floor() as u64;
    let ln_n_fact = ln_gamma(nf + 1.0);
    let mut sum = 0.0f64;
    for j in 0..=jmax {
        let jf = j as f64;
        let a = 1.0 - x - jf / nf;
        let b = x + jf / nf;
        if a <= 0.0 {
            if (nf - jf) as u64 == 0 {
                sum += (ln_n_fact - ln_gamma(jf + 1.0) - ln_gamma(nf - jf + 1.0)
                    + (jf - 1.0) * b.ln())
                .exp();
            }
            continue;
        }
        let ln_term = ln_n_fact - ln_gamma(jf + 1.0) - ln_gamma(nf - jf + 1.0)
            + (nf - jf) * a.ln()
            + (jf - 1.0) * b.ln();
        sum += ln_term.exp();
    }
    (x * sum).clamp(0.0, 1.0)
}

/// P(D_n < x) by Marsaglia, Tsang and Wang's Durbin-matrix method, with the
/// matrix power's exponent tracked separately against overflow.
fn durbin_matrix_cdf(n: u64, d: f64) -> f64 {
    let nf = n as f64;
    let k = (nf * d).floor() as usize + 1;
    let m = 2 * k - 1;
    let h = k as f64 - nf * d;
    let mut hm = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            if i + 1 >= j {
                hm[i * m + j] = 1.0;
            }
        }
    }
    for i in 0..m {
        hm[i * m] -= h.powi(i as i32 + 1);
        hm[(m - 1) * m + i] -= h.powi((m - i) as i32);
    }
    if 2.0 * h - 1.0 > 0.0 {
        hm[(m - 1) * m] += (2.0 * h - 1.0).powi(m as i32);
    }
    for i in 0..m {
        for j in 0..m {
            if i + 1 > j {
                let f = (1..=(i + 1 - j)).fold(1.0f64, |acc, q| acc * q as f64);
                hm[i * m + j] /= f;
            }
        }
    }
    let (q, eq) = matrix_power(&hm, m, n);
    // s = Q[k-1][k-1] * n! / n^n, accumulated stepwise to stay in range.
    let mut s = q[(k - 1) * m + (k - 1)];
    let mut e = eq;
    for i in 1..=n {
        s *= i as f64 / nf;
        if s < 1e-140 {
            s *= 1e140;
            e -= 140;
        }
    }
    s * 10f64.powi(e)
}

fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * m];
    for i in 0..m {
        for k in 0..m {
            let aik = a[i * m + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..m {
                c[i * m + j] += aik * b[k * m + j];
            }
        }
    }
    c
}

/// A^n with a decimal exponent kept aside: returns (V, e) with A^n = V * 10^e.
fn matrix_power(a: &[f64], m: usize, n: u64) -> (Vec<f64>, i32) {
    if n == 1 {
        return (a.to_vec(), 0);
    }
    let (half, eh) = matrix_power(a, m, n / 2);
    let mut v = matmul(&half, &half, m);
    let mut e = 2 * eh;
    if n % 2 == 1 {
        v = matmul(a, &v, m);
    }
    let mid = v[(m / 2) * m + m / 2];
    if mid > 1e140 {
        for x in &mut v {
            *x *= 1e-140;
        }
        e += 140;
    }
    (v, e)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chi2Result {
    pub statistic: f64,
    pub p_value: f64,
    pub dof: usize,
}

/// Chi-squared test of homogeneity on the 2 x k table of counts, as
/// `scipy.stats.chi2_contingency` (Yates' correction only when dof == 1).
/// Categories with zero count on both sides must be dropped by the caller.
pub fn chi2_homogeneity(reference: &[u64], current: &[u64]) -> Chi2Result {
    assert_eq!(reference.len(), current.len());
    let k = reference.len();
    if k < 2 {
        return Chi2Result {
            statistic: 0.0,
            p_value: 1.0,
            dof: 0,
        };
    }
    let nr: f64 = reference.iter().sum::<u64>() as f64;
    let nc: f64 = current.iter().sum::<u64>() as f64;
    let total = nr + nc;
    let dof = k - 1;
    let mut stat = 0.0f64;
    for i in 0..k {
        let col = (reference[i] + current[i]) as f64;
        for (obs, row) in [(reference[i] as f64, nr), (current[i] as f64, nc)] {
            let exp = row * col / total;
            let mut o = obs;
            if dof == 1 {
                let diff = exp - o;
                o += diff.signum() * diff.abs().min(0.5);
            }
            stat += (o - exp) * (o - exp) / exp;
        }
    }
    let p = ChiSquared::new(dof as f64)
        .map(|d| d.sf(stat))
        .unwrap_or(f64::NAN);
    Chi2Result {
        statistic: stat,
        p_value: p,
        dof,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binning_survives_ranges_past_f64() {
        let x = [-1.7e308, 0.0, 1.0, 1.7e308, 1.7e308];
        let edges = sturges_edges(&x);
        assert!(edges.iter().all(|e| e.is_finite()), "{edges:?}");
        assert!(edges.windows(2).all(|w| w[0] < w[1]), "{edges:?}");
        let counts = histogram(&x, &edges);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!((counts[0], *counts.last().unwrap()), (1, 2));
        assert!(histogram(&x, &[1.0]).is_empty());
    }

    #[test]
    fn identical_samples_have_p_one() {
        let r = ks_two_sample(10, 10, 0);
        assert_eq!(r.p_value, 1.0);
        let c = chi2_homogeneity(&[5, 5], &[5, 5]);
        assert!((c.p_value - 1.0).abs() < 1e-12);
    }

    #[test]
    fn complete_separation_is_tiny() {
        // D = 1 with n = m = 5: p = 2 / C(10, 5) = 2/252.
        let r = ks_two_sample(5, 5, 25);
        assert!((r.p_value - 2.0 / 252.0).abs() < 1e-15, "{r:?}");
        // Unequal sizes, D = 1, n=3, m=4: p = 2 / C(7, 3) = 2/35.
        let r = ks_two_sample(3, 4, 12);
        assert!((r.p_value - 2.0 / 35.0).abs() < 1e-15, "{r:?}");
    }
}

/// How the values of a column were binned for PSI, Jensen-Shannon and
/// Hellinger (recorded with each score).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binning {
    /// `numpy.histogram_bin_edges(pooled, "sturges")`: numeric columns with
    /// more than 20 distinct reference values.
    Sturges,
    /// One bin per distinct value of the pooled sample.
    Values,
    /// One bin per category.
    Categories,
}

/// Bin counts of a numeric column pair, as the statistics note defines them.
pub fn bin_numeric(r: &[f64], c: &[f64]) -> (Vec<u64>, Vec<u64>, Binning) {
    bin_numeric_as(r, c, None)
}

/// `bin_numeric` with the rule forced (`Some(Binning::Sturges)` or
/// `Some(Binning::Values)`), or chosen by the distinct reference values.
pub fn bin_numeric_as(
    r: &[f64],
    c: &[f64],
    rule: Option<Binning>,
) -> (Vec<u64>, Vec<u64>, Binning) {
    let sturges = rule.map(|b| b == Binning::Sturges).unwrap_or_else(|| {
        let mut distinct: Vec<f64> = r.to_vec();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        distinct.len() > 20
    });
    if sturges {
        let pooled: Vec<f64> = r.iter().chain(c).copied().collect();
        let edges = sturges_edges(&pooled);
        (histogram(r, &edges), histogram(c, &edges), Binning::Sturges)
    } else {
        let mut values: Vec<f64> = r.iter().chain(c).copied().collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let count = |col: &[f64]| {
            let mut k = vec![0u64; values.len()];
            for x in col {
                if let Ok(i) = values.binary_search_by(|v| v.total_cmp(x)) {
                    k[i] += 1;
                }
            }
            k
        };
        (count(r), count(c), Binning::Values)
    }
}

/// `numpy.histogram_bin_edges(x, bins="sturges")`, step for step.
pub fn sturges_edges(x: &[f64]) -> Vec<f64> {
    let (mut lo, mut hi) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if x.is_empty() {
        (lo, hi) = (0.0, 1.0);
    }
    let ptp = hi - lo;
    let width = ptp / ((x.len() as f64).log2() + 1.0);
    let bins = if width > 0.0 && width.is_finite() {
        (ptp / width).ceil() as usize
    } else if ptp > 0.0 {
        // A range past f64's (-1e308 to 1e308): as many bins as a finite one.
        ((x.len() as f64).log2() + 1.0).ceil() as usize
    } else {
        1
    };
    if lo == hi {
        lo -= 0.5;
        hi += 0.5;
    }
    // numpy.linspace: start + i * step, with the last edge set to stop; the
    // step from halves when the range overflows.
    let step = (hi - lo) / bins as f64;
    let half_step = (hi / 2.0 - lo / 2.0) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins)
        .map(|i| match step.is_finite() {
            true => lo + i as f64 * step,
            false => (lo / 2.0 + i as f64 * half_step) * 2.0,
        })
        .collect();
    edges[bins] = hi;
    edges
}

/// `numpy.histogram(x, edges)` for equal-width edges: half-open bins, the
/// last one closed, values outside ignored.
pub fn histogram(x: &[f64], edges: &[f64]) -> Vec<u64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0u64; bins];
    if bins == 0 {
        return counts;
    }
    let (lo, hi) = (edges[0], edges[bins]);
    let norm = bins as f64 / (hi - lo);
    // Halves keep the arithmetic finite when the range overflows f64.
    let half_norm = bins as f64 / (hi / 2.0 - lo / 2.0);
    for &v in x {
        if !(lo..=hi).contains(&v) {
            continue;
        }
        let at = match norm > 0.0 {
            true => (v - lo) * norm,
            false => (v / 2.0 - lo / 2.0) * half_norm,
        };
        let mut i = (at as usize).min(bins - 1);
        // numpy corrects the index against the actual edges.
        if v < edges[i] && i > 0 {
            i -= 1;
        } else if i + 1 < bins && v >= edges[i + 1] {
            i += 1;
        }
        counts[i] += 1;
    }
    counts
}

fn proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&k| k as f64 / total.max(1) as f64)
        .collect()
}

/// Population stability index. An empty bin gets epsilon = 1e-4, or the
/// smallest nonzero proportion / 1e6 when that is itself at most 1e-4.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    psi_with_epsilon(reference, current, None)
}

/// PSI with the proportion an empty bin gets set, or (`None`) by the rule
/// above.
pub fn psi_with_epsilon(reference: &[u64], current: &[u64], epsilon: Option<f64>) -> f64 {
    let (pr, pc) = (proportions(reference), proportions(current));
    let smallest = pr
        .iter()
        .chain(&pc)
        .copied()
        .filter(|&p| p > 0.0)
        .fold(f64::INFINITY, f64::min);
    let eps = epsilon.unwrap_or(if smallest <= 1e-4 {
        smallest / 1e6
    } else {
        1e-4
    });
    pr.iter()
        .zip(&pc)
        .map(|(&a, &b)| {
            let (a, b) = (
                if a == 0.0 { eps } else { a },
                if b == 0.0 { eps } else { b },
            );
            (a - b) * (a / b).ln()
        })
        .sum()
}

/// Jensen-Shannon distance with natural logs, as
/// `scipy.spatial.distance.jensenshannon`; in [0, sqrt(ln 2)].
pub fn jensen_shannon(reference: &[u64], current: &[u64]) -> f64 {
    let (p, q) = (proportions(reference), proportions(current));
    let rel_entr = |x: f64, y: f64| {
        if x > 0.0 && y > 0.0 {
            x * (x / y).ln()
        } else {
            0.0
        }
    };
    let js: f64 = p
        .iter()
        .zip(&q)
        .map(|(&a, &b)| {
            let m = (a + b) / 2.0;
            rel_entr(a, m) + rel_entr(b, m)
        })
        .sum();
    (js / 2.0).max(0.0).sqrt()
}

/// Hellinger distance on the same bins.
pub fn hellinger(reference: &[u64], current: &[u64]) -> f64 {
    let (p, q) = (proportions(reference), proportions(current));
    let bc: f64 = p.iter().zip(&q).map(|(a, b)| (a * b).sqrt()).sum();
    (1.0 - bc).max(0.0).sqrt()
}

/// `scipy.stats.wasserstein_distance(r, c) / max(std(r), 0.001)`.
pub fn wasserstein_normalised(r: &[f64], c: &[f64]) -> f64 {
    let mut u = r.to_vec();
    let mut v = c.to_vec();
    u.sort_by(f64::total_cmp);
    v.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = u.iter().chain(&v).copied().collect();
    all.sort_by(f64::total_cmp);
    let (nu, nv) = (u.len() as f64, v.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut distance = 0.0;
    for k in 0..all.len().saturating_sub(1) {
        let z = all[k];
        while i < u.len() && u[i] <= z {
            i += 1;
        }
        while j < v.len() && v[j] <= z {
            j += 1;
        }
        distance += (i as f64 / nu - j as f64 / nv).abs() * (all[k + 1] - all[k]);
    }
    let mean = r.iter().sum::<f64>() / nu;
    let std = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / nu).sqrt();
    distance / std.max(0.001)
}

/// Benjamini-Hochberg adjusted p-values, as
/// `scipy.stats.false_discovery_control(p, method="bh")`.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 1.0f64;
    for rank in (0..m).rev() {
        let i = order[rank];
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        adjusted[i] = running.min(1.0);
    }
    adjusted
}

/// Bin counts of a categorical column pair: one bin per category of either side.
pub fn bin_categorical(r: &[String], c: &[String]) -> (Vec<u64>, Vec<u64>) {
    let cats: std::collections::BTreeSet<&String> = r.iter().chain(c).collect();
    let index: std::collections::HashMap<&String, usize> =
        cats.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let count = |col: &[String]| {
        let mut k = vec![0u64; cats.len()];
        for x in col {
            k[index[x]] += 1;
        }
        k
    };
    (count(r), count(c))
}

/// The mean and the sample variance (n - 1) of `v`; NaN where undefined.
pub fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// `numpy.quantile(x, q)` with its default linear interpolation; `sorted`
/// must be in ascending order and non-empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// One-sided Fisher exact test that the window's rate of events (`k` of `m`)
/// exceeds the reference's (`k_ref` of `n`): `scipy.stats.fisher_exact(
/// [[k, m - k], [k_ref, n - k_ref]], alternative="greater")`. Summed term by
/// term from log-binomials so that tiny p-values keep their digits.
pub fn fisher_greater(k: u64, m: u64, k_ref: u64, n: u64) -> f64 {
    use statrs::function::factorial::ln_binomial;
    let total = k + k_ref;
    let population = m + n;
    let ln_all = ln_binomial(population, m);
    let upper = total.min(m);
    // The hypergeometric's support starts where the reference cannot hold
    // the rest of the events.
    let start = k.max(total.saturating_sub(n));
    let p: f64 = (start..=upper)
        .map(|x| (ln_binomial(total, x) + ln_binomial(population - total, m - x) - ln_all).exp())
        .sum();
    p.min(1.0)
}

/// Welch's unequal-variance t-test of a change of mean, as
/// `scipy.stats.ttest_ind(a, b, equal_var=False)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    pub statistic: f64,
    pub p_value: f64,
    pub df: f64,
    /// mean(b) - mean(a).
    pub change: f64,
}

/// `None` when either side has fewer than two values. Two constant samples
/// (SciPy answers NaN) are a change of mean when the constants differ
/// (p = 0) and none when they agree (p = 1).
pub fn welch_t(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let moments = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    let ((na, ma, va), (nb, mb, vb)) = (moments(a), moments(b));
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    if se2 == 0.0 {
        let same = ma == mb;
        return Some(Welch {
            statistic: if same { 0.0 } else { f64::INFINITY },
            p_value: if same { 1.0 } else { 0.0 },
            df: na + nb - 2.0,
            change: mb - ma,
        });
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    // 2 * sf(|t|) through the regularised incomplete beta: I_x(df/2, 1/2)
    // with x = df / (df + t^2) is the two-sided tail and keeps tiny p-values.
    let x = df / (df + t * t);
    let p = statrs::function::beta::beta_reg(df / 2.0, 0.5, x);
    Some(Welch {
        statistic: t,
        p_value: p.min(1.0),
        df,
        change: mb - ma,
    })
}

/// The lower tail of the standard normal: P(Z <= z).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
}

/// The CDF of Student's t with `df` degrees of freedom, through the
/// regularised incomplete beta so that far tails keep their digits.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * statrs::function::beta::beta_reg(df / 2.0, 0.5, df / (df + t * t));
    if t < 0.0 { tail } else { 1.0 - tail }
}

/// Per-request confidence of one probability vector: the largest
/// probability, the margin between the two largest (the largest itself when
/// there is one class) and the entropy in nats of the vector normalised to
/// sum 1 (`scipy.stats.entropy`).
pub fn confidence(p: &[f64]) -> Option<(f64, f64, f64)> {
    if p.is_empty() || p.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    let (mut first, mut second) = (f64::NEG_INFINITY, 0.0f64);
    for &v in p {
        if v > first {
            second = first.max(0.0);
            first = v;
        } else if v > second {
            second = v;
        }
    }
    let total: f64 = p.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let entropy = -p
        .iter()
        .filter(|v| **v > 0.0)
        .map(|v| {
            let q = v / total;
            q * q.ln()
        })
        .sum::<f64>();
    Some((first, first - second, entropy))
}

/// Increasing isotonic regression of `y` on `x` with predictions clipped to
/// the fitted range, as `sklearn.isotonic.IsotonicRegression(
/// out_of_bounds="clip")`: ties in `x` are pooled first, then adjacent
/// violators are pooled, and predictions interpolate linearly between the
/// fitted points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isotonic {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Isotonic {
    /// `None` without any finite pair.
    pub fn fit(x: &[f64], y: &[f64]) -> Option<Self> {
        let mut pairs: Vec<(f64, f64)> = x
            .iter()
            .zip(y)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|(a, b)| (*a, *b))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // (x, mean y, weight) per distinct x.
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        for (a, b) in pairs {
            match points.last_mut() {
                Some(p) if p.0 == a => {
                    p.1 = (p.1 * p.2 + b) / (p.2 + 1.0);
                    p.2 += 1.0;
                }
                _ => points.push((a, b, 1.0)),
            }
        }
        // Pool adjacent violators: blocks of (mean, weight, how many points).
        let mut blocks: Vec<(f64, f64, usize)> = Vec::new();
        for &(_, v, w) in &points {
            blocks.push((v, w, 1));
            while blocks.len() > 1 && blocks[blocks.len() - 2].0 >= blocks[blocks.len() - 1].0 {
                let (v2, w2, c2) = blocks.pop().expect("two blocks");
                let last = blocks.last_mut().expect("one block");
                last.0 = (last.0 * last.1 + v2 * w2) / (last.1 + w2);
                last.1 += w2;
                last.2 += c2;
            }
        }
        let fitted: Vec<f64> = blocks
            .iter()
            .flat_map(|&(v, _, c)| std::iter::repeat_n(v, c))
            .collect();
        Some(Self {
            x: points.iter().map(|p| p.0).collect(),
            y: fitted,
        })
    }

    pub fn predict(&self, v: f64) -> f64 {
        let n = self.x.len();
        if v <= self.x[0] || n == 1 {
            return self.y[0];
        }
        if v >= self.x[n - 1] {
            return self.y[n - 1];
        }
        let i = self.x.partition_point(|x| *x <= v);
        let (x0, x1, y0, y1) = (self.x[i - 1], self.x[i], self.y[i - 1], self.y[i]);
        y0 + (v - x0) * (y1 - y0) / (x1 - x0)
    }
}
