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
    /// Asymptotic where SciPy would compute the exact value, because the
    /// value lies outside `KsPolicy::exact_between`.
    AsymptoticFar,
}

impl KsMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            KsMethod::Exact => "exact",
            KsMethod::Asymptotic => "asymptotic",
            KsMethod::AsymptoticFar => "asymptotic (exact skipped: p far from alpha)",
        }
    }
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
    ks_asymptotic(n1, n2, max_diff)
}

/// SciPy's `asymp` method: the one-sample Kolmogorov distribution at the
/// effective sample size `round(n1 n2 / (n1 + n2))`.
fn ks_asymptotic(n1: usize, n2: usize, max_diff: u64) -> KsResult {
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let d = max_diff as f64 / (m * n);
    let en = (m * n / (m + n)).round();
    KsResult {
        statistic: d,
        p_value: kolmogorov_n_sf(en as u64, d).clamp(0.0, 1.0),
        method: KsMethod::Asymptotic,
    }
}

/// Where the exact KS p-value is worth its cost. SciPy's `auto` mode
/// computes it while both samples have at most 10,000 values, which costs
/// O(n·m·D) per feature: seconds per window on large references. The exact
/// value only matters where it could move a verdict, so it is computed where
/// it is cheap (`n·m` up to `CHEAP_EXACT`) or where the asymptotic value
/// lies in `exact_between`; elsewhere the asymptotic value is reported and
/// the method says so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsPolicy {
    pub exact_between: [f64; 2],
}

/// Up to this many `n·m` lattice cells the exact p-value costs well under a
/// millisecond, so it is always computed.
pub const CHEAP_EXACT: u64 = 1_000_000;

impl KsPolicy {
    /// SciPy's `auto` mode, whatever it costs.
    pub const SCIPY_AUTO: KsPolicy = KsPolicy {
        exact_between: [0.0, 1.0],
    };

    pub fn two_sample(&self, n1: usize, n2: usize, max_diff: u64) -> KsResult {
        let cells = n1 as u64 * n2 as u64;
        if n1.max(n2) > KS_EXACT_MAX_N || cells <= CHEAP_EXACT {
            return ks_two_sample(n1, n2, max_diff);
        }
        let asymptotic = ks_asymptotic(n1, n2, max_diff);
        let [lo, hi] = self.exact_between;
        if (lo..=hi).contains(&asymptotic.p_value) {
            ks_two_sample(n1, n2, max_diff)
        } else {
            KsResult {
                method: KsMethod::AsymptoticFar,
                ..asymptotic
            }
        }
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
    // Each lattice cell divides by i + j; a table of reciprocals turns the
    // O(m x band) divisions into multiplications (within an ulp a step).
    let inverse: Vec<f64> = (0..=(m + n)).map(|k| 1.0 / k as f64).collect();
    let mut row = Row::default();
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = (floor_div(ng * i - h, mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let start = if minj == 0 { 0.0 } else { 1.0 };
        let inv = &inverse[(i + minj) as usize..(i + maxj) as usize];
        row.step(
            &mut a,
            (minj - lastminj) as usize,
            (i as f64, minj as f64, inv),
            start,
        );
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = (start + (lastlen - curlen) as usize).min(a.len());
            for v in &mut a[start..end] {
                *v = 1.0;
            }
        }
    }
    // Cell by cell no value could round past 1; summed by stretches one can
    // by an ulp, where the probability is 1 in all but rounding.
    a[(maxj - minj - 1) as usize].min(1.0)
}

/// One column of the inside method, `a[k] = (a[k + shift] i + a[k - 1] j)
/// / (i + j)` along the band. Written out, each cell waits on the one before
/// it (three dependent operations a cell: the exact p-value was most of a
/// window's time where it is computed). The recurrence is linear, `v[k] =
/// v[k - 1] c[k] + b[k]`, so the band is cut into `CHAINS` stretches run
/// side by side, each from zero with the product of its `c` beside it, and
/// each stretch then takes its share of the value before it.
#[derive(Default)]
struct Row {
    b: Vec<f64>,
    c: Vec<f64>,
    /// Per cell, the product of `c` from its stretch's start.
    carry: Vec<f64>,
}

const CHAINS: usize = 4;

fn quarters(x: &[f64], q: usize) -> [&[f64]; CHAINS] {
    let (x0, x) = x.split_at(q);
    let (x1, x) = x.split_at(q);
    let (x2, x3) = x.split_at(q);
    [x0, x1, x2, &x3[..q]]
}

fn quarters_mut(x: &mut [f64], q: usize) -> [&mut [f64]; CHAINS] {
    let (x0, x) = x.split_at_mut(q);
    let (x1, x) = x.split_at_mut(q);
    let (x2, x3) = x.split_at_mut(q);
    [x0, x1, x2, &mut x3[..q]]
}

impl Row {
    /// Each cell's `b` and `c`. Every read of `a` happens here, before any
    /// cell is written; past its end the column before counts as 1.
    fn coefficients(&mut self, a: &[f64], shift: usize, (i, minj, inv): (f64, f64, &[f64])) {
        let len = inv.len();
        self.b.resize(len, 0.0);
        self.c.resize(len, 0.0);
        self.carry.resize(len, 0.0);
        let held = a.len().saturating_sub(shift).min(len);
        let (b, c) = (&mut self.b[..len], &mut self.c[..len]);
        for ((b, inv), prev) in b[..held]
            .iter_mut()
            .zip(&inv[..held])
            .zip(&a[shift.min(a.len())..])
        {
            *b = prev * (i * inv);
        }
        for (b, inv) in b[held..].iter_mut().zip(&inv[held..]) {
            *b = i * inv;
        }
        for (k, (c, inv)) in c.iter_mut().zip(inv).enumerate() {
            *c = (minj + k as f64) * inv;
        }
    }

