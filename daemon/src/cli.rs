//! The command line: parses arguments, builds the stages, and reports
//! errors with `anyhow` at this edge.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DeviceChoice, SourceKind};
use crate::decode::{Decoder, JsonDecoder};
use crate::detect::ScoringHandle;
use crate::ingest;
use crate::judge::Status;
use crate::notify::{Dispatcher, Receiver, Router};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::store::Store;
use crate::telemetry::{self, Health, Metrics};

#[derive(Parser)]
#[command(name = "modelwatch", version, about = "real-time AI behaviour monitor")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// TOML config file; every field is optional. MODELWATCH_SECTION__FIELD variables override it.
    #[arg(long, short, env = "MODELWATCH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the monitor as configured (Kafka in production, or a file source).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Read NDJSON from this file (`-` for stdin) instead of the configured source.
        #[arg(long)]
        file: Option<String>,
    },
    /// Run the whole pipeline on a built-in simulated fleet with an embedded store.
    Demo {
        /// Store URL; the default keeps everything in memory.
        #[arg(long, default_value = "sqlite::memory:")]
        store: String,
        /// Windows simulated per model after its reference.
        #[arg(long, default_value_t = 12)]
        windows: usize,
        /// Scoring device: auto, gpu, cpu, wgpu-cpu.
        #[arg(long, value_parser = parse_device, default_value = "auto")]
        device: DeviceChoice,
        /// Random seed of the simulated fleet.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage model references.
    Baseline {
        #[command(subcommand)]
        action: BaselineAction,
    },
    /// Validate the config and print the effective result.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List, acknowledge and silence alerts; show undelivered notifications.
    Alerts {
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// Score files offline with exactly the daemon's detectors: every score,
    /// p-value and threshold per window.
    Score {
        #[command(flatten)]
        config: ConfigArg,
        /// Reference events (NDJSON).
        #[arg(long)]
        reference: PathBuf,
        /// Events to score (NDJSON), cut into windows per model and version.
        #[arg(long)]
        current: PathBuf,
        /// Events per window; default: the config's windows.count.
        #[arg(long)]
        window: Option<usize>,
        /// `table` for people, `json` for one JSON object per score.
        #[arg(long, default_value = "table")]
        format: String,
        /// Also write the windows, scores and alerts to the configured store (backfill).
        #[arg(long)]
        store: bool,
    },
    /// Produce an NDJSON file into a Kafka topic, one message per line.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// NDJSON file to send.
        file: PathBuf,
        /// Target topic; default: the first configured topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Alerts, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only alerts in this status: pending, firing or resolved.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON lines with the full evidence.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert: it stays firing, and is marked as being handled.
    Ack {
        #[command(flatten)]
        config: ConfigArg,
        /// Alert id, as `alerts list` shows it.
        id: i64,
    },
    /// Keep matching alerts from paging until the silence expires.
    Silence {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        model: String,
        /// Only this detector (default: any).
        #[arg(long)]
        detector: Option<String>,
        /// Only this feature (default: any).
        #[arg(long)]
        feature: Option<String>,
        /// How long: 90s, 30m, 2h, 1d.
        #[arg(long, value_parser = parse_duration)]
        duration: chrono::Duration,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Notifications not yet accepted by their receiver.
    Outbox {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 2h, 1d"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!(
            "invalid duration {s:?}: expected e.g. 90s, 30m, 2h, 1d"
        )),
    }
}

#[derive(Subcommand)]
enum BaselineAction {
    /// Store the events of an NDJSON file as a model's reference.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// Model the reference belongs to; events of other models in the file are skipped.
        #[arg(long)]
        model: String,
        /// NDJSON file of events.
        file: PathBuf,
        /// Replace an existing reference.
        #[arg(long)]
        replace: bool,
    },
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    match s {
        "auto" => Ok(DeviceChoice::Auto),
        "gpu" => Ok(DeviceChoice::Gpu),
        "cpu" => Ok(DeviceChoice::Cpu),
        "wgpu-cpu" => Ok(DeviceChoice::WgpuCpu),
        other => Err(format!(
            "unknown device {other:?}: expected auto, gpu, cpu or wgpu-cpu"
        )),
    }
}

