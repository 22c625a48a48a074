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
    #[error(
        "{0}: incremental rebalancing is not supported (windows mix partitions, so a partial revocation cannot hand one back); use the classic protocol with range or roundrobin"
    )]
    Cooperative(String),
}

/// Why a librdkafka property would make rebalances revoke only some
/// partitions: the cooperative assignor, or the KIP-848 group protocol.
pub fn incremental_rebalancing(key: &str, value: &str) -> Option<String> {
    let incremental = match key {
        "partition.assignment.strategy" => value.contains("cooperative"),
        "group.protocol" => value.trim() == "consumer",
        _ => false,
    };
    incremental.then(|| format!("{key} = {value:?}"))
}

/// Partitions taken from this member by a rebalance. The pipeline drops
/// every event it holds that is not durable yet, then answers on `done`;
/// the group waits for that answer before the partitions move.
pub struct Revocation {
    pub streams: Vec<String>,
    pub done: std::sync::mpsc::Sender<()>,
}

/// Cancels the pipeline step in progress when a revocation arrives (a write
/// retrying through an outage must not finish after the partitions moved),
/// without shutting the pipeline down.
#[derive(Clone)]
pub struct Interrupt {
    root: CancellationToken,
    current: std::sync::Arc<std::sync::Mutex<CancellationToken>>,
}

impl Interrupt {
    pub fn new(root: &CancellationToken) -> Self {
        Self {
            root: root.clone(),
            current: std::sync::Arc::new(std::sync::Mutex::new(root.child_token())),
        }
    }

    /// The token the next steps run under.
    pub fn current(&self) -> CancellationToken {
        self.lock().clone()
    }

    /// Cancels the steps under the current token.
    pub fn fire(&self) {
        self.lock().cancel();
    }

    /// Steps run again, after the pipeline dealt with the revocation.
    pub fn renew(&self) {
        *self.lock() = self.root.child_token();
    }

    /// Whether the pipeline itself is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.root.is_cancelled()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        // A panic elsewhere cannot leave a token half-written.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
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
    /// Every header, in order, within `MAX_HEADERS` and the size bounds;
    /// decoders read them (CloudEvents' `ce_*`, `x-request-id`).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Most headers kept of one message, and the longest name and value: what
/// the decoders read is short, and a producer's header list must not
/// outweigh the payload limit. A header past them is left out, as if it
/// were not sent.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_NAME_BYTES: usize = 256;
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;

impl RawMessage {
    /// What a decoder may read of it.
    pub fn view(&self) -> crate::decode::Message<'_> {
        crate::decode::Message {
            payload: &self.payload,
            key: self.key.as_deref(),
            headers: &self.headers,
            topic: &self.topic,
            timestamp: self.timestamp,
        }
    }
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
    /// Revocations of a consumer-group member (none for other sources).
    pub revocations: Option<mpsc::UnboundedReceiver<Revocation>>,
    pub interrupt: Interrupt,
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
            let (control, revocations, interrupt) =
                kafka::start(&config.source.kafka, tx, metrics.clone(), cancel.clone())?;
            control.spawn_monitor(metrics, health, cancel);
            Ok(Source {
                messages: rx,
                control: SourceControl::Kafka(control),
                finite: false,
                revocations: Some(revocations),
                interrupt,
            })
        }
        SourceKind::File => {
            let interrupt = Interrupt::new(&cancel);
            let control = file::start(&config.source.file, tx, cancel)?;
            Ok(Source {
                messages: rx,
                control: SourceControl::File(control),
                finite: true,
                revocations: None,
                interrupt,
            })
        }
        SourceKind::Demo => {
            let interrupt = Interrupt::new(&cancel);
            demo::start(config, tx, cancel);
            Ok(Source {
                messages: rx,
                control: SourceControl::Demo,
                finite: true,
                revocations: None,
                interrupt,
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
        for (k, v) in &self.kafka.properties {
            if let Some(why) = incremental_rebalancing(k, v) {
                return Err(IngestError::Cooperative(why).to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partial revocations would drop events of partitions a member keeps:
    /// both ways of asking for them are refused at start-up.
    #[test]
    fn incremental_rebalancing_is_refused() {
        let mut c = SourceConfig {
            kind: SourceKind::Kafka,
            ..SourceConfig::default()
        };
        assert!(c.validate().is_ok());
        for (k, v) in [
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("group.protocol", "consumer"),
        ] {
            c.kafka.properties = [(k.to_string(), v.to_string())].into();
            let err = c.validate().unwrap_err();
            assert!(err.contains(k), "{err}");
            assert!(kafka::client_config(&c.kafka, kafka::ClientRole::Consumer).is_err());
        }
        c.kafka.properties = [(
            "partition.assignment.strategy".to_string(),
            "range,roundrobin".to_string(),
        )]
        .into();
        assert!(c.validate().is_ok());
    }
}
