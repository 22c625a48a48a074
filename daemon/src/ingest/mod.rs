//! Stage 1: where messages enter. Each source runs as a task that sends raw
//! messages down a channel; its `SourceControl` takes acknowledgements
//! (positions that are durable) and dead letters back upstream.

pub mod ack;
pub mod demo;
pub mod file;
pub mod kafka;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::SourcePos;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("dead-letter delivery failed: {0}")]
    DeadLetter(#[source] rdkafka::error::KafkaError),
    #[error("kafka sasl password: {0}")]
    Secret(String),
    #[error("dead-letter topic {topic} is not usable ({reason}): create it before starting")]
    DeadLetterTopic { topic: String, reason: String },
}

/// One message as it arrived, before decoding.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub payload: Vec<u8>,
    pub key: Option<Vec<u8>>,
    /// The transport's timestamp, used for events without `ts`.
    pub timestamp: Option<DateTime<Utc>>,
    /// The topic (or file) it came from; selects the decoder.
    pub topic: String,
    pub pos: SourcePos,
    /// W3C trace context headers (`traceparent`, `tracestate`) it carried.
    pub trace_context: Vec<(String, String)>,
}

/// Acknowledgement and dead-letter handling, per source kind.
pub enum SourceControl {
    Kafka(kafka::KafkaControl),
    File(file::FileControl),
    Demo,
}

impl SourceControl {
    /// Records that everything before `next_offset` on `stream` is durable.
    pub fn acknowledge(&self, stream: &str, next_offset: i64) {
        match self {
            SourceControl::Kafka(k) => k.store_offset(stream, next_offset),
            SourceControl::File(_) | SourceControl::Demo => {}
        }
    }

    /// Sends an undecodable message to the dead-letter destination and
    /// returns once it is durable there.
    pub async fn dead_letter(
        &self,
        msg: &RawMessage,
        reason: &str,
        detail: &str,
    ) -> Result<(), IngestError> {
        match self {
            SourceControl::Kafka(k) => k.dead_letter(msg, reason, detail).await,
            SourceControl::File(f) => f.dead_letter(msg, reason, detail).await,
            SourceControl::Demo => Ok(()),
        }
    }

    /// Commits acknowledged positions synchronously (shutdown).
    pub fn flush(&self) {
        if let SourceControl::Kafka(k) = self {
            k.commit_now();
        }
    }
}

/// A started source: its messages and its control.
pub struct Source {
    pub messages: mpsc::Receiver<RawMessage>,
    pub control: SourceControl,
    /// Finite sources (file, demo) end; Kafka runs until cancelled.
    pub finite: bool,
}

/// Starts the configured source. Kafka reports its partition assignment
/// and lag into `metrics` and `health`; the others are always "assigned".
pub fn start(
    config: &Config,
    metrics: std::sync::Arc<crate::telemetry::Metrics>,
    health: std::sync::Arc<crate::telemetry::Health>,
    cancel: CancellationToken,
) -> Result<Source, IngestError> {
    let (tx, rx) = mpsc::channel(1024);
    if config.source.kind != SourceKind::Kafka {
        crate::telemetry::Health::set(&health.partitions_assigned, true);
    }
    match config.source.kind {
        SourceKind::Kafka => {
            let control = kafka::start(&config.source.kafka, tx, cancel.clone())?;
            control.spawn_monitor(metrics, health, cancel);
            Ok(Source {
                messages: rx,
                control: SourceControl::Kafka(control),
                finite: false,
            })
        }
        SourceKind::File => {
            let control = file::start(&config.source.file, tx, cancel)?;
            Ok(Source {
                messages: rx,
                control: SourceControl::File(control),
                finite: true,
            })
        }
        SourceKind::Demo => {
            demo::start(config, tx, cancel);
            Ok(Source {
                messages: rx,
                control: SourceControl::Demo,
                finite: true,
            })
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Kafka consumer group (production).
    Kafka,
    /// NDJSON file, or `-` for standard input.
    File,
    /// Built-in simulated fleet with scheduled drift episodes.
    #[default]
    Demo,
}

/// Where telemetry comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// `kafka`, `file` or `demo`.
    pub kind: SourceKind,
    /// The Kafka consumer group.
    pub kafka: kafka::KafkaConfig,
    /// The NDJSON file source.
    pub file: file::FileConfig,
    /// The simulated fleet.
    pub demo: demo::DemoConfig,
}

impl SourceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.kind == SourceKind::Kafka && self.kafka.topics.is_empty() {
            return Err("source.kafka.topics is empty".into());
        }
        Ok(())
    }
}
