//! The burn engine: device choice, warm-up, and the batched kernels the
//! detectors share. Everything here blocks; callers keep it off the tokio
//! worker threads.

use std::time::{Duration, Instant};

use burn::tensor::{Bool, Device, DeviceKind, Int, Tensor, TensorData};

use super::DetectError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Values are clamped into this range before they go to the device as f32, so
/// that `f32::MAX` is free to pad ragged columns (WGSL may assume no infinities).
const VALUE_LIMIT: f64 = 1e38;
const PAD: f32 = f32::MAX;

/// An MMD permutation test's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdResult {
    /// Unbiased MMD^2 of the observed split.
    pub statistic: f64,
    /// (1 + #{permutations at least as large}) / (1 + permutations).
    pub p_value: f64,
    pub permutations: usize,
    pub sigma: f64,
}

/// How the KS statistic is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KsAlgorithm {
    /// Every reference value against every pooled value: O(n (n + m)) work
    /// with no dependencies (on an H200, 5e9 comparisons/s: slower than the
    /// host at every size measured).
    Compare,
    /// Sort the pooled values once on the device: O(P log P).
    Sort,
    /// Sort each side in f64 on the host and merge: what a CPU does best.
    /// burn's flex sort, gather and cumsum measured 2-12x slower than this
    /// (`cargo bench --bench detectors`), so the CPU backend counts here.
    Host,
}

/// What the engine runs on, as logged at start-up and recorded with scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `flex` or `wgpu`.
    pub backend: &'static str,
    /// The adapter's own name (`NVIDIA H100 PCIe`, `llvmpipe (LLVM 19...)`) or `cpu`.
    pub adapter: String,
    /// The adapter type wgpu reported (`DiscreteGpu`, `Cpu`, ...), or `flex`.
    pub kind: String,
}

impl DeviceInfo {
    pub fn label(&self) -> String {
        format!("{}:{}", self.backend, self.adapter)
    }
}

pub struct Engine {
    device: Device,
    info: DeviceInfo,
    max_tile: usize,
}

