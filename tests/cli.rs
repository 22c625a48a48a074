//! The commands a new user runs first: `demo`, `run --file`, `check-config`.

mod common;

use std::process::Command;

use common::{daemon_binary, succeeded, telemetry, unique};

#[test]
fn demo_prints_alerts_for_its_scheduled_episodes_and_exits_0() {
    let out = Command::new(daemon_binary())
        .args(["demo", "--device", "cpu"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let alerts: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("ALERT"))
        .map(|(i, l)| (i, *l))
        .collect();
    let field = |l: &str, name: &str| -> Option<String> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let window_of = |l: &str| -> i64 { field(l, "window").unwrap().parse().unwrap() };
    // Each scheduled episode pages once, as its model's episode, at its
    // second window (two windows past threshold), listing the finding of
    // the family it belongs to and the attack it is evidence for; it
    // resolves once after three clean windows, if the stream lasts that
    // long (12 windows, 0-11). Windows are the demo's, 0-11 per model;
    // alerts number them per version (`SimModel::serving`).
    let episodes = [
        ("fraud-scorer", "feature_drift", "amount", None, 4, 6),
        (
            "fraud-scorer",
            "client_volume",
            "requests_per_client",
            Some("extraction"),
            9,
            11,
        ),
        (
            "churn-predictor",
            "boundary_probing",
            "margin_per_client",
            Some("evasion"),
            2,
            4,
        ),
        (
            "churn-predictor",
            "confidence_shift",
            "max_probability",
            None,
            7,
            9,
        ),
        (
            "image-classifier",
            "output_distribution",
            "predicted_class",
            Some("tampering"),
            5,
            7,
        ),
        (
            "image-classifier",
            "out_of_distribution",
            "embedding",
            Some("evasion"),
            10,
            11,
        ),
        (
            "loan-approver",
            "class_prior",
            "after_version_change",
            Some("poisoning"),
            6,
            11,
        ),
    ];
    assert_eq!(episodes.len(), modelwatch::ingest::demo::EPISODES.len());
    let serving = |model: &str, window: i64| {
        let fleet = &modelwatch::ingest::demo::FLEET;
        fleet
            .iter()
            .find(|m| m.name == model)
            .unwrap()
            .serving(window)
    };
    let transitions = |model: &str, what: &str, from: i64, to: i64| -> Vec<(usize, &str)> {
        let ((version, first), (_, last)) = (serving(model, from), serving(model, to));
        alerts
            .iter()
            .filter(|(_, l)| {
                l.split_whitespace().nth(1) == Some(what)
                    && field(l, "model").as_deref() == Some(model)
                    && field(l, "version").as_deref() == Some(version)
                    && field(l, "detector").as_deref() == Some("episode")
                    && (first..=last).contains(&window_of(l))
            })
            .copied()
            .collect()
    };
    for (model, detector, feature, threat, from, to) in episodes {
        let fired = transitions(model, "fired", from, to);
        assert_eq!(fired.len(), 1, "{model} {detector}: {stdout}");
        let (at, line) = fired[0];
        assert_eq!(window_of(line), serving(model, from + 1).1, "{line}");
        assert_eq!(field(line, "threat").as_deref(), threat, "{line}");
        let listed = lines[at + 1..]
            .iter()
            .take_while(|l| l.starts_with("      "))
            .any(|l| l.contains(&format!("detector={detector} feature={feature} ")));
        assert!(
            listed,
            "{model}: {detector}/{feature} not in the episode: {stdout}"
        );
        let resolved: Vec<i64> = transitions(model, "resolved", to + 1, 11)
            .iter()
            .map(|(_, l)| window_of(l))
            .collect();
        let expected: Vec<i64> = if to + 3 <= 11 {
            vec![serving(model, to + 3).1]
        } else {
            vec![]
        };
        assert_eq!(resolved, expected, "{model} {detector}: {stdout}");
    }
    // Nothing pages outside the episodes, and only episodes page.
    let fired: Vec<&str> = alerts
        .iter()
        .map(|(_, l)| *l)
        .filter(|l| l.split_whitespace().nth(1) == Some("fired"))
        .collect();
    assert_eq!(fired.len(), episodes.len(), "{stdout}");
    assert!(stdout.contains("summary:"), "{stdout}");
    assert!(
        stdout.contains("invalid_json=1"),
        "the demo's malformed message is counted: {stdout}"
    );
}

#[test]
fn run_on_a_file_with_the_embedded_store() {
    let dir = std::env::temp_dir().join(unique("mw_file"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = telemetry(5, 200, 100, 6, 3..6);
    lines.insert(250, "this is not json".into());
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let db = dir.join("store.db");
    let dead = dir.join("dead.ndjson");
    let store = format!("sqlite:{}", db.display());
    let out = run_file(
        &input,
        &store,
        200,
        &[(
            "MODELWATCH_SOURCE__FILE__DEAD_LETTER_PATH",
            &dead.display().to_string(),
        )],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let cells = transitions_printed(&stdout);
    // x1 past threshold in windows 3-5: pending at 3, fired at 4; the file
    // ends before three clean windows could resolve it.
    assert_eq!(cells, vec!["fired:4:x1"], "{stdout}");
    let dead_text = std::fs::read_to_string(&dead).expect("dead-letter file");
    assert_eq!(dead_text.lines().count(), 1);
    assert!(
        dead_text.contains("\"reason\":\"invalid_json\""),
        "{dead_text}"
    );
    assert!(dead_text.contains("this is not json"));

    // A second run over the same file and store writes nothing new.
    let again = run_file(&input, &store, 200, &[]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        !stdout.contains("ALERT"),
        "replay raised alerts again: {stdout}"
    );
    assert!(stdout.contains("0 windows scored"), "{stdout}");
}

#[test]
fn check_config_prints_effective_config_and_rejects_unknown_fields() {
    let dir = std::env::temp_dir().join(unique("mw_cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[windows]\ncount = 42\n").unwrap();
    let out = Command::new(daemon_binary())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("count = 42"), "{text}");
    assert!(
        text.contains("device = \"auto\""),
        "defaults are printed too: {text}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[windows]\ncuont = 42\n").unwrap();
    let out = Command::new(daemon_binary())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("cuont"),
        "{err}"
    );
}

#[test]
fn imported_baseline_is_the_reference() {
    let dir = std::env::temp_dir().join(unique("mw_baseline"));
    std::fs::create_dir_all(&dir).unwrap();
    // 300 clean events form the baseline; the stream is 4 windows with x1
    // shifted in windows 2 and 3.
    let all = telemetry(9, 300, 100, 4, 2..4);
    let baseline = dir.join("baseline.ndjson");
    std::fs::write(&baseline, all[..300].join("\n")).unwrap();
    let stream = dir.join("stream.ndjson");
    std::fs::write(&stream, all[300..].join("\n")).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());

    let import = |extra: &[&str]| {
        Command::new(daemon_binary())
            .args(["baseline", "import", "--model", "credit"])
            .args(extra)
            .arg(&baseline)
            .env("MODELWATCH_STORE__URL", &store)
            .output()
            .unwrap()
    };
    let out = import(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 events"));
    let again = import(&[]);
    assert!(
        !again.status.success(),
        "a second import must not silently replace"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));
    assert!(import(&["--replace"]).status.success());

    // A reference size the stream never reaches: only the import can serve.
    let out = run_file(&stream, &store, 100_000, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cells = transitions_printed(&stdout);
    assert_eq!(cells, vec!["fired:3:x1"], "{stdout}");
    assert!(stdout.contains("4 windows scored"), "{stdout}");
    // What was calibrated on the reference is stored beside it.
    let calibration = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = modelwatch::store::Store::open(&store, 1).await.unwrap();
        store.load_calibration("credit").await.unwrap()
    });
    let calibration = calibration.expect("calibration stored with the reference");
    let ood = &calibration["out_of_distribution"][0];
    assert_eq!(ood["space"], "features", "{calibration}");
    assert_eq!(ood["reference_rows"], 300, "{calibration}");
    assert_eq!(ood["quantile"], 0.999, "{calibration}");
    assert!(ood["threshold"].as_f64().unwrap() > 0.0, "{calibration}");
}

/// `transition:window:feature` of every ALERT line the daemon printed, sorted.
/// `what:window:features` per page printed; an episode's trigger names the
/// features of the findings it lists, joined by `+`.
fn transitions_printed(stdout: &str) -> Vec<String> {
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    let mut cells: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("ALERT"))
        .map(|(i, l)| {
            let what = l.split_whitespace().nth(1).unwrap();
            let findings: Vec<String> = lines[i + 1..]
                .iter()
                .take_while(|f| f.starts_with("      finding "))
                .map(|f| field(f, "feature="))
                .collect();
            let features = match findings.is_empty() {
                true => field(l, "feature="),
                false => findings.join("+"),
            };
            format!("{what}:{}:{features}", field(l, "window="))
        })
        .collect();
    cells.sort();
    cells
}

