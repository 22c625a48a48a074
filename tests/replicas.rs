//! Several monitors sharing one store (replicas of one consumer group):
//! each window is stored under its own number, each alert step is kept, and
//! each alert notification reaches its receiver once, however many
//! dispatchers read the outbox.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::unique;
use modelwatch::detect::{Family, Score};
use modelwatch::ingest::kafka::KafkaConfig;
use modelwatch::judge::{self, AlertState, AlertsConfig, Judged, Severity, WindowVerdict};
use modelwatch::notify::{
    Dispatcher, NotifyConfig, Receiver, ReceiverConfig, ReceiverKind, WebhookReceiver,
};
use modelwatch::store::Store;
use modelwatch::telemetry::Metrics;

/// One window in which `n` features cross: `n` alerts fire at once.
fn crossing_window(n: usize) -> WindowVerdict {
    let t = Utc::now();
    let judged = (0..n)
        .map(|i| Judged {
            score: Score {
                detector: "feature_drift".into(),
                family: Family::Drift,
                feature: format!("f{i:02}"),
                test: "ks".into(),
                statistic: 0.5,
                p_value: 1e-12,
                n_reference: 100,
                n_window: 100,
                method: "exact".into(),
                effect: None,
                examples: Vec::new(),
                band: None,
                threat: None,
            },
            threshold: 1e-3,
            crossed: Some(Severity::Critical),
        })
        .collect();
    WindowVerdict {
        model: "m".into(),
        model_version: "v1".into(),
        seq: 0,
        start: t,
        end: t,
        n_events: 100,
        close_reason: "count",
        device: "flex:cpu".into(),
        error: None,
        judged,
        sample_request_ids: Vec::new(),
        high_water: HashMap::new(),
        low_water: HashMap::new(),
        halves: Default::default(),
        trace_id: None,
        class_mix: vec![("a".into(), 60), ("b".into(), 40)],
        top_clients: vec![("shop".into(), 7)],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dispatchers_send_each_notification_once() {
    let db = common::fresh_database(&unique("mw_replicas")).await;
    let store = Store::open(&db, 4).await.unwrap();
    let hook = common::HookCounts::default();
    let url = hook.serve(Duration::from_millis(20)).await;

    // Every finding pages on its own: forty notifications to share out.
    let alerts = AlertsConfig {
        pending_windows: 1,
        group_by: judge::episode::GroupBy::Finding,
        ..AlertsConfig::default()
    };
    let route = |_: &AlertState| vec!["hook".to_string()];
    let n = 40;
    let (_, fired) = judge::record_window(&store, &crossing_window(n), &alerts, &route)
        .await
        .unwrap();
    assert_eq!(fired.len(), n);

    let receiver = ReceiverConfig {
        name: "hook".into(),
        min_severity: Severity::Info,
        labels: Default::default(),
        timeout_secs: 5,
        kind: ReceiverKind::Webhook(WebhookReceiver {
            url,
            secret_env: None,
            secret_file: None,
            format: Default::default(),
        }),
    };
    let dispatcher = || {
        Dispatcher::spawn(
            store.clone(),
            vec![Receiver::new(&receiver, &KafkaConfig::default()).unwrap()],
            modelwatch::notify::Router::new(std::slice::from_ref(&receiver)),
            &NotifyConfig::default(),
            Arc::new(Metrics::new()),
        )
    };
    let (a, b) = (dispatcher(), dispatcher());
    a.waker().notify_one();
    b.waker().notify_one();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.backlog().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.drain_and_stop(Duration::from_secs(1)).await;
    b.drain_and_stop(Duration::from_secs(1)).await;
    let got = hook.counts();
    assert_eq!(got.len(), n, "{got:?}");
    let doubled: Vec<_> = got.iter().filter(|(_, c)| **c != 1).collect();
    assert!(doubled.is_empty(), "sent more than once: {doubled:?}");
}

/// Instances stepping the same alert at once (each with its own window of
/// the model) take turns on its row: no step is lost to another's write.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_windows_step_one_alert_without_losing_a_step() {
    let db = common::fresh_database(&unique("mw_replicas")).await;
    let store = Store::open(&db, 8).await.unwrap();
    let alerts = AlertsConfig {
        pending_windows: 1000,
        ..AlertsConfig::default()
    };
    let window = |seq: i64| WindowVerdict {
        seq,
        ..crossing_window(1)
    };
    let route = |_: &AlertState| Vec::new();
    judge::record_window(&store, &window(0), &alerts, &route)
        .await
        .unwrap();
    let steps = 24;
    let mut tasks = Vec::new();
    for seq in 1..=steps {
        let (store, alerts) = (store.clone(), alerts.clone());
        tasks.push(tokio::spawn(async move {
            let route = |_: &AlertState| Vec::new();
            judge::record_window(&store, &window(seq), &alerts, &route).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let open = store.list_alerts(None).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        open[0].consecutive_bad as i64,
        steps + 1,
        "steps lost to concurrent writes"
    );
}

/// Two monitors writing windows of one model at once (two partitions of a
/// topic, or a backfill beside the daemon) each get their own window
/// numbers: no window is lost to the other's number, none is skipped.
/// Numbers used to come from `MAX(seq) + 1` read once per process, and the
/// second writer's windows vanished with their offsets committed.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_store_every_window_of_one_model() {
    let db = common::fresh_database(&unique("mw_replicas")).await;
    let dir = std::env::temp_dir().join(unique("mw_two_writers"));
    std::fs::create_dir_all(&dir).unwrap();
    common::import_baseline(&db, &dir, &common::telemetry(1, 300, 1, 0, 0..0));
    let run = |seed: u64| {
        let input = dir.join(format!("events{seed}.ndjson"));
        std::fs::write(&input, common::telemetry(seed, 0, 50, 20, 0..0).join("\n")).unwrap();
        Command::new(common::daemon_binary())
            .args(["run", "--file"])
            .arg(&input)
            .env("MODELWATCH_STORE__URL", &db)
            .env("MODELWATCH_WINDOWS__COUNT", "50")
            .env("MODELWATCH_ENGINE__DEVICE", "cpu")
            .env("MODELWATCH_TELEMETRY__LISTEN", "")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("log{seed}"))).unwrap())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (run(2), run(3));
    for (seed, child) in [(2, &mut a), (3, &mut b)] {
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(dir.join(format!("log{seed}"))).unwrap();
        assert!(status.success(), "{status}\n{log}");
    }
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT seq, n_events FROM windows WHERE model = 'credit' AND model_version = 'v1' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let events: i64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(events, 2000, "events in stored windows: {rows:?}");
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (0..40).collect::<Vec<_>>(),
        "numbers with gaps or repeats"
    );
}
