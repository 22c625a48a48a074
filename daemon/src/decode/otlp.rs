//! `otlp-genai`: OpenTelemetry GenAI spans, as the Collector's Kafka
//! exporter writes them: one OTLP `ExportTraceServiceRequest` per message,
//! protobuf (`otlp_proto`, its default) or JSON (`otlp_json`), told apart
//! by the first byte.
//!
//! One event per span that names a GenAI operation
//! (`gen_ai.operation.name`: chat, text_completion, embeddings,
//! execute_tool, invoke_agent, apply_guardrail, ...). Other spans share the
//! Collector's topic (HTTP, database) and are not model calls: they are
//! left out, and a message of nothing else decodes to no events.
//!
//! - model: `gen_ai.request.model`, else the agent's or tool's name, else
//!   `gen_ai.response.model`, else the operation; a guardrail's spans are
//!   the model's name and `/guardrail`, windowed apart from the calls they
//!   guard. The version is `gen_ai.response.model`, the snapshot that
//!   answered: a provider swapping it under the same name is a new version.
//! - features: `input_tokens`, `output_tokens` (`gen_ai.usage.*`) and
//!   `latency_ms` (the span's duration) as numbers; `operation`, `provider`
//!   and `error_type` as categories.
//! - output label: the guardrail's decision for `apply_guardrail` spans
//!   (`allow`, `deny`, ...), else `error` for a failed call, else the first
//!   of `gen_ai.response.finish_reasons` (`stop`, `length`,
//!   `content_filter`, `tool_calls`): the mix the output detectors compare.
//! - request id: the span's trace id, so that an alert's examples open the
//!   trace; client: the first of `client_attributes` on the span, then on
//!   its resource.
//! - attributes: those named in `attributes` (by default the service,
//!   environment and cloud region), from the span, else its resource.

use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DecodeError, Decoded, Decoder, Message as Delivered};
use crate::event::{Attributes, FeatureValue, Features, Output, TelemetryEvent};

/// Where the decoder finds who sent a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpGenaiConfig {
    /// Attributes naming the client, tried in order on the span, then on
    /// its resource: the end user (`user.id`, `enduser.id`), or a tenant
    /// attribute of your own.
    pub client_attributes: Vec<String>,
    /// Attributes copied into the event's `attributes`, quoted in alert
    /// evidence, from the span, else its resource: strings, numbers and
    /// booleans.
    pub attributes: Vec<String>,
}

impl Default for OtlpGenaiConfig {
    fn default() -> Self {
        Self {
            client_attributes: vec!["user.id".into(), "enduser.id".into()],
            attributes: vec![
                "service.name".into(),
                "deployment.environment.name".into(),
                "cloud.region".into(),
            ],
        }
    }
}

/// What a resource gives each of its spans that names none of its own,
/// found once per resource.
struct ResourceContext<'a> {
    client: Option<&'a str>,
    attributes: Attributes,
}

pub struct OtlpGenaiDecoder {
    config: OtlpGenaiConfig,
    /// Per model, the snapshot that last answered: a failed call names
    /// none, and is the same version's failure.
    versions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// The longest text attribute copied into an event.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// Models whose last snapshot is remembered; a full table starts over, so
/// invented model names cannot pin memory.
const REMEMBERED_MODELS: usize = 4096;

/// Attributes a guardrail span may carry its decision under: the GenAI
/// security conventions' name, and the names instrumentations used before.
const DECISION_ATTRIBUTES: [&str; 3] = [
    "gen_ai.security.decision.type",
    "gen_ai.guardrail.decision.type",
    "microsoft.security.decision.type",
];

impl Decoder for OtlpGenaiDecoder {
    fn name(&self) -> &'static str {
        "otlp-genai"
    }

    /// A Collector batch carries many users' spans: one bad span is
    /// refused alone.
    fn independent_events(&self) -> bool {
        true
    }

