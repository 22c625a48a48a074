//! Stage 3: events are grouped into tumbling windows per (model, version),
//! closed by count or by time, whichever comes first. A model's first events
//! form its reference when it has none.
//!
//! The positions already covered by stored windows come from the store
//! (`Progress`), so a replay after a crash neither re-scores a stored window
//! nor counts an event twice. Window numbers are the store's: it allocates
//! them when it stores a window, so that replicas never share one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::event::{Mark, Positioned, SourcePos};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub model: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Count,
    EventTime,
    Idle,
    EndOfStream,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Count => "count",
            CloseReason::EventTime => "event_time",
            CloseReason::Idle => "idle",
            CloseReason::EndOfStream => "end_of_stream",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClosedWindow {
    pub key: WindowKey,
    /// Order among this windower's windows of the key (from 0); the stored
    /// number is allocated by the store.
    pub ordinal: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: CloseReason,
    pub events: Vec<Positioned>,
}

impl ClosedWindow {
    /// The furthest position per stream among the window's events.
    pub fn high_water(&self) -> HashMap<String, Mark> {
        high_water(self.events.iter().map(|e| &e.pos))
    }

    /// The first position per stream among the window's events.
    pub fn low_water(&self) -> HashMap<String, Mark> {
        let mut low: HashMap<String, Mark> = HashMap::new();
        for p in self.events.iter().map(|e| &e.pos) {
            let e = low.entry(p.stream.clone()).or_insert(p.mark());
            *e = (*e).min(p.mark());
        }
        low
    }
}

pub fn high_water<'a>(positions: impl Iterator<Item = &'a SourcePos>) -> HashMap<String, Mark> {
    let mut hw: HashMap<String, Mark> = HashMap::new();
    for p in positions {
        let e = hw.entry(p.stream.clone()).or_insert(p.mark());
        *e = (*e).max(p.mark());
    }
    hw
}

/// What the store already holds for a key: per stream, the furthest
/// position whose events are inside stored data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub high_water: HashMap<String, Mark>,
}

