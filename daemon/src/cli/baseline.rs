//! `modelwatch baseline import`: a file's events as a model's reference.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::ConfigArg;
use crate::decode::DecoderName;
use crate::ingest::file::read_events;
use crate::store::Store;
use crate::telemetry;

#[derive(Subcommand)]
pub enum BaselineAction {
    /// Store the events of an NDJSON file as a model's reference.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// Model the reference belongs to; events of other models in the file are skipped.
        #[arg(long)]
        model: String,
        /// NDJSON file of events.
        file: PathBuf,
        /// The file's format, as a topic's decoder would read it.
        #[arg(long, value_enum, default_value_t = DecoderName::default())]
        format: DecoderName,
        /// Replace an existing reference.
        #[arg(long)]
        replace: bool,
    },
}

pub async fn run(action: BaselineAction) -> Result<()> {
    let BaselineAction::Import {
        config,
        model,
        file,
        format,
        replace,
    } = action;
    let config = config.load()?;
    telemetry::init_logging(&config.log);
    crate::detect::parallel::limit(config.engine.host_threads);
    let events: Vec<_> = read_events(
        &file,
        format.build(&config.decode).as_ref(),
        &config.limits,
        &config.join,
    )?
    .into_iter()
    .map(|p| p.event)
    .filter(|e| e.model == model)
    .collect();
    if events.len() < 2 {
        bail!(
            "{} holds {} events of model {model}; a reference needs at least 2",
            file.display(),
            events.len()
        );
    }
    let store = Store::open_config(&config.store, 1).await?;
    let origin = format!("import:{}", file.display());
    let stored = store
        .save_reference(
            &model,
            &origin,
            &events,
            &Default::default(),
            &Default::default(),
            replace,
        )
        .await?;
    if !stored {
        bail!("model {model} already has a reference; pass --replace to overwrite it");
    }
    println!(
        "stored a reference of {} events for model {model}",
        events.len()
    );
    Ok(())
}
