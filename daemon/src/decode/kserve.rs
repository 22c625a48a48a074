//! `kserve-cloudevents`: KServe's inference logger on Kafka. Each request
//! and each response is one CloudEvent, paired by its `id`:
//!
//! - binary mode: the attributes are `ce_*` headers (`ce_id`, `ce_type`,
//!   `ce_time`, `ce_inferenceservicename`, `ce_component`, `ce_metadata`)
//!   and the payload is the body;
//! - structured mode: the payload is the whole event as JSON, the body in
//!   `data` (or `data_base64`).
//!
//! `ce_type` ends in `.request` or `.response`. The body is V1
//! (`instances`/`predictions`) or V2 (Open Inference Protocol); see
//! `tensors`. The model is the InferenceService; a transformer's or
//! explainer's traffic (`ce_component` other than `predictor`) is the model
//! `<service>/<component>`, windowed apart from the predictor it wraps. The
//! request id is the event's id. The logger copies selected request headers
//! into `ce_metadata`, where `[decode.tensors] client_headers` are looked
//! up. KServe logs no response for a failed request: its request is left
//! unpaired (see `[join] unpaired`).

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::oip::nonempty;
use super::tensors::{Body, RowTemplate, TensorConfig, rows, truncated};
use super::{DecodeError, Decoded, Decoder, Message, PAIR_KEY_SEPARATOR, Pairing, Side};

pub struct KServeDecoder {
    config: TensorConfig,
}

impl KServeDecoder {
    pub fn new(config: TensorConfig) -> Self {
        Self { config }
    }
}

/// The CloudEvent attributes the decoder reads, and the body.
struct CloudEvent {
    id: String,
    kind: String,
    time: Option<String>,
    service: Option<String>,
    component: Option<String>,
    namespace: Option<String>,
    endpoint: Option<String>,
    metadata: Option<String>,
    body: Body,
}

impl Decoder for KServeDecoder {
    fn name(&self) -> &'static str {
        "kserve-cloudevents"
    }

    fn decode_message(&self, msg: &Message<'_>) -> Result<Decoded, DecodeError> {
        let ce = match msg.header("ce_specversion") {
            Some(_) => binary(msg)?,
            None => structured(msg.payload)?,
        };
        let side = if ce.kind.ends_with(".request") {
            Side::Request
        } else if ce.kind.ends_with(".response") {
            Side::Response
        } else {
            return Err(DecodeError::Schema(format!(
                "cloudevent type {:?} is neither a request nor a response",
                truncated(&ce.kind)
            )));
        };
        let template = RowTemplate {
            model: model(&ce)?,
            version: ce.body.model_version.clone(),
            ts: time(ce.time.as_deref(), msg.timestamp)?,
            request_id: Some(ce.id.clone()),
            client_id: self.config.client(msg, ce.metadata.as_deref()),
            attributes: self.config.attributes(
                msg,
                [
                    ("namespace", ce.namespace.as_deref()),
                    ("component", ce.component.as_deref()),
                    ("endpoint", ce.endpoint.as_deref()),
                ],
            ),
        };
        let events = rows(
            &ce.body,
            side,
            &template,
            self.config.models.get(&template.model),
        )?;
        // Ids are unique per service, not across services.
        let key = format!("{}{PAIR_KEY_SEPARATOR}{}", template.model, ce.id);
        Ok(Decoded {
            events,
            pairing: Some(Pairing { key, side }),
        })
    }
}

fn binary(msg: &Message<'_>) -> Result<CloudEvent, DecodeError> {
    let attribute = |name: &str| nonempty(msg.header(name)).map(str::to_string);
    Ok(CloudEvent {
        id: attribute("ce_id").ok_or_else(|| DecodeError::NoPairKey("no ce_id header".into()))?,
        kind: attribute("ce_type")
            .ok_or_else(|| DecodeError::Schema("no ce_type header".into()))?,
        time: attribute("ce_time"),
        service: attribute("ce_inferenceservicename"),
        component: attribute("ce_component"),
        namespace: attribute("ce_namespace"),
        endpoint: attribute("ce_endpoint"),
        metadata: attribute("ce_metadata"),
        body: Body::parse(msg.payload)?,
    })
}

