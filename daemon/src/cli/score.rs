//! `modelwatch score`: files scored offline through the daemon's own
//! windower, detectors and judge; `--store` records the windows and scores
//! as history (backfill) without touching live alerts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use super::ConfigArg;
use crate::config::Config;
use crate::decode::DecoderName;
use crate::detect::{EngineConfig, ScoringHandle};
use crate::event::Positioned;
use crate::ingest::file::read_events;
use crate::judge::{self, WindowVerdict};
use crate::store::Store;
use crate::telemetry;
use crate::window::{ClosedWindow, Progress, WindowKey, WindowSettings, Windower};

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Reference events (NDJSON).
    #[arg(long)]
    reference: PathBuf,
    /// Events to score (NDJSON), cut into windows per model and version as
    /// the daemon cuts them (by count, or by event time).
    #[arg(long)]
    current: PathBuf,
    /// Events per window; default: the model's configured window count.
    #[arg(long)]
    window: Option<usize>,
    /// `table` for people, `json` for one JSON object per score.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    format: Output,
    /// The files' format, as a topic's decoder would read them.
    #[arg(long, value_enum, default_value_t = DecoderName::default())]
    input_format: DecoderName,
    /// Also write the windows and scores to the configured store (backfill,
    /// `close_reason = 'backfill'`); live alerts are left as they are.
    #[arg(long)]
    store: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub async fn run(args: ScoreArgs) -> Result<()> {
    let config = args.config.load()?;
    telemetry::init_logging(&config.log);
    // The device opens on its own thread while the files are read: probing
    // for a GPU is a tenth of a second that need not wait for the reading.
    // Offline, nothing waits on the first window, so nothing is warmed up.
    let engine = EngineConfig {
        warmup: false,
        ..config.engine.clone()
    };
    let (scoring, read) = tokio::join!(
        ScoringHandle::start(&engine, &config.detect, (0, 0)),
        async { read_both(&args, &config) }
    );
    let (reference, current) = read?;
    let scoring = scoring?;
    let store = match args.store {
        true => Some(Store::open_config(&config.store, 1).await?),
        false => None,
    };
    if args.format == Output::Table {
        print_header();
    }
    // Each model's events, moved rather than copied: a capture can be large.
    let mut references = by_model(reference);
    for (model, mine) in by_model(current) {
        let model = model.as_str();
        let settings = window_settings(&config, model, args.window);
        let reference: Vec<_> = references
            .remove(model)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.event)
            .collect();
        if reference.len() < 2 {
            bail!(
                "the reference holds {} events of model {model}; at least 2 are needed",
                reference.len()
            );
        }
        let classes = config.model_settings(model).classes;
        let started = Instant::now();
        let fitted = scoring
            .fit(model, reference, classes, settings.count.max(1))
            .await?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(model, took_ms, "reference fitted");
        let mut recent = crate::detect::history::Recent::default();
        let past = config.detect.history.windows;
        for w in cut_windows(mine, model, settings) {
            let started = Instant::now();
            // The verdict's window facts first, so that the events can move
            // to the scoring thread instead of being copied there.
            let device = scoring.info().label();
            let mut verdict = judge::verdict(&config.judge, &w, device, Ok(Vec::new()));
            let events = w.events.into_iter().map(|p| p.event).collect();
            let history = recent.history(&w.key.version, past);
            let scored = scoring.score(fitted.clone(), events, history).await?;
            verdict.judged = judge::judge(&config.judge, scored.scores);
            let volume = crate::detect::history::Volume {
                events: verdict.n_events as u64,
                top: scored.top_clients.clone(),
            };
            recent.push(&w.key.version, (scored.class_mix.clone(), volume), past);
            verdict.class_mix = scored.class_mix;
            verdict.top_clients = scored.top_clients;
            let took_ms = started.elapsed().as_millis() as u64;
            tracing::info!(model, window = w.ordinal, took_ms, "window scored");
            // History, not the live stream: marked so, and without alerts.
            verdict.close_reason = "backfill";
            if let Some(store) = &store {
                verdict.seq = judge::record_backfill(store, &verdict).await?;
            }
            print_verdict(&verdict, args.format);
        }
    }
    Ok(())
}

