//! Alert delivery end to end: the daemon pages real HTTP receivers on
//! loopback that speak the Alertmanager, PagerDuty and webhook formats, and
//! a Kafka topic (broker from `tests/run.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use hmac::{Hmac, Mac};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::Value;
use sha2::Sha256;

const REFERENCE: usize = 300;
const WINDOW: usize = 100;
const SECRET: &str = "webhook-secret-for-tests";
const X1: &str = "credit/v1/feature_drift/x1";
/// The episode x1's drift pages as (findings are grouped by model).
const EPISODE: &str = "credit/v1/episode/all";

/// A receiver that records what it accepted; while `down`, it answers 503.
#[derive(Clone, Default)]
struct Recorder {
    accepted: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    refused: Arc<Mutex<usize>>,
    down: Arc<AtomicBool>,
}

impl Recorder {
    fn accepted(&self) -> Vec<Value> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }
}

async fn record(State(r): State<Recorder>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        *r.refused.lock().unwrap() += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Webhooks must prove they come from us.
    if let Some(sig) = headers.get("x-modelwatch-signature") {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if sig.to_str().unwrap() != format!("sha256={want}") {
            return StatusCode::UNAUTHORIZED;
        }
    }
    let value: Value = serde_json::from_slice(&body).expect("json body");
    r.accepted.lock().unwrap().push((headers, value));
    StatusCode::ACCEPTED
}

/// Serves `recorder` on a loopback port for any path, the root included
/// (Falcosidekick's input); returns the base URL.
async fn serve(recorder: Recorder) -> String {
    let app = Router::new()
        .route("/", post(record))
        .route("/{*path}", post(record))
        .with_state(recorder);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Telemetry with x1 shifted in `shifted` windows and x2 far off in the one
/// `noisy` window.
fn stream(
    seed: u64,
    windows: usize,
    shifted: std::ops::Range<usize>,
    noisy: Option<usize>,
) -> Vec<String> {
    telemetry(seed, REFERENCE, WINDOW, windows, shifted)
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let w = i.checked_sub(REFERENCE).map(|j| j / WINDOW);
            if w.is_some() && w == noisy {
                let mut v: Value = serde_json::from_str(&line).unwrap();
                let x2 = v["features"]["x2"].as_f64().unwrap();
                v["features"]["x2"] = (x2 + 6.0).into();
                v.to_string()
            } else {
                line
            }
        })
        .collect()
}

