//! The command line: one file per command, each parsing its arguments and
//! calling into the library; errors are reported with `anyhow` at this edge.

mod alerts;
mod baseline;
mod check_config;
mod demo;
mod evaluate;
mod migrate;
mod replay;
mod run;
mod score;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Parser)]
#[command(name = "modelwatch", version, about = "real-time AI behaviour monitor")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// TOML config file; every field is optional. MODELWATCH_SECTION__FIELD variables override it.
    #[arg(long, short, env = "MODELWATCH_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config> {
        Ok(Config::load(self.config.as_deref())?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the monitor as configured (Kafka in production, or a file source).
    Run(run::RunArgs),
    /// Run the whole pipeline on a built-in simulated fleet with an embedded store.
    Demo(demo::DemoArgs),
    /// Apply database migrations and exit.
    Migrate(migrate::MigrateArgs),
    /// Manage model references.
    Baseline {
        #[command(subcommand)]
        action: baseline::BaselineAction,
    },
    /// Validate the config and print the effective result, every field documented.
    CheckConfig(check_config::CheckConfigArgs),
    /// List, acknowledge and silence alerts; show undelivered notifications.
    Alerts {
        #[command(subcommand)]
        action: alerts::AlertsAction,
    },
    /// Score files offline with exactly the daemon's windows, detectors and
    /// judge: every score, p-value and threshold per window.
    Score(score::ScoreArgs),
    /// Produce an NDJSON file into a Kafka topic, one message per line.
    Replay(replay::ReplayArgs),
    /// Detection and false-alarm rates of the configured detectors on
    /// synthetic traffic with planted shifts of known size.
    Evaluate(evaluate::EvaluateArgs),
}

/// The exit status of a config that cannot be read or is invalid (sysexits'
/// EX_CONFIG): a service manager can tell it from a crash and stop
/// restarting (`RestartPreventExitStatus=78` in `deploy/modelwatch.service`),
/// since no restart fixes a config.
pub const EXIT_CONFIG: u8 = 78;

/// 78 for a config error anywhere in the chain (an unreadable or invalid
/// config, a store URL of an unknown kind, a secret its config names that
/// cannot be read), else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use crate::ingest::IngestError;
    use crate::notify::NotifyError;
    use crate::store::StoreError;
    let config = |c: &(dyn std::error::Error + 'static)| {
        c.is::<crate::config::ConfigError>()
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Url(_) | StoreError::Secret(_))
            )
            || matches!(
                c.downcast_ref::<IngestError>(),
                Some(IngestError::Secret(_))
            )
            || matches!(
                c.downcast_ref::<NotifyError>(),
                Some(NotifyError::Secret { .. })
            )
    };
    match e.chain().any(config) {
        true => EXIT_CONFIG,
        false => 1,
    }
}

pub async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Baseline { action } => baseline::run(action).await,
        Command::CheckConfig(args) => check_config::run(args),
        Command::Alerts { action } => alerts::run(action).await,
        Command::Score(args) => score::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Evaluate(args) => evaluate::run(args),
    }
}

/// The one shutdown token: cancelled by ctrl-c or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    cancel
}
