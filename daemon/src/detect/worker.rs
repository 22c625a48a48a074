//! The scoring thread: owns the engine so that tensor work never runs on a
//! tokio worker thread, and serialises use of the device.

use std::sync::Arc;
use std::time::Duration;

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
    // Before `_thread`: the last handle closes the queue, then waits for
    // the thread's end.
    jobs: std::sync::mpsc::Sender<Job>,
    info: DeviceInfo,
    /// Held for its drop only.
    _thread: Arc<Joined>,
}

/// The scoring thread, waited for when the last handle is dropped (a helper
/// thread joins it), so that it finishes its jobs and ends before the
/// process exits.
/// Left to run, it was still tearing down the graphics driver it had
/// probed while `exit` ran that driver's own destructors: about one
/// `modelwatch score` in fifty aborted with a corrupted C heap.
struct Joined {
    /// A beat per finished job; disconnected once the thread has ended,
    /// thread-local destructors and all (its joiner holds the last sender).
    beats: std::sync::mpsc::Receiver<()>,
    patience: Duration,
}

/// How long the last handle waits for the next sign of the thread: a job
/// finished, or its end. A driver that hangs while letting go must not hang
/// shutdown with it: past this the process exits without the thread, and
/// says so. Each finished job starts the wait again, so a queue of jobs is
/// not cut off midway (that is the exit race the join is there to avoid).
const PATIENCE: Duration = Duration::from_secs(10);

impl Joined {
    /// Joins `thread` on a helper thread of its own, which lets go of `beat`
    /// once the join has returned. The helper is started before it is given
    /// the thread, so that where it cannot start the thread comes back to
    /// be joined here.
    fn watch(
        thread: std::thread::JoinHandle<()>,
        beat: std::sync::mpsc::SyncSender<()>,
        beats: std::sync::mpsc::Receiver<()>,
        patience: Duration,
    ) -> Result<Self, (std::io::Error, std::thread::JoinHandle<()>)> {
        let (give, take) = std::sync::mpsc::channel::<std::thread::JoinHandle<()>>();
        let started = std::thread::Builder::new()
            .name("modelwatch-join".into())
            .spawn(move || {
                if let Ok(thread) = take.recv() {
                    // A panic there was already reported by the thread itself.
                    let _ = thread.join();
                }
                drop(beat);
            });
        match started {
            Ok(_) => {
                let _ = give.send(thread);
                Ok(Self { beats, patience })
            }
            Err(e) => Err((e, thread)),
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            match self.beats.recv_timeout(self.patience) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        waited_secs = self.patience.as_secs_f64(),
                        "the scoring thread neither finished a job nor ended; exiting without it"
                    );
                    return;
                }
            }
        }
    }
}

/// Runs the queue's jobs until every handle is gone, with a beat after each.
fn serve(
    scorer: &Scorer,
    rx: &std::sync::mpsc::Receiver<Job>,
    beat: &std::sync::mpsc::SyncSender<()>,
) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Fit {
                model,
                events,
                classes,
                window_rows,
                reply,
            } => {
                let _ = reply.send(scorer.fit_owned(&model, events, &classes, window_rows));
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
        let _ = beat.try_send(());
    }
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
        // Bounded: beats nobody waits for are dropped, not queued for ever.
        let (beat, beats) = std::sync::mpsc::sync_channel::<()>(1);
        let job_beat = beat.clone();
        let config = config.clone();
        let detect = detect.clone();
        super::parallel::limit(config.host_threads);
        let thread = std::thread::Builder::new()
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
                serve(&scorer, &rx, &job_beat);
            })
            .map_err(DetectError::Thread)?;
        // A failed start ends the thread at once: joined, so that the
        // device it opened is gone before the error reaches `exit`. A
        // start given up while the device opens is not joined: its drop
        // would block for the whole open and warm-up.
        let failed = match ready_rx.await {
            Ok(Ok(info)) => {
                let _thread = match Joined::watch(thread, beat, beats, PATIENCE) {
                    Ok(joined) => Arc::new(joined),
                    Err((e, thread)) => {
                        // The queue closed, the thread ends: joined here.
                        drop(jobs);
                        let _ = thread.join();
                        return Err(DetectError::Thread(e));
                    }
                };
                return Ok(Self {
                    jobs,
                    info,
                    _thread,
                });
            }
            Ok(Err(e)) => e,
            Err(_) => DetectError::Device("scoring thread exited during start-up".into()),
        };
        let _ = thread.join();
        Err(failed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{DetectConfig, DeviceChoice};

    /// The last handle returns from its drop only once the thread has
    /// finished what it was given: a job sent, then every handle dropped,
    /// has its answer waiting.
    #[tokio::test]
    async fn the_last_handle_waits_for_the_scoring_thread() {
        let engine = EngineConfig {
            device: DeviceChoice::Cpu,
            warmup: false,
            ..EngineConfig::default()
        };
        let handle = ScoringHandle::start(&engine, &DetectConfig::default(), (0, 0))
            .await
            .expect("cpu scoring starts");
        let events: Vec<TelemetryEvent> = (0..4000)
            .map(|i| {
                let line = format!(
                    r#"{{"model":"m","ts":"2026-01-01T00:00:00Z","client_id":"c{}","features":{{"a":{i},"b":{},"c":{}}},"output":{{"probabilities":[0.3,0.7]}}}}"#,
                    i % 7,
                    (i * 37 % 101) as f64 / 7.0,
                    (i * 11 % 13) as f64
                );
                serde_json::from_str(&line).expect("event")
            })
            .collect();
        let (reply, mut rx) = oneshot::channel();
        let fit = Job::Fit {
            model: "m".into(),
            events,
            classes: Vec::new(),
            window_rows: 500,
            reply,
        };
        let other = handle.clone();
        handle.send(fit).expect("sent");
        drop(handle);
        drop(other);
        let fitted = rx
            .try_recv()
            .expect("the fit was done before the drop returned");
        assert!(fitted.is_ok());
    }

    /// A thread that never lets go (a hung driver) holds the last drop up
    /// for the patience, not for ever.
    #[test]
    fn a_thread_that_never_ends_is_left_after_the_patience() {
        let (beat, beats) = std::sync::mpsc::sync_channel::<()>(1);
        let (_never_tx, never) = std::sync::mpsc::channel::<()>();
        // Bounded, so that a drop without patience fails the test rather
        // than hanging it.
        let thread = std::thread::spawn(move || {
            let _ = never.recv_timeout(Duration::from_secs(3));
        });
        let joined = Joined::watch(thread, beat, beats, Duration::from_millis(200)).unwrap();
        let started = std::time::Instant::now();
        drop(joined);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
    }

    /// Jobs that keep finishing keep the last drop waiting past the
    /// patience, until the thread has ended.
    #[test]
    fn each_finished_job_starts_the_wait_again() {
        let (beat, beats) = std::sync::mpsc::sync_channel::<()>(1);
        let job_beat = beat.clone();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let thread = std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(50));
                let _ = job_beat.try_send(());
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let joined = Joined::watch(thread, beat, beats, Duration::from_millis(500)).unwrap();
        drop(joined);
        assert!(
            ended.load(std::sync::atomic::Ordering::SeqCst),
            "the drop returned before the thread ended"
        );
    }
}
