//! Scored windows and their scores.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Result, Store, Tx, with_pool, with_tx};
use crate::detect::history::{History, Mix, Volume};
use crate::judge::{Judged, WindowVerdict};

impl Store {
    /// The number the next window of (model, version) gets.
    pub async fn next_window_seq(&self, model: &str, version: &str) -> Result<i64> {
        let mut tx = self.begin().await?;
        let seq = tx.next_window_seq(model, version).await?;
        tx.commit().await?;
        Ok(seq)
    }
}

impl Store {
    /// The class mixes and volumes of the last `windows` live windows of
    /// (model, version), oldest first (windows quarantined with an error or
    /// backfilled from history are not a live past); while the version has
    /// fewer, it is young, and the class mixes of the version scored last
    /// before it come too. Scored, not event, time picks that version: a
    /// producer sets event times.
    pub async fn history(&self, model: &str, version: &str, windows: usize) -> Result<History> {
        let (same_version, volumes) = self.recent(model, version, windows).await?;
        let young = volumes.len() < windows;
        let previous: Option<String> = match young {
            false => None,
            true => with_pool!(self, pool => {
                sqlx::query(
                    "SELECT model_version FROM windows
                     WHERE model = $1 AND model_version <> $2 AND close_reason <> 'backfill'
                       AND error IS NULL
                     ORDER BY scored_at DESC LIMIT 1",
                )
                .bind(model)
                .bind(version)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get("model_version"))
                .transpose()?
            }),
        };
        let previous = match previous {
            Some(v) => Some((v.clone(), self.recent(model, &v, windows).await?.0)),
            None => None,
        };
        Ok(History {
            same_version,
            previous,
            volumes,
        })
    }

    /// The class mixes (of the windows that have one) and the volumes of
    /// the last `windows` live windows of (model, version), oldest first.
    async fn recent(
        &self,
        model: &str,
        version: &str,
        windows: usize,
    ) -> Result<(Vec<Mix>, Vec<Volume>)> {
        let live: Vec<(i64, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, n_events FROM windows
                 WHERE model = $1 AND model_version = $2 AND error IS NULL AND close_reason <> 'backfill'
                 ORDER BY seq DESC LIMIT $3",
            )
            .bind(model)
            .bind(version)
            .bind(windows as i64)
            .fetch_all(pool)
            .await?
        });
        let Some(first) = live.iter().map(|(seq, _)| *seq).min() else {
            return Ok(Default::default());
        };
        let classes = self.counts(model, version, first, Counts::Classes).await?;
        let clients = self.counts(model, version, first, Counts::Clients).await?;
        let mut mixes = Vec::new();
        let mut volumes = Vec::new();
        for (seq, events) in live.into_iter().rev() {
            if let Some(mix) = classes.get(&seq) {
                mixes.push(mix.clone());
            }
            volumes.push(Volume {
                events: events.max(0) as u64,
                top: clients.get(&seq).cloned().unwrap_or_default(),
            });
        }
        Ok((mixes, volumes))
    }

    /// The class or client rows of (model, version) from window `first`
    /// on, by window.
    async fn counts(
        &self,
        model: &str,
        version: &str,
        first: i64,
        what: Counts,
    ) -> Result<std::collections::HashMap<i64, Mix>> {
        let sql = match what {
            Counts::Classes => {
                "SELECT window_seq, class, events FROM window_classes
                 WHERE model = $1 AND model_version = $2 AND window_seq >= $3
                 ORDER BY window_seq, class"
            }
            Counts::Clients => {
                "SELECT window_seq, client, requests FROM window_clients
                 WHERE model = $1 AND model_version = $2 AND window_seq >= $3
                 ORDER BY window_seq, client"
            }
        };
        let rows: Vec<(i64, String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(model)
                .bind(version)
                .bind(first)
                .fetch_all(pool)
                .await?
        });
        let mut out: std::collections::HashMap<i64, Mix> = Default::default();
        for (seq, name, n) in rows {
            out.entry(seq).or_default().push((name, n.max(0) as u64));
        }
        Ok(out)
    }
}

