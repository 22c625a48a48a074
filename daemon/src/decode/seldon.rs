//! `seldon-v2`: Seldon Core 2's model topics. A model's requests are on
//! `<prefix>.<namespace>.model.<name>.inputs` and its responses on
//! `....outputs`, as Open Inference Protocol gRPC messages
//! (`ModelInferRequest`, `ModelInferResponse`), paired by the
//! `x-request-id` header.
//!
//! - side and encoding: the `seldon-infer-type` header
//!   (`proto/InferModelRequest`, `json/inferModelResponse`, ...), else the
//!   topic's `.inputs`/`.outputs` suffix with protobuf;
//! - Confluent schema-registry framing (a zero byte, a 4-byte schema id,
//!   the message indexes) is taken off when present: a bare protobuf
//!   message never starts with a zero byte;
//! - tensor contents typed (`fp32_contents`, ...) or raw
//!   (`raw_input_contents`, little-endian, `BYTES` as length-prefixed
//!   strings);
//! - model: the name in the topic, else the message's `model_name`;
//!   version: the response's `model_version`; client:
//!   `[decode.tensors] client_headers`; the topic's namespace is the
//!   attribute `namespace`.
//!
//! The messages below follow the field numbers of the published
//! `inference` package (`grpc_service.proto`, V2 dataplane); fields the
//! monitor does not read (parameters) are skipped as unknown.

use prost::Message as _;
use serde_json::Value;

use super::oip::nonempty;
use super::tensors::{Body, RowTemplate, Tensor, TensorConfig, rows, truncated};
use super::{DecodeError, Decoded, Decoder, Message, PAIR_KEY_SEPARATOR, Pairing, Side};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferTensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferTensor>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub raw_output_contents: Vec<Vec<u8>>,
}

/// `InferInputTensor` and `InferOutputTensor` share their fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub bytes_contents: Vec<Vec<u8>>,
}

pub struct SeldonDecoder {
    config: TensorConfig,
}

impl SeldonDecoder {
    pub fn new(config: TensorConfig) -> Self {
        Self { config }
    }
}

impl Decoder for SeldonDecoder {
    fn name(&self) -> &'static str {
        "seldon-v2"
    }

    fn decode_message(&self, msg: &Message<'_>) -> Result<Decoded, DecodeError> {
        let (side, json) = kind(msg)?;
        let body = match (side, json) {
            (_, true) => Body::parse(msg.payload)?,
            (Side::Request, false) => request_body(unframed(msg.payload)?)?,
            (Side::Response, false) => response_body(unframed(msg.payload)?)?,
        };
        let key = nonempty(msg.header("x-request-id"))
            .or(nonempty(body.id.as_deref()))
            .ok_or_else(|| DecodeError::NoPairKey("no x-request-id header or id".into()))?
            .to_string();
        let model = topic_model(msg.topic)
            .or(nonempty(body.model_name.as_deref()))
            .ok_or_else(|| DecodeError::InvalidValue("no model in the topic or message".into()))?
            .to_string();
        let template = RowTemplate {
            version: body.model_version.clone().filter(|v| !v.is_empty()),
            ts: msg.timestamp.ok_or(DecodeError::NoTimestamp)?,
            request_id: Some(key.clone()),
            client_id: self.config.client(msg, None),
            attributes: self
                .config
                .attributes(msg, [("namespace", topic_namespace(msg.topic))]),
            model,
        };
        let events = rows(
            &body,
            side,
            &template,
            self.config.models.get(&template.model),
        )?;
        // A pipeline passes one x-request-id through all its models.
        let key = format!("{}{PAIR_KEY_SEPARATOR}{}", template.model, key);
        Ok(Decoded {
            events,
            pairing: Some(Pairing { key, side }),
        })
    }
}

