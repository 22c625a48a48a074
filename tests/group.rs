//! A consumer group of monitors on one six-partition topic: members are
//! killed, stopped and added while events flow, and afterwards every event
//! is in exactly one stored window, window numbers have no gap or repeat,
//! and each alert transition reached the receiver once.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, HookCounts, unique};
use rdkafka::producer::FutureRecord;
use sqlx::Row;
use sqlx::postgres::PgPool;

const PARTITIONS: i32 = 6;
const EVENTS: usize = 50_000;
const PHASE: usize = EVENTS / 5;

/// Events of model `credit` without `ts` (the broker's time is used), with
/// request ids; from `shift_from` on, `x1` is moved by 1.5 sd.
fn events(shift_from: usize) -> Vec<String> {
    let clean = common::telemetry(21, 0, EVENTS, 1, 0..0);
    let shifted = common::telemetry(22, 0, EVENTS, 1, 0..1);
    (0..EVENTS)
        .map(|i| {
            let line = if i < shift_from {
                &clean[i]
            } else {
                &shifted[i]
            };
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("ts");
            o.insert("request_id".into(), format!("g{i}").into());
            v.to_string()
        })
        .collect()
}

/// Sends `payloads` round-robin over the partitions, many in flight.
async fn produce(topic: &str, payloads: &[String], first: usize) {
    let producer = common::producer();
    for (n, chunk) in payloads.chunks(1000).enumerate() {
        let sends = chunk.iter().enumerate().map(|(k, p)| {
            let i = first + n * 1000 + k;
            let partition = (i % PARTITIONS as usize) as i32;
            producer.send(
                FutureRecord::to(topic)
                    .payload(p.as_str())
                    .key("k")
                    .partition(partition),
                Duration::from_secs(30),
            )
        });
        for r in futures_util::future::join_all(sends).await {
            r.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        }
    }
}

async fn events_in_windows(pool: &PgPool) -> i64 {
    sqlx::query("SELECT COALESCE(SUM(n_events), 0)::BIGINT AS n FROM windows")
        .fetch_one(pool)
        .await
        .map(|r| r.get("n"))
        .unwrap_or(0)
}

