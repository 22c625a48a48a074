//! Shared harness of the integration tests: the real broker and database
//! that `tests/run.sh` started, synthetic telemetry, and the daemon binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Row;
use sqlx::postgres::PgPool;

/// The broker `tests/run.sh` started.
pub fn brokers() -> String {
    std::env::var("MODELWATCH_TEST_BROKERS").expect(
        "MODELWATCH_TEST_BROKERS is unset: run the suite with tests/run.sh, which starts a broker",
    )
}

/// An admin URL of the PostgreSQL server `tests/run.sh` ensured.
pub fn postgres_admin_url() -> String {
    std::env::var("MODELWATCH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A name no other test or run uses: process id, time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos:x}_{k}", std::process::id())
}

/// A fresh database for one test, dropped by nobody: names are unique and
/// the test server is disposable.
pub async fn fresh_database(name: &str) -> String {
    let admin = PgPool::connect(&postgres_admin_url())
        .await
        .expect("postgres reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let base = postgres_admin_url();
    let cut = base.rfind('/').expect("database url has a path");
    format!("{}/{name}", &base[..cut])
}

pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// A producer that writes one record per batch: tansu 0.6 answers a fetch
/// that starts inside a record batch with the batches after it, so a
/// consumer resuming mid-batch (after a commit, a rebalance or a pause)
/// would never see the rest of that batch. Kafka returns the whole batch.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

pub async fn produce(producer: &FutureProducer, topic: &str, payloads: &[String]) {
    for p in payloads {
        producer
            .send(
                FutureRecord::to(topic).payload(p.as_str()).key("k"),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

/// Telemetry of model `credit`: `reference` events, then `windows` windows of
/// `window` events each, where windows in `shifted` have feature `x1` moved
/// by 1.5 standard deviations. Features `x2` and `segment` never move.
pub fn telemetry(
    seed: u64,
    reference: usize,
    window: usize,
    windows: usize,
    shifted: std::ops::Range<usize>,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move || {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        (
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos(),
            u2,
        )
    };
    let total = reference + window * windows;
    (0..total)
        .map(|i| {
            let w = i.checked_sub(reference).map(|j| j / window);
            let shift = if w.is_some_and(|w| shifted.contains(&w)) { 1.5 } else { 0.0 };
            let (x1, _) = normal();
            let (x2, u) = normal();
            let segment = ["retail", "smb", "corporate"][(u * 3.0) as usize % 3];
            let p = 0.2 + 0.6 * u;
            serde_json::json!({
                "model": "credit",
                "model_version": "v1",
                "ts": format!("2026-03-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60),
                "request_id": format!("req-{i}"),
                "features": {"x1": ((x1 + shift) * 1000.0).round() / 1000.0, "x2": ((5.0 + 2.0 * x2) * 1000.0).round() / 1000.0, "segment": segment},
                "output": {"probabilities": [1.0 - p, p]},
            })
            .to_string()
        })
        .collect()
}

/// What a daemon test against the broker starts from: a telemetry topic and
/// a dead-letter topic (both created, one partition), a fresh database and a
/// scratch folder.
pub struct KafkaCase {
    pub topic: String,
    pub dlq: String,
    pub db: String,
    pub dir: PathBuf,
}

impl KafkaCase {
    pub async fn new(name: &str) -> Self {
        let (topic, dlq) = (unique("telemetry"), unique("dead_letter"));
        create_topic(&topic, 1).await;
        create_topic(&dlq, 1).await;
        let db = fresh_database(&unique(name)).await;
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        KafkaCase {
            topic,
            dlq,
            db,
            dir,
        }
    }
}

/// A webhook receiver on loopback counting deliveries per (dedup key,
/// transition); it answers after `delay`, as real ones do, which is the
/// window in which two senders could both send one notification.
#[derive(Clone, Default)]
pub struct HookCounts(
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String), usize>>>,
);

impl HookCounts {
    /// Serves on a free loopback port; returns the URL to configure.
    pub async fn serve(&self, delay: Duration) -> String {
        use axum::routing::post;
        let app = axum::Router::new()
            .route("/{*path}", post(record_hook))
            .with_state((self.clone(), delay));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    pub fn counts(&self) -> std::collections::BTreeMap<(String, String), usize> {
        self.0.lock().unwrap().clone()
    }
}

async fn record_hook(
    axum::extract::State((hook, delay)): axum::extract::State<(HookCounts, Duration)>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    tokio::time::sleep(delay).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = (
        v["alert"]["dedup_key"].as_str().unwrap().to_string(),
        v["transition"].as_str().unwrap().to_string(),
    );
    *hook.0.lock().unwrap().entry(key).or_default() += 1;
    axum::http::StatusCode::OK
}

/// The stdout of a run that must have succeeded; its stderr otherwise.
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn daemon_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_modelwatch"))
}

/// Writes a daemon config for a Kafka topic and a PostgreSQL database.
pub fn kafka_config(
    dir: &std::path::Path,
    topic: &str,
    dlq: &str,
    group: &str,
    db_url: &str,
    reference: usize,
    window: usize,
) -> PathBuf {
    let path = dir.join(format!("{group}.toml"));
    let text = format!(
        r#"
[source]
kind = "kafka"
[source.kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
dead_letter_topic = "{dlq}"
[source.kafka.properties]
"auto.commit.interval.ms" = "500"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[store]
url = "{db_url}"
[engine]
device = "cpu"
[windows]
count = {window}
duration_secs = 0
[reference]
size = {reference}
[judge]
alpha = 0.0001
[log]
filter = "info,modelwatch=debug"
[telemetry]
listen = ""
"#,
        brokers = brokers()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &std::path::Path, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(daemon_binary())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start daemon");
        Daemon { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("daemon ignored SIGTERM for 20 s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!(
                "daemon exited early with {status}; log:\n{}",
                self.log_text()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until `windows` windows are stored, failing with the daemon log.
pub async fn wait_for_windows(pool: &PgPool, daemon: &mut Daemon, windows: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        daemon.assert_alive();
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM windows")
            .fetch_one(pool)
            .await
            .map(|r| r.get("n"))
            .unwrap_or(0);
        if n >= windows {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "only {n} of {windows} windows stored after {timeout:?}; daemon log:\n{}",
                daemon.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (window, feature) of every score past its threshold, sorted: the
/// alert conditions, before hysteresis turns them into incidents.
pub async fn alert_cells(pool: &PgPool) -> Vec<(i64, String)> {
    crossings(pool, "feature_drift").await
}

/// (window, feature) of every score of `detector` (any, when empty) past
/// its threshold, sorted.
pub async fn crossings(pool: &PgPool, detector: &str) -> Vec<(i64, String)> {
    let mut v: Vec<(i64, String)> =
        sqlx::query("SELECT window_seq, feature FROM scores WHERE p_value < threshold AND ($1 = '' OR detector = $1)")
            .bind(detector)
            .fetch_all(pool)
            .await
            .expect("scores")
            .into_iter()
            .map(|r| (r.get("window_seq"), r.get("feature")))
            .collect();
    v.sort();
    v
}

/// (dedup key, status, first window, last window) of every finding's
/// incident (episodes apart).
pub async fn incidents(pool: &PgPool) -> Vec<(String, String, i64, i64)> {
    alert_rows(pool, false).await
}

/// The episodes the findings were paged as: key, status, first and last
/// window, in key and incident order.
pub async fn episodes(pool: &PgPool) -> Vec<(String, String, i64, i64)> {
    alert_rows(pool, true).await
}

async fn alert_rows(pool: &PgPool, episodes: bool) -> Vec<(String, String, i64, i64)> {
    sqlx::query("SELECT dedup_key, status, first_window_seq, last_window_seq FROM alerts WHERE (detector = 'episode') = $1 ORDER BY dedup_key, incident")
        .bind(episodes)
        .fetch_all(pool)
        .await
        .expect("alerts")
        .into_iter()
        .map(|r| (r.get("dedup_key"), r.get("status"), r.get("first_window_seq"), r.get("last_window_seq")))
        .collect()
}

/// Stores `lines` as model `credit`'s reference with `baseline import`,
/// before any daemon starts.
pub fn import_baseline(store: &str, dir: &std::path::Path, lines: &[String]) {
    let baseline = dir.join("baseline.ndjson");
    std::fs::write(&baseline, lines.join("\n")).expect("write baseline");
    succeeded(
        &Command::new(daemon_binary())
            .args(["baseline", "import", "--model", "credit"])
            .arg(&baseline)
            .env("MODELWATCH_STORE__URL", store)
            .output()
            .expect("run baseline import"),
    );
}

/// The group's committed offset on partition 0 of `topic` (-1 when none),
/// read without joining the group.
pub fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

/// Runs `modelwatch migrate` on `url` with MODELWATCH_READER_PASSWORD set,
/// and connects as the read-only role it leaves; also returns migrate's
/// output.
pub async fn reader(url: &str, password: &str) -> (String, PgPool) {
    let out = std::process::Command::new(daemon_binary())
        .arg("migrate")
        .env("MODELWATCH_STORE__URL", url)
        .env("MODELWATCH_READER_PASSWORD", password)
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let url = format!("{scheme}://modelwatch_reader:{password}@{host}");
    (stdout, PgPool::connect(&url).await.unwrap())
}

/// Runs `tests/schemas/check.mjs MODE FILES...` where `tests/run.sh`
/// installed the published schemas it checks against
/// (`MODELWATCH_SCHEMAS`). The script is copied there first, under a name
/// of its own (tests run in parallel), so that its imports resolve against
/// those packages.
pub fn schema_check(mode: &str, files: &[PathBuf]) -> std::process::Output {
    let dir = std::env::var("MODELWATCH_SCHEMAS").expect(
        "MODELWATCH_SCHEMAS is not set: run the suite through tests/run.sh, which installs the schemas",
    );
    let script = PathBuf::from(&dir).join(format!("{}.mjs", unique("check")));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemas/check.mjs"),
        &script,
    )
    .unwrap();
    let out = Command::new("node")
        .arg(&script)
        .arg(mode)
        .args(files)
        .current_dir(&dir)
        .output()
        .expect("node not found: tests/run.sh installs it");
    let _ = std::fs::remove_file(&script);
    out
}

/// The repository path of a committed file.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A metrics registry with a series in every family, as a running monitor
/// has (families without a series are not exported), as Prometheus text.
pub fn full_exposition() -> String {
    let m = modelwatch::telemetry::metrics::Metrics::new();
    m.set_device("flex", "cpu", "flex", "auto");
    m.set_lag("inference", 0, 1);
    m.notification("pagerduty", "failed");
    m.set_backlog("pagerduty", 1);
    m.reject("invalid_json");
    m.window_scored("m");
    m.detector_took("feature_drift", "flex:cpu", Duration::from_millis(3));
    m.store_write_took(Duration::from_millis(3));
    m.step_retry("store");
    m.encode()
}

/// The first sample of `name` a scrape of the daemon's listener reads now.
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
