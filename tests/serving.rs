//! Serving stacks' own formats through the broker: KServe's inference
//! logger writes each request and each response as a CloudEvent in binary
//! mode (`ce_*` headers), and the monitor pairs them by `ce_id`.

mod common;

use std::time::Duration;

use common::{Daemon, committed, create_topic, crossings, fresh_database, kafka_config, unique};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Row;
use sqlx::postgres::PgPool;

const REFERENCE: usize = 400;
const WINDOW: usize = 200;
const ROWS: usize = 2;
const SHIFTED: [usize; 2] = [3, 4];

/// One KServe logger message: a request or a response half.
struct Logged {
    id: String,
    kind: &'static str,
    body: String,
    /// Message time, ms: one second of traffic per pair.
    ts: i64,
}

/// `pairs` batched requests of `ROWS` rows and their responses, each
/// response two messages after its request; every `orphans_every`th request
/// (none when 0; never in the last 50) gets no response, as KServe logs none for a failed call. The
/// rows of windows `SHIFTED` (counted in paired rows after the reference)
/// have `instances_0` moved by 1.5. Returns the messages and the orphans'
/// ids.
fn traffic(pairs: usize, orphans_every: usize) -> (Vec<Logged>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(13);
    // An hour ago: the join takes no message time later than its clock.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut out = Vec::new();
    let mut orphans = Vec::new();
    let mut responses: std::collections::VecDeque<Logged> = Default::default();
    let mut paired_rows = 0usize;
    for i in 0..pairs {
        let id = format!("ev-{i:05}");
        let orphan = orphans_every != 0 && i % orphans_every == 17 && i + 50 < pairs;
        let window = paired_rows.checked_sub(REFERENCE).map(|r| r / WINDOW);
        let shift = if window.is_some_and(|w| SHIFTED.contains(&w)) {
            1.5
        } else {
            0.0
        };
        let rows: Vec<String> = (0..ROWS)
            .map(|_| {
                let x: [f64; 3] = std::array::from_fn(|_| rng.random::<f64>() * 2.0 - 1.0);
                format!("[{:.4},{:.4},{:.4}]", x[0] * 1.7 + shift, x[1], x[2])
            })
            .collect();
        out.push(Logged {
            id: id.clone(),
            kind: "org.kubeflow.serving.inference.request",
            body: format!(r#"{{"instances":[{}]}}"#, rows.join(",")),
            ts: base + i as i64 * 1000,
        });
        if orphan {
            orphans.push(id);
        } else {
            paired_rows += ROWS;
            let p: f64 = rng.random::<f64>() * 0.8 + 0.1;
            let predictions = vec![format!("[{:.4},{:.4}]", p, 1.0 - p); ROWS];
            responses.push_back(Logged {
                id,
                kind: "org.kubeflow.serving.inference.response",
                body: format!(r#"{{"predictions":[{}]}}"#, predictions.join(",")),
                ts: base + i as i64 * 1000 + 500,
            });
        }
        if responses.len() > 2 {
            out.extend(responses.pop_front());
        }
    }
    out.extend(responses);
    (out, orphans)
}

async fn send(producer: &FutureProducer, topic: &str, messages: &[Logged]) {
    for m in messages {
        let headers = [
            ("ce_specversion", "1.0"),
            ("ce_id", m.id.as_str()),
            ("ce_type", m.kind),
            ("ce_source", "http://localhost:9081/"),
            ("ce_inferenceservicename", "credit-isvc"),
            ("ce_namespace", "risk"),
            ("ce_component", "predictor"),
            ("ce_endpoint", "default"),
            ("ce_metadata", r#"{"X-Client-Id":["tenant-1"]}"#),
            ("content-type", "application/json"),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        send_one(producer, topic, m.body.as_bytes(), m, headers).await;
    }
}

/// One message of `m`'s key and time.
async fn send_one(
    producer: &FutureProducer,
    topic: &str,
    payload: &[u8],
    m: &Logged,
    headers: OwnedHeaders,
) {
    producer
        .send(
            FutureRecord::to(topic)
                .payload(payload)
                .key(m.id.as_str())
                .timestamp(m.ts)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// (reason, the `id` header) of every dead letter.
fn dead_letters(topic: &str, id: &str) -> Vec<(String, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let header = |m: &rdkafka::message::BorrowedMessage<'_>, name: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((header(&m, "modelwatch.reason"), header(&m, id)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The windows, counted from the first stored, where `feature` drifted.
async fn drifted_windows(pool: &PgPool, feature: &str) -> std::collections::BTreeSet<i64> {
    let first: i64 = sqlx::query_scalar("SELECT MIN(seq) FROM windows")
        .fetch_one(pool)
        .await
        .unwrap();
    crossings(pool, "feature_drift")
        .await
        .into_iter()
        .filter(|(_, f)| f == feature)
        .map(|(w, _)| w - first)
        .collect()
}

async fn stored_rows(pool: &PgPool) -> (i64, i64) {
    let r = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(n_events), 0)::BIGINT AS rows FROM windows",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (r.get("n"), r.get("rows"))
}

/// The monitor is killed while requests wait for their responses: after
/// the restart every pair is made once, the orphans are dead-lettered with
/// their reason and `ce_id`, and the planted shift is found where it was
/// planted.
#[tokio::test(flavor = "multi_thread")]
async fn kserve_halves_pair_through_the_broker_and_a_kill_pairs_nothing_twice() {
    kserve_killed_and_restarted(false).await;
}

/// The same with each response logged before its request. An orphan
/// between a pair's response and its request holds the commit between
/// them: after the kill the request is read again alone, and is known as
/// paired, not dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn kserve_pairs_logged_response_first_survive_a_kill() {
    kserve_killed_and_restarted(true).await;
}

/// Each pair's two messages swapped: the response first, the request
/// where the response was.
fn response_first(mut messages: Vec<Logged>) -> Vec<Logged> {
    let mut first: std::collections::HashMap<String, usize> = Default::default();
    for i in 0..messages.len() {
        match first.remove(&messages[i].id) {
            None => {
                first.insert(messages[i].id.clone(), i);
            }
            Some(j) => {
                let (kind, body) = (messages[i].kind, std::mem::take(&mut messages[i].body));
                messages[i].kind = messages[j].kind;
                messages[i].body = std::mem::replace(&mut messages[j].body, body);
                messages[j].kind = kind;
            }
        }
    }
    messages
}

async fn kserve_killed_and_restarted(responses_first: bool) {
    let dir = std::env::temp_dir().join(unique("mw_serving"));
    std::fs::create_dir_all(&dir).unwrap();
    let (topic, dlq, group) = (unique("kserve"), unique("kserve_dlq"), unique("g"));
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let db = fresh_database(&unique("serving")).await;
    let config = kafka_config(dir.as_path(), &topic, &dlq, &group, &db, REFERENCE, WINDOW);
    // The decoder is chosen by a topic pattern, as for a family of topics.
    let pattern = format!("{}*", &topic[..topic.len() - 2]);
    let extra = format!(
        "[source.kafka.decoders]\n\"{pattern}\" = \"kserve-cloudevents\"\n[join]\nwithin_secs = 30\nunpaired = \"dead-letter\"\n"
    );
    let text = std::fs::read_to_string(&config).unwrap() + &extra;
    std::fs::write(&config, text).unwrap();

    let pairs = REFERENCE / ROWS + 8 * WINDOW / ROWS + 30;
    let (messages, orphans) = traffic(pairs, 40);
    let messages = match responses_first {
        true => response_first(messages),
        false => messages,
    };
    let paired_rows = (pairs - orphans.len()) * ROWS;
    let windows = ((paired_rows - REFERENCE) / WINDOW) as i64;
    // The first part ends with halves whose others come after the kill.
    let cut = messages
        .iter()
        .position(|m| m.id == format!("ev-{:05}", pairs / 2) && m.kind.ends_with("request"))
        .unwrap();

    let producer = common::producer();
    let pool = PgPool::connect(&db).await.unwrap();
    let mut daemon = Daemon::start(&config, dir.as_path().join("first.log"));
    send(&producer, &topic, &messages[..cut]).await;
    common::wait_for_windows(&pool, &mut daemon, 2, Duration::from_secs(90)).await;
    // Let the commits of what is durable land, then kill it outright.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_back = committed(&common::brokers(), &group, &topic);
    daemon.kill();
    assert!(
        held_back < cut as i64,
        "the waiting requests' offsets must not be committed: committed {held_back} of {cut}"
    );

    let mut daemon = Daemon::start(&config, dir.as_path().join("second.log"));
    send(&producer, &topic, &messages[cut..]).await;
    common::wait_for_windows(&pool, &mut daemon, windows, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stored, rows) = stored_rows(&pool).await;
    let log = daemon.log_text();
    assert_eq!(stored, windows, "windows stored once each; log:\n{log}");
    assert_eq!(
        rows,
        windows * WINDOW as i64,
        "rows stored once each; log:\n{log}"
    );

    let letters = dead_letters(&dlq, "ce_id");
    let unpaired: Vec<&str> = letters
        .iter()
        .filter(|(reason, _)| reason == "unpaired_request")
        .map(|(_, id)| id.as_str())
        .collect();
    assert_eq!(
        unpaired,
        orphans.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        letters.len(),
        orphans.len(),
        "nothing else is dead-lettered: {letters:?}"
    );

    let drifted = drifted_windows(&pool, "instances_0").await;
    assert_eq!(
        drifted,
        SHIFTED.iter().map(|w| *w as i64).collect(),
        "the shift is found in the windows it was planted in"
    );
    daemon.terminate();
}

/// The same traffic as structured-mode CloudEvents, one per line, read by
/// `score` as a user checks a capture of their own topic: pairs joined in
/// file order and the shift found where it was planted. A request left
/// without its response at the end is scored alone, or, under
/// `unpaired = "dead-letter"`, fails the command naming its line.
#[test]
fn score_joins_a_capture_of_structured_cloudevents() {
    let dir = std::env::temp_dir().join(unique("mw_serving"));
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = REFERENCE / ROWS + 8 * WINDOW / ROWS;
    let (mut messages, orphans) = traffic(pairs + 1, 0);
    assert!(orphans.is_empty());
    // The last request's response is never logged.
    messages.retain(|m| !(m.id == format!("ev-{pairs:05}") && m.kind.ends_with("response")));
    let pair_of = |m: &Logged| m.id[3..].parse::<usize>().unwrap();
    let (first, rest): (Vec<&Logged>, Vec<&Logged>) =
        messages.iter().partition(|m| pair_of(m) < REFERENCE / ROWS);
    let write = |name: &str, ms: &[&Logged]| {
        let path = dir.as_path().join(name);
        std::fs::write(
            &path,
            ms.iter()
                .map(|m| structured(m))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        path
    };
    let (reference, current) = (
        write("reference.ndjson", &first),
        write("current.ndjson", &rest),
    );
    let score = |unpaired: &str| {
        std::process::Command::new(common::daemon_binary())
            .args([
                "score",
                "--input-format",
                "kserve-cloudevents",
                "--format",
                "json",
            ])
            .args(["--window", &WINDOW.to_string(), "--reference"])
            .arg(&reference)
            .arg("--current")
            .arg(&current)
            .env("MODELWATCH_JUDGE__ALPHA", "0.0001")
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_JOIN__UNPAIRED", unpaired)
            .output()
            .unwrap()
    };
    let out = score("score");
    let stdout = common::succeeded(&out);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let windows: std::collections::BTreeSet<i64> =
        rows.iter().filter_map(|r| r["window"].as_i64()).collect();
    // Eight full windows of pairs, and the unpaired request's rows alone.
    assert_eq!(windows.len(), 9, "{stdout}");
    let first_window = *windows.first().unwrap();
    let drifted: std::collections::BTreeSet<i64> = rows
        .iter()
        .filter(|r| r["detector"] == "feature_drift" && r["feature"] == "instances_0")
        .filter(|r| r["alert"] != "-")
        .map(|r| r["window"].as_i64().unwrap() - first_window)
        .collect();
    assert_eq!(
        drifted,
        SHIFTED.iter().map(|w| *w as i64).collect(),
        "{stdout}"
    );

    let refused = score("dead-letter");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let orphan_line = rest.iter().position(|m| pair_of(m) == pairs).unwrap() + 1;
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("current.ndjson:{orphan_line}"))
            && stderr.contains("met no other half"),
        "{stderr}"
    );
}

/// The same traffic as Seldon Core 2 writes it: protobuf
/// `ModelInferRequest`s on the model's `.inputs` topic and
/// `ModelInferResponse`s on `.outputs`, paired by `x-request-id`; the
/// decoder is chosen by a topic pattern. Every pair is made once, the
/// orphans are scored alone, and the shift is found where it was planted.
#[tokio::test(flavor = "multi_thread")]
async fn seldon_topics_pair_across_inputs_and_outputs() {
    let seldon = Seldon::new("within_secs = 30\n").await;
    let pairs = REFERENCE / ROWS + 6 * WINDOW / ROWS + 30;
    let (messages, orphans) = traffic(pairs, 40);
    send_seldon(&seldon.inputs, &seldon.outputs, &messages).await;
    let paired_rows = (pairs - orphans.len()) * ROWS;
    // The orphans' rows are scored alone, in windows of their own stream.
    let windows = ((paired_rows - REFERENCE) / WINDOW) as i64;
    let pool = PgPool::connect(&seldon.db).await.unwrap();
    let mut daemon = Daemon::start(&seldon.config, seldon.dir.join("seldon.log"));
    common::wait_for_windows(&pool, &mut daemon, windows, Duration::from_secs(120)).await;
    let drifted = drifted_windows(&pool, "x_0").await;
    let log = daemon.log_text();
    assert_eq!(
        drifted,
        SHIFTED.iter().map(|w| *w as i64).collect(),
        "log:\n{log}"
    );
    let scored_alone = common::metric(
        seldon.port,
        r#"modelwatch_unpaired_total{side="request",outcome="scored"}"#,
    )
    .await;
    assert_eq!(scored_alone, Some(orphans.len() as f64), "log:\n{log}");
    daemon.terminate();
}

/// Seldon's two topics commit apart. Killed while an orphan request holds
/// the `.inputs` commit back, the monitor reads again the requests after
/// it, whose pairs it had stored and whose responses were committed on
/// `.outputs` with them. Each is known as paired already: only the true
/// orphans are dead-lettered, and every row is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn seldon_requests_read_again_after_a_kill_are_not_taken_for_orphans() {
    let seldon = Seldon::new("within_secs = 45\nunpaired = \"dead-letter\"\n").await;
    let pairs = REFERENCE / ROWS + 6 * WINDOW / ROWS + 30;
    let (messages, orphans) = traffic(pairs, 40);
    let orphan = |i: usize| orphans.contains(&format!("ev-{i:05}"));
    // The kill follows the pair that closes the second window; the last
    // orphan before it still waits (it lies under 40 pairs before, and
    // within_secs is 45 pairs' time). Every orphan is at least 50 pairs
    // from the end: all expire by the messages' time.
    let mut rows = 0;
    let closing = (0..pairs)
        .filter(|i| !orphan(*i))
        .find(|_| {
            rows += ROWS;
            rows == REFERENCE + 2 * WINDOW
        })
        .unwrap();
    let waiting = (0..closing).rev().find(|i| orphan(*i)).unwrap();
    let response_offset = (0..closing).filter(|i| !orphan(*i)).count() as i64;
    let cut = 1 + messages
        .iter()
        .position(|m| m.id == format!("ev-{closing:05}") && m.kind.ends_with("response"))
        .unwrap();

    let pool = PgPool::connect(&seldon.db).await.unwrap();
    let mut daemon = Daemon::start(&seldon.config, seldon.dir.join("first.log"));
    send_seldon(&seldon.inputs, &seldon.outputs, &messages[..cut]).await;
    common::wait_for_windows(&pool, &mut daemon, 2, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let brokers = common::brokers();
    let (inputs_at, outputs_at) = (
        committed(&brokers, &seldon.group, &seldon.inputs),
        committed(&brokers, &seldon.group, &seldon.outputs),
    );
    daemon.kill();
    // What makes the case: requests of stored pairs lie past the inputs
    // commit, their responses before the outputs commit.
    assert!(
        inputs_at <= waiting as i64 && outputs_at > response_offset,
        "inputs committed {inputs_at} (orphan at {waiting}), outputs {outputs_at} (closing response at {response_offset})"
    );

    let mut daemon = Daemon::start(&seldon.config, seldon.dir.join("second.log"));
    send_seldon(&seldon.inputs, &seldon.outputs, &messages[cut..]).await;
    let windows = (((pairs - orphans.len()) * ROWS - REFERENCE) / WINDOW) as i64;
    common::wait_for_windows(&pool, &mut daemon, windows, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stored, rows) = stored_rows(&pool).await;
    let log = daemon.log_text();
    assert_eq!(
        (stored, rows),
        (windows, windows * WINDOW as i64),
        "log:\n{log}"
    );
    let letters = dead_letters(&seldon.dlq, "x-request-id");
    let expected: Vec<(String, String)> = orphans
        .iter()
        .map(|id| ("unpaired_request".to_string(), id.clone()))
        .collect();
    assert_eq!(letters, expected, "log:\n{log}");
    daemon.terminate();
}

/// A monitor's config for a Seldon model's `.inputs` and `.outputs`
/// topics, the decoder chosen by a topic pattern, `join` as given.
struct Seldon {
    dir: std::path::PathBuf,
    inputs: String,
    outputs: String,
    dlq: String,
    group: String,
    db: String,
    port: u16,
    config: std::path::PathBuf,
}

impl Seldon {
    async fn new(join: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("mw_seldon"));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = unique("seldon");
        let (inputs, outputs) = (
            format!("{prefix}.risk.model.credit.inputs"),
            format!("{prefix}.risk.model.credit.outputs"),
        );
        let (dlq, group) = (unique("seldon_dlq"), unique("g"));
        for t in [&inputs, &outputs, &dlq] {
            create_topic(t, 1).await;
        }
        let db = fresh_database(&unique("seldon")).await;
        let config = kafka_config(&dir, &inputs, &dlq, &group, &db, REFERENCE, WINDOW);
        let port = common::free_port();
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                &format!("topics = [\"{inputs}\"]"),
                &format!("topics = [\"{inputs}\", \"{outputs}\"]"),
            )
            .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
            + &format!("[source.kafka.decoders]\n\"{prefix}.*\" = \"seldon-v2\"\n[join]\n{join}");
        std::fs::write(&config, text).unwrap();
        Self {
            dir,
            inputs,
            outputs,
            dlq,
            group,
            db,
            port,
            config,
        }
    }
}

/// `messages` as Seldon writes them: protobuf requests on `inputs`,
/// responses on `outputs`, each with its `x-request-id`.
async fn send_seldon(inputs: &str, outputs: &str, messages: &[Logged]) {
    use modelwatch::decode::{
        InferTensor, InferTensorContents, ModelInferRequest, ModelInferResponse,
    };
    use prost::Message as _;
    let tensor = |name: &str, rows: &[Vec<f64>]| InferTensor {
        name: name.into(),
        datatype: "FP64".into(),
        shape: vec![rows.len() as i64, rows[0].len() as i64],
        contents: Some(InferTensorContents {
            fp64_contents: rows.concat(),
            ..Default::default()
        }),
    };
    let producer = common::producer();
    for m in messages {
        let body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
        let rows =
            |key: &str| -> Vec<Vec<f64>> { serde_json::from_value(body[key].clone()).unwrap() };
        let (topic, payload) = if m.kind.ends_with("request") {
            let r = ModelInferRequest {
                model_name: "credit".into(),
                id: m.id.clone(),
                inputs: vec![tensor("x", &rows("instances"))],
                ..Default::default()
            };
            (inputs, r.encode_to_vec())
        } else {
            let r = ModelInferResponse {
                model_name: "credit".into(),
                model_version: "1".into(),
                id: m.id.clone(),
                outputs: vec![tensor("probs", &rows("predictions"))],
                ..Default::default()
            };
            (outputs, r.encode_to_vec())
        };
        let headers = OwnedHeaders::new().insert(Header {
            key: "x-request-id",
            value: Some(m.id.as_str()),
        });
        send_one(&producer, topic, &payload, m, headers).await;
    }
}

/// A logger message as a structured-mode CloudEvent, one JSON line.
fn structured(m: &Logged) -> String {
    let time = chrono::DateTime::from_timestamp_millis(m.ts)
        .unwrap()
        .to_rfc3339();
    format!(
        r#"{{"specversion":"1.0","id":"{}","type":"{}","source":"http://localhost:9081/","time":"{time}","inferenceservicename":"credit-isvc","component":"predictor","datacontenttype":"application/json","data":{}}}"#,
        m.id, m.kind, m.body
    )
}
