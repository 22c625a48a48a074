//! Stage 2b: the halves of request/response pairs meet.
//!
//! Serving stacks that log a request and its response as two messages
//! (KServe's logger, Seldon's `.inputs`/`.outputs` topics, OIP bodies)
//! decode to halves with a pair key. A half waits here until the other
//! half arrives under the same key; row `i` of the request and row `i` of
//! the response make one event. A half that waits longer than
//! `within_secs` is unpaired: KServe logs no response for a failed
//! request, and a member of a consumer group sees only its partitions.
//!
//! Time is the messages' own (their transport timestamps, which the
//! serving stack's producer sets, not the callers): a half expires once a
//! half of the other side `within_secs` newer than it has been seen, so
//! that replaying a backlog pairs what the live run paired, and a topic of
//! responses read ahead of its topic of requests (Seldon's two topics)
//! waits for it rather than expiring. A source that falls quiet for
//! `within_secs` by the clock expires everything still waiting.
//!
//! The caller keeps a waiting half's message unacknowledged: a restart
//! reads it again with its other half, and pairs nothing twice, because the
//! pair's event is stored under the later half's position. A response read
//! again without its request (the commit fell between them) is known by
//! that position on arrival (`Pipeline::pair_stored`). Any half read again
//! without its other half, whichever was first and wherever each was, is
//! known when it expires: the positions of both halves are stored with the
//! window (`store::stored_halves`), and it is dropped as a replay instead
//! of being unpaired.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, Pairing, Side};
use crate::event::{SourcePos, TelemetryEvent, UNPAIRED};

/// How halves of a pair are joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JoinConfig {
    /// How long, in seconds of the messages' time, a half waits for its
    /// other half.
    pub within_secs: u64,
    /// What becomes of a half whose other half never came.
    pub unpaired: Unpaired,
    /// Most halves waiting at once; past it the oldest is unpaired early.
    pub max_pending: usize,
    /// Most bytes of waiting messages; past it the oldest is unpaired early.
    pub max_pending_bytes: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            within_secs: 60,
            unpaired: Unpaired::Score,
            max_pending: 100_000,
            max_pending_bytes: 256 << 20,
        }
    }
}

impl JoinConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.within_secs == 0 {
            return Err(
                "join.within_secs must be at least 1: halves of a pair arrive apart".into(),
            );
        }
        if self.max_pending == 0 || self.max_pending_bytes == 0 {
            return Err("join.max_pending and join.max_pending_bytes must be above 0".into());
        }
        Ok(())
    }
}

/// The rule for a half that met no other half.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Unpaired {
    /// Score it alone (a request's inputs, a response's outputs) and count
    /// it in `modelwatch_unpaired_total`.
    #[default]
    Score,
    /// Dead-letter its message (reason `unpaired_request` or
    /// `unpaired_response`).
    DeadLetter,
}

/// One decoded half, with its message's position and whatever the caller
/// needs back should it stay unpaired (the message, to dead-letter).
#[derive(Debug)]
pub struct Half<T> {
    pub pairing: Pairing,
    pub events: Vec<TelemetryEvent>,
    pub pos: SourcePos,
    /// The message's time.
    pub time: DateTime<Utc>,
    /// What it weighs while it waits.
    pub bytes: usize,
    pub carried: T,
}

/// What became of an offered half.
#[derive(Debug)]
pub enum Offered<T> {
    /// It waits for its other half; its message must stay held.
    Waiting,
    /// It completed a pair: one event per row, and the half that waited.
    Paired {
        events: Vec<TelemetryEvent>,
        earlier: Half<T>,
    },
    /// It cannot pair (a second half of one side under a key, or rows that
    /// do not match the waiting half's); the waiting half goes on waiting.
    Refused(Half<T>, DecodeError),
}

struct Waiting<T> {
    seq: u64,
    half: Half<T>,
    /// The newest message time seen when it arrived.
    seen_at: DateTime<Utc>,
}

pub struct Joiner<T> {
    config: JoinConfig,
    waiting: HashMap<String, Waiting<T>>,
    /// Keys in arrival order, per side; an entry whose half has paired is
    /// skipped.
    order: [VecDeque<(u64, String)>; 2],
    next_seq: u64,
    bytes: usize,
    /// The newest message time seen, per side.
    watermark: [Option<DateTime<Utc>>; 2],
    last_arrival: Option<Instant>,
}

