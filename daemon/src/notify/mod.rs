//! Stage 7: telling people. Alert transitions are queued in the store's
//! outbox by `judge::record_window`; the `Dispatcher` delivers them to the
//! configured receivers (Alertmanager, PagerDuty, signed webhooks, Kafka),
//! in modelwatch's own JSON, as OCSF findings or as Falco events.

mod config;
mod dispatch;
pub mod formats;
pub mod receivers;

use crate::judge::{AlertState, Severity, Transition};
pub use config::{
    ALERT_LABELS, AlertmanagerReceiver, KafkaReceiver, NotifyConfig, Owner, PagerdutyReceiver,
    PayloadFormat, ReceiverConfig, ReceiverKind, WebhookReceiver,
};
pub use dispatch::Dispatcher;
pub use receivers::{NotifyError, Receiver};

/// Which receivers an alert goes to: severity at least the receiver's
/// minimum, and every label the receiver names equal.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(String, Severity, Vec<(String, String)>)>,
    /// Each model's owner, by model name.
    owners: std::sync::Arc<std::collections::BTreeMap<String, Owner>>,
}

impl Router {
    pub fn new(receivers: &[ReceiverConfig]) -> Self {
        Self {
            routes: receivers
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.min_severity,
                        r.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                })
                .collect(),
            owners: Default::default(),
        }
    }

    /// The models' owners, whose team and labels receivers may match.
    pub fn with_owners(mut self, owners: impl IntoIterator<Item = (String, Owner)>) -> Self {
        let owners = owners.into_iter().filter(|(_, o)| !o.is_empty()).collect();
        self.owners = std::sync::Arc::new(owners);
        self
    }

    pub fn owner(&self, model: &str) -> Option<&Owner> {
        self.owners.get(model)
    }

    pub fn route(&self, a: &AlertState) -> Vec<String> {
        let owner = self.owner(&a.model);
        self.routes
            .iter()
            .filter(|(_, min, labels)| {
                a.severity >= *min && labels.iter().all(|(k, v)| matches(a, owner, k, v))
            })
            .map(|(name, _, _)| name.clone())
            .collect()
    }
}

/// Whether the alert carries label `key` = `value`. An episode is routed on
/// every threat its findings are evidence for.
fn matches(a: &AlertState, owner: Option<&Owner>, key: &str, value: &str) -> bool {
    match key {
        "threat" => a.threats().iter().any(|t| t.as_str() == value),
        _ => label(a, owner, key) == Some(value),
    }
}

/// The labels an alert can be routed and matched on: its own, then its
/// model owner's.
pub fn label<'a>(a: &'a AlertState, owner: Option<&'a Owner>, key: &str) -> Option<&'a str> {
    match key {
        "model" => Some(&a.model),
        "model_version" => Some(&a.model_version),
        "detector" => Some(&a.detector),
        "feature" => Some(&a.feature),
        "severity" => Some(a.severity.as_str()),
        // Security signals only: a SOC receiver can take just those.
        "threat" => a.evidence.threat.map(|t| t.as_str()),
        "team" => owner.and_then(|o| o.team.as_deref()),
        _ => owner.and_then(|o| o.labels.get(key)).map(String::as_str),
    }
}

/// One line a person reads, for the console and the logs.
pub fn summary(a: &AlertState) -> String {
    if let Some(m) = &a.evidence.members {
        return episode_summary(a, m);
    }
    format!(
        "{} {} on model {}{} ({}: p={:.3e} < {:.3e}, windows {}-{})",
        a.detector.replace('_', " "),
        a.feature,
        a.model,
        if a.model_version.is_empty() {
            String::new()
        } else {
            format!(" {}", a.model_version)
        },
        a.evidence.test,
        a.p_value,
        a.threshold,
        a.first_window_seq,
        a.last_window_seq,
    )
}

