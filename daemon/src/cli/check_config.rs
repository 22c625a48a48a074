//! `modelwatch check-config`: validate and print the effective config,
//! secrets masked.

use anyhow::Result;
use clap::Args;

use super::ConfigArg;

#[derive(Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: CheckConfigArgs) -> Result<()> {
    print!("{}", args.config.load()?.redacted().annotated());
    Ok(())
}