    /// Column `i` over the band's cells `minj..`, `inv` holding each
    /// cell's `1 / (i + j)`.
    fn step(
        &mut self,
        a: &mut [f64],
        shift: usize,
        (i, minj, inv): (f64, f64, &[f64]),
        start: f64,
    ) {
        let len = inv.len();
        self.coefficients(a, shift, (i, minj, inv));
        let q = len / CHAINS;
        let (b, c, carry) = (&self.b[..len], &self.c[..len], &mut self.carry[..len]);
        let mut v = [start, 0.0, 0.0, 0.0];
        let mut p = [1.0f64; CHAINS];
        {
            // Four stretches of `q` cells each, whole, so that no index is
            // checked inside the loop.
            let [a0, a1, a2, a3] = quarters_mut(&mut a[..CHAINS * q], q);
            let [w0, w1, w2, w3] = quarters_mut(&mut carry[..CHAINS * q], q);
            let [b0, b1, b2, b3] = quarters(&b[..CHAINS * q], q);
            let [c0, c1, c2, c3] = quarters(&c[..CHAINS * q], q);
            for t in 0..q {
                v[0] = v[0] * c0[t] + b0[t];
                v[1] = v[1] * c1[t] + b1[t];
                v[2] = v[2] * c2[t] + b2[t];
                v[3] = v[3] * c3[t] + b3[t];
                p[1] *= c1[t];
                p[2] *= c2[t];
                p[3] *= c3[t];
                (a0[t], a1[t], a2[t], a3[t]) = (v[0], v[1], v[2], v[3]);
                (w0[t], w1[t], w2[t], w3[t]) = (0.0, p[1], p[2], p[3]);
            }
        }
        // What is left over continues the last stretch (the only one, in a
        // band of fewer cells than stretches).
        let s = if q == 0 { 0 } else { CHAINS - 1 };
        for k in CHAINS * q..len {
            v[s] = v[s] * c[k] + b[k];
            p[s] *= c[k];
            a[k] = v[s];
            carry[k] = p[s];
        }
        // The first stretch started from the true value; each later one
        // adds what the value before it contributes through its products.
        if q == 0 {
            return;
        }
        let mut before = a[q - 1];
        for s in 1..CHAINS {
            let end = if s == CHAINS - 1 { len } else { (s + 1) * q };
            for k in s * q..end {
                a[k] += carry[k] * before;
            }
            before = a[end - 1];
        }
    }
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
    // The Durbin matrix has 2nx + 1 rows and is raised to the n-th power:
    // SciPy keeps it for small n x^1.5 and uses the Pelz-Good series beyond,
    // where the matrix would cost seconds per feature.
    if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        return 1.0 - durbin_matrix_cdf(n, x);
    }
    1.0 - pelz_good_cdf(n, x)
}

/// P(D_n <= x) by the Pelz-Good asymptotic series: Li-Chien and Korolyuk's
/// expansion K0(z) + K1(z)/sqrt(n) + K2(z)/n + K3(z)/n^1.5 at z = x sqrt(n),
/// each term rewritten through Jacobi theta functions so that it converges
/// fast for the small z where the test is near its threshold. Term for term
/// SciPy's `_kolmogn_PelzGood`.
fn pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    let z = (n as f64).sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let sqrt_2pi = (2.0 * PI).sqrt();
    let qlog = -pi2 / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let (k1a, k1b) = (-z2, pi2 / 4.0);
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    // Sums of c(m) q^(m^2) over odd m, by Horner in q^(8k).
    let maxk = (16.0 * z / PI).ceil() as i64;
    let mut k0to3 = [0.0f64; 4];
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * k as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (acc, c) in k0to3.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let scale = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (acc, s) in k0to3.iter_mut().zip(scale) {
        *acc = *acc * q * sqrt_2pi / s;
    }
    // The terms over all integers k of K2 and K3.
    let q = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let k2 = kf * kf;
        let qk = q.powf(k2);
        k2extra += k2 * qk;
        let kpi = PI * kf;
        k3extra += (sqrt3z + kpi) * (sqrt3z - kpi) * k2 * qk;
    }
    k0to3[2] += k2extra * pi2 * sqrt_2pi / (-36.0 * z3);
    k0to3[3] += k3extra * pi2 * sqrt_2pi / (216.0 * z6);
    let nf = n as f64;
    (0..4).map(|i| k0to3[i] / nf.powf(i as f64 / 2.0)).sum()
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

