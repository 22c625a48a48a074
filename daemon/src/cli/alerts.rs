//! `modelwatch alerts`: list, acknowledge and silence alerts; show the outbox.

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::ConfigArg;
use crate::judge::Status;
use crate::store::Store;
use crate::telemetry;

#[derive(Subcommand)]
pub enum AlertsAction {
    /// Alerts, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only alerts in this status: pending, firing or resolved.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON lines with the full evidence.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert: it stays firing, and is marked as being handled.
    Ack {
        #[command(flatten)]
        config: ConfigArg,
        /// Alert id, as `alerts list` shows it.
        id: i64,
    },
    /// Keep matching alerts from paging until the silence expires.
    Silence {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        model: String,
        /// Only this detector (default: any).
        #[arg(long)]
        detector: Option<String>,
        /// Only this feature (default: any).
        #[arg(long)]
        feature: Option<String>,
        /// How long: 90s, 30m, 2h, 1d.
        #[arg(long, value_parser = parse_duration)]
        duration: chrono::Duration,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Notifications not yet accepted by their receiver.
    Outbox {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 2h, 1d"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!(
            "invalid duration {s:?}: expected e.g. 90s, 30m, 2h, 1d"
        )),
    }
}

pub async fn run(action: AlertsAction) -> Result<()> {
    let config = match &action {
        AlertsAction::List { config, .. }
        | AlertsAction::Ack { config, .. }
        | AlertsAction::Silence { config, .. }
        | AlertsAction::Outbox { config } => config.load()?,
    };
    telemetry::init_logging(&config.log);
    let store = Store::open_config(&config.store, 1).await?;
    match action {
        AlertsAction::List { status, json, .. } => list(&store, status.as_deref(), json).await,
        AlertsAction::Ack { id, .. } => {
            if !store.acknowledge(id).await? {
                bail!("no alert with id {id}");
            }
            println!("alert {id} acknowledged");
            Ok(())
        }
        AlertsAction::Silence {
            model,
            detector,
            feature,
            duration,
            comment,
            ..
        } => {
            let until = chrono::Utc::now() + duration;
            let (detector, feature) = (detector.as_deref(), feature.as_deref());
            let id = store
                .add_silence(&model, detector, feature, &comment, until)
                .await?;
            println!(
                "silence {id} on {model}/{}/{} until {}",
                detector.unwrap_or("*"),
                feature.unwrap_or("*"),
                until.to_rfc3339()
            );
            Ok(())
        }
        AlertsAction::Outbox { .. } => outbox(&store).await,
    }
}

async fn list(store: &Store, status: Option<&str>, json: bool) -> Result<()> {
    let status = match status {
        None => None,
        Some(s) => Some(
            Status::parse(s)
                .with_context(|| format!("unknown status {s:?}: pending, firing or resolved"))?,
        ),
    };
    let alerts = store.list_alerts(status).await?;
    if json {
        for a in &alerts {
            println!("{}", serde_json::to_string(a)?);
        }
        return Ok(());
    }
    println!(
        "{:>5}  {:<9} {:<8} {:<4} {:<40} {:>9}  {:<20}  flags",
        "id", "status", "severity", "inc", "dedup key", "windows", "fired at"
    );
    for a in &alerts {
        let mut flags = Vec::new();
        if a.acknowledged {
            flags.push("acked".to_string());
        }
        if a.silenced {
            flags.push("silenced".to_string());
        }
        // A grouped finding paged as its episode: that is the row to ack.
        if let Some(e) = &a.evidence.episode {
            flags.push(format!("in {e}"));
        }
        println!(
            "{:>5}  {:<9} {:<8} {:<4} {:<40} {:>9}  {:<20}  {}",
            a.id.unwrap_or_default(),
            a.status.as_str(),
            a.severity.as_str(),
            a.incident,
            a.dedup_key,
            format!("{}-{}", a.first_window_seq, a.last_window_seq),
            a.fired_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            flags.join(","),
        );
    }
    Ok(())
}

async fn outbox(store: &Store) -> Result<()> {
    let backlog = store.backlog().await?;
    if backlog.is_empty() {
        println!("no undelivered notifications");
    }
    for b in backlog {
        println!(
            "{}: {} pending, {} attempts so far, last error: {}",
            b.receiver,
            b.pending,
            b.max_attempts,
            b.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
