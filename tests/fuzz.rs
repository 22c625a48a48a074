//! Generated hostile input, through the decoder and the door and through the
//! whole daemon (file source, SQLite store). Every input gets an outcome
//! (events, or a refusal with its reason), never a panic; what passes the
//! door stores and loads again.
//!
//! CI runs a bounded pass. The long run:
//! `MODELWATCH_FUZZ_INPUTS=10000000 cargo test --release --test fuzz -- --ignored --nocapture`

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use modelwatch::decode::{DecoderName, Limits};
use modelwatch::event::TelemetryEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ATOMS: &[&str] = &[
    "0",
    "-0",
    "1e308",
    "-1e308",
    "1e999",
    "NaN",
    "Infinity",
    "4.9e-324",
    "2.2250738585072014e-308",
    "true",
    "null",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"é\"",
    "\"\\u001b[31m\"",
    "[]",
    "{}",
    "\"2026-11-28T00:00:00Z\"",
    "\"+262142-12-31T23:59:59Z\"",
    "\"-4713-01-01T00:00:00Z\"",
    "\"1970-01-01T00:00:00Z\"",
    "\"not a time\"",
    "-1",
    "1.5",
    "[0.5,0.5]",
    "[1.5]",
    "[-0.1,1.1]",
    "{\"a\":0.2,\"b\":0.8}",
    "[[[[[[[[[[[1]]]]]]]]]]]",
];
const KEYS: &[&str] = &[
    "model",
    "model_version",
    "ts",
    "request_id",
    "client_id",
    "features",
    "embedding",
    "output",
    "actual",
    "attributes",
    "probabilities",
    "label",
    "score",
    "x1",
    "x2",
    "extra",
];

fn atom(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => format!("\"{}\"", "m".repeat(rng.random_range(0..600))),
        1 => {
            let d = rng.random_range(0..160);
            format!("{}1{}", "[".repeat(d), "]".repeat(d))
        }
        2 => rng.random::<f64>().to_string(),
        3 => (rng.random::<i64>()).to_string(),
        _ => ATOMS[rng.random_range(0..ATOMS.len())].to_string(),
    }
}

/// A well-formed event of model `m{k}`, then mutated.
fn event(rng: &mut StdRng) -> String {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    fields.insert("model".into(), format!("\"m{}\"", rng.random_range(0..4)));
    fields.insert("ts".into(), "\"2026-11-28T00:00:00Z\"".into());
    fields.insert(
        "features".into(),
        format!(
            "{{\"x1\":{},\"x2\":\"c{}\"}}",
            rng.random::<f64>(),
            rng.random_range(0..3)
        ),
    );
    fields.insert("output".into(), "{\"probabilities\":[0.3,0.7]}".into());
    for _ in 0..rng.random_range(0..4) {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let value = match rng.random_range(0..3) {
            0 => format!(
                "{{\"{}\":{}}}",
                KEYS[rng.random_range(0..KEYS.len())],
                atom(rng)
            ),
            _ => atom(rng),
        };
        fields.insert(key.into(), value);
    }
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// One message: an event, an array of them, or bytes mangled after the fact.
fn message(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = match rng.random_range(0..5) {
        0 => {
            let n = rng.random_range(0..5);
            format!(
                "[{}]",
                (0..n).map(|_| event(rng)).collect::<Vec<_>>().join(",")
            )
        }
        _ => event(rng),
    }
    .into_bytes();
    if rng.random_bool(0.3) && !bytes.is_empty() {
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[i] = rng.random(),
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, rng.random()),
            }
            if bytes.is_empty() {
                break;
            }
        }
    }
    // Keep one message per line for the file source.
    bytes.retain(|b| *b != b'\n');
    bytes
}

/// Decodes `n` generated messages; panics name the seed and the input.
fn decode_pass(seed: u64, n: u64) -> BTreeMap<String, u64> {
    decode_with(DecoderName::ModelwatchJson, message, seed, n)
}