/// The product of two row-major `m x m` matrices, through nalgebra's
/// blocked kernels (row-major A B is column-major B^T A^T, so the slices are
/// passed as they are, swapped).
fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let (at, bt) = (
        nalgebra::DMatrix::from_column_slice(m, m, a),
        nalgebra::DMatrix::from_column_slice(m, m, b),
    );
    (bt * at).as_slice().to_vec()
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

/// Expected count a chi-squared cell needs for the test's distribution to
/// hold (Cochran's rule).
pub const MIN_EXPECTED: f64 = 5.0;

/// The 2 x k table with its sparse levels pooled into one: levels whose
/// expected count in the smaller row is below `MIN_EXPECTED`, plus, while
/// the pooled level is still short of it, the smallest remaining levels.
/// The commonest level is never pooled. Returns the pooled table and how
/// many levels went into the pooled one (0 when none did). On small windows a feature of many levels has many
/// such cells; each adds a degree of freedom and a noisy term, so a real
/// shift in the common levels drowns, and a level the reference never saw
/// seen once in the window reads as a huge deviation. Pooled, both keep to
/// the test's distribution, and a mass of unseen levels still shows in the
/// pooled one.
pub fn pool_sparse(reference: &[u64], current: &[u64]) -> (Vec<u64>, Vec<u64>, usize) {
    let (nr, nc) = (reference.iter().sum::<u64>(), current.iter().sum::<u64>());
    let total = (nr + nc) as f64;
    let scale = nr.min(nc) as f64 / total;
    let expected = |r: u64, c: u64| (r + c) as f64 * scale;
    let mut cells: Vec<(u64, u64)> = reference
        .iter()
        .copied()
        .zip(current.iter().copied())
        .collect();
    // Smallest first, ties in label order (the sort is stable).
    cells.sort_by_key(|(r, c)| r + c);
    let sparse = cells
        .iter()
        .take_while(|(r, c)| expected(*r, *c) < MIN_EXPECTED)
        .count();
    if sparse == 0 || total == 0.0 {
        return (reference.to_vec(), current.to_vec(), 0);
    }
    // The commonest level always stands apart, so that a table of sparse
    // levels only still tests it against the rest rather than nothing.
    let most = cells.len().saturating_sub(1);
    let mut take = sparse.min(most);
    let mut pooled = cells[..take]
        .iter()
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    while expected(pooled.0, pooled.1) < MIN_EXPECTED && take < most {
        pooled = (pooled.0 + cells[take].0, pooled.1 + cells[take].1);
        take += 1;
    }
    if take <= 1 {
        // Pooling one level alone changes nothing.
        return (reference.to_vec(), current.to_vec(), 0);
    }
    let rest = &cells[take..];
    let r = std::iter::once(pooled.0)
        .chain(rest.iter().map(|x| x.0))
        .collect();
    let c = std::iter::once(pooled.1)
        .chain(rest.iter().map(|x| x.1))
        .collect();
    (r, c, take)
}

/// The chi-squared distribution's survival function; NaN for no degrees
/// of freedom.
pub fn chi2_sf(statistic: f64, dof: usize) -> f64 {
    ChiSquared::new(dof as f64)
        .map(|d| d.sf(statistic))
        .unwrap_or(f64::NAN)
}

