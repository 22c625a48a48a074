//! `oip-v2-json`: Open Inference Protocol (KServe V2, Triton) REST bodies
//! on a topic, the request and the response as two messages (see
//! `tensors` for how rows become events).
//!
//! - pair key: the body's `id`, else the `x-request-id` header, else the
//!   message key; a half with none is dead-lettered (`no_pair_key`).
//! - model: the body's `model_name` (responses carry it), else the
//!   `x-model-name` header, else the topic; the request's names the pair.
//! - version: the response's `model_version`.
//! - client: `[decode.tensors] client_headers` on the message.

use super::tensors::{Body, RowTemplate, TensorConfig, rows};
use super::{DecodeError, Decoded, Decoder, Message, Pairing};

pub struct OipJsonDecoder {
    config: TensorConfig,
}

impl OipJsonDecoder {
    pub fn new(config: TensorConfig) -> Self {
        Self { config }
    }
}

impl Decoder for OipJsonDecoder {
    fn name(&self) -> &'static str {
        "oip-v2-json"
    }

    fn decode_message(&self, msg: &Message<'_>) -> Result<Decoded, DecodeError> {
        let body = Body::parse(msg.payload)?;
        let side = body
            .side()
            .ok_or_else(|| DecodeError::Schema("body has neither inputs nor outputs".into()))?;
        let key = nonempty(body.id.as_deref())
            .or_else(|| nonempty(msg.header("x-request-id")))
            .or_else(|| nonempty(msg.key.and_then(|k| std::str::from_utf8(k).ok())))
            .ok_or_else(|| {
                DecodeError::NoPairKey("no id, x-request-id header or message key".into())
            })?
            .to_string();
        let model = nonempty(body.model_name.as_deref())
            .or_else(|| nonempty(msg.header("x-model-name")))
            .or_else(|| nonempty(Some(msg.topic)))
            .ok_or_else(|| DecodeError::InvalidValue("no model name".into()))?
            .to_string();
        let template = RowTemplate {
            version: body.model_version.clone(),
            ts: msg.timestamp.ok_or(DecodeError::NoTimestamp)?,
            request_id: Some(key.clone()),
            client_id: self.config.client(msg, None),
            attributes: self.config.attributes(msg, []),
            model,
        };
        let events = rows(
            &body,
            side,
            &template,
            self.config.models.get(&template.model),
        )?;
        Ok(Decoded {
            events,
            pairing: Some(Pairing { key, side }),
        })
    }
}