fn structured(payload: &[u8]) -> Result<CloudEvent, DecodeError> {
    let mut envelope: serde_json::Map<String, Value> = match Body::parse_value(payload)? {
        Value::Object(m) => m,
        _ => return Err(DecodeError::Schema("a cloudevent is a json object".into())),
    };
    if !envelope.contains_key("specversion") {
        return Err(DecodeError::Schema(
            "neither ce_specversion header (binary mode) nor specversion (structured mode)".into(),
        ));
    }
    let text = |name: &str| match envelope.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        // Extensions are strings, but a JSON writer may inline an object.
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        _ => None,
    };
    let id = text("id").ok_or_else(|| DecodeError::NoPairKey("no id attribute".into()))?;
    let kind = text("type").ok_or_else(|| DecodeError::Schema("no type attribute".into()))?;
    let (time, service, component, metadata) = (
        text("time"),
        text("inferenceservicename"),
        text("component"),
        text("metadata"),
    );
    let (namespace, endpoint) = (text("namespace"), text("endpoint"));
    let body = match (envelope.remove("data"), envelope.remove("data_base64")) {
        (Some(Value::String(s)), None) => Body::parse(s.as_bytes())?,
        (Some(data), None) => Body::from_value(data)?,
        (None, Some(Value::String(b64))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| DecodeError::InvalidValue(format!("data_base64: {e}")))?;
            Body::parse(&bytes)?
        }
        _ => {
            return Err(DecodeError::Schema(
                "a cloudevent needs one of data or data_base64".into(),
            ));
        }
    };
    Ok(CloudEvent {
        id,
        kind,
        time,
        service,
        component,
        namespace,
        endpoint,
        metadata,
        body,
    })
}

fn model(ce: &CloudEvent) -> Result<String, DecodeError> {
    let service = ce
        .service
        .as_deref()
        .or(ce.body.model_name.as_deref())
        .ok_or_else(|| DecodeError::InvalidValue("no inferenceservicename or model_name".into()))?;
    Ok(match ce.component.as_deref() {
        None | Some("predictor") => service.to_string(),
        Some(component) => format!("{service}/{component}"),
    })
}

