//! The life of an alert, window by window: pending, firing, resolved.
//!
//! A pure state machine so that its rules can be tested alone; the store
//! runs it inside the transaction that writes the window.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::episode::{GroupBy, Members};
use super::{Judged, Severity, WindowVerdict, dedup_key};
use crate::detect::threat::Threat;
use schemars::JsonSchema;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Seen, not yet for long enough to page.
    Pending,
    /// Paged.
    Firing,
    /// Over (or, for an alert that never fired, dismissed as noise).
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Status::Pending),
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// A change receivers are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Fired,
    Resolved,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
        }
    }
}

/// One window as it bears on one alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvidence {
    pub seq: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub statistic: f64,
    pub p_value: f64,
    pub threshold: f64,
    pub crossed: bool,
    pub n_window: usize,
}

/// What an analyst needs to act on an alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The latest windows of the incident, oldest first.
    pub windows: Vec<WindowEvidence>,
    /// The model's most significant crossings in the latest bad window.
    pub top_features: Vec<(String, f64)>,
    pub sample_request_ids: Vec<String>,
    /// The requests behind the latest crossing, where the detector names
    /// them (the farthest out-of-distribution requests and their clients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    /// The attack the crossing that opened the incident is evidence for,
    /// for security signals (ATLAS and OWASP ids in every receiver's
    /// payload). Fixed for the incident, so that a receiver's labels stay
    /// the same from trigger to resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat: Option<Threat>,
    /// For a finding that joined an episode: the episode, as
    /// `key#incident`. Its transitions page through the episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<String>,
    /// For an episode: the findings that joined it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Members>,
    /// The severity the alert paged with. Its severity may rise while it
    /// fires; receivers that know an alert by its labels (Alertmanager)
    /// get this one, so that its trigger, repeats and resolve match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paged_severity: Option<Severity>,
    pub test: String,
    pub method: String,
    pub n_reference: usize,
    pub link: String,
}

/// An alert as stored: one incident of one dedup key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// Row id; `None` until first stored.
    pub id: Option<i64>,
    pub dedup_key: String,
    /// Which incident of this key (1, 2, ...).
    pub incident: i64,
    pub model: String,
    pub model_version: String,
    pub detector: String,
    pub feature: String,
    pub severity: Severity,
    pub status: Status,
    pub consecutive_bad: u32,
    pub consecutive_clean: u32,
    /// Consecutive windows of its model version that did not score its
    /// condition at all.
    #[serde(default)]
    pub consecutive_unscored: u32,
    /// Statistic, p-value and threshold of the latest window past threshold.
    pub score: f64,
    pub p_value: f64,
    pub threshold: f64,
    pub first_window_seq: i64,
    pub last_window_seq: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub first_seen_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub acknowledged: bool,
    pub silenced: bool,
    pub trace_id: Option<String>,
    pub evidence: Evidence,
}

impl AlertState {
    /// The attacks the alert is evidence for: its own threat, then those of
    /// the findings that joined it (an episode).
    pub fn threats(&self) -> Vec<Threat> {
        let joined = self.evidence.members.iter().flat_map(|m| &m.threats);
        let mut all: Vec<Threat> = self.evidence.threat.into_iter().collect();
        for t in joined {
            if !all.contains(t) {
                all.push(*t);
            }
        }
        all
    }
}

/// One judged score of one window, with the window's context.
pub struct Observation<'a> {
    pub verdict: &'a WindowVerdict,
    pub judged: &'a Judged,
}

impl Observation<'_> {
    pub fn dedup_key(&self) -> String {
        dedup_key(
            &self.verdict.model,
            &self.verdict.model_version,
            &self.judged.score.detector,
            &self.judged.score.feature,
        )
    }

    fn window_evidence(&self) -> WindowEvidence {
        let s = &self.judged.score;
        WindowEvidence {
            seq: self.verdict.seq,
            start: self.verdict.start,
            end: self.verdict.end,
            statistic: s.statistic,
            p_value: s.p_value,
            threshold: self.judged.threshold,
            crossed: self.judged.crossed.is_some(),
            n_window: s.n_window,
        }
    }

    /// The window's crossings, most significant first.
    fn top_features(&self) -> Vec<(String, f64)> {
        let mut crossed: Vec<(String, f64)> = self
            .verdict
            .judged
            .iter()
            .filter(|j| j.crossed.is_some())
            .map(|j| {
                (
                    format!("{}/{}", j.score.detector, j.score.feature),
                    j.score.p_value,
                )
            })
            .collect();
        crossed.sort_by(|a, b| a.1.total_cmp(&b.1));
        crossed.truncate(3);
        crossed
    }
}

