//! `modelwatch score`: files scored offline through the daemon's own
//! windower, detectors and judge; `--store` records the windows and scores
//! as history (backfill) without touching live alerts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::ConfigArg;
use crate::config::Config;
use crate::decode::DecoderName;
use crate::detect::history::{Recent, Volume};
use crate::detect::{EngineConfig, Reference, ScoringHandle};
use crate::event::Positioned;
use crate::ingest::file::{ReadError, read_each, read_events};
use crate::judge::{self, WindowVerdict};
use crate::store::Store;
use crate::telemetry;
use crate::window::{ClosedWindow, Progress, WindowKey, WindowSettings, Windower};
use tokio::sync::{mpsc, oneshot};

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Reference events (NDJSON).
    #[arg(long)]
    reference: PathBuf,
    /// Events to score (NDJSON), cut into windows per model and version as
    /// the daemon cuts them (by count, or by event time). Streamed: each
    /// window is scored and printed as it closes.
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
    /// `close_reason = 'backfill'`); live alerts are left as they are. The
    /// current file is decoded once first, so that a line that does not
    /// decode stores nothing.
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
    let current = Current::open(&args.current, args.store)?;
    // The device opens on its own thread while the reference is read:
    // probing for a GPU need not wait for the reading. Offline, nothing
    // waits on the first window, so nothing is warmed up.
    let engine = EngineConfig {
        warmup: false,
        ..config.engine.clone()
    };
    let (scoring, reference) = tokio::join!(
        ScoringHandle::start(&engine, &config.detect, (0, 0)),
        async { read_reference(&args, &config) }
    );
    let (scoring, references) = (scoring?, by_model(reference?));
    let store = match args.store {
        true => {
            check_current(&current, &args, &config, &references).await?;
            Some(Store::open_config(&config.store, 1).await?)
        }
        false => None,
    };
    if args.format == Output::Table {
        print_header();
    }
    let mut run = Run {
        args: &args,
        config: &config,
        scoring,
        store,
        references,
        models: HashMap::new(),
        windower: Windower::default(),
        windows: 0,
        events: 0,
    };
    // The current events stream through in blocks, each window scored as
    // it closes: what is held is the windows still open and a few blocks
    // of the file, and decoding the next block overlaps scoring this one.
    let (mut blocks, reader) = read_current(&current, &args, &config)?;
    let mut streamed = Ok(());
    while let Some(events) = blocks.recv().await {
        streamed = run.push_all(events).await;
        if streamed.is_err() {
            break;
        }
    }
    drop(blocks);
    // Where scoring failed, the reading is not waited for.
    let done = match streamed {
        Ok(()) => match reader.await {
            Ok(Ok(())) => run.finish().await,
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow::anyhow!("the reading thread stopped")),
        },
        Err(e) => Err(e),
    };
    done.with_context(|| format!("stopped after {} windows", run.windows))
}

/// The current file, opened once before the reference is read: a wrong
/// path fails first, and a pipe or FIFO is read through its one handle.
/// A backfill reads it twice, so it must be a regular file, and both
/// reads stop at the length it had when opened (a file still growing is
/// checked and scored alike).
struct Current {
    file: std::fs::File,
    name: String,
    length: Option<u64>,
}

impl Current {
    fn open(path: &std::path::Path, store: bool) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {name}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {name}"))?;
        if store && !meta.is_file() {
            bail!("--store reads --current twice, so it must be a regular file: {name} is not");
        }
        let length = store.then_some(meta.len());
        Ok(Self { file, name, length })
    }

    /// The file from the start (up to the length when opened, where one
    /// was taken), decoded as the run's input format says.
    fn reading(&self, args: &ScoreArgs, config: &Config) -> Result<Reading> {
        let mut file = self.file.try_clone()?;
        let reader: Box<dyn Read + Send> = match self.length {
            Some(length) => {
                file.seek(std::io::SeekFrom::Start(0))?;
                Box::new(file.take(length))
            }
            None => Box::new(file),
        };
        Ok(Reading {
            reader,
            name: self.name.clone(),
            decoder: args.input_format.build(&config.decode),
            limits: config.limits.clone(),
            join: config.join.clone(),
        })
    }
}

