//! Sensitivity you can rerun: a synthetic model whose traffic carries
//! planted shifts of known size, scored and judged exactly as the daemon
//! scores and judges, so that detection rate and false-alarm rate are a
//! measured curve per detector, shift size and window size.
//!
//! The model: numeric features `x0`, `x1` (standard normal), `x2`, `x3`
//! (standard normal, correlation 0.8); categorical `segment` (five levels,
//! 35/25/20/12/8%) and `region` (twelve levels, Zipf weights, so small
//! windows see sparse levels); a binary classifier on them whose positive
//! class holds about a quarter of the traffic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::detect::{DetectError, Scorer, stats};
use crate::event::{FeatureValue, Features, Output, Probabilities, TelemetryEvent};
use crate::judge::{self, JudgeConfig};

const SEGMENTS: [(&str, f64); 5] = [
    ("A", 0.35),
    ("B", 0.25),
    ("C", 0.20),
    ("D", 0.12),
    ("E", 0.08),
];
const REGIONS: usize = 12;
const CORRELATION: f64 = 0.8;
/// The classifier's logit: 1.2 x0 - 0.8 x1 + 0.5 x2 + INTERCEPT.
const INTERCEPT: f64 = -1.0;
/// The spread of the logit's linear part, sqrt(1.2² + 0.8² + 0.5²).
const LOGIT_SD: f64 = 1.526_433_752_247_719_7;

/// What a window's traffic has that the reference's has not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shift {
    None,
    /// `x0`'s mean moves by this many standard deviations.
    Mean(f64),
    /// `x1`'s standard deviation is multiplied by this.
    Scale(f64),
    /// This share moves from `segment` A to E (0.05: five points).
    Mix(f64),
    /// This share moves from `region`'s commonest level to its six rarest.
    MixMany(f64),
    /// `x2` and `x3` correlate this much instead of 0.8; marginals stay.
    Correlation(f64),
    /// The positive class's share of predictions rises by this much.
    Prior(f64),
}

/// A scenario of the evaluation: its shift and the score that should see it.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub shift: Shift,
    /// `(detector, feature)`; `None` for clean traffic.
    pub target: Option<(&'static str, &'static str)>,
}

/// The scenarios the evaluation runs by default.
pub fn scenarios() -> Vec<Scenario> {
    let s = |name: &str, shift, target| Scenario {
        name: name.into(),
        shift,
        target,
    };
    let drift = |f| Some(("feature_drift", f));
    vec![
        s("clean", Shift::None, None),
        s("x0 mean +0.1 sd", Shift::Mean(0.1), drift("x0")),
        s("x0 mean +0.25 sd", Shift::Mean(0.25), drift("x0")),
        s("x0 mean +0.5 sd", Shift::Mean(0.5), drift("x0")),
        s("x1 scale x1.25", Shift::Scale(1.25), drift("x1")),
        s("segment mix 5 points", Shift::Mix(0.05), drift("segment")),
        s("segment mix 15 points", Shift::Mix(0.15), drift("segment")),
        s(
            "region mix 5 points (12 levels)",
            Shift::MixMany(0.05),
            drift("region"),
        ),
        s(
            "region mix 15 points (12 levels)",
            Shift::MixMany(0.15),
            drift("region"),
        ),
        s(
            "x2-x3 correlation 0.8 -> 0.2",
            Shift::Correlation(0.2),
            Some(("multivariate_drift", "numeric_features")),
        ),
        s(
            "positive class +5 points",
            Shift::Prior(0.05),
            Some(("output_distribution", "predicted_class")),
        ),
    ]
}

/// Draws events of the synthetic model.
pub struct Synth {
    rng: StdRng,
}

impl Synth {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `n` events with `shift` planted. Panics on a shift the model cannot
    /// carry (a share moved past its source, a correlation outside [-1, 1]).
    pub fn events(&mut self, n: usize, shift: Shift) -> Vec<TelemetryEvent> {
        match shift {
            Shift::Mix(m) => assert!((0.0..=SEGMENTS[0].1).contains(&m), "{shift:?}"),
            Shift::MixMany(m) => assert!((0.0..=0.3).contains(&m), "{shift:?}"),
            Shift::Correlation(r) => assert!((-1.0..=1.0).contains(&r), "{shift:?}"),
            _ => {}
        }
        let intercept = match shift {
            Shift::Prior(points) => prior_intercept(points),
            _ => INTERCEPT,
        };
        (0..n).map(|_| self.event(shift, intercept)).collect()
    }