fn link(template: &str, a: &AlertState) -> String {
    template
        .replace("{model}", &a.model)
        .replace("{model_version}", &a.model_version)
        .replace("{detector}", &a.detector)
        .replace("{feature}", &a.feature)
        .replace("{dedup_key}", &a.dedup_key)
}

/// Advances the open alert of one dedup key (if any) by one window.
/// `next_incident` numbers a new alert. Returns the state to store (none
/// when nothing is open and nothing crossed) and the transition to notify.
pub fn step(
    open: Option<AlertState>,
    obs: &Observation<'_>,
    config: &AlertsConfig,
    next_incident: i64,
    now: DateTime<Utc>,
) -> (Option<AlertState>, Option<Transition>) {
    match (open, obs.judged.crossed) {
        (None, None) => (None, None),
        (None, Some(severity)) => {
            let mut a = new_incident(obs, severity, config, next_incident, now);
            let transition = fire_if_due(&mut a, config, now);
            (Some(a), transition)
        }
        (Some(mut a), crossed) => {
            let v = obs.verdict;
            a.consecutive_unscored = 0;
            a.last_window_seq = v.seq;
            a.window_end = a.window_end.max(v.end);
            a.model_version = v.model_version.clone();
            a.evidence.windows.push(obs.window_evidence());
            let excess = a
                .evidence
                .windows
                .len()
                .saturating_sub(config.evidence_windows.max(1));
            a.evidence.windows.drain(..excess);
            let transition = match crossed {
                Some(severity) => still_crossed(&mut a, obs, severity, config, now),
                None => clean(&mut a, config, now),
            };
            (Some(a), transition)
        }
    }
}

/// A pending alert for a condition first seen in this window.
fn new_incident(
    obs: &Observation<'_>,
    severity: Severity,
    config: &AlertsConfig,
    incident: i64,
    now: DateTime<Utc>,
) -> AlertState {
    let (s, v) = (&obs.judged.score, obs.verdict);
    let mut a = AlertState {
        id: None,
        dedup_key: obs.dedup_key(),
        incident,
        model: v.model.clone(),
        model_version: v.model_version.clone(),
        detector: s.detector.clone(),
        feature: s.feature.clone(),
        severity,
        status: Status::Pending,
        consecutive_bad: 1,
        consecutive_clean: 0,
        consecutive_unscored: 0,
        score: s.statistic,
        p_value: s.p_value,
        threshold: obs.judged.threshold,
        first_window_seq: v.seq,
        last_window_seq: v.seq,
        window_start: v.start,
        window_end: v.end,
        first_seen_at: now,
        fired_at: None,
        last_seen_at: now,
        resolved_at: None,
        acknowledged: false,
        silenced: false,
        trace_id: v.trace_id.clone(),
        evidence: Evidence {
            windows: vec![obs.window_evidence()],
            top_features: obs.top_features(),
            sample_request_ids: v.sample_request_ids.clone(),
            examples: s.examples.clone(),
            threat: s.threat,
            episode: None,
            members: None,
            paged_severity: None,
            test: s.test.clone(),
            method: s.method.clone(),
            n_reference: s.n_reference,
            link: String::new(),
        },
    };
    a.evidence.link = link(&config.link_template, &a);
    a
}

/// An open alert whose condition holds in this window too.
fn still_crossed(
    a: &mut AlertState,
    obs: &Observation<'_>,
    severity: Severity,
    config: &AlertsConfig,
    now: DateTime<Utc>,
) -> Option<Transition> {
    let (s, v) = (&obs.judged.score, obs.verdict);
    a.consecutive_bad += 1;
    a.consecutive_clean = 0;
    a.severity = a.severity.max(severity);
    a.score = s.statistic;
    a.p_value = s.p_value;
    a.threshold = obs.judged.threshold;
    a.last_seen_at = now;
    a.trace_id = v.trace_id.clone().or(a.trace_id.take());
    a.evidence.top_features = obs.top_features();
    a.evidence.sample_request_ids = v.sample_request_ids.clone();
    a.evidence.examples = s.examples.clone();
    if a.status == Status::Pending {
        fire_if_due(a, config, now)
    } else {
        None
    }
}

/// An open alert that `v` did not score at all (a per-client score with too
/// few clients, a detector turned off, a feature gone from the schema).
/// Scores come and go (labels in some windows only), so one such window
/// says little: a pending alert waits for its next score, and a firing one
/// resolves only after `unscored_windows` in a row. Without this, an alert
/// whose score stopped coming would stay open for good, and so would the
/// episode it belongs to.
pub fn unscored(
    a: &mut AlertState,
    v: &WindowVerdict,
    config: &AlertsConfig,
    now: DateTime<Utc>,
) -> Option<Transition> {
    a.consecutive_unscored += 1;
    a.last_window_seq = a.last_window_seq.max(v.seq);
    a.window_end = a.window_end.max(v.end);
    if a.status != Status::Firing || a.consecutive_unscored < config.unscored_windows.max(1) {
        return None;
    }
    a.status = Status::Resolved;
    a.resolved_at = Some(now);
    Some(Transition::Resolved)
}

