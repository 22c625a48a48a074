//! The dead-letter topic unwritable while a bad message waits for it: the
//! daemon holds the partition at that message (no offset committed past
//! it), says why on `/readyz` and in its log, and once the topic takes
//! writes again the message is there with its reason and the stream moves
//! on, losing nothing.
//!
//! The fault is real: the daemon talks to a broker of its own through a
//! proxy that understands Kafka's framing and refuses produce requests for
//! the dead-letter topic, while everything else (fetches, commits, the
//! test's own produce requests) passes.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, free_port, unique};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A tansu broker on `listen` that tells clients to connect to `advertised`.
struct Broker(Child);

impl Broker {
    fn start(listen: u16, advertised: u16, log: &std::path::Path) -> Self {
        let tansu = std::env::var("MODELWATCH_TEST_TANSU")
            .expect("MODELWATCH_TEST_TANSU is unset: run the suite with tests/run.sh");
        let child = Command::new(tansu)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{listen}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start tansu");
        Broker(child)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards Kafka connections; while `refuse` holds a topic name, a
/// produce request naming it closes its connection, as a broker that
/// cannot take the write would leave the client without an answer.
#[derive(Clone, Default)]
struct ProduceCut {
    refuse: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ProduceCut {
    async fn start(&self, upstream: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = self.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = cut.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        cut.forward(client, server).await;
                    }
                });
            }
        });
        port
    }

    async fn forward(&self, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let requests = async {
            loop {
                let mut len = [0u8; 4];
                client_rx.read_exact(&mut len).await?;
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                client_rx.read_exact(&mut body).await?;
                if self.refuses(&body) {
                    return Ok::<(), std::io::Error>(());
                }
                server_tx.write_all(&len).await?;
                server_tx.write_all(&body).await?;
            }
        };
        tokio::select! {
            _ = requests => {}
            _ = tokio::io::copy(&mut server_rx, &mut client_tx) => {}
        }
    }

    /// A produce request (API key 0) that names the refused topic.
    fn refuses(&self, request: &[u8]) -> bool {
        let Some(topic) = self.refuse.lock().unwrap().clone() else {
            return false;
        };
        request.len() >= 2
            && i16::from_be_bytes([request[0], request[1]]) == 0
            && request.windows(topic.len()).any(|w| w == topic)
    }

    fn set(&self, topic: Option<&str>) {
        *self.refuse.lock().unwrap() = topic.map(|t| t.as_bytes().to_vec());
    }
}

async fn create_topics(brokers: &str, names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = admin
            .create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await;
        if let Ok(results) = done {
            for r in results {
                r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
            }
            return;
        }
        assert!(Instant::now() < deadline, "broker never answered: {done:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reason header of every message in the dead-letter topic.
fn dead_letters(brokers: &str, topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut reasons = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let reason = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "modelwatch.reason"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            reasons.push(reason.unwrap_or_default());
        }
    }
    reasons
}

async fn readyz(port: u16) -> Option<(bool, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let ok = resp.status().is_success();
    Some((ok, resp.text().await.ok()?))
}

async fn windows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM windows")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_dead_letter_topic_holds_the_stream_and_says_why() {
    const REFERENCE: usize = 300;
    const WINDOW: usize = 100;
    let dir = std::env::temp_dir().join(unique("mw_dlq_outage"));
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, cut) = (free_port(), ProduceCut::default());
    let proxy = cut.start(listen).await;
    let _broker = Broker::start(listen, proxy, &dir.join("tansu.log"));
    let brokers = format!("127.0.0.1:{proxy}");
    let (topic, dlq, group) = (unique("telemetry"), unique("dead_letter"), unique("g"));
    create_topics(&brokers, &[&topic, &dlq]).await;
    let db = common::fresh_database(&unique("mw_dlq_outage")).await;
    let pool = PgPool::connect(&db).await.unwrap();

    let http = free_port();
    let config = common::kafka_config(&dir, &topic, &dlq, &group, &db, REFERENCE, WINDOW);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &format!("brokers = \"{}\"", common::brokers()),
            &format!("brokers = \"{brokers}\""),
        )
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{http}\""))
        .replace(
            "[source.kafka.properties]",
            "[source.kafka.properties]\n\"message.timeout.ms\" = \"2000\"",
        );
    std::fs::write(&config, text).unwrap();

    let events = common::telemetry(71, REFERENCE, WINDOW, 2, 0..0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let send = |payload: String| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).payload(&payload).key("k"),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let mut daemon = Daemon::start(&config, dir.join("daemon.log"));
    for e in &events[..REFERENCE + WINDOW] {
        send(e.clone()).await;
    }
    common::wait_for_windows(&pool, &mut daemon, 1, Duration::from_secs(90)).await;

    // The bad message sits at offset 400, the second window's events after it.
    cut.set(Some(&dlq));
    send("{not json".into()).await;
    for e in &events[REFERENCE + WINDOW..] {
        send(e.clone()).await;
    }
    let bad_offset = (REFERENCE + WINDOW) as i64;
    let held_since = Instant::now();
    let mut why = None;
    while held_since.elapsed() < Duration::from_secs(15) {
        daemon.assert_alive();
        if let Some((false, body)) = readyz(http).await {
            why = Some(body);
        }
        let offset = common::committed(&brokers, &group, &topic);
        assert!(
            offset <= bad_offset,
            "committed {offset} past the undelivered dead letter"
        );
        assert_eq!(
            windows(&pool).await,
            1,
            "the stream went on past the bad message"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let why = why.expect("never reported not ready while the dead letter was refused");
    assert!(why.contains("dead-letter delivery"), "{why}");
    assert!(
        daemon.log_text().contains("dead-letter delivery"),
        "{}",
        daemon.log_text()
    );

    cut.set(None);
    common::wait_for_windows(&pool, &mut daemon, 2, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::committed(&brokers, &group, &topic) < events.len() as i64 + 1 {
        assert!(
            Instant::now() < deadline,
            "offsets never moved past the bad message"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reasons = dead_letters(&brokers, &dlq);
    assert!(
        !reasons.is_empty(),
        "the bad message never reached the dead-letter topic"
    );
    assert!(reasons.iter().all(|r| r == "invalid_json"), "{reasons:?}");
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}
