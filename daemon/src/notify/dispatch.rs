//! Delivers the outbox: per receiver, oldest first, marked sent only after
//! the receiver accepted; failures back off exponentially with jitter and
//! stay queued (visible in metrics and `modelwatch alerts outbox`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::NotifyConfig;
use super::{Receiver, Router};
use crate::judge::Status;
use crate::store::Store;
use crate::telemetry::Metrics;

/// How long a claimed notification is this dispatcher's to send; longer
/// than any receiver's request (timeouts of seconds), so a live dispatcher
/// keeps it, and a dead one's claim lapses within it.
const CLAIM: chrono::Duration = chrono::Duration::minutes(2);

pub struct Dispatcher {
    wake: Arc<Notify>,
    store: Store,
    task: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl Dispatcher {
    pub fn spawn(
        store: Store,
        receivers: Vec<Receiver>,
        router: Router,
        config: &NotifyConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let base = Duration::from_millis(config.retry_base_ms.max(1));
        let max = Duration::from_secs(config.retry_max_secs.max(1));
        let task = tokio::spawn(run(
            store.clone(),
            receivers,
            router,
            base,
            max,
            metrics,
            wake.clone(),
            cancel.clone(),
        ));
        Self {
            wake,
            store,
            task,
            cancel,
        }
    }

    /// What to notify for a delivery round now (new notifications were queued).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Waits up to `timeout` for the outbox to empty, then stops. What is
    /// still queued stays in the store for the next start.
    pub async fn drain_and_stop(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.wake.notify_one();
            match self.store.backlog().await {
                Ok(b) if b.is_empty() => break,
                Ok(b) => tracing::debug!(
                    pending = b.iter().map(|x| x.pending).sum::<i64>(),
                    "waiting for deliveries"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Ok(b) = self.store.backlog().await {
            for x in b {
                tracing::warn!(receiver = %x.receiver, pending = x.pending, last_error = x.last_error.as_deref().unwrap_or(""), "notifications still queued at exit; they are sent on the next start");
            }
        }
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn backoff(base: Duration, max: Duration, attempts: i64) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.clamp(0, 20) as u32)
        .min(max);
    // Jitter of +-50% keeps many instances from retrying in step.
    exp.mul_f64(rand::rng().random_range(0.5..1.5))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    store: Store,
    receivers: Vec<Receiver>,
    router: Router,
    base: Duration,
    max: Duration,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut last_repeat = Instant::now();
    loop {
        for r in &receivers {
            deliver_due(&store, r, &router, (base, max), &metrics).await;
        }
        if let Ok(backlog) = store.backlog().await {
            for r in &receivers {
                let n = backlog
                    .iter()
                    .find(|b| b.receiver == r.name)
                    .map_or(0, |b| b.pending);
                metrics.set_backlog(&r.name, n);
            }
        }
        let repeat_due = receivers
            .iter()
            .filter_map(Receiver::repeat_every)
            .min()
            .is_some_and(|every| last_repeat.elapsed() >= every);
        if repeat_due {
            last_repeat = Instant::now();
            repeat_firing(&store, &receivers, &router).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Sends `r`'s due notifications in order; stops at the first failure so
/// that a later notification never overtakes an earlier one.
async fn deliver_due(
    store: &Store,
    r: &Receiver,
    router: &Router,
    (base, max): (Duration, Duration),
    metrics: &Metrics,
) {
    loop {
        let item = match store.next_notification(&r.name).await {
            Ok(Some(item)) => item,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(receiver = %r.name, error = %e, "cannot read the outbox");
                return;
            }
        };
        let now = chrono::Utc::now();
        if item.next_attempt_at > now {
            return;
        }
        // Another instance may be sending it: the claim decides, and the
        // order holds because only the oldest unsent one is ever claimed.
        match store.claim(item.id, now, now + CLAIM).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(receiver = %r.name, error = %e, "cannot claim a notification");
                return;
            }
        }
        let span = tracing::info_span!("deliver", receiver = %r.name, transition = item.transition.as_str(), dedup_key = %item.alert.dedup_key);
        let sent = {
            let _e = span.enter();
            r.send(
                item.transition,
                &item.alert,
                router.owner(&item.alert.model),
            )
        }
        .await;
        match sent {
            Ok(()) => {
                metrics.notification(&r.name, "sent");
                if let Err(e) = store.mark_sent(item.id).await {
                    // Delivered but not marked: it will be sent once more.
                    tracing::warn!(receiver = %r.name, error = %e, "delivered but could not mark sent");
                    return;
                }
                tracing::info!(receiver = %r.name, transition = item.transition.as_str(), dedup_key = %item.alert.dedup_key, "notification delivered");
            }
            Err(e) => {
                metrics.notification(&r.name, "failed");
                let delay = backoff(base, max, item.attempts);
                let next =
                    chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(receiver = %r.name, attempts = item.attempts + 1, retry_in_ms = delay.as_millis() as u64, error = %e, "delivery failed");
                if let Err(e) = store.mark_failed(item.id, next, &e.to_string()).await {
                    tracing::warn!(receiver = %r.name, error = %e, "cannot record the failure");
                }
                return;
            }
        }
    }
}

async fn repeat_firing(store: &Store, receivers: &[Receiver], router: &Router) {
    let firing = match store.list_alerts(Some(Status::Firing)).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list firing alerts");
            return;
        }
    };
    for r in receivers.iter().filter(|r| r.repeat_every().is_some()) {
        let mine: Vec<_> = firing
            .iter()
            // A finding in an episode is re-sent as its episode.
            .filter(|a| {
                !a.silenced && a.evidence.episode.is_none() && router.route(a).contains(&r.name)
            })
            .map(|a| (a, router.owner(&a.model)))
            .collect();
        if let Err(e) = r.repeat_firing(&mine).await {
            tracing::warn!(receiver = %r.name, error = %e, "re-sending firing alerts failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..50 {
            let d0 = backoff(b, m, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(150));
            let d3 = backoff(b, m, 3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(1200));
            assert!(backoff(b, m, 30) <= Duration::from_millis(7500));
        }
    }
}