fn load(arg: &ConfigArg) -> Result<Config> {
    Ok(Config::load(arg.config.as_deref())?)
}

pub async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, file } => {
            let mut config = load(&config)?;
            if let Some(path) = file {
                config.source.kind = SourceKind::File;
                config.source.file.path = path;
            }
            let _telemetry = telemetry::init(&config.log, &config.telemetry.otlp)?;
            let metrics = run_pipeline(config, true).await?;
            print_summary(&metrics);
            Ok(())
        }
        Command::Demo {
            store,
            windows,
            device,
            seed,
        } => demo(store, windows, device, seed).await,
        Command::Migrate { config } => {
            let config = load(&config)?;
            telemetry::init_logging(&config.log);
            let store = Store::connect(&config.store.url, 1).await?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied to the {} store", store.kind());
            Ok(())
        }
        Command::Baseline {
            action:
                BaselineAction::Import {
                    config,
                    model,
                    file,
                    replace,
                },
        } => {
            let config = load(&config)?;
            telemetry::init_logging(&config.log);
            baseline_import(&config, &model, &file, replace).await
        }
        Command::Alerts { action } => alerts_command(action).await,
        Command::Score {
            config,
            reference,
            current,
            window,
            format,
            store,
        } => {
            let config = load(&config)?;
            telemetry::init_logging(&config.log);
            score_files(&config, &reference, &current, window, &format, store).await
        }
        Command::CheckConfig { config } => {
            let config = load(&config)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Replay {
            config,
            file,
            topic,
        } => {
            let config = load(&config)?;
            telemetry::init_logging(&config.log);
            replay(&config, &file, topic).await
        }
    }
}

/// Builds and runs the pipeline until its source ends or ctrl-c / SIGTERM.
pub async fn run_pipeline(config: Config, print_alerts: bool) -> Result<Arc<Metrics>> {
    let config = Arc::new(config);
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // The endpoints come up first, so that an orchestrator sees "not ready"
    // (rather than nothing) while the engine warms up.
    if !config.telemetry.listen.is_empty() {
        telemetry::http::serve(
            &config.telemetry.listen,
            metrics.clone(),
            health.clone(),
            cancel.clone(),
        )
        .await?;
    }
    let store = Store::open(&config.store.url, config.store.max_connections)
        .await
        .with_context(|| format!("opening the {} store", redact(&config.store.url)))?;
    Health::set(&health.store_reachable, true);
    spawn_store_probe(store.clone(), health.clone(), cancel.clone());
    // Warm up at the global sizes; per-model overrides compile on first use.
    let typical = (config.reference.size, config.windows.count.max(1));
    let scoring = ScoringHandle::start(&config.engine, &config.detect, typical)
        .await
        .context("starting the scoring engine")?;
    Health::set(&health.device_ready, true);
    let receivers = config
        .notify
        .receivers
        .iter()
        .map(|r| Receiver::new(r, &config.source.kafka.brokers))
        .collect::<Result<Vec<_>, _>>()?;
    let router = Router::new(&config.notify.receivers);
    let dispatcher = Dispatcher::spawn(
        store.clone(),
        receivers,
        router.clone(),
        &config.notify,
        metrics.clone(),
    );
    let options = PipelineOptions {
        print_alerts,
        router,
        wake_dispatcher: Some(dispatcher.waker()),
    };
    let source = ingest::start(&config, metrics.clone(), health.clone(), cancel.clone())
        .context("starting the source")?;
    tracing::info!(store = store.kind(), device = %scoring.info().label(), "modelwatch ready");
    let drain = Duration::from_secs(config.notify.drain_secs);
    let pipeline = Pipeline::new(config, store, scoring, metrics, health, options)?;
    let result = pipeline.run(source, cancel).await;
    // Deliver what the run queued before exiting; what cannot be delivered
    // in time stays in the outbox for the next start.
    dispatcher.drain_and_stop(drain).await;
    Ok(result?)
}

