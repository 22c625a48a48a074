//! Calibration of the alarms, on the daemon's own scorer and judge: a
//! stream without drift raises alarms at no more than the configured rate,
//! and a planted shift is caught within the hysteresis it is configured with.

use modelwatch::config::{AlertsConfig, DeviceChoice, JudgeConfig};
use modelwatch::detect::Scorer;
use modelwatch::detect::engine::Engine;
use modelwatch::event::TelemetryEvent;
use modelwatch::judge::lifecycle::{self, Observation};
use modelwatch::judge::{self, Transition, WindowVerdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn event(rng: &mut StdRng, shift: f64) -> TelemetryEvent {
    let p = 0.2 + 0.6 * rng.random::<f64>();
    let c = ["x", "y", "z"][rng.random_range(0..3)];
    serde_json::from_value(serde_json::json!({
        "model": "m", "ts": "2026-01-01T00:00:00Z",
        "features": {
            "a": ((normal(rng) + shift) * 1e3).round() / 1e3,
            "b": (normal(rng) * 1e3).round() / 1e3,
            "c": c,
        },
        "output": {"probabilities": [1.0 - p, p]},
    }))
    .unwrap()
}

fn verdict(seq: i64, judged: Vec<judge::Judged>) -> WindowVerdict {
    let t = chrono::Utc::now();
    WindowVerdict {
        model: "m".into(),
        model_version: String::new(),
        seq,
        start: t,
        end: t,
        n_events: 0,
        close_reason: "count",
        device: "flex:cpu".into(),
        error: None,
        judged,
        sample_request_ids: Vec::new(),
        high_water: Default::default(),
        trace_id: None,
    }
}

#[test]
fn no_drift_stream_stays_within_the_false_alarm_rate() {
    let scorer = Scorer::new(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap());
    let config = JudgeConfig {
        alpha: 0.01,
        ..JudgeConfig::default()
    };
    // The false-alarm rate holds over references as well as over windows,
    // so both are redrawn: 50 references x 20 windows = 1,000 windows.
    let mut rng = StdRng::seed_from_u64(2026);
    let (mut windows, mut alarmed) = (0usize, 0usize);
    for _ in 0..50 {
        let reference: Vec<TelemetryEvent> = (0..500).map(|_| event(&mut rng, 0.0)).collect();
        let fitted = scorer.fit("m", &reference, &[], 100).unwrap();
        for _ in 0..20 {
            let window: Vec<TelemetryEvent> = (0..100).map(|_| event(&mut rng, 0.0)).collect();
            let scored = scorer.score(&fitted, &window).unwrap();
            // KS a, b; chi2 c; KS and Welch on max probability, margin and
            // entropy; expected accuracy; class mix; out-of-distribution.
            assert_eq!(scored.scores.len(), 12, "{:#?}", scored.scores);
            windows += 1;
            if judge::judge(&config, scored.scores)
                .iter()
                .any(|j| j.crossed.is_some())
            {
                alarmed += 1;
            }
        }
    }
    // Family-wise alpha 0.01 per window (Bonferroni is conservative): the
    // count is at most Binomial(1000, 0.01), whose 99.99th percentile is 24.
    assert_eq!(windows, 1000);
    assert!(
        alarmed <= 24,
        "{alarmed} of {windows} clean windows alarmed"
    );
    eprintln!("clean windows with an alarm: {alarmed} of {windows}");
}

#[test]
fn planted_shift_pages_within_the_configured_windows() {
    let scorer = Scorer::new(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap());
    let judge_config = JudgeConfig::default();
    let alerts = AlertsConfig::default(); // fires after 2 windows past threshold
    let mut rng = StdRng::seed_from_u64(7);
    let reference: Vec<TelemetryEvent> = (0..500).map(|_| event(&mut rng, 0.0)).collect();
    let fitted = scorer.fit("m", &reference, &[], 0).unwrap();
    let mut open = None;
    let mut fired_at = None;
    for seq in 0..20i64 {
        // One standard deviation from window 10 on.
        let shift = if seq >= 10 { 1.0 } else { 0.0 };
        let window: Vec<TelemetryEvent> = (0..200).map(|_| event(&mut rng, shift)).collect();
        let judged = judge::judge(
            &judge_config,
            scorer.score(&fitted, &window).unwrap().scores,
        );
        let v = verdict(seq, judged);
        let a = v.judged.iter().find(|j| j.score.feature == "a").unwrap();
        let (state, t) = lifecycle::step(
            open.take(),
            &Observation {
                verdict: &v,
                judged: a,
            },
            &alerts,
            1,
            chrono::Utc::now(),
        );
        if t == Some(Transition::Fired) {
            fired_at.get_or_insert(seq);
        }
        open = state.filter(|s| s.status != judge::Status::Resolved);
    }
    assert_eq!(
        fired_at,
        Some(11),
        "a one-sigma shift at window 10 pages at window 11 (K = 2)"
    );
}
