//! Stage 6: references, window progress, scores and alerts made durable.
//!
//! PostgreSQL in production, SQLite as the embedded store; the same SQL runs
//! on both (positional `$n` parameters, `ON CONFLICT`, timestamps bound from
//! Rust). A window's scores, alerts and progress are written in one
//! transaction, keyed so that a replay writes nothing twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

use chrono::Utc;
use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{Row, SqlSafeStr};

use crate::event::TelemetryEvent;
use crate::judge::{Alert, WindowVerdict};

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

/// An alert row as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub model: String,
    pub model_version: String,
    pub detector: String,
    pub feature: String,
    pub severity: String,
    pub status: String,
    pub score: f64,
    pub threshold: f64,
    pub p_value: f64,
    pub window_seq: i64,
    pub dedup_key: String,
}

/// A score row as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRow {
    pub model: String,
    pub model_version: String,
    pub window_seq: i64,
    pub detector: String,
    pub feature: String,
    pub value: f64,
    pub p_value: f64,
    pub threshold: f64,
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

    /// Writes a window's scores, alerts and progress in one transaction.
    /// Returns the alerts that were new; a window stored before (a replay)
    /// writes nothing and returns none.
    pub async fn persist_window(&self, v: &WindowVerdict) -> Result<Vec<Alert>> {
        let now = Utc::now();
        let scope = version_scope(&v.model_version);
        let fresh = with_pool!(self, pool => {
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
            if fresh {
                for j in &v.judged {
                    let s = &j.score;
                    sqlx::query(
                        "INSERT INTO scores (model, model_version, window_seq, detector, feature, family, test,
                                             method, value, p_value, threshold, n_reference, n_window,
                                             window_start, window_end, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
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
                    .execute(&mut *tx)
                    .await?;
                }
                for a in &v.alerts {
                    sqlx::query(
                        "INSERT INTO alerts (model, model_version, detector, feature, severity, status, score,
                                             threshold, p_value, window_seq, window_start, window_end,
                                             dedup_key, evidence, created_at, updated_at, trace_id)
                         VALUES ($1, $2, $3, $4, $5, 'firing', $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)
                         ON CONFLICT (model, model_version, window_seq, detector, feature) DO NOTHING",
                    )
                    .bind(&a.model)
                    .bind(&a.model_version)
                    .bind(&a.detector)
                    .bind(&a.feature)
                    .bind(a.severity.as_str())
                    .bind(a.score)
                    .bind(a.threshold)
                    .bind(a.p_value)
                    .bind(a.window_seq)
                    .bind(a.window_start)
                    .bind(a.window_end)
                    .bind(&a.dedup_key)
                    .bind(Json(&a.evidence))
                    .bind(now)
                    .bind(v.trace_id.as_deref())
                    .execute(&mut *tx)
                    .await?;
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
            fresh
        });
        Ok(if fresh { v.alerts.clone() } else { Vec::new() })
    }

    pub async fn alerts(&self, model: Option<&str>) -> Result<Vec<AlertRow>> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT id, model, model_version, detector, feature, severity, status, score, threshold,
                        p_value, window_seq, dedup_key
                 FROM alerts WHERE ($1 IS NULL OR model = $1) ORDER BY model, model_version, window_seq, detector, feature",
            )
            .bind(model)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> std::result::Result<AlertRow, sqlx::Error> {
                Ok(AlertRow {
                    id: r.try_get("id")?,
                    model: r.try_get("model")?,
                    model_version: r.try_get("model_version")?,
                    detector: r.try_get("detector")?,
                    feature: r.try_get("feature")?,
                    severity: r.try_get("severity")?,
                    status: r.try_get("status")?,
                    score: r.try_get("score")?,
                    threshold: r.try_get("threshold")?,
                    p_value: r.try_get("p_value")?,
                    window_seq: r.try_get("window_seq")?,
                    dedup_key: r.try_get("dedup_key")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    pub async fn scores(&self, model: Option<&str>) -> Result<Vec<ScoreRow>> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT model, model_version, window_seq, detector, feature, value, p_value, threshold
                 FROM scores WHERE ($1 IS NULL OR model = $1) ORDER BY model, model_version, window_seq, detector, feature",
            )
            .bind(model)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> std::result::Result<ScoreRow, sqlx::Error> {
                Ok(ScoreRow {
                    model: r.try_get("model")?,
                    model_version: r.try_get("model_version")?,
                    window_seq: r.try_get("window_seq")?,
                    detector: r.try_get("detector")?,
                    feature: r.try_get("feature")?,
                    value: r.try_get("value")?,
                    p_value: r.try_get("p_value")?,
                    threshold: r.try_get("threshold")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// (model, version, seq, n_events) of every stored window.
    pub async fn windows(&self) -> Result<Vec<(String, String, i64, i64)>> {
        let rows = with_pool!(self, pool => {
            sqlx::query("SELECT model, model_version, seq, n_events FROM windows ORDER BY model, model_version, seq")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get("model")?, r.try_get("model_version")?, r.try_get("seq")?, r.try_get("n_events")?)))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
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

    #[tokio::test]
    async fn sqlite_window_writes_are_idempotent() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let t = Utc::now();
        let v = WindowVerdict {
            model: "m".into(),
            model_version: "v".into(),
            seq: 0,
            start: t,
            end: t,
            n_events: 3,
            close_reason: "count",
            device: "flex:cpu".into(),
            error: None,
            judged: Vec::new(),
            alerts: vec![Alert {
                model: "m".into(),
                model_version: "v".into(),
                detector: "feature_drift".into(),
                feature: "x".into(),
                severity: crate::judge::Severity::Warning,
                score: 0.5,
                threshold: 0.01,
                p_value: 0.001,
                window_seq: 0,
                window_start: t,
                window_end: t,
                dedup_key: "m/feature_drift/x".into(),
                evidence: serde_json::json!({"k": 1}),
            }],
            high_water: HashMap::from([("t/0".to_string(), 41)]),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        };
        assert_eq!(store.persist_window(&v).await.unwrap().len(), 1);
        assert_eq!(
            store.persist_window(&v).await.unwrap().len(),
            0,
            "replay writes nothing"
        );
        assert_eq!(store.alerts(None).await.unwrap().len(), 1);
        assert_eq!(store.next_window_seq("m", "v").await.unwrap(), 1);
        assert_eq!(
            store.load_progress("m", "version:v").await.unwrap()["t/0"],
            41
        );
        let lower = WindowVerdict {
            seq: 1,
            high_water: HashMap::from([("t/0".to_string(), 7)]),
            alerts: vec![],
            ..v
        };
        store.persist_window(&lower).await.unwrap();
        assert_eq!(
            store.load_progress("m", "version:v").await.unwrap()["t/0"],
            41,
            "progress never moves back"
        );
    }
}