/// Keeps `/readyz` honest about the store between writes.
fn spawn_store_probe(store: Store, health: Arc<Health>, cancel: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let ok = tokio::time::timeout(Duration::from_secs(3), store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            Health::set(&health.store_reachable, ok);
        }
    });
}

fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
}

/// Hides a password in a connection URL for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn demo(store: String, windows: usize, device: DeviceChoice, seed: u64) -> Result<()> {
    let mut config = Config::default();
    config.source.kind = SourceKind::Demo;
    config.source.demo.windows_per_model = windows;
    config.source.demo.seed = seed;
    config.store.url = store;
    config.engine.device = device;
    config.models.extend(ingest::demo::model_configs());
    config.telemetry.listen = String::new();
    let _telemetry = telemetry::init(&config.log, &config.telemetry.otlp)?;
    println!(
        "modelwatch demo: {} simulated models, reference {} events, windows of {} events, {} windows each",
        ingest::demo::FLEET.len(),
        ingest::demo::REFERENCE_SIZE,
        ingest::demo::WINDOW_SIZE,
        windows
    );
    for e in ingest::demo::EPISODES {
        println!(
            "  scheduled: {} windows {}-{}: {}",
            e.model, e.from, e.to, e.what
        );
    }
    let url = config.store.url.clone();
    let metrics = run_pipeline(config, true).await?;
    print_summary(&metrics);
    if url != "sqlite::memory:" {
        println!("results kept in {url}");
    }
    Ok(())
}

fn print_summary(m: &Metrics) {
    println!(
        "summary: {} messages, {} events ({} into references, {} already stored), {} windows scored ({} failed), {} scores, {} alerts",
        m.messages.get(),
        m.events_decoded.get(),
        m.reference_events.get(),
        m.replayed_events.get(),
        m.windows(),
        m.windows_failed.get(),
        m.scores.get(),
        m.alerts(),
    );
    let rejected = m.rejected();
    if !rejected.is_empty() {
        let parts: Vec<String> = rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("rejected messages (dead-lettered): {}", parts.join(", "));
    }
}

fn read_events(path: &PathBuf) -> Result<Vec<crate::event::TelemetryEvent>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let decoded = JsonDecoder
            .decode(line.as_bytes(), Some(now))
            .with_context(|| format!("{}:{}", path.display(), i + 1))?;
        events.extend(decoded);
    }
    Ok(events)
}

