//! Alerts (one row per incident of a dedup key) and silences.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::types::Json;

use super::{Result, Store, Tx, with_pool, with_tx};
use crate::judge::{AlertState, Status};

/// A silence as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Silence {
    pub id: i64,
    pub model: String,
    pub detector: Option<String>,
    pub feature: Option<String>,
    pub comment: String,
    pub expires_at: DateTime<Utc>,
}

/// The one place an alert row is decoded: its JSON state, with the row id.
fn alert_row<R>(r: &R) -> std::result::Result<AlertState, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> Json<AlertState>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut a: Json<AlertState> = r.try_get("state")?;
    a.0.id = Some(r.try_get("id")?);
    Ok(a.0)
}

fn silence_row<R>(r: &R) -> std::result::Result<Silence, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Silence {
        id: r.try_get("id")?,
        model: r.try_get("model")?,
        detector: r.try_get("detector")?,
        feature: r.try_get("feature")?,
        comment: r.try_get("comment")?,
        expires_at: r.try_get("expires_at")?,
    })
}

impl Store {
    /// Alerts, newest first; `status` filters (`pending`, `firing`, `resolved`).
    pub async fn list_alerts(&self, status: Option<Status>) -> Result<Vec<AlertState>> {
        let rows = with_pool!(self, pool => {
            sqlx::query("SELECT id, state FROM alerts WHERE ($1 IS NULL OR status = $1) ORDER BY id DESC")
                .bind(status.map(Status::as_str))
                .fetch_all(pool)
                .await?
                .iter()
                .map(alert_row)
                .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Marks an alert acknowledged; false when there is no such alert.
    pub async fn acknowledge(&self, id: i64) -> Result<bool> {
        let now = Utc::now();
        let mut tx = self.begin().await?;
        let Some(mut state) = tx.alert_by_id(id).await? else {
            return Ok(false);
        };
        state.acknowledged = true;
        with_tx!(&mut tx, conn => {
            sqlx::query("UPDATE alerts SET acknowledged = $2, state = $3, updated_at = $4 WHERE id = $1")
                .bind(id)
                .bind(true)
                .bind(Json(&state))
                .bind(now)
                .execute(conn)
                .await?;
        });
        tx.commit().await?;
        Ok(true)
    }

    pub async fn add_silence(
        &self,
        model: &str,
        detector: Option<&str>,
        feature: Option<&str>,
        comment: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<i64> {
        let now = Utc::now();
        let id = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO silences (model, detector, feature, comment, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(model)
            .bind(detector)
            .bind(feature)
            .bind(comment)
            .bind(now)
            .bind(expires_at)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("id")?
        });
        Ok(id)
    }

    /// Silences that have not expired.
    pub async fn silences(&self) -> Result<Vec<Silence>> {
        let now = Utc::now();
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT id, model, detector, feature, comment, expires_at FROM silences
                 WHERE expires_at > $1 ORDER BY id",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
            .iter()
            .map(silence_row)
            .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }
}

impl Tx {
    /// One alert, locked on PostgreSQL until the transaction ends: an
    /// acknowledgement writes the whole state back, and must not undo a
    /// window's step in between.
    async fn alert_by_id(&mut self, id: i64) -> Result<Option<AlertState>> {
        let sql = match self {
            Tx::Postgres(_) => "SELECT id, state FROM alerts WHERE id = $1 FOR UPDATE",
            Tx::Sqlite(_) => "SELECT id, state FROM alerts WHERE id = $1",
        };
        let a = with_tx!(self, conn => {
            sqlx::query(sql)
                .bind(id)
                .fetch_optional(conn)
                .await?
                .as_ref()
                .map(alert_row)
                .transpose()?
        });
        Ok(a)
    }

    /// The versions of `model` other than `version` with an open alert.
    pub async fn versions_with_open_alerts(
        &mut self,
        model: &str,
        version: &str,
    ) -> Result<Vec<String>> {
        let versions: Vec<String> = with_tx!(self, conn => {
            sqlx::query_scalar(
                "SELECT DISTINCT model_version FROM alerts
                 WHERE model = $1 AND model_version <> $2 AND status <> 'resolved'
                 ORDER BY model_version",
            )
            .bind(model)
            .bind(version)
            .fetch_all(conn)
            .await?
        });
        Ok(versions)
    }

    /// Every unresolved incident of one model version, findings and
    /// episodes, oldest first, locked on PostgreSQL as `open_alert` locks.
    pub async fn open_alerts_of(&mut self, model: &str, version: &str) -> Result<Vec<AlertState>> {
        let sql = match self {
            Tx::Postgres(_) => {
                "SELECT id, state FROM alerts WHERE model = $1 AND model_version = $2
                 AND status <> 'resolved' ORDER BY id FOR UPDATE"
            }
            Tx::Sqlite(_) => {
                "SELECT id, state FROM alerts WHERE model = $1 AND model_version = $2
                 AND status <> 'resolved' ORDER BY id"
            }
        };
        let rows = with_tx!(self, conn => {
            sqlx::query(sql)
                .bind(model)
                .bind(version)
                .fetch_all(conn)
                .await?
                .iter()
                .map(alert_row)
                .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The latest incident of `dedup_key` that has not resolved, locked on
    /// PostgreSQL until the transaction ends, so that instances stepping the
    /// same alert take turns instead of overwriting each other (SQLite has
    /// one writer).
    pub async fn open_alert(&mut self, dedup_key: &str) -> Result<Option<AlertState>> {
        let sql = match self {
            Tx::Postgres(_) => {
                "SELECT id, state FROM alerts WHERE dedup_key = $1 AND status <> 'resolved'
                 ORDER BY incident DESC LIMIT 1 FOR UPDATE"
            }
            Tx::Sqlite(_) => {
                "SELECT id, state FROM alerts WHERE dedup_key = $1 AND status <> 'resolved'
                 ORDER BY incident DESC LIMIT 1"
            }
        };
        let a = with_tx!(self, conn => {
            sqlx::query(sql)
            .bind(dedup_key)
            .fetch_optional(conn)
            .await?
            .as_ref()
            .map(alert_row)
            .transpose()?
        });
        Ok(a)
    }

    /// The number a new incident of `dedup_key` gets.
    pub async fn next_incident(&mut self, dedup_key: &str) -> Result<i64> {
        let n = with_tx!(self, conn => {
            sqlx::query("SELECT COALESCE(MAX(incident), 0) + 1 AS n FROM alerts WHERE dedup_key = $1")
                .bind(dedup_key)
                .fetch_one(conn)
                .await?
                .try_get::<i64, _>("n")?
        });
        Ok(n)
    }

    /// Whether an unexpired silence matches the alert.
    pub async fn silenced(&mut self, a: &AlertState, now: DateTime<Utc>) -> Result<bool> {
        let n = with_tx!(self, conn => {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM silences WHERE model = $1
                   AND (detector IS NULL OR detector = $2) AND (feature IS NULL OR feature = $3)
                   AND expires_at > $4",
            )
            .bind(&a.model)
            .bind(&a.detector)
            .bind(&a.feature)
            .bind(now)
            .fetch_one(conn)
            .await?
            .try_get::<i64, _>("n")?
        });
        Ok(n > 0)
    }

    /// Writes an alert's state, inserting it when it has no id yet; returns its id.
    pub async fn save_alert(&mut self, a: &AlertState, now: DateTime<Utc>) -> Result<i64> {
        match a.id {
            None => self.insert_alert(a, now).await,
            Some(id) => {
                self.update_alert(id, a, now).await?;
                Ok(id)
            }
        }
    }

    async fn insert_alert(&mut self, a: &AlertState, now: DateTime<Utc>) -> Result<i64> {
        let id = with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO alerts (dedup_key, incident, model, model_version, detector, feature, severity,
                                     status, acknowledged, silenced, score, p_value, threshold,
                                     first_window_seq, last_window_seq, first_seen_at, fired_at,
                                     last_seen_at, resolved_at, trace_id, state, updated_at,
                                     window_start, window_end, evidence, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                         $18, $19, $20, $21, $22, $23, $24, $25, $22)
                 RETURNING id",
            )
            .bind(&a.dedup_key)
            .bind(a.incident)
            .bind(&a.model)
            .bind(&a.model_version)
            .bind(&a.detector)
            .bind(&a.feature)
            .bind(a.severity.as_str())
            .bind(a.status.as_str())
            .bind(a.acknowledged)
            .bind(a.silenced)
            .bind(a.score)
            .bind(a.p_value)
            .bind(a.threshold)
            .bind(a.first_window_seq)
            .bind(a.last_window_seq)
            .bind(a.first_seen_at)
            .bind(a.fired_at)
            .bind(a.last_seen_at)
            .bind(a.resolved_at)
            .bind(a.trace_id.as_deref())
            .bind(Json(a))
            .bind(now)
            .bind(a.window_start)
            .bind(a.window_end)
            .bind(Json(&a.evidence))
            .fetch_one(conn)
            .await?
            .try_get::<i64, _>("id")?
        });
        Ok(id)
    }

    async fn update_alert(&mut self, id: i64, a: &AlertState, now: DateTime<Utc>) -> Result<()> {
        with_tx!(self, conn => {
            sqlx::query(
                "UPDATE alerts SET model_version = $2, severity = $3, status = $4, silenced = $5,
                        score = $6, p_value = $7, threshold = $8, last_window_seq = $9,
                        fired_at = $10, last_seen_at = $11, resolved_at = $12, trace_id = $13,
                        state = $14, updated_at = $15, window_end = $16, evidence = $17
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&a.model_version)
            .bind(a.severity.as_str())
            .bind(a.status.as_str())
            .bind(a.silenced)
            .bind(a.score)
            .bind(a.p_value)
            .bind(a.threshold)
            .bind(a.last_window_seq)
            .bind(a.fired_at)
            .bind(a.last_seen_at)
            .bind(a.resolved_at)
            .bind(a.trace_id.as_deref())
            .bind(Json(a))
            .bind(now)
            .bind(a.window_end)
            .bind(Json(&a.evidence))
            .execute(conn)
            .await?;
        });
        Ok(())
    }
}
