//! `modelwatch replay`: produce an NDJSON file into Kafka, one message per line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::ConfigArg;
use crate::ingest::kafka::{ClientRole, client_config};
use crate::telemetry;

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// NDJSON file to send.
    file: PathBuf,
    /// Target topic; default: the first configured topic.
    #[arg(long)]
    topic: Option<String>,
}

pub async fn run(args: ReplayArgs) -> Result<()> {
    let config = args.config.load()?;
    telemetry::init_logging(&config.log);
    let kafka = &config.source.kafka;
    let topic = args
        .topic
        .or_else(|| kafka.topics.first().cloned())
        .context("no topic given and none configured")?;
    let file = &args.file;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let producer: FutureProducer = client_config(kafka, ClientRole::Producer)?
        .create()
        .context("creating the kafka producer")?;
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
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing to {topic}"))?;
        bar.inc(1);
    }
    bar.finish();
    println!("sent {} messages to {topic}", lines.len());
    Ok(())
}