    fn normal(&mut self) -> f64 {
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn event(&mut self, shift: Shift, intercept: f64) -> TelemetryEvent {
        let x0 = self.normal() + if let Shift::Mean(k) = shift { k } else { 0.0 };
        let x1 = self.normal() * if let Shift::Scale(f) = shift { f } else { 1.0 };
        let rho = if let Shift::Correlation(r) = shift {
            r
        } else {
            CORRELATION
        };
        let (z1, z2) = (self.normal(), self.normal());
        let (x2, x3) = (z1, rho * z1 + (1.0 - rho * rho).sqrt() * z2);
        let segment = self.segment(shift);
        let region = self.region(shift);
        let logit = 1.2 * x0 - 0.8 * x1 + 0.5 * x2 + intercept;
        let p = 1.0 / (1.0 + (-logit).exp());
        let number = FeatureValue::Number;
        let features: Features = [
            ("x0", number(x0)),
            ("x1", number(x1)),
            ("x2", number(x2)),
            ("x3", number(x3)),
            ("segment", FeatureValue::Text(segment.into())),
            ("region", FeatureValue::Text(format!("r{region:02}").into())),
        ]
        .into_iter()
        .collect();
        TelemetryEvent {
            model: "eval".into(),
            model_version: None,
            ts: DateTime::<Utc>::UNIX_EPOCH,
            request_id: None,
            client_id: None,
            features,
            embedding: None,
            output: Output {
                probabilities: Some(Probabilities::List(vec![1.0 - p, p])),
                label: None,
                score: None,
            },
            actual: None,
            attributes: Default::default(),
        }
    }

    fn segment(&mut self, shift: Shift) -> &'static str {
        let moved = if let Shift::Mix(m) = shift { m } else { 0.0 };
        let weights = SEGMENTS.map(|(name, w)| match name {
            "A" => w - moved,
            "E" => w + moved,
            _ => w,
        });
        SEGMENTS[self.pick(&weights)].0
    }

    fn region(&mut self, shift: Shift) -> usize {
        let moved = if let Shift::MixMany(m) = shift {
            m
        } else {
            0.0
        };
        let total: f64 = (1..=REGIONS).map(|i| 1.0 / i as f64).sum();
        let weights: Vec<f64> = (0..REGIONS)
            .map(|i| {
                let w = 1.0 / (i + 1) as f64 / total;
                match i {
                    0 => w - moved,
                    i if i >= REGIONS - 6 => w + moved / 6.0,
                    _ => w,
                }
            })
            .collect();
        self.pick(&weights)
    }

    fn pick(&mut self, weights: &[f64]) -> usize {
        let mut u: f64 = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                return i;
            }
            u -= w;
        }
        weights.len() - 1
    }
}

/// The intercept under which the positive class's share of predictions
/// (logit > 0) is `points` above the model's own.
fn prior_intercept(points: f64) -> f64 {
    let share = stats::normal_cdf(INTERCEPT / LOGIT_SD) + points;
    // Share = Φ(intercept / sd): solve by bisection on the normal CDF.
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if stats::normal_cdf(mid) < share {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi) * LOGIT_SD
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub reference_rows: Vec<usize>,
    pub window_rows: Vec<usize>,
    /// Windows per shifted scenario.
    pub windows: usize,
    /// Windows of clean traffic, for the false-alarm rates.
    pub clean_windows: usize,
    pub seed: u64,
    pub scenarios: Vec<Scenario>,
    /// Consecutive crossings an alert needs to fire (`alerts.pending_windows`),
    /// for the detection delay.
    pub pending_windows: usize,
}

/// One scenario on one reference and window size.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reference_rows: usize,
    pub window_rows: usize,
    pub scenario: String,
    pub target: Option<String>,
    pub windows: usize,
    /// Windows in which the target score crossed (`None`: no such score,
    /// its detector is off).
    pub detected: Option<usize>,
    /// Windows in which the target's p-value alone was past its threshold,
    /// whatever its effect size: what the effect gate costs.
    pub significant: usize,
    /// Per detector, windows in which any of its scores crossed.
    pub alarmed: BTreeMap<String, usize>,
    /// Whether the target crossed, window by window.
    pub crossings: Vec<bool>,
}

impl Outcome {
    /// Windows from a shift's start until its alert fires (`pending`
    /// consecutive crossings), measured from every window of the run as a
    /// start: the median over starts that fire before the run ends, and how
    /// many starts do. One run of 40 windows gives 40 overlapping episodes.
    pub fn delay(&self, pending: usize) -> Option<(f64, usize)> {
        let n = self.crossings.len();
        let pending = pending.max(1);
        let mut delays: Vec<f64> = (0..n)
            .filter_map(|start| {
                let mut run = 0;
                (start..n).find_map(|i| {
                    run = if self.crossings[i] { run + 1 } else { 0 };
                    (run == pending).then_some((i - start + 1) as f64)
                })
            })
            .collect();
        if delays.is_empty() {
            return None;
        }
        delays.sort_by(f64::total_cmp);
        Some((stats::quantile_sorted(&delays, 0.5), delays.len()))
    }
}

