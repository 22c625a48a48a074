//! The daemon end to end against a real Kafka-protocol broker (tansu) and a
//! real PostgreSQL, both started by `tests/run.sh`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use sqlx::Row;
use sqlx::postgres::PgPool;

const REFERENCE: usize = 300;
const WINDOW: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn known_shift_alerts_exactly_and_bad_messages_are_dead_lettered() {
    let KafkaCase {
        topic,
        dlq,
        db,
        dir,
        ..
    } = KafkaCase::new("mw_shift").await;
    let tmp = dir.as_path();

    // Windows 0-3 clean, 4-7 with x1 shifted; one malformed message in window 2.
    let mut payloads = telemetry(11, REFERENCE, WINDOW, 8, 4..8);
    payloads.insert(
        REFERENCE + 2 * WINDOW + 17,
        r#"{"model": "credit", "features": {"x1": "#.to_string(),
    );
    // Sent with the daemon's own `replay` command: the first half from a
    // file, the rest from standard input.
    let half = payloads.len() / 2;
    for (part, from_stdin) in [(&payloads[..half], false), (&payloads[half..], true)] {
        let file = tmp.join(format!("telemetry-{from_stdin}.ndjson"));
        std::fs::write(&file, part.join("\n")).unwrap();
        let mut replay = std::process::Command::new(daemon_binary());
        replay.args(["replay", "--topic", &topic]);
        if from_stdin {
            replay.arg("-").stdin(std::fs::File::open(&file).unwrap());
        } else {
            replay.arg(&file);
        }
        let out = replay
            .env("MODELWATCH_SOURCE__KAFKA__BROKERS", brokers())
            // One record per batch, for tansu (README, Development).
            .env(
                "MODELWATCH_SOURCE__KAFKA__PROPERTIES__batch.num.messages",
                "1",
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("sent {} messages", part.len()))
        );
    }

    let config = kafka_config(&tmp, &topic, &dlq, &unique("g"), &db, REFERENCE, WINDOW);
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_windows(&pool, &mut daemon, 8, Duration::from_secs(180)).await;
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_text()
    );

    let expected: Vec<(i64, String)> = (4..8).map(|w| (w, "x1".to_string())).collect();
    assert_eq!(
        alert_cells(&pool).await,
        expected,
        "feature drift must be exactly x1 in windows 4-7"
    );
    // Other detectors may see the same shift (x1 moves the feature rows out
    // of distribution), but only where it is.
    let any = crossings(&pool, "").await;
    assert!(
        any.iter().all(|(w, _)| (4..8).contains(w)),
        "crossings outside the shifted windows: {any:?}"
    );
    // One drift incident: pending at window 4, firing from window 5 (two
    // windows past threshold), still firing at the end; whatever else opened
    // did so inside the shift.
    let (drift, other): (Vec<_>, Vec<_>) = incidents(&pool)
        .await
        .into_iter()
        .partition(|i| i.0.contains("/feature_drift/"));
    assert_eq!(
        drift,
        vec![(
            "credit/v1/feature_drift/x1".to_string(),
            "firing".to_string(),
            4,
            7
        )]
    );
    assert!(
        other.iter().all(|i| (4..8).contains(&i.2)),
        "incidents outside the shift: {other:?}"
    );

    // Every window has all eight scores and exactly WINDOW events: KS on
    // x1, x2 and chi2 on the segment; KS and Welch on the max probability
    // (two classes); expected accuracy; class mix; out of distribution.
    // From the sixth on, five stored windows make a past, and the class
    // mix is judged against it too (`class_prior`).
    let rows = sqlx::query("SELECT seq, n_events, (SELECT COUNT(*) FROM scores s WHERE s.window_seq = w.seq) AS k FROM windows w ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<i64, _>("seq"), i as i64);
        assert_eq!(r.get::<i64, _>("n_events"), WINDOW as i64, "window {i}");
        let k = 8 + i64::from(i >= 5);
        assert_eq!(r.get::<i64, _>("k"), k, "scores of window {i}");
    }
    // The class mix's Jensen-Shannon distance is recorded beside its test,
    // not gating on a reference this small.
    let mix = sqlx::query(
        "SELECT effect_name, effect_value, effect_gating FROM scores WHERE detector = 'output_distribution' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        mix.get::<Option<String>, _>("effect_name").as_deref(),
        Some("jensen_shannon")
    );
    assert!(
        mix.get::<Option<f64>, _>("effect_value")
            .is_some_and(|v| v >= 0.0)
    );
    assert_eq!(mix.get::<Option<bool>, _>("effect_gating"), Some(false));
    let alert =
        sqlx::query("SELECT severity, status, p_value, threshold, state::text AS ev FROM alerts")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(alert.get::<f64, _>("p_value") < alert.get::<f64, _>("threshold"));
    assert_eq!(alert.get::<String, _>("status"), "firing");
    assert!(
        alert.get::<String, _>("ev").contains("req-"),
        "evidence names sample requests"
    );

    // The dashboards' queries run against demo data in tests/dashboards.rs.

    // The malformed message is in the dead-letter topic with its reason.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq_reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq.as_str()]).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a dead letter within 30 s")
        .expect("dead letter");
    assert_eq!(
        msg.payload().unwrap(),
        br#"{"model": "credit", "features": {"x1": "#
    );
    let headers = msg.headers().expect("dead letter has headers");
    let reason = headers
        .iter()
        .find(|h| h.key == "modelwatch.reason")
        .and_then(|h| h.value)
        .expect("reason header");
    assert_eq!(reason, b"invalid_json");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_daemon_restarts_without_loss_or_duplicates() {
    let KafkaCase {
        topic,
        dlq,
        db,
        dir: tmp,
    } = KafkaCase::new("mw_crash").await;
    let windows = 10usize;
    let payloads = telemetry(23, REFERENCE, WINDOW, windows, 3..6);
    let producer = producer();
    // First part ends in the middle of window 4.
    let split = REFERENCE + 4 * WINDOW + WINDOW / 2;
    produce(&producer, &topic, &payloads[..split]).await;

    let group = unique("g");
    let config = kafka_config(&tmp, &topic, &dlq, &group, &db, REFERENCE, WINDOW);
    let pool = PgPool::connect(&db).await.unwrap();
    let mut first = Daemon::start(&config, tmp.join("first.log"));
    wait_for_windows(&pool, &mut first, 4, Duration::from_secs(180)).await;
    first.kill(); // SIGKILL: no shutdown hook, no final commit
    // The dead member keeps its partition until its session (6 s here) times
    // out, as on any Kafka broker; tansu evicts it when the next member joins.
    tokio::time::sleep(Duration::from_secs(7)).await;

    produce(&producer, &topic, &payloads[split..]).await;
    let mut second = Daemon::start(&config, tmp.join("second.log"));
    wait_for_windows(&pool, &mut second, windows as i64, Duration::from_secs(180)).await;
    // Let it settle: nothing more may appear.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.terminate();

    let rows = sqlx::query("SELECT seq, n_events FROM windows ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.get("seq")).collect();
    assert_eq!(
        seqs,
        (0..windows as i64).collect::<Vec<_>>(),
        "each window exactly once"
    );
    for r in &rows {
        assert_eq!(
            r.get::<i64, _>("n_events"),
            WINDOW as i64,
            "no event lost or counted twice"
        );
    }
    let scores: i64 = sqlx::query("SELECT COUNT(*) AS n FROM scores")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    // Eight per window, and the class mix against the stored past from the
    // sixth window on: the past is read from the store, so a restart
    // judges against the same windows and adds none.
    assert_eq!(scores, 8 * windows as i64 + (windows as i64 - 5));
    let expected: Vec<(i64, String)> = (3..6).map(|w| (w, "x1".to_string())).collect();
    assert_eq!(
        alert_cells(&pool).await,
        expected,
        "no alert condition lost or duplicated across the crash"
    );
    // Shift in windows 3-5, clean 6-9: fired at 4, resolved after three
    // clean windows at 8; exactly one incident.
    assert_eq!(
        incidents(&pool).await,
        vec![(
            "credit/v1/feature_drift/x1".to_string(),
            "resolved".to_string(),
            3,
            8
        )]
    );
    // ... paged as one episode, opened and resolved once.
    assert_eq!(
        episodes(&pool).await,
        vec![(
            "credit/v1/episode/all".to_string(),
            "resolved".to_string(),
            3,
            8
        )]
    );
    let refs: i64 = sqlx::query("SELECT COUNT(*) AS n FROM model_references")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(refs, 1);
    // What was calibrated on the reference is stored beside it (JSONB).
    let space: Option<String> = sqlx::query(
        "SELECT calibration->'out_of_distribution'->0->>'space' AS s FROM model_references",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("s");
    assert_eq!(space.as_deref(), Some("features"));
    assert!(
        second.log_text().contains("using stored reference"),
        "restart reuses the stored reference"
    );
}

/// A dead-letter topic that does not exist would hold the stream at the
/// first undecodable message; the daemon refuses to start instead, and says
/// which topic to create.
#[tokio::test]
async fn a_missing_dead_letter_topic_stops_the_start_with_its_name() {
    let topic = unique("telemetry");
    create_topic(&topic, 1).await;
    let dlq = unique("missing_dead_letter");
    let db = fresh_database(&unique("mw_nodlq")).await;
    let tmp = std::env::temp_dir().join(unique("mw_nodlq"));
    std::fs::create_dir_all(&tmp).unwrap();
    let config = kafka_config(&tmp, &topic, &dlq, &unique("g"), &db, REFERENCE, WINDOW);
    // Brokers that create topics on demand would make the check pass
    // vacuously; this one must not have created it.
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "daemon started without its dead-letter topic; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = daemon.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&dlq) && log.contains("create it"), "{log}");
}

/// A producer that sends messages of up to 3 MB.
fn big_producer() -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "3000000")
        .create()
        .unwrap()
}