pub(super) fn nonempty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ModelTensors, Side};
    use crate::event::{FeatureValue, Probabilities};

    fn decode_with(config: TensorConfig, payload: &str) -> Result<Decoded, DecodeError> {
        let headers = vec![("x-client-id".to_string(), b"alice".to_vec())];
        let msg = Message {
            payload: payload.as_bytes(),
            key: None,
            headers: &headers,
            topic: "oip",
            timestamp: Some("2026-11-29T10:00:00Z".parse().unwrap()),
        };
        OipJsonDecoder::new(config).decode_message(&msg)
    }

    fn decode(payload: &str) -> Result<Decoded, DecodeError> {
        decode_with(TensorConfig::default(), payload)
    }

    /// The protocol's request shape: tensors of every kind, the batch as
    /// the first dimension, `data` flat or nested.
    #[test]
    fn a_request_becomes_one_event_per_row_of_every_input() {
        let d = decode(
            r#"{"id":"42","inputs":[
                {"name":"input0","shape":[2,2],"datatype":"UINT32","data":[1,2,3,4]},
                {"name":"age","shape":[2],"datatype":"FP64","data":[31.5,47]},
                {"name":"member","shape":[2,1],"datatype":"BOOL","data":[[true],[false]]},
                {"name":"city","shape":[2],"datatype":"BYTES","data":["Oslo","Lima"]}],
               "outputs":[{"name":"output0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            d.pairing,
            Some(Pairing {
                key: "42".into(),
                side: Side::Request
            })
        );
        assert_eq!(d.events.len(), 2);
        let e = &d.events[1];
        assert_eq!(e.model, "oip");
        assert_eq!(e.client_id.as_deref(), Some("alice"));
        assert_eq!(e.features["input0_0"], FeatureValue::Number(3.0));
        assert_eq!(e.features["input0_1"], FeatureValue::Number(4.0));
        assert_eq!(e.features["age"], FeatureValue::Number(47.0));
        assert_eq!(e.features["member"], FeatureValue::Bool(false));
        assert_eq!(e.features["city"], FeatureValue::Text("Lima".into()));
    }

    #[test]
    fn a_response_gives_probabilities_label_and_score_by_shape_or_by_config() {
        let body = r#"{"id":"42","model_name":"income","model_version":"7","outputs":[
            {"name":"probs","shape":[2,2],"datatype":"FP32","data":[[0.25,0.75],[0.5,0.5]]},
            {"name":"predicted","shape":[2],"datatype":"INT64","data":[1,0]},
            {"name":"margin","shape":[2,1],"datatype":"FP32","data":[0.5,0.0]}]}"#;
        let d = decode(body).unwrap();
        let e = &d.events[0];
        assert_eq!(e.model, "income");
        assert_eq!(e.model_version.as_deref(), Some("7"));
        assert_eq!(
            e.output.probabilities,
            Some(Probabilities::List(vec![0.25, 0.75]))
        );
        assert_eq!(e.output.label.as_deref(), Some("1"));
        assert_eq!(e.output.score, Some(0.5));

        let mut config = TensorConfig::default();
        config.models.insert(
            "income".into(),
            ModelTensors {
                probabilities: Some("probs".into()),
                classes: vec!["<=50K".into(), ">50K".into()],
                ..ModelTensors::default()
            },
        );
        let named = decode_with(config, body).unwrap();
        let Some(Probabilities::Named(p)) = &named.events[1].output.probabilities else {
            panic!("configured classes name the probabilities");
        };
        assert_eq!(p[">50K"], 0.5);
    }

    #[test]
    fn configured_columns_and_embedding_name_the_inputs() {
        let mut config = TensorConfig::default();
        config.models.insert(
            "oip".into(),
            ModelTensors {
                columns: [(
                    "x".to_string(),
                    vec!["age".to_string(), "income".to_string()],
                )]
                .into(),
                embedding: Some("emb".into()),
                ..ModelTensors::default()
            },
        );
        let body = r#"{"id":"1","inputs":[
            {"name":"x","shape":[1,2],"datatype":"FP32","data":[30,1000]},
            {"name":"emb","shape":[1,3],"datatype":"FP32","data":[0.1,0.2,0.3]}]}"#;
        let e = &decode_with(config.clone(), body).unwrap().events[0];
        assert_eq!(e.features["income"], FeatureValue::Number(1000.0));
        assert_eq!(e.embedding, Some(vec![0.1, 0.2, 0.3]));
        assert_eq!(e.features.len(), 2);
        let wrong =
            r#"{"id":"1","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
        assert_eq!(decode_with(config, wrong).unwrap_err().reason(), "schema");
    }

    /// Shapes a producer can send that do not describe their data.
    #[test]
    fn hostile_shapes_and_values_get_a_reason_not_a_panic() {
        let cases = [
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[9223372036854775807,9223372036854775807],"datatype":"FP32","data":[1]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[1,70000],"datatype":"FP32","data":[1]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[1],"datatype":"COMPLEX","data":[1]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
                "schema",
            ),
            (
                r#"{"id":"1","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"y","shape":[2],"datatype":"FP32","data":[1,2]}]}"#,
                "schema",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "no_pair_key",
            ),
            (r#"{"id":"1"}"#, "schema"),
            (
                r#"{"id":"1","model_name":"m","outputs":[{"name":"p","shape":[1,2],"datatype":"FP32","data":[2.0,-1.0]}]}"#,
                "ok",
            ),
        ];
        for (payload, want) in cases {
            let got = decode(payload).map_or_else(|e| e.reason(), |_| "ok");
            assert_eq!(got, want, "{payload}");
        }
        // Declared sizes that would cost far more than the message: refused
        // before anything is allocated from them.
        let wide_then_many = format!(
            r#"{{"id":"1","instances":[[{}]{}]}}"#,
            vec!["0"; 65_536].join(","),
            ",1".repeat(20_000)
        );
        assert_eq!(decode(&wide_then_many).unwrap_err().reason(), "schema");
        let long_id = format!(
            r#"{{"id":"{}","inputs":[{{"name":"x","shape":[5000],"datatype":"INT8","data":[{}]}}]}}"#,
            "i".repeat(2000),
            vec!["0"; 5000].join(",")
        );
        assert_eq!(decode(&long_id).unwrap_err().reason(), "invalid_value");
        let empty_wide =
            r#"{"id":"1","inputs":[{"name":"x","shape":[0,65536],"datatype":"BOOL","data":[]}]}"#;
        assert!(decode(empty_wide).unwrap().events.is_empty());
        let deep = format!(
            r#"{{"id":"1","inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(decode(&deep).unwrap_err().reason(), "schema");
    }
}