impl Progress {
    pub fn covers(&self, pos: &SourcePos) -> bool {
        self.high_water
            .get(&pos.stream)
            .is_some_and(|&hw| pos.mark() <= hw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSettings {
    pub count: usize,
    pub duration: Option<Duration>,
}

struct Open {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    opened_at: Instant,
    events: Vec<Positioned>,
}

struct KeyState {
    settings: WindowSettings,
    progress: Progress,
    next_ordinal: i64,
    open: Option<Open>,
    /// When the key's last event arrived, for idle eviction.
    last_push: Instant,
}

#[derive(Default)]
pub struct Windower {
    keys: HashMap<WindowKey, KeyState>,
}

impl Windower {
    pub fn knows(&self, key: &WindowKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Events waiting in open windows.
    pub fn open_events(&self) -> usize {
        self.keys
            .values()
            .filter_map(|s| s.open.as_ref())
            .map(|o| o.events.len())
            .sum()
    }

    /// How many versions of `model` have window state.
    pub fn versions(&self, model: &str) -> usize {
        self.keys.keys().filter(|k| k.model == model).count()
    }

    /// Registers a key with its settings and stored progress.
    pub fn add_key(&mut self, key: WindowKey, settings: WindowSettings, progress: Progress) {
        self.keys.insert(
            key,
            KeyState {
                settings,
                progress,
                next_ordinal: 0,
                open: None,
                last_push: Instant::now(),
            },
        );
    }

    /// Whether the event at `pos` is already inside a stored window of `key`.
    pub fn covered(&self, key: &WindowKey, pos: &SourcePos) -> bool {
        self.keys.get(key).is_some_and(|s| s.progress.covers(pos))
    }

    /// Adds an event of a registered key; returns the windows it closed.
    pub fn push(&mut self, key: &WindowKey, item: Positioned, now: Instant) -> Vec<ClosedWindow> {
        let Some(state) = self.keys.get_mut(key) else {
            debug_assert!(false, "push for an unregistered key");
            return Vec::new();
        };
        state.last_push = now;
        let mut closed = Vec::new();
        let ts = item.event.ts;
        if let (Some(open), Some(d)) = (&state.open, state.settings.duration) {
            // A window whose end lies past the end of time never closes by
            // event time (the wall clock still closes it).
            let end = chrono::Duration::from_std(d)
                .ok()
                .and_then(|limit| open.start.checked_add_signed(limit));
            if end.is_some_and(|end| ts >= end) {
                closed.extend(close(key, state, CloseReason::EventTime));
            }
        }
        let open = state.open.get_or_insert_with(|| Open {
            start: ts,
            end: ts,
            opened_at: now,
            events: Vec::new(),
        });
        open.start = open.start.min(ts);
        open.end = open.end.max(ts);
        open.events.push(item);
        if state.settings.count > 0 && open.events.len() >= state.settings.count {
            closed.extend(close(key, state, CloseReason::Count));
        }
        closed
    }

    /// Closes windows that have been open longer than their duration on the
    /// wall clock, so that a quiet model still gets its window scored.
    pub fn flush_idle(&mut self, now: Instant) -> Vec<ClosedWindow> {
        let mut closed = Vec::new();
        for (key, state) in self.keys.iter_mut() {
            let due = match (&state.open, state.settings.duration) {
                (Some(open), Some(d)) => now.duration_since(open.opened_at) >= d,
                _ => false,
            };
            if due {
                closed.extend(close(key, state, CloseReason::Idle));
            }
        }
        closed.sort_by(|a, b| (&a.key, a.ordinal).cmp(&(&b.key, b.ordinal)));
        closed
    }

    /// Closes the open windows of every key of `model` and forgets the keys.
    pub fn remove_model(&mut self, model: &str) -> Vec<ClosedWindow> {
        let keys = self
            .keys
            .keys()
            .filter(|k| k.model == model)
            .cloned()
            .collect();
        self.remove_keys(keys)
    }

    /// Closes the open windows of keys that had no event for `idle` and
    /// forgets the keys (a version that stopped, one a producer sprayed).
    pub fn remove_idle_keys(&mut self, now: Instant, idle: Duration) -> Vec<ClosedWindow> {
        let keys = self
            .keys
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_push) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        self.remove_keys(keys)
    }

    fn remove_keys(&mut self, keys: Vec<WindowKey>) -> Vec<ClosedWindow> {
        let mut closed: Vec<ClosedWindow> = keys
            .iter()
            .filter_map(|key| {
                let mut state = self.keys.remove(key)?;
                close(key, &mut state, CloseReason::Idle)
            })
            .collect();
        closed.sort_by(|a, b| (&a.key, a.ordinal).cmp(&(&b.key, b.ordinal)));
        closed
    }

    /// Closes every open window (end of a finite source).
    pub fn drain(&mut self) -> Vec<ClosedWindow> {
        let mut closed: Vec<ClosedWindow> = self
            .keys
            .iter_mut()
            .filter_map(|(key, state)| close(key, state, CloseReason::EndOfStream))
            .collect();
        closed.sort_by(|a, b| (&a.key, a.ordinal).cmp(&(&b.key, b.ordinal)));
        closed
    }
}

fn close(key: &WindowKey, state: &mut KeyState, reason: CloseReason) -> Option<ClosedWindow> {
    let open = state.open.take()?;
    let ordinal = state.next_ordinal;
    state.next_ordinal += 1;
    Some(ClosedWindow {
        key: key.clone(),
        ordinal,
        start: open.start,
        end: open.end,
        reason,
        events: open.events,
    })
}

/// Collects a model's first events into its reference.
pub struct ReferenceBuilder {
    pub target: usize,
    pub events: Vec<Positioned>,
}

impl ReferenceBuilder {
    pub fn new(target: usize) -> Self {
        Self {
            target,
            // Grown as events come: a model that never sends its reference
            // (or a sprayed model name) must not cost a full reservation.
            events: Vec::with_capacity(target.min(1024)),
        }
    }

    /// Adds an event; true once the reference is complete.
    pub fn push(&mut self, item: Positioned) -> bool {
        self.events.push(item);
        self.events.len() >= self.target
    }
}

/// Global window settings; `models.<name>` overrides them per model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Close a window after this many events (0: no count limit).
    pub count: usize,
    /// Close a window this many seconds after its first event, by event time,
    /// or when it has been open that long on the wall clock (0: no time limit).
    pub duration_secs: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            count: 500,
            duration_secs: 300,
        }
    }
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 && self.duration_secs == 0 {
            return Err("windows.count and windows.duration_secs cannot both be 0".into());
        }
        Ok(())
    }
}

