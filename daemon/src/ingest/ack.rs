//! At-least-once bookkeeping: which source positions are still needed.
//!
//! A message is held from the moment it is read until every event it carried
//! is durable (inside a stored window or reference) or it has been
//! dead-lettered. The committable position of a stream is its lowest held
//! offset, or one past the highest offset seen when nothing is held.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Positioned, SourcePos};

#[derive(Default)]
struct StreamState {
    held: BTreeMap<i64, usize>,
    next_after_seen: i64,
    committed: i64,
}

#[derive(Default)]
pub struct OffsetTracker {
    streams: HashMap<String, StreamState>,
}

impl OffsetTracker {
    /// Adds a hold on `pos` (one per event that still depends on it).
    pub fn hold(&mut self, pos: &SourcePos) {
        let s = self
            .streams
            .entry(pos.stream.clone())
            .or_insert_with(|| StreamState {
                held: BTreeMap::new(),
                next_after_seen: pos.offset,
                committed: pos.offset,
            });
        *s.held.entry(pos.offset).or_insert(0) += 1;
        s.next_after_seen = s.next_after_seen.max(pos.offset + 1);
    }

    /// Drops one hold on `pos`.
    pub fn release(&mut self, pos: &SourcePos) {
        let Some(s) = self.streams.get_mut(&pos.stream) else {
            debug_assert!(false, "release of an unknown stream");
            return;
        };
        if let Some(n) = s.held.get_mut(&pos.offset) {
            *n -= 1;
            if *n == 0 {
                s.held.remove(&pos.offset);
            }
        } else {
            debug_assert!(false, "release without hold");
        }
    }

    /// Streams whose committable offset moved forward since the last call,
    /// with the offset to resume from.
    pub fn advanced(&mut self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for (stream, s) in &mut self.streams {
            let next = s.held.keys().next().copied().unwrap_or(s.next_after_seen);
            if next > s.committed {
                s.committed = next;
                out.push((stream.clone(), next));
            }
        }
        out.sort();
        out
    }

    /// Holds what an event depends on: its message (unless the event is
    /// windowed on a stream of its own) and the other half of its pair.
    pub fn hold_item(&mut self, item: &Positioned) {
        if item.pos.is_transport() {
            self.hold(&item.pos);
        }
        if let Some(also) = &item.also {
            self.hold(also);
        }
    }

    /// Drops what `hold_item` took.
    pub fn release_item(&mut self, item: &Positioned) {
        if item.pos.is_transport() {
            self.release(&item.pos);
        }
        if let Some(also) = &item.also {
            self.release(also);
        }
    }

    /// Number of positions still held, for metrics and shutdown logs.
    pub fn held(&self) -> usize {
        self.streams.values().map(|s| s.held.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(o: i64) -> SourcePos {
        SourcePos {
            stream: "t/0".into(),
            offset: o,
            index: 0,
        }
    }

    #[test]
    fn commits_only_up_to_the_lowest_held_offset() {
        let mut t = OffsetTracker::default();
        for o in 0..4 {
            t.hold(&pos(o));
        }
        t.hold(&pos(1)); // a second event of message 1
        t.release(&pos(0));
        t.release(&pos(2));
        assert_eq!(t.advanced(), vec![("t/0".into(), 1)]);
        t.release(&pos(1));
        assert_eq!(t.advanced(), vec![]);
        t.release(&pos(1));
        assert_eq!(t.advanced(), vec![("t/0".into(), 3)]);
        t.release(&pos(3));
        assert_eq!(t.advanced(), vec![("t/0".into(), 4)]);
        assert_eq!(t.held(), 0);
    }
}
