//! Steps that fail for reasons outside the data are retried; permanent
//! failures return at once for the caller to quarantine.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::ingest::IngestError;
use crate::store::StoreError;
use crate::telemetry::{Health, Metrics};

/// At most `max` bytes of `s`, cut at a character boundary: a hostile
/// message's text must not fill a header or a log line.
pub(super) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// An error a step can fail with; some say retrying cannot help.
pub(super) trait Failure: std::fmt::Display + Into<PipelineError> {
    fn permanent(&self) -> bool {
        false
    }

    /// Neither retrying nor quarantining is right: the run must end.
    fn fatal(&self) -> bool {
        false
    }
}

impl Failure for StoreError {
    fn permanent(&self) -> bool {
        self.is_permanent()
    }

    fn fatal(&self) -> bool {
        matches!(self, StoreError::Overlap { .. })
    }
}

impl Failure for IngestError {}

/// Retries steps that fail for reasons outside the data (an unreachable
/// store or broker) until they succeed or the daemon shuts down: an outage
/// pauses the stream instead of losing data. Backoff doubles to 10 s with
/// jitter; each failed attempt is counted per step, the daemon reports not
/// ready meanwhile, and stays alive. A permanent failure returns at once.
#[derive(Clone)]
pub(super) struct Retry {
    pub(super) health: Arc<Health>,
    pub(super) metrics: Arc<Metrics>,
}

impl Retry {
    pub(super) async fn run<T, E, F, Fut>(
        &self,
        what: &'static str,
        cancel: &CancellationToken,
        mut f: F,
    ) -> Result<T, PipelineError>
    where
        E: Failure,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            // A cancelled step stops at once, even mid-attempt: a store write
            // dropped here either committed (its progress says so) or not.
            let attempt = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(PipelineError::Cancelled),
                r = f() => r,
            };
            let e = match attempt {
                Ok(v) => {
                    self.health.set_failing(None);
                    return Ok(v);
                }
                Err(e) if e.permanent() || e.fatal() => return Err(e.into()),
                Err(e) => e,
            };
            let why = truncate(&e.to_string(), 300);
            self.health.set_failing(Some(format!("{what} ({why})")));
            self.metrics.step_retry(what);
            let wait = delay.mul_f64(rand::random_range(0.5..1.5));
            tracing::warn!(step = what, error = %e, retry_in_ms = wait.as_millis() as u64, "step failed, retrying");
            tokio::select! {
                _ = cancel.cancelled() => return Err(PipelineError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
            self.health.beat();
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
