//! Kafka consumer-group source (librdkafka, bundled).
//!
//! Offsets are stored explicitly (`enable.auto.offset.store=false`) and only
//! for positions the pipeline acknowledged as durable; librdkafka commits the
//! stored offsets in the background, before each revocation, and
//! synchronously on shutdown.
//!
//! Ownership follows partitions with the eager protocol: a rebalance takes
//! every partition, the pipeline drops its open windows and references in
//! progress, and whoever gets a partition reads it from the last commit,
//! skipping what stored windows already cover (the store's progress, read
//! again after every revocation). Cooperative assignment is refused because
//! windows mix partitions: a partial revocation cannot hand back part of one.

mod reader;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{IngestError, Interrupt, RawMessage, Revocation};
use crate::decode::DecoderName;
use crate::telemetry::{Health, Metrics};
use reader::{Member, MemberContext};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Consumer group id; instances sharing it split the partitions.
    pub group_id: String,
    /// Topics carrying telemetry events.
    pub topics: Vec<String>,
    /// Where undecodable messages go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Decoder per topic, by name or by a pattern where `*` matches any
    /// run of characters (`"seldon.*.inputs"`); a name wins over a pattern,
    /// and patterns are tried in sorted order. Topics not matched use
    /// `modelwatch-json`.
    pub decoders: BTreeMap<String, DecoderName>,
    /// The SASL password (`sasl.password`) from this environment variable ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_password_env: Option<String>,
    /// ... or from this file, rather than in `properties`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<String>,
    /// Any librdkafka property, passed through verbatim to every client
    /// (consumer, dead-letter producer, `replay`, Kafka alert receivers),
    /// for example `"security.protocol" = "SASL_SSL"`. Credentials
    /// (`"sasl.password"`) belong in a copy of the file readable only by the
    /// service user.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "modelwatch".into(),
            topics: vec!["model-telemetry".into()],
            dead_letter_topic: "modelwatch-dead-letter".into(),
            decoders: BTreeMap::new(),
            sasl_password_env: None,
            sasl_password_file: None,
            properties: BTreeMap::new(),
        }
    }
}

/// What a librdkafka client is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// The source's consumer-group member.
    Consumer,
    /// Any producer: dead letters, `replay`, the Kafka alert receiver.
    Producer,
}

/// The one place librdkafka settings are built: brokers, our delivery
/// guarantees, then the pass-through properties (consumer-group ones only
/// for the consumer). A property cannot turn off explicit offset storing,
/// which at-least-once delivery depends on.
pub fn client_config(config: &KafkaConfig, role: ClientRole) -> Result<ClientConfig, IngestError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &config.brokers);
    match role {
        ClientRole::Consumer => cfg
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest"),
        ClientRole::Producer => cfg.set("enable.idempotence", "false").set("acks", "all"),
    };
    for (k, v) in &config.properties {
        if let Some(why) = super::incremental_rebalancing(k, v) {
            return Err(IngestError::Cooperative(why));
        }
        let consumer_only =
            k.starts_with("group.") || k.starts_with("auto.") || k.starts_with("enable.auto");
        if k == "enable.auto.offset.store" {
            if role == ClientRole::Consumer {
                tracing::warn!(property = %k, "ignored: offsets are stored only after durable writes");
            }
        } else if role == ClientRole::Consumer || !consumer_only {
            cfg.set(k, v);
        }
    }
    let password = crate::config::read_secret(
        config.sasl_password_env.as_deref(),
        config.sasl_password_file.as_deref(),
    )
    .map_err(IngestError::Secret)?;
    if let Some(p) = password {
        cfg.set("sasl.password", p);
    }
    Ok(cfg)
}

pub struct KafkaControl {
    consumer: Arc<Member>,
    producer: FutureProducer,
    dead_letter_topic: String,
}

/// `topic/partition`, the stream name of a Kafka partition.
pub fn stream_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

fn split_stream(stream: &str) -> Option<(&str, i32)> {
    let (topic, partition) = stream.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?))
}

impl KafkaControl {
    /// Every few seconds: whether partitions are assigned (readiness) and
    /// each assigned partition's lag behind its high watermark.
    pub fn spawn_monitor(
        &self,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        cancel: CancellationToken,
    ) {
        let consumer = self.consumer.clone();
        tokio::spawn(async move {
            loop {
                let c = consumer.clone();
                let (m, h) = (metrics.clone(), health.clone());
                // librdkafka's metadata calls block; keep them off the workers.
                let _ = tokio::task::spawn_blocking(move || {
                    let assigned = c.assignment().map(|a| a.count() > 0).unwrap_or(false);
                    let positions = match c.position() {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot read consumer positions");
                            Health::set(&h.partitions_assigned, assigned);
                            return;
                        }
                    };
                    for e in positions.elements() {
                        let high = match c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2)) {
                            Ok((_, high)) => high,
                            Err(err) => {
                                tracing::debug!(topic = e.topic(), partition = e.partition(), error = %err, "cannot read watermarks");
                                continue;
                            }
                        };
                        // Before the first message the position is not an
                        // offset yet: the whole partition is the lag.
                        let lag = match e.offset() {
                            Offset::Offset(pos) => high - pos,
                            _ => high,
                        };
                        tracing::trace!(topic = e.topic(), partition = e.partition(), lag, "consumer lag");
                        m.set_lag(e.topic(), e.partition(), lag.max(0));
                    }
                    Health::set(&h.partitions_assigned, assigned);
                })
                .await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }

    pub fn store_offset(&self, stream: &str, next_offset: i64) {
        let Some((topic, partition)) = split_stream(stream) else {
            tracing::error!(stream, "acknowledged position is not a kafka partition");
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next_offset)) {
            tracing::error!(stream, error = %e, "cannot build offset list");
            return;
        }
        // Fails when the partition was revoked meanwhile; its new owner
        // resumes from the last commit, and stored progress skips what we wrote.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::warn!(stream, next_offset, error = %e, "cannot store offset");
        }
    }

    pub fn commit_now(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("committed consumer offsets"),
            // Nothing stored since the last background commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {
                tracing::debug!("no new offsets to commit")
            }
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }

    pub async fn dead_letter(
        &self,
        msg: &RawMessage,
        reason: &str,
        detail: &str,
    ) -> Result<(), IngestError> {
        let (topic, partition) = split_stream(&msg.pos.stream).unwrap_or((&msg.topic, -1));
        let partition = partition.to_string();
        let offset = msg.pos.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "modelwatch.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "modelwatch.error",
                value: Some(detail),
            })
            .insert(Header {
                key: "modelwatch.source.topic",
                value: Some(topic),
            })
            .insert(Header {
                key: "modelwatch.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "modelwatch.source.offset",
                value: Some(&offset),
            });
        // The original headers follow, so that a CloudEvent in binary mode
        // can be read again from the dead-letter topic.
        let headers = msg.headers.iter().fold(headers, |h, (key, value)| {
            h.insert(Header {
                key: key.as_str(),
                value: Some(value.as_slice()),
            })
        });
        let key = msg.key.as_deref();
        let sent = self
            .send_dead_letter(Some(&msg.payload), key, headers.clone())
            .await;
        match sent {
            // Whatever the limits kept can still exceed what the broker
            // takes: the headers alone still say what was refused and where.
            Err(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
            )) => {
                tracing::warn!(stream = %msg.pos.stream, offset = msg.pos.offset, "dead letter too large for the broker; sent without its payload");
                let headers = headers.insert(Header {
                    key: "modelwatch.payload",
                    value: Some("omitted: too large"),
                });
                self.send_dead_letter(None, None, headers).await
            }
            other => other,
        }
        .map_err(IngestError::DeadLetter)
    }

    async fn send_dead_letter(
        &self,
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// The dead-letter topic must exist before the first bad message needs it:
/// a missing one would hold the stream at that message. A broker that is
/// electing a leader (or creating the topic on demand) is asked again.
fn check_topic(producer: &FutureProducer, topic: &str) -> Result<(), IngestError> {
    use rdkafka::types::RDKafkaErrorCode;
    let missing = |reason: String| IngestError::DeadLetterTopic {
        topic: topic.to_string(),
        reason,
    };
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let md = match producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
        {
            Ok(md) => md,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Err(missing("the broker does not list it".into()));
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None if !t.partitions().is_empty() => return Ok(()),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                return Err(missing(
                    RDKafkaErrorCode::UnknownTopicOrPartition.to_string(),
                ));
            }
            Some(code) => last = code.to_string(),
            None => last = "it has no partitions".into(),
        }
    }
    Err(missing(last))
}

/// Joins the group and starts the member's polling thread.
pub fn start(
    config: &KafkaConfig,
    tx: mpsc::Sender<RawMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(KafkaControl, mpsc::UnboundedReceiver<Revocation>, Interrupt), IngestError> {
    let (revocations, revoked) = mpsc::unbounded_channel();
    let interrupt = Interrupt::new(&cancel);
    let context = MemberContext::new(revocations, interrupt.clone(), cancel.clone());
    let consumer: Member =
        client_config(config, ClientRole::Consumer)?.create_with_context(context)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let consumer = Arc::new(consumer);
    let producer: FutureProducer = client_config(config, ClientRole::Producer)?.create()?;
    check_topic(&producer, &config.dead_letter_topic)?;
    tracing::info!(brokers = %config.brokers, group = %config.group_id, topics = ?config.topics, "kafka source subscribed");
    let member = consumer.clone();
    std::thread::Builder::new()
        .name("kafka-member".into())
        .spawn(move || reader::run(member, tx, metrics, cancel))
        .map_err(|source| IngestError::Io {
            path: "kafka-member thread".into(),
            source,
        })?;
    let control = KafkaControl {
        consumer,
        producer,
        dead_letter_topic: config.dead_letter_topic.clone(),
    };
    Ok((control, revoked, interrupt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_gets_the_sasl_password_from_its_file() {
        let dir = std::env::temp_dir().join(format!("mw_sasl_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut config = KafkaConfig {
            sasl_password_file: Some(file.display().to_string()),
            ..KafkaConfig::default()
        };
        config
            .properties
            .insert("group.instance.id".into(), "a".into());
        let consumer = client_config(&config, ClientRole::Consumer).unwrap();
        let producer = client_config(&config, ClientRole::Producer).unwrap();
        assert_eq!(consumer.get("sasl.password"), Some("s3cret"));
        assert_eq!(producer.get("sasl.password"), Some("s3cret"));
        // Consumer-group settings stay with the consumer.
        assert_eq!(consumer.get("group.instance.id"), Some("a"));
        assert_eq!(producer.get("group.instance.id"), None);
        config.sasl_password_file = Some(dir.join("missing").display().to_string());
        let err = client_config(&config, ClientRole::Producer).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