fn config(dir: &Path, store: &str, receivers: &str, drain_secs: u64) -> PathBuf {
    let path = dir.join("modelwatch.toml");
    let text = format!(
        r#"
[source]
kind = "file"
[source.kafka]
brokers = "{brokers}"
[store]
url = "{store}"
[engine]
device = "cpu"
[windows]
count = {WINDOW}
duration_secs = 0
[reference]
size = {REFERENCE}
[judge]
alpha = 0.0001
[telemetry]
listen = ""
[notify]
retry_base_ms = 100
retry_max_secs = 1
drain_secs = {drain_secs}
{receivers}
"#,
        brokers = brokers()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run_daemon(config: &Path, input: &Path) -> std::process::Output {
    Command::new(daemon_binary())
        .args(["run", "--config"])
        .arg(config)
        .arg("--file")
        .arg(input)
        .env("MODELWATCH_WEBHOOK_SECRET", SECRET)
        .env("MODELWATCH_PD_KEY", "pd-routing-key")
        .output()
        .expect("run daemon")
}

fn dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shift_pages_once_resolves_once_and_noise_pages_nothing() {
    let (am, pd, hook, ocsf, falco) = (
        Recorder::default(),
        Recorder::default(),
        Recorder::default(),
        Recorder::default(),
        Recorder::default(),
    );
    let (am_url, pd_url, hook_url, ocsf_url, falco_url) = (
        serve(am.clone()).await,
        serve(pd.clone()).await,
        serve(hook.clone()).await,
        serve(ocsf.clone()).await,
        serve(falco.clone()).await,
    );
    let topic = unique("alerts");
    create_topic(&topic, 1).await;
    let d = dir("mw_alerting");
    // x2 jumps in window 2 only; x1 is shifted in windows 4-6, clean 7-9.
    let input = d.join("events.ndjson");
    std::fs::write(&input, stream(41, 10, 4..7, Some(2)).join("\n")).unwrap();
    let receivers = format!(
        r#"
[[notify.receivers]]
name = "am"
kind = "alertmanager"
url = "{am_url}"
repeat_secs = 3600
[[notify.receivers]]
name = "pd"
kind = "pagerduty"
url = "{pd_url}/v2/enqueue"
secret_env = "MODELWATCH_PD_KEY"
[[notify.receivers]]
name = "hook"
kind = "webhook"
url = "{hook_url}/hooks/modelwatch"
secret_env = "MODELWATCH_WEBHOOK_SECRET"
labels = {{ team = "credit-risk" }}
[[notify.receivers]]
name = "bus"
kind = "kafka"
topic = "{topic}"
[[notify.receivers]]
name = "security-lake"
kind = "webhook"
url = "{ocsf_url}/ingest"
format = "ocsf"
[[notify.receivers]]
name = "falcosidekick"
kind = "webhook"
url = "{falco_url}/"
format = "falco"
[models.credit.owner]
team = "credit-risk"
runbook_url = "https://runbooks.example/credit"
labels = {{ tier = "1" }}
"#
    );
    let store = format!("sqlite:{}", d.join("store.db").display());
    let cfg = config(&d, &store, &receivers, 20);
    let out = run_daemon(&cfg, &input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The noisy x2 window is stored as a pending alert that ended unpaged.
    let listed = Command::new(daemon_binary())
        .args(["alerts", "list", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let alerts: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let x2 = alerts
        .iter()
        .find(|a| a["dedup_key"] == "credit/v1/feature_drift/x2")
        .expect("x2 alert stored");
    assert_eq!(
        (x2["status"].as_str(), x2["fired_at"].is_null()),
        (Some("resolved"), true)
    );
    let x1 = alerts
        .iter()
        .find(|a| a["dedup_key"] == X1)
        .expect("x1 alert");
    assert_eq!(x1["status"], "resolved");
    assert_eq!(x1["evidence"]["episode"], format!("{EPISODE}#1"));
    // The table says which episode a finding paged as.
    let table = Command::new(daemon_binary())
        .args(["alerts", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = succeeded(&table);
    let row = table.lines().find(|l| l.contains(X1)).expect("x1 row");
    assert!(row.ends_with(&format!("in {EPISODE}#1")), "{table}");
    assert_eq!(
        (
            x1["first_window_seq"].as_i64(),
            x1["last_window_seq"].as_i64()
        ),
        (Some(4), Some(9))
    );
    let evidence = &x1["evidence"];
    assert!(
        evidence["windows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["crossed"] == true)
    );
    assert!(
        evidence["sample_request_ids"][0]
            .as_str()
            .unwrap()
            .starts_with("req-")
    );

    // Alertmanager: one firing post, one resolving post (endsAt in the past).
    let am_posts = am.accepted();
    assert_eq!(am_posts.len(), 2, "{am_posts:#?}");
    for p in &am_posts {
        assert_eq!(p.as_array().unwrap().len(), 1);
        assert_eq!(p[0]["labels"]["dedup_key"], EPISODE);
        assert_eq!(p[0]["labels"]["alertname"], "modelwatch_episode");
        // Every finding of the episode is in its evidence: here x1 alone.
        let evidence: Value =
            serde_json::from_str(p[0]["annotations"]["evidence"].as_str().unwrap()).unwrap();
        let findings: Vec<&str> = evidence["members"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["dedup_key"].as_str().unwrap())
            .collect();
        assert_eq!(findings, [X1]);
    }
    let ends =
        |p: &Value| chrono::DateTime::parse_from_rfc3339(p[0]["endsAt"].as_str().unwrap()).unwrap();
    assert!(
        ends(&am_posts[0]) > chrono::Utc::now(),
        "firing: endsAt ahead"
    );
    assert!(
        ends(&am_posts[1]) <= chrono::Utc::now(),
        "resolved: endsAt in the past"
    );
    // Alertmanager knows an alert by its labels: the resolve must carry
    // the trigger's.
    assert_eq!(am_posts[0][0]["labels"], am_posts[1][0]["labels"]);

    // PagerDuty: trigger then resolve, same dedup key.
    let pd_events = pd.accepted();
    let actions: Vec<&str> = pd_events
        .iter()
        .map(|e| e["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["trigger", "resolve"]);
    assert_eq!(pd_events[0]["dedup_key"], pd_events[1]["dedup_key"]);
    assert_eq!(pd_events[0]["dedup_key"], format!("{EPISODE}#1"));
    assert_eq!(pd_events[0]["routing_key"], "pd-routing-key");
    assert!(
        pd_events[0]["payload"]["summary"]
            .as_str()
            .unwrap()
            .chars()
            .count()
            <= 1024
    );

    // The model's owner on every payload: the webhook routed on its team.
    assert_eq!(am_posts[0][0]["labels"]["team"], "credit-risk");
    assert_eq!(am_posts[0][0]["labels"]["tier"], "1");
    assert_eq!(
        am_posts[0][0]["annotations"]["runbook_url"],
        "https://runbooks.example/credit"
    );
    assert!(
        pd_events[0]["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["href"] == "https://runbooks.example/credit"),
        "{:#?}",
        pd_events[0]
    );

    // Webhook: both transitions, each signed (the recorder refuses bad signatures).
    let hooks: Vec<String> = hook
        .accepted()
        .iter()
        .map(|h| h["transition"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hooks, vec!["fired", "resolved"]);

    // OCSF: the incident's finding created, then closed, valid under the
    // published schema's models.
    let findings = ocsf.accepted();
    let types: Vec<u64> = findings
        .iter()
        .map(|f| f["type_uid"].as_u64().unwrap())
        .collect();
    assert_eq!(types, vec![200401, 200403]);
    assert_eq!(findings[0]["finding_info"]["uid"], format!("{EPISODE}#1"));
    assert_eq!(findings[1]["finding_info"]["uid"], format!("{EPISODE}#1"));
    assert_eq!(findings[0]["evidences"][1]["data"]["dedup_key"], X1);
    let lines: String = findings.iter().map(|f| format!("{f}\n")).collect();
    let python = std::path::PathBuf::from(
        std::env::var("MODELWATCH_TOOLS_VENV")
            .expect("MODELWATCH_TOOLS_VENV is not set: run the suite through tests/run.sh"),
    )
    .join("bin/python");
    let validate = |lines: &str| {
        let mut check = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/schemas/ocsf.py"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        check.wait_with_output().unwrap()
    };
    let checked = succeeded(&validate(&lines));
    assert!(checked.contains("2 findings valid"), "{checked}");
    // The validator refuses a field the schema lacks.
    let broken = lines.replacen("\"title\"", "\"titel\":\"x\",\"title\"", 1);
    assert!(!validate(&broken).status.success());

    // Falco: a Warning event, then an Informational one when it resolves.
    let events = falco.accepted();
    let priorities: Vec<&str> = events
        .iter()
        .map(|e| e["priority"].as_str().unwrap())
        .collect();
    assert_eq!(priorities.len(), 2, "{events:#?}");
    assert_ne!(priorities[0], "Informational");
    assert_eq!(priorities[1], "Informational");
    for e in &events {
        assert_eq!(e["source"], "modelwatch");
        assert_eq!(e["output_fields"]["modelwatch.dedup_key"], EPISODE);
        assert!(
            e["output_fields"]["modelwatch.findings"]
                .as_str()
                .unwrap()
                .starts_with("feature_drift/x1 p=")
        );
        assert_eq!(e["output_fields"]["modelwatch.team"], "credit-risk");
    }
    assert_eq!(
        findings[0]["remediation"]["references"][0],
        "https://runbooks.example/credit"
    );

    // Kafka: the same two transitions, keyed by dedup key.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("alerts_reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("alert message")
            .unwrap();
        assert_eq!(m.key().unwrap(), EPISODE.as_bytes());
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.push(v["transition"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, vec!["fired", "resolved"]);
    // Nothing else arrives.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "an extra alert message"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_was_down_gets_everything_in_order_once_even_across_a_kill() {
    let am = Recorder::default();
    am.down.store(true, Ordering::SeqCst);
    let am_url = serve(am.clone()).await;
    let d = dir("mw_outbox");
    let input = d.join("events.ndjson");
    // x1 fires at window 3 and resolves at window 7.
    std::fs::write(&input, stream(43, 8, 2..5, None).join("\n")).unwrap();
    let receivers = format!(
        r#"
[[notify.receivers]]
name = "am"
kind = "alertmanager"
url = "{am_url}"
repeat_secs = 3600
"#
    );
    let store = format!("sqlite:{}", d.join("store.db").display());
    let cfg = config(&d, &store, &receivers, 120);

    // The receiver refuses; kill the daemon while it is retrying, that is
    // after the alert and its notifications were written, before delivery.
    let mut child = Command::new(daemon_binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while *am.refused.lock().unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "the daemon never tried the receiver"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Queued and visible, never dropped.
    let outbox = Command::new(daemon_binary())
        .args(["alerts", "outbox", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&outbox.stdout);
    assert!(text.contains("am: 2 pending"), "{text}");
    assert!(text.contains("503"), "the last error is shown: {text}");

    // The receiver comes back; the restarted daemon (same input, all of it
    // already stored) delivers the queue, in order.
    am.down.store(false, Ordering::SeqCst);
    let out = run_daemon(&cfg, &input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = am.accepted();
    let states: Vec<bool> = got
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p[0]["endsAt"].as_str().unwrap()).unwrap()
                <= chrono::Utc::now()
        })
        .collect();
    assert_eq!(states, vec![false, true], "fired, then resolved: {got:#?}");

    // And only once: another start sends nothing.
    let out = run_daemon(&cfg, &input);
    assert!(out.status.success());
    assert_eq!(am.accepted().len(), 2);
    let outbox = Command::new(daemon_binary())
        .args(["alerts", "outbox", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&outbox.stdout).contains("no undelivered notifications"));
}

#[tokio::test(flavor = "multi_thread")]
async fn silenced_alerts_do_not_page() {
    let am = Recorder::default();
    let am_url = serve(am.clone()).await;
    let d = dir("mw_silence");
    let input = d.join("events.ndjson");
    std::fs::write(&input, stream(47, 6, 2..5, None).join("\n")).unwrap();
    let receivers = format!(
        "[[notify.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{am_url}\"\nrepeat_secs = 3600\n"
    );
    let store = format!("sqlite:{}", d.join("store.db").display());
    let cfg = config(&d, &store, &receivers, 10);
    // The planted shift moves x1 (feature drift) and, with it, the feature
    // rows off the reference (out of distribution): silence both detectors.
    for detector in ["feature_drift", "out_of_distribution"] {
        let silence = Command::new(daemon_binary())
            .args([
                "alerts",
                "silence",
                "--model",
                "credit",
                "--detector",
                detector,
                "--duration",
                "2h",
                "--comment",
                "planned retrain",
                "--config",
            ])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            silence.status.success(),
            "{}",
            String::from_utf8_lossy(&silence.stderr)
        );
    }
    let out = run_daemon(&cfg, &input);
    assert!(out.status.success());
    assert!(am.accepted().is_empty(), "a silenced alert paged");
    let listed = Command::new(daemon_binary())
        .args(["alerts", "list", "--status", "firing", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(X1) && text.contains("silenced"), "{text}");
    // Acknowledging is recorded on the alert.
    let id = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let ack = Command::new(daemon_binary())
        .args(["alerts", "ack", &id, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(ack.status.success());
    let listed = Command::new(daemon_binary())
        .args(["alerts", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("acked,silenced"));
}

/// The demo's fleet and scheduled episodes through the daemon, from a file,
/// with two receivers in different formats: each episode pages each
/// receiver once (a trigger inside the episode's windows, at most one
/// resolve), and nothing else pages, however many detectors and features
/// each episode crosses.
#[tokio::test(flavor = "multi_thread")]
async fn each_demo_episode_pages_each_receiver_once() {
    use modelwatch::ingest::demo;
    let (team, sidekick) = (Recorder::default(), Recorder::default());
    let (team_url, sidekick_url) = (serve(team.clone()).await, serve(sidekick.clone()).await);
    let d = dir("mw_demo_pages");
    let events = Command::new(daemon_binary())
        .args(["demo", "--events"])
        .output()
        .unwrap();
    let input = d.join("demo.ndjson");
    std::fs::write(&input, succeeded(&events)).unwrap();
    let mut models = String::new();
    for m in &demo::FLEET {
        models += &format!(
            "[models.{}]\nwindow_count = {}\nwindow_secs = 0\nreference_size = {}\nclasses = {:?}\n",
            m.name,
            demo::WINDOW_SIZE,
            demo::REFERENCE_SIZE,
            m.classes
        );
    }
    let cfg = d.join("modelwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[source]
kind = "file"
[store]
url = "sqlite:{store}"
[engine]
device = "cpu"
[telemetry]
listen = ""
[notify]
retry_base_ms = 100
retry_max_secs = 1
drain_secs = 20
[[notify.receivers]]
name = "team"
kind = "webhook"
url = "{team_url}/hook"
[[notify.receivers]]
name = "sidekick"
kind = "webhook"
url = "{sidekick_url}/"
format = "falco"
{models}"#,
            store = d.join("store.db").display()
        ),
    )
    .unwrap();
    let out = run_daemon(&cfg, &input);
    let stdout = succeeded(&out);

    // (transition, model, key#incident, (version, first window)) of each
    // page; windows are numbered per version.
    type Page = (String, String, String, (String, i64));
    let native: Vec<Page> = team
        .accepted()
        .iter()
        .map(|h| {
            let a = &h["alert"];
            (
                h["transition"].as_str().unwrap().to_string(),
                a["model"].as_str().unwrap().to_string(),
                format!("{}#{}", a["dedup_key"].as_str().unwrap(), a["incident"]),
                (
                    a["model_version"].as_str().unwrap().to_string(),
                    a["first_window_seq"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    let falco: Vec<Page> = sidekick
        .accepted()
        .iter()
        .map(|e| {
            let f = &e["output_fields"];
            let windows = f["modelwatch.windows"].as_str().unwrap();
            (
                f["modelwatch.transition"].as_str().unwrap().to_string(),
                f["modelwatch.model"].as_str().unwrap().to_string(),
                format!(
                    "{}#{}",
                    f["modelwatch.dedup_key"].as_str().unwrap(),
                    f["modelwatch.incident"]
                ),
                (
                    f["modelwatch.model_version"].as_str().unwrap().to_string(),
                    windows.split('-').next().unwrap().parse().unwrap(),
                ),
            )
        })
        .collect();
    let served = |model: &str, window: i64| {
        let m = demo::FLEET.iter().find(|m| m.name == model).unwrap();
        let (version, seq) = m.serving(window);
        (version.to_string(), seq)
    };
    for (receiver, pages) in [("team", &native), ("sidekick", &falco)] {
        let fired: Vec<&Page> = pages.iter().filter(|p| p.0 == "fired").collect();
        for e in &demo::EPISODES {
            let (first, last) = (served(e.model, e.from), served(e.model, e.to));
            let triggers = fired
                .iter()
                .filter(|p| p.1 == e.model && first <= p.3 && p.3 <= last)
                .count();
            assert_eq!(
                triggers, 1,
                "{receiver}: {} {}: {pages:#?}\n{stdout}",
                e.model, e.what
            );
        }
        assert_eq!(
            fired.len(),
            demo::EPISODES.len(),
            "{receiver}: a page outside the episodes: {pages:#?}"
        );
        for p in pages.iter().filter(|p| p.0 == "resolved") {
            assert_eq!(
                pages.iter().filter(|q| q.2 == p.2).count(),
                2,
                "{receiver}: one trigger and one resolve per incident: {pages:#?}"
            );
        }
    }
}
