//! `modelwatch run`: the daemon.

use anyhow::Result;
use clap::Args;

use super::ConfigArg;
use crate::ingest::SourceKind;
use crate::telemetry::{self, Metrics};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read NDJSON from this file (`-` for stdin) instead of the configured source.
    #[arg(long)]
    file: Option<String>,
    /// The format of the file's lines (default: `[source.file] format`).
    #[arg(long, value_enum, requires = "file")]
    format: Option<crate::decode::DecoderName>,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let mut config = args.config.load()?;
    if let Some(path) = args.file {
        config.source.kind = SourceKind::File;
        config.source.file.path = path;
    }
    if let Some(format) = args.format {
        config.source.file.format = format;
    }
    let _telemetry = telemetry::init(&config.log, &config.telemetry.otlp)?;
    let metrics = crate::daemon::run(config, super::shutdown_on_signal(), true).await?;
    print_summary(&metrics);
    Ok(())
}

/// What a finished run did, for the person who started it.
pub fn print_summary(m: &Metrics) {
    println!(
        "summary: {} messages, {} events ({} into references, {} already stored), {} windows scored ({} failed), {} scores, {} alerts",
        m.messages.get(),
        m.events_decoded.get(),
        m.reference_events.get(),
        m.replayed_events.get(),
        m.windows(),
        m.windows_failed.get(),
        m.scores.get(),
        m.alerts(),
    );
    let rejected = m.rejected();
    if !rejected.is_empty() {
        let parts: Vec<String> = rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        println!("rejected messages (dead-lettered): {}", parts.join(", "));
    }
}
