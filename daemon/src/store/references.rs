//! Model references, what was calibrated on them, and per scope the stream
//! positions already inside stored data.

use std::collections::HashMap;

use chrono::Utc;
use sqlx::Row;
use sqlx::types::Json;

use super::{Result, Store, Tx, with_pool, with_tx};
use crate::event::{Halves, Mark, TelemetryEvent};

/// The progress scope of a model's reference.
pub const REFERENCE_SCOPE: &str = "reference";

/// The progress scope of a model version's windows.
pub fn version_scope(version: &str) -> String {
    format!("version:{version}")
}

/// How much of a window's positions stored progress already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    None,
    All,
    Partial,
}

/// A stored reference: where it came from and its events.
#[derive(Debug, Clone)]
pub struct StoredReference {
    pub origin: String,
    pub events: Vec<TelemetryEvent>,
}

impl Store {
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

    /// Every model that has a stored reference.
    pub async fn reference_models(&self) -> Result<Vec<String>> {
        let rows = with_pool!(self, pool => {
            sqlx::query_scalar::<_, String>("SELECT model FROM model_references")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
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

    /// Stores a model's reference, the stream positions it covers and the
    /// halves of its pairs in one transaction. Returns false when the model already had one (another
    /// instance won the race, or a replay): the stored one stands.
    pub async fn save_reference(
        &self,
        model: &str,
        origin: &str,
        events: &[TelemetryEvent],
        high_water: &HashMap<String, Mark>,
        halves: &Halves,
        replace: bool,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        if replace {
            tx.delete_reference(model).await?;
        }
        let inserted = tx.insert_reference(model, origin, events).await?;
        if inserted {
            tx.advance_progress(model, REFERENCE_SCOPE, high_water)
                .await?;
            tx.insert_halves(model, REFERENCE_SCOPE, 0, halves).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Per stream, the furthest position already inside stored data of `scope`.
    pub async fn load_progress(&self, model: &str, scope: &str) -> Result<HashMap<String, Mark>> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "SELECT stream, high_water, high_water_index FROM progress WHERE model = $1 AND scope = $2",
            )
            .bind(model)
            .bind(scope)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                let mark = Mark {
                    offset: r.try_get("high_water")?,
                    index: r.try_get("high_water_index")?,
                };
                Ok((r.try_get::<String, _>("stream")?, mark))
            })
            .collect::<std::result::Result<HashMap<_, _>, sqlx::Error>>()?
        });
        Ok(rows)
    }
}

impl Tx {
    async fn delete_reference(&mut self, model: &str) -> Result<()> {
        with_tx!(self, conn => {
            sqlx::query("DELETE FROM model_references WHERE model = $1")
                .bind(model)
                .execute(conn)
                .await?;
        });
        Ok(())
    }

    /// False when the model already has a reference.
    async fn insert_reference(
        &mut self,
        model: &str,
        origin: &str,
        events: &[TelemetryEvent],
    ) -> Result<bool> {
        let now = Utc::now();
        let n = events.len() as i64;
        let done = with_tx!(self, conn => {
            sqlx::query(
                "INSERT INTO model_references (model, origin, n_events, events, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model) DO NOTHING",
            )
            .bind(model)
            .bind(origin)
            .bind(n)
            .bind(Json(events))
            .bind(now)
            .execute(conn)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// How much of the positions `low..=high` (per stream) stored data of
    /// `scope` already holds: a window replayed after a commit whose answer
    /// was lost is covered whole; one that is covered in part was written
    /// meanwhile by another member that read the same events.
    pub async fn coverage(
        &mut self,
        model: &str,
        scope: &str,
        low: &HashMap<String, Mark>,
        high: &HashMap<String, Mark>,
    ) -> Result<Coverage> {
        let (mut covered, mut fresh) = (0, 0);
        for (stream, hw) in high {
            let stored: Option<Mark> = with_tx!(self, conn => {
                sqlx::query(
                    "SELECT high_water, high_water_index FROM progress
                     WHERE model = $1 AND scope = $2 AND stream = $3",
                )
                .bind(model)
                .bind(scope)
                .bind(stream)
                .fetch_optional(conn)
                .await?
                .map(|r| -> std::result::Result<Mark, sqlx::Error> {
                    Ok(Mark { offset: r.try_get("high_water")?, index: r.try_get("high_water_index")? })
                })
                .transpose()?
            });
            let first = low.get(stream).unwrap_or(hw);
            match stored {
                Some(s) if s >= *hw => covered += 1,
                Some(s) if s >= *first => return Ok(Coverage::Partial),
                _ => fresh += 1,
            }
        }
        Ok(match (covered, fresh) {
            (0, _) => Coverage::None,
            (_, 0) => Coverage::All,
            _ => Coverage::Partial,
        })
    }

    /// Raises the stored high-water marks of `scope`; never lowers one.
    pub async fn advance_progress(
        &mut self,
        model: &str,
        scope: &str,
        high_water: &HashMap<String, Mark>,
    ) -> Result<()> {
        for (stream, hw) in high_water {
            with_tx!(self, conn => {
                sqlx::query(
                    "INSERT INTO progress (model, scope, stream, high_water, high_water_index)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (model, scope, stream) DO UPDATE
                     SET high_water = excluded.high_water, high_water_index = excluded.high_water_index
                     WHERE (excluded.high_water, excluded.high_water_index)
                           > (progress.high_water, progress.high_water_index)",
                )
                .bind(model)
                .bind(scope)
                .bind(stream)
                .bind(hw.offset)
                .bind(hw.index)
                .execute(conn)
                .await?;
            });
        }
        Ok(())
    }
}
