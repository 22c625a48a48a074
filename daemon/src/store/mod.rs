//! Stage 6: references, window progress, scores and alerts made durable.
//!
//! PostgreSQL in production, SQLite as the embedded store; the same SQL runs
//! on both (positional `$n` parameters, `ON CONFLICT`, timestamps bound from
//! Rust). A window's scores, alerts and progress are written in one
//! transaction, keyed so that a replay writes nothing twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{Row, SqlSafeStr};

use crate::config::AlertsConfig;
use crate::event::TelemetryEvent;
use crate::judge::lifecycle::{self, Observation};
use crate::judge::{AlertState, Status, Transition, WindowVerdict};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store url {0:?}: expected postgres://... or sqlite:...")]
    Url(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Migrations are embedded at build time so that the binary needs no files
/// beside it; each backend has its own dialect of the same schema.
const PG_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "trace_ids",
        include_str!("../../../migrations/postgres/0002_trace_ids.sql"),
    ),
    (
        3,
        "alert_lifecycle",
        include_str!("../../../migrations/postgres/0003_alert_lifecycle.sql"),
    ),
    (
        4,
        "effect_sizes",
        include_str!("../../../migrations/postgres/0004_effect_sizes.sql"),
    ),
    (
        5,
        "calibration",
        include_str!("../../../migrations/postgres/0005_calibration.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "trace_ids",
        include_str!("../../../migrations/sqlite/0002_trace_ids.sql"),
    ),
    (
        3,
        "alert_lifecycle",
        include_str!("../../../migrations/sqlite/0003_alert_lifecycle.sql"),
    ),
    (
        4,
        "effect_sizes",
        include_str!("../../../migrations/sqlite/0004_effect_sizes.sql"),
    ),
    (
        5,
        "calibration",
        include_str!("../../../migrations/sqlite/0005_calibration.sql"),
    ),
];

fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever pool this store has; the
/// body is compiled once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// A stored reference: where it came from and its events.
#[derive(Debug, Clone)]
pub struct StoredReference {
    pub origin: String,
    pub events: Vec<TelemetryEvent>,
}

/// A queued notification.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub receiver: String,
    pub transition: Transition,
    pub alert: AlertState,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
}

/// Undelivered notifications of one receiver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backlog {
    pub receiver: String,
    pub pending: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
}

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

pub const REFERENCE_SCOPE: &str = "reference";

pub fn version_scope(version: &str) -> String {
    format!("version:{version}")
}