/// The reference and current files' events, in the input format.
fn read_both(args: &ScoreArgs, config: &Config) -> Result<(Vec<Positioned>, Vec<Positioned>)> {
    let decoder = args.input_format.build(&config.decode);
    let started = Instant::now();
    let read = |path| read_events(path, decoder.as_ref(), &config.limits, &config.join);
    let (reference, current) = (read(&args.reference)?, read(&args.current)?);
    tracing::info!(
        reference = reference.len(),
        current = current.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "events read"
    );
    Ok((reference, current))
}

/// The model's window settings, `--window` overriding its count.
fn window_settings(config: &Config, model: &str, window: Option<usize>) -> WindowSettings {
    let s = config.model_settings(model);
    WindowSettings {
        count: window.unwrap_or(s.window_count),
        duration: s.window_duration,
    }
}

/// Events grouped by model, in file order within each.
fn by_model(events: Vec<Positioned>) -> BTreeMap<String, Vec<Positioned>> {
    let mut out: BTreeMap<String, Vec<Positioned>> = BTreeMap::new();
    for p in events {
        out.entry(p.event.model.clone()).or_default().push(p);
    }
    out
}

/// One model's events through the windower, every window closed, in order
/// of (version, number).
fn cut_windows(
    events: Vec<Positioned>,
    model: &str,
    settings: WindowSettings,
) -> Vec<ClosedWindow> {
    let mut windower = Windower::default();
    let mut closed = Vec::new();
    for p in events {
        let key = WindowKey {
            model: model.to_string(),
            version: p.event.version_key().to_string(),
        };
        if !windower.knows(&key) {
            windower.add_key(key.clone(), settings, Progress::default());
        }
        closed.extend(windower.push(&key, p, Instant::now()));
    }
    closed.extend(windower.drain());
    closed.sort_by(|a, b| (&a.key, a.ordinal).cmp(&(&b.key, b.ordinal)));
    closed
}

fn print_header() {
    println!(
        "{:<20} {:<8} {:>6}  {:<20} {:<18} {:<5} {:>10} {:>11} {:>11} {:>15}  alert",
        "model",
        "version",
        "window",
        "detector",
        "feature",
        "test",
        "statistic",
        "p-value",
        "threshold",
        "effect/thresh"
    );
}

fn print_verdict(v: &WindowVerdict, format: Output) {
    for j in &v.judged {
        let s = &j.score;
        let alert = j.crossed.map(|c| c.as_str()).unwrap_or("-");
        match format {
            Output::Json => println!(
                "{}",
                serde_json::json!({
                    "model": v.model, "model_version": v.model_version, "window": v.seq,
                    "detector": s.detector, "feature": s.feature, "test": s.test, "method": s.method,
                    "statistic": s.statistic, "p_value": s.p_value, "threshold": j.threshold,
                    "n_reference": s.n_reference, "n_window": s.n_window, "alert": alert,
                    "effect": s.effect, "band": s.band, "examples": s.examples,
                })
            ),
            Output::Table => println!(
                "{:<20} {:<8} {:>6}  {:<20} {:<18} {:<5} {:>10.4} {:>11.3e} {:>11.3e} {:>15}  {}",
                v.model,
                if v.model_version.is_empty() {
                    "-"
                } else {
                    &v.model_version
                },
                v.seq,
                s.detector,
                s.feature,
                s.test,
                s.statistic,
                s.p_value,
                j.threshold,
                match &s.effect {
                    Some(e) if e.gating => format!("{:.4}/{:.4}", e.value, e.threshold),
                    Some(e) => format!("{:.4}/-", e.value),
                    None => "-".into(),
                },
                alert
            ),
        }
    }
}
