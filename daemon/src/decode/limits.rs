//! The door: limits every decoded event keeps, whatever decoder made it, so
//! that what passes always stores and loads again on both stores and cannot
//! overflow the windows' time arithmetic.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DecodeError;
use crate::event::{Attributes, FeatureValue, Probabilities, TelemetryEvent};

/// Limits a producer's messages are held to; anything past them is
/// dead-lettered with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted, in bytes; a larger one is dead-lettered
    /// (reason `too_large`) with only its first this many bytes, which keeps
    /// it under the dead-letter producer's `message.max.bytes` (1,000,000 by
    /// default) with room for the headers.
    pub max_message_bytes: usize,
    /// Longest name, in bytes: model, model version, feature, class, client
    /// and request ids. Names must not hold control characters.
    pub max_name_bytes: usize,
    /// Longest text value (a categorical feature, a label, `actual`), in bytes.
    pub max_value_bytes: usize,
    /// Deepest nesting of a free-form value (`actual`).
    pub max_depth: usize,
    /// Most `attributes` on one event; their names are held to
    /// `max_name_bytes`, their text to `max_value_bytes`.
    pub max_attributes: usize,
    /// An event's `ts` may lie at most this many days from the source's time
    /// (the Kafka timestamp, or when a line was read); further is refused
    /// (reason `timestamp_out_of_range`).
    pub max_clock_skew_days: u32,
    /// Most models the monitor keeps state for (references, windows, metric
    /// series); a message that would add one more is refused (reason
    /// `unknown_model`). Models named under `[models]` are always accepted.
    pub max_models: usize,
    /// Accept only the models named under `[models]`.
    pub only_configured_models: bool,
    /// Most model versions windowed at once per model; an event of one
    /// more is refused (reason `too_many_versions`).
    pub max_versions_per_model: usize,
    /// Forget a model that sent nothing for this many seconds (its open
    /// windows are scored first; an unfinished reference is dropped); 0
    /// keeps every model for good.
    pub idle_model_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 900_000,
            max_name_bytes: 256,
            max_value_bytes: 4096,
            max_depth: 8,
            max_attributes: 32,
            max_clock_skew_days: 3650,
            max_models: 1000,
            only_configured_models: false,
            max_versions_per_model: 100,
            idle_model_secs: 3600,
        }
    }
}

