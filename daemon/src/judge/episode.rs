//! One page per episode. A shift rarely moves one statistic: a drift of
//! four features crosses the drift, multivariate and out-of-distribution
//! detectors in the same window, and paging each finding buries the
//! on-call under one incident per detector and feature. An episode is an
//! alert of its own (detector `episode`) that the firing findings of one
//! model (or one model and family) join: it pages when its first finding
//! fires, lists every finding in its evidence, takes the highest severity,
//! and resolves when its last finding resolves. The findings keep their
//! own rows and lifecycles, so they stay queryable; only the episode pages.
//! A finding that joins later pages only the receivers the episode did not
//! reach before (its severity or threats grew to theirs).
//!
//! Pure functions here; `record` runs them inside the window's transaction.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lifecycle::{AlertState, Status};
use super::{Severity, dedup_key};
use crate::detect::Family;
use crate::detect::threat::Threat;

/// The detector name of an episode's alert.
pub const EPISODE: &str = "episode";

/// How many findings an episode's evidence lists; the rest are counted.
/// A drift of every feature of a wide model would otherwise make a
/// payload larger than PagerDuty or Alertmanager take.
pub const MAX_LISTED: usize = 50;

/// What one page stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Every detector and feature pages on its own (one incident per
    /// finding).
    Finding,
    /// One episode per model and detector family (drift, confidence,
    /// output, security).
    Family,
    /// One episode per model, whatever detected it.
    #[default]
    Model,
}

/// A finding as its episode lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub dedup_key: String,
    pub incident: i64,
    pub detector: String,
    pub feature: String,
    pub severity: Severity,
    pub p_value: f64,
    pub statistic: f64,
    pub threshold: f64,
    /// The window in which it fired.
    pub window_seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat: Option<Threat>,
}

impl Finding {
    pub fn of(a: &AlertState) -> Self {
        Self {
            dedup_key: a.dedup_key.clone(),
            incident: a.incident,
            detector: a.detector.clone(),
            feature: a.feature.clone(),
            severity: a.severity,
            p_value: a.p_value,
            statistic: a.score,
            threshold: a.threshold,
            window_seq: a.last_window_seq,
            threat: a.evidence.threat,
        }
    }
}

/// What an episode's evidence adds to an alert's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Members {
    /// The findings that joined, in the order they fired (at most
    /// `MAX_LISTED`).
    pub findings: Vec<Finding>,
    /// How many findings joined in all.
    pub joined: usize,
    /// How many of them fired at the latest window; the episode resolves
    /// at zero.
    pub firing: usize,
    /// Every attack its findings are evidence for. The episode's own
    /// `threat` stays the one it opened with, because receivers identify
    /// an alert by its labels (Alertmanager) and the threat is one; routing
    /// matches any of these, so a SOC receiver routed on `threat` is paged
    /// when a finding of its threat joins an episode that opened without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threats: Vec<Threat>,
}

/// The episode a finding belongs in: its model's (and, by family, its
/// family's).
pub fn key(group_by: GroupBy, a: &AlertState, family: Option<Family>) -> String {
    let scope = match (group_by, family) {
        (GroupBy::Family, Some(f)) => f.as_str(),
        _ => "all",
    };
    dedup_key(&a.model, &a.model_version, EPISODE, scope)
}

/// A new episode, firing now, opened by `first`. It is new to every
/// receiver, so it pages at once: its finding already passed its own
/// pending windows.
pub fn open(first: &AlertState, key: String, incident: i64, now: DateTime<Utc>) -> AlertState {
    let feature = key.rsplit('/').next().unwrap_or_default().to_string();
    let mut e = first.clone();
    e.id = None;
    e.dedup_key = key;
    e.incident = incident;
    e.detector = EPISODE.to_string();
    e.feature = feature;
    e.status = Status::Firing;
    e.consecutive_bad = 0;
    e.consecutive_clean = 0;
    e.first_seen_at = now;
    e.fired_at = Some(now);
    e.last_seen_at = now;
    e.resolved_at = None;
    e.acknowledged = false;
    e.silenced = false;
    e.evidence.episode = None;
    e.evidence.members = Some(Members::default());
    join(&mut e, first, now);
    e
}

/// `finding` fired into the open episode `e`: listed, counted, and the
/// episode's severity raised to it. The episode's headline statistic
/// stays its first finding's.
pub fn join(e: &mut AlertState, finding: &AlertState, now: DateTime<Utc>) {
    let m = e.evidence.members.get_or_insert_with(Members::default);
    m.joined += 1;
    if let Some(t) = finding.evidence.threat.filter(|t| !m.threats.contains(t)) {
        m.threats.push(t);
    }
    if m.findings.len() < MAX_LISTED {
        m.findings.push(Finding::of(finding));
    }
    e.severity = e.severity.max(finding.severity);
    e.first_window_seq = e.first_window_seq.min(finding.first_window_seq);
    e.last_window_seq = e.last_window_seq.max(finding.last_window_seq);
    e.window_end = e.window_end.max(finding.window_end);
    e.last_seen_at = now;
    e.evidence.top_features = top_findings(m);
}

/// `e`'s findings were counted after the window's steps: `firing` of them
/// fire. With none left the episode resolves. Counting the stored findings
/// every window, rather than keeping a tally of joins and leaves, means no
/// lost update or older replica can leave an episode open for good.
pub fn settle(e: &mut AlertState, firing: usize, seq: i64, now: DateTime<Utc>) {
    let m = e.evidence.members.get_or_insert_with(Members::default);
    m.firing = firing;
    e.last_window_seq = e.last_window_seq.max(seq);
    e.last_seen_at = now;
    if firing == 0 {
        e.status = Status::Resolved;
        e.resolved_at = Some(now);
    }
}

/// The most significant findings, for receivers that show a short list.
fn top_findings(m: &Members) -> Vec<(String, f64)> {
    let mut top: Vec<(String, f64)> = m
        .findings
        .iter()
        .map(|f| (format!("{}/{}", f.detector, f.feature), f.p_value))
        .collect();
    top.sort_by(|a, b| a.1.total_cmp(&b.1));
    top.truncate(3);
    top
}

/// The reference a finding keeps to the episode it joined: key and
/// incident, as `key#incident`.
pub fn reference(e: &AlertState) -> String {
    format!("{}#{}", e.dedup_key, e.incident)
}

/// The episode key and incident a reference names.
pub fn parse_reference(r: &str) -> Option<(&str, i64)> {
    let (key, incident) = r.rsplit_once('#')?;
    Some((key, incident.parse().ok()?))
}