/// An open alert of a version that stopped serving (`record` decides when):
/// a firing one resolves, a pending one ends without having paged.
pub fn retire(a: &mut AlertState, now: DateTime<Utc>) -> Option<Transition> {
    let was = a.status;
    a.status = Status::Resolved;
    a.resolved_at = Some(now);
    (was == Status::Firing).then_some(Transition::Resolved)
}

/// An open alert whose condition did not hold in this window.
fn clean(a: &mut AlertState, config: &AlertsConfig, now: DateTime<Utc>) -> Option<Transition> {
    a.consecutive_clean += 1;
    a.consecutive_bad = 0;
    match a.status {
        // A pending alert that misses a window was noise: it ends without
        // ever having paged.
        Status::Pending => {
            a.status = Status::Resolved;
            a.resolved_at = Some(now);
            None
        }
        Status::Firing if a.consecutive_clean >= config.resolve_for(&a.detector) => {
            a.status = Status::Resolved;
            a.resolved_at = Some(now);
            Some(Transition::Resolved)
        }
        _ => None,
    }
}

fn fire_if_due(
    a: &mut AlertState,
    config: &AlertsConfig,
    now: DateTime<Utc>,
) -> Option<Transition> {
    if a.consecutive_bad >= config.pending_for(&a.detector, a.severity) {
        a.status = Status::Firing;
        a.fired_at = Some(now);
        a.evidence.paged_severity = Some(a.severity);
        Some(Transition::Fired)
    } else {
        None
    }
}

/// Hysteresis, as Prometheus' `for:`: a condition first seen makes a pending
/// alert (stored, not paged); it fires after `pending_windows` consecutive
/// windows past threshold and resolves after `resolve_windows` clean ones.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Consecutive windows past threshold before an alert fires.
    pub pending_windows: u32,
    /// Consecutive clean windows before a firing alert resolves.
    pub resolve_windows: u32,
    /// Overrides by severity of the window (`critical = { pending_windows = 1 }`).
    pub per_severity: BTreeMap<Severity, Hysteresis>,
    /// Overrides by detector; a severity override wins over a detector one.
    pub per_detector: BTreeMap<String, Hysteresis>,
    /// Link put in every notification; `{model}`, `{detector}`, `{feature}`,
    /// `{model_version}` and `{dedup_key}` are replaced.
    pub link_template: String,
    /// How many of the latest windows an alert's evidence keeps.
    pub evidence_windows: usize,
    /// What one page stands for: `model` (the findings of a model that
    /// fire together page once, as one episode), `family` (one episode per
    /// model and detector family) or `finding` (every detector and feature
    /// pages on its own). Findings keep their own rows either way.
    pub group_by: GroupBy,
    /// Consecutive windows of a model version that do not score a firing
    /// alert's condition at all (its detector off, its feature gone, too
    /// few clients for a per-client score) before it resolves as gone.
    pub unscored_windows: u32,
    /// Seconds without a window of a model version, while another version
    /// of the model stores them, before that version's open alerts resolve
    /// as retired: a version rolled back or replaced scores nothing more,
    /// and would hold its alerts and episode open for good. Longer than
    /// `windows.duration_secs`, so that a canary with little traffic,
    /// whose windows close on time, keeps its alerts; 0 never retires a
    /// version.
    pub retire_after_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            pending_windows: 2,
            resolve_windows: 3,
            per_severity: BTreeMap::new(),
            per_detector: BTreeMap::new(),
            link_template: String::new(),
            evidence_windows: 5,
            group_by: GroupBy::default(),
            unscored_windows: 10,
            retire_after_secs: 3600,
        }
    }
}

/// An override of the alert hysteresis; unset fields keep the default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Hysteresis {
    /// Consecutive windows past threshold before firing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_windows: Option<u32>,
    /// Consecutive clean windows before resolving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolve_windows: Option<u32>,
}

impl AlertsConfig {
    /// Windows past threshold before an alert of `detector` at `severity` pages.
    pub fn pending_for(&self, detector: &str, severity: Severity) -> u32 {
        self.per_severity
            .get(&severity)
            .and_then(|h| h.pending_windows)
            .or_else(|| {
                self.per_detector
                    .get(detector)
                    .and_then(|h| h.pending_windows)
            })
            .unwrap_or(self.pending_windows)
            .max(1)
    }

