//! PostgreSQL unreachable for 60 s in the middle of a Kafka stream, through
//! a TCP proxy the test cuts: the daemon says it is not ready, commits no
//! offset past what it stored, and afterwards every window is stored once
//! and every alert transition reaches the receiver once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use sqlx::postgres::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const REFERENCE: usize = 300;
const WINDOW: usize = 100;

/// Forwards loopback connections to PostgreSQL until cut: a cut closes
/// every open connection and refuses new ones until restored.
#[derive(Clone)]
struct Proxy {
    up: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: String) -> (Self, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            up: Arc::new(AtomicBool::new(true)),
            cut: Arc::new(Mutex::new(CancellationToken::new())),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !p.up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let cut = p.cut.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        (proxy, port)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn ready(port: u16) -> Option<bool> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    Some(resp.status().is_success())
}

/// Waits until stored windows hold `total` events, failing with the log.
async fn wait_until_stored(pool: &PgPool, daemon: &mut Daemon, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while windows(pool).await.1 < total {
        daemon.assert_alive();
        assert!(
            Instant::now() < deadline,
            "windows never caught up:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (windows, events in them, highest seq). Before the daemon has migrated a
/// fresh database there is no table yet, which counts as nothing stored;
/// any other error fails the test.
async fn windows(pool: &PgPool) -> (i64, i64, i64) {
    let got = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(n_events), 0)::BIGINT, COALESCE(MAX(seq), -1) FROM windows",
    )
    .fetch_one(pool)
    .await;
    match got {
        Ok(row) => row,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => (0, 0, -1),
        Err(e) => panic!("counting windows: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_loses_and_doubles_nothing() {
    let KafkaCase {
        topic,
        dlq,
        db: direct,
        dir: tmp,
    } = KafkaCase::new("mw_outage").await;
    let pool = PgPool::connect(&direct).await.unwrap();
    let upstream = {
        let u = url_host_port(&direct);
        format!("{}:{}", u.0, u.1)
    };
    let (proxy, proxy_port) = Proxy::start(upstream).await;
    let via_proxy = with_port(&direct, proxy_port);
    let hook = HookCounts::default();
    let hook_url = hook.serve(Duration::ZERO).await;
    let listen = free_port();
    let group = unique("g");
    let config = kafka_config(&tmp, &topic, &dlq, &group, &via_proxy, REFERENCE, WINDOW);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{listen}\""));
    text.push_str(&format!(
        "[alerts]\npending_windows = 2\nresolve_windows = 2\n[notify]\nretry_base_ms = 100\nretry_max_secs = 1\n[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook_url}\"\n"
    ));
    std::fs::write(&config, text).unwrap();

    // x1 shifted in windows 3-5: fires during or after the outage, resolves after.
    let events = telemetry(51, REFERENCE, WINDOW, 10, 3..6);
    let producer = producer();
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    produce(&producer, &topic, &events[..REFERENCE + 2 * WINDOW]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while windows(&pool).await.0 < 2 {
        daemon.assert_alive();
        assert!(
            Instant::now() < deadline,
            "no windows before the outage:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(listen).await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    proxy.cut();
    produce(&producer, &topic, &events[REFERENCE + 2 * WINDOW..]).await;
    let cut_at = Instant::now();
    let (mut saw_not_ready, mut saw_gauge_zero) = (false, false);
    while cut_at.elapsed() < Duration::from_secs(60) {
        daemon.assert_alive();
        saw_not_ready |= ready(listen).await == Some(false);
        saw_gauge_zero |= common::metric(listen, "modelwatch_ready ").await == Some(0.0);
        // Nothing past the stored windows is committed.
        let stored = REFERENCE as i64 + windows(&pool).await.1;
        let offset = committed(&brokers(), &group, &topic);
        assert!(
            offset <= stored,
            "committed {offset} with {stored} events stored"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(saw_not_ready, "never reported not ready during the outage");
    assert!(
        saw_gauge_zero,
        "modelwatch_ready never read 0 during the outage"
    );
    proxy.restore();

    let total = (events.len() - REFERENCE) as i64;
    wait_until_stored(&pool, &mut daemon, total).await;
    assert_eq!(
        windows(&pool).await,
        (10, total, 9),
        "every window once, numbered 0-9"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(listen).await != Some(true)
        || common::metric(listen, "modelwatch_ready ").await != Some(1.0)
    {
        assert!(Instant::now() < deadline, "not ready after the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // x1's drift, paged as its model's episode.
    let x1 = "credit/v1/episode/all".to_string();
    loop {
        let got = hook.counts();
        let fired = got.get(&(x1.clone(), "fired".into())).copied().unwrap_or(0);
        let resolved = got
            .get(&(x1.clone(), "resolved".into()))
            .copied()
            .unwrap_or(0);
        if (fired, resolved) == (1, 1) || Instant::now() > deadline {
            assert_eq!((fired, resolved), (1, 1), "{got:?}");
            assert!(
                got.values().all(|n| *n == 1),
                "a transition paged twice: {got:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = daemon.terminate();
    assert!(status.success(), "{}", daemon.log_text());
}

/// Host and port of a postgres:// URL (default port 5432).
fn url_host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").unwrap().1;
    let hostport = rest.split_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split('/').next().unwrap();
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap()),
        None => (hostport.to_string(), 5432),
    }
}

/// The same URL pointing at 127.0.0.1:`port`.
fn with_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (creds, hostpath) = match rest.split_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.split_once('/').map_or("", |(_, p)| p);
    format!("{scheme}://{creds}127.0.0.1:{port}/{path}")
}

/// The store stalls for longer than `max.poll.interval.ms` while the topic
/// fills: the member keeps polling with its partitions paused, stays in the
/// group, and afterwards every event is in exactly one window. The reader
/// used to block on the full channel, stop polling, drop out of the group
/// and read its open windows' events a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_stall_past_the_poll_interval_keeps_the_member() {
    const BIG: usize = 500;
    let KafkaCase {
        topic,
        dlq,
        db: direct,
        dir: tmp,
    } = KafkaCase::new("mw_stall").await;
    let pool = PgPool::connect(&direct).await.unwrap();
    let (host, port) = url_host_port(&direct);
    let (proxy, proxy_port) = Proxy::start(format!("{host}:{port}")).await;
    let config = kafka_config(
        &tmp,
        &topic,
        &dlq,
        &unique("g"),
        &with_port(&direct, proxy_port),
        REFERENCE,
        BIG,
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "\"session.timeout.ms\" = \"6000\"",
        "\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"7000\"",
    );
    std::fs::write(&config, text).unwrap();

    let events = telemetry(61, REFERENCE, BIG, 8, 0..0);
    let producer = producer();
    let mut daemon = Daemon::start(&config, tmp.join("daemon.log"));
    produce(&producer, &topic, &events[..REFERENCE + BIG]).await;
    wait_for_windows(&pool, &mut daemon, 1, Duration::from_secs(90)).await;

    proxy.cut();
    produce(&producer, &topic, &events[REFERENCE + BIG..]).await;
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(20) {
        daemon.assert_alive();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    proxy.restore();

    let total = (events.len() - REFERENCE) as i64;
    wait_until_stored(&pool, &mut daemon, total).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(windows(&pool).await, (8, total, 7), "every window once");
    let log = daemon.log_text();
    assert!(
        log.contains("pipeline stalled; partitions paused"),
        "the stall never made the member pause its partitions:\n{log}"
    );
    assert!(
        !log.contains("partitions revoked"),
        "the member left the group during the stall:\n{log}"
    );
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}