impl<T> Joiner<T> {
    pub fn new(config: JoinConfig) -> Self {
        Self {
            config,
            waiting: HashMap::new(),
            order: [VecDeque::new(), VecDeque::new()],
            next_seq: 0,
            bytes: 0,
            watermark: [None, None],
            last_arrival: None,
        }
    }

    pub fn config(&self) -> &JoinConfig {
        &self.config
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a half waits under `key`.
    pub fn is_waiting(&self, key: &str) -> bool {
        self.waiting.contains_key(key)
    }

    /// Takes one half: it pairs with the half waiting under its key, or
    /// waits.
    pub fn offer(&mut self, half: Half<T>, now: Instant) -> Offered<T> {
        self.last_arrival = Some(now);
        let side = half.pairing.side as usize;
        let seen_at = self.watermark[side].map_or(half.time, |w| w.max(half.time));
        self.watermark[side] = Some(seen_at);
        let key = half.pairing.key.clone();
        let Some(earlier) = self.waiting.remove(&key) else {
            self.wait(key, half, seen_at);
            return Offered::Waiting;
        };
        let refused = if earlier.half.pairing.side == half.pairing.side {
            let side = half.pairing.side.as_str();
            Some(DecodeError::DuplicatePairKey {
                side,
                key: key.clone(),
            })
        } else if earlier.half.events.len() != half.events.len() {
            let why = format!(
                "{} rows waiting, {} rows arrived",
                earlier.half.events.len(),
                half.events.len()
            );
            Some(DecodeError::PairMismatch {
                key: key.clone(),
                why,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            // The waiting half keeps its place and its arrival entry.
            self.waiting.insert(key, earlier);
            return Offered::Refused(half, e);
        }
        self.bytes -= earlier.half.bytes;
        self.compact();
        let earlier = earlier.half;
        let events = match half.pairing.side {
            Side::Response => merge(&earlier.events, half.events),
            Side::Request => merge(&half.events, earlier.events.clone()),
        };
        Offered::Paired { events, earlier }
    }

    fn wait(&mut self, key: String, half: Half<T>, seen_at: DateTime<Utc>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += half.bytes;
        self.order[half.pairing.side as usize].push_back((seq, key.clone()));
        self.waiting.insert(key, Waiting { seq, half, seen_at });
    }

    /// Halves that will not pair now: past the time limit (a half of the
    /// other side that much newer has been seen), pushed out by the limits
    /// on waiting halves (oldest first), or all of them once the source has
    /// been quiet for the time limit. In arrival order per side.
    pub fn expired(&mut self, now: Instant) -> Vec<Half<T>> {
        let within = Duration::from_secs(self.config.within_secs);
        let quiet = self
            .last_arrival
            .is_none_or(|t| now.saturating_duration_since(t) >= within);
        let mut out = Vec::new();
        loop {
            let fronts = [self.front(Side::Request), self.front(Side::Response)];
            let over = self.waiting.len() > self.config.max_pending
                || self.bytes > self.config.max_pending_bytes;
            let late = |side: Side| {
                let (_, seen_at) = fronts[side as usize]?;
                let other = self.watermark[1 - side as usize]?;
                let limit = chrono::Duration::from_std(within).ok()?;
                (quiet || other.signed_duration_since(seen_at) > limit).then_some(side)
            };
            let oldest = match fronts {
                [Some((a, _)), Some((b, _))] => {
                    Some(if a < b { Side::Request } else { Side::Response })
                }
                [Some(_), None] => Some(Side::Request),
                [None, Some(_)] => Some(Side::Response),
                [None, None] => None,
            };
            let quiet_side = oldest.filter(|_| quiet);
            let Some(side) = late(Side::Request)
                .or_else(|| late(Side::Response))
                .or(quiet_side)
                .or(oldest.filter(|_| over))
            else {
                break;
            };
            if let Some((_, key)) = self.order[side as usize].pop_front() {
                if let Some(w) = self.waiting.remove(&key) {
                    self.bytes -= w.half.bytes;
                    out.push(w.half);
                }
            }
        }
        out
    }

    /// The oldest half still waiting on `side`: its arrival number and the
    /// time it is measured from. Entries of paired halves are dropped.
    fn front(&mut self, side: Side) -> Option<(u64, DateTime<Utc>)> {
        let order = &mut self.order[side as usize];
        while let Some((seq, key)) = order.front() {
            match self.waiting.get(key).filter(|w| w.seq == *seq) {
                Some(w) => return Some((*seq, w.seen_at)),
                None => {
                    order.pop_front();
                }
            }
        }
        None
    }

    /// Every waiting half, oldest first: the stream has ended.
    pub fn drain(&mut self) -> Vec<Half<T>> {
        self.last_arrival = None;
        let out = self.expired(Instant::now());
        debug_assert!(self.waiting.is_empty());
        out
    }

    /// Drops the arrival entries of halves that paired, once they are most
    /// of the queue, so that it stays proportional to what waits.
    fn compact(&mut self) {
        let queued = self.order[0].len() + self.order[1].len();
        if queued > 2 * self.waiting.len() + 1024 {
            let waiting = &self.waiting;
            for order in &mut self.order {
                order.retain(|(seq, key)| waiting.get(key).is_some_and(|w| w.seq == *seq));
            }
        }
    }
}

/// About what a half's events weigh in memory, for `max_pending_bytes`:
/// a small message can decode to many rows. Rows share their message's
/// attributes, counted once.
pub fn weight(events: &[TelemetryEvent]) -> usize {
    use crate::event::{FeatureValue, Probabilities};
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let mut last: Option<&crate::event::Attributes> = None;
    events
        .iter()
        .map(|e| {
            let shared = last.is_some_and(|l| std::sync::Arc::ptr_eq(l, &e.attributes));
            last = Some(&e.attributes);
            let value = |v: &FeatureValue| match v {
                FeatureValue::Text(t) => t.len(),
                _ => 0,
            };
            let features: usize = e.features.iter().map(|(_, v)| value(v)).sum();
            let attributes: usize = match shared {
                true => 0,
                false => e
                    .attributes
                    .iter()
                    .map(|(k, v)| k.len() + 48 + value(v))
                    .sum(),
            };
            let probabilities = match &e.output.probabilities {
                Some(Probabilities::List(p)) => p.len() * 8,
                Some(Probabilities::Named(p)) => p.keys().map(|k| k.len() + 64).sum(),
                None => 0,
            };
            std::mem::size_of::<TelemetryEvent>()
                + e.model.len()
                + text(&e.model_version)
                + text(&e.request_id)
                + text(&e.client_id)
                + text(&e.output.label)
                + e.features.len() * 48
                + features
                + attributes
                + e.embedding.as_ref().map_or(0, |v| v.len() * 8)
                + probabilities
        })
        .sum()
}

/// Row `i` of the request with row `i` of the response: the request's
/// model, time, inputs and ids; the response's outputs, and its version,
/// ids and client where the request names none. Attributes of both, the
/// request's where both name one.
fn merge(request: &[TelemetryEvent], response: Vec<TelemetryEvent>) -> Vec<TelemetryEvent> {
    request
        .iter()
        .zip(response)
        .map(|(req, resp)| {
            let mut e = req.clone();
            e.output = resp.output;
            e.model_version = e.model_version.or(resp.model_version);
            e.request_id = e.request_id.or(resp.request_id);
            e.client_id = e.client_id.or(resp.client_id);
            e.embedding = e.embedding.or(resp.embedding);
            // Shared by the rows of both halves: copied only when the
            // response adds one.
            for (k, v) in resp.attributes.iter() {
                if !e.attributes.contains_key(k) {
                    std::sync::Arc::make_mut(&mut e.attributes).insert(k.clone(), v.clone());
                }
            }
            e
        })
        .collect()
}

/// Where an unpaired half's events are windowed: a stream of their own
/// beside the message's, one per side, so that the windows' per-stream
/// high-water marks stay in offset order (an unpaired half is windowed
/// after pairs that arrived later than it, and halves expire in arrival
/// order per side).
pub fn unpaired_position(pos: &SourcePos, side: Side, index: usize) -> SourcePos {
    SourcePos {
        stream: format!("{}{UNPAIRED}-{side}", pos.stream),
        offset: pos.offset,
        index: index as i64,
    }
}

#[cfg(test)]
mod tests;
