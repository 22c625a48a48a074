//! The telemetry event: what one model request/response looks like once decoded.
//!
//! The JSON form is documented in `docs/event.schema.json`; this is its Rust
//! shape. Events flow forward from `decode` through `window` to `detect`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event came from: a stream (Kafka `topic/partition`, a file
/// path, the demo generator), the message's monotonically increasing offset
/// in it, and the event's index inside that message (a message may carry an
/// array of events). Offsets drive at-least-once acknowledgement; offset and
/// index together drive replay de-duplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePos {
    pub stream: String,
    pub offset: i64,
    pub index: i64,
}

impl SourcePos {
    pub fn mark(&self) -> Mark {
        Mark {
            offset: self.offset,
            index: self.index,
        }
    }
}

/// A point in one stream, ordered by offset, then by index in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    pub offset: i64,
    pub index: i64,
}

/// One feature value: numbers are numeric features, strings and booleans
/// categorical ones. `null` means "missing" and is skipped by detectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Number(f64),
    Bool(bool),
    Text(String),
    Missing(()),
}

impl FeatureValue {
    pub fn as_number(&self) -> Option<f64> {
        match self {
            FeatureValue::Number(v) => Some(*v),
            _ => None,
        }
    }

    /// The category label of a categorical value; numbers are not categories.
    pub fn as_category(&self) -> Option<String> {
        match self {
            FeatureValue::Text(s) => Some(s.clone()),
            FeatureValue::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Class probabilities either as a list aligned with the model's configured
/// class names or as an explicit `class -> probability` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Probabilities {
    List(Vec<f64>),
    Named(BTreeMap<String, f64>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Probabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A decoded request/response pair of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub ts: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub features: BTreeMap<String, FeatureValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f64>>,
    #[serde(default)]
    pub output: Output,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<serde_json::Value>,
}

impl TelemetryEvent {
    /// The version label used to key windows; events without one share `""`.
    pub fn version_key(&self) -> &str {
        self.model_version.as_deref().unwrap_or("")
    }
}

/// An event together with the position of the message that carried it.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub event: TelemetryEvent,
    pub pos: SourcePos,
}
