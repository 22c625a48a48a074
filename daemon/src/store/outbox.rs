//! Notifications owed to receivers, delivered in order per receiver.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::types::Json;

use super::{Result, Store, Tx, with_pool, with_tx};
use crate::judge::{AlertState, Transition};

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

impl Store {
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

    /// Claims notification `id` until `until`, unless it was sent or another
    /// dispatcher holds an unexpired claim; true when this one now holds it.
    /// One conditional update, so that two claimants cannot both win.
    pub async fn claim(&self, id: i64, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE outbox SET claimed_until = $3 WHERE id = $1 AND sent_at IS NULL
                   AND (claimed_until IS NULL OR claimed_until < $2)",
            )
            .bind(id)
            .bind(now)
            .bind(until)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
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
            sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3,
                    claimed_until = NULL WHERE id = $1")
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

impl Tx {
    /// Queues one notification of an alert transition for `receiver`.
    /// The receivers the alert's trigger was queued for, in name order.
    pub async fn fired_receivers(&mut self, alert_id: i64) -> Result<Vec<String>> {
        let names = with_tx!(self, conn => {
            sqlx::query_scalar(
                "SELECT DISTINCT receiver FROM outbox
                 WHERE alert_id = $1 AND transition = 'fired' ORDER BY receiver",
            )
            .bind(alert_id)
            .fetch_all(conn)
            .await?
        });
        Ok(names)
    }

    pub async fn enqueue(
        &mut self,
        receiver: &str,
        alert_id: i64,
        transition: Transition,
        alert: &AlertState,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO outbox (receiver, alert_id, transition, alert, attempts,
                                     next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, 0, $5, $5)",
            )
            .bind(receiver)
            .bind(alert_id)
            .bind(transition.as_str())
            .bind(Json(alert))
            .bind(now)
            .execute(conn)
            .await?;
        });
        Ok(())
    }
}
