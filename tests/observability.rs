//! The monitor observed from outside: OTLP spans into an in-process
//! collector, `/metrics` parsed as Prometheus text, health endpoints.
//! Broker and database come from `tests/run.sh`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain HTTP/1.0 GET: (status, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_metrics_and_health_tell_what_happened() {
    // The collector.
    let collector = Collector::default();
    // Bound here, before its port is handed on: a port only probed as free
    // can be taken by another socket before a spawned server binds it, and
    // then the daemon exports into nothing and no span arrives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_port = listener.local_addr().unwrap().port();
    let server = TraceServiceServer::new(collector.clone());
    let collecting = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let topic = unique("telemetry");
    let dlq = unique("dead_letter");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let db = fresh_database(&unique("mw_obs")).await;
    let tmp = std::env::temp_dir().join(unique("mw_obs"));
    std::fs::create_dir_all(&tmp).unwrap();

    let (reference, window, windows) = (200, 100, 4);
    let mut payloads = telemetry(31, reference, window, windows, 2..4);
    let bad = 3;
    for i in 0..bad {
        payloads.insert(reference + 50 + i * 60, format!("not json {i}"));
    }
    let producer = producer();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    for p in &payloads {
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(traceparent.as_str()),
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .payload(p.as_str())
                    .key("k")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let metrics_port = free_port();
    let config = kafka_config(&tmp, &topic, &dlq, &unique("g"), &db, reference, window);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("[telemetry]\nlisten = \"\"", &format!("[telemetry]\nlisten = \"127.0.0.1:{metrics_port}\"\n[telemetry.otlp]\nendpoint = \"http://127.0.0.1:{otlp_port}\"\nprotocol = \"grpc\""));
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_windows(&pool, &mut daemon, windows as i64, Duration::from_secs(180)).await;

    // Health: alive and ready (partition assignment is polled every 5 s).
    assert_eq!(http_get(metrics_port, "/healthz").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = http_get(metrics_port, "/readyz").await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Metrics: parsed as Prometheus text, equal to what was sent and rejected.
    // Lag is sampled every 5 s, the first sample possibly before the stream
    // was read: wait for a sample of 0 (the assertions below say what is
    // wrong if none comes).
    let deadline = Instant::now() + Duration::from_secs(20);
    let topic_label = format!("topic=\"{topic}\"");
    let caught_up = |body: &str| {
        body.lines().any(|l| {
            l.starts_with("modelwatch_kafka_consumer_lag{")
                && l.contains(&topic_label)
                && l.ends_with(" 0")
        })
    };
    let body = loop {
        let (code, body) = http_get(metrics_port, "/metrics").await;
        assert_eq!(code, 200);
        if caught_up(&body) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus text");
    let good = (reference + window * windows) as f64;
    // Ready, as /readyz said above.
    assert_eq!(sample(&scrape, "modelwatch_ready", None), 1.0);
    assert_eq!(
        sample(&scrape, "modelwatch_messages_total", None),
        good + bad as f64
    );
    assert_eq!(
        sample(&scrape, "modelwatch_events_decoded_total", None),
        good
    );
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_messages_rejected_total",
            Some(("reason", "invalid_json"))
        ),
        bad as f64
    );
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_windows_scored_total",
            Some(("model", "credit"))
        ),
        windows as f64
    );
    assert_eq!(
        sample(&scrape, "modelwatch_reference_events_total", None),
        reference as f64
    );
    // The device in use, and what the config asked for (the tests run on
    // the CPU backend by request, which no fallback rule fires on).
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_device_info",
            Some(("requested", "cpu"))
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "modelwatch_build_info", None), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_alerts_total",
            Some(("status", "firing"))
        ),
        1.0,
        "x1 crossed in windows 2 and 3: one incident, fired once"
    );
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_detector_duration_seconds_count",
            Some(("detector", "feature_drift"))
        ),
        windows as f64
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "modelwatch_kafka_consumer_lag"),
        "lag per partition is exported:\n{body}\n{}",
        daemon.log_text()
    );
    assert_eq!(
        sample(
            &scrape,
            "modelwatch_kafka_consumer_lag",
            Some(("topic", topic.as_str()))
        ),
        0.0,
        "everything produced was consumed"
    );

    // Traces: flushed at shutdown into the collector.
    let status = daemon.terminate();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collector.spans.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "window") || Instant::now() > deadline {
            break spans;
        }
        drop(spans);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !collecting.is_finished(),
        "the collector stopped: {:?}",
        collecting.await
    );
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE_ID)
        .collect();
    assert!(
        !in_trace.is_empty(),
        "no span joined the producer's trace; got {} spans:\n{}",
        spans.len(),
        daemon.log_text()
    );
    let process = in_trace
        .iter()
        .find(|s| s.name == format!("process {topic}"))
        .expect("a process span in the producer's trace");
    assert_eq!(
        hex(&process.parent_span_id),
        PARENT_SPAN,
        "process span is a child of the message's span"
    );
    let attr = |s: &Span, k: &str| -> Option<String> {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{:?}", v.value))
    };
    assert!(attr(process, "messaging.system").is_some_and(|v| v.contains("kafka")));
    assert!(attr(process, "messaging.destination.name").is_some_and(|v| v.contains(&topic)));
    for name in ["decode", "window", "score", "persist", "notify"] {
        assert!(
            in_trace.iter().any(|s| s.name == name),
            "no {name} span in the trace"
        );
    }
    let score = in_trace.iter().find(|s| s.name == "score").unwrap();
    assert!(attr(score, "device").is_some_and(|v| v.contains("flex")));
    assert!(
        attr(score, "detectors")
            .is_some_and(|v| v.contains("feature_drift=") && v.contains("output_distribution="))
    );

    // Alerts carry the trace id of the window that fired them: the finding
    // and the episode it paged as.
    let rows = sqlx::query("SELECT trace_id FROM alerts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(
            r.get::<Option<String>, _>("trace_id").as_deref(),
            Some(TRACE_ID)
        );
    }
}

/// The alerting rules for the monitor itself (`deploy/prometheus/`) parse,
/// pass their own unit tests under `promtool test rules`, and name only
/// metrics the daemon exports, so a renamed metric cannot silently leave a
/// rule watching nothing.
#[test]
fn prometheus_rules_check_test_and_match_the_exported_metrics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "modelwatch.rules.yml"],
        ["test", "rules", "modelwatch.rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool not found: tests/run.sh installs it (Debian package prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(format!("{dir}/modelwatch.rules.yml")).unwrap();
    let exposition = common::full_exposition();
    let mut named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("modelwatch_"))
        .collect();
    named.sort();
    named.dedup();
    assert!(named.len() >= 7, "{named:?}");
    for name in named {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exposition.contains(&format!("# TYPE {family} ")),
            "rule names {name}, which the daemon does not export:\n{exposition}"
        );
    }
}
