//! Stage 2: raw message bytes become telemetry events.
//!
//! A decoder is chosen per topic. `modelwatch-json` is the native format
//! (`docs/event.schema.json`); serving-system formats plug in beside it.

mod json;
mod kserve;
mod limits;
mod oip;
mod otlp;
mod seldon;
mod tensors;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use json::JsonDecoder;
pub use kserve::KServeDecoder;
pub use limits::Limits;
pub use oip::OipJsonDecoder;
pub use otlp::{OtlpGenaiConfig, OtlpGenaiDecoder};
pub use seldon::{
    InferTensor, InferTensorContents, ModelInferRequest, ModelInferResponse, SeldonDecoder,
};
pub use tensors::{ModelTensors, TensorConfig};

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
    #[error("half of a pair without a key to pair it by: {0}")]
    NoPairKey(String),
    #[error("a second {side} under pair key {key:?} while the first waits")]
    DuplicatePairKey { side: &'static str, key: String },
    #[error("halves of pair {key:?} do not match: {why}")]
    PairMismatch { key: String, why: String },
    #[error("{side} under pair key {key:?} met no other half within the join's time limit")]
    Unpaired { side: Side, key: String },
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
            DecodeError::NoPairKey(_) => "no_pair_key",
            DecodeError::DuplicatePairKey { .. } => "duplicate_pair_key",
            DecodeError::PairMismatch { .. } => "pair_mismatch",
            DecodeError::Unpaired {
                side: Side::Request,
                ..
            } => "unpaired_request",
            DecodeError::Unpaired {
                side: Side::Response,
                ..
            } => "unpaired_response",
        }
    }
}

/// One message as the transport delivered it: what a decoder may read.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    /// Every header, in order; a name may repeat.
    pub headers: &'a [(String, Vec<u8>)],
    pub topic: &'a str,
    /// The transport's timestamp (Kafka's), used for events that carry no
    /// time of their own.
    pub timestamp: Option<DateTime<Utc>>,
}

impl<'a> Message<'a> {
    /// A payload alone, as a line of a file carries it.
    pub fn bare(payload: &'a [u8], timestamp: Option<DateTime<Utc>>) -> Self {
        Self {
            payload,
            key: None,
            headers: &[],
            topic: "",
            timestamp,
        }
    }

    /// The last value of header `name` (compared without case), as text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Which half of a request/response pair a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Request,
    Response,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// A message that is one half of a pair: its events are incomplete (the
/// request's carry inputs, the response's outputs) until the join stage
/// meets the other half under the same key; row `i` of one half pairs with
/// row `i` of the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub key: String,
    pub side: Side,
}

/// Between a model's name and an id in a pair key: a control character,
/// which the door refuses in model names, so keys of two models never meet.
pub const PAIR_KEY_SEPARATOR: char = '\u{1f}';

/// What a message decoded to.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub events: Vec<TelemetryEvent>,
    /// Set when the message is half of a pair.
    pub pairing: Option<Pairing>,
}

impl Decoded {
    pub fn whole(events: Vec<TelemetryEvent>) -> Self {
        Self {
            events,
            pairing: None,
        }
    }
}

/// Turns one message into zero or more events, or into one half of a pair.
pub trait Decoder: Send + Sync {
    fn name(&self) -> &'static str;

    fn decode_message(&self, msg: &Message<'_>) -> Result<Decoded, DecodeError>;

    /// A payload without headers or key, as a file line or a test has it;
    /// a half's events come back incomplete.
    fn decode(
        &self,
        payload: &[u8],
        source_ts: Option<DateTime<Utc>>,
    ) -> Result<Vec<TelemetryEvent>, DecodeError> {
        self.decode_message(&Message::bare(payload, source_ts))
            .map(|d| d.events)
    }

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
    /// KServe's inference logger: CloudEvents in binary (`ce_*` headers)
    /// or structured mode, V1 or V2 bodies; request and response are two
    /// messages paired by `ce_id`.
    KserveCloudevents,
    /// Open Inference Protocol (V2) REST bodies, request and response as
    /// two messages paired by `id` (else the `x-request-id` header).
    OipV2Json,
    /// Seldon Core 2's model topics: protobuf (or JSON) Open Inference
    /// Protocol messages on `.inputs` and `.outputs`, paired by the
    /// `x-request-id` header.
    SeldonV2,
}

impl DecoderName {
    pub fn build(self, config: &DecodeConfig) -> Box<dyn Decoder> {
        match self {
            DecoderName::ModelwatchJson => Box::new(JsonDecoder),
            DecoderName::OtlpGenai => Box::new(OtlpGenaiDecoder::new(config.otlp_genai.clone())),
            DecoderName::KserveCloudevents => Box::new(KServeDecoder::new(config.tensors.clone())),
            DecoderName::OipV2Json => Box::new(OipJsonDecoder::new(config.tensors.clone())),
            DecoderName::SeldonV2 => Box::new(SeldonDecoder::new(config.tensors.clone())),
        }
    }
}

/// The decoders' settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// `otlp-genai`: where it finds the client and the attributes of a span.
    pub otlp_genai: OtlpGenaiConfig,
    /// `kserve-cloudevents`, `oip-v2-json` and `seldon-v2`: how tensors become features
    /// and outputs, and where the client and attributes are named.
    pub tensors: TensorConfig,
}
