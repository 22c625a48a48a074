//! The daemon: every stage built from one config and run until the source
//! ends or `shutdown` fires. The command line only parses and calls this.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::detect::{DetectError, ScoringHandle};
use crate::ingest::{self, IngestError};
use crate::notify::{Dispatcher, NotifyError, Receiver, Router};
use crate::pipeline::{Pipeline, PipelineError, PipelineOptions};
use crate::store::{self, Store, StoreError};
use crate::telemetry::{self, Health, Metrics, TelemetryError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("serving the telemetry endpoints")]
    Telemetry(#[source] TelemetryError),
    /// The URL is shown with its password hidden.
    #[error("opening the store {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("starting the scoring engine")]
    Engine(#[source] DetectError),
    #[error("building the alert receivers")]
    Receivers(#[source] NotifyError),
    #[error("starting the source")]
    Source(#[source] IngestError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Builds and runs the pipeline until its source ends or `shutdown` fires;
/// returns the counters of the run. `print_alerts` prints each transition
/// on stdout (interactive use).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    print_alerts: bool,
) -> Result<Arc<Metrics>, DaemonError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    metrics.limit_model_labels(config.limits.max_models);
    let health = Arc::new(Health::default());
    // The endpoints come up first, so that an orchestrator sees "not ready"
    // (rather than nothing) while the engine warms up.
    if !config.telemetry.listen.is_empty() {
        telemetry::http::serve(
            &config.telemetry.listen,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(DaemonError::Telemetry)?;
    }
    let store = Store::open_config(&config.store, config.store.max_connections)
        .await
        .map_err(|source| DaemonError::Store {
            url: store::redact(&config.store.url),
            source,
        })?;
    Health::set(&health.store_reachable, true);
    spawn_store_probe(store.clone(), health.clone(), shutdown.clone());
    // Warm up at the global sizes; per-model overrides compile on first use.
    let typical = (config.reference.size, config.windows.count.max(1));
    let scoring = ScoringHandle::start(&config.engine, &config.detect, typical)
        .await
        .map_err(DaemonError::Engine)?;
    Health::set(&health.device_ready, true);
    let device = scoring.info();
    let requested = serde_json::to_value(config.engine.device).unwrap_or_default();
    metrics.set_device(
        device.backend,
        &device.adapter,
        &device.kind,
        requested.as_str().unwrap_or("auto"),
    );
    let receivers = config
        .notify
        .receivers
        .iter()
        .map(|r| Receiver::new(r, &config.source.kafka))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DaemonError::Receivers)?;
    let router = Router::new(&config.notify.receivers).with_owners(
        config
            .models
            .iter()
            .map(|(model, c)| (model.clone(), c.owner.clone())),
    );
    let dispatcher = Dispatcher::spawn(
        store.clone(),
        receivers,
        router.clone(),
        &config.notify,
        metrics.clone(),
    );
    let options = PipelineOptions {
        print_alerts,
        router,
        wake_dispatcher: Some(dispatcher.waker()),
    };
    let source = ingest::start(&config, metrics.clone(), health.clone(), shutdown.clone())
        .map_err(DaemonError::Source)?;
    tracing::info!(store = store.kind(), device = %scoring.info().label(), "modelwatch ready");
    let drain = Duration::from_secs(config.notify.drain_secs);
    let pipeline = Pipeline::new(config, store, scoring, metrics, health, options);
    let result = pipeline.run(source, shutdown).await;
    // Deliver what the run queued before exiting; what cannot be delivered
    // in time stays in the outbox for the next start.
    dispatcher.drain_and_stop(drain).await;
    Ok(result?)
}

/// Keeps `/readyz` honest about the store between writes.
fn spawn_store_probe(store: Store, health: Arc<Health>, cancel: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let ok = tokio::time::timeout(Duration::from_secs(3), store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            Health::set(&health.store_reachable, ok);
        }
    });
}