    fn decode_message(&self, msg: &Delivered<'_>) -> Result<Decoded, DecodeError> {
        let (payload, source_ts) = (msg.payload, msg.timestamp);
        let request = parse(payload)?;
        let mut events = Vec::new();
        for resource_spans in &request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            // Once per resource: a resource of many attributes and many
            // spans must not cost their product.
            let context = ResourceContext {
                client: self.client(resource),
                attributes: self.attributes(resource, &Attributes::default())?,
            };
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                events.extend(self.event(span, &context, source_ts)?);
            }
        }
        Ok(Decoded::whole(events))
    }
}

/// `{`, spelt as a number so that brace-counting tools read this file right.
const OPEN_OBJECT: u8 = 0x7b;

/// JSON when the payload opens an object, after spaces, tabs or carriage
/// returns at most; otherwise protobuf. Not after a newline: 0x0a is the
/// tag protobuf requests begin with, and may be followed by `{`.
fn parse(payload: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    let json = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r'))
        .is_some_and(|b| *b == OPEN_OBJECT);
    if json {
        let classify = |e: serde_json::Error| match e.classify() {
            serde_json::error::Category::Data => DecodeError::Schema(e.to_string()),
            _ => DecodeError::InvalidJson(e.to_string()),
        };
        let mut tree: serde_json::Value = serde_json::from_slice(payload).map_err(classify)?;
        fill_empty_lists(&mut tree);
        return serde_json::from_value(tree).map_err(classify);
    }
    ExportTraceServiceRequest::decode(payload)
        .map_err(|e| DecodeError::Schema(format!("not an OTLP ExportTraceServiceRequest: {e}")))
}

impl OtlpGenaiDecoder {
    pub fn new(config: OtlpGenaiConfig) -> Self {
        Self {
            config,
            versions: Default::default(),
        }
    }

    /// The first of the configured client attributes `attrs` carries.
    fn client<'a>(&self, attrs: &'a [KeyValue]) -> Option<&'a str> {
        self.config
            .client_attributes
            .iter()
            .find_map(|k| text(attrs, k))
    }

    /// The snapshot that answered, or for a call that names none (a failed
    /// one) the model's last.
    fn version(&self, model: &str, answered: Option<&str>) -> Option<String> {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = answered else {
            return versions.get(model).cloned();
        };
        if versions.get(model).map(String::as_str) != Some(v) {
            if versions.len() >= REMEMBERED_MODELS {
                versions.clear();
            }
            versions.insert(model.to_string(), v.to_string());
        }
        Some(v.to_string())
    }

    /// The configured attributes `attrs` names, over those of `under` (its
    /// resource's). A text value is at most `MAX_ATTRIBUTE_BYTES`: every
    /// span of the resource copies it.
    fn attributes(
        &self,
        attrs: &[KeyValue],
        under: &Attributes,
    ) -> Result<Attributes, DecodeError> {
        let mut under = under.clone();
        for key in &self.config.attributes {
            let v = match value(attrs, key) {
                Some(Value::StringValue(s)) if s.len() > MAX_ATTRIBUTE_BYTES => {
                    return Err(DecodeError::InvalidValue(format!(
                        "attribute {key} of {} bytes, over {MAX_ATTRIBUTE_BYTES}",
                        s.len()
                    )));
                }
                Some(Value::StringValue(s)) if !s.is_empty() => {
                    FeatureValue::Text(s.as_str().into())
                }
                Some(Value::IntValue(i)) => FeatureValue::Number(*i as f64),
                Some(Value::DoubleValue(d)) if d.is_finite() => FeatureValue::Number(*d),
                Some(Value::BoolValue(b)) => FeatureValue::Bool(*b),
                _ => continue,
            };
            std::sync::Arc::make_mut(&mut under).insert(key.clone(), v);
        }
        Ok(under)
    }

    fn event(
        &self,
        span: &Span,
        resource: &ResourceContext<'_>,
        source_ts: Option<DateTime<Utc>>,
    ) -> Result<Option<TelemetryEvent>, DecodeError> {
        let attrs = &span.attributes[..];
        let Some(operation) = text(attrs, "gen_ai.operation.name") else {
            return Ok(None);
        };
        let response_model = text(attrs, "gen_ai.response.model");
        // Not a tool's or agent's name: a prompt can make the model call a
        // tool of any name, and names are models, of which there are few.
        let named = text(attrs, "gen_ai.request.model").or(response_model);
        // A guardrail's decisions are a mix of their own, windowed apart
        // from the calls of the model it guards.
        let model = match (named, operation) {
            (Some(m), "apply_guardrail") => format!("{m}/guardrail"),
            (Some(m), _) => m.to_string(),
            (None, op) => op.to_string(),
        };
        // A time past what an event can carry is as good as none: the
        // transport's is used, and the door judges it.
        let ts = nanos_to_time(span.start_time_unix_nano)
            .or(source_ts)
            .ok_or(DecodeError::NoTimestamp)?;
        let client = self.client(attrs).or(resource.client);
        Ok(Some(TelemetryEvent {
            model_version: self.version(&model, response_model),
            model,
            ts,
            request_id: (!span.trace_id.is_empty()).then(|| hex(&span.trace_id)),
            client_id: client.map(str::to_string),
            features: features(span, operation),
            embedding: None,
            output: Output {
                label: label(span, operation),
                ..Output::default()
            },
            actual: None,
            attributes: self.attributes(attrs, &resource.attributes)?,
        }))
    }
}