/// Which per-window counts to read.
#[derive(Clone, Copy)]
enum Counts {
    Classes,
    Clients,
}

impl Tx {
    /// When (model, version) last stored a live window, if it ever did: its
    /// newest by number, which the window's unique key indexes.
    pub async fn last_window_at(
        &mut self,
        model: &str,
        version: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let at: Option<DateTime<Utc>> = with_tx!(self, conn => {
            sqlx::query_scalar(
                "SELECT scored_at FROM windows
                 WHERE model = $1 AND model_version = $2 AND close_reason <> 'backfill'
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(model)
            .bind(version)
            .fetch_optional(conn)
            .await?
        });
        Ok(at)
    }

    /// Waits for, then holds until this transaction ends, the window
    /// counter of (model, version): a writer of that version's window holds
    /// it while it writes, so what is read after this sees its window.
    /// SQLite has one writer at a time already.
    pub async fn lock_window_counter(&mut self, model: &str, version: &str) -> Result<()> {
        if let Tx::Postgres(conn) = self {
            sqlx::query(
                "SELECT next_seq FROM window_counters
                 WHERE model = $1 AND model_version = $2 FOR UPDATE",
            )
            .bind(model)
            .bind(version)
            .fetch_optional(&mut **conn)
            .await?;
        }
        Ok(())
    }

    /// The number the next window of (model, version) gets, read inside
    /// this transaction.
    pub async fn next_window_seq(&mut self, model: &str, version: &str) -> Result<i64> {
        let next: Option<i64> = with_tx!(self, conn => {
            sqlx::query("SELECT next_seq FROM window_counters WHERE model = $1 AND model_version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(conn)
                .await?
                .map(|r| r.try_get("next_seq"))
                .transpose()?
        });
        Ok(next.unwrap_or(0))
    }

    /// Takes the next window number of (model, version). The counter row
    /// stays locked until this transaction ends, so concurrent writers of
    /// the key take turns and a rolled-back window gives its number back.
    pub async fn allocate_window_seq(&mut self, model: &str, version: &str) -> Result<i64> {
        let taken: i64 = with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO window_counters (model, model_version, next_seq) VALUES ($1, $2, 1)
                 ON CONFLICT (model, model_version) DO UPDATE SET next_seq = window_counters.next_seq + 1
                 RETURNING next_seq - 1 AS taken",
            )
            .bind(model)
            .bind(version)
            .fetch_one(conn)
            .await?
            .try_get("taken")?
        });
        Ok(taken)
    }

    /// Moves the counter of (model, version) past every stored window.
    pub async fn resync_window_seq(&mut self, model: &str, version: &str) -> Result<()> {
        with_tx!(self, conn => {
            sqlx::query(
                "UPDATE window_counters SET next_seq =
                   (SELECT COALESCE(MAX(seq), -1) + 1 FROM windows WHERE model = $1 AND model_version = $2)
                 WHERE model = $1 AND model_version = $2",
            )
            .bind(model)
            .bind(version)
            .execute(conn)
            .await?;
        });
        Ok(())
    }

    /// Inserts the window row; false when its number is taken.
    pub async fn insert_window(&mut self, v: &WindowVerdict, now: DateTime<Utc>) -> Result<bool> {
        let n = with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO windows (model, model_version, seq, window_start, window_end, n_events,
                                      close_reason, device, error, scored_at, trace_id, positions)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (model, model_version, seq) DO NOTHING",
            )
            .bind(&v.model)
            .bind(&v.model_version)
            .bind(v.seq)
            .bind(v.start)
            .bind(v.end)
            .bind(v.n_events as i64)
            .bind(v.close_reason)
            .bind(&v.device)
            .bind(v.error.as_deref())
            .bind(now)
            .bind(v.trace_id.as_deref())
            .bind(sqlx::types::Json(positions(v)))
            .execute(conn)
            .await?
            .rows_affected()
        });
        if n == 1 {
            self.insert_counts(v, Counts::Classes).await?;
            self.insert_counts(v, Counts::Clients).await?;
        }
        Ok(n == 1)
    }

    /// The window's predicted-class mix or heaviest clients, one row each.
    async fn insert_counts(&mut self, v: &WindowVerdict, what: Counts) -> Result<()> {
        let (sql, rows) = match what {
            Counts::Classes => (
                "INSERT INTO window_classes (model, model_version, window_seq, class, events)
                 VALUES ($1, $2, $3, $4, $5)",
                &v.class_mix,
            ),
            Counts::Clients => (
                "INSERT INTO window_clients (model, model_version, window_seq, client, requests)
                 VALUES ($1, $2, $3, $4, $5)",
                &v.top_clients,
            ),
        };
        for (name, n) in rows {
            with_tx!(self, conn => {
                sqlx::query(sql)
                    .bind(&v.model)
                    .bind(&v.model_version)
                    .bind(v.seq)
                    .bind(name)
                    .bind(*n as i64)
                    .execute(conn)
                    .await?;
            });
        }
        Ok(())
    }

    pub async fn insert_score(
        &mut self,
        v: &WindowVerdict,
        j: &Judged,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let s = &j.score;
        let effect = s.effect.as_ref();
        let band = effect.and_then(|e| e.band.as_ref());
        // A banded score crosses outside these, at the window's threshold.
        let lines = s.band.as_ref().map(|b| {
            let half = b.sd * crate::detect::band::tail_factor(b.windows, j.threshold);
            (b.mean - half, b.mean + half)
        });
        with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO scores (model, model_version, window_seq, detector, feature, family, test,
                                     method, value, p_value, threshold, n_reference, n_window,
                                     window_start, window_end, created_at, effect_name, effect_value,
                                     effect_threshold, effect_gating, effect_band_mean,
                                     effect_band_sd, effect_band_windows, band_lower, band_upper)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                         $21, $22, $23, $24, $25)
                 ON CONFLICT (model, model_version, window_seq, detector, feature) DO NOTHING",
            )
            .bind(&v.model)
            .bind(&v.model_version)
            .bind(v.seq)
            .bind(&s.detector)
            .bind(&s.feature)
            .bind(s.family.as_str())
            .bind(&s.test)
            .bind(&s.method)
            .bind(s.statistic)
            .bind(s.p_value)
            .bind(j.threshold)
            .bind(s.n_reference as i64)
            .bind(s.n_window as i64)
            .bind(v.start)
            .bind(v.end)
            .bind(now)
            .bind(effect.map(|e| e.name.as_str()))
            .bind(effect.map(|e| e.value))
            .bind(effect.map(|e| e.threshold))
            .bind(effect.map(|e| e.gating))
            .bind(band.map(|b| b.mean))
            .bind(band.map(|b| b.sd))
            .bind(band.map(|b| b.windows as i32))
            .bind(lines.map(|l| l.0))
            .bind(lines.map(|l| l.1))
            .execute(conn)
            .await?;
        });
        Ok(())
    }
}

/// Per stream, the first and last position of the window's events
/// (`[offset, index]` each): which source records a window was made of.
fn positions(v: &WindowVerdict) -> serde_json::Value {
    let ranges: serde_json::Map<String, serde_json::Value> = v
        .high_water
        .iter()
        .map(|(stream, last)| {
            let first = v.low_water.get(stream).unwrap_or(last);
            let range = serde_json::json!({
                "first": [first.offset, first.index],
                "last": [last.offset, last.index],
            });
            (stream.clone(), range)
        })
        .collect();
    serde_json::Value::Object(ranges)
}