fn time(
    attribute: Option<&str>,
    kafka: Option<DateTime<Utc>>,
) -> Result<DateTime<Utc>, DecodeError> {
    match attribute {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| DecodeError::InvalidValue(format!("ce_time: {e}"))),
        None => kafka.ok_or(DecodeError::NoTimestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TensorConfig;
    use crate::event::FeatureValue;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The attributes KServe's logger sets (pkg/logger/worker.go), in the
    /// CloudEvents Kafka binding's `ce_` spelling.
    fn logger_headers(kind: &str, component: &str) -> Vec<(String, Vec<u8>)> {
        headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "5f3e4bb0-2f1d-4c1e-9f5b-0c7a1d2e3f40"),
            ("ce_type", kind),
            ("ce_source", "http://localhost:9081/"),
            ("ce_time", "2026-11-29T10:00:00.5Z"),
            ("ce_inferenceservicename", "sklearn-iris"),
            ("ce_namespace", "default"),
            ("ce_component", component),
            ("ce_endpoint", "default"),
            ("ce_metadata", r#"{"X-Client-Id":["tenant-7"]}"#),
            ("content-type", "application/json"),
        ])
    }

    fn decode(payload: &str, headers: &[(String, Vec<u8>)]) -> Result<Decoded, DecodeError> {
        let msg = Message {
            payload: payload.as_bytes(),
            key: None,
            headers,
            topic: "kserve-logs",
            timestamp: None,
        };
        KServeDecoder::new(TensorConfig::default()).decode_message(&msg)
    }

    #[test]
    fn binary_mode_v1_halves_carry_rows_ids_and_the_client() {
        let request = decode(
            r#"{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}"#,
            &logger_headers("org.kubeflow.serving.inference.request", "predictor"),
        )
        .unwrap();
        let pairing = request.pairing.clone().unwrap();
        assert_eq!(pairing.side, Side::Request);
        assert_eq!(
            pairing.key,
            "sklearn-iris\u{1f}5f3e4bb0-2f1d-4c1e-9f5b-0c7a1d2e3f40"
        );
        assert_eq!(request.events.len(), 2);
        let e = &request.events[1];
        assert_eq!(e.model, "sklearn-iris");
        assert_eq!(e.client_id.as_deref(), Some("tenant-7"));
        assert_eq!(
            e.request_id.as_deref(),
            Some("5f3e4bb0-2f1d-4c1e-9f5b-0c7a1d2e3f40")
        );
        assert_eq!(e.ts.timestamp_millis() % 1000, 500);
        assert_eq!(e.features["instances_0"], FeatureValue::Number(6.0));
        assert_eq!(e.features["instances_3"], FeatureValue::Number(1.6));
        // The rest of what names the service is kept as attributes.
        let attributes: Vec<(&str, &FeatureValue)> =
            e.attributes.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let text = |s: &str| FeatureValue::Text(s.into());
        assert_eq!(
            attributes,
            [
                ("component", &text("predictor")),
                ("endpoint", &text("default")),
                ("namespace", &text("default")),
            ]
        );

        let response = decode(
            r#"{"predictions": [1, 2]}"#,
            &logger_headers("org.kubeflow.serving.inference.response", "predictor"),
        )
        .unwrap();
        assert_eq!(response.pairing.unwrap().side, Side::Response);
        let labels: Vec<_> = response
            .events
            .iter()
            .map(|e| e.output.label.clone())
            .collect();
        assert_eq!(labels, vec![Some("1".into()), Some("2".into())]);
    }

    #[test]
    fn structured_mode_reads_data_and_data_base64_and_names_the_component() {
        let body = r#"{"id":"r1","model_name":"income","model_version":"3","outputs":[{"name":"probabilities","shape":[2,2],"datatype":"FP32","data":[[0.9,0.1],[0.2,0.8]]}]}"#;
        let inline = format!(
            r#"{{"specversion":"1.0","id":"ev-1","type":"org.kubeflow.serving.inference.response","source":"x","inferenceservicename":"income","component":"transformer","time":"2026-11-29T10:00:00Z","data":{body}}}"#
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        let encoded = format!(
            r#"{{"specversion":"1.0","id":"ev-1","type":"org.kubeflow.serving.inference.response","source":"x","inferenceservicename":"income","component":"transformer","time":"2026-11-29T10:00:00Z","data_base64":"{b64}"}}"#
        );
        for payload in [inline, encoded] {
            let d = decode(&payload, &[]).unwrap();
            assert_eq!(
                d.pairing.as_ref().unwrap().key,
                "income/transformer\u{1f}ev-1"
            );
            assert_eq!(d.events.len(), 2);
            assert_eq!(d.events[0].model, "income/transformer");
            assert_eq!(d.events[0].model_version.as_deref(), Some("3"));
            assert_eq!(
                d.events[1].output.probabilities,
                Some(crate::event::Probabilities::List(vec![0.2, 0.8]))
            );
        }
    }

    #[test]
    fn what_is_not_a_kserve_half_gets_a_reason() {
        let reason =
            |payload: &str, h: &[(String, Vec<u8>)]| decode(payload, h).unwrap_err().reason();
        let mut no_id = logger_headers("org.kubeflow.serving.inference.request", "predictor");
        no_id.retain(|(k, _)| k != "ce_id");
        assert_eq!(reason(r#"{"instances":[[1]]}"#, &no_id), "no_pair_key");
        let other = logger_headers("com.example.other", "predictor");
        assert_eq!(reason(r#"{"instances":[[1]]}"#, &other), "schema");
        assert_eq!(reason(r#"{"instances":[[1]]}"#, &[]), "schema");
        let h = logger_headers("org.kubeflow.serving.inference.request", "predictor");
        assert_eq!(reason("not json", &h), "invalid_json");
        assert_eq!(reason(r#"{"instances":[[1,2],[3]]}"#, &h), "schema");
        let mut bad_time = h.clone();
        bad_time.push(("ce_time".into(), b"yesterday".to_vec()));
        assert_eq!(reason(r#"{"instances":[[1]]}"#, &bad_time), "invalid_value");
        // Every row would copy the namespace: refused before rows are made.
        let rows = vec!["[1]"; 10_000].join(",");
        let namespace = "n".repeat(60_000);
        let structured = format!(
            r#"{{"specversion":"1.0","id":"e","type":"org.kubeflow.serving.inference.request","source":"x","inferenceservicename":"s","time":"2026-11-29T10:00:00Z","namespace":"{namespace}","data":{{"instances":[{rows}]}}}}"#
        );
        assert_eq!(reason(&structured, &[]), "invalid_value");
    }
}