/// The median of the chi-squared distribution with `dof` degrees of freedom.
pub fn chi2_median(dof: usize) -> f64 {
    ChiSquared::new(dof as f64)
        .map(|d| d.inverse_cdf(0.5))
        .unwrap_or(f64::NAN)
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
    let p = chi2_sf(stat, dof);
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
    fn sparse_levels_pool_until_the_pooled_one_is_expected_five_times() {
        // Window row 153 of 1658: the three small levels expect 0.2-0.4
        // each, 0.74 together, so the 550 level joins them.
        let (r, c) = ([1000, 500, 3, 2, 0], [100, 50, 1, 0, 2]);
        let (pr, pc, pooled) = pool_sparse(&r, &c);
        assert_eq!((pr, pc, pooled), (vec![505, 1000], vec![53, 100], 4));
        // Nothing sparse: unchanged.
        let (pr, pc, pooled) = pool_sparse(&[100, 200], &[50, 60]);
        assert_eq!((pr, pc, pooled), (vec![100, 200], vec![50, 60], 0));
        // Two sparse levels that together are enough stand as one.
        let (pr, pc, pooled) = pool_sparse(&[300, 40, 40], &[30, 2, 2]);
        assert_eq!((pr, pc, pooled), (vec![80, 300], vec![4, 30], 2));
        // Every level sparse: the commonest still stands against the rest.
        let (pr, pc, pooled) = pool_sparse(&[3, 2, 1], &[1, 1, 0]);
        assert_eq!((pr, pc, pooled), (vec![3, 3], vec![1, 1], 2));
    }

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

    /// The inside method one cell after another, as SciPy writes it: what
    /// the stretches run side by side must reproduce.
    fn inside_method_cell_by_cell(m: u64, n: u64, g: u64, h: u64) -> f64 {
        let (m, n) = if m < n { (n, m) } else { (m, n) };
        let (mg, ng) = ((m / g) as i64, (n / g) as i64);
        let (m, n, h) = (m as i64, n as i64, h as i64);
        let ceil_div = |a: i64, b: i64| (a as f64 / b as f64).ceil() as i64;
        let floor_div = |a: i64, b: i64| (a as f64 / b as f64).floor() as i64;
        let (mut minj, mut maxj) = (0, ceil_div(h, mg).min(n + 1));
        let mut curlen = maxj - minj;
        let mut a = vec![1.0f64; (((2 * maxj + 2).min(n + 1)) as usize).max(1)];
        a.iter_mut().take(maxj as usize).for_each(|v| *v = 0.0);
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
                let prev = a.get((j - lastminj) as usize).copied().unwrap_or(1.0);
                val = (prev * i as f64 + val * j as f64) / (i + j) as f64;
                a[jj as usize] = val;
            }
            curlen = maxj - minj;
            if lastlen > curlen {
                let start = curlen as usize;
                let end = (start + (lastlen - curlen) as usize).min(a.len());
                a[start..end].iter_mut().for_each(|v| *v = 1.0);
            }
        }
        a[(maxj - minj - 1) as usize]
    }

    #[test]
    fn inside_method_by_stretches_is_the_cell_by_cell_recurrence() {
        let mut checked = 0;
        for (m, n) in [
            (7, 3),
            (60, 45),
            (1000, 500),
            (5000, 1000),
            (10_000, 5000),
            (3000, 2000),
            (2000, 700),
            (9999, 37),
        ] {
            let g = gcd(m, n);
            let lcm = m / g * n;
            // From barely apart to far apart: p near 1 down to underflow.
            for d in [0.004, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.5] {
                let h = ((d * lcm as f64).round() as u64).max(1);
                let want = inside_method_cell_by_cell(m, n, g, h);
                let got = outer_prob_inside_method(m, n, g, h);
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1e-300),
                    "m={m} n={n} h={h}: {got:e} vs {want:e}"
                );
                assert!(got <= 1.0, "m={m} n={n} h={h}: {got:e}");
                checked += (want > 0.0 && want < 1.0) as usize;
            }
        }
        assert!(checked > 30, "only {checked} cases between 0 and 1");
        // Barely apart, where the probability is 1 but for rounding: still
        // the exact method.
        // (200, 50, 5) summed to 1 + 2^-52 before it was capped.
        for (m, n, h) in [(200, 50, 5), (1000, 500, 1), (1000, 500, 3)] {
            let r = ks_two_sample(m, n, h * gcd(m as u64, n as u64));
            assert_eq!(r.method, KsMethod::Exact, "{m} {n} {h}: {r:?}");
            assert!(r.p_value <= 1.0, "{m} {n} {h}: {r:?}");
        }
    }

    #[test]
    fn wasserstein_by_stretches_is_the_walk() {
        let col = |len: u64, step: u64, modulo: u64, offset: f64, scale: f64| -> Vec<f64> {
            sorted(
                &(0..len)
                    .map(|k| (k * step % modulo) as f64 * scale + offset)
                    .collect::<Vec<_>>(),
            )
        };
        for (r, c) in [
            (
                col(5000, 7919, 1000, 0.0, 0.001),
                col(700, 104_729, 997, 0.05, 0.001),
            ),
            (col(500, 7, 13, 0.0, 1.0), col(120, 5, 11, 0.5, 1.0)),
            (col(90, 3, 97, 0.0, 1.0), col(400, 11, 17, 0.0, 1.0)),
            (col(300, 1, 1000, 0.0, 1.0), col(50, 1, 1000, 2000.0, 1.0)),
            (col(50, 1, 1000, 2000.0, 1.0), col(300, 1, 1000, 0.0, 1.0)),
            (col(40, 1, 1, 3.0, 1.0), col(60, 1, 1, 3.0, 1.0)),
            (col(1, 1, 1, 3.0, 1.0), col(60, 1, 7, 0.0, 1.0)),
        ] {
            let want = wasserstein_sorted(&r, &c);
            let got = Sorted::new(&r).wasserstein(&c);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-3),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn ks_by_binary_search_is_the_definition() {
        // The definition at every pooled value, against the searches, on
        // samples with heavy ties, either side larger, and disjoint ranges.
        let definition = |r: &[f64], c: &[f64]| {
            let (n, m) = (r.len() as i64, c.len() as i64);
            r.iter()
                .chain(c)
                .map(|z| {
                    let i = r.iter().filter(|x| *x <= z).count() as i64;
                    let j = c.iter().filter(|x| *x <= z).count() as i64;
                    (i * m - j * n).unsigned_abs()
                })
                .max()
                .unwrap_or(0)
        };
        let col = |len: u64, step: u64, modulo: u64, offset: f64| -> Vec<f64> {
            sorted(
                &(0..len)
                    .map(|k| (k * step % modulo) as f64 + offset)
                    .collect::<Vec<_>>(),
            )
        };
        for (r, c) in [
            (col(500, 7, 13, 0.0), col(120, 5, 11, 0.5)),
            (col(90, 3, 97, 0.0), col(400, 11, 17, 0.0)),
            (col(300, 1, 1000, 0.0), col(50, 1, 1000, 2000.0)),
            (col(40, 1, 1, 0.0), col(60, 1, 1, 0.0)),
        ] {
            assert_eq!(ks_max_diff_sorted(&r, &c), definition(&r, &c));
            assert_eq!(ks_max_diff_sorted(&c, &r), definition(&c, &r));
        }
    }

    #[test]
    fn radix_sorted_is_total_cmp_order() {
        // Both signs, zeros of both signs, infinities, NaNs of both signs,
        // subnormals, heavy ties, one sign alone (passes skipped), and
        // lengths either side of where the radix sort takes over.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 11
        };
        let specials = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::MIN_POSITIVE / 4.0,
            -f64::MIN_POSITIVE / 4.0,
            f64::MAX,
            f64::MIN,
        ];
        for len in [0, 1, 511, 512, 513, 5000, 50_000] {
            let mixed: Vec<f64> = (0..len)
                .map(|i| match next() % 10 {
                    0 => specials[i % specials.len()],
                    1..=3 => (next() % 7) as f64 - 3.0,
                    _ => (next() as f64 / 1e12 - 4.0) * 1e3,
                })
                .collect();
            let positive: Vec<f64> = (0..len)
                .map(|_| 1.0 + (next() % 1000) as f64 / 1e3)
                .collect();
            // Whole numbers: the low digits are all zero, so the first
            // passes are skipped.
            let whole: Vec<f64> = (0..len).map(|_| (next() % 1000) as f64).collect();
            for x in [mixed, positive, whole] {
                let mut want = x.clone();
                want.sort_unstable_by(f64::total_cmp);
                let got = sorted(&x);
                let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "len {len}");
            }
        }
    }

    #[test]
    fn gallop_counts_the_leading_values_that_hold() {
        // Every length and every cut, across the short look and the doubling.
        for len in 0..80usize {
            let v: Vec<f64> = (0..len).map(|i| i as f64).collect();
            for cut in 0..=len {
                assert_eq!(gallop(&v, |x| x < cut as f64), cut, "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn leave_out_wasserstein_is_the_materialised_one() {
        // Ties, a spread of magnitudes, a small spread far from zero, and
        // windows at both ends and inside.
        let ties: Vec<f64> = (0..3000u64)
            .map(|i| ((i * 7919 % 1000) as f64 / 10.0).round() + 1e4 * (i % 3) as f64)
            .collect();
        let offset: Vec<f64> = (0..3000u64)
            .map(|i| 1e9 + (i * 104_729 % 3001) as f64 * 1e-3)
            .collect();
        for (col, part) in [ties, offset]
            .iter()
            .flat_map(|c| [0..500, 1200..1700, 2500..3000, 0..1].map(|p| (c, p)))
        {
            let full = Sorted::new(col);
            let window = sorted(&col[part.clone()]);
            let rest: Vec<f64> = col[..part.start]
                .iter()
                .chain(&col[part.end..])
                .copied()
                .collect();
            let want = wasserstein_normalised(&rest, &window);
            let got = full.wasserstein_normalised_without(&window);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{part:?}: {got} vs {want}"
            );
            let rest_sorted = full.without(&window);
            assert_eq!(rest_sorted.values, sorted(&rest), "{part:?}");
        }
        // A NaN in the column leaves no distance, not a finite one.
        let with_nan = Sorted::new(&[1.0, 2.0, 3.0, 4.0, f64::NAN]);
        assert!(with_nan.wasserstein_normalised_without(&[2.0]).is_nan());
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
    bin_numeric_sorted(&Sorted::new(r), &sorted(c), rule)
}

/// `bin_numeric_as` of a prepared reference and a sorted window.
pub fn bin_numeric_sorted(
    r: &Sorted,
    c: &[f64],
    rule: Option<Binning>,
) -> (Vec<u64>, Vec<u64>, Binning) {
    let sturges = rule.map_or(r.distinct > 20, |b| b == Binning::Sturges);
    let r = r.values.as_slice();
    if sturges {
        // Both sides are sorted: the pooled range is at their ends.
        let ends = [r.first(), r.last(), c.first(), c.last()];
        let (lo, hi) = ends
            .into_iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let edges = sturges_edges_of(lo, hi, r.len() + c.len());
        (histogram(r, &edges), histogram(c, &edges), Binning::Sturges)
    } else {
        let mut values: Vec<f64> = merged(r, c);
        values.dedup_by(|a, b| a.total_cmp(b).is_eq());
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

/// Two sorted samples merged into one, in order.
fn merged(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].total_cmp(&b[j]).is_le() {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `numpy.histogram_bin_edges(x, bins="sturges")`, step for step.
pub fn sturges_edges(x: &[f64]) -> Vec<f64> {
    let (lo, hi) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    sturges_edges_of(lo, hi, x.len())
}

/// `sturges_edges` of `len` values whose least is `lo` and greatest `hi`.
pub fn sturges_edges_of(mut lo: f64, mut hi: f64, len: usize) -> Vec<f64> {
    if len == 0 {
        (lo, hi) = (0.0, 1.0);
    }
    let ptp = hi - lo;
    let width = ptp / ((len as f64).log2() + 1.0);
    let bins = if width > 0.0 && width.is_finite() {
        (ptp / width).ceil() as usize
    } else if ptp > 0.0 {
        // A range past f64's (-1e308 to 1e308): as many bins as a finite one.
        ((len as f64).log2() + 1.0).ceil() as usize
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
    wasserstein_normalised_sorted(&Sorted::new(r), &sorted(c))
}

/// `wasserstein_normalised` of a prepared reference and a sorted window.
pub fn wasserstein_normalised_sorted(r: &Sorted, c: &[f64]) -> f64 {
    r.wasserstein(c) / r.std.max(0.001)
}

/// `scipy.stats.wasserstein_distance` of two sorted samples: the area
/// between their empirical CDFs, summed over the pooled values in order
/// (a merge, so no pooled copy is sorted).
pub fn wasserstein_sorted(u: &[f64], v: &[f64]) -> f64 {
    let (inv_u, inv_v) = (1.0 / u.len() as f64, 1.0 / v.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut distance = 0.0;
    let mut previous = f64::NAN;
    // Walks the pooled values; at each, both CDFs count what is <= it.
    loop {
        let z = match (u.get(i), v.get(j)) {
            (Some(a), Some(b)) => a.min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        if i + j > 0 {
            distance += (i as f64 * inv_u - j as f64 * inv_v).abs() * (z - previous);
        }
        let before = (i, j);
        while i < u.len() && u[i] <= z {
            i += 1;
        }
        while j < v.len() && v[j] <= z {
            j += 1;
        }
        if (i, j) == before {
            // Only a NaN compares with nothing; it sorts last, past every number.
            break;
        }
        previous = z;
    }
    distance
}

/// A copy of `x` in ascending order (`f64::total_cmp`'s).
pub fn sorted(x: &[f64]) -> Vec<f64> {
    // The radix sort counts in u32s.
    if x.len() < RADIX_FROM || x.len() > u32::MAX as usize {
        let mut v = x.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        return v;
    }
    radix_sorted(x)
}

/// Below this many values a comparison sort is as quick as the radix
/// sort's counting passes.
const RADIX_FROM: usize = 512;

/// Bits of the key sorted on per pass: six passes of 2,048 counters, which
/// stay in a core's cache.
const DIGIT: u32 = 11;

/// `x` sorted by its values' bits as `f64::total_cmp` orders them, least
/// significant digit first: each pass a stable scatter by one digit, so the
/// whole costs six passes over the column, where a comparison sort costs
/// about log2(n) passes of unpredictable branches. Passes where every key
/// has the same digit (the high bits of a column of one sign and scale)
/// are skipped. It holds the keys twice while it sorts: 16 bytes a value.
fn radix_sorted(x: &[f64]) -> Vec<f64> {
    const PASSES: usize = 64_usize.div_ceil(DIGIT as usize);
    const BUCKETS: usize = 1 << DIGIT;
    // total_cmp's order as unsigned integers: negatives (sign bit set)
    // reversed below the positives.
    let key = |v: f64| {
        let b = v.to_bits();
        if b >> 63 == 1 { !b } else { b | 1 << 63 }
    };
    let digit = |k: u64, pass: usize| ((k >> (pass as u32 * DIGIT)) as usize) & (BUCKETS - 1);
    let mut keys: Vec<u64> = x.iter().map(|v| key(*v)).collect();
    let mut counts = vec![[0u32; BUCKETS]; PASSES];
    for &k in &keys {
        for (pass, c) in counts.iter_mut().enumerate() {
            c[digit(k, pass)] += 1;
        }
    }
    let mut spare = vec![0u64; keys.len()];
    for (pass, c) in counts.iter_mut().enumerate() {
        if c.iter().any(|n| *n as usize == keys.len()) {
            continue;
        }
        let mut at = 0u32;
        for n in c.iter_mut() {
            (*n, at) = (at, at + *n);
        }
        for &k in &keys {
            let d = digit(k, pass);
            spare[c[d] as usize] = k;
            c[d] += 1;
        }
        std::mem::swap(&mut keys, &mut spare);
    }
    keys.into_iter()
        .map(|k| f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k }))
        .collect()
}

/// A reference column prepared once when the reference is fitted: sorted,
/// with its spread and number of distinct values. Every window's KS
/// statistic, Wasserstein distance and binning rule reuse it, so a window
/// costs what its own size costs, not a sort of the reference.
#[derive(Debug, Clone, Default)]
pub struct Sorted {
    pub values: Vec<f64>,
    pub mean: f64,
    /// Population standard deviation (numpy's default).
    pub std: f64,
    pub distinct: usize,
    /// Sums of deviations from `mean` and of their squares.
    moments: (f64, f64),
    /// `steps[t]` = sum over s < t of (s + 1)(v[s+1] - v[s]): the area under
    /// the column's step CDF, so that a stretch of it costs O(1).
    steps: Vec<f64>,
}

/// Sums of `x - centre` and of its square.
fn moments(x: &[f64], centre: f64) -> (f64, f64) {
    x.iter()
        .map(|v| v - centre)
        .fold((0.0, 0.0), |(a, b), c| (a + c, b + c * c))
}

impl Sorted {
    pub fn new(x: &[f64]) -> Self {
        Self::of_sorted(sorted(x))
    }

    /// The column without the (sorted) values of `part`, as a
    /// leave-one-window-out calibration needs it: one merge, no sort.
    pub fn without(&self, part: &[f64]) -> Self {
        let mut values = Vec::with_capacity(self.values.len().saturating_sub(part.len()));
        let mut j = 0;
        for &v in &self.values {
            while j < part.len() && part[j].total_cmp(&v).is_lt() {
                j += 1;
            }
            if j < part.len() && v.total_cmp(&part[j]).is_eq() {
                j += 1;
            } else {
                values.push(v);
            }
        }
        Self::of_sorted(values)
    }

    fn of_sorted(values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let distinct = match values.is_empty() {
            true => 0,
            false => 1 + values.windows(2).filter(|w| w[0] != w[1]).count(),
        };
        let mut steps = Vec::with_capacity(values.len());
        let mut area = 0.0;
        for (t, w) in values.windows(2).enumerate() {
            steps.push(area);
            area += (t + 1) as f64 * (w[1] - w[0]);
        }
        steps.push(area);
        Self {
            moments: moments(&values, mean),
            steps,
            values,
            mean,
            std,
            distinct,
        }
    }

    /// `scipy.stats.wasserstein_distance` of this column and a sorted
    /// window: between two window values the window's CDF is flat, and the
    /// area between it and this column's CDF follows from `steps` in O(1)
    /// once the stretch is found by galloping, so a window costs O(m log n)
    /// rather than a walk over the (larger) reference.
    pub fn wasserstein(&self, c: &[f64]) -> f64 {
        let v = &self.values;
        let (n, m) = (v.len(), c.len());
        if n == 0 || m == 0 {
            return f64::NAN;
        }
        let (mut distance, mut cursor) = (0.0, 0);
        if v[0] < c[0] {
            distance += self.area(v[0], c[0], 0, m, &mut cursor);
        }
        let mut j = 0;
        while j < m {
            let z = c[j];
            j += 1 + gallop(&c[j + 1..], |x| x <= z);
            let next = match c.get(j) {
                Some(next) => *next,
                None if v[n - 1] > z => v[n - 1],
                None => break,
            };
            distance += self.area(z, next, j, m, &mut cursor);
        }
        distance
    }

    /// The area between this column's CDF and the constant j / m over
    /// [lo, hi), where the other sample has no value. `cursor` is a count
    /// of values at or below `lo` from an earlier stretch, moved on to `hi`.
    fn area(&self, lo: f64, hi: f64, j: usize, m: usize, cursor: &mut usize) -> f64 {
        let v = &self.values;
        let n = v.len();
        let q = j as f64 / m as f64;
        let at = |k: usize| k as f64 / n as f64;
        // Reference values strictly inside (lo, hi) are v[a..b].
        let a = *cursor + gallop(&v[*cursor..], |x| x <= lo);
        let b = a + gallop(&v[a..], |x| x < hi);
        *cursor = b;
        if b <= a {
            return (at(a) - q).abs() * (hi - lo);
        }
        let mut total = (at(a) - q).abs() * (v[a] - lo) + (at(b) - q).abs() * (hi - v[b - 1]);
        // Stretches [v[t], v[t+1]) for t in a..b-1, where the CDF is (t+1)/n:
        // below q before `split`, at or above it from there.
        let split = (j * n).div_ceil(m).saturating_sub(1).clamp(a, b - 1);
        let below = q * (v[split] - v[a]) - (self.steps[split] - self.steps[a]) / n as f64;
        let above = (self.steps[b - 1] - self.steps[split]) / n as f64 - q * (v[b - 1] - v[split]);
        total += below + above;
        total
    }

    /// `wasserstein_normalised` of this column less the sorted `part` (a
    /// sub-column of it) against `part`, without building the rest. The
    /// rest's CDF is (n F - m G) / (n - m) for this column's F and the
    /// part's G, so its distance to G is n / (n - m) times F's: one
    /// galloping pass over the part (`wasserstein`), O(m log n), and the
    /// rest's spread from sums about this column's mean. What a
    /// leave-one-window-out calibration needs, per reference window, with
    /// no walk of the whole column and no allocation.
    pub fn wasserstein_normalised_without(&self, part: &[f64]) -> f64 {
        let (n, m) = (self.values.len(), part.len());
        // A NaN in the column (no decoder lets one through) would otherwise
        // end the galloping walk early with a finite distance.
        if m == 0 || m >= n || !self.std.is_finite() {
            return f64::NAN;
        }
        let nr = (n - m) as f64;
        let distance = self.wasserstein(part) * n as f64 / nr;
        let (w1, w2) = moments(part, self.mean);
        let (r1, r2) = ((self.moments.0 - w1) / nr, (self.moments.1 - w2) / nr);
        let std = (r2 - r1 * r1).max(0.0).sqrt();
        distance / std.max(0.001)
    }
}

/// The integer KS statistic of two sorted samples,
/// `max_z |m * #{r <= z} - n * #{c <= z}|` over the pooled values z. Between
/// two window values only the reference count moves, and the difference is
/// linear in it, so its extremes lie at the window values and just below
/// them: two binary searches of the reference per distinct window value,
/// O(m log n) rather than a walk over the (larger) reference.
pub fn ks_max_diff_sorted(r: &[f64], c: &[f64]) -> u64 {
    let (n, m) = (r.len() as i64, c.len() as i64);
    let gap = |i: usize, j: usize| (i as i64 * m - j as i64 * n).unsigned_abs();
    let (mut i, mut j, mut best) = (0usize, 0usize, 0u64);
    while j < c.len() {
        let z = c[j];
        // The last reference value below z, with the window count before z.
        let below = i + gallop(&r[i..], |x| x < z);
        best = best.max(gap(below, j));
        j += 1 + gallop(&c[j + 1..], |x| x <= z);
        i = below + gallop(&r[below..], |x| x <= z);
        best = best.max(gap(i, j));
    }
    // Past the last window value the difference only shrinks.
    best
}

/// Hops up to this long are looked through one value at a time.
const SHORT_HOP: usize = 16;

/// How many leading values of `v` satisfy `holds` (true, then false), by
/// doubling steps and then bisecting: O(log k) for an answer of k, so a walk
/// through a sorted slice in short hops costs about what its hops cost.
fn gallop(v: &[f64], holds: impl Fn(f64) -> bool) -> usize {
    // Most hops are short (a window of m values walks a column of n in
    // hops of about n / m): a straight look at the first few values costs
    // one mispredicted branch where the doubling and bisection cost several.
    let near = v.len().min(SHORT_HOP);
    if let Some(k) = v[..near].iter().position(|x| !holds(*x)) {
        return k;
    }
    if near == v.len() {
        return near;
    }
    let (mut low, mut step) = (near, 1);
    while low + step <= v.len() && holds(v[low + step - 1]) {
        low += step;
        step *= 2;
    }
    let high = (low + step).min(v.len());
    low + v[low..high].partition_point(|x| holds(*x))
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
    bin_counted(&Counted::of(r), &Counted::of(c))
}

/// A label column counted once: each label's occurrences, in label order.
/// The reference's are counted when it is fitted, so a window's chi-squared
/// test and distances cost its own labels and the categories, not the
/// reference's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    pub counts: std::collections::BTreeMap<String, u64>,
    pub total: u64,
}

impl Counted {
    pub fn of<S: AsRef<str>>(labels: impl IntoIterator<Item = S>) -> Self {
        let mut seen: std::collections::HashMap<String, u64> = Default::default();
        let mut total = 0;
        for label in labels {
            total += 1;
            match seen.get_mut(label.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    seen.insert(label.as_ref().to_string(), 1);
                }
            }
        }
        Self {
            counts: seen.into_iter().collect(),
            total,
        }
    }

    /// These counts less `part`'s (a sub-column of these): what a
    /// leave-one-window-out calibration compares a window with.
    pub fn minus(&self, part: &Counted) -> Self {
        let mut counts = self.counts.clone();
        for (label, n) in &part.counts {
            if let Some(k) = counts.get_mut(label) {
                *k = k.saturating_sub(*n);
            }
        }
        counts.retain(|_, n| *n > 0);
        Self {
            total: counts.values().sum(),
            counts,
        }
    }
}

/// Bin counts of two counted columns: one bin per label of either, in
/// label order (as `bin_categorical` bins the columns themselves).
pub fn bin_counted(r: &Counted, c: &Counted) -> (Vec<u64>, Vec<u64>) {
    let labels: std::collections::BTreeSet<&String> =
        r.counts.keys().chain(c.counts.keys()).collect();
    let at = |side: &Counted, l: &String| side.counts.get(l).copied().unwrap_or(0);
    labels.into_iter().map(|l| (at(r, l), at(c, l))).unzip()
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
