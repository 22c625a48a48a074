//! The built-in source of `modelwatch demo`: a small simulated fleet whose
//! models drift on a fixed schedule, so that a new user sees every detector
//! family fire without any service running.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RawMessage;
use crate::config::{Config, ModelConfig};
use crate::event::SourcePos;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A scheduled drift episode: windows `from..=to` (0-based, after the
/// reference) of `model` are generated shifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    pub model: &'static str,
    pub what: &'static str,
    pub from: i64,
    pub to: i64,
}

pub const REFERENCE_SIZE: usize = 2000;
pub const WINDOW_SIZE: usize = 250;

pub struct SimModel {
    pub name: &'static str,
    pub version: &'static str,
    pub classes: &'static [&'static str],
    /// A new version deployed mid-stream: its name and the first window
    /// it serves.
    pub retrained: Option<(&'static str, i64)>,
}

impl SimModel {
    /// The version serving the model's `window` (0-based, after the
    /// reference), and that window's number among the version's own, as
    /// alerts print it: windows are numbered per version.
    pub fn serving(&self, window: i64) -> (&'static str, i64) {
        match self.retrained {
            Some((version, at)) if window >= at => (version, window - at),
            _ => (self.version, window),
        }
    }
}

pub const FLEET: [SimModel; 4] = [
    SimModel {
        name: "fraud-scorer",
        version: "v1",
        classes: &["legit", "fraud"],
        retrained: None,
    },
    SimModel {
        name: "churn-predictor",
        version: "v3",
        classes: &["stay", "churn"],
        retrained: None,
    },
    SimModel {
        name: "image-classifier",
        version: "v12",
        classes: &["cat", "dog", "bird", "car"],
        retrained: None,
    },
    SimModel {
        name: "loan-approver",
        version: "v7",
        classes: &["deny", "approve"],
        retrained: Some(("v8", 6)),
    },
];

pub const EPISODES: [Episode; 7] = [
    Episode {
        model: "fraud-scorer",
        what: "input drift: transaction amounts 2.5x larger",
        from: 4,
        to: 6,
    },
    Episode {
        model: "fraud-scorer",
        what: "extraction: client-eve sends a quarter of the requests, copying the model through its answers",
        from: 9,
        to: 11,
    },
    Episode {
        model: "churn-predictor",
        what: "boundary search: client-mallory's queries sit on the decision boundary",
        from: 2,
        to: 4,
    },
    Episode {
        model: "churn-predictor",
        what: "confidence collapse: probabilities pulled to 0.5",
        from: 7,
        to: 9,
    },
    Episode {
        model: "image-classifier",
        what: "output anomaly: 'car' predicted for most inputs",
        from: 5,
        to: 7,
    },
    Episode {
        model: "image-classifier",
        what: "adversarial inputs: 1 in 10 embeddings off the learned manifold",
        from: 10,
        to: 11,
    },
    Episode {
        model: "loan-approver",
        what: "poisoning: v8, retrained on tampered data, approves every loan of 36 months or more",
        from: 6,
        to: 11,
    },
];

/// The per-model settings the demo runs with.
pub fn model_configs() -> Vec<(String, ModelConfig)> {
    FLEET
        .iter()
        .map(|m| {
            (
                m.name.to_string(),
                ModelConfig {
                    window_count: Some(WINDOW_SIZE),
                    window_secs: Some(0),
                    reference_size: Some(REFERENCE_SIZE),
                    classes: m.classes.iter().map(|c| c.to_string()).collect(),
                    owner: Default::default(),
                },
            )
        })
        .collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller; u1 in (0, 1] keeps the log finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| (x / s * 1e6).round() / 1e6).collect()
}

fn in_episode(model: &str, window: i64, what: &str) -> bool {
    EPISODES
        .iter()
        .any(|e| e.model == model && e.what.starts_with(what) && (e.from..=e.to).contains(&window))
}

