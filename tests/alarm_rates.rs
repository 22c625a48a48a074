//! Calibration of the alarms, on the daemon's own scorer and judge: a
//! stream without drift raises alarms at no more than the configured rate,
//! and a planted shift is caught within the hysteresis it is configured with.

use modelwatch::detect::engine::Engine;
use modelwatch::detect::{
    DetectConfig, DeviceChoice, MultivariateConfig, MultivariateMethod, Scorer,
};
use modelwatch::event::TelemetryEvent;
use modelwatch::judge::lifecycle::{self, Observation};
use modelwatch::judge::{self, Transition, WindowVerdict};
use modelwatch::judge::{AlertsConfig, Correction, JudgeConfig};
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
        low_water: Default::default(),
        halves: Default::default(),
        trace_id: None,
        class_mix: Vec::new(),
        top_clients: Vec::new(),
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
            // KS a, b; chi2 c; KS and Welch on the max probability (two
            // classes: margin and entropy add nothing); expected accuracy;
            // class mix; out-of-distribution.
            assert_eq!(scored.scores.len(), 8, "{:#?}", scored.scores);
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

/// Five features driven by two latent factors, so that they move together
/// and a multivariate detector has structure to learn.
fn correlated_event(rng: &mut StdRng) -> TelemetryEvent {
    let (u, v) = (normal(rng), normal(rng));
    let loadings = [(1.0, 0.0), (0.8, 0.3), (0.0, 1.0), (0.5, -0.7), (0.3, 0.3)];
    let features: serde_json::Map<String, serde_json::Value> = loadings
        .iter()
        .enumerate()
        .map(|(j, (a, b))| {
            let x = a * u + b * v + 0.4 * normal(rng);
            (format!("f{j}"), ((x * 1e3).round() / 1e3).into())
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "model": "m", "ts": "2026-01-01T00:00:00Z", "features": features,
    }))
    .unwrap()
}

