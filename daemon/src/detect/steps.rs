//! Query steps. A decision-based attack (HopSkipJump, a boundary or
//! sign-OPT search) sends runs of queries each a small step from the last:
//! it estimates the boundary's direction by querying just around a point,
//! and binary-searches between two answers. A real client's consecutive
//! requests are as far apart as its traffic is varied. Per client, two
//! shares of its requests against the reference's (`clients::worst`):
//! - near-duplicates: a step from the client's previous request shorter
//!   than the reference's low quantile of steps. A step of exactly 0 is not
//!   counted: a retry tells an attacker nothing, and clients retry.
//! - label flips: a step under a wider quantile across which the model's
//!   answer changed. With label-only outputs this is all an attacker gets,
//!   and all the monitor sees: the margin score needs probabilities.
//!
//! A step is a Mahalanobis length under the space's covariance (the one
//! the out-of-distribution detector fitted, where it did), so that neither
//! a feature's scale nor correlated features decide what is near.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clients;
use super::frame::Sender;
use super::threat::Threat;
use super::{DetectError, Detector, Engine, Frame, Reference, Score, ood, stats};

/// How many of the client's shortest steps a score names.
const EXAMPLES: usize = 5;
/// Reference rows whose steps are measured at fit.
const MAX_REFERENCE_ROWS: usize = 50_000;

/// One vector space's reference steps.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// `features` or `embedding`.
    pub space: &'static str,
    pub precision: Vec<f64>,
    pub dims: usize,
    /// Steps of at most `near` (and above 0) are near-duplicates; the
    /// reference's `near_quantile` of its non-zero steps.
    pub near: f64,
    pub near_quantile: f64,
    /// Steps of at most `flip` across which the answer changed are flips.
    pub flip: f64,
    pub flip_quantile: f64,
    /// The reference's steps, its near-duplicates and its flips.
    pub reference_steps: u64,
    pub reference_near: u64,
    pub reference_flips: u64,
    /// Reference steps with an answer on both ends: flips are scored only
    /// where the model answers with classes.
    pub reference_labelled: u64,
}

/// A request that follows another of the same client: its index, its
/// predecessor's, and the step between them.
struct Step {
    at: usize,
    after: usize,
    length: f64,
}

/// Each request's step from its client's previous one, in arrival order;
/// requests without a client id are one client. Rows of another width are
/// left out.
fn steps(
    engine: &Engine,
    rows: &[Vec<f64>],
    senders: &[Sender],
    precision: &[f64],
    dims: usize,
) -> Result<Vec<Step>, DetectError> {
    let mut last: std::collections::HashMap<Option<&str>, usize> = Default::default();
    let mut pairs = Vec::new();
    for (i, (row, sender)) in rows.iter().zip(senders).enumerate() {
        if row.len() != dims {
            continue;
        }
        if let Some(j) = last.insert(sender.client_id.as_deref(), i) {
            pairs.push((i, j));
        }
    }
    let origin = vec![0.0; dims];
    let mut out = Vec::with_capacity(pairs.len());
    // The differences a chunk at a time: all at once, a 50k reference's
    // (the rows, the engine's centred copy and its tensors) raised the
    // fit's peak memory by about 40 MB, for a list of lengths.
    for chunk in pairs.chunks(STEP_CHUNK) {
        let diffs: Vec<Vec<f64>> = chunk
            .iter()
            .map(|&(i, j)| rows[i].iter().zip(&rows[j]).map(|(a, b)| a - b).collect())
            .collect();
        let lengths = engine.mahalanobis(&diffs, &origin, precision)?;
        out.extend(
            chunk
                .iter()
                .zip(lengths)
                .map(|(&(at, after), length)| Step { at, after, length }),
        );
    }
    Ok(out)
}

/// Steps measured at once: every full chunk is one shape, which a GPU
/// compiles once.
const STEP_CHUNK: usize = 1 << 13;

fn flipped(senders: &[Sender], s: &Step) -> Option<bool> {
    let (now, before) = (&senders[s.at].predicted, &senders[s.after].predicted);
    Some(now.as_ref()? != before.as_ref()?)
}