impl Engine {
    /// Opens the device the config asks for. `auto` takes a discrete GPU when
    /// wgpu finds one and falls back to flex otherwise; it never settles on a
    /// software adapter.
    pub fn open(choice: DeviceChoice, max_tile_elements: usize) -> Result<Self, DetectError> {
        let max_tile = max_tile_elements.max(1 << 12);
        let (device, info) = match choice {
            DeviceChoice::Cpu => flex(),
            DeviceChoice::Auto => match auto_hardware() {
                Ok(found) => found,
                Err(reason) => {
                    tracing::info!(%reason, "no discrete gpu, scoring on the flex cpu backend");
                    flex()
                }
            },
            DeviceChoice::Gpu => {
                wgpu_hardware(&[DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)])
                    .map_err(DetectError::Device)?
            }
            DeviceChoice::WgpuCpu => wgpu_open(DeviceKind::Cpu).map_err(DetectError::Device)?,
        };
        tracing::info!(backend = info.backend, adapter = %info.adapter, kind = %info.kind, "scoring device ready");
        Ok(Self {
            device,
            info,
            max_tile,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Runs each kernel once at the configured reference and window sizes
    /// so that shader compilation (and autotuning, in the tuned build)
    /// happens before the first real window rather than during it.
    pub fn warmup(
        &self,
        reference_rows: usize,
        window_rows: usize,
    ) -> Result<Duration, DetectError> {
        let start = Instant::now();
        // flex compiles nothing, so a token run proves the path; on wgpu the
        // real sizes matter (autotune keys on shape), capped so that a huge
        // configured reference cannot stall start-up.
        let (n, m) = if self.info.backend == "flex" {
            (64, 32)
        } else {
            (
                reference_rows.clamp(2, 20_000),
                window_rows.clamp(2, 20_000),
            )
        };
        // What runs on the device by default: the out-of-distribution
        // detector's quadratic form, on reference folds and on windows. KS,
        // chi-squared and the effect sizes run on the host.
        let d = 8;
        let identity: Vec<f64> = (0..d * d)
            .map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        for len in [n, m] {
            let rows: Vec<Vec<f64>> = (0..len)
                .map(|i| (0..d).map(|k| ((i * (k + 1)) % 997) as f64).collect())
                .collect();
            self.mahalanobis(&rows, &vec![0.0; d], &identity)?;
        }
        let took = start.elapsed();
        tracing::info!(device = %self.info.label(), reference_rows = n, window_rows = m, took_ms = took.as_millis() as u64, "engine warmed up");
        Ok(took)
    }

    /// For each column pair, the exact two-sample KS statistic in integer
    /// form: `max_z |m * #{r <= z} - n * #{c <= z}|` over the pooled values z.
    /// Counted by a host sort-merge in f64 on every backend: O(P log P), and
    /// measured faster than both device kernels on flex and on an NVIDIA H200
    /// through Vulkan (2.4x at 1,000 x 500 rows, 413x at 100,000 x 100,000;
    /// daemon/docs/benchmarks.md). The kernels stay for `ks_max_diffs_with`.
    pub fn ks_max_diffs(
        &self,
        refs: &[Vec<f64>],
        curs: &[Vec<f64>],
    ) -> Result<Vec<u64>, DetectError> {
        let algorithm = KsAlgorithm::Host;
        self.ks_max_diffs_with(algorithm, refs, curs)
    }

    pub fn ks_max_diffs_with(
        &self,
        algorithm: KsAlgorithm,
        refs: &[Vec<f64>],
        curs: &[Vec<f64>],
    ) -> Result<Vec<u64>, DetectError> {
        match algorithm {
            KsAlgorithm::Compare => self.ks_compare(refs, curs),
            KsAlgorithm::Sort => self.ks_sort(refs, curs),
            KsAlgorithm::Host => Ok(refs
                .iter()
                .zip(curs)
                .map(|(r, c)| host_max_diff(r, c))
                .collect()),
        }
    }

    /// Sort the pooled values with their side labels, cumulate the labels,
    /// and read the counts at the last element of each run of ties.
    fn ks_sort(&self, refs: &[Vec<f64>], curs: &[Vec<f64>]) -> Result<Vec<u64>, DetectError> {
        assert_eq!(refs.len(), curs.len());
        let n_max = refs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let m_max = padded_rows(curs);
        let p = n_max + m_max;
        let f_tile = (self.max_tile / p).clamp(1, refs.len().max(1));
        let mut out = Vec::with_capacity(refs.len());
        for f0 in (0..refs.len()).step_by(f_tile) {
            let f1 = (f0 + f_tile).min(refs.len());
            let nf = f1 - f0;
            let z = Tensor::cat(
                vec![
                    self.padded(&refs[f0..f1], n_max),
                    self.padded(&curs[f0..f1], m_max),
                ],
                1,
            );
            let (mut lr, mut lc) = (vec![0f32; nf * p], vec![0f32; nf * p]);
            for f in 0..nf {
                lr[f * p..f * p + refs[f0 + f].len()].fill(1.0);
                lc[f * p + n_max..f * p + n_max + curs[f0 + f].len()].fill(1.0);
            }
            let (zs, idx) = z.sort_with_indices(1);
            let cumulate = |labels: Vec<f32>| {
                Tensor::<2>::from_data(TensorData::new(labels, [nf, p]), &self.device)
                    .gather(1, idx.clone())
                    .cumsum(1)
            };
            // Counts stay below 2^24, so f32 holds them exactly.
            let cr: Vec<f32> = read(cumulate(lr))?.iter::<f32>().collect();
            let cc: Vec<f32> = read(cumulate(lc))?.iter::<f32>().collect();
            let run_ends: Vec<i64> = if p > 1 {
                let ends = zs
                    .clone()
                    .narrow(1, 0, p - 1)
                    .not_equal(zs.narrow(1, 1, p - 1));
                read(ends.int())?.iter::<i64>().collect()
            } else {
                Vec::new()
            };
            for f in 0..nf {
                let (n, m) = (refs[f0 + f].len() as i64, curs[f0 + f].len() as i64);
                let best = (0..p)
                    .filter(|&k| k == p - 1 || run_ends[f * (p - 1) + k] != 0)
                    .map(|k| (cr[f * p + k] as i64 * m - cc[f * p + k] as i64 * n).unsigned_abs())
                    .max()
                    .unwrap_or(0);
                out.push(best);
            }
        }
        Ok(out)
    }

    fn ks_compare(&self, refs: &[Vec<f64>], curs: &[Vec<f64>]) -> Result<Vec<u64>, DetectError> {
        assert_eq!(refs.len(), curs.len());
        let mut out = Vec::with_capacity(refs.len());
        let n_max = refs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let m_max = padded_rows(curs);
        let p = n_max + m_max;
        let per_feature = (n_max + m_max) * p;
        let f_tile = (self.max_tile / per_feature).clamp(1, refs.len().max(1));
        let p_chunk = if per_feature > self.max_tile {
            (self.max_tile / (n_max + m_max)).max(1)
        } else {
            p
        };
        for f0 in (0..refs.len()).step_by(f_tile) {
            let f1 = (f0 + f_tile).min(refs.len());
            let nf = f1 - f0;
            let r = self.padded(&refs[f0..f1], n_max);
            let c = self.padded(&curs[f0..f1], m_max);
            let z = Tensor::cat(vec![r.clone(), c.clone()], 1);
            let mut counts_r = vec![0i64; nf * p];
            let mut counts_c = vec![0i64; nf * p];
            for k0 in (0..p).step_by(p_chunk) {
                let k1 = (k0 + p_chunk).min(p);
                let zc: Tensor<3> = z.clone().narrow(1, k0, k1 - k0).unsqueeze_dim(1);
                let cr = count_le(r.clone(), zc.clone());
                let cc = count_le(c.clone(), zc);
                let both = Tensor::cat(vec![cr, cc], 1);
                let data = read(both)?;
                let w = k1 - k0;
                let vals: Vec<i64> = data.iter::<i64>().collect();
                for f in 0..nf {
                    counts_r[f * p + k0..f * p + k1]
                        .copy_from_slice(&vals[f * 2 * w..f * 2 * w + w]);
                    counts_c[f * p + k0..f * p + k1]
                        .copy_from_slice(&vals[f * 2 * w + w..f * 2 * w + 2 * w]);
                }
            }
            for f in 0..nf {
                let (n, m) = (refs[f0 + f].len() as i64, curs[f0 + f].len() as i64);
                let real = (0..n as usize).chain(n_max..n_max + m as usize);
                let best = real
                    .map(|k| (counts_r[f * p + k] * m - counts_c[f * p + k] * n).unsigned_abs())
                    .max()
                    .unwrap_or(0);
                out.push(best);
            }
        }
        Ok(out)
    }

    /// Median-heuristic bandwidth of a reference (rows of equal length):
    /// sqrt(0.5 * median of the pairwise squared distances, diagonal
    /// excluded). Distances come from the device in row tiles; the median is
    /// taken on the host.
    pub fn median_bandwidth(&self, rows: &[Vec<f64>]) -> Result<f64, DetectError> {
        let n = rows.len();
        if n < 2 {
            return Err(DetectError::Failed(
                "a bandwidth needs at least two reference rows".into(),
            ));
        }
        let x = self.matrix(rows)?;
        let sq = x.clone().powi_scalar(2).sum_dim(1);
        let tile = (self.max_tile / n).clamp(1, n);
        let mut upper = Vec::with_capacity(n * (n - 1) / 2);
        for t0 in (0..n).step_by(tile) {
            let t = tile.min(n - t0);
            let d2 = pairwise_sq(
                x.clone().narrow(0, t0, t),
                sq.clone().narrow(0, t0, t),
                x.clone(),
                sq.clone(),
            );
            let vals: Vec<f32> = read(d2)?.iter::<f32>().collect();
            for i in 0..t {
                for j in (t0 + i + 1)..n {
                    upper.push(vals[i * n + j].max(0.0) as f64);
                }
            }
        }
        Ok((0.5 * median(&mut upper)).sqrt())
    }

    /// Unbiased MMD^2 with a Gaussian kernel between `x` (reference rows)
    /// and `y` (window rows), and its permutation test. Every permutation's
    /// statistic comes from one kernel-times-labels matrix product: with a
    /// the 0/1 indicator of the first sample, aᵀKa, aᵀK1 and 1ᵀK1 give all
    /// three kernel sums. The kernel is built and consumed in row tiles, so
    /// it never exists whole; partial sums are added up in f64 on the host.
    pub fn mmd_permutation(
        &self,
        x: &[Vec<f64>],
        y: &[Vec<f64>],
        sigma: f64,
        permutations: &[Vec<usize>],
    ) -> Result<MmdResult, DetectError> {
        let (n, m) = (x.len(), y.len());
        if n < 2 || m < 2 {
            return Err(DetectError::Failed(
                "mmd needs at least two rows on each side".into(),
            ));
        }
        let total = n + m;
        let cols = permutations.len() + 1;
        let pooled: Vec<Vec<f64>> = x.iter().chain(y).cloned().collect();
        let z = self.matrix(&pooled)?;
        let sq = z.clone().powi_scalar(2).sum_dim(1);
        // Column 0 is the observed split, the others the permuted ones.
        let mut labels = vec![0f32; total * cols];
        for i in 0..n {
            labels[i * cols] = 1.0;
        }
        for (c, perm) in permutations.iter().enumerate() {
            if perm.len() != total {
                return Err(DetectError::Failed(format!(
                    "permutation {c} has {} entries, not {total}",
                    perm.len()
                )));
            }
            for &i in &perm[..n] {
                labels[i * cols + c + 1] = 1.0;
            }
        }
        let a =
            Tensor::<2>::from_data(TensorData::new(labels.clone(), [total, cols]), &self.device);
        let scale = -1.0 / (2.0 * sigma * sigma);
        let tile = (self.max_tile / (total + cols)).clamp(1, total);
        let (mut s_aa, mut rows) = (vec![0f64; cols], vec![0f64; total]);
        for t0 in (0..total).step_by(tile) {
            let t = tile.min(total - t0);
            let d2 = pairwise_sq(
                z.clone().narrow(0, t0, t),
                sq.clone().narrow(0, t0, t),
                z.clone(),
                sq.clone(),
            );
            let k = d2.clamp_min(0.0).mul_scalar(scale as f32).exp();
            let ka = k.clone().matmul(a.clone());
            let aa = (a.clone().narrow(0, t0, t) * ka).sum_dim(0);
            let r = k.sum_dim(1);
            for (acc, v) in s_aa.iter_mut().zip(read(aa)?.iter::<f32>()) {
                *acc += v as f64;
            }
            for (i, v) in read(r)?.iter::<f32>().enumerate() {
                rows[t0 + i] = v as f64;
            }
        }
        let all: f64 = rows.iter().sum();
        let (nf, mf) = (n as f64, m as f64);
        let stats: Vec<f64> = (0..cols)
            .map(|c| {
                let s_a1: f64 = (0..total)
                    .filter(|&i| labels[i * cols + c] != 0.0)
                    .map(|i| rows[i])
                    .sum();
                let s_bb = all - 2.0 * s_a1 + s_aa[c];
                (s_aa[c] - nf) / (nf * (nf - 1.0)) + (s_bb - mf) / (mf * (mf - 1.0))
                    - 2.0 * (s_a1 - s_aa[c]) / (nf * mf)
            })
            .collect();
        let observed = stats[0];
        let at_least = stats[1..].iter().filter(|&&s| s >= observed).count();
        Ok(MmdResult {
            statistic: observed,
            p_value: (1 + at_least) as f64 / cols as f64,
            permutations: permutations.len(),
            sigma,
        })
    }

    /// Mahalanobis distance of each row to `mean` under `precision` (the
    /// inverse covariance, row-major `d x d`): sqrt((x - mu)^T P (x - mu)).
    /// Rows are centred in f64 on the host so that the f32 device product
    /// sees small numbers; rows go through in tiles.
    pub fn mahalanobis(
        &self,
        rows: &[Vec<f64>],
        mean: &[f64],
        precision: &[f64],
    ) -> Result<Vec<f64>, DetectError> {
        let d = mean.len();
        if d == 0 || precision.len() != d * d {
            return Err(DetectError::Failed(
                "mahalanobis needs a mean and a d x d precision".into(),
            ));
        }
        if rows.iter().any(|r| r.len() != d) {
            return Err(DetectError::Failed(format!(
                "mahalanobis rows must have {d} values"
            )));
        }
        let p: Vec<f32> = precision.iter().map(|v| *v as f32).collect();
        let p = Tensor::<2>::from_data(TensorData::new(p, [d, d]), &self.device);
        let tile = (self.max_tile / (2 * d)).clamp(1, rows.len().max(1));
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(tile) {
            // Padded to a power of two: each new shape costs a compile on a GPU.
            let padded = chunk.len().next_power_of_two().min(tile);
            let mut centred: Vec<Vec<f64>> = chunk
                .iter()
                .map(|r| r.iter().zip(mean).map(|(v, m)| v - m).collect())
                .collect();
            centred.resize(padded, vec![0.0; d]);
            let y = self.matrix(&centred)?;
            let q = (y.clone().matmul(p.clone()) * y).sum_dim(1);
            // A quadratic form that overflowed f32 (NaN or infinite) is a
            // request beyond any threshold, never a distance of 0.
            out.extend(
                read(q)?
                    .iter::<f32>()
                    .take(chunk.len())
                    .map(|v| match v.is_nan() {
                        true => f64::INFINITY,
                        false => (v as f64).max(0.0).sqrt(),
                    }),
            );
        }
        Ok(out)
    }

    /// The distance of each row to its projection on the span of
    /// `components` (unit, orthogonal rows of length d): ||z - z W W^T||.
    /// Rows go through in tiles, padded to a power of two like the others.
    pub fn reconstruction_errors(
        &self,
        rows: &[Vec<f64>],
        components: &[Vec<f64>],
    ) -> Result<Vec<f64>, DetectError> {
        let d = components.first().map_or(0, Vec::len);
        if d == 0 || rows.iter().any(|r| r.len() != d) {
            return Err(DetectError::Failed(format!(
                "reconstruction rows must have {d} values"
            )));
        }
        let k = components.len();
        // W: d x k, the components as columns.
        let mut w = vec![0f32; d * k];
        for (c, comp) in components.iter().enumerate() {
            for (j, v) in comp.iter().enumerate() {
                w[j * k + c] = *v as f32;
            }
        }
        let w = Tensor::<2>::from_data(TensorData::new(w, [d, k]), &self.device);
        let tile = (self.max_tile / (2 * d + k)).clamp(1, rows.len().max(1));
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(tile) {
            let padded = chunk.len().next_power_of_two().min(tile);
            let mut z: Vec<Vec<f64>> = chunk.to_vec();
            z.resize(padded, vec![0.0; d]);
            let z = self.matrix(&z)?;
            let rebuilt = z.clone().matmul(w.clone()).matmul(w.clone().transpose());
            let e = (z - rebuilt).powi_scalar(2).sum_dim(1);
            out.extend(
                read(e)?
                    .iter::<f32>()
                    .take(chunk.len())
                    .map(|v| (v as f64).max(0.0).sqrt()),
            );
        }
        Ok(out)
    }

    fn matrix(&self, rows: &[Vec<f64>]) -> Result<Tensor<2>, DetectError> {
        let d = rows.first().map_or(0, Vec::len);
        if d == 0 || rows.iter().any(|r| r.len() != d) {
            return Err(DetectError::Failed(
                "rows must be non-empty and of equal length".into(),
            ));
        }
        let flat: Vec<f32> = rows
            .iter()
            .flatten()
            .map(|v| v.clamp(-VALUE_LIMIT, VALUE_LIMIT) as f32)
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [rows.len(), d]),
            &self.device,
        ))
    }

    /// Counts of each code `0..k` per column; codes outside that range are ignored.
    pub fn category_counts(
        &self,
        columns: &[Vec<i32>],
        k: usize,
    ) -> Result<Vec<Vec<u64>>, DetectError> {
        if columns.is_empty() || k == 0 {
            return Ok(vec![Vec::new(); columns.len()]);
        }
        let m = padded_rows(columns);
        let f_tile = (self.max_tile / (m * k)).clamp(1, columns.len());
        let mut out = Vec::with_capacity(columns.len());
        for chunk in columns.chunks(f_tile) {
            let nf = chunk.len();
            let mut flat = vec![-1i32; nf * m];
            for (f, col) in chunk.iter().enumerate() {
                flat[f * m..f * m + col.len()].copy_from_slice(col);
            }
            let codes: Tensor<3, Int> =
                Tensor::<2, Int>::from_data(TensorData::new(flat, [nf, m]), &self.device)
                    .unsqueeze_dim(2);
            let classes: Tensor<3, Int> =
                Tensor::<1, Int>::arange(0..k as i64, &self.device).reshape([1, 1, k]);
            let onehot: Tensor<3, Bool> = codes.equal(classes.expand([nf, m, k]));
            let counts = onehot.int().sum_dim(1);
            let vals: Vec<i64> = read(counts)?.iter::<i64>().collect();
            for f in 0..nf {
                out.push(vals[f * k..(f + 1) * k].iter().map(|&v| v as u64).collect());
            }
        }
        Ok(out)
    }

    /// The maximum of each row (ragged rows are padded with zeros, which
    /// cannot win since rows are probabilities).
    pub fn row_max(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>, DetectError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = vec![0f32; rows.len() * width];
        for (i, row) in rows.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                flat[i * width + j] = *v as f32;
            }
        }
        let t = Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), width]), &self.device);
        let max = t.max_dim(1);
        Ok(read(max)?.iter::<f32>().map(|v| v as f64).collect())
    }

    fn padded(&self, cols: &[Vec<f64>], width: usize) -> Tensor<2> {
        let mut flat = vec![PAD; cols.len() * width];
        for (f, col) in cols.iter().enumerate() {
            for (i, v) in col.iter().enumerate() {
                flat[f * width + i] = v.clamp(-VALUE_LIMIT, VALUE_LIMIT) as f32;
            }
        }
        Tensor::from_data(TensorData::new(flat, [cols.len(), width]), &self.device)
    }
}

