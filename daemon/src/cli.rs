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
            let metrics = run_pipeline(config, PipelineOptions { print_alerts: true }).await?;
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
pub async fn run_pipeline(config: Config, options: PipelineOptions) -> Result<Arc<Metrics>> {
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
    let scoring = ScoringHandle::start(&config.engine, typical)
        .await
        .context("starting the scoring engine")?;
    Health::set(&health.device_ready, true);
    let source = ingest::start(&config, metrics.clone(), health.clone(), cancel.clone())
        .context("starting the source")?;
    tracing::info!(store = store.kind(), device = %scoring.info().label(), "modelwatch ready");
    let pipeline = Pipeline::new(config, store, scoring, metrics, health, options)?;
    Ok(pipeline.run(source, cancel).await?)
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
    let metrics = run_pipeline(config, PipelineOptions { print_alerts: true }).await?;
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