impl Store {
    /// Connects (creating an SQLite file when missing) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(Store::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            // One connection: SQLite has one writer, and an in-memory database
            // exists per connection.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await?;
            Ok(Store::Sqlite(pool))
        } else {
            Err(StoreError::Url(url.to_string()))
        }
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        let store = Self::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Postgres(pool) => migrator(PG_MIGRATIONS).run(pool).await?,
            Store::Sqlite(pool) => migrator(SQLITE_MIGRATIONS).run(pool).await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    pub async fn load_reference(&self, model: &str) -> Result<Option<StoredReference>> {
        let row = with_pool!(self, pool => {
            sqlx::query("SELECT origin, events FROM model_references WHERE model = $1")
                .bind(model)
                .fetch_optional(pool)
                .await?
                .map(|r| -> std::result::Result<_, sqlx::Error> {
                    let origin: String = r.try_get("origin")?;
                    let events: Json<Vec<TelemetryEvent>> = r.try_get("events")?;
                    Ok(StoredReference { origin, events: events.0 })
                })
                .transpose()?
        });
        Ok(row)
    }

    /// Records what was calibrated on a model's reference.
    pub async fn save_calibration(
        &self,
        model: &str,
        calibration: &serde_json::Value,
    ) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, pool => {
            sqlx::query("UPDATE model_references SET calibration = $1, calibrated_at = $2 WHERE model = $3")
                .bind(Json(calibration))
                .bind(now)
                .bind(model)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// What was last calibrated on a model's reference, if anything.
    pub async fn load_calibration(&self, model: &str) -> Result<Option<serde_json::Value>> {
        let v = with_pool!(self, pool => {
            sqlx::query("SELECT calibration FROM model_references WHERE model = $1")
                .bind(model)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<Option<Json<serde_json::Value>>, _>("calibration"))
                .transpose()?
                .flatten()
                .map(|j| j.0)
        });
        Ok(v)
    }

    /// Stores a model's reference and the stream positions it covers in one
    /// transaction. Returns false when the model already had one (another
    /// instance won the race, or a replay): the stored one stands.
    pub async fn save_reference(
        &self,
        model: &str,
        origin: &str,
        events: &[TelemetryEvent],
        high_water: &HashMap<String, i64>,
        replace: bool,
    ) -> Result<bool> {
        let now = Utc::now();
        let events = Json(events);
        let n = events.0.len() as i64;
        let inserted = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if replace {
                sqlx::query("DELETE FROM model_references WHERE model = $1")
                    .bind(model)
                    .execute(&mut *tx)
                    .await?;
            }
            let done = sqlx::query(
                "INSERT INTO model_references (model, origin, n_events, events, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model) DO NOTHING",
            )
            .bind(model)
            .bind(origin)
            .bind(n)
            .bind(&events)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                for (stream, hw) in high_water {
                    sqlx::query(
                        "INSERT INTO progress (model, scope, stream, high_water) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (model, scope, stream) DO UPDATE SET high_water = excluded.high_water
                         WHERE excluded.high_water > progress.high_water",
                    )
                    .bind(model)
                    .bind(REFERENCE_SCOPE)
                    .bind(stream)
                    .bind(*hw)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            done
        });
        Ok(inserted)
    }

    /// Per stream, the highest offset already inside stored data of `scope`.
    pub async fn load_progress(&self, model: &str, scope: &str) -> Result<HashMap<String, i64>> {
        let rows = with_pool!(self, pool => {
            sqlx::query("SELECT stream, high_water FROM progress WHERE model = $1 AND scope = $2")
                .bind(model)
                .bind(scope)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get::<String, _>("stream")?, r.try_get::<i64, _>("high_water")?)))
                .collect::<std::result::Result<HashMap<_, _>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The number the next window of (model, version) gets.
    pub async fn next_window_seq(&self, model: &str, version: &str) -> Result<i64> {
        let max: Option<i64> = with_pool!(self, pool => {
            sqlx::query("SELECT MAX(seq) AS m FROM windows WHERE model = $1 AND model_version = $2")
                .bind(model)
                .bind(version)
                .fetch_one(pool)
                .await?
                .try_get("m")?
        });
        Ok(max.map_or(0, |m| m + 1))
    }

    /// Writes a window's scores, the alerts they advance, the notifications
    /// those alerts owe (one per receiver `route` names) and the window's
    /// progress, in one transaction. Returns the transitions it made; a
    /// window stored before (a replay) writes nothing and returns none.
    pub async fn persist_window(
        &self,
        v: &WindowVerdict,
        alerts: &AlertsConfig,
        route: &(dyn Fn(&AlertState) -> Vec<String> + Sync),
    ) -> Result<Vec<(AlertState, Transition)>> {
        let now = Utc::now();
        let scope = version_scope(&v.model_version);
        let transitions = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let fresh = sqlx::query(
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
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            let mut transitions = Vec::new();
            if fresh {
                for j in &v.judged {
                    let s = &j.score;
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
                    .bind(s.effect.as_ref().map(|e| e.name.as_str()))
                    .bind(s.effect.as_ref().map(|e| e.value))
                    .bind(s.effect.as_ref().map(|e| e.threshold))
                    .bind(s.effect.as_ref().map(|e| e.gating))
                    .execute(&mut *tx)
                    .await?;

                    let obs = Observation { verdict: v, judged: j };
                    let key = obs.dedup_key();
                    let open = sqlx::query(
                        "SELECT id, state FROM alerts WHERE dedup_key = $1 AND status <> 'resolved'
                         ORDER BY incident DESC LIMIT 1",
                    )
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| -> std::result::Result<AlertState, sqlx::Error> {
                        let mut a: Json<AlertState> = r.try_get("state")?;
                        a.0.id = Some(r.try_get("id")?);
                        Ok(a.0)
                    })
                    .transpose()?;
                    if open.is_none() && j.crossed.is_none() {
                        continue;
                    }
                    let next_incident: i64 = if open.is_none() {
                        sqlx::query("SELECT COALESCE(MAX(incident), 0) + 1 AS n FROM alerts WHERE dedup_key = $1")
                            .bind(&key)
                            .fetch_one(&mut *tx)
                            .await?
                            .try_get("n")?
                    } else {
                        0
                    };
                    let (state, transition) = lifecycle::step(open, &obs, alerts, next_incident, now);
                    let Some(mut state) = state else { continue };
                    if transition == Some(Transition::Fired) {
                        let silenced: i64 = sqlx::query(
                            "SELECT COUNT(*) AS n FROM silences WHERE model = $1
                               AND (detector IS NULL OR detector = $2) AND (feature IS NULL OR feature = $3)
                               AND expires_at > $4",
                        )
                        .bind(&state.model)
                        .bind(&state.detector)
                        .bind(&state.feature)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                        state.silenced = silenced > 0;
                    }
                    let id = match state.id {
                        None => sqlx::query(
                            "INSERT INTO alerts (dedup_key, incident, model, model_version, detector, feature, severity,
                                                 status, acknowledged, silenced, score, p_value, threshold,
                                                 first_window_seq, last_window_seq, first_seen_at, fired_at,
                                                 last_seen_at, resolved_at, trace_id, state, updated_at,
                                                 window_start, window_end, evidence, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                                     $18, $19, $20, $21, $22, $23, $24, $25, $22)
                             RETURNING id",
                        )
                        .bind(&state.dedup_key)
                        .bind(state.incident)
                        .bind(&state.model)
                        .bind(&state.model_version)
                        .bind(&state.detector)
                        .bind(&state.feature)
                        .bind(state.severity.as_str())
                        .bind(state.status.as_str())
                        .bind(state.acknowledged)
                        .bind(state.silenced)
                        .bind(state.score)
                        .bind(state.p_value)
                        .bind(state.threshold)
                        .bind(state.first_window_seq)
                        .bind(state.last_window_seq)
                        .bind(state.first_seen_at)
                        .bind(state.fired_at)
                        .bind(state.last_seen_at)
                        .bind(state.resolved_at)
                        .bind(state.trace_id.as_deref())
                        .bind(Json(&state))
                        .bind(now)
                        .bind(state.window_start)
                        .bind(state.window_end)
                        .bind(Json(&state.evidence))
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get::<i64, _>("id")?,
                        Some(id) => {
                            sqlx::query(
                                "UPDATE alerts SET model_version = $2, severity = $3, status = $4, silenced = $5,
                                        score = $6, p_value = $7, threshold = $8, last_window_seq = $9,
                                        fired_at = $10, last_seen_at = $11, resolved_at = $12, trace_id = $13,
                                        state = $14, updated_at = $15, window_end = $16, evidence = $17
                                 WHERE id = $1",
                            )
                            .bind(id)
                            .bind(&state.model_version)
                            .bind(state.severity.as_str())
                            .bind(state.status.as_str())
                            .bind(state.silenced)
                            .bind(state.score)
                            .bind(state.p_value)
                            .bind(state.threshold)
                            .bind(state.last_window_seq)
                            .bind(state.fired_at)
                            .bind(state.last_seen_at)
                            .bind(state.resolved_at)
                            .bind(state.trace_id.as_deref())
                            .bind(Json(&state))
                            .bind(now)
                            .bind(state.window_end)
                            .bind(Json(&state.evidence))
                            .execute(&mut *tx)
                            .await?;
                            id
                        }
                    };
                    state.id = Some(id);
                    if let Some(t) = transition {
                        if !state.silenced {
                            for receiver in route(&state) {
                                sqlx::query(
                                    "INSERT INTO outbox (receiver, alert_id, transition, alert, attempts,
                                                         next_attempt_at, created_at)
                                     VALUES ($1, $2, $3, $4, 0, $5, $5)",
                                )
                                .bind(&receiver)
                                .bind(id)
                                .bind(t.as_str())
                                .bind(Json(&state))
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                            }
                        }
                        transitions.push((state, t));
                    }
                }
            }
            for (stream, hw) in &v.high_water {
                sqlx::query(
                    "INSERT INTO progress (model, scope, stream, high_water) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (model, scope, stream) DO UPDATE SET high_water = excluded.high_water
                     WHERE excluded.high_water > progress.high_water",
                )
                .bind(&v.model)
                .bind(&scope)
                .bind(stream)
                .bind(*hw)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            transitions
        });
        Ok(transitions)
    }

    /// Alerts, newest first; `status` filters (`pending`, `firing`, `resolved`).
    pub async fn list_alerts(&self, status: Option<Status>) -> Result<Vec<AlertState>> {
        let rows = with_pool!(self, pool => {
            sqlx::query("SELECT id, state FROM alerts WHERE ($1 IS NULL OR status = $1) ORDER BY id DESC")
                .bind(status.map(Status::as_str))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> std::result::Result<AlertState, sqlx::Error> {
                    let mut a: Json<AlertState> = r.try_get("state")?;
                    a.0.id = Some(r.try_get("id")?);
                    Ok(a.0)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Marks an alert acknowledged; false when there is no such alert.
    pub async fn acknowledge(&self, id: i64) -> Result<bool> {
        let now = Utc::now();
        let done = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row = sqlx::query("SELECT state FROM alerts WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            match row {
                None => false,
                Some(row) => {
                    let mut state: Json<AlertState> = row.try_get("state")?;
                    state.0.acknowledged = true;
                    sqlx::query("UPDATE alerts SET acknowledged = $2, state = $3, updated_at = $4 WHERE id = $1")
                        .bind(id)
                        .bind(true)
                        .bind(&state)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    true
                }
            }
        });
        Ok(done)
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
            .into_iter()
            .map(|r| -> std::result::Result<Silence, sqlx::Error> {
                Ok(Silence {
                    id: r.try_get("id")?,
                    model: r.try_get("model")?,
                    detector: r.try_get("detector")?,
                    feature: r.try_get("feature")?,
                    comment: r.try_get("comment")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The oldest undelivered notification of `receiver`: receivers get
    /// their notifications in order, so a newer one waits for it.
    pub async fn next_notification(&self, receiver: &str) -> Result<Option<OutboxItem>> {
        let row = with_pool!(self, pool => {
            sqlx::query(
                "SELECT id, receiver, transition, alert, attempts, next_attempt_at FROM outbox
                 WHERE receiver = $1 AND sent_at IS NULL ORDER BY id LIMIT 1",
            )
            .bind(receiver)
            .fetch_optional(pool)
            .await?
            .map(|r| -> std::result::Result<OutboxItem, sqlx::Error> {
                let transition: String = r.try_get("transition")?;
                let alert: Json<AlertState> = r.try_get("alert")?;
                Ok(OutboxItem {
                    id: r.try_get("id")?,
                    receiver: r.try_get("receiver")?,
                    transition: if transition == "resolved" { Transition::Resolved } else { Transition::Fired },
                    alert: alert.0,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .transpose()?
        });
        Ok(row)
    }

    pub async fn mark_sent(&self, id: i64) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET sent_at = $2, attempts = attempts + 1 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn mark_failed(
        &self,
        id: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1")
                .bind(id)
                .bind(next_attempt_at)
                .bind(error)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Undelivered notifications per receiver.
    pub async fn backlog(&self) -> Result<Vec<Backlog>> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT receiver, COUNT(*) AS n, MAX(attempts) AS a, MAX(last_error) AS e FROM outbox
                 WHERE sent_at IS NULL GROUP BY receiver ORDER BY receiver",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> std::result::Result<Backlog, sqlx::Error> {
                Ok(Backlog {
                    receiver: r.try_get("receiver")?,
                    pending: r.try_get("n")?,
                    max_attempts: r.try_get("a")?,
                    last_error: r.try_get("e")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under migrations/ is embedded, in order, for both backends.
    #[test]
    fn all_migration_files_are_embedded() {
        for (dir, list) in [("postgres", PG_MIGRATIONS), ("sqlite", SQLITE_MIGRATIONS)] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/").to_string() + dir;
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{dir}: {files:?}");
            for (file, (version, name, _)) in files.iter().zip(list) {
                assert_eq!(file, &format!("{version:04}_{name}.sql"));
            }
        }
    }

    fn verdict(seq: i64, p: f64) -> WindowVerdict {
        let t = Utc::now();
        let score = crate::detect::Score {
            detector: "feature_drift".into(),
            family: crate::detect::Family::Drift,
            feature: "x".into(),
            test: "ks".into(),
            statistic: 0.5,
            p_value: p,
            n_reference: 100,
            n_window: 50,
            method: "exact".into(),
            effect: None,
            examples: Vec::new(),
        };
        WindowVerdict {
            model: "m".into(),
            model_version: "v".into(),
            seq,
            start: t,
            end: t,
            n_events: 3,
            close_reason: "count",
            device: "flex:cpu".into(),
            error: None,
            judged: vec![crate::judge::Judged {
                crossed: (p < 0.01).then_some(crate::judge::Severity::Warning),
                score,
                threshold: 0.01,
            }],
            sample_request_ids: vec!["r1".into()],
            high_water: HashMap::from([("t/0".to_string(), 40 + seq)]),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        }
    }

    #[tokio::test]
    async fn sqlite_window_writes_are_idempotent_and_queue_notifications() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["pager".to_string()];
        let fired = store
            .persist_window(&verdict(0, 1e-5), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1, Transition::Fired);
        assert!(
            store
                .persist_window(&verdict(0, 1e-5), &cfg, &route)
                .await
                .unwrap()
                .is_empty(),
            "replay writes nothing"
        );
        assert_eq!(store.next_window_seq("m", "v").await.unwrap(), 1);
        let resolved = store
            .persist_window(&verdict(1, 0.5), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(resolved[0].1, Transition::Resolved);
        let alerts = store.list_alerts(None).await.unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].status, Status::Resolved);
        assert_eq!(
            alerts[0].trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );

        // Delivered in order, one at a time.
        let first = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(first.transition, Transition::Fired);
        store
            .mark_failed(first.id, Utc::now(), "connection refused")
            .await
            .unwrap();
        assert_eq!(store.backlog().await.unwrap()[0].pending, 2);
        let again = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.attempts),
            (first.id, 1),
            "a failed notification stays first"
        );
        store.mark_sent(again.id).await.unwrap();
        let second = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(second.transition, Transition::Resolved);
        store.mark_sent(second.id).await.unwrap();
        assert!(store.next_notification("pager").await.unwrap().is_none());
        assert!(store.backlog().await.unwrap().is_empty());

        let lower = WindowVerdict {
            seq: 2,
            high_water: HashMap::from([("t/0".to_string(), 7)]),
            ..verdict(2, 0.5)
        };
        store.persist_window(&lower, &cfg, &route).await.unwrap();
        assert_eq!(
            store.load_progress("m", "version:v").await.unwrap()["t/0"],
            41,
            "progress never moves back"
        );
    }

    #[tokio::test]
    async fn silences_keep_alerts_from_paging() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["pager".to_string()];
        store
            .add_silence(
                "m",
                Some("feature_drift"),
                None,
                "deploy",
                Utc::now() + chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        store
            .add_silence(
                "m",
                None,
                None,
                "expired",
                Utc::now() - chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        assert_eq!(store.silences().await.unwrap().len(), 1);
        store
            .persist_window(&verdict(0, 1e-5), &cfg, &route)
            .await
            .unwrap();
        let a = &store.list_alerts(Some(Status::Firing)).await.unwrap()[0];
        assert!(a.silenced);
        assert!(store.next_notification("pager").await.unwrap().is_none());
        assert!(store.acknowledge(a.id.unwrap()).await.unwrap());
        assert!(store.list_alerts(None).await.unwrap()[0].acknowledged);
        assert!(!store.acknowledge(999).await.unwrap());
    }
}
