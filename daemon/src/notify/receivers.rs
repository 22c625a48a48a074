//! The wire formats of the receivers (see ../shared/docs/formats.md) and
//! their delivery.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Owner, PayloadFormat, ReceiverConfig, ReceiverKind, formats, summary};
use crate::detect::threat::Threat;
use crate::ingest::kafka::{ClientRole, KafkaConfig, client_config};
use crate::judge::{AlertState, Status, Transition};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("receiver {receiver}: secret not found: {reason}")]
    Secret { receiver: String, reason: String },
    #[error("receiver {receiver}: cannot build its client")]
    Client {
        receiver: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("http error: {0}")]
    Http(#[source] reqwest::Error),
    #[error("receiver answered {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("kafka error: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

/// PagerDuty's limits on `dedup_key` and `payload.summary`.
const PD_DEDUP_MAX: usize = 255;
const PD_SUMMARY_MAX: usize = 1024;

/// Where and how one receiver delivers.
enum Target {
    Alertmanager {
        url: String,
        repeat: Duration,
    },
    Pagerduty {
        url: String,
        routing_key: String,
    },
    Webhook {
        url: String,
        secret: Option<String>,
        format: PayloadFormat,
    },
    Kafka {
        producer: FutureProducer,
        topic: String,
        format: PayloadFormat,
    },
}

pub struct Receiver {
    pub name: String,
    target: Target,
    http: reqwest::Client,
}

impl std::fmt::Debug for Receiver {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, dest) = match &self.target {
            Target::Alertmanager { url, .. } => ("alertmanager", url.as_str()),
            Target::Pagerduty { url, .. } => ("pagerduty", url.as_str()),
            Target::Webhook { url, .. } => ("webhook", url.as_str()),
            Target::Kafka { topic, .. } => ("kafka", topic.as_str()),
        };
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("destination", &dest)
            .finish()
    }
}

