//! `modelwatch replay`: produce an NDJSON file into Kafka, one message per
//! line, at broker speed: deliveries are awaited in bulk, with at most
//! `IN_FLIGHT` outstanding, and every line ends counted as delivered or failed.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::ConfigArg;
use crate::ingest::kafka::{ClientRole, client_config};
use crate::telemetry;

/// Deliveries awaited at most at once: enough to keep librdkafka's batches
/// full, few enough that a dead broker is noticed within one batch's timeout.
const IN_FLIGHT: usize = 50_000;

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// NDJSON file to send, or `-` for standard input.
    file: PathBuf,
    /// Target topic; default: the first configured topic.
    #[arg(long)]
    topic: Option<String>,
}

/// The only field replay reads: the partitioning key.
#[derive(serde::Deserialize)]
struct Keyed<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

#[derive(Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    async fn settle(&mut self, delivery: DeliveryFuture) {
        match delivery.await {
            Ok(Ok(_)) => self.delivered += 1,
            Ok(Err((e, _))) => self.fail(e.to_string()),
            Err(_) => self.fail("the producer dropped the message".into()),
        }
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_error.get_or_insert(why);
    }
}

fn read_input(file: &std::path::Path) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
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
    let text = read_input(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut cfg = client_config(kafka, ClientRole::Producer)?;
    default_to(&mut cfg, "linger.ms", "20");
    default_to(&mut cfg, "batch.num.messages", "10000");
    default_to(
        &mut cfg,
        "queue.buffering.max.messages",
        &(2 * IN_FLIGHT).to_string(),
    );
    let producer: FutureProducer = cfg.create().context("creating the kafka producer")?;
    let bar = progress(lines.len() as u64);
    let mut tally = Tally::default();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(IN_FLIGHT);
    for line in &lines {
        // Keyed by model so that one model's events stay in one partition, in order.
        let key = serde_json::from_str::<Keyed>(line)
            .ok()
            .and_then(|k| k.model)
            .unwrap_or_default();
        if pending.len() >= IN_FLIGHT {
            if let Some(oldest) = pending.pop_front() {
                tally.settle(oldest).await;
                bar.inc(1);
            }
        }
        match enqueue(&producer, &topic, line, &key).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(e) => {
                tally.fail(e.to_string());
                bar.inc(1);
            }
        }
    }
    for delivery in pending {
        tally.settle(delivery).await;
        bar.inc(1);
    }
    bar.finish();
    let _ = producer.flush(Duration::from_secs(30));
    println!(
        "sent {} messages to {topic}: {} delivered, {} failed",
        lines.len(),
        tally.delivered,
        tally.failed
    );
    if let Some(why) = tally.first_error {
        bail!(
            "{} of {} messages were not delivered to {topic}; first error: {why}",
            tally.failed,
            lines.len()
        );
    }
    Ok(())
}

/// Hands one message to librdkafka, waiting while its queue is full; an
/// error it will not retry (a message over the size limit) comes back.
async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    line: &str,
    key: &str,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(FutureRecord::to(topic).payload(line).key(key)) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Sets `key` unless the user's `[source.kafka.properties]` already did.
fn default_to<'c>(cfg: &'c mut ClientConfig, key: &str, value: &str) -> &'c mut ClientConfig {
    if cfg.get(key).is_none() {
        cfg.set(key, value);
    }
    cfg
}

fn progress(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