/// The half and whether it is JSON, from `seldon-infer-type`, else from
/// the topic.
fn kind(msg: &Message<'_>) -> Result<(Side, bool), DecodeError> {
    if let Some(t) = msg.header("seldon-infer-type") {
        let lower = t.to_ascii_lowercase();
        let side = if lower.ends_with("request") {
            Side::Request
        } else if lower.ends_with("response") {
            Side::Response
        } else {
            return Err(DecodeError::Schema(format!(
                "seldon-infer-type {:?} is neither a request nor a response",
                truncated(t)
            )));
        };
        return Ok((side, lower.starts_with("json/")));
    }
    if msg.topic.ends_with(".inputs") {
        Ok((Side::Request, false))
    } else if msg.topic.ends_with(".outputs") {
        Ok((Side::Response, false))
    } else {
        Err(DecodeError::Schema(
            "no seldon-infer-type header, and the topic ends in neither .inputs nor .outputs"
                .into(),
        ))
    }
}

/// `<prefix>.<namespace>.model.<name>.inputs` names model `<name>`.
fn topic_model(topic: &str) -> Option<&str> {
    let (_, rest) = topic.rsplit_once(".model.")?;
    let name = rest
        .strip_suffix(".inputs")
        .or_else(|| rest.strip_suffix(".outputs"))?;
    nonempty(Some(name))
}

/// `<prefix>.<namespace>.model.<name>.inputs` is of `<namespace>`.
fn topic_namespace(topic: &str) -> Option<&str> {
    let (head, _) = topic.rsplit_once(".model.")?;
    head.rsplit_once('.').map(|(_, namespace)| namespace)
}

/// The protobuf message, without Confluent's schema-registry framing.
fn unframed(payload: &[u8]) -> Result<&[u8], DecodeError> {
    if payload.first() != Some(&0) {
        return Ok(payload);
    }
    let framing = || DecodeError::Schema("schema-registry framing is cut short".into());
    let mut rest = payload.get(5..).ok_or_else(framing)?;
    // Message indexes: a count, then that many; a count of 0 means the
    // first message of the schema.
    let count = varint(&mut rest).ok_or_else(framing)?;
    if count > 64 {
        return Err(DecodeError::Schema(
            "schema-registry framing names too many indexes".into(),
        ));
    }
    for _ in 0..count {
        varint(&mut rest).ok_or_else(framing)?;
    }
    Ok(rest)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            // Zig-zag, as the framing writes its signed indexes.
            return Some((value >> 1) ^ (value & 1).wrapping_neg());
        }
    }
    None
}

fn request_body(bytes: &[u8]) -> Result<Body, DecodeError> {
    let m = ModelInferRequest::decode(bytes)
        .map_err(|e| DecodeError::Schema(format!("ModelInferRequest: {e}")))?;
    Ok(Body {
        id: Some(m.id),
        model_name: Some(m.model_name),
        model_version: Some(m.model_version),
        inputs: Some(tensors(m.inputs, &m.raw_input_contents)?),
        ..Body::default()
    })
}

fn response_body(bytes: &[u8]) -> Result<Body, DecodeError> {
    let m = ModelInferResponse::decode(bytes)
        .map_err(|e| DecodeError::Schema(format!("ModelInferResponse: {e}")))?;
    Ok(Body {
        id: Some(m.id),
        model_name: Some(m.model_name),
        model_version: Some(m.model_version),
        outputs: Some(tensors(m.outputs, &m.raw_output_contents)?),
        ..Body::default()
    })
}

/// The tensors with their values, from the typed contents or, when the
/// message carries raw contents, from the raw bytes in tensor order.
fn tensors(tensors: Vec<InferTensor>, raw: &[Vec<u8>]) -> Result<Vec<Tensor>, DecodeError> {
    if !raw.is_empty() && raw.len() != tensors.len() {
        return Err(DecodeError::Schema(format!(
            "{} raw contents for {} tensors",
            raw.len(),
            tensors.len()
        )));
    }
    tensors
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let values = match raw.get(i) {
                Some(bytes) => raw_values(&t.datatype, bytes)?,
                None => typed_values(&t)?,
            };
            Ok(Tensor {
                name: t.name,
                shape: t.shape,
                datatype: t.datatype,
                data: Some(Value::Array(values)),
            })
        })
        .collect()
}

fn number(x: f64) -> Result<Value, DecodeError> {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| {
            DecodeError::InvalidValue("a tensor holds a value that is not finite".into())
        })
}

fn text(bytes: &[u8]) -> Result<Value, DecodeError> {
    std::str::from_utf8(bytes)
        .map(|s| Value::String(s.to_string()))
        .map_err(|_| {
            DecodeError::InvalidValue("a BYTES tensor holds bytes that are not UTF-8".into())
        })
}

