//! The pipeline: ingest -> decode -> window -> detect -> judge -> store ->
//! notify, driven by one loop. Positions are acknowledged upstream only once
//! everything they produced is durable.

mod limits;
mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::decode::{DecodeError, Decoded, Decoder, DecoderName, Pairing, Side};
use crate::detect::{DetectError, History, Reference, ScoringHandle};
use crate::event::{Halves, Positioned, SourcePos, TelemetryEvent};
use crate::ingest::ack::OffsetTracker;
use crate::ingest::{IngestError, RawMessage, Revocation, Source, SourceControl};
use crate::join::{self, Half, Joiner, Offered, Unpaired, unpaired_position};
use crate::judge;
use crate::notify;
use crate::store::{self, Store, StoreError};
use crate::telemetry::{self, Health, Metrics};
use crate::window::{
    self, ClosedWindow, Progress, ReferenceBuilder, WindowKey, WindowSettings, Windower,
};
use retry::{Retry, truncate};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("shut down while work was pending")]
    Cancelled,
}

#[derive(Clone, Default)]
pub struct PipelineOptions {
    /// Print each alert transition on stdout (interactive commands).
    pub print_alerts: bool,
    /// Which receivers each alert transition is queued for.
    pub router: notify::Router,
    /// Woken when notifications were queued.
    pub wake_dispatcher: Option<Arc<tokio::sync::Notify>>,
}

struct ModelState {
    reference: Option<Arc<Reference>>,
    builder: Option<ReferenceBuilder>,
    /// Stream positions already inside the stored reference.
    reference_progress: Progress,
    /// Set by a revocation: `reference_progress` is read again before use.
    progress_stale: bool,
    /// When the model's last event arrived, for idle eviction.
    last_seen: Instant,
}

