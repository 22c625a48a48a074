use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{DecodeError, Decoded, Decoder, Message};
use crate::event::{Attributes, FeatureValue, Features, Output, Probabilities, TelemetryEvent};

/// The native modelwatch JSON format: one event object, or an array of them.
pub struct JsonDecoder;

/// Bytes that are not JSON are `invalid_json`; JSON of the wrong shape is
/// `schema`.
fn classify(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::Schema(e.to_string()),
        _ => DecodeError::InvalidJson(e.to_string()),
    }
}

/// The wire shape: like `TelemetryEvent` but `ts` may be absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    model: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    ts: Option<DateTime<Utc>>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    features: Features,
    #[serde(default)]
    embedding: Option<Vec<f64>>,
    #[serde(default)]
    output: Output,
    #[serde(default)]
    actual: Option<serde_json::Value>,
    #[serde(default)]
    attributes: Attributes,
}

impl Decoder for JsonDecoder {
    fn name(&self) -> &'static str {
        "modelwatch-json"
    }

    fn decode_message(&self, msg: &Message<'_>) -> Result<Decoded, DecodeError> {
        let (payload, source_ts) = (msg.payload, msg.timestamp);
        // Straight into the wire shape, in one pass: going through a
        // `serde_json::Value` first cost as much again as the parse.
        let batch = payload
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[');
        let wires = if batch {
            serde_json::from_slice::<Vec<WireEvent>>(payload).map_err(classify)?
        } else {
            vec![serde_json::from_slice::<WireEvent>(payload).map_err(classify)?]
        };
        wires
            .into_iter()
            .map(|wire| into_event(wire, source_ts))
            .collect::<Result<_, _>>()
            .map(Decoded::whole)
    }
}

fn into_event(
    w: WireEvent,
    source_ts: Option<DateTime<Utc>>,
) -> Result<TelemetryEvent, DecodeError> {
    if w.model.trim().is_empty() {
        return Err(DecodeError::InvalidValue("model is empty".into()));
    }
    let attributes = w.attributes.iter().map(|(k, v)| (k.as_str(), v));
    for (name, v) in w.features.iter().chain(attributes) {
        if let FeatureValue::Number(x) = v {
            if !x.is_finite() {
                return Err(DecodeError::InvalidValue(format!(
                    "feature {name} is not finite"
                )));
            }
        }
    }
    if let Some(e) = &w.embedding {
        if e.iter().any(|x| !x.is_finite()) {
            return Err(DecodeError::InvalidValue(
                "embedding has a non-finite value".into(),
            ));
        }
    }
    match &w.output.probabilities {
        Some(Probabilities::List(p)) => check_probabilities(p.iter().copied())?,
        Some(Probabilities::Named(p)) => check_probabilities(p.values().copied())?,
        None => {}
    }
    if let Some(s) = w.output.score {
        if !s.is_finite() {
            return Err(DecodeError::InvalidValue(
                "output.score is not finite".into(),
            ));
        }
    }
    let ts = w.ts.or(source_ts).ok_or(DecodeError::NoTimestamp)?;
    Ok(TelemetryEvent {
        model: w.model,
        model_version: w.model_version,
        ts,
        request_id: w.request_id,
        client_id: w.client_id,
        features: w.features,
        embedding: w.embedding,
        output: w.output,
        actual: w.actual,
        attributes: w.attributes,
    })
}

fn check_probabilities(p: impl Iterator<Item = f64>) -> Result<(), DecodeError> {
    let mut n = 0;
    for x in p {
        n += 1;
        if !(0.0..=1.0).contains(&x) {
            return Err(DecodeError::InvalidValue(format!(
                "output.probabilities has {x}, outside [0, 1]"
            )));
        }
    }
    if n == 0 {
        return Err(DecodeError::InvalidValue(
            "output.probabilities is empty".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Vec<TelemetryEvent>, DecodeError> {
        JsonDecoder.decode(s.as_bytes(), Some("2026-01-01T00:00:00Z".parse().unwrap()))
    }

    #[test]
    fn decodes_one_event_with_all_fields() {
        let ev = decode(
            r#"{"model":"m","model_version":"v2","ts":"2026-02-03T04:05:06Z","request_id":"r1",
                "client_id":"c","features":{"a":1.5,"b":"x","c":true,"d":null},
                "embedding":[0.1,0.2],"output":{"probabilities":[0.2,0.8],"label":"yes","score":0.8},
                "actual":"yes"}"#,
        )
        .unwrap();
        assert_eq!(ev.len(), 1);
        let e = &ev[0];
        assert_eq!(e.model_version.as_deref(), Some("v2"));
        assert_eq!(e.ts.to_rfc3339(), "2026-02-03T04:05:06+00:00");
        assert_eq!(e.features["a"], FeatureValue::Number(1.5));
        assert_eq!(e.features["b"].as_category().as_deref(), Some("x"));
        assert_eq!(e.features["c"].as_category().as_deref(), Some("true"));
        assert_eq!(e.features["d"], FeatureValue::Missing(()));
        assert_eq!(e.output.label.as_deref(), Some("yes"));
    }

    #[test]
    fn array_and_source_timestamp() {
        let ev = decode(r#"[{"model":"a"},{"model":"b","output":{"probabilities":{"x":1.0}}}]"#)
            .unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].ts.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(decode("{not json").unwrap_err().reason(), "invalid_json");
        assert_eq!(decode(r#"{"features":{}}"#).unwrap_err().reason(), "schema");
        assert_eq!(
            decode(r#"{"model":"m","typo":1}"#).unwrap_err().reason(),
            "schema"
        );
        assert_eq!(
            decode(r#"{"model":"m","output":{"probabilities":[1.5]}}"#)
                .unwrap_err()
                .reason(),
            "invalid_value"
        );
        assert_eq!(
            decode(r#"{"model":" "}"#).unwrap_err().reason(),
            "invalid_value"
        );
        let no_ts = JsonDecoder.decode(br#"{"model":"m"}"#, None).unwrap_err();
        assert_eq!(no_ts, DecodeError::NoTimestamp);
    }

    #[test]
    fn documented_examples_decode() {
        let text = include_str!("../../docs/examples/classifier.ndjson");
        let events: usize = text.lines().map(|l| decode(l).expect(l).len()).sum();
        assert_eq!(events, 4);
    }
}