/// One read of the current file, ready to be moved to a thread of its own.
struct Reading {
    reader: Box<dyn Read + Send>,
    name: String,
    decoder: Box<dyn crate::decode::Decoder>,
    limits: crate::decode::Limits,
    join: crate::join::JoinConfig,
}

impl Reading {
    fn each(self, each: impl FnMut(Vec<Positioned>) -> ControlFlow<()>) -> Result<(), ReadError> {
        let with = (self.decoder.as_ref(), &self.limits, &self.join);
        read_each(self.reader, &self.name, with, each)
    }
}

/// Every line of the current file decoded, and every model in it checked
/// against the reference, before `--store` stores a window: a backfill that
/// stopped midway would leave windows that a second run stores again. Reads
/// the file once more, holding nothing.
async fn check_current(
    current: &Current,
    args: &ScoreArgs,
    config: &Config,
    references: &BTreeMap<String, Vec<Positioned>>,
) -> Result<()> {
    let reading = current.reading(args, config)?;
    let models = tokio::task::spawn_blocking(move || {
        let mut models = BTreeSet::new();
        reading
            .each(|events| {
                models.extend(events.into_iter().map(|p| p.event.model));
                ControlFlow::Continue(())
            })
            .map(|()| models)
    })
    .await??;
    for model in &models {
        enough_reference(model, references.get(model).map_or(0, Vec::len))?;
    }
    Ok(())
}

/// A model's reference must hold two events at least.
fn enough_reference(model: &str, events: usize) -> Result<()> {
    if events < 2 {
        bail!("the reference holds {events} events of model {model}; at least 2 are needed");
    }
    Ok(())
}

/// The reference file's events, in the input format.
fn read_reference(args: &ScoreArgs, config: &Config) -> Result<Vec<Positioned>> {
    let decoder = args.input_format.build(&config.decode);
    let started = Instant::now();
    let events = read_events(
        &args.reference,
        decoder.as_ref(),
        &config.limits,
        &config.join,
    )?;
    tracing::info!(
        reference = events.len(),
        took_ms = started.elapsed().as_millis() as u64,
        peak_rss_mb = peak_rss_mb(),
        "reference read"
    );
    Ok(events)
}

type Blocks = mpsc::Receiver<Vec<Positioned>>;
type Outcome = oneshot::Receiver<Result<(), ReadError>>;

/// The current file's events, a block at a time, from a thread of their
/// own, and the reading's outcome once it ends; the reading stops when the
/// receiver is dropped. A detached thread, not a blocking task: one stuck
/// reading a pipe that never closes must not keep a failed run from
/// exiting (the runtime waits for its blocking tasks).
fn read_current(current: &Current, args: &ScoreArgs, config: &Config) -> Result<(Blocks, Outcome)> {
    // One block waits while one is scored: reading keeps ahead, and holds
    // no more than that.
    let (tx, rx) = mpsc::channel(1);
    let (done, outcome) = oneshot::channel();
    let reading = current.reading(args, config)?;
    std::thread::Builder::new()
        .name("modelwatch-read".into())
        .spawn(move || {
            let read = reading.each(|events| match tx.blocking_send(events) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            });
            let _ = done.send(read);
        })
        .context("cannot start the reading thread")?;
    Ok((rx, outcome))
}

/// What one `score` run holds: each model's fit and recent past, and the
/// windows open per model and version.
struct Run<'a> {
    args: &'a ScoreArgs,
    config: &'a Config,
    scoring: ScoringHandle,
    store: Option<Store>,
    /// Reference events of models not yet seen in the current file.
    references: BTreeMap<String, Vec<Positioned>>,
    models: HashMap<String, Fitted>,
    windower: Windower,
    windows: u64,
    events: u64,
}

/// A model's fitted reference and the past its class mix is judged on.
struct Fitted {
    reference: Arc<Reference>,
    recent: Recent,
}

