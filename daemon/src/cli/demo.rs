//! `modelwatch demo`: the whole pipeline on a simulated fleet.

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::detect::DeviceChoice;
use crate::ingest::{SourceKind, demo};
use crate::telemetry;

#[derive(Args)]
pub struct DemoArgs {
    /// Store URL; the default keeps everything in memory.
    #[arg(long, default_value = "sqlite::memory:")]
    store: String,
    /// Windows simulated per model after its reference.
    #[arg(long, default_value_t = 12)]
    windows: usize,
    /// Scoring device.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Print the simulated events as NDJSON on standard output instead of
    /// monitoring them (for `replay -` into a topic).
    #[arg(long)]
    events: bool,
    /// Random seed of the simulated fleet.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if args.events {
        return print_events(&args);
    }
    let mut config = Config::default();
    config.source.kind = SourceKind::Demo;
    config.source.demo.windows_per_model = args.windows;
    config.source.demo.seed = args.seed;
    config.store.url = args.store;
    config.engine.device = args.device;
    config.models.extend(demo::model_configs());
    config.telemetry.listen = String::new();
    let _telemetry = telemetry::init(&config.log, &config.telemetry.otlp)?;
    println!(
        "modelwatch demo: {} simulated models, reference {} events, windows of {} events, {} windows each",
        demo::FLEET.len(),
        demo::REFERENCE_SIZE,
        demo::WINDOW_SIZE,
        args.windows
    );
    for e in demo::EPISODES {
        println!(
            "  scheduled: {} windows {}-{}: {}",
            e.model, e.from, e.to, e.what
        );
    }
    for m in demo::FLEET.iter().filter(|m| m.retrained.is_some()) {
        let (version, at) = m.retrained.unwrap_or_default();
        println!(
            "  deployed: {} {version} from window {at} (alerts number each version's windows from 0)",
            m.name
        );
    }
    let url = config.store.url.clone();
    let metrics = crate::daemon::run(config, super::shutdown_on_signal(), true).await?;
    super::run::print_summary(&metrics);
    if url != "sqlite::memory:" {
        println!("results kept in {url}");
    }
    Ok(())
}

fn print_events(args: &DemoArgs) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (_, _, _, event) in demo::stream(args.seed, args.windows) {
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