/// Decodes `n` messages that `message` generates with `format`.
fn decode_with(
    format: DecoderName,
    message: fn(&mut StdRng) -> Vec<u8>,
    seed: u64,
    n: u64,
) -> BTreeMap<String, u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let decoder = format.build(&Default::default());
    let limits = Limits::default();
    let now: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        let msg = message(&mut rng);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            limits.check_size(&msg)?;
            let events = decoder.decode(&msg, Some(now))?;
            for e in &events {
                limits.check(e, Some(now))?;
            }
            Ok::<_, modelwatch::decode::DecodeError>(events)
        }));
        let Ok(result) = result else {
            panic!(
                "input {i} (seed {seed}) panicked: {:?}",
                String::from_utf8_lossy(&msg)
            );
        };
        let key = match result {
            Ok(events) => {
                // What passes the door stores and loads again: a reference
                // is the JSON array of its events.
                let stored = serde_json::to_string(&events).unwrap();
                let loaded: Vec<TelemetryEvent> = serde_json::from_str(&stored)
                    .unwrap_or_else(|e| panic!("input {i} (seed {seed}) does not load: {e}"));
                assert_eq!(loaded.len(), events.len());
                format!("events={}", events.len().min(2))
            }
            Err(e) => e.reason().to_string(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    outcomes
}

#[test]
fn generated_messages_get_an_outcome_and_never_a_panic() {
    let outcomes = decode_pass(1, 50_000);
    eprintln!("{outcomes:?}");
    // The generator reaches both sides of the door.
    for key in [
        "events=1",
        "events=2",
        "invalid_json",
        "invalid_value",
        "schema",
        "timestamp_out_of_range",
    ] {
        assert!(
            outcomes.get(key).copied().unwrap_or(0) > 0,
            "{key} never happened: {outcomes:?}"
        );
    }
}

/// An OTLP attribute of a hostile kind: any type where a string or a
/// count belongs, numbers at the edges, names of any length.
fn otlp_value(rng: &mut StdRng) -> otlp::Value {
    match rng.random_range(0..6) {
        0 => otlp::Value::IntValue(
            *[i64::MIN, -1, 0, 7, i64::MAX]
                .get(rng.random_range(0..5))
                .unwrap(),
        ),
        1 => otlp::Value::DoubleValue(
            *[f64::NAN, f64::INFINITY, -0.0, 1e308, 3.5]
                .get(rng.random_range(0..5))
                .unwrap(),
        ),
        2 => otlp::Value::BoolValue(rng.random()),
        3 => otlp::Value::ArrayValue(otlp::ArrayValue {
            values: (0..rng.random_range(0..3))
                .map(|_| otlp::AnyValue {
                    value: Some(otlp::Value::StringValue(atom_text(rng))),
                })
                .collect(),
        }),
        _ => otlp::Value::StringValue(atom_text(rng)),
    }
}

/// `key` holding a hostile value.
fn otlp_attribute(rng: &mut StdRng, key: &str) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(otlp_value(rng)),
        }),
        ..Default::default()
    }
}

fn atom_text(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 => String::new(),
        1 => "x".repeat(rng.random_range(0..5000)),
        2 => "\u{0}\u{1b}[31m".into(),
        3 => "chat".into(),
        _ => format!("m{}", rng.random_range(0..3)),
    }
}

/// A Collector batch of spans whose GenAI attributes hold anything, at
/// any time, encoded as protobuf or JSON, and sometimes mangled.
fn otlp_message(rng: &mut StdRng) -> Vec<u8> {
    let keys = [
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.response.finish_reasons",
        "gen_ai.security.decision.type",
        "error.type",
        "user.id",
    ];
    let spans = (0..rng.random_range(0..4))
        .map(|_| otlp::Span {
            trace_id: (0..rng.random_range(0..20)).map(|_| rng.random()).collect(),
            start_time_unix_nano: *[0, 1, 1_764_000_000_000_000_000, u64::MAX]
                .get(rng.random_range(0..4))
                .unwrap(),
            end_time_unix_nano: rng.random(),
            attributes: keys
                .iter()
                .filter(|_| rng.random_bool(0.7))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|k| otlp_attribute(rng, k))
                .collect(),
            ..Default::default()
        })
        .collect();
    let request = otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: ["user.id", "enduser.id", "service.name"]
                    .iter()
                    .map(|k| otlp_attribute(rng, k))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut bytes = if rng.random_bool(0.5) {
        use prost::Message;
        request.encode_to_vec()
    } else {
        serde_json::to_vec(&request).unwrap()
    };
    if rng.random_bool(0.3) && !bytes.is_empty() {
        let i = rng.random_range(0..bytes.len());
        bytes[i] = rng.random();
    }
    if rng.random_bool(0.05) {
        // A protobuf request may begin `0x0a 0x7b`: a newline, then `{`.
        bytes.splice(0..0, [0x0a, b'{']);
    }
    bytes
}

mod otlp {
    pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, KeyValue, any_value::Value,
    };
    pub use opentelemetry_proto::tonic::resource::v1::Resource;
    pub use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
}

/// Spans of any shape through `otlp-genai` and the door: every message an
/// outcome, never a panic, and what passes stores and loads again.
#[test]
fn generated_otlp_spans_get_an_outcome_and_never_a_panic() {
    let outcomes = decode_with(DecoderName::OtlpGenai, otlp_message, 4, 20_000);
    eprintln!("{outcomes:?}");
    for key in [
        "events=0",
        "events=1",
        "events=2",
        "invalid_value",
        "schema",
    ] {
        assert!(
            outcomes.get(key).copied().unwrap_or(0) > 0,
            "{key} never happened: {outcomes:?}"
        );
    }
}

const DATATYPES: &[&str] = &[
    "BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "COMPLEX", "",
];

