//! Stage 6: references, window progress, scores and alerts made durable.
//!
//! PostgreSQL in production, SQLite as the embedded store; the same SQL runs
//! on both (positional `$n` parameters, `ON CONFLICT`, timestamps bound from
//! Rust). One file per aggregate: `references` (references, their
//! calibration and the stream progress they cover), `windows` (windows and
//! scores), `halves` (the halves of stored pairs), `alerts`
//! (alerts and silences), `outbox` (notifications owed).
//! Writes that must commit together take a [`Tx`]; what they mean (the alert
//! lifecycle, routing) is decided by the judge, not here.

mod alerts;
mod halves;
mod migrations;
mod outbox;
mod references;
mod windows;

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use alerts::Silence;
pub use outbox::{Backlog, OutboxItem};
pub use references::{Coverage, REFERENCE_SCOPE, StoredReference, version_scope};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store url {0:?}: expected postgres://... or sqlite:...")]
    Url(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store password: {0}")]
    Secret(String),
    #[error(
        "window of {model} {version} overlaps windows stored by another member: restart to read again from the last commit"
    )]
    Overlap { model: String, version: String },
    #[error("{0}")]
    Unsupported(&'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether retrying cannot help because the data itself cannot be
    /// stored (a value or key past a limit, a constraint it breaks); an
    /// unreachable or slow database is never permanent.
    pub fn is_permanent(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
                true
            }
            sqlx::Error::Database(db) => {
                use sqlx::error::ErrorKind;
                // A unique or foreign-key violation can be a race with
                // another instance that a retry resolves; these cannot.
                if matches!(
                    db.kind(),
                    ErrorKind::NotNullViolation | ErrorKind::CheckViolation
                ) {
                    return true;
                }
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    // 22: data exception; 54: program limit exceeded (a
                    // key past the btree row size).
                    return matches!(&pg.code()[..2], "22" | "54");
                }
                // SQLite's primary codes: TOOBIG (18), MISMATCH (20).
                let code = db.code().and_then(|c| c.parse::<i32>().ok());
                matches!(code.map(|c| c & 0xff), Some(18 | 20))
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An open transaction on either backend; dropped without `commit`, it
/// rolls back.
pub enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Runs `$body` with `$pool` bound to whichever pool this store has; the
/// body is compiled once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($pool) => $body,
            $crate::store::Store::Sqlite($pool) => $body,
        }
    };
}

/// As `with_pool!`, with `$conn` the transaction's connection.
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::store::Tx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}
use {with_pool, with_tx};

impl Store {
    /// Connects as `config` says, the password from the environment variable
    /// or file it names, and applies pending migrations.
    pub async fn open_config(config: &StoreConfig, max_connections: u32) -> Result<Self> {
        let store = Self::connect_config(config, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// As `open_config`, without migrating.
    pub async fn connect_config(config: &StoreConfig, max_connections: u32) -> Result<Self> {
        let password = crate::config::read_secret(
            config.password_env.as_deref(),
            config.password_file.as_deref(),
        )
        .map_err(StoreError::Secret)?;
        Self::connect_with(&config.url, password.as_deref(), max_connections).await
    }

    /// Connects (creating an SQLite file when missing) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, None, max_connections).await
    }

    /// PostgreSQL takes TLS settings from the URL (`sslmode`, `sslrootcert`)
    /// and `password` over any in the URL.
    async fn connect_with(url: &str, password: Option<&str>, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut options = sqlx::postgres::PgConnectOptions::from_str(url)?;
            if let Some(p) = password {
                options = options.password(p);
            }
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect_with(options)
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
            Store::Postgres(pool) => migrations::postgres().run(pool).await?,
            Store::Sqlite(pool) => migrations::sqlite().run(pool).await?,
        }
        Ok(())
    }

    /// Sets the password of the read-only dashboard role (migration 10);
    /// an error where the role does not exist or this user may not alter
    /// it. PostgreSQL quotes the password itself (`format('%L')`), so no
    /// text of it reaches the statement unquoted.
    pub async fn set_reader_password(&self, password: &str) -> Result<()> {
        let Store::Postgres(pool) = self else {
            return Err(StoreError::Unsupported(
                "a reader role exists only on PostgreSQL",
            ));
        };
        let statement: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE modelwatch_reader PASSWORD %L', $1)")
                .bind(password)
                .fetch_one(pool)
                .await?;
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Grants the dashboard role SELECT on every table, again: migration
    /// 10 granted only to a role that existed then, so an operator who
    /// creates it later (or restores a dump without grants) gets them at the
    /// next `modelwatch migrate`. False where there is no such role (and on
    /// SQLite).
    pub async fn grant_reader(&self) -> Result<bool> {
        let Store::Postgres(pool) = self else {
            return Ok(false);
        };
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'modelwatch_reader')",
        )
        .fetch_one(pool)
        .await?;
        if exists {
            let grant = sqlx::query_scalar::<_, String>(
                "SELECT format('GRANT CONNECT ON DATABASE %I TO modelwatch_reader', current_database())",
            )
            .fetch_one(pool)
            .await?;
            for statement in [
                grant.as_str(),
                "GRANT USAGE ON SCHEMA public TO modelwatch_reader",
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO modelwatch_reader",
            ] {
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(pool)
                    .await
                {
                    // A user that does not own the database or schema may
                    // not grant on it; the operator does, and migrate must
                    // still succeed.
                    if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42501") {
                        tracing::warn!(error = %e, "modelwatch_reader not granted");
                        return Ok(false);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(exists)
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

    /// Starts a transaction for writes that must land together.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Store::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
        })
    }
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Postgres(tx) => tx.commit().await?,
            Tx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await?,
            Tx::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// Hides a password in a connection URL for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Where scores, references and alerts are kept.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host/db` for production, `sqlite:PATH` or
    /// `sqlite::memory:` for the embedded store. TLS: `?sslmode=require`,
    /// or `verify-full` with `&sslrootcert=/path/ca.pem`. Put a password in
    /// `password_env` or `password_file`, not in this file.
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// PostgreSQL password from this environment variable ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// ... or from this file (it wins over a password in `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:modelwatch.db".into(),
            max_connections: 4,
            password_env: None,
            password_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite:x.db"), "sqlite:x.db");
    }
}