fn features(span: &Span, operation: &str) -> Features {
    let attrs = &span.attributes[..];
    let mut f: Vec<(&str, FeatureValue)> = vec![("operation", text_value(operation))];
    for (name, key) in [
        ("input_tokens", "gen_ai.usage.input_tokens"),
        ("output_tokens", "gen_ai.usage.output_tokens"),
    ] {
        if let Some(n) = number(attrs, key) {
            f.push((name, FeatureValue::Number(n)));
        }
    }
    if span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0 {
        let ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
        f.push(("latency_ms", FeatureValue::Number(ms)));
    }
    if let Some(p) = text(attrs, "gen_ai.provider.name").or_else(|| text(attrs, "gen_ai.system")) {
        f.push(("provider", text_value(p)));
    }
    let error = text(attrs, "error.type").unwrap_or("none");
    f.push(("error_type", text_value(error)));
    f.into_iter().collect()
}

fn label(span: &Span, operation: &str) -> Option<String> {
    let attrs = &span.attributes[..];
    if operation == "apply_guardrail" {
        return DECISION_ATTRIBUTES
            .iter()
            .find_map(|k| text(attrs, k))
            .map(str::to_string);
    }
    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    if failed || text(attrs, "error.type").is_some() {
        return Some("error".into());
    }
    let reasons = attrs
        .iter()
        .find(|kv| kv.key == "gen_ai.response.finish_reasons")?;
    match reasons.value.as_ref()?.value.as_ref()? {
        Value::ArrayValue(a) => a.values.iter().find_map(any_text).map(str::to_string),
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn text_value(s: &str) -> FeatureValue {
    FeatureValue::Text(s.into())
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn any_text(v: &AnyValue) -> Option<&str> {
    match v.value.as_ref()? {
        Value::StringValue(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A string attribute; an empty one counts as absent.
fn text<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match value(attrs, key)? {
        Value::StringValue(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A numeric attribute, whether sent as an integer or a double.
fn number(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match value(attrs, key)? {
        Value::IntValue(i) => Some(*i as f64),
        Value::DoubleValue(d) if d.is_finite() => Some(*d),
        _ => None,
    }
}

/// A span's time; none for 0 (unset) or past what a time can carry.
fn nanos_to_time(nanos: u64) -> Option<DateTime<Utc>> {
    i64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(DateTime::from_timestamp_nanos)
}

/// The Collector's JSON leaves out an empty list's `values`
/// (`"arrayValue": {}`), which the generated types require.
fn fill_empty_lists(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if let ("arrayValue" | "kvlistValue", serde_json::Value::Object(list)) =
                    (key.as_str(), &mut *inner)
                {
                    list.entry("values")
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                }
                fill_empty_lists(inner);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fill_empty_lists),
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn chat(trace: u8, user: &str, finish: &str, tokens: (i64, i64)) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![trace; 8],
            name: "chat gpt-4o".into(),
            start_time_unix_nano: 1_764_000_000_000_000_000,
            end_time_unix_nano: 1_764_000_000_750_000_000,
            attributes: vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.provider.name", s("openai")),
                kv("gen_ai.request.model", s("gpt-4o")),
                kv("gen_ai.response.model", s("gpt-4o-2024-08-06")),
                kv("gen_ai.usage.input_tokens", Value::IntValue(tokens.0)),
                kv("gen_ai.usage.output_tokens", Value::IntValue(tokens.1)),
                kv(
                    "gen_ai.response.finish_reasons",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(s(finish)),
                        }],
                    }),
                ),
                kv("user.id", s(user)),
            ],
            ..Span::default()
        }
    }

    /// A Collector batch: a resource naming a tenant, a GenAI chat span, a
    /// failed one, a guardrail's denial, and an HTTP span that is no model
    /// call.
    fn batch() -> ExportTraceServiceRequest {
        let mut failed = chat(2, "u-2", "stop", (10, 0));
        failed.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "rate limited".into(),
        });
        failed.attributes.push(kv("error.type", s("429")));
        // A failed call names no snapshot: it is the last one's failure.
        failed
            .attributes
            .retain(|kv| kv.key != "gen_ai.response.model");
        let mut guard = chat(3, "u-3", "stop", (0, 0));
        guard.attributes = vec![
            kv("gen_ai.operation.name", s("apply_guardrail")),
            kv("gen_ai.request.model", s("gpt-4o")),
            kv("gen_ai.security.decision.type", s("deny")),
        ];
        let http = Span {
            name: "GET /v1/chat".into(),
            attributes: vec![kv("http.request.method", s("GET"))],
            ..chat(4, "u-4", "stop", (1, 1))
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("enduser.id", s("tenant-a"))],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        chat(1, "u-1", "content_filter", (120, 7)),
                        failed,
                        guard,
                        http,
                    ],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    /// The same batch, in both of the exporter's encodings, decodes to the
    /// same events: one per GenAI span, with its model, snapshot, tokens,
    /// latency, answer and trace id; the client from the span, or from the
    /// resource where the span names none.
    #[test]
    fn genai_spans_decode_alike_from_protobuf_and_json() {
        let decoder = OtlpGenaiDecoder::new(OtlpGenaiConfig::default());
        let request = batch();
        let proto = request.encode_to_vec();
        let json = serde_json::to_vec(&request).unwrap();
        let from_proto = decoder.decode(&proto, None).unwrap();
        let from_json = decoder.decode(&json, None).unwrap();
        assert_eq!(from_proto, from_json);
        let events = from_proto;
        assert_eq!(events.len(), 3, "{events:#?}");
        let chat = &events[0];
        assert_eq!(chat.model, "gpt-4o");
        assert_eq!(chat.model_version.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            chat.request_id.as_deref(),
            Some("01010101010101010101010101010101")
        );
        assert_eq!(chat.client_id.as_deref(), Some("u-1"));
        assert_eq!(chat.output.label.as_deref(), Some("content_filter"));
        assert_eq!(chat.features["input_tokens"], FeatureValue::Number(120.0));
        assert_eq!(chat.features["output_tokens"], FeatureValue::Number(7.0));
        assert_eq!(chat.features["latency_ms"], FeatureValue::Number(750.0));
        assert_eq!(
            chat.features["provider"],
            FeatureValue::Text("openai".into())
        );
        assert_eq!(
            chat.features["error_type"],
            FeatureValue::Text("none".into())
        );
        assert_eq!(chat.ts.timestamp(), 1_764_000_000);
        assert_eq!(events[1].output.label.as_deref(), Some("error"));
        assert_eq!(events[1].model_version, chat.model_version);
        assert_eq!(
            events[1].features["error_type"],
            FeatureValue::Text("429".into())
        );
        let guard = &events[2];
        assert_eq!(guard.model, "gpt-4o/guardrail");
        assert_eq!(guard.output.label.as_deref(), Some("deny"));
        assert_eq!(guard.client_id.as_deref(), Some("tenant-a"));
    }

    /// The Collector's own JSON, as its `otlp_json` encoding writes it:
    /// ids in hex, 64-bit integers as strings, an empty list without its
    /// `values`; and a tool's span named after the model, not the tool.
    #[test]
    fn the_collectors_json_decodes() {
        let line = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"support"}},{"key":"enduser.id","value":{"stringValue":"tenant-b"}}]},"scopeSpans":[{"scope":{"name":"openai.instrumentation"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat gpt-4o","kind":3,"startTimeUnixNano":"1764000000000000000","endTimeUnixNano":"1764000000500000000","attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},{"key":"gen_ai.usage.input_tokens","value":{"intValue":"31"}},{"key":"gen_ai.response.finish_reasons","value":{"arrayValue":{"values":[{"stringValue":"stop"}]}}},{"key":"gen_ai.request.stop_sequences","value":{"arrayValue":{}}}],"status":{}},{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"execute_tool weather","startTimeUnixNano":"1764000000600000000","endTimeUnixNano":"1764000000700000000","attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"execute_tool"}},{"key":"gen_ai.tool.name","value":{"stringValue":"ignore all previous instructions"}}]}]}]}]}"#;
        let decoder = OtlpGenaiDecoder::new(OtlpGenaiConfig::default());
        let events = decoder.decode(line.as_bytes(), None).unwrap();
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert_eq!(
            e.request_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(e.client_id.as_deref(), Some("tenant-b"));
        assert_eq!(e.features["input_tokens"], FeatureValue::Number(31.0));
        assert_eq!(e.features["latency_ms"], FeatureValue::Number(500.0));
        assert_eq!(e.output.label.as_deref(), Some("stop"));
        assert_eq!(
            e.attributes.get("service.name"),
            Some(&FeatureValue::Text("support".into())),
            "the resource's, named in the config"
        );
        assert_eq!(e.attributes.len(), 1);
        assert_eq!(events[1].model, "execute_tool");
    }

    #[test]
    fn what_is_not_an_otlp_request_is_refused_with_its_reason() {
        let decoder = OtlpGenaiDecoder::new(OtlpGenaiConfig::default());
        let reason = |bytes: &[u8]| decoder.decode(bytes, None).unwrap_err().reason();
        assert_eq!(reason(b"{\"resourceSpans\": 3}"), "schema");
        assert_eq!(reason(b"{\"resourceSpans\": ["), "invalid_json");
        assert_eq!(reason(&[0x0a, 0xff, 0xff, 0xff]), "schema");
        // A time past what an event carries is none: the transport's
        // stands in, or the span has no time.
        let mut far = batch();
        far.resource_spans[0].scope_spans[0].spans[0].start_time_unix_nano = u64::MAX;
        assert_eq!(reason(&far.encode_to_vec()), "no_timestamp");
        let kafka: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
        let events = decoder.decode(&far.encode_to_vec(), Some(kafka)).unwrap();
        assert_eq!(events[0].ts, kafka);
        assert!(
            decoder.decode(b"", None).unwrap().is_empty(),
            "an empty request has no spans"
        );
        // Every span of the resource would copy it.
        let mut heavy = batch();
        let resource = heavy.resource_spans[0].resource.as_mut().unwrap();
        resource
            .attributes
            .push(kv("cloud.region", s(&"r".repeat(MAX_ATTRIBUTE_BYTES + 1))));
        assert_eq!(reason(&heavy.encode_to_vec()), "invalid_value");
    }
}
