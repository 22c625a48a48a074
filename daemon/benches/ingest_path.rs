//! `cargo bench --bench ingest_path`: what one core does per event before
//! scoring: decode a `modelwatch-json` message, check it against the door's
//! limits, and push it into its window (eight numeric features, windows of
//! 1,000). The baseline, run alternately in the same process on the same
//! messages, is a bare `serde_json::Value` parse: the least any JSON input
//! costs. Prints events/s for both and their ratio (medians of 7 runs).
//!
//! Then the serving formats (issue 13): the same rows as KServe logger
//! CloudEvents (binary mode, V2 bodies), as Open Inference Protocol bodies
//! and as Seldon's protobuf messages, a request and a response message per
//! row, decoded, checked at the door and joined; the ratio is against the native decoder on the same
//! rows in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use modelwatch::decode::{DecoderName, Limits, Message};
use modelwatch::event::{Positioned, SourcePos};
use modelwatch::join::{Half, JoinConfig, Joiner, Offered};
use modelwatch::window::{Progress, WindowKey, WindowSettings, Windower};

const EVENTS: usize = 200_000;

fn messages() -> Vec<Vec<u8>> {
    (0..EVENTS)
        .map(|i| {
            let f = |k: usize| ((i * 7919 + k * 104_729) % 10_000) as f64 / 1000.0;
            serde_json::json!({
                "model": "credit",
                "model_version": "v1",
                "ts": "2026-03-01T00:00:00Z",
                "request_id": format!("req-{i}"),
                "client_id": format!("c{}", i % 50),
                "features": {
                    "f0": f(0), "f1": f(1), "f2": f(2), "f3": f(3),
                    "f4": f(4), "f5": f(5), "f6": f(6), "f7": f(7),
                },
                "output": {"probabilities": [0.3, 0.7]},
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

fn decode_and_window(msgs: &[Vec<u8>]) -> Duration {
    let decoder = DecoderName::default().build(&Default::default());
    let limits = Limits::default();
    let mut windower = Windower::default();
    let key = WindowKey {
        model: "credit".into(),
        version: "v1".into(),
    };
    let settings = WindowSettings {
        count: 1000,
        duration: None,
    };
    windower.add_key(key.clone(), settings, Progress::default());
    let now = Instant::now();
    let start = Instant::now();
    let mut closed = 0;
    for (offset, m) in msgs.iter().enumerate() {
        limits.check_size(m).unwrap();
        for (index, event) in decoder.decode(m, None).unwrap().into_iter().enumerate() {
            limits.check(&event, None).unwrap();
            let pos = SourcePos {
                stream: "telemetry/0".into(),
                offset: offset as i64,
                index: index as i64,
            };
            closed += windower.push(&key, Positioned::new(event, pos), now).len();
        }
    }
    assert_eq!(closed, EVENTS / 1000);
    start.elapsed()
}

fn bare_parse(msgs: &[Vec<u8>]) -> Duration {
    let start = Instant::now();
    for m in msgs {
        black_box(serde_json::from_slice::<serde_json::Value>(m).unwrap());
    }
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One row as a message of a format: payload and headers.
type Wire = (Vec<u8>, Vec<(String, Vec<u8>)>);

const PAIRED_ROWS: usize = 50_000;

fn row(i: usize) -> [f64; 8] {
    std::array::from_fn(|k| ((i * 7919 + k * 104_729) % 10_000) as f64 / 1000.0)
}

/// Each row as a request and a response message of `format`.
fn serving_messages(format: DecoderName) -> Vec<Wire> {
    let mut out = Vec::with_capacity(2 * PAIRED_ROWS);
    for i in 0..PAIRED_ROWS {
        let id = format!("req-{i}");
        let request = serde_json::json!({"id": id, "inputs": [
            {"name": "x", "shape": [1, 8], "datatype": "FP64", "data": row(i)}]});
        let response = serde_json::json!({"id": id, "model_name": "credit", "model_version": "v1",
            "outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.3, 0.7]}]});
        for (body, kind) in [(request, "request"), (response, "response")] {
            let kind = format!("org.kubeflow.serving.inference.{kind}");
            let headers = match format {
                DecoderName::KserveCloudevents => [
                    ("ce_specversion", "1.0"),
                    ("ce_id", id.as_str()),
                    ("ce_type", kind.as_str()),
                    ("ce_inferenceservicename", "credit"),
                    ("ce_component", "predictor"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
                _ => Vec::new(),
            };
            let payload = match format {
                DecoderName::SeldonV2 => seldon_payload(&body),
                _ => body.to_string().into_bytes(),
            };
            let headers = match format {
                DecoderName::SeldonV2 => {
                    let infer_type = if kind.ends_with("request") {
                        "proto/InferModelRequest"
                    } else {
                        "proto/InferModelResponse"
                    };
                    vec![
                        ("x-request-id".to_string(), id.as_bytes().to_vec()),
                        (
                            "seldon-infer-type".to_string(),
                            infer_type.as_bytes().to_vec(),
                        ),
                    ]
                }
                _ => headers,
            };
            out.push((payload, headers));
        }
    }
    out
}

/// The OIP JSON body as Seldon's protobuf message, typed contents.
fn seldon_payload(body: &serde_json::Value) -> Vec<u8> {
    use modelwatch::decode::{
        InferTensor, InferTensorContents, ModelInferRequest, ModelInferResponse,
    };
    use prost::Message as _;
    let tensor = |t: &serde_json::Value| {
        let data: Vec<f64> = serde_json::from_value(t["data"].clone()).unwrap();
        let shape: Vec<i64> = serde_json::from_value(t["shape"].clone()).unwrap();
        InferTensor {
            name: t["name"].as_str().unwrap().into(),
            datatype: "FP64".into(),
            shape,
            contents: Some(InferTensorContents {
                fp64_contents: data,
                ..Default::default()
            }),
        }
    };
    let id = body["id"].as_str().unwrap().to_string();
    match body.get("inputs") {
        Some(inputs) => ModelInferRequest {
            model_name: "credit".into(),
            id,
            inputs: inputs.as_array().unwrap().iter().map(tensor).collect(),
            ..Default::default()
        }
        .encode_to_vec(),
        None => ModelInferResponse {
            model_name: "credit".into(),
            model_version: "v1".into(),
            id,
            outputs: body["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(tensor)
                .collect(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

/// Decode, door and join of every message; returns the time and the
/// events made.
fn decode_and_join(format: DecoderName, msgs: &[Wire]) -> (Duration, usize) {
    let decoder = format.build(&Default::default());
    let limits = Limits::default();
    let mut joiner: Joiner<()> = Joiner::new(JoinConfig::default());
    let time: chrono::DateTime<chrono::Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    let ts = Some(time);
    let now = Instant::now();
    let start = Instant::now();
    let mut events = 0;
    for (offset, (payload, headers)) in msgs.iter().enumerate() {
        limits.check_size(payload).unwrap();
        let msg = Message {
            payload,
            key: None,
            headers,
            topic: "telemetry",
            timestamp: ts,
        };
        let decoded = decoder.decode_message(&msg).unwrap();
        for e in &decoded.events {
            limits.check(e, ts).unwrap();
        }
        let Some(pairing) = decoded.pairing else {
            events += decoded.events.len();
            continue;
        };
        let half = Half {
            pairing,
            events: decoded.events,
            pos: SourcePos {
                stream: "telemetry/0".into(),
                offset: offset as i64,
                index: 0,
            },
            time,
            bytes: payload.len(),
            carried: (),
        };
        if let Offered::Paired { events: e, .. } = joiner.offer(half, now) {
            events += e.len();
        }
    }
    (start.elapsed(), black_box(events))
}

/// The serving formats against the native one, on the same rows.
fn formats() {
    let native: Vec<Wire> = messages()[..PAIRED_ROWS]
        .iter()
        .map(|m| (m.clone(), Vec::new()))
        .collect();
    let formats = [
        DecoderName::KserveCloudevents,
        DecoderName::OipV2Json,
        DecoderName::SeldonV2,
    ];
    let wires: Vec<Vec<Wire>> = formats.iter().map(|f| serving_messages(*f)).collect();
    let mut base = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); formats.len()];
    for _ in 0..7 {
        let (d, n) = decode_and_join(DecoderName::ModelwatchJson, &native);
        assert_eq!(n, PAIRED_ROWS);
        base.push(d);
        for (k, f) in formats.iter().enumerate() {
            let (d, n) = decode_and_join(*f, &wires[k]);
            assert_eq!(n, PAIRED_ROWS, "{f:?} pairs every row");
            times[k].push(d);
        }
    }
    let rate = |d: Duration| PAIRED_ROWS as f64 / d.as_secs_f64();
    let b = median(base);
    println!("modelwatch-json: {:.0} events/s on one core", rate(b));
    for (f, t) in formats.iter().zip(times) {
        let t = median(t);
        println!(
            "{f:?} (decode + door + join, two messages per event): {:.0} events/s; {:.2}x the native decoder's time",
            rate(t),
            t.as_secs_f64() / b.as_secs_f64()
        );
    }
}

fn main() {
    let msgs = messages();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        bare.push(bare_parse(&msgs));
        ours.push(decode_and_window(&msgs));
    }
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    let (o, b) = (median(ours), median(bare));
    println!(
        "decode + limits + window: {:.0} events/s on one core; bare JSON parse: {:.0} events/s; ratio {:.2}",
        rate(o),
        rate(b),
        o.as_secs_f64() / b.as_secs_f64()
    );
    formats();
}
