//! Stage 2: raw message bytes become telemetry events.
//!
//! A decoder is chosen per topic. `modelwatch-json` is the native format
//! (`docs/event.schema.json`); serving-system formats plug in beside it.

mod json;
mod limits;
mod otlp;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use json::JsonDecoder;
pub use limits::Limits;
pub use otlp::{OtlpGenaiConfig, OtlpGenaiDecoder};

use crate::event::TelemetryEvent;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not valid json: {0}")]
    InvalidJson(String),
    #[error("message does not match the event schema: {0}")]
    Schema(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("message has no timestamp and the source gave none")]
    NoTimestamp,
    #[error("timestamp out of range: {0}")]
    TimestampOutOfRange(String),
    #[error("message of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("unknown model: {0}")]
    UnknownModel(String),
    #[error("too many versions: {0}")]
    TooManyVersions(String),
    #[error("model unavailable: {0}")]
    ModelUnavailable(String),
}

impl DecodeError {
    /// A stable short reason, used as a metric label and dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::Schema(_) => "schema",
            DecodeError::InvalidValue(_) => "invalid_value",
            DecodeError::NoTimestamp => "no_timestamp",
            DecodeError::TimestampOutOfRange(_) => "timestamp_out_of_range",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnknownModel(_) => "unknown_model",
            DecodeError::TooManyVersions(_) => "too_many_versions",
            DecodeError::ModelUnavailable(_) => "model_unavailable",
        }
    }
}

/// Turns one message payload into zero or more events.
pub trait Decoder: Send + Sync {
    fn name(&self) -> &'static str;

    /// `source_ts` is the transport's timestamp (Kafka's), used for events
    /// that carry no `ts` of their own.
    fn decode(
        &self,
        payload: &[u8],
        source_ts: Option<DateTime<Utc>>,
    ) -> Result<Vec<TelemetryEvent>, DecodeError>;

    /// Whether a message's events are independent records (a batch of
    /// many senders' spans), so that one refused at the door is dropped and
    /// counted alone rather than refusing the message. The native format's
    /// array is one producer's: it passes or fails whole.
    fn independent_events(&self) -> bool {
        false
    }
}

/// The input formats, by the name config files and `--format` use; a name
/// that is not here fails when the config is parsed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderName {
    /// modelwatch's own JSON event, one object or an array per message
    /// (`docs/event.schema.json`).
    #[default]
    ModelwatchJson,
    /// OpenTelemetry GenAI spans in OTLP trace messages, protobuf or JSON,
    /// as the Collector's Kafka exporter writes them: one event per GenAI
    /// span.
    OtlpGenai,
}

impl DecoderName {
    pub fn build(self, config: &DecodeConfig) -> Box<dyn Decoder> {
        match self {
            DecoderName::ModelwatchJson => Box::new(JsonDecoder),
            DecoderName::OtlpGenai => Box::new(OtlpGenaiDecoder::new(config.otlp_genai.clone())),
        }
    }
}

/// The decoders' settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// `otlp-genai`: where it finds the client of a span.
    pub otlp_genai: OtlpGenaiConfig,
}