/// The integer KS statistic by sorting both sides in f64 and merging,
/// comparing at each distinct value so that ties are counted together.
pub fn host_max_diff(r: &[f64], c: &[f64]) -> u64 {
    super::stats::ks_max_diff_sorted(&super::stats::sorted(r), &super::stats::sorted(c))
}

/// Squared distances between the rows of `a` `[t, d]` and of `b` `[N, d]`,
/// given their squared norms: `[t, N]`.
fn pairwise_sq(a: Tensor<2>, a_sq: Tensor<2>, b: Tensor<2>, b_sq: Tensor<2>) -> Tensor<2> {
    let cross = a.matmul(b.transpose());
    a_sq + b_sq.transpose() - cross.mul_scalar(2.0)
}

/// numpy's median: the middle value, or the mean of the two middle values.
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let (_, mid, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *mid;
    if n % 2 == 1 {
        upper
    } else {
        let lower = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// The longest column's length rounded up to a power of two: window sizes
/// vary, and each new kernel shape costs a compile on a GPU.
fn padded_rows<T>(columns: &[Vec<T>]) -> usize {
    columns
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1)
        .next_power_of_two()
}

/// `[F, n]` values against `[F, 1, P]` points: `[F, 1, P]` counts of values <= point.
fn count_le(values: Tensor<2>, points: Tensor<3>) -> Tensor<3, Int> {
    let v: Tensor<3> = values.unsqueeze_dim(2);
    v.lower_equal(points).int().sum_dim(1)
}

fn read<const D: usize, K>(t: Tensor<D, K>) -> Result<TensorData, DetectError>
where
    K: burn::tensor::kind::Basic,
{
    t.try_into_data()
        .map_err(|e| DetectError::Device(format!("reading back from the device failed: {e:?}")))
}

fn flex() -> (Device, DeviceInfo) {
    (
        Device::flex(),
        DeviceInfo {
            backend: "flex",
            adapter: "cpu".into(),
            kind: "flex".into(),
        },
    )
}

/// `auto`'s discrete GPU. Where the machine shows no device node a GPU
/// driver could open, nothing is probed: probing would load every installed
/// Vulkan driver only to find none (Mesa's cost 0.14 s and about 100 MB per
/// process on a machine without a GPU), and `gpu` still probes regardless.
fn auto_hardware() -> Result<(Device, DeviceInfo), String> {
    if cfg!(target_os = "linux") && !gpu_nodes(std::path::Path::new("/dev")) {
        return Err("no gpu device node under /dev (dri/renderD*, nvidia*, dxg)".into());
    }
    wgpu_hardware(&[DeviceKind::DiscreteGpu(0)])
}

/// Whether `dev` holds a node a hardware GPU driver opens on Linux: a DRM
/// render node (Mesa's and AMD's drivers, and NVIDIA's open ones), NVIDIA's
/// own nodes, or WSL's GPU. A directory that cannot be read counts as
/// holding one, so that an odd container still probes.
fn gpu_nodes(dev: &std::path::Path) -> bool {
    let any = |dir: &std::path::Path, wanted: &dyn Fn(&str) -> bool| match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| wanted(&n)),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound || dir == dev,
    };
    any(&dev.join("dri"), &|n| n.starts_with("renderD"))
        || any(dev, &|n| n.starts_with("nvidia") || n == "dxg")
}