impl Run<'_> {
    /// A block's events into their windows, in order.
    async fn push_all(&mut self, events: Vec<Positioned>) -> Result<()> {
        for p in events {
            self.push(p).await?;
        }
        Ok(())
    }

    /// One current event into its window; a window it closes is scored.
    async fn push(&mut self, p: Positioned) -> Result<()> {
        self.events += 1;
        let model = p.event.model.as_str();
        if !self.models.contains_key(model) {
            let model = model.to_string();
            let fitted = self.fit(&model).await?;
            self.models.insert(model, fitted);
        }
        let key = WindowKey {
            model: p.event.model.clone(),
            version: p.event.version_key().to_string(),
        };
        if !self.windower.knows(&key) {
            let settings = window_settings(self.config, &key.model, self.args.window);
            self.windower
                .add_key(key.clone(), settings, Progress::default());
        }
        for w in self.windower.push(&key, p, Instant::now()) {
            self.score(w).await?;
        }
        Ok(())
    }

    /// The model's reference fitted, its events handed over to the fit.
    async fn fit(&mut self, model: &str) -> Result<Fitted> {
        let reference: Vec<_> = self
            .references
            .remove(model)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.event)
            .collect();
        enough_reference(model, reference.len())?;
        let classes = self.config.model_settings(model).classes;
        let rows = window_settings(self.config, model, self.args.window).count;
        let started = Instant::now();
        let fitted = self
            .scoring
            .fit(model, reference, classes, rows.max(1))
            .await?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            model,
            took_ms,
            peak_rss_mb = peak_rss_mb(),
            "reference fitted"
        );
        Ok(Fitted {
            reference: fitted,
            recent: Recent::default(),
        })
    }

    /// One closed window scored, judged, printed and (with `--store`) kept.
    async fn score(&mut self, w: ClosedWindow) -> Result<()> {
        let started = Instant::now();
        let (config, past) = (self.config, self.config.detect.history.windows);
        let fitted = self
            .models
            .get_mut(&w.key.model)
            .expect("a window's model was fitted when its first event came");
        // The verdict's window facts first, so that the events can move
        // to the scoring thread instead of being copied there.
        let device = self.scoring.info().label();
        let mut verdict = judge::verdict(&config.judge, &w, device, Ok(Vec::new()));
        let events = w.events.into_iter().map(|p| p.event).collect();
        let history = fitted.recent.history(&w.key.version, past);
        let scored = self
            .scoring
            .score(fitted.reference.clone(), events, history)
            .await?;
        verdict.judged = judge::judge(&config.judge, scored.scores);
        let volume = Volume {
            events: verdict.n_events as u64,
            top: scored.top_clients.clone(),
        };
        let mix = (scored.class_mix.clone(), volume);
        fitted.recent.push(&w.key.version, mix, past);
        verdict.class_mix = scored.class_mix;
        verdict.top_clients = scored.top_clients;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(model = %w.key.model, window = w.ordinal, took_ms, "window scored");
        // History, not the live stream: marked so, and without alerts.
        verdict.close_reason = "backfill";
        if let Some(store) = &self.store {
            verdict.seq = judge::record_backfill(store, &verdict).await?;
        }
        print_verdict(&verdict, self.args.format);
        self.windows += 1;
        Ok(())
    }

    /// The windows still open, closed and scored in order of (model,
    /// version, number); the run's peak memory logged.
    async fn finish(&mut self) -> Result<()> {
        let mut rest = self.windower.drain();
        rest.sort_by(|a, b| (&a.key, a.ordinal).cmp(&(&b.key, b.ordinal)));
        for w in rest {
            self.score(w).await?;
        }
        tracing::info!(
            events = self.events,
            windows = self.windows,
            peak_rss_mb = peak_rss_mb(),
            "current scored"
        );
        Ok(())
    }
}

/// The process's peak resident memory in MiB, where the system tells it
/// (Linux's `VmHWM`).
fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
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
    // One model, the common case: the events as read, not copied.
    if let Some(first) = events.first()
        && events.iter().all(|p| p.event.model == first.event.model)
    {
        return BTreeMap::from([(first.event.model.clone(), events)]);
    }
    let mut out: BTreeMap<String, Vec<Positioned>> = BTreeMap::new();
    for p in events {
        out.entry(p.event.model.clone()).or_default().push(p);
    }
    out
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