fn fit_space(
    engine: &Engine,
    (space, rows, senders): (&'static str, &[Vec<f64>], &[Sender]),
    precision: Vec<f64>,
    config: &StepsConfig,
) -> Result<Option<Fitted>, DetectError> {
    let n = rows.len().min(MAX_REFERENCE_ROWS);
    let dims = rows.first().map_or(0, Vec::len);
    let all = steps(engine, &rows[..n], &senders[..n], &precision, dims)?;
    let mut lengths: Vec<f64> = all.iter().map(|s| s.length).filter(|l| *l > 0.0).collect();
    // At least five reference near-duplicates, so that their rate is
    // estimated from a handful of steps or more.
    if (lengths.len() as f64) * config.near_quantile < 5.0 {
        return Ok(None);
    }
    lengths.sort_by(f64::total_cmp);
    let near = stats::quantile_sorted(&lengths, config.near_quantile);
    let flip = stats::quantile_sorted(&lengths, config.flip_quantile);
    let count = |f: &dyn Fn(&Step) -> bool| all.iter().filter(|s| f(s)).count() as u64;
    Ok(Some(Fitted {
        space,
        precision,
        dims,
        near,
        near_quantile: config.near_quantile,
        flip,
        flip_quantile: config.flip_quantile,
        reference_steps: all.len() as u64,
        reference_near: count(&|s| s.length > 0.0 && s.length <= near),
        reference_flips: count(&|s| {
            s.length > 0.0 && s.length <= flip && flipped(&senders[..n], s) == Some(true)
        }),
        reference_labelled: count(&|s| flipped(&senders[..n], s).is_some()),
    }))
}

/// Fits each space the reference has rows of, under the covariance the
/// out-of-distribution detector fitted for it, or one of its own.
pub fn fit(
    engine: &Engine,
    frame: &Frame,
    fitted_ood: &[ood::Fitted],
    config: &StepsConfig,
) -> Result<Vec<Fitted>, DetectError> {
    let mut out = Vec::new();
    for space in ["features", "embedding"] {
        let (rows, senders) = frame.space(space);
        let dims = rows.first().map_or(0, Vec::len);
        // Too few rows for five near-duplicates at the quantile: checked
        // before a covariance of the space is fitted for nothing.
        let few = (rows.len() as f64) * config.near_quantile < 5.0;
        if few || dims < 2 || rows.iter().any(|r| r.len() != dims) {
            continue;
        }
        let precision = match fitted_ood.iter().find(|f| f.space == space) {
            Some(f) => Some(f.precision.clone()),
            None => ood::covariance(&rows[..rows.len().min(MAX_REFERENCE_ROWS)]).map(|c| c.1),
        };
        let Some(precision) = precision else { continue };
        out.extend(fit_space(
            engine,
            (space, rows, senders),
            precision,
            config,
        )?);
    }
    Ok(out)
}

pub struct QuerySteps;

impl Detector for QuerySteps {
    fn name(&self) -> &'static str {
        "query_steps"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let mut scores = Vec::new();
        for fitted in &reference.steps {
            let (rows, senders) = window.space(fitted.space);
            let all = steps(engine, rows, senders, &fitted.precision, fitted.dims)?;
            scores.extend(near_duplicates(self.name(), fitted, &all, senders));
            if fitted.reference_labelled > 0 {
                scores.extend(flips(self.name(), fitted, &all, senders));
            }
        }
        Ok(scores)
    }
}

fn near_duplicates(
    detector: &str,
    fitted: &Fitted,
    all: &[Step],
    senders: &[Sender],
) -> Option<Score> {
    let marked = |s: &Step| s.length > 0.0 && s.length <= fitted.near;
    let signal = clients::Signal {
        detector,
        feature: format!("{}_near_duplicates_per_client", fitted.space),
        test: "near_step_client_fisher",
        marks: format!(
            "a step of at most {:.4} from the client's previous request (reference q{} of steps)",
            fitted.near, fitted.near_quantile
        ),
        reference: (fitted.reference_near, fitted.reference_steps),
        threat: Threat::Evasion,
    };
    worst_by(all, senders, marked, signal)
}

fn flips(detector: &str, fitted: &Fitted, all: &[Step], senders: &[Sender]) -> Option<Score> {
    let marked =
        |s: &Step| s.length > 0.0 && s.length <= fitted.flip && flipped(senders, s) == Some(true);
    let signal = clients::Signal {
        detector,
        feature: format!("{}_label_flips_per_client", fitted.space),
        test: "flip_step_client_fisher",
        marks: format!(
            "answered another class than the client's previous request, a step of at most {:.4} away (reference q{} of steps)",
            fitted.flip, fitted.flip_quantile
        ),
        reference: (fitted.reference_flips, fitted.reference_steps),
        threat: Threat::Evasion,
    };
    worst_by(all, senders, marked, signal)
}