    /// Clean windows before a firing alert of `detector` resolves.
    pub fn resolve_for(&self, detector: &str) -> u32 {
        self.per_detector
            .get(detector)
            .and_then(|h| h.resolve_windows)
            .unwrap_or(self.resolve_windows)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::Hysteresis;
    use super::*;
    use crate::detect::{Family, Score};

    fn verdict(seq: i64, p: f64) -> WindowVerdict {
        let t = DateTime::from_timestamp(1_700_000_000 + seq * 60, 0).unwrap();
        let score = Score {
            detector: "feature_drift".into(),
            family: Family::Drift,
            feature: "x".into(),
            test: "ks".into(),
            statistic: 0.4,
            p_value: p,
            n_reference: 100,
            n_window: 50,
            method: "exact".into(),
            effect: None,
            examples: Vec::new(),
            band: None,
            threat: None,
        };
        let judged = Judged {
            crossed: (p < 0.01).then_some(if p < 1e-8 {
                Severity::Critical
            } else {
                Severity::Warning
            }),
            score,
            threshold: 0.01,
        };
        WindowVerdict {
            model: "m".into(),
            model_version: "v".into(),
            seq,
            start: t,
            end: t,
            n_events: 50,
            close_reason: "count",
            device: "flex:cpu".into(),
            error: None,
            judged: vec![judged],
            sample_request_ids: vec![format!("r{seq}")],
            high_water: Default::default(),
            low_water: Default::default(),
            halves: Default::default(),
            trace_id: None,
            class_mix: Vec::new(),
            top_clients: Vec::new(),
        }
    }

    /// Runs a sequence of p-values through the machine; returns the
    /// transitions by window and the final state.
    fn run(ps: &[f64], config: &AlertsConfig) -> (Vec<(i64, Transition)>, Option<AlertState>) {
        let mut open: Option<AlertState> = None;
        let mut out = Vec::new();
        let mut incident = 1;
        for (seq, p) in ps.iter().enumerate() {
            let v = verdict(seq as i64, *p);
            let obs = Observation {
                verdict: &v,
                judged: &v.judged[0],
            };
            let (state, t) = step(open.take(), &obs, config, incident, Utc::now());
            if let Some(t) = t {
                out.push((seq as i64, t));
            }
            open = state.filter(|s| s.status != Status::Resolved).or_else(|| {
                incident += 1;
                None
            });
        }
        (out, open)
    }

    const BAD: f64 = 1e-4;
    const WORSE: f64 = 1e-12;
    const OK: f64 = 0.5;

    #[test]
    fn fires_after_k_and_resolves_after_l() {
        let c = AlertsConfig::default();
        let (t, open) = run(&[OK, BAD, BAD, BAD, OK, OK, OK, OK], &c);
        assert_eq!(t, vec![(2, Transition::Fired), (6, Transition::Resolved)]);
        assert!(open.is_none());
    }

    #[test]
    fn one_noisy_window_neither_pages_nor_unpages() {
        let c = AlertsConfig::default();
        let (t, _) = run(&[OK, BAD, OK, OK, BAD, OK], &c);
        assert!(t.is_empty(), "{t:?}");
        let (t, open) = run(&[BAD, BAD, BAD, OK, BAD, OK, OK], &c);
        assert_eq!(
            t,
            vec![(1, Transition::Fired)],
            "a clean window inside an incident does not resolve it"
        );
        assert_eq!(open.unwrap().status, Status::Firing);
    }

    #[test]
    fn critical_may_page_at_once() {
        let mut c = AlertsConfig::default();
        c.per_severity.insert(
            Severity::Critical,
            Hysteresis {
                pending_windows: Some(1),
                resolve_windows: None,
            },
        );
        let (t, _) = run(&[WORSE], &c);
        assert_eq!(t, vec![(0, Transition::Fired)]);
        let (t, _) = run(&[BAD], &c);
        assert!(t.is_empty());
    }

    #[test]
    fn evidence_keeps_the_latest_windows() {
        let c = AlertsConfig {
            evidence_windows: 3,
            link_template: "https://g/d?m={model}&k={dedup_key}".into(),
            ..AlertsConfig::default()
        };
        let (_, open) = run(&[BAD, BAD, BAD, BAD, BAD], &c);
        let a = open.unwrap();
        let seqs: Vec<i64> = a.evidence.windows.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(a.first_window_seq, 0);
        assert_eq!(a.evidence.link, "https://g/d?m=m&k=m/v/feature_drift/x");
        assert_eq!(a.evidence.top_features[0].0, "feature_drift/x");
    }
}