/// Per partition, the stored windows' offset ranges, sorted.
async fn ranges(pool: &PgPool) -> BTreeMap<String, Vec<(i64, i64)>> {
    let rows = sqlx::query("SELECT positions FROM windows")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in rows {
        let p: serde_json::Value = r.get("positions");
        for (stream, range) in p.as_object().unwrap() {
            let at = |k: &str| range[k][0].as_i64().unwrap();
            out.entry(stream.clone())
                .or_default()
                .push((at("first"), at("last")));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn members_join_and_leave_without_a_lost_or_doubled_event() {
    let (topic, dlq, group) = (unique("telemetry"), unique("dead_letter"), unique("group"));
    common::create_topic(&topic, PARTITIONS).await;
    common::create_topic(&dlq, 1).await;
    let db = common::fresh_database(&unique("mw_group")).await;
    let dir = std::env::temp_dir().join(unique("mw_group"));
    std::fs::create_dir_all(&dir).unwrap();

    // One reference for every member, stored before any starts.
    common::import_baseline(&db, &dir, &common::telemetry(20, 500, 1, 0, 0..0));
    let hook = HookCounts::default();
    let hook_url = hook.serve(Duration::from_millis(5)).await;
    let config = common::kafka_config(&dir, &topic, &dlq, &group, &db, 500, 500);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("duration_secs = 0", "duration_secs = 3")
        + &format!(
            "[alerts]\npending_windows = 2\n[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook_url}\"\n"
        );
    std::fs::write(&config, text).unwrap();
    let start = |name: &str| Daemon::start(&config, dir.join(format!("{name}.log")));
    let mut members = vec![start("a"), start("b"), start("c")];
    tokio::time::sleep(Duration::from_secs(8)).await;

    let all = events(3 * PHASE);
    let pool = PgPool::connect(&db).await.unwrap();
    for phase in 0..5 {
        produce(&topic, &all[phase * PHASE..][..PHASE], phase * PHASE).await;
        // Let the members work on this phase before the group changes.
        let target = (phase * PHASE + PHASE / 2) as i64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while events_in_windows(&pool).await < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match phase {
            0 => members[0].kill(),
            1 => assert!(
                members[1].terminate().success(),
                "{}",
                members[1].log_text()
            ),
            2 => members.push(start("d")),
            _ => {}
        }
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    while events_in_windows(&pool).await < EVENTS as i64 {
        for m in [2, 3] {
            members[m].assert_alive();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events in windows; logs:\n{}\n{}",
            events_in_windows(&pool).await,
            members[2].log_text(),
            members[3].log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(events_in_windows(&pool).await, EVENTS as i64);

    // Every offset of every partition in exactly one window.
    let per_partition = EVENTS as i64 / PARTITIONS as i64;
    let ranges = ranges(&pool).await;
    assert_eq!(ranges.len(), PARTITIONS as usize, "{ranges:?}");
    for (stream, r) in &ranges {
        let mut next = 0;
        for &(first, last) in r {
            assert_eq!(first, next, "{stream}: gap or overlap at {first}: {r:?}");
            next = last + 1;
        }
        let end = per_partition + i64::from(stream.ends_with("/0") || stream.ends_with("/1"));
        assert_eq!(next, end, "{stream}: {r:?}");
    }
    let seqs: Vec<i64> = sqlx::query("SELECT seq FROM windows ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("seq"))
        .collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());

    // The drift of the last phases fired, and every transition queued was
    // delivered once.
    let queued = || async {
        sqlx::query(
            "SELECT a.dedup_key, o.transition, COUNT(*)::BIGINT AS n FROM outbox o
             JOIN alerts a ON a.id = o.alert_id GROUP BY a.dedup_key, o.transition",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get("dedup_key"), r.get("transition")),
                r.get::<i64, _>("n") as usize,
            )
        })
        .collect::<BTreeMap<(String, String), usize>>()
    };
    let x1 = ("credit/v1/episode/all".to_string(), "fired".to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while (hook.counts() != queued().await || !hook.counts().contains_key(&x1))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = hook.counts();
    assert!(counts.contains_key(&x1), "{counts:?}");
    assert_eq!(counts, queued().await, "deliveries differ from transitions");
    for m in [2, 3] {
        assert!(
            members[m].terminate().success(),
            "{}",
            members[m].log_text()
        );
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / hz
}

/// Events per second between the first and the last stored window.
async fn steady_rate(pool: &PgPool) -> f64 {
    let row = sqlx::query(
        "SELECT SUM(n_events)::BIGINT AS n, EXTRACT(EPOCH FROM MAX(scored_at) - MIN(scored_at))::FLOAT8 AS s,
                (SELECT n_events FROM windows ORDER BY scored_at LIMIT 1)::BIGINT AS first
         FROM windows",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let (n, s, first): (i64, f64, i64) = (row.get("n"), row.get("s"), row.get("first"));
    (n - first) as f64 / s.max(1e-3)
}

/// The load figure of issue 11, not a check (run it with
/// `tests/run.sh --test group -- --ignored --nocapture`;
/// `MODELWATCH_LOAD_EVENTS` sets the size, 200,000 by default). One topic
/// of six partitions is read by a bare librdkafka consumer, then by groups
/// of 1, 2 and 3 members (decode, window, score on flex, store in
/// PostgreSQL); each prints events/s and events per CPU-second, and the
/// ratio of the latter to the bare consumer's.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn group_throughput() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let n: usize = std::env::var("MODELWATCH_LOAD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (topic, dlq) = (unique("load"), unique("dead_letter"));
    common::create_topic(&topic, PARTITIONS).await;
    common::create_topic(&dlq, 1).await;
    let lines: Vec<String> = common::telemetry(41, 0, n, 1, 0..0)
        .into_iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(&l).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            v.to_string()
        })
        .collect();
    let started = Instant::now();
    produce(&topic, &lines, 0).await;
    println!(
        "produced {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let bare: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", unique("bare"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    bare.subscribe(&[&topic]).unwrap();
    let (cpu0, t0) = (cpu_seconds(std::process::id()), Instant::now());
    let mut read = 0;
    while read < n {
        if let Some(Ok(m)) = bare.poll(Duration::from_millis(100)) {
            read += usize::from(rdkafka::Message::payload(&m).is_some());
        }
    }
    let (wall, cpu) = (
        t0.elapsed().as_secs_f64(),
        cpu_seconds(std::process::id()) - cpu0,
    );
    let bare_per_cpu = n as f64 / cpu;
    println!(
        "bare consumer: {:.0} events/s, {bare_per_cpu:.0} events per CPU-second",
        n as f64 / wall
    );

    for members in 1..=3 {
        let db = common::fresh_database(&unique("mw_load")).await;
        let dir = std::env::temp_dir().join(unique("mw_load"));
        std::fs::create_dir_all(&dir).unwrap();
        common::import_baseline(&db, &dir, &common::telemetry(40, 1000, 1, 0, 0..0));
        let config = common::kafka_config(&dir, &topic, &dlq, &unique("g"), &db, 1000, 1000);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("duration_secs = 0", "duration_secs = 2")
            .replace("filter = \"info,modelwatch=debug\"", "filter = \"warn\"");
        std::fs::write(&config, text).unwrap();
        let mut daemons: Vec<Daemon> = (0..members)
            .map(|k| Daemon::start(&config, dir.join(format!("m{k}.log"))))
            .collect();
        let pool = PgPool::connect(&db).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        while events_in_windows(&pool).await < n as i64 {
            daemons.iter_mut().for_each(Daemon::assert_alive);
            assert!(
                Instant::now() < deadline,
                "load run of {members} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let cpu: f64 = daemons.iter().map(|d| cpu_seconds(d.child.id())).sum();
        let rate = steady_rate(&pool).await;
        println!(
            "{members} member(s): {rate:.0} events/s stored (first to last window), {:.0} events per CPU-second, {:.2}x the bare consumer's CPU cost per event",
            n as f64 / cpu,
            bare_per_cpu / (n as f64 / cpu)
        );
        for d in &mut daemons {
            assert!(d.terminate().success(), "{}", d.log_text());
        }
    }
}