/// A receiver's secret, as `config::read_secret` finds it.
fn read_secret(
    receiver: &str,
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<String>, NotifyError> {
    crate::config::read_secret(env, file).map_err(|reason| NotifyError::Secret {
        receiver: receiver.to_string(),
        reason,
    })
}

impl Receiver {
    /// Builds a receiver; a Kafka receiver uses the source's client settings.
    pub fn new(c: &ReceiverConfig, kafka: &KafkaConfig) -> Result<Self, NotifyError> {
        let client_err = |source: Box<dyn std::error::Error + Send + Sync>| NotifyError::Client {
            receiver: c.name.clone(),
            source,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(c.timeout_secs.max(1)))
            .user_agent(concat!("modelwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| client_err(Box::new(e)))?;
        let target = match &c.kind {
            ReceiverKind::Alertmanager(a) => Target::Alertmanager {
                url: a.url.trim_end_matches('/').to_string(),
                repeat: Duration::from_secs(a.repeat_secs.max(1)),
            },
            ReceiverKind::Pagerduty(p) => Target::Pagerduty {
                url: p.url.trim_end_matches('/').to_string(),
                routing_key: read_secret(
                    &c.name,
                    p.secret_env.as_deref(),
                    p.secret_file.as_deref(),
                )?
                .unwrap_or_default(),
            },
            ReceiverKind::Webhook(w) => Target::Webhook {
                url: w.url.trim_end_matches('/').to_string(),
                secret: read_secret(&c.name, w.secret_env.as_deref(), w.secret_file.as_deref())?,
                format: w.format,
            },
            ReceiverKind::Kafka(k) => {
                // The source's settings (credentials included) go only to
                // the source's own cluster.
                let settings = match &k.brokers {
                    None => client_config(kafka, ClientRole::Producer)
                        .map_err(|e| client_err(Box::new(e)))?,
                    Some(brokers) => {
                        let other = KafkaConfig {
                            brokers: brokers.clone(),
                            properties: k.properties.clone(),
                            sasl_password_env: None,
                            sasl_password_file: None,
                            ..kafka.clone()
                        };
                        client_config(&other, ClientRole::Producer)
                            .map_err(|e| client_err(Box::new(e)))?
                    }
                };
                Target::Kafka {
                    producer: settings.create().map_err(|e| client_err(Box::new(e)))?,
                    topic: k.topic.clone(),
                    format: k.format,
                }
            }
        };
        Ok(Self {
            name: c.name.clone(),
            target,
            http,
        })
    }

    /// How often firing alerts are re-sent, for receivers that forget them
    /// otherwise (Alertmanager).
    pub fn repeat_every(&self) -> Option<Duration> {
        match self.target {
            Target::Alertmanager { repeat, .. } => Some(repeat),
            _ => None,
        }
    }

    /// Delivers one transition, with the owner of the alert's model where
    /// one is configured; Ok only once the receiver accepted it.
    pub async fn send(
        &self,
        t: Transition,
        a: &AlertState,
        owner: Option<&Owner>,
    ) -> Result<(), NotifyError> {
        match &self.target {
            Target::Alertmanager { url, repeat } => {
                let body = alertmanager_body(&[(a, owner)], *repeat, Utc::now());
                self.post(&format!("{url}/api/v2/alerts"), &body, None)
                    .await
            }
            Target::Pagerduty { url, routing_key } => {
                self.post(url, &pagerduty_body(t, a, owner, routing_key), None)
                    .await
            }
            Target::Webhook {
                url,
                secret,
                format,
            } => {
                let body = formats::body(*format, t, a, owner);
                let signature = secret.as_deref().map(|s| sign(s, &body));
                self.post(url, &body, signature).await
            }
            Target::Kafka {
                producer,
                topic,
                format,
            } => {
                let body =
                    serde_json::to_vec(&formats::body(*format, t, a, owner)).unwrap_or_default();
                producer
                    .send(
                        FutureRecord::to(topic).key(&a.dedup_key).payload(&body),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| NotifyError::Kafka(e))
            }
        }
    }

    /// Alertmanager forgets alerts that are not re-sent: this posts every
    /// firing alert again, with a fresh `endsAt`.
    pub async fn repeat_firing(
        &self,
        alerts: &[(&AlertState, Option<&Owner>)],
    ) -> Result<(), NotifyError> {
        let Target::Alertmanager { url, repeat } = &self.target else {
            return Ok(());
        };
        if alerts.is_empty() {
            return Ok(());
        }
        let body = alertmanager_body(alerts, *repeat, Utc::now());
        self.post(&format!("{url}/api/v2/alerts"), &body, None)
            .await
    }

    async fn post(
        &self,
        url: &str,
        body: &Value,
        signature: Option<String>,
    ) -> Result<(), NotifyError> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(bytes);
        if let Some(sig) = signature {
            req = req.header("x-modelwatch-signature", format!("sha256={sig}"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| NotifyError::Http(e.without_url()))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let body: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Err(NotifyError::Rejected {
                status: status.as_u16(),
                body,
            })
        }
    }
}

/// Prometheus Alertmanager API v2: a list of alerts; a firing alert's
/// `endsAt` lies a few repeat intervals ahead, a resolved one's in the past.
pub fn alertmanager_body(
    alerts: &[(&AlertState, Option<&Owner>)],
    repeat: Duration,
    now: DateTime<Utc>,
) -> Value {
    let ahead = chrono::Duration::from_std(repeat * 4).unwrap_or(chrono::Duration::minutes(4));
    Value::Array(
        alerts
            .iter()
            .map(|&(a, owner)| {
                let ends = match a.status {
                    Status::Resolved => a.resolved_at.unwrap_or(now),
                    _ => now + ahead,
                };
                let mut body = json!({
                    "labels": {
                        "alertname": format!("modelwatch_{}", a.detector),
                        "model": a.model,
                        "model_version": a.model_version,
                        "detector": a.detector,
                        "feature": a.feature,
                        "severity": a.evidence.paged_severity.unwrap_or(a.severity).as_str(),
                        "dedup_key": a.dedup_key,
                    },
                    "annotations": {
                        "summary": summary(a),
                        "severity_now": a.severity.as_str(),
                        "p_value": format!("{:e}", a.p_value),
                        "threshold": format!("{:e}", a.threshold),
                        "trace_id": a.trace_id.clone().unwrap_or_default(),
                        "evidence": serde_json::to_string(&a.evidence).unwrap_or_default(),
                    },
                    "startsAt": a.fired_at.unwrap_or(a.first_seen_at).to_rfc3339(),
                    "endsAt": ends.to_rfc3339(),
                    "generatorURL": a.evidence.link,
                });
                // Security signals: routable by threat, ids for the SOC.
                // The label is the threat the alert opened with, so that
                // its label set stays the same to the resolve; the
                // annotations name every threat an episode's findings add.
                if let Some(threat) = a.evidence.threat {
                    body["labels"]["threat"] = json!(threat.as_str());
                }
                let threats = a.threats();
                if !threats.is_empty() {
                    let list = |f: fn(&Threat) -> Vec<&'static str>| {
                        threats.iter().flat_map(f).collect::<Vec<_>>().join(", ")
                    };
                    body["annotations"]["threats"] = json!(list(|t| vec![t.as_str()]));
                    body["annotations"]["atlas"] = json!(list(|t| t.atlas()));
                    body["annotations"]["owasp"] = json!(list(|t| t.owasp().to_vec()));
                    body["annotations"]["description"] = json!(list(|t| vec![t.description()]));
                }
                if let Some(o) = owner {
                    if let Some(team) = &o.team {
                        body["labels"]["team"] = json!(team);
                    }
                    for (k, v) in &o.labels {
                        body["labels"][k] = json!(v);
                    }
                    if let Some(url) = &o.runbook_url {
                        body["annotations"]["runbook_url"] = json!(url);
                    }
                }
                body
            })
            .collect(),
    )
}

/// PagerDuty's dedup key: the alert's key and incident, hashed when longer
/// than PagerDuty accepts so that trigger and resolve still match.
pub fn pagerduty_dedup_key(a: &AlertState) -> String {
    let key = format!("{}#{}", a.dedup_key, a.incident);
    if key.len() <= PD_DEDUP_MAX {
        key
    } else {
        let digest = Sha256::digest(key.as_bytes());
        format!("modelwatch-{}", hex(&digest))
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

/// PagerDuty Events API v2: trigger and resolve share the dedup key.
pub fn pagerduty_body(
    t: Transition,
    a: &AlertState,
    owner: Option<&Owner>,
    routing_key: &str,
) -> Value {
    let action = match t {
        Transition::Fired => "trigger",
        Transition::Resolved => "resolve",
    };
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": pagerduty_dedup_key(a),
        "client": "modelwatch",
        "payload": {
            "summary": truncate(&summary(a), PD_SUMMARY_MAX),
            "source": format!("modelwatch/{}", a.model),
            "severity": a.severity.as_str(),
            "timestamp": a.fired_at.unwrap_or(a.first_seen_at).to_rfc3339(),
            "component": a.model,
            "group": a.model_version,
            "class": a.detector,
            "custom_details": {
                "feature": a.feature,
                "p_value": a.p_value,
                "threshold": a.threshold,
                "statistic": a.score,
                "trace_id": a.trace_id,
                "threat": formats::threat_fields(a),
                "owner": owner,
                "evidence": a.evidence,
            },
        },
    });
    let mut links = Vec::new();
    if !a.evidence.link.is_empty() {
        links.push(json!({"href": a.evidence.link, "text": "modelwatch dashboard"}));
    }
    if let Some(url) = owner.and_then(|o| o.runbook_url.as_ref()) {
        links.push(json!({"href": url, "text": "runbook"}));
    }
    if !links.is_empty() {
        body["links"] = Value::Array(links);
    }
    body
}

/// Hex HMAC-SHA256 of the exact body bytes that are sent.
pub fn sign(secret: &str, body: &Value) -> String {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes keys of any length");
    mac.update(&bytes);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::judge::Severity;
    use crate::judge::lifecycle::Evidence;

    pub(crate) fn alert(feature: &str, severity: Severity) -> AlertState {
        let t = Utc::now();
        AlertState {
            id: Some(1),
            dedup_key: format!("m/feature_drift/{feature}"),
            incident: 2,
            model: "m".into(),
            model_version: "v1".into(),
            detector: "feature_drift".into(),
            feature: feature.into(),
            severity,
            status: Status::Firing,
            consecutive_bad: 2,
            consecutive_clean: 0,
            consecutive_unscored: 0,
            score: 0.4,
            p_value: 1e-9,
            threshold: 1e-3,
            first_window_seq: 3,
            last_window_seq: 4,
            window_start: t,
            window_end: t,
            first_seen_at: t,
            fired_at: Some(t),
            last_seen_at: t,
            resolved_at: None,
            acknowledged: false,
            silenced: false,
            trace_id: None,
            evidence: Evidence {
                test: "ks".into(),
                link: "https://grafana/d/x".into(),
                ..Evidence::default()
            },
        }
    }

    #[test]
    fn pagerduty_limits_are_kept() {
        let long = "f".repeat(3000);
        let a = alert(&long, Severity::Warning);
        let body = pagerduty_body(Transition::Fired, &a, None, "key");
        assert_eq!(
            body["payload"]["summary"].as_str().unwrap().chars().count(),
            PD_SUMMARY_MAX
        );
        let dedup = body["dedup_key"].as_str().unwrap();
        assert!(dedup.len() <= PD_DEDUP_MAX && dedup.starts_with("modelwatch-"));
        let resolve = pagerduty_body(Transition::Resolved, &a, None, "key");
        assert_eq!(
            resolve["dedup_key"], body["dedup_key"],
            "resolve matches trigger"
        );
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(body["links"][0]["href"], "https://grafana/d/x");
        let short = pagerduty_body(
            Transition::Fired,
            &alert("x", Severity::Critical),
            None,
            "key",
        );
        assert_eq!(short["dedup_key"], "m/feature_drift/x#2");
        assert_eq!(short["payload"]["severity"], "critical");
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = json!({"a": 1});
        assert_eq!(sign("k", &body), sign("k", &body));
        assert_ne!(sign("k", &body), sign("other", &body));
    }

    #[test]
    fn alertmanager_ends_ahead_when_firing_and_in_the_past_when_resolved() {
        let now = Utc::now();
        let firing = alert("x", Severity::Warning);
        let body = alertmanager_body(&[(&firing, None)], Duration::from_secs(60), now);
        assert_eq!(
            body[0]["endsAt"],
            (now + chrono::Duration::minutes(4)).to_rfc3339()
        );
        let mut resolved = firing.clone();
        resolved.status = Status::Resolved;
        resolved.resolved_at = Some(now - chrono::Duration::seconds(5));
        let body = alertmanager_body(&[(&resolved, None)], Duration::from_secs(60), now);
        assert_eq!(
            body[0]["endsAt"],
            resolved.resolved_at.unwrap().to_rfc3339()
        );
    }
}