/// The worst client by its share of steps `marked` picks, named with its
/// shortest marked steps: `req-17 client=m step=0.0031 after req-16 (a->b)`.
fn worst_by(
    all: &[Step],
    senders: &[Sender],
    marked: impl Fn(&Step) -> bool,
    signal: clients::Signal<'_>,
) -> Option<Score> {
    let requests = all.iter().map(|s| (&senders[s.at], marked(s)));
    let w = clients::worst_of(requests, signal.reference)?;
    let mut shortest: Vec<&Step> = all
        .iter()
        .filter(|s| marked(s) && w.sent(senders[s.at].client_id.as_deref()))
        .collect();
    shortest.sort_by(|a, b| a.length.total_cmp(&b.length));
    let examples = shortest
        .iter()
        .take(EXAMPLES)
        .map(|s| {
            let (now, before) = (&senders[s.at], &senders[s.after]);
            let answers = match (&before.predicted, &now.predicted) {
                (Some(b), Some(a)) if a != b => format!(" ({b}->{a})"),
                _ => String::new(),
            };
            let after = before.request_id.as_deref().unwrap_or("-");
            format!(
                "{} step={:.4} after {after}{answers}",
                now.label(),
                s.length
            )
        })
        .collect();
    Some(w.score(signal, examples))
}

/// Clients whose consecutive requests take small steps, or flip the
/// model's answer across small steps.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepsConfig {
    /// Score each client's share of near-duplicate requests and label flips.
    pub enabled: bool,
    /// A request is a near-duplicate when its step from the client's
    /// previous request is under this quantile of the reference's steps.
    pub near_quantile: f64,
    /// A label flip is a changed answer across a step under this quantile.
    pub flip_quantile: f64,
}

impl Default for StepsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            near_quantile: 0.01,
            flip_quantile: 0.05,
        }
    }
}

impl StepsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let (near, flip) = (self.near_quantile, self.flip_quantile);
        if !(near > 0.0 && near <= flip && flip < 0.5) {
            return Err(format!(
                "detect.steps needs 0 < near_quantile <= flip_quantile < 0.5, got {near} and {flip}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(client: Option<&str>, predicted: &str) -> Sender {
        Sender {
            request_id: None,
            client_id: client.map(str::to_string),
            predicted: Some(predicted.to_string()),
            exempt: false,
            context: None,
        }
    }

    /// Across chunks, each step is its own pair's length under the
    /// precision, in arrival order.
    #[test]
    fn steps_measured_a_chunk_at_a_time_are_each_pairs_length() {
        let engine = Engine::open(super::super::DeviceChoice::Cpu, 1 << 20).unwrap();
        let n = 2 * STEP_CHUNK + 123;
        let rows: Vec<Vec<f64>> = (0..n)
            .map(|i| vec![(i % 17) as f64, (i * 7 % 13) as f64 * 0.5, (i % 5) as f64])
            .collect();
        let clients = ["a", "b", "c"];
        let senders: Vec<Sender> = (0..n).map(|i| sender(Some(clients[i % 3]), "x")).collect();
        let precision = [2.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.25];
        let all = steps(&engine, &rows, &senders, &precision, 3).unwrap();
        assert_eq!(all.len(), n - 3);
        for (k, s) in all.iter().enumerate() {
            assert_eq!((s.at, s.after), (k + 3, k), "step {k}");
            let d: Vec<f64> = rows[s.at]
                .iter()
                .zip(&rows[s.after])
                .map(|(a, b)| a - b)
                .collect();
            let q: f64 = (0..3)
                .flat_map(|r| (0..3).map(move |c| (r, c)))
                .map(|(r, c)| d[r] * precision[r * 3 + c] * d[c])
                .sum();
            assert!(
                (s.length - q.sqrt()).abs() <= 1e-5 * q.sqrt().max(1.0),
                "step {k}"
            );
        }
    }

    /// Steps join each request to its own client's previous one, never
    /// across clients, and a row of another width joins nothing.
    #[test]
    fn steps_follow_each_client_and_skip_rows_of_another_width() {
        let engine = Engine::open(super::super::DeviceChoice::Cpu, 1 << 20).unwrap();
        let rows = vec![
            vec![0.0, 0.0],
            vec![10.0, 0.0],
            vec![0.0, 3.0],
            vec![1.0],
            vec![10.0, 4.0],
            vec![0.0, 7.0],
        ];
        let senders = [
            sender(Some("a"), "x"),
            sender(Some("b"), "x"),
            sender(Some("a"), "y"),
            sender(Some("a"), "x"),
            sender(Some("b"), "x"),
            sender(None, "x"),
        ];
        let identity = [1.0, 0.0, 0.0, 1.0];
        let all = steps(&engine, &rows, &senders, &identity, 2).unwrap();
        let seen: Vec<(usize, usize, f64)> = all
            .iter()
            .map(|s| (s.at, s.after, (s.length * 1e4).round() / 1e4))
            .collect();
        assert_eq!(seen, [(2, 0, 3.0), (4, 1, 4.0)]);
        assert_eq!(flipped(&senders, &all[0]), Some(true));
        assert_eq!(flipped(&senders, &all[1]), Some(false));
    }
}