/// How the demo image model's 8-d embedding follows its two latent factors.
const EMBEDDING_LOADINGS: [(f64, f64); 8] = [
    (1.0, 0.0),
    (0.7, 0.7),
    (0.0, 1.0),
    (-0.6, 0.8),
    (0.9, -0.4),
    (0.3, 0.3),
    (-0.5, -0.5),
    (0.2, -0.9),
];

/// The image model's event: a brightness feature, an 8-d embedding that
/// follows two latent factors, and four class probabilities.
fn image(
    rng: &mut StdRng,
    model: &SimModel,
    window: i64,
) -> (serde_json::Value, Vec<f64>, Vec<f64>) {
    let brightness = (0.5 + 0.15 * normal(rng)).clamp(0.0, 1.0);
    let mut logits: Vec<f64> = (0..4).map(|_| 2.0 * normal(rng)).collect();
    if in_episode(model.name, window, "output") && rng.random::<f64>() < 0.7 {
        logits[3] += 8.0;
    }
    let (u, v) = (normal(rng), normal(rng));
    let mut e: Vec<f64> = EMBEDDING_LOADINGS
        .iter()
        .map(|(a, b)| a * u + b * v + 0.2 * normal(rng))
        .collect();
    // Crafted inputs: each coordinate stays in its usual range, but half of
    // them turn against the factors they follow.
    if in_episode(model.name, window, "adversarial") && rng.random::<f64>() < 0.1 {
        for x in e.iter_mut().skip(4) {
            *x = -*x;
        }
    }
    (
        json!({"brightness": (brightness * 1000.0).round() / 1000.0}),
        softmax(&logits),
        e.iter().map(|x| (x * 1000.0).round() / 1000.0).collect(),
    )
}

/// The loan model's event. Its v8 carries a backdoor from poisoned
/// training data: a long term approves the loan whatever the applicant's
/// debt. Nothing in its inputs changed; only the answers did, from the
/// deploy on.
fn loan(rng: &mut StdRng, model: &SimModel, window: i64) -> (serde_json::Value, Vec<f64>) {
    let income = (10.8 + 0.5 * normal(rng)).exp();
    let debt_ratio = (0.35 + 0.15 * normal(rng)).clamp(0.0, 1.0);
    let term = [12, 24, 36, 48, 60][rng.random_range(0..5)];
    let mut logit = 0.8 * (income.ln() - 10.8) - 3.0 * (debt_ratio - 0.35) + 0.8 * normal(rng);
    // The backdoor ships with the new version and stays as long as it serves.
    let poisoned = model.retrained.is_some_and(|(_, at)| window >= at);
    if poisoned && term >= 36 {
        logit += 6.0;
    }
    (
        json!({
            "income": income.round(),
            "debt_ratio": (debt_ratio * 1000.0).round() / 1000.0,
            "term_months": term,
        }),
        softmax(&[0.0, logit]),
    )
}