pub struct Pipeline {
    config: Arc<Config>,
    store: Store,
    scoring: ScoringHandle,
    /// Decoders by topic, those chosen by pattern cached on first use.
    decoders: HashMap<String, Arc<dyn Decoder>>,
    /// Topic patterns (`*` for any run of characters), sorted.
    patterns: Vec<(String, Arc<dyn Decoder>)>,
    default_decoder: Arc<dyn Decoder>,
    tracker: OffsetTracker,
    /// Halves waiting for their other half; the message of each is held.
    joiner: Joiner<Option<RawMessage>>,
    windower: Windower,
    models: HashMap<String, ModelState>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    options: PipelineOptions,
    retry: Retry,
    /// Models with a stored reference, read at start: known to the model
    /// limit even before their first event.
    stored_models: std::collections::HashSet<String>,
    /// Models whose stored reference cannot be read or fitted, with why.
    unavailable: HashMap<String, String>,
    /// Per stream, the furthest offset of a stored pair's half when this
    /// member first looked a half of it up: only halves up to it can have
    /// been paired before, and are looked up (`not_stored`, `pair_stored`).
    halves_horizon: HashMap<String, i64>,
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        scoring: ScoringHandle,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        options: PipelineOptions,
    ) -> Self {
        let (patterns, exact): (Vec<_>, Vec<_>) = config
            .source
            .kafka
            .decoders
            .iter()
            .map(|(topic, name)| (topic.clone(), Arc::from(name.build(&config.decode))))
            .partition(|(topic, _)| topic.contains('*'));
        // Kafka topics not listed take the native format; a file has one.
        let default_decoder = Arc::from(
            match config.source.kind {
                crate::ingest::SourceKind::File => config.source.file.format,
                _ => DecoderName::default(),
            }
            .build(&config.decode),
        );
        let joiner = Joiner::new(config.join.clone());
        Self {
            config,
            store,
            scoring,
            decoders: exact.into_iter().collect(),
            patterns,
            default_decoder,
            tracker: OffsetTracker::default(),
            joiner,
            windower: Windower::default(),
            models: HashMap::new(),
            retry: Retry {
                health: health.clone(),
                metrics: metrics.clone(),
            },
            stored_models: Default::default(),
            unavailable: HashMap::new(),
            halves_horizon: HashMap::new(),
            metrics,
            health,
            options,
        }
    }

    /// Runs until the source ends (file, demo) or `cancel` fires (Kafka).
    /// A finite source's last partial windows are scored; on cancellation
    /// they are not, and their positions stay unacknowledged for the replay.
    pub async fn run(
        mut self,
        mut source: Source,
        cancel: CancellationToken,
    ) -> Result<Arc<Metrics>, PipelineError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let store = self.store.clone();
        let stored = self
            .retry
            .run("loading stored models", &cancel, || {
                store.reference_models()
            })
            .await;
        self.stored_models = match stored {
            Ok(models) => models.into_iter().collect(),
            Err(PipelineError::Cancelled) => Default::default(),
            Err(e) => return Err(e),
        };
        let interrupt = source.interrupt.clone();
        let mut revocations = source.revocations.take();
        let result = loop {
            self.health.beat();
            let steps = interrupt.current();
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ok(()),
                r = next_revocation(&mut revocations) => {
                    self.acknowledge(&source.control);
                    // Renewed before the answer: a later revocation must
                    // find a live token to cancel.
                    interrupt.renew();
                    self.revoke(r, &mut source.messages);
                    Ok(())
                }
                m = source.messages.recv() => match m {
                    Some(msg) => self.handle(msg, &source.control, &steps).await,
                    None => break self.finish(source.finite, &source.control, &steps).await,
                },
                _ = tick.tick() => self.flush_idle(&source.control, &steps).await,
            };
            match step {
                // A revocation interrupted the step; it is answered next.
                Err(PipelineError::Cancelled) if !interrupt.shutting_down() => {}
                Err(e) => break Err(e),
                Ok(()) => {}
            }
            self.acknowledge(&source.control);
            self.metrics.positions_held.set(self.tracker.held() as i64);
        };
        self.acknowledge(&source.control);
        source.control.flush();
        match result {
            Ok(()) | Err(PipelineError::Cancelled) => {
                tracing::info!(
                    held_positions = self.tracker.held(),
                    messages = self.metrics.messages.get(),
                    windows = self.metrics.windows(),
                    already_stored_events = self.metrics.replayed_events.get(),
                    "pipeline stopped"
                );
                Ok(self.metrics)
            }
            Err(e) => Err(e),
        }
    }

    /// Drops everything held of the revoked assignment (open windows,
    /// references in progress, buffered messages, cached progress): the
    /// partitions' next owner reads it again from the last commit. Stored
    /// references stay fitted; their progress is read again.
    fn revoke(
        &mut self,
        revocation: Revocation,
        messages: &mut tokio::sync::mpsc::Receiver<RawMessage>,
    ) {
        let mut buffered = 0u64;
        while messages.try_recv().is_ok() {
            buffered += 1;
        }
        let open = self.windower.open_events() as u64;
        let building: u64 = self
            .models
            .values()
            .filter_map(|s| s.builder.as_ref())
            .map(|b| b.events.len() as u64)
            .sum();
        let halves = self.joiner.waiting() as u64;
        self.windower = Windower::default();
        self.tracker = OffsetTracker::default();
        self.joiner = Joiner::new(self.config.join.clone());
        self.halves_horizon.clear();
        self.metrics.halves_waiting.set(0);
        self.models.retain(|_, s| s.reference.is_some());
        for state in self.models.values_mut() {
            state.progress_stale = true;
        }
        self.metrics.revocations.inc();
        self.metrics.events_returned.inc_by(open + building);
        tracing::info!(partitions = ?revocation.streams, open_window_events = open, reference_events = building, buffered_messages = buffered, waiting_halves = halves, "revocation answered; held events go back to the last commit");
        let _ = revocation.done.send(());
    }

    async fn finish(
        &mut self,
        finite: bool,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        if !finite {
            return Ok(());
        }
        let halves = self.joiner.drain();
        self.unpaired(halves, control, cancel).await?;
        for (model, state) in &self.models {
            if let Some(b) = &state.builder {
                tracing::warn!(model = %model, have = b.events.len(), need = b.target, "stream ended before the reference was complete; nothing scored");
            }
        }
        for w in self.windower.drain() {
            self.process(w, cancel).await?;
        }
        Ok(())
    }

    async fn flush_idle(
        &mut self,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.expire_unpaired(Instant::now(), control, cancel)
            .await?;
        for w in self.windower.flush_idle(Instant::now()) {
            self.process(w, cancel).await?;
        }
        self.evict_idle(cancel).await
    }

    fn acknowledge(&mut self, control: &SourceControl) {
        for (stream, next) in self.tracker.advanced() {
            control.acknowledge(&stream, next);
        }
    }

    /// One message, in a span that continues the producer's trace.
    async fn handle(
        &mut self,
        msg: RawMessage,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let kafka = matches!(control, SourceControl::Kafka(_));
        let partition = msg
            .pos
            .stream
            .rsplit_once('/')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", msg.topic),
            otel.kind = "consumer",
            messaging.system = if kafka { "kafka" } else { "modelwatch" },
            messaging.operation.type = "process",
            messaging.destination.name = %msg.topic,
            messaging.destination.partition.id = %partition,
            messaging.kafka.offset = msg.pos.offset,
        );
        telemetry::link_parent(&span, &msg.trace_context);
        self.handle_in_span(msg, control, cancel)
            .instrument(span)
            .await
    }

    async fn handle_in_span(
        &mut self,
        msg: RawMessage,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.metrics.messages.inc();
        self.tracker.hold(&msg.pos);
        let decoder = self.decoder(&msg.topic);
        let limits = &self.config.limits;
        let decoded = tracing::info_span!(
            "decode",
            decoder = decoder.name(),
            bytes = msg.payload.len()
        )
        .in_scope(|| {
            limits.check_size(&msg.payload)?;
            let decoded = decoder.decode_message(&msg.view())?;
            let events = self.at_the_door(decoder.independent_events(), decoded.events, &msg)?;
            // A half's model is admitted once it is paired or unpaired.
            if decoded.pairing.is_none() {
                self.admit(&events)?;
            }
            Ok::<_, DecodeError>(Decoded {
                events,
                pairing: decoded.pairing,
            })
        });
        let accepted = match decoded {
            Ok(d) if d.pairing.is_none() => self.load_models(&d.events, cancel).await?.map(|()| d),
            other => other,
        };
        match accepted {
            Err(e) => self.dead_letter(&msg, &e, control, cancel).await?,
            Ok(Decoded {
                events,
                pairing: None,
            }) => {
                self.metrics.events_decoded.inc_by(events.len() as u64);
                for (index, event) in events.into_iter().enumerate() {
                    let pos = SourcePos {
                        index: index as i64,
                        ..msg.pos.clone()
                    };
                    self.route(Positioned::new(event, pos), cancel).await?;
                }
            }
            Ok(Decoded {
                events,
                pairing: Some(pairing),
            }) => self.join(pairing, events, &msg, control, cancel).await?,
        }
        self.tracker.release(&msg.pos);
        self.expire_unpaired(Instant::now(), control, cancel).await
    }

    /// The topic's decoder: named exactly, else by the first pattern that
    /// matches, else the native format.
    fn decoder(&mut self, topic: &str) -> Arc<dyn Decoder> {
        if let Some(d) = self.decoders.get(topic) {
            return d.clone();
        }
        let chosen = self
            .patterns
            .iter()
            .find(|(pattern, _)| crate::glob::wildcard(pattern, topic))
            .map_or_else(|| self.default_decoder.clone(), |(_, d)| d.clone());
        self.decoders.insert(topic.to_string(), chosen.clone());
        chosen
    }

    /// Refuses a message: counted under its reason, and kept, cut to a size
    /// the dead-letter producer takes, with its key and headers.
    async fn dead_letter(
        &mut self,
        msg: &RawMessage,
        e: &DecodeError,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        tracing::warn!(stream = %msg.pos.stream, offset = msg.pos.offset, reason = e.reason(), error = %truncate(&e.to_string(), 1024), "message rejected");
        self.metrics.reject(e.reason());
        let detail = truncate(&e.to_string(), 1024);
        let key = msg.key.as_deref().map(|k| &k[..k.len().min(1024)]);
        let room = self.config.limits.max_message_bytes.saturating_sub(4096);
        let kept = RawMessage {
            payload: msg.payload[..msg.payload.len().min(room)].to_vec(),
            key: key.map(<[u8]>::to_vec),
            ..msg.clone()
        };
        self.retry
            .run("dead-letter delivery", cancel, || {
                control.dead_letter(&kept, e.reason(), &detail)
            })
            .await
    }

    /// A half of a pair: it waits, completes a pair, or is refused.
    async fn join(
        &mut self,
        pairing: Pairing,
        events: Vec<TelemetryEvent>,
        msg: &RawMessage,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        if pairing.side == Side::Response
            && !self.joiner.is_waiting(&pairing.key)
            && self.pair_stored(&events, &msg.pos, cancel).await?
        {
            self.metrics.replayed_events.inc_by(events.len() as u64);
            return Ok(());
        }
        let keep = self.config.join.unpaired == Unpaired::DeadLetter;
        let carried = if keep {
            msg.payload.len()
                + msg
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 48)
                    .sum::<usize>()
        } else {
            0
        };
        // A producer's clock ahead of ours must not expire every waiting
        // half: a half's time is at most now.
        let now = chrono::Utc::now();
        let half = Half {
            pairing,
            bytes: join::weight(&events) + carried + 512,
            events,
            pos: msg.pos.clone(),
            time: msg.timestamp.map_or(now, |t| t.min(now)),
            carried: keep.then(|| msg.clone()),
        };
        match self.joiner.offer(half, Instant::now()) {
            Offered::Waiting => {
                // Held until the pair's event is durable or it is unpaired.
                self.tracker.hold(&msg.pos);
            }
            Offered::Refused(_, e) => self.dead_letter(msg, &e, control, cancel).await?,
            Offered::Paired { events, earlier } => {
                match self.admit(&events) {
                    Err(e) => self.dead_letter(msg, &e, control, cancel).await?,
                    Ok(()) => match self.load_models(&events, cancel).await? {
                        Err(e) => self.dead_letter(msg, &e, control, cancel).await?,
                        Ok(()) => {
                            self.metrics.pairs_joined.inc();
                            self.metrics.events_decoded.inc_by(events.len() as u64);
                            for (index, event) in events.into_iter().enumerate() {
                                let item = Positioned {
                                    event,
                                    pos: SourcePos {
                                        index: index as i64,
                                        ..msg.pos.clone()
                                    },
                                    also: Some(earlier.pos.clone()),
                                };
                                self.route(item, cancel).await?;
                            }
                        }
                    },
                }
                self.tracker.release(&earlier.pos);
            }
        }
        self.metrics
            .halves_waiting
            .set(self.joiner.waiting() as i64);
        Ok(())
    }

    async fn expire_unpaired(
        &mut self,
        now: Instant,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        if self.joiner.waiting() == 0 {
            return Ok(());
        }
        let halves = self.joiner.expired(now);
        self.unpaired(halves, control, cancel).await
    }

    /// Halves that met no other half, by `[join] unpaired`: scored alone on
    /// a stream of their own, or dead-lettered.
    async fn unpaired(
        &mut self,
        halves: Vec<Half<Option<RawMessage>>>,
        control: &SourceControl,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let halves = self.not_stored(halves, cancel).await?;
        for half in halves {
            let side = half.pairing.side;
            if let Some(msg) = &half.carried {
                let e = DecodeError::Unpaired {
                    side,
                    key: truncate(&half.pairing.key, 256),
                };
                self.dead_letter(msg, &e, control, cancel).await?;
                self.metrics.unpaired(side.as_str(), "dead_lettered");
            } else {
                self.score_unpaired(&half, cancel).await?;
            }
            self.tracker.release(&half.pos);
        }
        self.metrics
            .halves_waiting
            .set(self.joiner.waiting() as i64);
        Ok(())
    }

    /// Leaves out halves of pairs already stored: read again after a
    /// restart (or by a partition's next owner) whose commit on their
    /// stream fell behind them, while their other half was committed with
    /// the stored pair (another partition or topic, or an earlier offset:
    /// the response logged first).
    async fn not_stored(
        &mut self,
        halves: Vec<Half<Option<RawMessage>>>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Half<Option<RawMessage>>>, PipelineError> {
        let mut positions: Vec<SourcePos> = Vec::new();
        for half in &halves {
            if half.pos.offset <= self.horizon(&half.pos.stream, cancel).await? {
                positions.push(half.pos.clone());
            }
        }
        if positions.is_empty() {
            return Ok(halves);
        }
        let stored = self.stored_halves(&positions, cancel).await?;
        let (done, rest): (Vec<_>, Vec<_>) =
            halves.into_iter().partition(|h| stored.contains(&h.pos));
        for half in done {
            tracing::debug!(stream = %half.pos.stream, offset = half.pos.offset, "half read again is paired already");
            self.metrics
                .replayed_events
                .inc_by(half.events.len() as u64);
            self.tracker.release(&half.pos);
        }
        Ok(rest)
    }

    /// The stream's `halves_horizon`, read once per assignment: a half
    /// past it was never paired before, and costs no lookup.
    async fn horizon(
        &mut self,
        stream: &str,
        cancel: &CancellationToken,
    ) -> Result<i64, PipelineError> {
        if let Some(h) = self.halves_horizon.get(stream) {
            return Ok(*h);
        }
        let store = self.store.clone();
        let h = self
            .retry
            .run("reading stored halves", cancel, || {
                store.halves_horizon(stream)
            })
            .await?
            .unwrap_or(-1);
        self.halves_horizon.insert(stream.to_string(), h);
        Ok(h)
    }

    async fn score_unpaired(
        &mut self,
        half: &Half<Option<RawMessage>>,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let admitted = match self.admit(&half.events) {
            Ok(()) => self.load_models(&half.events, cancel).await?,
            Err(e) => Err(e),
        };
        if let Err(e) = admitted {
            // Its message was accepted long ago and is not kept: counted.
            tracing::warn!(stream = %half.pos.stream, offset = half.pos.offset, reason = e.reason(), error = %truncate(&e.to_string(), 256), "unpaired half refused");
            self.metrics.reject(e.reason());
            return Ok(());
        }
        self.metrics.unpaired(half.pairing.side.as_str(), "scored");
        self.metrics.events_decoded.inc_by(half.events.len() as u64);
        for (index, event) in half.events.iter().enumerate() {
            let item = Positioned {
                event: event.clone(),
                pos: unpaired_position(&half.pos, half.pairing.side, index),
                also: Some(half.pos.clone()),
            };
            self.route(item, cancel).await?;
        }
        Ok(())
    }

    /// Loads the state of a message's models that have none yet. A model
    /// whose stored reference cannot be read or fitted is unavailable until
    /// restart: its messages are dead-lettered, other models go on.
    async fn load_models(
        &mut self,
        events: &[TelemetryEvent],
        cancel: &CancellationToken,
    ) -> Result<Result<(), DecodeError>, PipelineError> {
        for e in events {
            let model = e.model.as_str();
            if let Some(error) = self.unavailable.get(model) {
                return Ok(Err(DecodeError::ModelUnavailable(format!(
                    "{model:?}: {error}"
                ))));
            }
            if self.models.contains_key(model) {
                continue;
            }
            match self.load_model(model, cancel).await {
                Ok(()) => {}
                Err(e) if permanent(&e) => {
                    tracing::error!(model, error = %e, "model unavailable until restart; its messages are dead-lettered");
                    let error = truncate(&e.to_string(), 512);
                    self.unavailable.insert(model.to_string(), error.clone());
                    return Ok(Err(DecodeError::ModelUnavailable(format!(
                        "{model:?}: {error}"
                    ))));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(()))
    }

    /// The events of a message that keep `[limits]`. A message of one
    /// producer passes or fails whole; of independent records (a Collector
    /// batch of many users' spans) each failing record is dropped and
    /// counted under its reason, so that one hostile span cannot sink its
    /// neighbours, and the message fails only when none passes.
    fn at_the_door(
        &self,
        independent: bool,
        events: Vec<TelemetryEvent>,
        msg: &RawMessage,
    ) -> Result<Vec<TelemetryEvent>, DecodeError> {
        let limits = &self.config.limits;
        if !independent {
            for e in &events {
                limits.check(e, msg.timestamp)?;
            }
            return Ok(events);
        }
        let (mut kept, mut refused) = (Vec::new(), Vec::new());
        for e in events {
            match limits.check(&e, msg.timestamp) {
                Ok(()) => kept.push(e),
                Err(why) => refused.push(why),
            }
        }
        let mut refused = refused.into_iter();
        let Some(first) = refused.next() else {
            return Ok(kept);
        };
        if kept.is_empty() {
            // The whole message is refused, dead-lettered and counted once.
            return Err(first);
        }
        tracing::warn!(stream = %msg.pos.stream, offset = msg.pos.offset, refused = refused.len() + 1, kept = kept.len(), reason = first.reason(), error = %truncate(&first.to_string(), 256), "records of a batch refused; the rest scored");
        for why in std::iter::once(first).chain(refused) {
            self.metrics.reject(why.reason());
        }
        Ok(kept)
    }

    async fn route(
        &mut self,
        item: Positioned,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let model = item.event.model.clone();
        if self.unavailable.contains_key(&model) {
            // The rest of the message whose event made the reference that
            // could not be fitted.
            self.metrics.reject("model_unavailable");
            return Ok(());
        }
        match self.models.get(&model) {
            None => self.load_model(&model, cancel).await?,
            Some(s) if s.progress_stale => self.reload_progress(&model, cancel).await?,
            Some(_) => {}
        }
        let Some(state) = self.models.get_mut(&model) else {
            return Ok(());
        };
        state.last_seen = Instant::now();
        if state.reference_progress.covers(&item.pos) {
            self.metrics.replayed_events.inc();
            return Ok(());
        }
        if state.reference.is_none() {
            self.tracker.hold_item(&item);
            self.metrics.reference_events.inc();
            let size = self.config.model_settings(&model).reference_size;
            let complete = state
                .builder
                .get_or_insert_with(|| ReferenceBuilder::new(size))
                .push(item);
            if complete {
                self.complete_reference(&model, cancel).await?;
            }
            return Ok(());
        }
        let key = WindowKey {
            model: model.clone(),
            version: item.event.version_key().to_string(),
        };
        self.know_window_key(&key, cancel).await?;
        if self.windower.covered(&key, &item.pos) {
            self.metrics.replayed_events.inc();
            return Ok(());
        }
        self.tracker.hold_item(&item);
        for w in self.windower.push(&key, item, Instant::now()) {
            self.process(w, cancel).await?;
        }
        Ok(())
    }

    /// Opens the window key of a version seen for the first time, from its
    /// stored progress.
    async fn know_window_key(
        &mut self,
        key: &WindowKey,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        if self.windower.knows(key) {
            return Ok(());
        }
        let store = self.store.clone();
        let scope = store::version_scope(&key.version);
        let high_water = self
            .retry
            .run("loading window progress", cancel, || {
                store.load_progress(&key.model, &scope)
            })
            .await?;
        let s = self.config.model_settings(&key.model);
        let settings = WindowSettings {
            count: s.window_count,
            duration: s.window_duration,
        };
        self.windower
            .add_key(key.clone(), settings, Progress { high_water });
        Ok(())
    }

    /// Whether a response that finds no request waiting is a half of a
    /// pair already stored: read again after a restart whose commit fell
    /// between the halves (the request's message was released with the
    /// stored pair, and is not read again). Known from the stored halves,
    /// not from the stream's stored progress: a response logged before its
    /// request lies below the progress of pairs stored after it while its
    /// own pair was still open. A stream with no stored halves at all was
    /// stored before they were kept (an upgrade): its progress tells, as it
    /// did then, for requests logged first.
    async fn pair_stored(
        &mut self,
        events: &[TelemetryEvent],
        pos: &SourcePos,
        cancel: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let horizon = self.horizon(&pos.stream, cancel).await?;
        if horizon < 0 {
            return self.progress_covers(events, pos, cancel).await;
        }
        if pos.offset > horizon {
            return Ok(false);
        }
        let found = self.stored_halves(&[pos.clone()], cancel).await?;
        Ok(!found.is_empty())
    }

    /// Which of `positions` are halves already stored, read through outages.
    async fn stored_halves(
        &self,
        positions: &[SourcePos],
        cancel: &CancellationToken,
    ) -> Result<std::collections::HashSet<SourcePos>, PipelineError> {
        let store = &self.store;
        self.retry
            .run("checking stored halves", cancel, || {
                store.stored_halves(positions)
            })
            .await
    }

    /// Whether the stored progress of the events' model covers `pos`. A
    /// response of a model not yet admitted is left to the join.
    async fn progress_covers(
        &mut self,
        events: &[TelemetryEvent],
        pos: &SourcePos,
        cancel: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let Some(event) = events.first() else {
            return Ok(false);
        };
        if self.admit(events).is_err() || self.load_models(events, cancel).await?.is_err() {
            return Ok(false);
        }
        let model = event.model.as_str();
        if self.models.get(model).is_some_and(|s| s.progress_stale) {
            self.reload_progress(model, cancel).await?;
        }
        let probe = SourcePos {
            index: 0,
            ..pos.clone()
        };
        let Some(state) = self.models.get(model) else {
            return Ok(false);
        };
        if state.reference_progress.covers(&probe) {
            return Ok(true);
        }
        if state.reference.is_none() {
            return Ok(false);
        }
        let key = WindowKey {
            model: model.to_string(),
            version: event.version_key().to_string(),
        };
        self.know_window_key(&key, cancel).await?;
        Ok(self.windower.covered(&key, &probe))
    }

    /// A stored reference's progress, read again after a revocation: the
    /// partitions' owner meanwhile may have been another member.
    async fn reload_progress(
        &mut self,
        model: &str,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let store = self.store.clone();
        let high_water = self
            .retry
            .run("loading reference progress", cancel, || {
                store.load_progress(model, store::REFERENCE_SCOPE)
            })
            .await?;
        if let Some(state) = self.models.get_mut(model) {
            state.reference_progress = Progress { high_water };
            state.progress_stale = false;
        }
        Ok(())
    }

    async fn load_model(
        &mut self,
        model: &str,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let store = self.store.clone();
        let stored = self
            .retry
            .run("loading reference", cancel, || store.load_reference(model))
            .await?;
        let high_water = self
            .retry
            .run("loading reference progress", cancel, || {
                store.load_progress(model, store::REFERENCE_SCOPE)
            })
            .await?;
        let reference = match stored {
            Some(r) => {
                tracing::info!(model, origin = %r.origin, events = r.events.len(), "using stored reference");
                Some(self.fit(model, r.events).await?)
            }
            None => None,
        };
        self.models.insert(
            model.to_string(),
            ModelState {
                reference,
                builder: None,
                reference_progress: Progress { high_water },
                progress_stale: false,
                last_seen: Instant::now(),
            },
        );
        Ok(())
    }

    async fn fit(
        &self,
        model: &str,
        events: Vec<TelemetryEvent>,
    ) -> Result<Arc<Reference>, PipelineError> {
        let settings = self.config.model_settings(model);
        let reference = self
            .scoring
            .fit(model, events, settings.classes, settings.window_count)
            .await?;
        let calibration = reference.calibration();
        tracing::info!(model, calibration = %calibration, "reference fitted");
        if let Err(error) = self.store.save_calibration(model, &calibration).await {
            // The calibration is recomputed from the same events on every
            // start; failing to record it must not stop scoring.
            tracing::warn!(model, %error, "storing the reference calibration failed");
        }
        Ok(reference)
    }

    async fn complete_reference(
        &mut self,
        model: &str,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let Some(builder) = self.models.get_mut(model).and_then(|s| s.builder.take()) else {
            return Ok(());
        };
        let events: Vec<TelemetryEvent> = builder.events.iter().map(|p| p.event.clone()).collect();
        let high_water = window::high_water(builder.events.iter().map(|p| &p.pos));
        let halves = Halves::of(&builder.events);
        let store = self.store.clone();
        let saved = self
            .retry
            .run("storing reference", cancel, || {
                store.save_reference(model, "stream", &events, &high_water, &halves, false)
            })
            .await;
        let inserted = match saved {
            Err(PipelineError::Store(e)) if e.is_permanent() => {
                // These events cannot make a stored reference: drop them
                // (counted) and collect again from the next ones.
                tracing::error!(model, events = events.len(), error = %e, "reference cannot be stored; its events are dropped");
                self.metrics
                    .reference_events_dropped
                    .inc_by(builder.events.len() as u64);
                for p in &builder.events {
                    self.tracker.release_item(p);
                }
                return Ok(());
            }
            other => other?,
        };
        self.stored_models.insert(model.to_string());
        let (events, leftovers) = self
            .agreed_reference(model, inserted, events, &builder.events, cancel)
            .await?;
        let reference = match self.fit(model, events).await {
            Err(e) if permanent(&e) => {
                // Stored, but not usable: the model waits for an operator
                // (`baseline import --replace`); other models go on.
                tracing::error!(model, error = %e, "reference cannot be fitted; model unavailable until restart");
                self.unavailable
                    .insert(model.to_string(), truncate(&e.to_string(), 512));
                self.models.remove(model);
                self.metrics
                    .reference_events_dropped
                    .inc_by(leftovers.len() as u64);
                for p in &builder.events {
                    self.tracker.release_item(p);
                }
                return Ok(());
            }
            other => other?,
        };
        self.install_reference(model, reference, high_water, leftovers.is_empty());
        for item in leftovers {
            Box::pin(self.route(item, cancel)).await?;
        }
        for p in &builder.events {
            self.tracker.release_item(p);
        }
        Ok(())
    }

    /// What the model's reference is fitted on, and which collected events
    /// go to windows instead: none when ours was stored; all of them when
    /// another member stored one first (used, so that all agree).
    async fn agreed_reference(
        &self,
        model: &str,
        inserted: bool,
        events: Vec<TelemetryEvent>,
        collected: &[Positioned],
        cancel: &CancellationToken,
    ) -> Result<(Vec<TelemetryEvent>, Vec<Positioned>), PipelineError> {
        if inserted {
            tracing::info!(
                model,
                events = events.len(),
                "reference taken from the stream"
            );
            return Ok((events, Vec::new()));
        }
        let store = self.store.clone();
        let stored = self
            .retry
            .run("loading reference", cancel, || store.load_reference(model))
            .await?;
        Ok(match stored {
            Some(r) => (r.events, collected.to_vec()),
            None => (events, Vec::new()),
        })
    }

    /// The fitted reference takes the model's events from now on. Its
    /// progress is ours when we stored it, else read again from the store.
    fn install_reference(
        &mut self,
        model: &str,
        reference: Arc<Reference>,
        high_water: HashMap<String, crate::event::Mark>,
        ours: bool,
    ) {
        let Some(state) = self.models.get_mut(model) else {
            return;
        };
        state.reference = Some(reference);
        if !ours {
            state.progress_stale = true;
            return;
        }
        for (stream, hw) in high_water {
            let e = state
                .reference_progress
                .high_water
                .entry(stream)
                .or_insert(hw);
            *e = (*e).max(hw);
        }
    }

    /// Scores, judges, stores and reports one closed window, in a span that
    /// is a child of the message that closed it (so of that request's trace).
    async fn process(
        &mut self,
        w: ClosedWindow,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let span = tracing::info_span!(
            "window",
            model = %w.key.model,
            model_version = %w.key.version,
            window = tracing::field::Empty,
            events = w.events.len(),
            close_reason = w.reason.as_str(),
        );
        self.process_in_span(w, cancel, span.clone())
            .instrument(span)
            .await
    }

    async fn process_in_span(
        &mut self,
        w: ClosedWindow,
        cancel: &CancellationToken,
        span: tracing::Span,
    ) -> Result<(), PipelineError> {
        let Some(reference) = self
            .models
            .get(&w.key.model)
            .and_then(|s| s.reference.clone())
        else {
            debug_assert!(false, "window without reference");
            return Ok(());
        };
        let started = Instant::now();
        let device = self.scoring.info().label();
        let history = self.history(&w.key, cancel).await?;
        let scored = self.score(&w, reference, &device, history).await;
        let (class_mix, top_clients) = scored
            .as_ref()
            .map(|s| (s.class_mix.clone(), s.top_clients.clone()))
            .unwrap_or_default();
        let mut verdict = judge::verdict(&self.config.judge, &w, device, scored.map(|s| s.scores));
        verdict.class_mix = class_mix;
        verdict.top_clients = top_clients;
        verdict.trace_id = telemetry::trace_id(&span);
        let write_started = Instant::now();
        let (seq, transitions) = match self.store_verdict(&verdict, cancel).await {
            Err(PipelineError::Store(e)) if e.is_permanent() => {
                // The scores cannot be stored: the window is, with the
                // error, so that its positions move on and it is counted.
                self.metrics.windows_quarantined.inc();
                tracing::error!(model = %w.key.model, version = %w.key.version, error = %e, "window scores cannot be stored; window stored with the error");
                verdict.judged.clear();
                verdict.class_mix.clear();
                verdict.top_clients.clear();
                verdict.error = Some(format!("its scores could not be stored: {e}"));
                self.store_verdict(&verdict, cancel).await?
            }
            other => other?,
        };
        if let Some(seq) = seq {
            span.record("window", seq);
        }
        self.metrics.store_write_took(write_started.elapsed());
        tracing::debug!(
            model = %w.key.model, version = %w.key.version, window = seq, events = w.events.len(),
            scores = verdict.judged.len(), transitions = transitions.len(), took_ms = started.elapsed().as_millis() as u64,
            "window scored"
        );
        self.metrics.window_scored(&w.key.model);
        self.metrics.scores.inc_by(verdict.judged.len() as u64);
        self.report(&transitions);
        for p in &w.events {
            self.tracker.release_item(p);
        }
        Ok(())
    }

    /// Stores a judged window and steps its alerts, retrying outages.
    async fn store_verdict(
        &self,
        verdict: &judge::WindowVerdict,
        cancel: &CancellationToken,
    ) -> Result<judge::Recorded, PipelineError> {
        let store = &self.store;
        let router = &self.options.router;
        let route = |a: &judge::AlertState| router.route(a);
        let alerts_config = &self.config.alerts;
        self.retry
            .run("storing window", cancel, || {
                judge::record_window(store, verdict, alerts_config, &route)
            })
            .instrument(tracing::info_span!(
                "persist",
                store = store.kind(),
                scores = verdict.judged.len()
            ))
            .await
    }

    /// The stored past the window's class mix and client volumes are
    /// judged against, read through outages; none when both are off.
    async fn history(
        &self,
        key: &WindowKey,
        cancel: &CancellationToken,
    ) -> Result<History, PipelineError> {
        let detect = &self.config.detect;
        if !detect.class_prior.enabled && !detect.volume.enabled {
            return Ok(History::default());
        }
        let (store, windows) = (&self.store, detect.history.windows);
        let read = self
            .retry
            .run("reading the stored past", cancel, || {
                store.history(&key.model, &key.version, windows)
            })
            .await;
        match read {
            // A past that cannot be read is no reason to stop scoring: the
            // window is scored without it (its class prior and volume go
            // unscored), where retrying would wedge on it.
            Err(PipelineError::Store(e)) if e.is_permanent() => {
                self.metrics.history_unread.inc();
                tracing::warn!(model = %key.model, version = %key.version, error = %e, "stored past cannot be read; window scored without it");
                Ok(History::default())
            }
            other => other,
        }
    }

    /// The window's scores, or the error it is stored with.
    async fn score(
        &self,
        w: &ClosedWindow,
        reference: Arc<Reference>,
        device: &str,
        history: History,
    ) -> Result<crate::detect::Scored, String> {
        let events: Vec<TelemetryEvent> = w.events.iter().map(|p| p.event.clone()).collect();
        let score_span = tracing::info_span!(
            "score",
            device = %device,
            rows = events.len(),
            duration_ms = tracing::field::Empty,
            detectors = tracing::field::Empty,
        );
        let started = Instant::now();
        let scored = self
            .scoring
            .score(reference, events, history)
            .instrument(score_span.clone())
            .await;
        score_span.record("duration_ms", started.elapsed().as_millis() as u64);
        match scored {
            Ok(s) => {
                self.metrics.exempt_requests.inc_by(s.exempt_requests);
                for (detector, took) in &s.timings {
                    self.metrics.detector_took(detector, device, *took);
                }
                // Per-detector time on the span too, since detectors run
                // on the scoring thread where spans cannot follow.
                let per: Vec<String> = s
                    .timings
                    .iter()
                    .map(|(d, t)| format!("{d}={:.3}ms", t.as_secs_f64() * 1e3))
                    .collect();
                score_span.record("detectors", per.join(",").as_str());
                Ok(s)
            }
            Err(e) => {
                self.metrics.windows_failed.inc();
                tracing::error!(model = %w.key.model, version = %w.key.version, events = w.events.len(), error = %e, "scoring failed; window stored with its error");
                Err(e.to_string())
            }
        }
    }

    /// Counts, prints or logs the transitions, and wakes the dispatcher.
    fn report(&self, transitions: &[(judge::AlertState, judge::Transition)]) {
        tracing::info_span!("notify", transitions = transitions.len()).in_scope(|| {
            for (a, t) in transitions {
                self.metrics.alert(a.severity.as_str(), a.status.as_str());
                if self.options.print_alerts {
                    notify::print_transition(a, *t);
                } else {
                    notify::log_transition(a, *t);
                }
            }
        });
        if !transitions.is_empty() {
            if let Some(wake) = &self.options.wake_dispatcher {
                wake.notify_one();
            }
        }
    }
}

/// The next revocation; never, for sources without a consumer group.
async fn next_revocation(
    revocations: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Revocation>>,
) -> Revocation {
    match revocations {
        Some(rx) => match rx.recv().await {
            Some(r) => r,
            None => {
                *revocations = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Failures that retrying cannot mend: data the store refuses or a
/// reference the scorer cannot fit.
fn permanent(e: &PipelineError) -> bool {
    match e {
        PipelineError::Store(e) => e.is_permanent(),
        PipelineError::Detect(e) => matches!(e, DetectError::Failed(_)),
        PipelineError::Ingest(_) | PipelineError::Cancelled => false,
    }
}
