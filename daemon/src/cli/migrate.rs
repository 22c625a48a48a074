//! `modelwatch migrate`: apply the database migrations alone.

use anyhow::{Context, Result};
use clap::Args;

use super::ConfigArg;
use crate::store::Store;
use crate::telemetry;

/// Where `migrate` reads the dashboard role's password from.
const READER_PASSWORD: &str = "MODELWATCH_READER_PASSWORD";

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
    if store
        .grant_reader()
        .await
        .context("granting modelwatch_reader SELECT on every table")?
    {
        println!("modelwatch_reader may read every table");
    }
    if let Ok(password) = std::env::var(READER_PASSWORD) {
        store
            .set_reader_password(&password)
            .await
            .with_context(|| {
                format!("setting modelwatch_reader's password from {READER_PASSWORD}")
            })?;
        println!("password of modelwatch_reader set from {READER_PASSWORD}");
    }
    Ok(())
}
