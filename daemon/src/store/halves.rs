//! The halves of stored pairs: which messages, read again without their
//! other half, were already paired (see `join`).

use std::collections::{HashMap, HashSet};

use super::{Result, Store, Tx, with_pool, with_tx};
use crate::event::{Halves, SourcePos};

impl Tx {
    /// Records `halves` as stored with window `seq` of `scope` (0 for a
    /// reference), a row per stream.
    pub async fn insert_halves(
        &mut self,
        model: &str,
        scope: &str,
        seq: i64,
        halves: &Halves,
    ) -> Result<()> {
        for (stream, offsets) in &halves.0 {
            let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
                continue;
            };
            with_tx!(self, conn => {
                sqlx::query(
                    "INSERT INTO stored_halves (model, scope, seq, stream, first_offset, last_offset, offsets)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (model, scope, seq, stream) DO NOTHING",
                )
                .bind(model)
                .bind(scope)
                .bind(seq)
                .bind(stream)
                .bind(*first)
                .bind(*last)
                .bind(runs(offsets))
                .execute(conn)
                .await?;
            });
        }
        Ok(())
    }
}

impl Store {
    /// Which of `positions` (a message's stream and offset) are a half of
    /// a pair already stored, or a half already scored alone. Not by model:
    /// the two halves of a pair may name their model apart (an OIP request
    /// without `model_name` takes the topic's name; its response names
    /// itself), and a message is a half of one pair.
    pub async fn stored_halves(&self, positions: &[SourcePos]) -> Result<HashSet<SourcePos>> {
        let mut spans: HashMap<&str, (i64, i64)> = HashMap::new();
        for p in positions {
            let span = spans.entry(&p.stream).or_insert((p.offset, p.offset));
            *span = (span.0.min(p.offset), span.1.max(p.offset));
        }
        let mut found = HashSet::new();
        for (stream, (low, high)) in spans {
            let rows: Vec<String> = with_pool!(self, pool => {
                sqlx::query_scalar(
                    "SELECT offsets FROM stored_halves
                     WHERE stream = $1 AND last_offset >= $2 AND first_offset <= $3",
                )
                .bind(stream)
                .bind(low)
                .bind(high)
                .fetch_all(pool)
                .await?
            });
            let inside =
                |p: &&SourcePos| p.stream == stream && rows.iter().any(|r| in_runs(r, p.offset));
            found.extend(positions.iter().filter(inside).cloned());
        }
        Ok(found)
    }

    /// The furthest offset of `stream` among stored halves.
    pub async fn halves_horizon(&self, stream: &str) -> Result<Option<i64>> {
        let max: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(last_offset) FROM stored_halves WHERE stream = $1")
                .bind(stream)
                .fetch_one(pool)
                .await?
        });
        Ok(max)
    }
}

/// Sorted, distinct offsets as runs: `[3, 4, 5, 9]` is `3-5,9`. A window's
/// halves are mostly consecutive messages of a few streams.
fn runs(offsets: &[i64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < offsets.len() {
        let mut j = i;
        while j + 1 < offsets.len() && offsets[j + 1] == offsets[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        match i == j {
            true => out.push_str(&offsets[i].to_string()),
            false => out.push_str(&format!("{}-{}", offsets[i], offsets[j])),
        }
        i = j + 1;
    }
    out
}

/// Whether `offset` is in `runs` as `runs()` wrote them. Offsets are not
/// negative, so a `-` separates the two ends of a run.
fn in_runs(runs: &str, offset: i64) -> bool {
    runs.split(',').any(|run| {
        let mut ends = run.splitn(2, '-').map(|n| n.parse::<i64>().ok());
        match (ends.next().flatten(), ends.next()) {
            (Some(a), None) => a == offset,
            (Some(a), Some(Some(b))) => (a..=b).contains(&offset),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_every_offset_and_no_other() {
        let offsets = [0, 3, 4, 5, 9, 11, 12];
        let text = runs(&offsets);
        assert_eq!(text, "0,3-5,9,11-12");
        for o in -1..15 {
            assert_eq!(in_runs(&text, o), offsets.contains(&o), "offset {o}");
        }
        assert_eq!(runs(&[]), "");
        assert!(!in_runs("", 0));
    }
}
