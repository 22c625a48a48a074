//! The bodies a webhook or Kafka receiver sends, by `format`: modelwatch's
//! own JSON, an OCSF Detection Finding for security data lakes and SIEMs,
//! or a Falco event for Falcosidekick. All go through the outbox, so each
//! transition is delivered once per receiver whatever the format.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::{Owner, PayloadFormat, summary};
use crate::judge::{AlertState, Severity, Transition};

/// The OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.5.0";
const DETECTION_FINDING: u32 = 2004;
/// The OCSF analytic type "Statistical": every finding is a test's verdict.
const STATISTICAL: u32 = 3;

pub fn body(format: PayloadFormat, t: Transition, a: &AlertState, owner: Option<&Owner>) -> Value {
    match format {
        PayloadFormat::Native => native(t, a, owner),
        PayloadFormat::Ocsf => ocsf_finding(t, a, owner),
        PayloadFormat::Falco => falco_event(t, a, owner),
    }
}

/// modelwatch's own message: the transition, the whole alert, and the
/// model's owner where one is configured.
pub fn native(t: Transition, a: &AlertState, owner: Option<&Owner>) -> Value {
    let mut body =
        json!({"version": 1, "transition": t.as_str(), "summary": summary(a), "alert": a});
    if let Some(o) = owner {
        body["owner"] = json!(o);
    }
    body
}

/// When the transition happened: firing, or resolving.
fn at(t: Transition, a: &AlertState) -> DateTime<Utc> {
    match t {
        Transition::Fired => a.fired_at.unwrap_or(a.first_seen_at),
        Transition::Resolved => a.resolved_at.unwrap_or(a.last_seen_at),
    }
}

/// The security signal's ATLAS techniques, OWASP ids and description, for
/// the receivers that show them as fields.
pub fn threat_fields(a: &AlertState) -> Option<Value> {
    let threat = a.evidence.threat?;
    Some(json!({
        "name": threat.as_str(),
        "description": threat.description(),
        "atlas": threat.atlas(),
        "owasp": threat.owasp(),
    }))
}

/// An OCSF Detection Finding (class 2004): created when the alert fires,
/// closed when it resolves, under one `finding_info.uid` per incident.
pub fn ocsf_finding(t: Transition, a: &AlertState, owner: Option<&Owner>) -> Value {
    let (activity_id, activity, status_id, status) = match t {
        Transition::Fired => (1, "Create", 1, "New"),
        Transition::Resolved => (3, "Close", 4, "Resolved"),
    };
    let (severity_id, severity) = match a.severity {
        Severity::Info => (2, "Low"),
        Severity::Warning => (3, "Medium"),
        Severity::Critical => (5, "Critical"),
    };
    let finding = finding_info(a);
    let mut labels = vec![format!("feature:{}", a.feature)];
    if !a.model_version.is_empty() {
        labels.push(format!("version:{}", a.model_version));
    }
    if let Some(o) = owner {
        labels.extend(o.team.iter().map(|t| format!("team:{t}")));
        labels.extend(o.labels.iter().map(|(k, v)| format!("{k}:{v}")));
    }
    let mut event = json!({
        "activity_id": activity_id,
        "activity_name": activity,
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "type_uid": DETECTION_FINDING * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "time": at(t, a).timestamp_millis(),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "message": summary(a),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "modelwatch", "vendor_name": "modelwatch", "version": env!("CARGO_PKG_VERSION")},
            // One per event: delivery is at least once, so a consumer can
            // drop a repeat.
            "uid": format!("{}#{}/{}", a.dedup_key, a.incident, t.as_str()),
        },
        "finding_info": finding,
        "resources": [{"uid": a.model, "name": a.model, "type": "AI Model", "version": a.model_version, "labels": labels}],
        "evidences": evidences(a),
        "unmapped": {"dedup_key": a.dedup_key},
    });
    // Absent rather than null: strict consumers refuse nulls.
    if let Some(trace) = &a.trace_id {
        event["metadata"]["correlation_uid"] = json!(trace);
    }
    if let Some(threat) = a.evidence.threat {
        event["unmapped"]["owasp"] = json!(threat.owasp());
    }
    if let Some(url) = owner.and_then(|o| o.runbook_url.as_ref()) {
        event["remediation"] = json!({"desc": "follow the model's runbook", "references": [url]});
    }
    event
}

/// The statistic behind the finding and, for an episode, one entry per
/// finding it lists.
fn evidences(a: &AlertState) -> Value {
    let headline = json!({"name": a.evidence.test, "data": {
        "statistic": a.score,
        "p_value": a.p_value,
        "threshold": a.threshold,
        "windows": [a.first_window_seq, a.last_window_seq],
        "examples": a.evidence.examples,
        "sample_request_ids": a.evidence.sample_request_ids,
    }});
    let findings = a
        .evidence
        .members
        .iter()
        .flat_map(|m| &m.findings)
        .map(|f| {
            json!({"name": format!("{}/{}", f.detector, f.feature), "data": {
                "dedup_key": f.dedup_key,
                "severity": f.severity.as_str(),
                "statistic": f.statistic,
                "p_value": f.p_value,
                "threshold": f.threshold,
                "window": f.window_seq,
            }})
        });
    std::iter::once(headline).chain(findings).collect()
}

