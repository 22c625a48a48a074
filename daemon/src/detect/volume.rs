//! Per-client volume against the client's own past. Copying a model
//! through its API takes many queries, and so does a flood; a client that
//! sends far more of the traffic than it used to stands out against its
//! own past even when each of its requests looks ordinary.
//!
//! The past is bounded: each stored window keeps only its heaviest
//! `TOP_CLIENTS` clients (`history::Volume`), so a million clients cost 20
//! rows a window. A client missing from a full list sent at most as much as
//! the list's lightest client, and that bound is taken as its past: a
//! client that was small stays within the bound unless it grows past the
//! heaviest clients, and the test stays conservative for it. A list that
//! was not full and does not name the client is left out of its past: with
//! replicas, its traffic may have gone to another replica's windows. So a
//! client never listed before in a small fleet has no past to be judged by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clients::{MIN_CLIENT_REQUESTS, MIN_SHARE_RATIO};
use super::history::{HistoryConfig, TOP_CLIENTS, Volume};
use super::threat::Threat;
use super::{DetectError, Detector, Effect, Engine, Family, Frame, Reference, Score, stats};

/// How many of the client's request ids a score names.
const EXAMPLES: usize = 5;

/// At most how many requests `client` sent in the past windows, and those
/// windows' requests: its count where a window listed it, the lightest
/// listed count where a full list left it out. A window whose list was not
/// full and left it out says nothing certain (with replicas, its traffic may
/// go to another replica's windows) and is left out, as are windows with
/// no list at all (stored before lists were, or of events without client
/// ids).
pub fn usual(past: &[Volume], client: &str) -> (u64, u64) {
    past.iter()
        .filter_map(|v| match v.top.iter().find(|(c, _)| c == client) {
            Some((_, n)) => Some((*n, v.events)),
            None if v.top.len() >= TOP_CLIENTS => {
                Some((v.top.iter().map(|(_, n)| *n).min().unwrap_or(0), v.events))
            }
            None => None,
        })
        .fold((0, 0), |(k, n), (a, b)| (k + a, n + b))
}

pub struct ClientVolume {
    pub history: HistoryConfig,
}

impl Detector for ClientVolume {
    fn name(&self) -> &'static str {
        "client_volume"
    }

    fn score(
        &self,
        _engine: &Engine,
        _reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let past: Vec<Volume> = window
            .history
            .volumes
            .iter()
            .filter(|v| !v.top.is_empty() && v.events > 0)
            .cloned()
            .collect();
        let n = window.rows as u64;
        if past.len() < self.history.min_windows || n == 0 {
            return Ok(Vec::new());
        }
        // Each client's share against its own past share; the smallest
        // p-value times the clients tested.
        let tested: Vec<(&str, u64, (u64, u64), f64)> = window
            .clients
            .iter()
            .filter(|(_, k)| **k >= MIN_CLIENT_REQUESTS)
            .filter_map(|(c, &k)| {
                let before = usual(&past, super::cut(c, super::MAX_CLASS_BYTES));
                (before.1 > 0).then(|| (c.as_str(), k, before, test(k, n, before)))
            })
            .collect();
        let Some(&(client, k, (before, past_n), p)) = tested
            .iter()
            .min_by(|a, b| a.3.total_cmp(&b.3).then_with(|| a.0.cmp(b.0)))
        else {
            return Ok(Vec::new());
        };
        let m = tested.len();
        let share = k as f64 / n as f64;
        let usual_share = before.max(1) as f64 / past_n as f64;
        Ok(vec![Score {
            detector: self.name().into(),
            family: Family::Security,
            feature: "requests_per_client".into(),
            test: "volume_client_fisher".into(),
            statistic: share,
            p_value: (p * m as f64).min(1.0),
            n_reference: past_n as usize,
            n_window: n as usize,
            method: format!(
                "worst of {m} clients with >= {MIN_CLIENT_REQUESTS} requests: client={client} {k}/{n} requests; its past at most {before}/{past_n} over {} windows; fisher x{m} (bonferroni)",
                past.len()
            ),
            effect: Some(Effect {
                name: "share_ratio".into(),
                value: share / usual_share,
                threshold: MIN_SHARE_RATIO,
                gating: true,
                band: None,
            }),
            examples: examples(window, client),
            band: None,
            threat: Some(Threat::Extraction),
        }])
    }
}

/// Fisher's one-sided p-value of `k` of `n` against the client's past;
/// 1 where the share is not `MIN_SHARE_RATIO` times its past, which could
/// not page anyway: the exact test costs a term per past request, and a
/// flood of small ids must not make every window cost that much.
fn test(k: u64, n: u64, (before, past_n): (u64, u64)) -> f64 {
    let ratio = (k as f64 / n as f64) / (before.max(1) as f64 / past_n as f64);
    match ratio >= MIN_SHARE_RATIO {
        true => stats::fisher_greater(k, n, before, past_n),
        false => 1.0,
    }
}

/// A few of the client's request ids: `req-17 client=m`.
fn examples(window: &Frame, client: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    window
        .probability_senders
        .iter()
        .chain(&window.feature_row_senders)
        .chain(&window.embedding_senders)
        .filter(|s| s.client_id.as_deref() == Some(client) && s.request_id.is_some())
        .filter(|s| seen.insert(s.request_id.clone()))
        .take(EXAMPLES)
        .map(|s| s.label())
        .collect()
}

/// Clients sending far more than they used to.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeConfig {
    /// Score each client's share of the window against its share of the
    /// model version's last stored windows (`[detect.history]`).
    pub enabled: bool,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(events: u64, top: &[(&str, u64)]) -> Volume {
        Volume {
            events,
            top: top.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        }
    }

    /// A listed client's past is its counts; one a full list left out is
    /// bounded by the list's lightest; a short list that left it out says
    /// nothing certain and is left out.
    #[test]
    fn a_clients_past_is_its_listed_counts_or_the_bound_a_full_list_sets() {
        let full: Vec<(String, u64)> = (0..TOP_CLIENTS as u64)
            .map(|i| (format!("c{i}"), 100 - i))
            .collect();
        let full_list = Volume {
            events: 5000,
            top: full,
        };
        let short = volume(300, &[("a", 200), ("b", 100)]);
        let past = [full_list, short];
        assert_eq!(usual(&past, "c3"), (97, 5000));
        assert_eq!(usual(&past, "a"), ((100 - 19) + 200, 5300));
        assert_eq!(usual(&past, "new"), (100 - 19, 5000));
        assert_eq!(usual(&past[1..], "new"), (0, 0));
    }
}