async fn score_files(
    config: &Config,
    reference: &PathBuf,
    current: &PathBuf,
    window: Option<usize>,
    format: &str,
    write: bool,
) -> Result<()> {
    if format != "table" && format != "json" {
        bail!("unknown format {format:?}: table or json");
    }
    let reference = read_events(reference)?;
    let current = read_events(current)?;
    let size = window.unwrap_or(config.windows.count).max(1);
    let scoring =
        ScoringHandle::start(&config.engine, &config.detect, (reference.len(), size)).await?;
    let store = if write {
        Some(Store::open(&config.store.url, 1).await?)
    } else {
        None
    };
    let router = Router::new(&config.notify.receivers);
    let route = |a: &crate::judge::AlertState| router.route(a);
    let mut models: Vec<String> = current.iter().map(|e| e.model.clone()).collect();
    models.sort();
    models.dedup();
    if format == "table" {
        println!(
            "{:<20} {:<8} {:>6}  {:<20} {:<18} {:<5} {:>10} {:>11} {:>11}  alert",
            "model",
            "version",
            "window",
            "detector",
            "feature",
            "test",
            "statistic",
            "p-value",
            "threshold"
        );
    }
    for model in models {
        let ref_events: Vec<_> = reference
            .iter()
            .filter(|e| e.model == model)
            .cloned()
            .collect();
        if ref_events.len() < 2 {
            bail!(
                "the reference holds {} events of model {model}; at least 2 are needed",
                ref_events.len()
            );
        }
        let fitted = scoring
            .fit(
                &model,
                ref_events,
                config.model_settings(&model).classes,
                size,
            )
            .await?;
        let mut by_version: std::collections::BTreeMap<String, Vec<&crate::event::TelemetryEvent>> =
            Default::default();
        for e in current.iter().filter(|e| e.model == model) {
            by_version
                .entry(e.version_key().to_string())
                .or_default()
                .push(e);
        }
        for (version, events) in by_version {
            // A backfill appends after the windows the store already has.
            let base = match &store {
                Some(st) => st.next_window_seq(&model, &version).await?,
                None => 0,
            };
            for (i, chunk) in events.chunks(size).enumerate() {
                let seq = base + i as i64;
                let owned: Vec<_> = chunk.iter().map(|e| (*e).clone()).collect();
                let scored = scoring.score(fitted.clone(), owned).await?;
                let judged = crate::judge::judge(&config.judge, scored.scores);
                for j in &judged {
                    let s = &j.score;
                    let alert = j.crossed.map(|c| c.as_str()).unwrap_or("-");
                    if format == "json" {
                        println!(
                            "{}",
                            serde_json::json!({
                                "model": model, "model_version": version, "window": seq,
                                "detector": s.detector, "feature": s.feature, "test": s.test, "method": s.method,
                                "statistic": s.statistic, "p_value": s.p_value, "threshold": j.threshold,
                                "n_reference": s.n_reference, "n_window": s.n_window, "alert": alert,
                                "effect": s.effect, "examples": s.examples,
                            })
                        );
                    } else {
                        println!(
                            "{:<20} {:<8} {:>6}  {:<20} {:<18} {:<5} {:>10.4} {:>11.3e} {:>11.3e}  {}",
                            model,
                            if version.is_empty() { "-" } else { &version },
                            seq,
                            s.detector,
                            s.feature,
                            s.test,
                            s.statistic,
                            s.p_value,
                            j.threshold,
                            alert
                        );
                    }
                }
                if let Some(store) = &store {
                    let start = chunk.iter().map(|e| e.ts).min().unwrap_or_default();
                    let end = chunk.iter().map(|e| e.ts).max().unwrap_or_default();
                    let verdict = crate::judge::WindowVerdict {
                        model: model.clone(),
                        model_version: version.clone(),
                        seq,
                        start,
                        end,
                        n_events: chunk.len(),
                        close_reason: "offline",
                        device: scoring.info().label(),
                        error: None,
                        judged,
                        sample_request_ids: chunk
                            .iter()
                            .filter_map(|e| e.request_id.clone())
                            .take(5)
                            .collect(),
                        high_water: Default::default(),
                        trace_id: None,
                    };
                    store
                        .persist_window(&verdict, &config.alerts, &route)
                        .await?;
                }
            }
        }
    }
    Ok(())
}