/// What was found: one uid per incident, the analytic that found it, and
/// for security signals the ATLAS techniques it is evidence for.
fn finding_info(a: &AlertState) -> Value {
    let mut finding = json!({
        "uid": format!("{}#{}", a.dedup_key, a.incident),
        "title": summary(a),
        "desc": a.evidence.threat.map_or_else(|| summary(a), |th| th.description().to_string()),
        "types": [a.detector],
        "first_seen_time": a.first_seen_at.timestamp_millis(),
        "last_seen_time": a.last_seen_at.timestamp_millis(),
        "analytic": {
            "uid": a.detector,
            "name": a.detector,
            "type_id": STATISTICAL,
            "type": "Statistical",
            "desc": a.evidence.method,
        },
    });
    if !a.evidence.link.is_empty() {
        finding["src_url"] = json!(a.evidence.link);
    }
    let threats = a.threats();
    if !threats.is_empty() {
        finding["attacks"] = threats
            .iter()
            .flat_map(|t| t.techniques())
            .map(|tech| match tech.parent {
                Some((id, name)) => json!({
                    "technique": {"uid": id, "name": name},
                    "sub_technique": {"uid": tech.id, "name": tech.name},
                    "version": "ATLAS",
                }),
                None => {
                    json!({"technique": {"uid": tech.id, "name": tech.name}, "version": "ATLAS"})
                }
            })
            .collect();
    }
    finding
}

