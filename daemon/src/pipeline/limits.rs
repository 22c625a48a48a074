//! Bounded state: which messages' models and versions the pipeline takes on,
//! and forgetting models that went quiet.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::retry::truncate;
use super::{Pipeline, PipelineError};
use crate::decode::DecodeError;
use crate::event::TelemetryEvent;
use crate::window::WindowKey;

impl Pipeline {
    /// Whether a message's models fit the model limits: models with state,
    /// a stored reference or a `[models]` entry always do, new ones while
    /// there is room; and each model's versions fit theirs.
    pub(super) fn admit(&self, events: &[TelemetryEvent]) -> Result<(), DecodeError> {
        let limits = &self.config.limits;
        let mut new = BTreeSet::new();
        let mut versions: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for e in events {
            let m = e.model.as_str();
            let key = WindowKey {
                model: m.to_string(),
                version: e.version_key().to_string(),
            };
            if !self.windower.knows(&key) {
                versions.entry(m).or_default().insert(e.version_key());
            }
            let configured = self.config.models.contains_key(m);
            if limits.only_configured_models && !configured {
                return Err(DecodeError::UnknownModel(format!(
                    "{:?} is not under [models]",
                    truncate(m, 64)
                )));
            }
            if !(configured || self.models.contains_key(m) || self.stored_models.contains(m)) {
                new.insert(m);
            }
        }
        if !new.is_empty() && self.models.len() + new.len() > limits.max_models {
            return Err(DecodeError::UnknownModel(format!(
                "{} new models would pass limits.max_models = {}",
                new.len(),
                limits.max_models
            )));
        }
        for (m, fresh) in versions {
            if self.windower.versions(m) + fresh.len() > limits.max_versions_per_model {
                return Err(DecodeError::TooManyVersions(format!(
                    "model {:?} would pass limits.max_versions_per_model = {}",
                    truncate(m, 64),
                    limits.max_versions_per_model
                )));
            }
        }
        Ok(())
    }

    /// Forgets models that sent nothing for `limits.idle_model_secs`: their
    /// open windows are scored and stored, an unfinished reference is
    /// dropped (its events counted), and their positions released, so that
    /// a model that went quiet, or a name a producer sprayed once, neither
    /// holds memory nor pins the committed offset. A later event loads the
    /// model again from the store.
    pub(super) async fn evict_idle(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let idle = self.config.limits.idle_model_secs;
        if idle == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let idle = Duration::from_secs(idle);
        // A configured model collecting its reference slowly (a nightly
        // batch) keeps what it has.
        let stale: Vec<String> = self
            .models
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) >= idle)
            .filter(|(m, s)| !(s.builder.is_some() && self.config.models.contains_key(*m)))
            .map(|(m, _)| m.clone())
            .collect();
        for model in stale {
            for w in self.windower.remove_model(&model) {
                self.process(w, cancel).await?;
            }
            let Some(state) = self.models.remove(&model) else {
                continue;
            };
            let dropped = state.builder.map(|b| b.events).unwrap_or_default();
            for p in &dropped {
                self.tracker.release_item(p);
            }
            self.metrics.models_evicted.inc();
            self.metrics
                .reference_events_dropped
                .inc_by(dropped.len() as u64);
            tracing::info!(model = %model, idle_secs = idle.as_secs(), dropped_reference_events = dropped.len(), "idle model evicted");
        }
        // Versions that went quiet while their model goes on.
        for w in self.windower.remove_idle_keys(now, idle) {
            self.process(w, cancel).await?;
        }
        Ok(())
    }
}