/// Runs the plan, handing each outcome to `each` as it is measured.
pub fn run(
    scorer: &Scorer,
    judge: &JudgeConfig,
    plan: &Plan,
    mut each: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, DetectError> {
    let mut synth = Synth::new(plan.seed);
    let mut out = Vec::new();
    for &n in &plan.reference_rows {
        let reference = synth.events(n, Shift::None);
        for &m in plan.window_rows.iter().filter(|m| **m <= n) {
            let fitted = scorer.fit("eval", &reference, &[], m)?;
            for s in &plan.scenarios {
                let windows = match s.shift {
                    Shift::None => plan.clean_windows,
                    _ => plan.windows,
                };
                let mut outcome = Outcome {
                    reference_rows: n,
                    window_rows: m,
                    scenario: s.name.clone(),
                    target: s.target.map(|(d, f)| format!("{d}/{f}")),
                    windows,
                    detected: None,
                    significant: 0,
                    alarmed: BTreeMap::new(),
                    crossings: Vec::new(),
                };
                for _ in 0..windows {
                    let events = synth.events(m, s.shift);
                    let scores = scorer.score(&fitted, &events)?.scores;
                    tally(&mut outcome, s.target, &judge::judge(judge, scores));
                }
                each(&outcome);
                out.push(outcome);
            }
        }
    }
    Ok(out)
}

fn tally(outcome: &mut Outcome, target: Option<(&str, &str)>, judged: &[judge::Judged]) {
    if let Some((detector, feature)) = target {
        let hit = judged
            .iter()
            .find(|j| j.score.detector == detector && j.score.feature == feature);
        if let Some(j) = hit {
            *outcome.detected.get_or_insert(0) += usize::from(j.crossed.is_some());
            outcome.significant += usize::from(j.score.p_value < j.threshold);
        }
        outcome
            .crossings
            .push(hit.is_some_and(|j| j.crossed.is_some()));
    }
    let detectors: std::collections::BTreeSet<&str> =
        judged.iter().map(|j| j.score.detector.as_str()).collect();
    for detector in detectors {
        let any = judged
            .iter()
            .any(|j| j.score.detector == detector && j.crossed.is_some());
        *outcome.alarmed.entry(detector.to_string()).or_default() += usize::from(any);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_counts_windows_to_the_firing_one_from_every_start() {
        let outcome = |crossings: &[u8]| Outcome {
            reference_rows: 0,
            window_rows: 0,
            scenario: String::new(),
            target: None,
            windows: crossings.len(),
            detected: None,
            significant: 0,
            alarmed: BTreeMap::new(),
            crossings: crossings.iter().map(|c| *c == 1).collect(),
        };
        // Every window crosses: the second fires, from every start but the last.
        assert_eq!(outcome(&[1, 1, 1, 1]).delay(2), Some((2.0, 3)));
        // From starts 0..=2 the pair at 3-4 fires (delays 5, 4, 3); from 3, 2.
        assert_eq!(outcome(&[1, 0, 0, 1, 1]).delay(2), Some((3.5, 4)));
        assert_eq!(outcome(&[1, 0, 1, 0]).delay(2), None);
        assert_eq!(outcome(&[0, 1]).delay(1), Some((1.5, 2)));
    }

    #[test]
    fn planted_shifts_have_the_size_they_name() {
        let mut synth = Synth::new(1);
        let share = |events: &[TelemetryEvent], f: &dyn Fn(&TelemetryEvent) -> bool| {
            events.iter().filter(|e| f(e)).count() as f64 / events.len() as f64
        };
        let positive = |e: &TelemetryEvent| match &e.output.probabilities {
            Some(Probabilities::List(p)) => p[1] > 0.5,
            _ => false,
        };
        let clean = synth.events(200_000, Shift::None);
        let prior = synth.events(200_000, Shift::Prior(0.05));
        let moved = share(&prior, &positive) - share(&clean, &positive);
        assert!((moved - 0.05).abs() < 0.005, "class share moved {moved}");
        let mix = synth.events(200_000, Shift::Mix(0.05));
        let is_e = |e: &TelemetryEvent| e.features["segment"].as_category().as_deref() == Some("E");
        let moved = share(&mix, &is_e) - share(&clean, &is_e);
        assert!((moved - 0.05).abs() < 0.005, "segment E moved {moved}");
        let mean = |events: &[TelemetryEvent]| {
            let x: Vec<f64> = events
                .iter()
                .map(|e| e.features["x0"].as_number().unwrap())
                .collect();
            stats::mean_var(&x)
        };
        let (m, v) = mean(&synth.events(200_000, Shift::Mean(0.25)));
        assert!((m - 0.25).abs() < 0.01 && (v - 1.0).abs() < 0.02, "{m} {v}");
    }
}