fn typed_values(t: &InferTensor) -> Result<Vec<Value>, DecodeError> {
    let Some(c) = &t.contents else {
        return Ok(Vec::new());
    };
    Ok(match t.datatype.as_str() {
        "BOOL" => c.bool_contents.iter().map(|b| Value::Bool(*b)).collect(),
        "INT8" | "INT16" | "INT32" => c.int_contents.iter().map(|x| Value::from(*x)).collect(),
        "INT64" => c.int64_contents.iter().map(|x| Value::from(*x)).collect(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.iter().map(|x| Value::from(*x)).collect(),
        "UINT64" => c.uint64_contents.iter().map(|x| Value::from(*x)).collect(),
        "FP32" => c
            .fp32_contents
            .iter()
            .map(|x| number(f64::from(*x)))
            .collect::<Result<_, _>>()?,
        "FP64" => c
            .fp64_contents
            .iter()
            .map(|x| number(*x))
            .collect::<Result<_, _>>()?,
        "BYTES" => c
            .bytes_contents
            .iter()
            .map(|b| text(b))
            .collect::<Result<_, _>>()?,
        other => {
            return Err(DecodeError::Schema(format!(
                "datatype {:?} has no typed contents",
                truncated(other)
            )));
        }
    })
}

/// Raw contents: flattened, row-major, little-endian; `BYTES` elements
/// each behind a 4-byte little-endian length.
fn raw_values(datatype: &str, bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    if datatype == "BYTES" {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let cut = || DecodeError::Schema("raw BYTES contents are cut short".into());
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
            let len = u32::from_le_bytes(*len) as usize;
            let item = tail.get(..len).ok_or_else(cut)?;
            out.push(text(item)?);
            rest = &tail[len..];
        }
        return Ok(out);
    }
    let width = match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        other => {
            return Err(DecodeError::Schema(format!(
                "raw contents of datatype {:?} are not read",
                truncated(other)
            )));
        }
    };
    if bytes.len() % width != 0 {
        return Err(DecodeError::Schema(format!(
            "{} raw bytes are not whole {datatype} values",
            bytes.len()
        )));
    }
    bytes
        .chunks_exact(width)
        .map(|b| raw_value(datatype, b))
        .collect()
}

fn raw_value(datatype: &str, b: &[u8]) -> Result<Value, DecodeError> {
    let array = |b: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        a
    };
    Ok(match datatype {
        "BOOL" => Value::Bool(b[0] != 0),
        "INT8" => Value::from(b[0] as i8),
        "UINT8" => Value::from(b[0]),
        "INT16" => Value::from(i16::from_le_bytes([b[0], b[1]])),
        "UINT16" => Value::from(u16::from_le_bytes([b[0], b[1]])),
        "FP16" => number(half(u16::from_le_bytes([b[0], b[1]])))?,
        "INT32" => Value::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "UINT32" => Value::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "FP32" => number(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))?,
        "INT64" => Value::from(i64::from_le_bytes(array(b))),
        "UINT64" => Value::from(u64::from_le_bytes(array(b))),
        _ => number(f64::from_le_bytes(array(b)))?,
    })
}