async fn alerts_command(action: AlertsAction) -> Result<()> {
    let config = match &action {
        AlertsAction::List { config, .. }
        | AlertsAction::Ack { config, .. }
        | AlertsAction::Silence { config, .. }
        | AlertsAction::Outbox { config } => load(config)?,
    };
    telemetry::init_logging(&config.log);
    let store = Store::open(&config.store.url, 1).await?;
    match action {
        AlertsAction::List { status, json, .. } => {
            let status = match status.as_deref() {
                None => None,
                Some(s) => Some(Status::parse(s).with_context(|| {
                    format!("unknown status {s:?}: pending, firing or resolved")
                })?),
            };
            let alerts = store.list_alerts(status).await?;
            if json {
                for a in &alerts {
                    println!("{}", serde_json::to_string(a)?);
                }
            } else {
                println!(
                    "{:>5}  {:<9} {:<8} {:<4} {:<40} {:>9}  {:<20}  flags",
                    "id", "status", "severity", "inc", "dedup key", "windows", "fired at"
                );
                for a in &alerts {
                    let mut flags = Vec::new();
                    if a.acknowledged {
                        flags.push("acked");
                    }
                    if a.silenced {
                        flags.push("silenced");
                    }
                    println!(
                        "{:>5}  {:<9} {:<8} {:<4} {:<40} {:>9}  {:<20}  {}",
                        a.id.unwrap_or_default(),
                        a.status.as_str(),
                        a.severity.as_str(),
                        a.incident,
                        a.dedup_key,
                        format!("{}-{}", a.first_window_seq, a.last_window_seq),
                        a.fired_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into()),
                        flags.join(","),
                    );
                }
            }
        }
        AlertsAction::Ack { id, .. } => {
            if !store.acknowledge(id).await? {
                bail!("no alert with id {id}");
            }
            println!("alert {id} acknowledged");
        }
        AlertsAction::Silence {
            model,
            detector,
            feature,
            duration,
            comment,
            ..
        } => {
            let until = chrono::Utc::now() + duration;
            let id = store
                .add_silence(
                    &model,
                    detector.as_deref(),
                    feature.as_deref(),
                    &comment,
                    until,
                )
                .await?;
            println!(
                "silence {id} on {model}/{}/{} until {}",
                detector.as_deref().unwrap_or("*"),
                feature.as_deref().unwrap_or("*"),
                until.to_rfc3339()
            );
        }
        AlertsAction::Outbox { .. } => {
            let backlog = store.backlog().await?;
            if backlog.is_empty() {
                println!("no undelivered notifications");
            }
            for b in backlog {
                println!(
                    "{}: {} pending, {} attempts so far, last error: {}",
                    b.receiver,
                    b.pending,
                    b.max_attempts,
                    b.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

async fn baseline_import(
    config: &Config,
    model: &str,
    file: &PathBuf,
    replace: bool,
) -> Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let decoded = JsonDecoder
            .decode(line.as_bytes(), Some(now))
            .with_context(|| format!("{}:{}", file.display(), i + 1))?;
        events.extend(decoded.into_iter().filter(|e| e.model == model));
    }
    if events.len() < 2 {
        bail!(
            "{} holds {} events of model {model}; a reference needs at least 2",
            file.display(),
            events.len()
        );
    }
    let store = Store::open(&config.store.url, 1).await?;
    let origin = format!("import:{}", file.display());
    let stored = store
        .save_reference(model, &origin, &events, &Default::default(), replace)
        .await?;
    if !stored {
        bail!("model {model} already has a reference; pass --replace to overwrite it");
    }
    println!(
        "stored a reference of {} events for model {model}",
        events.len()
    );
    Ok(())
}

async fn replay(config: &Config, file: &PathBuf, topic: Option<String>) -> Result<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = topic
        .or_else(|| config.source.kafka.topics.first().cloned())
        .context("no topic given and none configured")?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &config.source.kafka.brokers)
        .set("acks", "all");
    for (k, v) in &config.source.kafka.properties {
        if !k.starts_with("group.") && !k.starts_with("auto.") && !k.starts_with("enable.auto") {
            cfg.set(k, v);
        }
    }
    let producer: FutureProducer = cfg.create().context("creating the kafka producer")?;
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for line in &lines {
        // Keyed by model so that one model's events stay in one partition, in order.
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_default();
        producer
            .send(
                FutureRecord::to(&topic).payload(*line).key(&key),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        bar.inc(1);
    }
    bar.finish();
    println!("sent {} messages to {topic}", lines.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:x.db"), "sqlite:x.db");
    }
}