/// `score` streams the current file: windows are scored as they close, and
/// what is held is a few blocks of the file's events, however long it is.
/// Holding every event first took 330-470 MB more here for 200,000 events
/// more; streaming, the two peaks are within about 70 MB of each other (how
/// far the reading runs ahead varies). The peak is what the process itself logs (`VmHWM`).
#[test]
fn score_memory_does_not_grow_with_the_current_file() {
    let dir = std::env::temp_dir().join(unique("mw_score_stream"));
    std::fs::create_dir_all(&dir).unwrap();
    // One event time: windows close by count alone.
    let all: Vec<String> = (0..301_000u64)
        .map(|i| {
            let x = |k: u64| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0;
            serde_json::json!({
                "model": "m", "ts": "2026-03-01T00:00:00Z", "request_id": format!("r-{i}"),
                "features": {"a": x(1), "b": x(2), "c": x(3), "d": x(4), "e": x(5)},
                "output": {"probabilities": [x(6), 1.0 - x(6)]},
            })
            .to_string()
        })
        .collect();
    let reference = dir.join("ref.ndjson");
    std::fs::write(&reference, all[..1000].join("\n")).unwrap();
    let peak = |windows: usize| {
        let current = dir.join(format!("cur{windows}.ndjson"));
        std::fs::write(&current, all[1000..1000 + windows * 1000].join("\n")).unwrap();
        let out = Command::new(daemon_binary())
            .args([
                "score",
                "--window",
                "1000",
                "--format",
                "json",
                "--reference",
            ])
            .arg(&reference)
            .arg("--current")
            .arg(&current)
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_LOG__FORMAT", "json")
            .env("MODELWATCH_STORE__URL", "sqlite::memory:")
            .output()
            .unwrap();
        succeeded(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["fields"]["message"] == "current scored")
            .unwrap_or_else(|| panic!("no summary in the log:\n{log}"));
        assert_eq!(done["fields"]["windows"], windows as u64);
        done["fields"]["peak_rss_mb"]
            .as_u64()
            .expect("linux tells the peak")
    };
    // Both files far longer than the blocks in flight at once (about
    // 24,000 events each here).
    let (short, long) = (peak(100), peak(300));
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("peak memory: 100 windows {short} MB, 300 windows {long} MB");
    assert!(
        long < short + 120,
        "300 windows took {long} MB against {short} MB for 100"
    );
}

