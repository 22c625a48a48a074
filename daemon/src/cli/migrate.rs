//! `modelwatch migrate`: apply the database migrations alone.

use anyhow::{Context, Result};
use clap::Args;

use super::ConfigArg;
use crate::store::Store;
use crate::telemetry;

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn run(args: MigrateArgs) -> Result<()> {
    let config = args.config.load()?;
    telemetry::init_logging(&config.log);
    let store = Store::connect_config(&config.store, 1).await?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied to the {} store", store.kind());
    Ok(())
}