/// How a model's reference is taken from the stream when none is stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceConfig {
    /// Events taken from the stream as the reference of a model that has none
    /// (neither stored nor imported).
    pub size: usize,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self { size: 1000 }
    }
}

impl ReferenceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.size < 2 {
            return Err("reference.size must be at least 2".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TelemetryEvent;

    fn item(offset: i64, secs: i64) -> Positioned {
        let ts = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        let event: TelemetryEvent =
            serde_json::from_value(serde_json::json!({"model": "m", "ts": ts.to_rfc3339()}))
                .unwrap();
        Positioned::new(
            event,
            SourcePos {
                stream: "t/0".into(),
                offset,
                index: 0,
            },
        )
    }

    fn key() -> WindowKey {
        WindowKey {
            model: "m".into(),
            version: String::new(),
        }
    }

    #[test]
    fn closes_by_count_then_by_event_time() {
        let mut w = Windower::default();
        let settings = WindowSettings {
            count: 3,
            duration: Some(Duration::from_secs(60)),
        };
        w.add_key(key(), settings, Progress::default());
        let now = Instant::now();
        assert!(w.push(&key(), item(0, 0), now).is_empty());
        assert!(w.push(&key(), item(1, 1), now).is_empty());
        let c = w.push(&key(), item(2, 2), now);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].ordinal, c[0].events.len(), c[0].reason),
            (0, 3, CloseReason::Count)
        );
        assert!(w.push(&key(), item(3, 10), now).is_empty());
        let c = w.push(&key(), item(4, 71), now);
        assert_eq!(
            (c[0].ordinal, c[0].events.len(), c[0].reason),
            (1, 1, CloseReason::EventTime)
        );
        let c = w.drain();
        assert_eq!((c[0].ordinal, c[0].events.len()), (2, 1));
        assert_eq!(c[0].high_water()["t/0"].offset, 4);
    }

    #[test]
    fn idle_windows_flush_on_the_wall_clock() {
        let mut w = Windower::default();
        w.add_key(
            key(),
            WindowSettings {
                count: 100,
                duration: Some(Duration::from_secs(5)),
            },
            Progress::default(),
        );
        let t0 = Instant::now();
        w.push(&key(), item(0, 0), t0);
        assert!(w.flush_idle(t0 + Duration::from_secs(4)).is_empty());
        let c = w.flush_idle(t0 + Duration::from_secs(5));
        assert_eq!((c.len(), c[0].reason), (1, CloseReason::Idle));
    }

    #[test]
    fn progress_covers_stored_positions() {
        let pos = |offset, index| SourcePos {
            stream: "t/0".into(),
            offset,
            index,
        };
        let mut p = Progress::default();
        p.high_water.insert(
            "t/0".into(),
            Mark {
                offset: 10,
                index: 3,
            },
        );
        assert!(p.covers(&pos(9, 700)));
        assert!(p.covers(&pos(10, 3)));
        // The rest of a message whose first events a stored window holds.
        assert!(!p.covers(&pos(10, 4)));
        assert!(!p.covers(&pos(11, 0)));
        assert!(!p.covers(&SourcePos {
            stream: "t/1".into(),
            offset: 0,
            index: 0,
        }));
    }
}