/// An Open Inference Protocol tensor whose shape, datatype and data may
/// disagree, with names and values of hostile kinds.
fn oip_tensor(rng: &mut StdRng) -> String {
    let rows = rng.random_range(0..4);
    let width = rng.random_range(1..4);
    let shape = match rng.random_range(0..8) {
        0 => "[-1,2]".to_string(),
        1 => "[9223372036854775807,9223372036854775807]".to_string(),
        2 => "[]".to_string(),
        3 => format!("[{rows}]"),
        _ => format!("[{rows},{width}]"),
    };
    let values: Vec<String> = (0..rows * width)
        .map(|_| match rng.random_range(0..6) {
            0 => atom(rng),
            1 => "true".to_string(),
            2 => format!("\"{}\"", atom_text(rng).replace('"', "")),
            _ => rng.random::<f64>().to_string(),
        })
        .collect();
    let data = if rng.random_bool(0.3) {
        format!("[[{}]]", values.join(","))
    } else {
        format!("[{}]", values.join(","))
    };
    let name = match rng.random_range(0..5) {
        0 => atom_text(rng).replace('"', ""),
        _ => format!("t{}", rng.random_range(0..3)),
    };
    format!(
        r#"{{"name":"{name}","shape":{shape},"datatype":"{}","data":{data}}}"#,
        DATATYPES[rng.random_range(0..DATATYPES.len())]
    )
}

/// An OIP request or response body, then mangled like `message`'s.
fn oip_message(rng: &mut StdRng) -> Vec<u8> {
    let tensors: Vec<String> = (0..rng.random_range(0..4))
        .map(|_| oip_tensor(rng))
        .collect();
    let side = if rng.random_bool(0.5) {
        "inputs"
    } else {
        "outputs"
    };
    let mut bytes = format!(
        r#"{{"id":"{}","model_name":"m{}","{side}":[{}]}}"#,
        rng.random_range(0..1000),
        rng.random_range(0..3),
        tensors.join(",")
    )
    .into_bytes();
    if rng.random_bool(0.2) && !bytes.is_empty() {
        let i = rng.random_range(0..bytes.len());
        bytes[i] = rng.random();
    }
    bytes.retain(|b| *b != b'\n');
    bytes
}

/// Tensors of any shape through `oip-v2-json` and the door.
#[test]
fn generated_oip_tensors_get_an_outcome_and_never_a_panic() {
    let outcomes = decode_with(DecoderName::OipV2Json, oip_message, 6, 20_000);
    eprintln!("{outcomes:?}");
    for key in [
        "events=0",
        "events=1",
        "events=2",
        "invalid_json",
        "invalid_value",
        "schema",
    ] {
        assert!(
            outcomes.get(key).copied().unwrap_or(0) > 0,
            "{key} never happened: {outcomes:?}"
        );
    }
}

#[test]
#[ignore = "the long run: set MODELWATCH_FUZZ_INPUTS"]
fn generated_messages_long_run() {
    let n: u64 = std::env::var("MODELWATCH_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let started = std::time::Instant::now();
    let outcomes = decode_pass(2, n);
    println!(
        "{n} inputs in {:.1} s: {outcomes:?}",
        started.elapsed().as_secs_f64()
    );
}

/// The whole daemon on a file of generated messages: it exits 0, every
/// refused line is in the dead-letter file, and a second run reprocesses
/// nothing.
#[test]
fn the_daemon_survives_a_file_of_generated_messages() {
    let n: usize = std::env::var("MODELWATCH_FUZZ_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let dir = std::env::temp_dir().join(common::unique("mw_fuzz"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let lines: Vec<Vec<u8>> = (0..n).map(|_| message(&mut rng)).collect();
    let input = dir.join("fuzz.ndjson");
    std::fs::write(&input, lines.join(&b'\n')).unwrap();
    let dead = dir.join("dead.ndjson");
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let run = || {
        Command::new(common::daemon_binary())
            .args(["run", "--file"])
            .arg(&input)
            .env("MODELWATCH_STORE__URL", &store)
            .env("MODELWATCH_REFERENCE__SIZE", "50")
            .env("MODELWATCH_WINDOWS__COUNT", "50")
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_TELEMETRY__LISTEN", "")
            .env("MODELWATCH_SOURCE__FILE__DEAD_LETTER_PATH", &dead)
            .env_remove("MODELWATCH_CONFIG")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = common::succeeded(&out);
    let dead_lines = std::fs::read_to_string(&dead)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let blank = lines.iter().filter(|l| l.trim_ascii().is_empty()).count();
    let messages = n - blank;
    assert!(
        stdout.contains(&format!("summary: {messages} messages")),
        "{stdout}"
    );
    let rejected: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rejected messages (dead-lettered): "))
        .map(|l| {
            l.split(", ")
                .map(|p| p.rsplit('=').next().unwrap().parse::<u64>().unwrap())
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(rejected as usize, dead_lines, "{stdout}");
    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(stdout.contains("0 windows scored"), "{stdout}");
}