/// A Falco event, as Falcosidekick takes it on its input: the rule is the
/// detector, the output the alert's summary; fields are `modelwatch.*`.
pub fn falco_event(t: Transition, a: &AlertState, owner: Option<&Owner>) -> Value {
    let priority = match (t, a.severity) {
        (Transition::Resolved, _) => "Informational",
        (_, Severity::Critical) => "Critical",
        (_, Severity::Warning) => "Warning",
        (_, Severity::Info) => "Notice",
    };
    let mut tags = vec!["modelwatch".to_string(), a.detector.clone()];
    let mut fields = Map::new();
    let mut field = |k: &str, v: Value| {
        fields.insert(format!("modelwatch.{k}"), v);
    };
    field("transition", json!(t.as_str()));
    field("model", json!(a.model));
    field("model_version", json!(a.model_version));
    field("detector", json!(a.detector));
    field("feature", json!(a.feature));
    field("statistic", json!(a.score));
    field("p_value", json!(a.p_value));
    field("threshold", json!(a.threshold));
    field("dedup_key", json!(a.dedup_key));
    field("incident", json!(a.incident));
    field(
        "windows",
        json!(format!("{}-{}", a.first_window_seq, a.last_window_seq)),
    );
    field("trace_id", json!(a.trace_id));
    field("link", json!(a.evidence.link));
    field("examples", json!(a.evidence.examples.join("; ")));
    if let Some(m) = &a.evidence.members {
        // Falco's fields are scalars: the findings as one line.
        let findings: Vec<String> = m
            .findings
            .iter()
            .map(|f| format!("{}/{} p={:.3e}", f.detector, f.feature, f.p_value))
            .collect();
        field("findings", json!(findings.join("; ")));
        field("findings_total", json!(m.joined));
    }
    if let Some(o) = owner {
        field("team", json!(o.team));
        field("runbook_url", json!(o.runbook_url));
        for (k, v) in &o.labels {
            field(&format!("label.{k}"), json!(v));
        }
        tags.extend(o.team.iter().map(|t| format!("team:{t}")));
    }
    if let Some(threat) = a.evidence.threat {
        field("threat", json!(threat.as_str()));
    }
    let threats = a.threats();
    if !threats.is_empty() {
        let atlas: Vec<&str> = threats.iter().flat_map(|t| t.atlas()).collect();
        let owasp: Vec<&str> = threats
            .iter()
            .flat_map(|t| t.owasp().iter().copied())
            .collect();
        field("atlas", json!(atlas.join(",")));
        field("owasp", json!(owasp.join(",")));
        tags.extend(threats.iter().map(|t| t.as_str().to_string()));
        tags.extend(atlas.iter().chain(&owasp).map(|id| id.to_string()));
    }
    let time = at(t, a);
    json!({
        "time": time.to_rfc3339_opts(SecondsFormat::Nanos, true),
        // Falco has no resolve: the end of an incident is an event of its
        // own rule, so Falcosidekick's outputs can tell it from a page.
        "rule": match t {
            Transition::Fired => format!("modelwatch {}", a.detector.replace('_', " ")),
            Transition::Resolved => format!("modelwatch {} resolved", a.detector.replace('_', " ")),
        },
        "priority": priority,
        "output": format!("{} {}: {} ({})", time.to_rfc3339_opts(SecondsFormat::Millis, true), priority, summary(a), t.as_str()),
        "source": "modelwatch",
        "tags": tags,
        "output_fields": fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::threat::Threat;
    use crate::notify::receivers::tests::alert;

    fn evasion() -> AlertState {
        let mut a = alert("embedding", Severity::Critical);
        a.detector = "out_of_distribution".into();
        a.evidence.threat = Some(Threat::Evasion);
        a.evidence.examples = vec!["req-9 client=c-3 distance=9.1".into()];
        a
    }

    #[test]
    fn ocsf_findings_open_and_close_one_incident_with_its_techniques() {
        let a = evasion();
        let open = ocsf_finding(Transition::Fired, &a, None);
        let close = ocsf_finding(Transition::Resolved, &a, None);
        assert_eq!(
            (open["class_uid"].as_u64(), open["type_uid"].as_u64()),
            (Some(2004), Some(200401))
        );
        assert_eq!(close["type_uid"].as_u64(), Some(200403));
        assert_eq!(open["finding_info"]["uid"], close["finding_info"]["uid"]);
        assert_eq!(
            (open["status_id"].as_u64(), close["status_id"].as_u64()),
            (Some(1), Some(4))
        );
        assert_eq!(open["severity_id"].as_u64(), Some(5));
        assert_ne!(open["metadata"]["uid"], close["metadata"]["uid"]);
        assert!(
            open["metadata"].get("correlation_uid").is_none(),
            "no trace: absent, not null"
        );
        assert_eq!(open["unmapped"]["owasp"][0], "ML01");
        let attacks = open["finding_info"]["attacks"].as_array().unwrap();
        let ids: Vec<&str> = attacks
            .iter()
            .map(|x| {
                x["sub_technique"]["uid"]
                    .as_str()
                    .or(x["technique"]["uid"].as_str())
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, Threat::Evasion.atlas());
        assert_eq!(attacks[1]["technique"]["uid"], "AML.T0043");
        assert_eq!(
            open["evidences"][0]["data"]["examples"][0],
            "req-9 client=c-3 distance=9.1"
        );
        // A drift alert is a finding too, without attacks.
        let drift = ocsf_finding(Transition::Fired, &alert("x1", Severity::Warning), None);
        assert!(drift["finding_info"].get("attacks").is_none());
        assert_eq!(drift["severity_id"].as_u64(), Some(3));
    }

    #[test]
    fn falco_events_carry_priority_tags_and_fields() {
        let a = evasion();
        let fired = falco_event(Transition::Fired, &a, None);
        assert_eq!(fired["priority"], "Critical");
        assert_eq!(fired["source"], "modelwatch");
        assert_eq!(fired["rule"], "modelwatch out of distribution");
        let tags: Vec<&str> = fired["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            tags.contains(&"AML.T0015") && tags.contains(&"ML01") && tags.contains(&"evasion"),
            "{tags:?}"
        );
        let fields = fired["output_fields"].as_object().unwrap();
        assert_eq!(
            fields["modelwatch.atlas"],
            "AML.T0015,AML.T0043.001,AML.T0042"
        );
        assert!(
            fields.values().all(|v| !v.is_object() && !v.is_array()),
            "scalars only: {fields:?}"
        );
        // RFC 3339 with nanoseconds, as Falco writes it.
        let time = fired["time"].as_str().unwrap();
        assert!(
            DateTime::parse_from_rfc3339(time).is_ok() && time.len() == 30,
            "{time}"
        );
        let resolved = falco_event(Transition::Resolved, &a, None);
        assert_eq!(resolved["priority"], "Informational");
        assert_eq!(resolved["rule"], "modelwatch out of distribution resolved");
    }

    #[test]
    fn every_format_carries_the_models_owner() {
        let a = evasion();
        let owner = Owner {
            team: Some("fraud".into()),
            runbook_url: Some("https://runbooks/fraud".into()),
            labels: [("tier".to_string(), "1".to_string())].into(),
        };
        let o = Some(&owner);
        assert_eq!(native(Transition::Fired, &a, o)["owner"]["team"], "fraud");
        assert!(native(Transition::Fired, &a, None).get("owner").is_none());
        let ocsf = ocsf_finding(Transition::Fired, &a, o);
        assert_eq!(
            ocsf["remediation"]["references"][0],
            "https://runbooks/fraud"
        );
        let labels = ocsf["resources"][0]["labels"].as_array().unwrap();
        assert!(labels.contains(&json!("team:fraud")) && labels.contains(&json!("tier:1")));
        let falco = falco_event(Transition::Fired, &a, o);
        assert_eq!(falco["output_fields"]["modelwatch.team"], "fraud");
        assert_eq!(falco["output_fields"]["modelwatch.label.tier"], "1");
        assert!(
            falco["tags"]
                .as_array()
                .unwrap()
                .contains(&json!("team:fraud"))
        );
    }
}
