//! The scoring thread: owns the engine so that tensor work never runs on a
//! tokio worker thread, and serialises use of the device.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::EngineConfig;
use super::{DetectError, DeviceInfo, Engine, Reference, Scored, Scorer};
use crate::event::TelemetryEvent;

enum Job {
    Fit {
        model: String,
        events: Vec<TelemetryEvent>,
        classes: Vec<String>,
        window_rows: usize,
        reply: oneshot::Sender<Result<Arc<Reference>, DetectError>>,
    },
    Score {
        reference: Arc<Reference>,
        events: Vec<TelemetryEvent>,
        history: super::History,
        reply: oneshot::Sender<Result<Scored, DetectError>>,
    },
}

#[derive(Clone)]
pub struct ScoringHandle {
    jobs: std::sync::mpsc::Sender<Job>,
    info: DeviceInfo,
}

impl ScoringHandle {
    /// Opens the device on a new thread, warms it up when asked, and returns
    /// once it is ready to score.
    /// `typical` is the (reference rows, window rows) to warm the kernels up at.
    pub async fn start(
        config: &EngineConfig,
        detect: &super::DetectConfig,
        typical: (usize, usize),
    ) -> Result<Self, DetectError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let config = config.clone();
        let detect = detect.clone();
        super::parallel::limit(config.host_threads);
        std::thread::Builder::new()
            .name("modelwatch-scoring".into())
            .spawn(move || {
                let scorer =
                    match Engine::open(config.device, config.max_tile_elements).and_then(|engine| {
                        if config.warmup {
                            engine.warmup(typical.0, typical.1)?;
                        }
                        Ok(Scorer::with_config(engine, &detect))
                    }) {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(s.engine().info().clone()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Fit {
                            model,
                            events,
                            classes,
                            window_rows,
                            reply,
                        } => {
                            let _ = reply.send(scorer.fit(&model, &events, &classes, window_rows));
                        }
                        Job::Score {
                            reference,
                            events,
                            history,
                            reply,
                        } => {
                            let _ = reply.send(scorer.score_with(&reference, &events, history));
                        }
                    }
                }
            })
            .map_err(DetectError::Thread)?;
        let info = ready_rx
            .await
            .map_err(|_| DetectError::Device("scoring thread exited during start-up".into()))??;
        Ok(Self { jobs, info })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub async fn fit(
        &self,
        model: &str,
        events: Vec<TelemetryEvent>,
        classes: Vec<String>,
        window_rows: usize,
    ) -> Result<Arc<Reference>, DetectError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Fit {
            model: model.to_string(),
            events,
            classes,
            window_rows,
            reply,
        })?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn score(
        &self,
        reference: Arc<Reference>,
        events: Vec<TelemetryEvent>,
        history: super::History,
    ) -> Result<Scored, DetectError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Score {
            reference,
            events,
            history,
            reply,
        })?;
        rx.await.map_err(|_| gone())?
    }

    fn send(&self, job: Job) -> Result<(), DetectError> {
        self.jobs.send(job).map_err(|_| gone())
    }
}

fn gone() -> DetectError {
    DetectError::Device("scoring thread is gone".into())
}