/// An IEEE 754 half-precision value.
fn half(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FeatureValue, Probabilities};

    /// Made by `tests/fixtures/make_seldon_fixtures.py` with Google's
    /// protobuf runtime.
    const FIXTURES: &str = include_str!("../../../tests/fixtures/seldon.json");

    fn fixture(name: &str) -> (Vec<u8>, serde_json::Value) {
        let all: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        let hex = all[name].as_str().unwrap();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        (bytes, all)
    }

    fn decode(
        payload: &[u8],
        topic: &str,
        headers: &[(&str, &str)],
    ) -> Result<Decoded, DecodeError> {
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let msg = Message {
            payload,
            key: None,
            headers: &headers,
            topic,
            timestamp: Some("2026-11-29T10:00:00Z".parse().unwrap()),
        };
        SeldonDecoder::new(TensorConfig::default()).decode_message(&msg)
    }

    const INPUTS: &str = "seldon.fraud.model.income.inputs";
    const OUTPUTS: &str = "seldon.fraud.model.income.outputs";

    fn assert_inputs(events: &[crate::event::TelemetryEvent], all: &serde_json::Value) {
        assert_eq!(events.len(), 2);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.model, "income");
            for j in 0..3 {
                let want = all["x"][i][j].as_f64().unwrap();
                assert_eq!(
                    e.features[format!("x_{j}").as_str()],
                    FeatureValue::Number(want)
                );
            }
            let segment = all["segments"][i].as_str().unwrap().to_string();
            assert_eq!(e.features["segment"], FeatureValue::Text(segment.into()));
        }
    }

    #[test]
    fn typed_and_raw_requests_become_rows_keyed_by_x_request_id() {
        let (typed, all) = fixture("request_typed");
        let d = decode(&typed, INPUTS, &[("x-request-id", "abc")]).unwrap();
        assert_eq!(
            d.pairing.unwrap(),
            Pairing {
                key: "income\u{1f}abc".into(),
                side: Side::Request
            }
        );
        assert_inputs(&d.events, &all);
        assert_eq!(
            d.events[0].attributes.get("namespace"),
            Some(&FeatureValue::Text("fraud".into()))
        );

        let (raw, _) = fixture("request_raw");
        let d = decode(
            &raw,
            "anything",
            &[("seldon-infer-type", "proto/InferModelRequest")],
        )
        .unwrap();
        assert_eq!(
            d.pairing.as_ref().unwrap().key,
            "income\u{1f}r-2",
            "the id when no header names one"
        );
        assert_inputs(&d.events, &all);
        for (i, e) in d.events.iter().enumerate() {
            let tenure = all["tenure"][i].as_f64().unwrap();
            assert_eq!(e.features["tenure"], FeatureValue::Number(tenure));
            let half = all["score16"][i].as_f64().unwrap();
            assert_eq!(e.features["score16"], FeatureValue::Number(half));
        }
    }

    #[test]
    fn responses_framed_or_not_give_probabilities_label_and_version() {
        for name in ["response", "response_framed"] {
            let (bytes, all) = fixture(name);
            let d = decode(&bytes, OUTPUTS, &[("x-request-id", "abc")]).unwrap();
            assert_eq!(d.pairing.as_ref().unwrap().side, Side::Response);
            for (i, e) in d.events.iter().enumerate() {
                let p: Vec<f64> = all["probs"][i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(
                    e.output.probabilities,
                    Some(Probabilities::List(p)),
                    "{name}"
                );
                assert_eq!(e.output.label.as_deref(), all["predicted"][i].as_str());
                assert_eq!(e.model_version.as_deref(), Some("3"));
            }
        }
    }

    #[test]
    fn json_requests_are_read_as_the_header_says() {
        let body =
            br#"{"id":"j","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
        let d = decode(
            body,
            INPUTS,
            &[("seldon-infer-type", "json/inferModelRequest")],
        )
        .unwrap();
        assert_eq!(d.events[0].features["x_1"], FeatureValue::Number(2.0));
    }

    #[test]
    fn broken_messages_get_a_reason() {
        let (typed, _) = fixture("request_typed");
        let reason = |bytes: &[u8], topic: &str| {
            decode(bytes, topic, &[]).map_or_else(|e| e.reason(), |_| "ok")
        };
        assert_eq!(reason(&typed[..typed.len() - 3], INPUTS), "schema");
        assert_eq!(reason(&[0, 0, 0], INPUTS), "schema");
        assert_eq!(reason(&[0, 0, 0, 0, 42, 0xff], INPUTS), "schema");
        assert_eq!(reason(&typed, "not-seldon"), "schema");
        let mut raw = ModelInferRequest::decode(fixture("request_raw").0.as_slice()).unwrap();
        raw.raw_input_contents.pop();
        assert_eq!(reason(&raw.encode_to_vec(), INPUTS), "schema");
        raw.raw_input_contents = vec![vec![1, 2, 3]; 4];
        assert_eq!(reason(&raw.encode_to_vec(), INPUTS), "schema");
        let nan = ModelInferRequest {
            id: "n".into(),
            inputs: vec![InferTensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![1],
                contents: Some(InferTensorContents {
                    fp64_contents: vec![f64::NAN],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        assert_eq!(reason(&nan.encode_to_vec(), INPUTS), "invalid_value");
    }
}
