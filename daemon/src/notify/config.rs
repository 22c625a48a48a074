//! Where alert transitions are delivered, and how failed deliveries retry.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::judge::Severity;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The receivers; each transition is queued for every receiver whose
    /// minimum severity and labels it matches.
    pub receivers: Vec<ReceiverConfig>,
    /// First retry delay of a failed delivery; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest delay between retries.
    pub retry_max_secs: u64,
    /// When a finite source ends, wait this long for pending deliveries
    /// before exiting (they stay queued for the next start).
    pub drain_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            receivers: Vec::new(),
            retry_base_ms: 500,
            retry_max_secs: 60,
            drain_secs: 10,
        }
    }
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for r in &self.receivers {
            if !names.insert(r.name.as_str()) {
                return Err(format!("notify.receivers: name {:?} used twice", r.name));
            }
            if let ReceiverKind::Pagerduty(p) = &r.kind {
                if p.secret_env.is_none() && p.secret_file.is_none() {
                    return Err(format!(
                        "notify.receivers.{}: the routing key needs secret_env or secret_file",
                        r.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One receiver: the settings every kind shares, then `kind` and the
/// settings of that kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReceiverConfig {
    /// Unique name; notifications are queued per receiver.
    pub name: String,
    /// Lowest severity delivered: `info`, `warning` or `critical`.
    #[serde(default)]
    pub min_severity: Severity,
    /// Deliver only alerts whose labels (`model`, `model_version`,
    /// `detector`, `feature`, `severity`, and `threat` for security
    /// signals: `evasion`, `tampering`, `poisoning`) equal these.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Request timeout in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The receiver kind and its own settings; unknown fields of a kind
    /// are errors there.
    #[serde(flatten)]
    pub kind: ReceiverKind,
}

const fn default_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ReceiverKind {
    /// Prometheus Alertmanager, API v2.
    Alertmanager(AlertmanagerReceiver),
    /// PagerDuty Events API v2.
    Pagerduty(PagerdutyReceiver),
    /// Any HTTP endpoint: JSON body signed with HMAC-SHA256.
    Webhook(WebhookReceiver),
    /// A Kafka topic of alert transitions, written with the source's
    /// client settings (`source.kafka.properties`) on the source's cluster.
    Kafka(KafkaReceiver),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerReceiver {
    /// Alertmanager base URL (`http://alertmanager:9093`).
    pub url: String,
    /// Re-send firing alerts this often, as Prometheus does.
    #[serde(default = "default_repeat_secs")]
    pub repeat_secs: u64,
}

const fn default_repeat_secs() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerdutyReceiver {
    /// Events API URL.
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// The routing key, from this environment variable ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// ... or from this file. Secrets are never taken from the config itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
}

fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiver {
    /// Where the JSON body is posted.
    pub url: String,
    /// The HMAC signing secret, from this environment variable ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// ... or from this file; without either, bodies are not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// The body's format.
    #[serde(default)]
    pub format: PayloadFormat,
}

/// What a webhook posts or a Kafka receiver writes for each transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// modelwatch's own JSON: `{version, transition, summary, alert}`.
    #[default]
    Native,
    /// An OCSF Detection Finding (class 2004), for security data lakes and
    /// SIEMs; security signals carry their MITRE ATLAS techniques.
    Ocsf,
    /// A Falco event (`time`, `rule`, `priority`, `output`, `source`,
    /// `tags`, `output_fields`), as Falcosidekick accepts on its input.
    Falco,
}

/// Who owns a model, put on every notification about it: receivers route
/// on `team` and `labels` (`labels = { team = "fraud" }`), and every
/// payload carries them and links the runbook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Owner {
    /// The team that answers for the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The runbook to follow when it pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook_url: Option<String>,
    /// More labels (`tier = "1"`, `service = "checkout"`); names as
    /// Prometheus labels, not one of the alert's own.
    pub labels: BTreeMap<String, String>,
}

/// The labels every alert has; a model's own labels may not shadow them.
pub const ALERT_LABELS: [&str; 9] = [
    "alertname",
    "dedup_key",
    "model",
    "model_version",
    "detector",
    "feature",
    "severity",
    "threat",
    "team",
];

impl Owner {
    pub fn is_empty(&self) -> bool {
        self.team.is_none() && self.runbook_url.is_none() && self.labels.is_empty()
    }

    pub fn validate(&self, model: &str) -> Result<(), String> {
        for name in self.labels.keys() {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || ALERT_LABELS.contains(&name.as_str()) || name.starts_with("__") {
                return Err(format!(
                    "models.{model}.owner.labels: {name:?} must be a label name ([a-zA-Z_][a-zA-Z0-9_]*) other than {}",
                    ALERT_LABELS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaReceiver {
    /// Topic of the transitions, keyed by dedup key.
    pub topic: String,
    /// Bootstrap servers; default: the source's, with its
    /// `source.kafka.properties`. Another cluster gets none of them, only
    /// `properties` below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// librdkafka properties for a receiver on another cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The messages' format.
    #[serde(default)]
    pub format: PayloadFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn each_kind_takes_its_own_fields_only() {
        let ok = parse(
            "[[receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://am\"\nmin_severity = \"warning\"\n",
        )
        .unwrap();
        assert_eq!(ok.receivers[0].min_severity, Severity::Warning);
        assert!(
            matches!(&ok.receivers[0].kind, ReceiverKind::Alertmanager(a) if a.repeat_secs == 60)
        );
        // A Kafka receiver has no url, an Alertmanager one no topic.
        let err =
            parse("[[receivers]]\nname = \"k\"\nkind = \"kafka\"\ntopic = \"t\"\nurl = \"x\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        let err = parse(
            "[[receivers]]\nname = \"a\"\nkind = \"alertmanager\"\nurl = \"x\"\ntopic = \"t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("topic"), "{err}");
        let err = parse("[[receivers]]\nname = \"a\"\nkind = \"alertmanager\"\n").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        let err =
            parse("[[receivers]]\nname = \"a\"\nkind = \"pager\"\nurl = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("pager"), "{err}");
    }

    #[test]
    fn severities_are_checked_at_parse_time() {
        let err = parse("[[receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"x\"\nmin_severity = \"high\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("high"), "{err}");
    }

    #[test]
    fn a_pagerduty_receiver_needs_its_routing_key() {
        let c = parse("[[receivers]]\nname = \"pd\"\nkind = \"pagerduty\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("secret_env"));
        let c = parse("[[receivers]]\nname = \"pd\"\nkind = \"pagerduty\"\nsecret_env = \"K\"\n")
            .unwrap();
        c.validate().unwrap();
    }
}
