//! `modelwatch evaluate`: detection and false-alarm rates of the configured
//! detectors and judge on synthetic traffic with planted shifts of known
//! size (`crate::evaluate`), one line per reference size, window size and
//! shift, as a Markdown table.

use anyhow::{Result, bail};
use clap::Args;

use super::ConfigArg;
use crate::detect::{Engine, Scorer};
use crate::evaluate::{self, Outcome, Plan};
use crate::telemetry;

/// Events are drawn into memory (about 1 KiB each with their features), so
/// a size is capped well below what would exhaust it.
const MAX_ROWS: usize = 5_000_000;

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Reference sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10_000, 100_000])]
    reference_rows: Vec<usize>,
    /// Window sizes, comma-separated; each no larger than the reference.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 10_000])]
    window_rows: Vec<usize>,
    /// Windows scored per shifted scenario.
    #[arg(long, default_value_t = 40)]
    windows: usize,
    /// Windows of clean traffic per reference and window size, for the
    /// false-alarm rates.
    #[arg(long, default_value_t = 200)]
    clean_windows: usize,
    /// Seed of the synthetic traffic; the same seed gives the same table.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

pub fn run(args: EvaluateArgs) -> Result<()> {
    let config = args.config.load()?;
    telemetry::init_logging(&config.log);
    if args.windows == 0 || args.clean_windows == 0 {
        bail!("--windows and --clean-windows must be at least 1");
    }
    let sizes = args.reference_rows.iter().chain(&args.window_rows);
    if let Some(bad) = sizes.copied().find(|n| !(1..=MAX_ROWS).contains(n)) {
        bail!("reference and window sizes must lie in 1..={MAX_ROWS}, got {bad}");
    }
    let largest = args.reference_rows.iter().max().copied().unwrap_or(0);
    if !args.window_rows.iter().any(|m| *m <= largest) {
        bail!("no window size fits in a reference of at most {largest} rows");
    }
    let engine = Engine::open(config.engine.device, config.engine.max_tile_elements)?;
    let scorer = Scorer::with_config(engine, &config.detect);
    let plan = Plan {
        reference_rows: args.reference_rows,
        window_rows: args.window_rows,
        windows: args.windows,
        clean_windows: args.clean_windows,
        seed: args.seed,
        scenarios: evaluate::scenarios(),
        pending_windows: config.alerts.pending_windows as usize,
    };
    println!(
        "alpha {} ({:?}); detected = windows where the target score crossed; p-value alone = \
         where its p-value did, effect size aside; delay = median windows from a shift's start \
         to its alert firing ({} consecutive crossings), over every window of the run as a \
         start, with how many starts fire; false alarms = clean windows with any crossing, \
         per detector",
        config.judge.alpha, config.judge.correction, plan.pending_windows
    );
    println!(
        "| reference | window | scenario | target | windows | detected | p-value alone | delay | false alarms |"
    );
    println!("|---:|---:|---|---|---:|---:|---:|---|---|");
    let pending = plan.pending_windows;
    evaluate::run(&scorer, &config.judge, &plan, |o| print(o, pending))?;
    Ok(())
}

fn print(o: &Outcome, pending: usize) {
    let rate = |k: usize| format!("{:.3}", k as f64 / o.windows as f64);
    let (detected, significant) = match (&o.target, o.detected) {
        (None, _) => ("-".to_string(), "-".to_string()),
        (Some(_), Some(k)) => (rate(k), rate(o.significant)),
        (Some(_), None) => ("not scored".to_string(), "-".to_string()),
    };
    let delay = match (&o.target, o.delay(pending)) {
        (None, _) => "-".to_string(),
        (Some(_), Some((median, starts))) => format!("{median} ({starts} of {})", o.windows),
        (Some(_), None) => format!("never (0 of {})", o.windows),
    };
    let alarms = match o.target {
        Some(_) => "-".to_string(),
        None => o
            .alarmed
            .iter()
            .map(|(detector, k)| format!("{detector} {}", rate(*k)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        o.reference_rows,
        o.window_rows,
        o.scenario,
        o.target.as_deref().unwrap_or("-"),
        o.windows,
        detected,
        significant,
        delay,
        alarms
    );
}
