//! modelwatch: a real-time AI behaviour monitor.
//!
//! The modules follow the pipeline, in the order data flows:
//! `ingest` (sources) -> `decode` -> `window` -> `detect` (burn) -> `judge`
//! -> `store` -> `notify`; `pipeline` drives them, `daemon` builds them from one config,
//! `telemetry` watches the monitor itself, `config` and `cli` sit at the
//! edges; `evaluate` measures the detectors on synthetic planted shifts.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod detect;
pub mod evaluate;
pub mod event;
pub mod glob;
pub mod ingest;
pub mod join;
pub mod judge;
pub mod notify;
pub mod pipeline;
pub mod store;
pub mod telemetry;
pub mod window;