/// A run that fails while its current file is a pipe still open exits: the
/// reading thread, blocked on the pipe, is not waited for. (It was a
/// blocking task, which the runtime waits for at exit: the run hung until
/// the writer closed.)
#[test]
fn a_failed_score_does_not_wait_for_a_pipe_that_stays_open() {
    let all = telemetry(23, 300, 100, 1, 0..0);
    let Files { dir, reference, .. } = files("mw_score_fifo", &all);
    // One and a half blocks (6 MB) of a model the reference lacks: the
    // first event of the first block fails the run while the reading waits
    // on the pipe for the rest of the second, the writer idling.
    let other = all[300].replace(r#""model":"credit""#, r#""model":"other""#);
    let events = dir.join("other.ndjson");
    let copies = 6_000_000 / (other.len() + 1);
    std::fs::write(&events, format!("{other}\n").repeat(copies)).unwrap();
    let fifo = dir.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut writer = Command::new("sh")
        .args(["-c", r#"exec 3>"$0"; cat "$1" >&3; sleep 60"#])
        .arg(&fifo)
        .arg(&events)
        .spawn()
        .unwrap();
    let mut score = Command::new(daemon_binary())
        .args(["score", "--reference"])
        .arg(&reference)
        .arg("--current")
        .arg(&fifo)
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = score.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            score.kill().ok();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    writer.kill().ok();
    writer.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
    let status = status.expect("score still running 30 s after its error");
    assert!(!status.success());
}

/// A scratch folder with the first 300 lines as the reference, the rest as
/// the current file, and an embedded store's URL in it.
struct Files {
    dir: std::path::PathBuf,
    reference: std::path::PathBuf,
    current: std::path::PathBuf,
    store: String,
}

fn files(name: &str, all: &[String]) -> Files {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let (reference, current) = (dir.join("ref.ndjson"), dir.join("cur.ndjson"));
    std::fs::write(&reference, all[..300].join("\n")).unwrap();
    std::fs::write(&current, all[300..].join("\n")).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    Files {
        dir,
        reference,
        current,
        store,
    }
}

/// A backfill whose last line does not decode stores nothing and prints
/// nothing: the next backfill starts at window 0, not after windows of the
/// failed run (which a rerun would store again).
#[test]
fn a_backfill_with_a_bad_line_stores_nothing() {
    let all = telemetry(19, 300, 100, 5, 0..0);
    let Files {
        dir,
        reference,
        current: good,
        store,
    } = files("mw_backfill_bad", &all);
    let broken = dir.join("broken.ndjson");
    std::fs::write(&broken, format!("{}\n{{not json\n", all[300..].join("\n"))).unwrap();
    // `score` on `current` (with `--store` for a backfill), `input` on its
    // standard input.
    let score = |current: &std::path::Path, backfill: bool, input: &str| {
        let mut cmd = Command::new(daemon_binary());
        cmd.args(["score", "--format", "json", "--window", "100"])
            .arg("--reference")
            .arg(&reference)
            .arg("--current")
            .arg(current)
            .args(backfill.then_some("--store"))
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_STORE__URL", &store)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A run that does not read its input may close the pipe first.
        let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let failed = score(&broken, true, "");
    assert!(!failed.status.success(), "a broken backfill succeeded");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("broken.ndjson:501"), "{stderr}");
    let printed = String::from_utf8_lossy(&failed.stdout);
    assert!(printed.is_empty(), "{printed}");
    let out = succeeded(&score(&good, true, ""));
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["window"], 0, "{first}");
    // A pipe is read once: scored as it comes, refused for a backfill
    // (which reads its file twice).
    let (stdin, input) = (std::path::Path::new("/dev/stdin"), all[300..].join("\n"));
    let streamed = succeeded(&score(stdin, false, &input));
    assert_eq!(streamed.lines().count(), out.lines().count(), "{streamed}");
    let refused = score(stdin, true, &input);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("regular file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn score_command_prints_every_score_and_backfills() {
    let all = telemetry(13, 300, 100, 5, 3..5);
    let Files {
        dir,
        reference,
        current,
        store,
    } = files("mw_score", &all);
    let score = |extra: &[&str]| {
        Command::new(daemon_binary())
            .args(["score", "--window", "100", "--reference"])
            .arg(&reference)
            .arg("--current")
            .arg(&current)
            .args(extra)
            .env("MODELWATCH_JUDGE__ALPHA", "0.0001")
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_DETECT__HISTORY__MIN_WINDOWS", "3")
            .env("MODELWATCH_STORE__URL", &store)
            .output()
            .unwrap()
    };
    let out = score(&["--format", "json", "--store"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per window: KS on x1, x2, chi2 on the category; KS and Welch on the
    // max probability (two classes: margin and entropy add nothing);
    // expected accuracy; class mix; out-of-distribution fraction. From the
    // fourth window on, three windows make a past (`min_windows` set to 3),
    // and the class mix is judged against it too (`class_prior`).
    assert_eq!(
        rows.len(),
        8 * 5 + 2,
        "eight scores in each of five windows"
    );
    let against_past: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["detector"] == "class_prior")
        .map(|r| &r["window"])
        .collect();
    assert_eq!(against_past, [3, 4]);
    let crossed = |detector: &str| -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r["alert"] != "-" && (detector.is_empty() || r["detector"] == detector))
            .map(|r| format!("{}:{}", r["window"], r["feature"].as_str().unwrap()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(crossed("feature_drift"), vec!["3:x1", "4:x1"]);
    assert!(
        crossed("")
            .iter()
            .all(|c| c.starts_with("3:") || c.starts_with("4:")),
        "only the shifted windows cross: {:?}",
        crossed("")
    );
    for r in &rows {
        assert_eq!(
            r["alert"] != "-",
            r["p_value"].as_f64().unwrap() < r["threshold"].as_f64().unwrap()
        );
    }
    // The class mix carries its Jensen-Shannon distance (not gating on 300
    // reference rows).
    let mix = rows
        .iter()
        .find(|r| r["detector"] == "output_distribution")
        .unwrap();
    assert_eq!(mix["effect"]["name"], "jensen_shannon", "{mix}");
    assert_eq!(mix["effect"]["gating"], false, "{mix}");
    // The same scores as a table, appended to the store's history.
    let out = score(&["--store"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("model"), "{table}");
    assert_eq!(table.lines().count(), 1 + 42);
    assert!(
        table.lines().any(|l| l.contains(" 8 ") && l.contains("x1")),
        "second backfill continues at window 5: {table}"
    );
    // Values JSON cannot hold (NaN, overflowing numbers) are refused with the
    // file and line, before any scoring.
    for (i, bad) in [r#""x1":NaN"#, r#""x1":1e999"#].iter().enumerate() {
        let path = dir.join(format!("bad{i}.ndjson"));
        let line = all[300].replacen(r#""x1":"#, &format!("{bad},\"x0\":"), 1);
        std::fs::write(&path, format!("{}\n{line}\n", all[301])).unwrap();
        let out = Command::new(daemon_binary())
            .args(["score", "--reference"])
            .arg(&reference)
            .arg("--current")
            .arg(&path)
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(
            stderr.contains(&format!("bad{i}.ndjson:2")) && stderr.contains("not valid json"),
            "{stderr}"
        );
    }
}

/// `modelwatch run --file` on the embedded store: windows of 100 events,
/// alpha 1e-4, flex, no metrics listener (tests run side by side).
fn run_file(
    input: &std::path::Path,
    store: &str,
    reference_size: usize,
    extra_env: &[(&str, &str)],
) -> std::process::Output {
    Command::new(daemon_binary())
        .args(["run", "--file"])
        .arg(input)
        .env("MODELWATCH_STORE__URL", store)
        .env("MODELWATCH_REFERENCE__SIZE", reference_size.to_string())
        .env("MODELWATCH_WINDOWS__COUNT", "100")
        .env("MODELWATCH_JUDGE__ALPHA", "0.0001")
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .env("MODELWATCH_TELEMETRY__LISTEN", "")
        .envs(extra_env.iter().copied())
        .output()
        .unwrap()
}

/// Backfill is history: `score --store` of clean windows beside a firing
/// alert leaves it firing (it used to step the live lifecycle, resolve the
/// alert and page the resolution).
#[test]
fn backfill_leaves_live_alerts_alone() {
    let dir = std::env::temp_dir().join(unique("mw_backfill"));
    std::fs::create_dir_all(&dir).unwrap();
    let lines = telemetry(5, 200, 100, 6, 3..6);
    let input = dir.join("events.ndjson");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    let out = run_file(&input, &store, 200, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(transitions_printed(&stdout), vec!["fired:4:x1"], "{stdout}");

    let reference = dir.join("ref.ndjson");
    std::fs::write(&reference, lines[..200].join("\n")).unwrap();
    let clean = dir.join("clean.ndjson");
    std::fs::write(&clean, telemetry(9, 0, 100, 5, 0..0).join("\n")).unwrap();
    let out = Command::new(daemon_binary())
        .args(["score", "--store", "--window", "100", "--reference"])
        .arg(&reference)
        .arg("--current")
        .arg(&clean)
        .env("MODELWATCH_STORE__URL", &store)
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .env("MODELWATCH_JUDGE__ALPHA", "0.0001")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(daemon_binary())
        .args(["alerts", "list", "--json", "--status", "firing"])
        .env("MODELWATCH_STORE__URL", &store)
        .output()
        .unwrap();
    let firing = String::from_utf8_lossy(&out.stdout);
    assert!(
        firing.contains("\"dedup_key\":\"credit/v1/feature_drift/x1\""),
        "the live alert did not stay firing: {firing}"
    );
}

/// A canary: v1 clean and v2 shifted, interleaved in blocks of 100. Alerts
/// are kept per version, so v2's drift fires and v1 pages nothing (one
/// alert per model used to let each clean v1 window end v2's pending one).
#[test]
fn canary_drift_fires_for_the_drifted_version_only() {
    let dir = std::env::temp_dir().join(unique("mw_canary"));
    std::fs::create_dir_all(&dir).unwrap();
    let clean = telemetry(11, 300, 100, 6, 0..0);
    let shifted = telemetry(12, 0, 100, 6, 0..6);
    let mut stream = Vec::new();
    for block in 0..6 {
        stream.extend_from_slice(&clean[300 + 100 * block..][..100]);
        stream.extend(
            shifted[100 * block..][..100]
                .iter()
                .map(|l| l.replace("\"model_version\":\"v1\"", "\"model_version\":\"v2\"")),
        );
    }
    let input = dir.join("stream.ndjson");
    std::fs::write(&input, stream.join("\n")).unwrap();
    let store = format!("sqlite:{}", dir.join("store.db").display());
    common::import_baseline(&store, &dir, &clean[..300]);
    succeeded(&run_file(&input, &store, 100_000, &[]));
    let out = Command::new(daemon_binary())
        .args(["alerts", "list", "--json"])
        .env("MODELWATCH_STORE__URL", &store)
        .output()
        .unwrap();
    let alerts: Vec<serde_json::Value> = succeeded(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let firing: Vec<&str> = alerts
        .iter()
        .filter(|a| a["status"] == "firing")
        .map(|a| a["dedup_key"].as_str().unwrap())
        .collect();
    assert!(firing.contains(&"credit/v2/feature_drift/x1"), "{alerts:?}");
    assert!(
        firing.iter().all(|k| k.starts_with("credit/v2/")),
        "{alerts:?}"
    );
    let v1: Vec<_> = alerts
        .iter()
        .filter(|a| a["model_version"] == "v1")
        .collect();
    assert!(v1.is_empty(), "the clean version has alerts: {v1:?}");
}

/// Every gating score is stored with the band its effect threshold came
/// from and the bound itself (`effect_threshold`): 1,500 reference rows cut
/// into 15 windows of the live 100, the bound at 1 - alpha over them.
#[tokio::test]
async fn scores_store_their_effect_band_and_bound() {
    use sqlx::Row;
    let dir = std::env::temp_dir().join(unique("mw_bands"));
    std::fs::create_dir_all(&dir).unwrap();
    let all = telemetry(21, 1500, 100, 2, 1..2);
    let (reference, current) = (dir.join("ref.ndjson"), dir.join("cur.ndjson"));
    std::fs::write(&reference, all[..1500].join("\n")).unwrap();
    std::fs::write(&current, all[1500..].join("\n")).unwrap();
    let url = common::fresh_database(&unique("mw_bands")).await;
    let out = Command::new(daemon_binary())
        .args(["score", "--store", "--window", "100", "--reference"])
        .arg(&reference)
        .arg("--current")
        .arg(&current)
        .env("MODELWATCH_STORE__URL", &url)
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .env("MODELWATCH_JUDGE__ALPHA", "0.01")
        .output()
        .unwrap();
    succeeded(&out);
    let pool = sqlx::postgres::PgPool::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT window_seq, p_value, threshold, effect_value, effect_threshold, effect_band_mean,
                effect_band_sd, effect_band_windows
         FROM scores WHERE detector = 'feature_drift' AND feature = 'x1' ORDER BY window_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let factor = modelwatch::detect::band::tail_factor(15, 0.01);
    for row in &rows {
        let windows: Option<i32> = row.get("effect_band_windows");
        assert_eq!(windows, Some(15));
        let (mean, sd): (f64, f64) = (row.get("effect_band_mean"), row.get("effect_band_sd"));
        let threshold: f64 = row.get("effect_threshold");
        assert!(
            (threshold - (mean + sd * factor)).abs() < 1e-9,
            "{mean} {sd} {threshold}"
        );
        assert!(sd > 0.0 && threshold > mean);
    }
    // The clean window stays under its bound; the shifted one (1.5 sd) is far past it.
    let value = |i: usize| rows[i].get::<f64, _>("effect_value");
    let bound = |i: usize| rows[i].get::<f64, _>("effect_threshold");
    assert!(value(0) < bound(0) && value(1) > 3.0 * bound(1));
}

/// `modelwatch evaluate` prints one Markdown row per reference size, window
/// size and scenario, and refuses sizes it cannot hold.
#[test]
fn evaluate_prints_the_sensitivity_table() {
    let out = Command::new(daemon_binary())
        .args([
            "evaluate",
            "--reference-rows",
            "3000",
            "--window-rows",
            "300,5000",
        ])
        .args(["--windows", "10", "--clean-windows", "20"])
        .env("MODELWATCH_ENGINE__DEVICE", "cpu")
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 3000 "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    // Windows of 5,000 do not fit in 3,000 rows: only the 300-row cell.
    assert_eq!(
        rows.len(),
        modelwatch::evaluate::scenarios().len(),
        "{stdout}"
    );
    let row = |scenario: &str| rows.iter().find(|r| r[2] == scenario).unwrap();
    // Half a sigma on 300-row windows: KS catches nearly every window.
    let half: f64 = row("x0 mean +0.5 sd")[5].parse().unwrap();
    assert!(half >= 0.8, "{stdout}");
    // Crossing nearly every window, its alert fires at the second.
    let delay = row("x0 mean +0.5 sd")[7];
    assert!(delay.starts_with("2 ("), "{stdout}");
    assert!(row("clean")[8].contains("feature_drift"), "{stdout}");
    // Without the opt-in multivariate detector, correlation is not scored.
    assert_eq!(row("x2-x3 correlation 0.8 -> 0.2")[5], "not scored");
    let refused = Command::new(daemon_binary())
        .args(["evaluate", "--reference-rows", "999999999999"])
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("must lie in 1..=5000000"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// `modelwatch migrate` leaves a read-only role for dashboards: it reads
/// every table, writes none, and takes its password from
/// MODELWATCH_READER_PASSWORD (quoted by PostgreSQL: a quote in it is data).
#[tokio::test]
async fn migrate_creates_a_read_only_reader_role() {
    let url = common::fresh_database(&unique("mw_reader")).await;
    let (stdout, reader) = common::reader(&url, "reader's-secret").await;
    assert!(
        stdout.contains("password of modelwatch_reader set"),
        "{stdout}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM windows")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let denied = sqlx::query("DELETE FROM alerts").execute(&reader).await;
    let code = denied.err().and_then(|e| {
        e.as_database_error()
            .and_then(|d| d.code().map(|c| c.to_string()))
    });
    assert_eq!(code.as_deref(), Some("42501"), "writes are refused");

    // Grants lost since (the role re-created by an operator, a dump
    // restored without them) come back at the next migrate.
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM modelwatch_reader")
        .execute(&admin)
        .await
        .unwrap();
    let lost = sqlx::query("SELECT count(*) FROM windows")
        .fetch_one(&reader)
        .await;
    assert!(lost.is_err(), "the revoke took");
    let (stdout, reader) = common::reader(&url, "reader's-secret").await;
    assert!(
        stdout.contains("modelwatch_reader may read every table"),
        "{stdout}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM window_classes")
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// The shipped systemd unit is sandboxed (`systemd-analyze security`
/// exposure at most 3.0, offline: no systemd needs to run here), and a
/// config error exits 78, which the unit's RestartPreventExitStatus stops
/// restarting on; any other failure keeps the restart.
#[test]
fn the_systemd_unit_is_sandboxed_and_stops_on_config_errors() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/modelwatch.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze not found: tests/run.sh installs it (Debian package systemd)");
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for modelwatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(exposure <= 3.0, "exposure {exposure}:\n{report}");
    let text = std::fs::read_to_string(unit).unwrap();
    let code = modelwatch::cli::EXIT_CONFIG;
    assert!(
        text.contains(&format!("RestartPreventExitStatus={code}")),
        "{text}"
    );
    let dir = std::env::temp_dir().join(unique("mw_exit"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[windows]\ncount = \"many\"\n").unwrap();
    let status_with = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(daemon_binary())
            .args(args)
            .env_remove("MODELWATCH_CONFIG")
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_TELEMETRY__LISTEN", "")
            .envs(env.iter().copied())
            .output()
            .unwrap()
            .status
            .code()
    };
    let status = |args: &[&str]| status_with(args, &[]);
    let bad = bad.to_str().unwrap();
    assert_eq!(status(&["run", "--config", bad]), Some(i32::from(code)));
    let missing = dir.join("absent.toml");
    let missing = missing.to_str().unwrap();
    assert_eq!(status(&["run", "--config", missing]), Some(i32::from(code)));
    // A store of an unknown kind, and a store password its config names
    // but the environment lacks: no restart fixes either.
    let events = dir.join("events.ndjson");
    std::fs::write(&events, "").unwrap();
    let events = events.to_str().unwrap();
    let unknown = [("MODELWATCH_STORE__URL", "mysql://db/modelwatch")];
    assert_eq!(
        status_with(&["run", "--file", events], &unknown),
        Some(i32::from(code))
    );
    let secret = [
        (
            "MODELWATCH_STORE__URL",
            "postgres://modelwatch@127.0.0.1:1/modelwatch",
        ),
        (
            "MODELWATCH_STORE__PASSWORD_ENV",
            "MODELWATCH_TEST_UNSET_PASSWORD",
        ),
    ];
    assert_eq!(
        status_with(&["run", "--file", events], &secret),
        Some(i32::from(code))
    );
    // Not a config error: a file source that does not exist.
    assert_eq!(status(&["run", "--file", missing]), Some(1));
}

/// `demo --events` prints the simulated fleet as NDJSON, the same for the
/// same seed, for `replay -` into a topic (the compose stack's README
/// command): every model's reference and windows, each line an event.
#[test]
fn demo_events_are_the_simulated_stream_as_ndjson() {
    let run = |seed: &str| {
        let out = Command::new(daemon_binary())
            .args(["demo", "--events", "--windows", "2", "--seed", seed])
            .env_remove("MODELWATCH_CONFIG")
            .output()
            .unwrap();
        succeeded(&out)
    };
    let text = run("7");
    let lines: Vec<&str> = text.lines().collect();
    let models = modelwatch::ingest::demo::FLEET.len();
    let per_model =
        modelwatch::ingest::demo::REFERENCE_SIZE + 2 * modelwatch::ingest::demo::WINDOW_SIZE;
    assert_eq!(lines.len(), models * per_model);
    for line in &lines {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            e["model"].is_string() && e["output"]["probabilities"].is_array(),
            "{line}"
        );
    }
    assert_eq!(run("7"), text, "the same seed, the same stream");
    assert_ne!(run("8"), text);
}