/// An episode: its model, how many findings, the strongest of them.
fn episode_summary(a: &AlertState, m: &crate::judge::episode::Members) -> String {
    let strongest = a
        .evidence
        .top_features
        .iter()
        .map(|(f, p)| format!("{f} p={p:.3e}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} on model {}{}: {} finding{} ({}), windows {}-{}",
        match a.evidence.threat {
            Some(t) => format!("{} episode", t.as_str()),
            None => "episode".to_string(),
        },
        a.model,
        if a.model_version.is_empty() {
            String::new()
        } else {
            format!(" {}", a.model_version)
        },
        m.joined,
        if m.joined == 1 { "" } else { "s" },
        strongest,
        a.first_window_seq,
        a.last_window_seq,
    )
}

/// Prints a transition as one line on stdout (interactive commands).
pub fn print_transition(a: &AlertState, t: Transition) {
    println!(
        "ALERT {:<8} {:<8} model={} version={} window={} detector={} feature={} statistic={:.4} p={:.3e} threshold={:.3e}{}",
        t.as_str(),
        a.severity.as_str(),
        a.model,
        if a.model_version.is_empty() {
            "-"
        } else {
            &a.model_version
        },
        a.last_window_seq,
        a.detector,
        a.feature,
        a.score,
        a.p_value,
        a.threshold,
        match a.threats().as_slice() {
            [] => String::new(),
            threats => format!(
                " threat={}",
                threats
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        },
    );
    if t == Transition::Fired {
        for f in a.evidence.members.iter().flat_map(|m| &m.findings) {
            println!(
                "      finding detector={} feature={} window={} severity={} p={:.3e}",
                f.detector,
                f.feature,
                f.window_seq,
                f.severity.as_str(),
                f.p_value
            );
        }
        for e in &a.evidence.examples {
            println!("      e.g. {e}");
        }
    }
}

pub fn log_transition(a: &AlertState, t: Transition) {
    tracing::warn!(
        transition = t.as_str(),
        dedup_key = %a.dedup_key,
        incident = a.incident,
        severity = a.severity.as_str(),
        window = a.last_window_seq,
        p_value = a.p_value,
        silenced = a.silenced,
        "alert {}",
        t.as_str()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(name: &str, min: Severity, labels: &[(&str, &str)]) -> ReceiverConfig {
        ReceiverConfig {
            name: name.into(),
            min_severity: min,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_secs: 5,
            kind: ReceiverKind::Webhook(WebhookReceiver {
                url: "http://x".into(),
                secret_env: None,
                secret_file: None,
                format: PayloadFormat::Native,
            }),
        }
    }

    #[test]
    fn routes_by_severity_and_labels() {
        let router = Router::new(&[
            receiver("all", Severity::Info, &[]),
            receiver("pager", Severity::Critical, &[]),
            receiver(
                "fraud-team",
                Severity::Warning,
                &[("model", "m"), ("detector", "feature_drift")],
            ),
            receiver("other-team", Severity::Info, &[("model", "other")]),
        ]);
        let warning = receivers::tests::alert("x", Severity::Warning);
        assert_eq!(router.route(&warning), vec!["all", "fraud-team"]);
        let critical = receivers::tests::alert("x", Severity::Critical);
        assert_eq!(router.route(&critical), vec!["all", "pager", "fraud-team"]);
        let info = receivers::tests::alert("x", Severity::Info);
        assert_eq!(router.route(&info), vec!["all"]);

        let soc = Router::new(&[receiver("soc", Severity::Info, &[("threat", "evasion")])]);
        assert!(soc.route(&warning).is_empty(), "not a security signal");
        let mut evasion = warning.clone();
        evasion.evidence.threat = Some(crate::detect::threat::Threat::Evasion);
        assert_eq!(soc.route(&evasion), vec!["soc"]);

        // A model's owner: its team and labels route like the alert's own.
        let owned = Router::new(&[
            receiver("fraud-team", Severity::Info, &[("team", "fraud")]),
            receiver("tier-1", Severity::Info, &[("tier", "1")]),
        ]);
        assert!(owned.route(&warning).is_empty(), "no owner configured");
        let owner = Owner {
            team: Some("fraud".into()),
            runbook_url: None,
            labels: [("tier".to_string(), "1".to_string())].into(),
        };
        let owned = owned.with_owners([(warning.model.clone(), owner)]);
        assert_eq!(owned.route(&warning), vec!["fraud-team", "tier-1"]);
    }

    #[test]
    fn owner_labels_must_not_shadow_the_alerts_own() {
        let with = |name: &str| Owner {
            labels: [(name.to_string(), "x".to_string())].into(),
            ..Owner::default()
        };
        with("tier").validate("m").unwrap();
        for bad in [
            "severity",
            "team",
            "alertname",
            "dedup_key",
            "1tier",
            "ti-er",
            "__name",
            "",
        ] {
            assert!(with(bad).validate("m").is_err(), "{bad:?}");
        }
    }
}
