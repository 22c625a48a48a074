//! What producers send cannot stop the monitor or lose events: batched
//! messages, restarts in the middle of one, and hostile values.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{daemon_binary, metric, telemetry, unique};
use sqlx::sqlite::SqlitePool;

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("store.db").display())
}

fn daemon(store: &str) -> Command {
    let mut c = Command::new(daemon_binary());
    c.env("MODELWATCH_STORE__URL", store)
        .env("MODELWATCH_REFERENCE__SIZE", "100")
        .env("MODELWATCH_WINDOWS__COUNT", "100")
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .env("MODELWATCH_TELEMETRY__LISTEN", "")
        .env_remove("MODELWATCH_CONFIG");
    c
}

/// Runs the daemon on a named pipe at `input` that the test writes and keeps
/// open, so the source never ends; a later run can read a file at the same
/// path, the same stream.
fn on_fifo(mut cmd: Command, input: &Path) -> (std::process::Child, std::fs::File) {
    let made = Command::new("mkfifo").arg(input).status().unwrap();
    assert!(made.success(), "mkfifo");
    let child = cmd
        .args(["run", "--file"])
        .arg(input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read-write: on Linux this does not wait for the daemon to open its
    // end, so a daemon that dies first fails the test instead of hanging it.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(input)
        .unwrap();
    (child, pipe)
}

/// (events in the stored reference, events in stored windows, windows).
async fn stored(store: &str) -> (i64, i64, i64) {
    const REFERENCE: &str =
        "SELECT CAST(COALESCE(SUM(n_events), 0) AS BIGINT) FROM model_references";
    const WINDOWS: &str =
        "SELECT CAST(COALESCE(SUM(n_events), 0) AS BIGINT), COUNT(*) FROM windows";
    if store.starts_with("postgres") {
        let pool = sqlx::postgres::PgPool::connect(store).await.unwrap();
        let r: i64 = sqlx::query_scalar(REFERENCE)
            .fetch_one(&pool)
            .await
            .unwrap();
        let (e, w): (i64, i64) = sqlx::query_as(WINDOWS).fetch_one(&pool).await.unwrap();
        pool.close().await;
        return (r, e, w);
    }
    let pool = SqlitePool::connect(store).await.unwrap();
    let r: i64 = sqlx::query_scalar(REFERENCE)
        .fetch_one(&pool)
        .await
        .unwrap();
    let (e, w): (i64, i64) = sqlx::query_as(WINDOWS).fetch_one(&pool).await.unwrap();
    pool.close().await;
    (r, e, w)
}

async fn windows_stored(store: &str) -> i64 {
    match SqlitePool::connect(store).await {
        Ok(pool) => {
            let n = sqlx::query_scalar("SELECT COUNT(*) FROM windows")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            pool.close().await;
            n
        }
        Err(_) => 0,
    }
}

/// One message carrying 250 events: the reference takes the first 100, a
/// window the next 100; the daemon is killed with the last 50 in an open
/// window. After a restart over the same message and 30 more events, every
/// event is in the reference or in exactly one stored window.
#[tokio::test]
async fn every_event_of_a_batched_message_is_windowed_once_across_a_kill() {
    let dir = std::env::temp_dir().join(unique("mw_batch"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = sqlite_url(&dir);
    let lines = telemetry(21, 100, 60, 3, 0..0);
    let batch = format!("[{}]", lines[..250].join(","));

    // First run on a named pipe kept open, so the source never ends; the
    // restart reads a file at the same path, the same stream.
    let input = dir.join("events.ndjson");
    let mut first = daemon(&store);
    first.env("MODELWATCH_WINDOWS__DURATION_SECS", "0");
    let (mut first, mut pipe) = on_fifo(first, &input);
    writeln!(pipe, "{batch}").unwrap();
    pipe.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while windows_stored(&store).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the batch's second hundred events never made a window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().unwrap();
    let _ = first.wait();
    drop(pipe);
    std::fs::remove_file(&input).unwrap();
    assert_eq!(stored(&store).await, (100, 100, 1));

    // Restart over the same message, then 30 single events.
    std::fs::write(&input, format!("{batch}\n{}\n", lines[250..280].join("\n"))).unwrap();
    let out = daemon(&store)
        .args(["run", "--file"])
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("280 events"), "{stdout}");
    assert!(stdout.contains("200 already stored"), "{stdout}");
    let (reference, windowed, windows) = stored(&store).await;
    assert_eq!(reference + windowed, 280, "every event exactly once");
    assert_eq!((windowed, windows), (180, 2), "100, then 50 + 30");
}

/// Runs the daemon on `input` and waits at most `secs`: a wedged daemon
/// fails the test instead of hanging it.
fn run_bounded(mut cmd: Command, secs: u64) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained as the daemon writes, so that a chatty run cannot fill a pipe
    // and block.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!(
                "daemon still running after {secs}s:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Messages that used to panic the daemon, stop its input, or store a
/// reference that could not be loaded again: each is dead-lettered with its
/// reason, every other event is windowed, and a second run over the same
/// input and store finishes having reprocessed nothing.
#[tokio::test]
async fn hostile_messages_are_dead_lettered_and_stop_nothing_on_sqlite() {
    let dir = std::env::temp_dir().join(unique("mw_hostile"));
    std::fs::create_dir_all(&dir).unwrap();
    hostile_messages(&dir, &sqlite_url(&dir)).await;
}

/// The same on PostgreSQL, where U+0000, timestamps before 4713 BC and keys
/// past the btree row size each used to fail the write, and so wedge the
/// stream.
#[tokio::test]
async fn hostile_messages_are_dead_lettered_and_stop_nothing_on_postgres() {
    let dir = std::env::temp_dir().join(unique("mw_hostile_pg"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = common::fresh_database(&unique("mw_hostile")).await;
    hostile_messages(&dir, &db).await;
}

async fn hostile_messages(dir: &Path, store: &str) {
    let store = store.to_string();
    let mut lines: Vec<Vec<u8>> = telemetry(22, 100, 100, 3, 0..0)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let nested = format!("{}1{}", "[".repeat(126), "]".repeat(126));
    let hostile: Vec<(usize, Vec<u8>, &str)> = vec![
        // A window opened at the end of time used to overflow its end.
        (
            200,
            br#"{"model":"credit","ts":"+262142-12-31T23:59:59Z","features":{"x1":0.1}}"#.to_vec(),
            "timestamp_out_of_range",
        ),
        (150, b"\xff\xfe not utf-8 \xc3\x28".to_vec(), "invalid_json"),
        (
            10,
            format!(r#"{{"model":"credit","ts":"2026-03-01T00:00:10Z","actual":{nested}}}"#)
                .into_bytes(),
            "invalid_value",
        ),
        (
            60,
            br#"{"model":"cre\u0000dit","ts":"2026-03-01T00:01:00Z"}"#.to_vec(),
            "invalid_value",
        ),
        (
            120,
            br#"{"model":"credit","ts":"-4714-11-24T00:00:00Z","features":{"x1":0.1}}"#.to_vec(),
            "timestamp_out_of_range",
        ),
        (
            130,
            format!(r#"{{"model":"credit","ts":"2026-03-01T00:02:10Z","features":{{"{}":1}}}}"#, "f".repeat(5000))
                .into_bytes(),
            "invalid_value",
        ),
        (
            140,
            br#"{"model":"credit","ts":"2026-03-01T00:02:20Z","features":{"segment":"re\u0000tail"}}"#.to_vec(),
            "invalid_value",
        ),
        (
            70,
            format!(
                r#"{{"model":"{}","ts":"2026-03-01T00:01:10Z"}}"#,
                "m".repeat(5000)
            )
            .into_bytes(),
            "invalid_value",
        ),
    ];
    for (at, line, _) in &hostile {
        lines.insert(*at, line.clone());
    }
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join(&b'\n')).unwrap();
    let dead = dir.join("dead.ndjson");
    let run = || {
        let mut c = daemon(&store);
        c.args(["run", "--file"])
            .arg(&input)
            .env("MODELWATCH_SOURCE__FILE__DEAD_LETTER_PATH", &dead);
        run_bounded(c, 120)
    };
    let out = run();
    let stdout = common::succeeded(&out);
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    let mut reasons: Vec<String> = dead_text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = hostile.iter().map(|(_, _, r)| r.to_string()).collect();
    expected.sort();
    assert_eq!(reasons, expected, "{dead_text}");
    assert_eq!(stored(&store).await, (100, 300, 3), "{stdout}");

    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(stdout.contains("0 windows scored"), "{stdout}");
    assert!(stdout.contains("400 already stored"), "{stdout}");
}

fn credit_event(i: usize, x1: serde_json::Value, x2: f64) -> modelwatch::event::TelemetryEvent {
    serde_json::from_value(serde_json::json!({
        "model": "m",
        "ts": format!("2026-03-01T00:00:{:02}Z", i % 60),
        "request_id": format!("r{i}"),
        "client_id": if i % 2 == 0 { "a" } else { "b" },
        "features": {"x1": x1, "x2": x2, "x3": (i % 13) as f64},
    }))
    .unwrap()
}

/// Requests an attacker shapes to slip past the out-of-distribution
/// detector: a numeric feature missing or sent as text (the row cannot be
/// placed), and values whose quadratic form overflows f32 (once read as
/// distance 0). Both now count against the window.
#[test]
fn out_of_distribution_evasion_is_scored() {
    use modelwatch::detect::engine::Engine;
    use modelwatch::detect::{DeviceChoice, Scorer};
    let scorer = Scorer::new(Engine::open(DeviceChoice::Cpu, 1 << 26).unwrap());
    let wave = |i: usize, k: f64| ((i as f64 * k).sin() + 1.0) * 50.0;
    let reference: Vec<_> = (0..500)
        .map(|i| credit_event(i, wave(i, 0.37).into(), wave(i, 0.11)))
        .collect();
    let fitted = scorer.fit("m", &reference, &[], 0).unwrap();
    let score = |window: &[modelwatch::event::TelemetryEvent], feature: &str| {
        scorer
            .score(&fitted, window)
            .unwrap()
            .scores
            .into_iter()
            .find(|s| s.detector == "out_of_distribution" && s.feature == feature)
    };
    let clean: Vec<_> = (0..200)
        .map(|i| credit_event(i + 7, wave(i + 7, 0.37).into(), wave(i + 7, 0.11)))
        .collect();
    assert!(
        score(&clean, "features_unplaced").is_none(),
        "nothing to place"
    );
    let mut evasive = clean.clone();
    for (j, e) in evasive.iter_mut().enumerate().take(30) {
        let x1 = if j % 2 == 0 {
            serde_json::Value::Null
        } else {
            "12.5".into()
        };
        *e = credit_event(j, x1, 10.0);
    }
    let s = score(&evasive, "features_unplaced").expect("unplaced requests scored");
    assert_eq!(s.statistic, 30.0 / 200.0);
    assert!(s.p_value < 1e-10, "p {}", s.p_value);
    let mut huge = clean.clone();
    for (j, e) in huge.iter_mut().enumerate().take(10) {
        *e = credit_event(j, 1e30.into(), 1e30);
    }
    let s = score(&huge, "features").expect("features scored");
    assert!(
        s.statistic >= 10.0 / 200.0,
        "overflowing rows count: {}",
        s.statistic
    );
    assert!(s.p_value < 1e-3, "p {}", s.p_value);
}

/// A producer spraying model names gets no state past the limit: the extra
/// models' messages are dead-lettered as `unknown_model`, the others scored.
#[tokio::test]
async fn model_names_beyond_the_limit_are_refused() {
    let dir = std::env::temp_dir().join(unique("mw_models"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = sqlite_url(&dir);
    let mut lines = telemetry(23, 100, 100, 1, 0..0);
    for k in 0..5 {
        lines.insert(
            50 + k,
            format!(r#"{{"model":"spray-{k}","ts":"2026-03-01T00:00:00Z"}}"#),
        );
    }
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let dead = dir.join("dead.ndjson");
    let mut c = daemon(&store);
    c.args(["run", "--file"])
        .arg(&input)
        .env("MODELWATCH_SOURCE__FILE__DEAD_LETTER_PATH", &dead)
        .env("MODELWATCH_LIMITS__MAX_MODELS", "3");
    let out = run_bounded(c, 120);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(
        dead_text.matches("\"reason\":\"unknown_model\"").count(),
        3,
        "{dead_text}"
    );
    assert!(stdout.contains("unknown_model=3"), "{stdout}");
    assert_eq!(
        stored(&store).await.1,
        100,
        "the credit model's window is scored"
    );
}

/// The shipped config bins `fraud-scorer/amount` by Sturges for PSI; a
/// producer sending amounts at f64's ends used to panic the fit (and with
/// it the scoring thread). Now the fit and every window score.
#[test]
fn the_shipped_psi_binning_survives_values_at_the_ends_of_f64() {
    use modelwatch::detect::engine::Engine;
    use modelwatch::detect::{DeviceChoice, Scorer};
    let text = include_str!("../deploy/modelwatch.toml");
    let config = modelwatch::config::Config::from_sources(text, []).unwrap();
    let scorer = Scorer::with_config(
        Engine::open(DeviceChoice::Cpu, 1 << 26).unwrap(),
        &config.detect,
    );
    let event = |i: usize, amount: f64| -> modelwatch::event::TelemetryEvent {
        serde_json::from_value(serde_json::json!({
            "model": "fraud-scorer",
            "ts": "2026-03-01T00:00:00Z",
            "features": {"amount": amount, "age": (i % 50) as f64},
            "output": {"probabilities": [0.9, 0.1]},
        }))
        .unwrap()
    };
    let amount = |i: usize| match i % 97 {
        0 => -1e308,
        1 => 1e308,
        _ => (i % 89) as f64 * 3.5,
    };
    let reference: Vec<_> = (0..2000).map(|i| event(i, amount(i))).collect();
    let fitted = scorer
        .fit(
            "fraud-scorer",
            &reference,
            &["legit".into(), "fraud".into()],
            500,
        )
        .expect("fit");
    let window: Vec<_> = (0..500).map(|i| event(i, amount(i * 7))).collect();
    let scores = scorer.score(&fitted, &window).expect("score").scores;
    let psi = scores
        .iter()
        .find(|s| s.feature == "amount")
        .and_then(|s| s.effect.clone())
        .expect("amount scored with its effect");
    assert_eq!(psi.name, "psi");
    assert!(psi.value.is_finite(), "{psi:?}");
}

/// A model name sent a few times and never again holds its unfinished
/// reference, and with it the stream's committable position, until it is
/// evicted after `limits.idle_model_secs`.
#[tokio::test]
async fn idle_models_are_evicted_and_release_their_positions() {
    let dir = std::env::temp_dir().join(unique("mw_idle"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = sqlite_url(&dir);
    let input = dir.join("events.ndjson");
    let port = common::free_port();
    let mut cmd = daemon(&store);
    cmd.env("MODELWATCH_TELEMETRY__LISTEN", format!("127.0.0.1:{port}"))
        .env("MODELWATCH_LIMITS__IDLE_MODEL_SECS", "2");
    let (mut daemon, mut pipe) = on_fifo(cmd, &input);
    for i in 0..5 {
        writeln!(pipe, r#"{{"model":"once-{i}","features":{{"x":{i}}}}}"#).unwrap();
    }
    pipe.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let evicted = loop {
        let n = metric(port, "modelwatch_models_evicted_total").await;
        if n == Some(5.0) || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let held = metric(port, "modelwatch_positions_held").await;
    let dropped = metric(port, "modelwatch_reference_events_dropped_total").await;
    daemon.kill().unwrap();
    let _ = daemon.wait();
    assert_eq!(evicted, Some(5.0));
    assert_eq!(dropped, Some(5.0));
    assert_eq!(held, Some(0.0), "evicted models still hold positions");
}

/// A stored reference that cannot be read (written by hand, or by another
/// version) makes its model unavailable, not the daemon: that model's
/// messages are dead-lettered with reason `model_unavailable`, the other
/// model is windowed, and the run ends cleanly. The load error used to end
/// the run, and every restart met it again.
#[tokio::test]
async fn an_unreadable_reference_stops_only_its_model() {
    let dir = std::env::temp_dir().join(unique("mw_unavailable"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = sqlite_url(&dir);
    let migrate = daemon(&store).arg("migrate").output().unwrap();
    common::succeeded(&migrate);
    let pool = SqlitePool::connect(&store).await.unwrap();
    sqlx::query(
        "INSERT INTO model_references (model, origin, n_events, events, created_at)
         VALUES ('fraud', 'import:by-hand', 1, '{\"not\": \"a list of events\"}', '2026-11-28T00:00:00Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let credit = telemetry(31, 100, 100, 2, 0..0);
    let fraud: Vec<String> = credit[..50]
        .iter()
        .map(|l| l.replace("\"model\":\"credit\"", "\"model\":\"fraud\""))
        .collect();
    let mut lines = credit.clone();
    for (k, l) in fraud.iter().enumerate() {
        lines.insert(k * 6, l.clone());
    }
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let dead = dir.join("dead.ndjson");
    let mut c = daemon(&store);
    c.args(["run", "--file"])
        .arg(&input)
        .env("MODELWATCH_SOURCE__FILE__DEAD_LETTER_PATH", &dead);
    let out = run_bounded(c, 120);
    let stdout = common::succeeded(&out);
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    let reasons: Vec<serde_json::Value> = dead_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reasons.len(), 50, "{dead_text}");
    assert!(
        reasons.iter().all(|r| r["reason"] == "model_unavailable"),
        "{dead_text}"
    );
    assert_eq!(stored(&store).await, (101, 200, 2), "{stdout}");
}