/// Windows (of 1,000 clean ones, over 50 references) in which the
/// multivariate score alone crossed alpha = 0.01.
fn multivariate_false_alarms(method: MultivariateMethod, reference_rows: usize) -> usize {
    let config = DetectConfig {
        multivariate: MultivariateConfig {
            enabled: true,
            method,
            permutations: 200,
            ..Default::default()
        },
        ..Default::default()
    };
    let scorer = Scorer::with_config(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap(), &config);
    let judge_config = JudgeConfig {
        alpha: 0.01,
        correction: Correction::None,
        ..JudgeConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(99);
    let mut alarmed = 0;
    for _ in 0..50 {
        let reference: Vec<TelemetryEvent> = (0..reference_rows)
            .map(|_| correlated_event(&mut rng))
            .collect();
        let fitted = scorer.fit("m", &reference, &[], 100).unwrap();
        for _ in 0..20 {
            let window: Vec<TelemetryEvent> =
                (0..100).map(|_| correlated_event(&mut rng)).collect();
            let scores: Vec<_> = scorer
                .score(&fitted, &window)
                .unwrap()
                .scores
                .into_iter()
                .filter(|s| s.detector == "multivariate_drift")
                .collect();
            assert_eq!(scores.len(), 1, "one multivariate score per window");
            if judge::judge(&judge_config, scores)[0].crossed.is_some() {
                alarmed += 1;
            }
        }
    }
    alarmed
}

/// Both multivariate methods hold their nominal rate on clean streams: at
/// most the Binomial(1000, 0.01) 99.99th percentile (24) of 1,000 windows.
/// PCA is checked with both of its bands: the analytic one (500 reference
/// rows make 5 windows of 100, fewer than 10) and the one from leave-one-out
/// reference windows (2,000 rows make 20).
#[test]
fn multivariate_detectors_stay_within_the_false_alarm_rate() {
    for (method, rows) in [
        (MultivariateMethod::Pca, 500),
        (MultivariateMethod::Pca, 2000),
        (MultivariateMethod::Mmd, 500),
    ] {
        let alarmed = multivariate_false_alarms(method, rows);
        eprintln!("{method:?} with {rows} reference rows: {alarmed} of 1000 clean windows alarmed");
        assert!(
            alarmed <= 24,
            "{method:?}/{rows}: {alarmed} of 1000 clean windows alarmed"
        );
    }
}

/// A deeper measurement than CI can afford (5,000 windows per setting, about
/// a minute): `cargo test --release --test alarm_rates -- --ignored --nocapture`
/// prints the PCA method's clean-window alarm rate at three alphas for its
/// analytic band (500 reference rows / windows of 100, and the default
/// 1,000 / 500) and its reference-window band (2,000 / 100).
#[test]
#[ignore = "a measurement; run on demand"]
fn pca_false_alarm_rates_in_depth() {
    let alphas = [0.05, 0.01, 0.001];
    for (rows, window_rows) in [(500usize, 100usize), (2000, 100), (1000, 500)] {
        let config = DetectConfig {
            multivariate: MultivariateConfig {
                enabled: true,
                method: MultivariateMethod::Pca,
                ..Default::default()
            },
            ..Default::default()
        };
        let scorer =
            Scorer::with_config(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap(), &config);
        let mut rng = StdRng::seed_from_u64(1234);
        let (mut counts, mut n) = ([0usize; 3], 0usize);
        for _ in 0..250 {
            let reference: Vec<TelemetryEvent> =
                (0..rows).map(|_| correlated_event(&mut rng)).collect();
            let fitted = scorer.fit("m", &reference, &[], window_rows).unwrap();
            for _ in 0..20 {
                let window: Vec<TelemetryEvent> = (0..window_rows)
                    .map(|_| correlated_event(&mut rng))
                    .collect();
                let p = scorer
                    .score(&fitted, &window)
                    .unwrap()
                    .scores
                    .into_iter()
                    .find(|s| s.detector == "multivariate_drift")
                    .unwrap()
                    .p_value;
                n += 1;
                for (c, a) in counts.iter_mut().zip(alphas) {
                    *c += usize::from(p < a);
                }
            }
        }
        let rates: Vec<String> = alphas
            .iter()
            .zip(counts)
            .map(|(a, c)| format!("alpha {a}: {:.4}", c as f64 / n as f64))
            .collect();
        eprintln!(
            "pca, {rows} reference rows, windows of {window_rows}, {n} windows: {}",
            rates.join(", ")
        );
        // Loose: within 1.5x of nominal at alpha 0.01.
        assert!((counts[1] as f64 / n as f64) < 0.015, "{rates:?}");
    }
}

/// Small real shifts on a large reference: a quarter of a standard
/// deviation in a numeric feature and a five-point move in a category mix
/// are flagged in at least 95% of 6,000-row windows against 60,000 rows,
/// their effect sizes held to thresholds from the reference's own windows
/// (a fixed 0.1 hid the category shift, whose Jensen-Shannon distance is
/// about 0.05), while 1,000 clean windows stay within alpha per family.
#[test]
fn small_shifts_on_large_references_are_caught_and_clean_windows_stay_quiet() {
    use modelwatch::evaluate::{Shift, Synth};
    let scorer = Scorer::new(Engine::open(DeviceChoice::Cpu, 1 << 24).unwrap());
    let config = JudgeConfig::default();
    let mut synth = Synth::new(60_000);
    let fitted = scorer
        .fit("eval", &synth.events(60_000, Shift::None), &[], 6000)
        .unwrap();
    let mut judged = |shift: Shift| {
        let scores = scorer.score(&fitted, &synth.events(6000, shift)).unwrap();
        judge::judge(&config, scores.scores)
    };
    for (shift, feature) in [(Shift::Mean(0.25), "x0"), (Shift::Mix(0.05), "segment")] {
        let (mut caught, mut below_old_floor) = (0, 0);
        for _ in 0..40 {
            let j = judged(shift);
            let j = j.iter().find(|j| j.score.feature == feature).unwrap();
            let effect = j.score.effect.as_ref().expect("gating effect");
            assert!(effect.band.is_some(), "calibrated: {j:?}");
            caught += usize::from(j.crossed.is_some());
            below_old_floor += usize::from(effect.value < 0.1);
        }
        eprintln!(
            "{shift:?}: {caught} of 40 windows flagged; effect below the old 0.1 floor in {below_old_floor}"
        );
        assert!(caught >= 38, "{shift:?}: {caught} of 40 windows flagged");
    }
    let mut alarmed: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut any = 0;
    for _ in 0..1000 {
        let j = judged(Shift::None);
        for x in j.iter().filter(|x| x.crossed.is_some()) {
            *alarmed.entry(x.score.family.as_str()).or_default() += 1;
        }
        any += usize::from(j.iter().any(|x| x.crossed.is_some()));
    }
    eprintln!("clean windows: {any} of 1000 alarmed; scores crossed per family {alarmed:?}");
    // Family-wise alpha 0.01 per window over every family together: at
    // most the Binomial(1000, 0.01) 99.99th percentile, 24.
    assert!(
        any <= 24,
        "{any} of 1000 clean windows alarmed: {alarmed:?}"
    );
}