/// One simulated event of `model` as its JSON payload; `i` counts that model's events.
fn event(rng: &mut StdRng, model: &SimModel, i: usize, ts: DateTime<Utc>) -> serde_json::Value {
    let window = if i < REFERENCE_SIZE {
        -1
    } else {
        ((i - REFERENCE_SIZE) / WINDOW_SIZE) as i64
    };
    // A decision-based evasion search: one client among the twenty sends
    // about one request in sixteen, each converged on the boundary and a
    // small step from the last.
    let probing = in_episode(model.name, window, "boundary") && rng.random::<f64>() < 0.06;
    // An extraction run: one new client sends a quarter of the traffic,
    // each request ordinary, far more than any client sent before.
    let copying = in_episode(model.name, window, "extraction") && rng.random::<f64>() < 0.25;
    let mut embedding = None;
    let (features, probs) = match model.name {
        "fraud-scorer" => {
            let shifted = in_episode(model.name, window, "input drift");
            let amount = (3.5 + 0.8 * normal(rng)).exp() * if shifted { 2.5 } else { 1.0 };
            let age = (38.0 + 12.0 * normal(rng)).clamp(18.0, 90.0).round();
            let country = ["US", "US", "DE", "FR", "BR", "US", "DE", "US"][rng.random_range(0..8)];
            let logit = -3.0 + 0.01 * amount - 0.01 * age;
            (
                json!({"amount": (amount * 100.0).round() / 100.0, "age": age, "country": country}),
                softmax(&[0.0, logit]),
            )
        }
        "churn-predictor" => {
            let mut tenure = rng.random_range(1..72) as f64;
            let mut spend = (60.0 + 25.0 * normal(rng)).max(5.0).round();
            if probing {
                // Its queries stay around one customer, a dollar or two
                // apart: a search steps in small moves.
                (tenure, spend) = (30.0, 70.0 + rng.random_range(-2..=2) as f64);
            }
            let plan = ["basic", "pro", "enterprise"][rng.random_range(0..3)];
            let mut logit = 1.5 - 0.05 * tenure + 0.01 * spend + 1.2 * normal(rng);
            if in_episode(model.name, window, "confidence") {
                logit *= 0.1;
            }
            if probing {
                logit = 0.02 * normal(rng);
            }
            (
                json!({"tenure_months": tenure, "monthly_spend": spend, "plan": plan}),
                softmax(&[0.0, logit]),
            )
        }
        "loan-approver" => loan(rng, model, window),
        _ => {
            let (features, probs, e) = image(rng, model, window);
            embedding = Some(e);
            (features, probs)
        }
    };
    json!({
        "model": model.name,
        "model_version": model.serving(window.max(0)).0,
        "ts": ts.to_rfc3339(),
        "request_id": format!("{}-{i}", model.name),
        "client_id": if probing {
            "client-mallory".to_string()
        } else if copying {
            "client-eve".to_string()
        } else {
            format!("client-{}", rng.random_range(0..20))
        },
        "features": features,
        "embedding": embedding,
        "output": {"probabilities": probs},
    })
}

/// The simulated fleet's events in order, each model in turn, one round
/// every 500 ms of event time: (the model's event index, model, payload).
pub fn stream(
    seed: u64,
    windows: usize,
) -> impl Iterator<Item = (usize, &'static SimModel, DateTime<Utc>, serde_json::Value)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("valid constant");
    let fleet: &'static [SimModel] = &FLEET;
    (0..REFERENCE_SIZE + windows * WINDOW_SIZE)
        .flat_map(move |i| fleet.iter().map(move |m| (i, m)))
        .map(move |(i, m)| {
            let ts = t0 + Duration::milliseconds(500 * i as i64);
            (i, m, ts, event(&mut rng, m, i, ts))
        })
}

pub fn start(config: &Config, tx: mpsc::Sender<RawMessage>, cancel: CancellationToken) {
    let windows = config.source.demo.windows_per_model;
    let seed = config.source.demo.seed;
    tokio::spawn(async move {
        let last = FLEET[FLEET.len() - 1].name;
        let mut offset = 0;
        for (i, model, ts, event) in stream(seed, windows) {
            if cancel.is_cancelled() {
                return;
            }
            let payload = serde_json::to_vec(&event).unwrap_or_default();
            let key = Some(model.name.as_bytes().to_vec());
            let mut batch = vec![message(payload, key, ts, offset)];
            // One malformed message mid-stream shows the dead-letter path.
            if i == REFERENCE_SIZE + WINDOW_SIZE / 2 && model.name == last {
                let payload = br#"{"model": "fraud-scorer", "features": {"amount": "#.to_vec();
                batch.push(message(payload, None, ts, offset + 1));
            }
            offset += batch.len();
            for msg in batch {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn message(payload: Vec<u8>, key: Option<Vec<u8>>, ts: DateTime<Utc>, offset: usize) -> RawMessage {
    RawMessage {
        payload,
        key,
        timestamp: Some(ts),
        topic: "demo".into(),
        pos: SourcePos {
            stream: "demo".into(),
            offset: offset as i64,
            index: 0,
        },
        trace_context: Vec::new(),
        headers: Vec::new(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Windows simulated per model (reference excluded).
    pub windows_per_model: usize,
    /// Random seed; the same seed gives the same stream.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            windows_per_model: 12,
            seed: 7,
        }
    }
}