/// The dead-letter topic's first record, with its headers.
async fn first_dead_letter(dlq: &str, within: Duration) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq_reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq]).unwrap();
    let msg = tokio::time::timeout(within, consumer.recv())
        .await
        .expect("a dead letter in time")
        .expect("dead letter");
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    (msg.payload().unwrap_or_default().to_vec(), headers)
}

/// A message larger than the dead-letter producer may send (1 MB by
/// default) used to fail its delivery for good and hold the stream there;
/// it is now refused as `too_large` and dead-lettered in part, and the
/// stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_dead_lettered_in_part_and_the_stream_goes_on() {
    let huge = format!(
        "{{\"model\": \"credit\", \"junk\": \"{}",
        "x".repeat(1_500_000)
    );
    let (payload, header) = dead_letter_of_one_big_message("mw_big", huge, "").await;
    assert_eq!(
        header("modelwatch.reason").as_deref(),
        Some(&b"too_large"[..])
    );
    assert!(
        payload.len() < 1_000_000 && payload.starts_with(b"{\"model\""),
        "{}",
        payload.len()
    );
}

/// Runs the daemon over a stream with `big` in its reference part (limits
/// and more appended to the config); once the first window is stored,
/// returns the first dead letter's payload and a lookup of its headers.
async fn dead_letter_of_one_big_message(
    name: &str,
    big: String,
    config_extra: &str,
) -> (Vec<u8>, impl Fn(&str) -> Option<Vec<u8>>) {
    let KafkaCase {
        topic,
        dlq,
        db,
        dir: tmp,
    } = KafkaCase::new(name).await;
    let config = kafka_config(&tmp, &topic, &dlq, &unique("g"), &db, REFERENCE, WINDOW);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(config_extra);
    std::fs::write(&config, text).unwrap();
    let mut payloads = telemetry(61, REFERENCE, WINDOW, 1, 0..0);
    payloads.insert(REFERENCE / 2, big);
    produce(&big_producer(), &topic, &payloads).await;
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    let pool = PgPool::connect(&db).await.unwrap();
    wait_for_windows(&pool, &mut daemon, 1, Duration::from_secs(90)).await;
    let (payload, headers) = first_dead_letter(&dlq, Duration::from_secs(30)).await;
    let header = move |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    (payload, header)
}

