//! Scored windows and their scores.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Result, Store, Tx, with_tx};
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

impl Tx {
    /// The number the next window of (model, version) gets, read inside
    /// this transaction.
    pub async fn next_window_seq(&mut self, model: &str, version: &str) -> Result<i64> {
        let max: Option<i64> = with_tx!(self, conn => {
            sqlx::query("SELECT MAX(seq) AS m FROM windows WHERE model = $1 AND model_version = $2")
                .bind(model)
                .bind(version)
                .fetch_one(conn)
                .await?
                .try_get("m")?
        });
        Ok(max.map_or(0, |m| m + 1))
    }

    /// Whether the stored window of that number is history a backfill wrote.
    pub async fn is_backfill(&mut self, model: &str, version: &str, seq: i64) -> Result<bool> {
        let reason: Option<String> = with_tx!(self, conn => {
            sqlx::query(
                "SELECT close_reason FROM windows WHERE model = $1 AND model_version = $2 AND seq = $3",
            )
            .bind(model)
            .bind(version)
            .bind(seq)
            .fetch_optional(conn)
            .await?
            .map(|r| r.try_get::<String, _>("close_reason"))
            .transpose()?
        });
        Ok(reason.as_deref() == Some("backfill"))
    }

    /// Inserts the window row; false when it was stored before (a replay).
    pub async fn insert_window(&mut self, v: &WindowVerdict, now: DateTime<Utc>) -> Result<bool> {
        let n = with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO windows (model, model_version, seq, window_start, window_end, n_events,
                                      close_reason, device, error, scored_at, trace_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
            .execute(conn)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn insert_score(
        &mut self,
        v: &WindowVerdict,
        j: &Judged,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let s = &j.score;
        let effect = s.effect.as_ref();
        with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO scores (model, model_version, window_seq, detector, feature, family, test,
                                     method, value, p_value, threshold, n_reference, n_window,
                                     window_start, window_end, created_at, effect_name, effect_value,
                                     effect_threshold, effect_gating)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
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
            .execute(conn)
            .await?;
        });
        Ok(())
    }
}