impl Limits {
    /// Refuses a message larger than the limit before it is decoded.
    pub fn check_size(&self, payload: &[u8]) -> Result<(), DecodeError> {
        if payload.len() > self.max_message_bytes {
            return Err(DecodeError::TooLarge {
                bytes: payload.len(),
                limit: self.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Checks one decoded event; `source_ts` is the transport's time.
    pub fn check(
        &self,
        e: &TelemetryEvent,
        source_ts: Option<DateTime<Utc>>,
    ) -> Result<(), DecodeError> {
        self.check_time(e.ts, source_ts.unwrap_or_else(Utc::now))?;
        self.name("model", &e.model)?;
        for (what, v) in [
            ("model_version", &e.model_version),
            ("client_id", &e.client_id),
            ("request_id", &e.request_id),
        ] {
            if let Some(v) = v {
                self.name(what, v)?;
            }
        }
        for (name, value) in e.features.iter() {
            self.name("feature", name)?;
            if let FeatureValue::Text(t) = value {
                self.value(name, t)?;
            }
        }
        if let Some(Probabilities::Named(p)) = &e.output.probabilities {
            for class in p.keys() {
                self.name("class", class)?;
            }
        }
        if let Some(label) = &e.output.label {
            self.value("output.label", label)?;
        }
        if let Some(actual) = &e.actual {
            self.json("actual", actual, 0)?;
        }
        self.attributes(&e.attributes)
    }

    fn attributes(&self, attributes: &Attributes) -> Result<(), DecodeError> {
        if attributes.len() > self.max_attributes {
            return Err(DecodeError::InvalidValue(format!(
                "{} attributes exceed {}",
                attributes.len(),
                self.max_attributes
            )));
        }
        for (name, value) in attributes.iter() {
            self.name("attribute", name)?;
            if let FeatureValue::Text(t) = value {
                self.value(name, t)?;
            }
        }
        Ok(())
    }

    fn check_time(&self, ts: DateTime<Utc>, source: DateTime<Utc>) -> Result<(), DecodeError> {
        let skew = chrono::Duration::days(i64::from(self.max_clock_skew_days));
        let off = ts.signed_duration_since(source);
        if off > skew || off < -skew {
            return Err(DecodeError::TimestampOutOfRange(format!(
                "ts {} lies more than {} days from the source time {}",
                ts.to_rfc3339(),
                self.max_clock_skew_days,
                source.to_rfc3339()
            )));
        }
        Ok(())
    }

    fn name(&self, what: &str, s: &str) -> Result<(), DecodeError> {
        if s.len() > self.max_name_bytes {
            return Err(DecodeError::InvalidValue(format!(
                "{what} name of {} bytes exceeds {}",
                s.len(),
                self.max_name_bytes
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(DecodeError::InvalidValue(format!(
                "{what} name {:?} holds a control character",
                truncated(s)
            )));
        }
        Ok(())
    }

    fn value(&self, what: &str, s: &str) -> Result<(), DecodeError> {
        if s.len() > self.max_value_bytes {
            return Err(DecodeError::InvalidValue(format!(
                "{} value of {} bytes exceeds {}",
                truncated(what),
                s.len(),
                self.max_value_bytes
            )));
        }
        // PostgreSQL's text and jsonb cannot hold U+0000.
        if s.contains('\0') {
            return Err(DecodeError::InvalidValue(format!(
                "{} value holds U+0000",
                truncated(what)
            )));
        }
        Ok(())
    }

    fn json(&self, what: &str, v: &serde_json::Value, depth: usize) -> Result<(), DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::InvalidValue(format!(
                "{what} is nested deeper than {}",
                self.max_depth
            )));
        }
        match v {
            serde_json::Value::String(s) => self.value(what, s),
            serde_json::Value::Array(items) => {
                items.iter().try_for_each(|x| self.json(what, x, depth + 1))
            }
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, x)| {
                self.value(what, k)?;
                self.json(what, x, depth + 1)
            }),
            _ => Ok(()),
        }
    }
}

/// The first characters of a name quoted in an error, never the whole of a
/// hostile one.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, JsonDecoder};

    fn check(json: &str) -> Result<(), DecodeError> {
        let now: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
        let events = JsonDecoder.decode(json.as_bytes(), Some(now))?;
        events
            .iter()
            .try_for_each(|e| Limits::default().check(e, Some(now)))
    }

    #[test]
    fn hostile_values_are_refused_with_a_reason() {
        let long = "m".repeat(5000);
        let nested = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        let many = (0..=Limits::default().max_attributes)
            .map(|i| format!(r#""a{i}":{i}"#))
            .collect::<Vec<_>>()
            .join(",");
        for (json, reason) in [
            (
                r#"{"model":"m","ts":"+262142-12-31T23:59:59Z"}"#.to_string(),
                "timestamp_out_of_range",
            ),
            (
                r#"{"model":"m","ts":"-4714-01-01T00:00:00Z"}"#.to_string(),
                "timestamp_out_of_range",
            ),
            (r#"{"model":"m\u0000x"}"#.to_string(), "invalid_value"),
            (
                r#"{"model":"m","features":{"a":"x\u0000"}}"#.to_string(),
                "invalid_value",
            ),
            (format!(r#"{{"model":"{long}"}}"#), "invalid_value"),
            (
                format!(r#"{{"model":"m","features":{{"{long}":1}}}}"#),
                "invalid_value",
            ),
            (
                format!(r#"{{"model":"m","actual":{nested}}}"#),
                "invalid_value",
            ),
            (
                format!(r#"{{"model":"m","attributes":{{"{long}":1}}}}"#),
                "invalid_value",
            ),
            (
                format!(r#"{{"model":"m","attributes":{{"tenant":"{long}"}}}}"#),
                "invalid_value",
            ),
            (
                r#"{"model":"m","attributes":{"a\nb":"x"}}"#.to_string(),
                "invalid_value",
            ),
            (
                r#"{"model":"m","attributes":{"tenant":{"nested":1}}}"#.to_string(),
                "schema",
            ),
            (
                format!(r#"{{"model":"m","attributes":{{{many}}}}}"#),
                "invalid_value",
            ),
        ] {
            let err = check(&json).expect_err(&json[..json.len().min(80)]);
            assert_eq!(err.reason(), reason, "{err}");
        }
        check(r#"{"model":"m","ts":"2026-10-31T00:00:00Z","actual":[[1]]}"#).unwrap();
        check(r#"{"model":"m","attributes":{"tenant":"acme","latency_ms":12.5,"canary":true}}"#)
            .unwrap();
        let big = vec![b' '; 1_000_000];
        assert_eq!(
            Limits::default().check_size(&big).unwrap_err().reason(),
            "too_large"
        );
    }
}