fn wgpu_hardware(kinds: &[DeviceKind]) -> Result<(Device, DeviceInfo), String> {
    let mut reasons = Vec::new();
    for kind in kinds {
        match wgpu_open(kind.clone()) {
            Ok((device, info)) if info.kind != "Cpu" => return Ok((device, info)),
            Ok((_, info)) => {
                reasons.push(format!("{kind:?} is the software adapter {}", info.adapter))
            }
            Err(e) => reasons.push(e),
        }
    }
    Err(reasons.join("; "))
}

fn wgpu_open(kind: DeviceKind) -> Result<(Device, DeviceInfo), String> {
    // wgpu probing can panic inside drivers on broken installs; a monitor
    // that cannot get a GPU must still start on the CPU.
    let attempt = std::panic::catch_unwind(|| {
        Device::wgpu_options()
            .device_kind(kind.clone())
            .init_with_setup()
    });
    match attempt {
        Ok(Ok((device, setup))) => {
            let ai = setup.adapter.get_info();
            let info = DeviceInfo {
                backend: "wgpu",
                adapter: format!("{} ({:?}, {})", ai.name, ai.backend, ai.driver_info)
                    .trim()
                    .to_string(),
                kind: format!("{:?}", ai.device_type),
            };
            Ok((device, info))
        }
        Ok(Err(e)) => Err(format!("wgpu {kind:?}: {e}")),
        Err(_) => Err(format!("wgpu {kind:?}: adapter probe panicked")),
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// A discrete GPU through wgpu when there is one, else burn's flex CPU backend.
    #[default]
    Auto,
    /// A hardware GPU through wgpu (discrete, then integrated); error if none.
    Gpu,
    /// burn's flex CPU backend.
    Cpu,
    /// wgpu on a software adapter such as Mesa lavapipe (tests).
    WgpuCpu,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto`, `gpu`, `cpu` or `wgpu-cpu`.
    pub device: DeviceChoice,
    /// Run every kernel once at start-up so the first window is not slow;
    /// readiness waits for it.
    pub warmup: bool,
    /// Largest tensor, in elements, one kernel launch may touch; larger work is
    /// tiled. wgpu refuses single buffers near 4 GB.
    pub max_tile_elements: usize,
    /// Threads a window's per-feature statistics and a reference's fit may
    /// use on the host at once; 0: one per core the process may use. Lower
    /// it where the daemon shares its machine.
    pub host_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: DeviceChoice::default(),
            warmup: true,
            max_tile_elements: 1 << 26,
            host_threads: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gpu_nodes;

    #[test]
    fn a_gpu_is_probed_for_only_where_a_driver_could_open_one() {
        let dev = &std::env::temp_dir().join(format!("modelwatch-dev-{}", std::process::id()));
        let touch = |name: &str| std::fs::write(dev.join(name), b"").unwrap();
        std::fs::create_dir_all(dev.join("dri")).unwrap();
        touch("null");
        touch("dri/card0");
        assert!(!gpu_nodes(dev), "a display card alone has no render node");
        touch("dri/renderD128");
        assert!(gpu_nodes(dev));
        std::fs::remove_file(dev.join("dri/renderD128")).unwrap();
        touch("nvidiactl");
        assert!(gpu_nodes(dev));
        std::fs::remove_file(dev.join("nvidiactl")).unwrap();
        touch("dxg");
        assert!(gpu_nodes(dev));
        assert!(gpu_nodes(&dev.join("absent")), "unreadable: probe");
        std::fs::remove_file(dev.join("dxg")).unwrap();
        std::fs::remove_dir_all(dev.join("dri")).unwrap();
        assert!(!gpu_nodes(dev), "no dri at all");
        touch("dri");
        assert!(gpu_nodes(dev), "a dri that cannot be listed: probe");
        std::fs::remove_dir_all(dev).unwrap();
    }
}