/// Limits set above what the broker takes: a refused message that cannot
/// be dead-lettered whole still is, by its headers alone, and the stream
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_broker_refuses_goes_by_its_headers_alone() {
    let big = format!("not json {}", "x".repeat(1_200_000));
    let (payload, header) =
        dead_letter_of_one_big_message("mw_hdrs", big, "[limits]\nmax_message_bytes = 1500000\n")
            .await;
    assert_eq!(
        header("modelwatch.reason").as_deref(),
        Some(&b"invalid_json"[..])
    );
    assert_eq!(
        header("modelwatch.payload").as_deref(),
        Some(&b"omitted: too large"[..])
    );
    assert!(payload.is_empty(), "{} bytes", payload.len());
}

/// Load run, not a check: `modelwatch replay` of one file against a bare
/// librdkafka producer (the same batching settings, every delivery awaited
/// at the end) sending the same lines to the same broker, each to a topic
/// of its own, alternately, best of three. Prints messages/s and the ratio;
/// fails only if a message is lost. `MODELWATCH_LOAD_EVENTS` sets the size.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn replay_throughput() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let n: usize = std::env::var("MODELWATCH_LOAD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(unique("mw_replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let lines = telemetry(43, 0, n, 1, 0..0);
    let file = dir.join("telemetry.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (mut best_replay, mut best_bare) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let topic = unique("replay");
        create_topic(&topic, 1).await;
        let started = Instant::now();
        let out = std::process::Command::new(daemon_binary())
            .args(["replay", "--topic", &topic])
            .arg(&file)
            .env("MODELWATCH_SOURCE__KAFKA__BROKERS", brokers())
            .env("MODELWATCH_LOG__FILTER", "warn")
            .output()
            .unwrap();
        best_replay = best_replay.min(started.elapsed().as_secs_f64());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("{n} delivered, 0 failed")),
            "{stdout}"
        );

        let topic = unique("bare");
        create_topic(&topic, 1).await;
        let bare: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        let started = Instant::now();
        let text = std::fs::read_to_string(&file).unwrap();
        let deliveries: Vec<_> = text
            .lines()
            .map(|l| {
                bare.send_result(FutureRecord::to(&topic).payload(l).key("credit"))
                    .unwrap()
            })
            .collect();
        let mut delivered = 0;
        for d in deliveries {
            delivered += usize::from(matches!(d.await, Ok(Ok(_))));
        }
        best_bare = best_bare.min(started.elapsed().as_secs_f64());
        assert_eq!(delivered, n, "the bare producer lost messages");
    }
    println!(
        "{n} messages: replay {:.0}/s ({best_replay:.2} s, whole process), bare producer {:.0}/s ({best_bare:.2} s); replay/bare time {:.2}x",
        n as f64 / best_replay,
        n as f64 / best_bare,
        best_replay / best_bare
    );
}
