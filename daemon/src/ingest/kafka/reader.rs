//! The consumer-group member: one thread that polls librdkafka, hands
//! messages to the pipeline and answers rebalances.
//!
//! The thread never blocks on the pipeline: when the channel is full it
//! pauses its partitions and keeps polling, so the member stays in the group
//! through a slow store (`max.poll.interval.ms`). A revocation waits until
//! the pipeline has dropped everything it held of the old assignment, then
//! commits what is durable, so that the next owner resumes exactly where the
//! stored windows end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stream_name;
use crate::event::SourcePos;
use crate::ingest::{
    Interrupt, MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES, MAX_HEADERS, RawMessage, Revocation,
};
use crate::telemetry::Metrics;

pub type Member = BaseConsumer<MemberContext>;

/// What the rebalance callbacks need: the pipeline's side of a revocation.
pub struct MemberContext {
    pub(super) revocations: mpsc::UnboundedSender<Revocation>,
    pub(super) interrupt: Interrupt,
    pub(super) cancel: CancellationToken,
    /// Set by a revocation; the polling loop drops what it had buffered.
    revoked: AtomicBool,
}

impl MemberContext {
    pub(super) fn new(
        revocations: mpsc::UnboundedSender<Revocation>,
        interrupt: Interrupt,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            revocations,
            interrupt,
            cancel,
            revoked: AtomicBool::new(false),
        }
    }

    /// Hands the revoked partitions to the pipeline and waits until it has
    /// dropped their events (the step it was in is interrupted).
    fn wait_for_pipeline(&self, streams: Vec<String>) {
        self.interrupt.fire();
        let (done, answered) = std::sync::mpsc::channel();
        if self.revocations.send(Revocation { streams, done }).is_err() {
            return; // the pipeline has stopped: nothing of ours is held
        }
        loop {
            match answered.recv_timeout(Duration::from_secs(1)) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if self.cancel.is_cancelled() => {
                    return;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &Member, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if tpl.count() == 0 => {}
            Rebalance::Revoke(tpl) => {
                let streams = streams(tpl);
                tracing::info!(partitions = ?streams, "partitions revoked; open windows go back to the last commit");
                if matches!(
                    consumer.rebalance_protocol(),
                    RebalanceProtocol::Cooperative
                ) {
                    // Refused in the config; a broker-side protocol could
                    // still bring it, and a partial revocation would drop
                    // events of partitions this member keeps.
                    tracing::error!("cooperative rebalancing is not supported; stopping");
                    self.cancel.cancel();
                }
                self.revoked.store(true, Ordering::SeqCst);
                // librdkafka keeps the application's pause across
                // assignments: a partition given back must not stay paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "cannot resume revoked partitions");
                }
                self.wait_for_pipeline(streams);
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => tracing::info!("committed durable offsets before the revocation"),
                    Err(rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::NoOffset,
                    )) => {}
                    Err(e) => tracing::warn!(error = %e, "commit before the revocation failed"),
                }
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?streams(tpl), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn streams(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| stream_name(e.topic(), e.partition()))
        .collect()
}

/// Messages held here while the pipeline's channel is full.
const BACKLOG: usize = 1024;
/// How long the pipeline may take no message before the partitions are
/// paused: ordinary backpressure (a window being scored) waits without
/// the fetch round trips a pause and resume cost.
const STALL: Duration = Duration::from_millis(500);

/// Polls until `cancel` fires or the pipeline hangs up.
pub(super) fn run(
    member: Arc<Member>,
    tx: mpsc::Sender<RawMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut backlog: VecDeque<RawMessage> = VecDeque::new();
    let mut paused = false;
    let mut moved = Instant::now();
    while !cancel.is_cancelled() {
        match hand_over(&mut backlog, &tx) {
            Some(0) => {}
            Some(_) => moved = Instant::now(),
            None => return,
        }
        let stalled = !backlog.is_empty() && moved.elapsed() >= STALL;
        if stalled != paused && (stalled || backlog.is_empty()) {
            paused = set_paused(&member, stalled, &metrics);
        }
        if backlog.len() >= BACKLOG && !paused {
            // Full, not yet stalled: wait for the pipeline, not the broker.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let wait = if backlog.is_empty() { 100 } else { 10 };
        let polled = member
            .poll(Duration::from_millis(wait))
            .map(|r| r.map(|m| raw_message(&m)));
        if member.context().revoked.swap(false, Ordering::SeqCst) {
            // Read under the old assignment: the pipeline dropped the rest.
            backlog.clear();
            paused = false;
        }
        match polled {
            Some(Ok(raw)) => backlog.push_back(raw),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka receive error");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {}
        }
    }
}

/// Moves what the channel takes from the backlog; how many, or `None`
/// once the pipeline has hung up.
fn hand_over(backlog: &mut VecDeque<RawMessage>, tx: &mpsc::Sender<RawMessage>) -> Option<usize> {
    let mut sent = 0;
    while let Some(m) = backlog.pop_front() {
        match tx.try_send(m) {
            Ok(()) => sent += 1,
            Err(mpsc::error::TrySendError::Full(m)) => {
                backlog.push_front(m);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
        }
    }
    Some(sent)
}

/// Pauses (or resumes) every assigned partition; returns the new state.
fn set_paused(member: &Member, pause: bool, metrics: &Metrics) -> bool {
    let assignment = match member.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment");
            return !pause;
        }
    };
    let done = match pause {
        true => member.pause(&assignment),
        false => member.resume(&assignment),
    };
    match done {
        Ok(()) => {
            if pause {
                metrics.source_pauses.inc();
                tracing::info!("pipeline stalled; partitions paused, polling goes on");
            } else {
                tracing::info!("pipeline caught up; partitions resumed");
            }
            pause
        }
        Err(e) => {
            tracing::warn!(error = %e, paused = pause, "cannot pause or resume partitions");
            !pause
        }
    }
}

fn raw_message(msg: &BorrowedMessage<'_>) -> RawMessage {
    RawMessage {
        payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        key: msg.key().map(<[u8]>::to_vec),
        timestamp: msg
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        topic: msg.topic().to_string(),
        pos: SourcePos {
            stream: stream_name(msg.topic(), msg.partition()),
            offset: msg.offset(),
            index: 0,
        },
        trace_context: trace_headers(msg),
        headers: headers(msg),
    }
}

/// The message's headers within the bounds `RawMessage` keeps.
fn headers(msg: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    let Some(headers) = msg.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| h.key.len() <= MAX_HEADER_NAME_BYTES)
        .filter(|h| h.value.is_none_or(|v| v.len() <= MAX_HEADER_VALUE_BYTES))
        .take(MAX_HEADERS)
        .map(|h| {
            (
                h.key.to_string(),
                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
            )
        })
        .collect()
}

/// The W3C trace context headers of a message, as text.
fn trace_headers(msg: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    let Some(headers) = msg.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| {
            h.key.eq_ignore_ascii_case("traceparent") || h.key.eq_ignore_ascii_case("tracestate")
        })
        .filter_map(|h| {
            let v = std::str::from_utf8(h.value?).ok()?;
            Some((h.key.to_ascii_lowercase(), v.to_string()))
        })
        .collect()
}
