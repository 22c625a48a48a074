//! One client among many: the per-client signals' shared test. An attacker
//! sending a few percent of a large window's requests hides in its total;
//! tested alone, its share of suspicious requests stands out, against the
//! reference and against the rest of the window both: a shift that moves
//! every client (a confidence collapse crowding all answers at the
//! boundary) is the window-level detectors' to report, not a client's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::frame::Sender;
use super::threat::Threat;
use super::{Effect, Family, Score, stats};

/// Requests a client must send in a window to be tested on its own.
pub const MIN_CLIENT_REQUESTS: u64 = 5;

/// How many times the reference's rate a client's share must reach to
/// alert. The p-value alone pages a heavy, ordinary client whose share is a
/// little above the reference's (12% of 5,000 requests against 10% is
/// p ~ 1e-6); the attacks these scores are for sit far above it (a
/// boundary search near 100% against 1%, an extraction sweep at 8 times).
pub const MIN_SHARE_RATIO: f64 = 3.0;

/// Who sent a group of the window's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Who<'a> {
    Client(&'a str),
    /// Requests without a client id, counted together.
    Anonymous,
    /// The requests of clients too small to test alone, counted together:
    /// an attacker rotating ids, a few requests each, lands here.
    Small,
}

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Client(c) => f.write_str(c),
            Who::Anonymous => f.write_str("(no client id)"),
            Who::Small => write!(
                f,
                "(clients with fewer than {MIN_CLIENT_REQUESTS} requests)"
            ),
        }
    }
}

/// The client most unlike the reference, by the share of its requests a
/// signal marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst<'a> {
    pub client: Who<'a>,
    /// Its requests, and how many of them were marked.
    pub requests: u64,
    pub marked: u64,
    /// The larger of Fisher's one-sided p-values against the reference and
    /// against the rest of the window, times the clients tested
    /// (Bonferroni).
    pub p_value: f64,
    pub tested: usize,
    /// The rest of the window's requests, marked at the other clients'
    /// median share, and its requests.
    pub rest: (u64, u64),
    small: std::collections::HashSet<&'a str>,
}

impl Worst<'_> {
    /// Whether a request of `client` is counted in the worst one.
    pub fn sent(&self, client: Option<&str>) -> bool {
        match (client, self.client) {
            (None, who) => who == Who::Anonymous,
            (Some(c), Who::Small) => self.small.contains(c),
            (Some(c), Who::Client(worst)) => c == worst,
            (Some(_), Who::Anonymous) => false,
        }
    }
}

/// A per-client signal, as its score names it.
pub struct Signal<'s> {
    pub detector: &'s str,
    pub feature: String,
    pub test: &'static str,
    /// What a marked request is, for the score's method ("beyond q0.999").
    pub marks: String,
    /// The reference's marked requests, and its rows.
    pub reference: (u64, u64),
    pub threat: Threat,
}

impl Worst<'_> {
    /// The window's score of `signal`: the worst client's share of marked
    /// requests, with `examples` of them. Gated on the share's ratio to the
    /// reference's rate (`MIN_SHARE_RATIO`).
    pub fn score(&self, signal: Signal<'_>, examples: Vec<String>) -> Score {
        let (m, (k_ref, n_ref), (k_rest, n_rest)) = (self.tested, signal.reference, self.rest);
        let share = self.marked as f64 / self.requests as f64;
        // A reference that never marks: any marked share is past it. The
        // rest of the window raises the bar where it marks more.
        let reference_rate = (k_ref.max(1) as f64) / (n_ref.max(1) as f64);
        let usual = reference_rate.max(k_rest as f64 / n_rest.max(1) as f64);
        Score {
            detector: signal.detector.to_string(),
            family: Family::Security,
            feature: signal.feature,
            test: signal.test.into(),
            statistic: share,
            p_value: self.p_value,
            n_reference: n_ref as usize,
            n_window: self.requests as usize,
            method: format!(
                "worst of {m} clients with >= {MIN_CLIENT_REQUESTS} requests: client={} {}/{} {}; reference_rate={k_ref}/{n_ref} rest_of_window={k_rest}/{n_rest} fisher against both x{m} (bonferroni)",
                self.client, self.marked, self.requests, signal.marks,
            ),
            effect: Some(Effect {
                name: "share_ratio".into(),
                value: share / usual,
                threshold: MIN_SHARE_RATIO,
                gating: true,
                band: None,
            }),
            examples,
            band: None,
            threat: Some(signal.threat),
        }
    }
}

/// Client ids left out of the per-client tests: health checks, synthetic
/// probes and load tests send the same few inputs again and again, in
/// volume, and would otherwise read as a boundary search or an extraction
/// run. `*` matches any run of characters (`"synthetic-*"`). Their requests
/// still count in every window-level detector, where a flood of them shows
/// as what it is; only their per-client attribution is skipped. The ids are
/// the producer's: list only ids the serving stack sets itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ExemptClients(pub Vec<String>);

impl ExemptClients {
    pub fn matches(&self, client: &str) -> bool {
        self.0.iter().any(|p| crate::glob::wildcard(p, client))
    }

    pub fn validate(&self) -> Result<(), String> {
        match self
            .0
            .iter()
            .find(|p| p.is_empty() || p.chars().all(|c| c == '*'))
        {
            Some(p) => Err(format!(
                "detect.exempt_clients: pattern {p:?} would exempt every client; name the ids, or turn the per-client detectors off"
            )),
            None => Ok(()),
        }
    }
}

/// `worst` over the requests of a window's senders, leaving out exempt
/// clients.
pub fn worst_of<'a>(
    requests: impl IntoIterator<Item = (&'a Sender, bool)>,
    reference: (u64, u64),
) -> Option<Worst<'a>> {
    let requests = requests
        .into_iter()
        .filter(|(s, _)| !s.exempt)
        .map(|(s, marked)| (s.client_id.as_deref(), marked));
    worst(requests, reference)
}

/// Fisher's exact test of each client with at least `MIN_CLIENT_REQUESTS`
/// requests against the reference's rate (`reference` = marked, rows) and
/// against the rest of the window's (`rest_of_window`), the larger p-value
/// (both must be small: an intersection-union test keeps the level);
/// requests without a client id, and those of clients below the minimum,
/// are tested as two more clients (a client cannot pass for either: they
/// are not names). The smallest p-value times the number of clients
/// tested, so that across clients the false-alarm rate stays within the
/// judge's alpha. One result however many clients, so invented client ids
/// cannot multiply alerts; none with fewer than two clients tested (the
/// window's own score then says it all). State lives for the window only:
/// bounded by its size.
pub fn worst<'a>(
    requests: impl IntoIterator<Item = (Option<&'a str>, bool)>,
    reference: (u64, u64),
) -> Option<Worst<'a>> {
    let mut clients: std::collections::HashMap<Who<'a>, (u64, u64)> = Default::default();
    let mut all_n = 0u64;
    for (client, marked) in requests {
        all_n += 1;
        let (n, k) = clients
            .entry(client.map_or(Who::Anonymous, Who::Client))
            .or_default();
        *n += 1;
        *k += u64::from(marked);
    }
    let mut small = std::collections::HashSet::new();
    let (mut pooled_n, mut pooled_k) = (0, 0);
    clients.retain(|who, (n, k)| match who {
        Who::Client(c) if *n < MIN_CLIENT_REQUESTS => {
            small.insert(*c);
            pooled_n += *n;
            pooled_k += *k;
            false
        }
        _ => true,
    });
    clients.insert(Who::Small, (pooled_n, pooled_k));
    clients.retain(|_, (n, _)| *n >= MIN_CLIENT_REQUESTS);
    let mut shares: Vec<f64> = clients
        .values()
        .map(|(n, k)| *k as f64 / *n as f64)
        .collect();
    shares.sort_by(f64::total_cmp);
    let tested: Vec<(Who, u64, u64, f64, (u64, u64))> = clients
        .into_iter()
        .map(|(c, (n, k))| {
            let rest = rest_of_window(&shares, k as f64 / n as f64, all_n - n);
            let against_reference = stats::fisher_greater(k, n, reference.0, reference.1);
            let against_rest = stats::fisher_greater(k, n, rest.0, rest.1);
            (c, n, k, against_reference.max(against_rest), rest)
        })
        .collect();
    if tested.len() < 2 {
        return None;
    }
    let &(client, requests, marked, p, rest) = tested
        .iter()
        .min_by(|a, b| a.3.total_cmp(&b.3).then_with(|| a.0.cmp(&b.0)))?;
    Some(Worst {
        client,
        requests,
        marked,
        p_value: (p * tested.len() as f64).min(1.0),
        tested: tested.len(),
        rest,
        small: if client == Who::Small {
            small
        } else {
            Default::default()
        },
    })
}

/// The rest of the window as a client's test sees it: its `requests`
/// marked at the lower median share of the other tested clients. The median, not
/// the rest's pooled share: an attacker adding a few heavy decoy ids whose
/// requests are all marked would raise a pooled share past its own reach;
/// each decoy moves the median by one client.
fn rest_of_window(sorted_shares: &[f64], own: f64, requests: u64) -> (u64, u64) {
    let at = sorted_shares
        .iter()
        .position(|s| *s == own)
        .unwrap_or(sorted_shares.len());
    let others = sorted_shares.len().saturating_sub(1);
    let get = |i: usize| match i < at {
        true => sorted_shares[i],
        false => sorted_shares[i + 1],
    };
    // The lower median: with few clients tested one decoy is a large
    // share of them, and the lower middle stays an ordinary client's.
    let median = match others {
        0 => return (0, requests),
        n => get((n - 1) / 2),
    };
    ((median * requests as f64).round() as u64, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_patterns_match_whole_ids_with_star_as_any_run() {
        let exempt = ExemptClients(vec![
            "healthcheck".into(),
            "synthetic-*-eu".into(),
            "*-lb".into(),
        ]);
        for id in [
            "healthcheck",
            "synthetic-1-eu",
            "synthetic--eu",
            "synthetic-a-b-eu",
            "x-lb",
            "-lb",
        ] {
            assert!(exempt.matches(id), "{id}");
        }
        for id in [
            "healthcheck2",
            "a-healthcheck",
            "synthetic-1-us",
            "synthetic-eu",
            "lb",
            "x-lb2",
            "",
        ] {
            assert!(!exempt.matches(id), "{id}");
        }
        assert!(crate::glob::wildcard("a*a", "aa") && !crate::glob::wildcard("a*a", "a"));
        assert!(ExemptClients(vec!["**".into()]).validate().is_err());
        assert!(ExemptClients(vec![String::new()]).validate().is_err());
        assert!(exempt.validate().is_ok());
    }

    #[test]
    fn the_worst_client_is_named_and_its_p_value_corrected_for_the_clients_tested() {
        let mut requests = Vec::new();
        for c in ["a", "b", "c"] {
            requests.extend((0..20).map(|i| (Some(c), i == 0)));
        }
        requests.extend((0..10).map(|i| (Some("mallory"), i < 6)));
        requests.extend((0..4).map(|_| (Some("few"), false)));
        requests.extend((0..3).map(|_| (None, false)));
        let w = worst(requests.clone(), (10, 1000)).unwrap();
        // a, b, c, mallory; "few" and the anonymous stay under 5 requests.
        assert_eq!(
            (w.client, w.requests, w.marked, w.tested),
            (Who::Client("mallory"), 10, 6, 4)
        );
        // Against the reference and against the rest of the window (3 of
        // 67 marked), the larger.
        let alone = stats::fisher_greater(6, 10, 10, 1000).max(stats::fisher_greater(6, 10, 3, 67));
        assert_eq!(w.rest, (3, 67));
        assert!((w.p_value - 4.0 * alone).abs() < 1e-15 * alone.max(1e-300));
        assert!(w.sent(Some("mallory")) && !w.sent(Some("a")) && !w.sent(None));
        // One client tested: nothing to compare it with.
        assert!(worst((0..10).map(|_| (Some("a"), true)), (10, 1000)).is_none());

        // An attacker rotating ids, 2 requests each, is tested as the
        // small clients together; one without ids, as the anonymous.
        let mut rotating: Vec<(Option<&str>, bool)> = requests[..60].to_vec();
        let ids: Vec<String> = (0..10).map(|i| format!("rot{i}")).collect();
        rotating.extend(ids.iter().flat_map(|id| [(Some(id.as_str()), true); 2]));
        let w = worst(rotating, (10, 1000)).unwrap();
        assert_eq!((w.client, w.requests, w.marked), (Who::Small, 20, 20));
        assert!(w.sent(Some("rot3")) && !w.sent(Some("a")));
        let mut anonymous: Vec<(Option<&str>, bool)> = requests[..60].to_vec();
        anonymous.extend([(None, true); 8]);
        let w = worst(anonymous, (10, 1000)).unwrap();
        assert_eq!((w.client, w.requests, w.marked), (Who::Anonymous, 8, 8));
        assert!(w.sent(None));

        // A client named like a pool is a client like any other.
        let mut named: Vec<(Option<&str>, bool)> = requests[..60].to_vec();
        let pool = Who::Small.to_string();
        named.extend([(Some(pool.as_str()), true); 8]);
        let w = worst(named, (10, 1000)).unwrap();
        assert_eq!((w.client, w.requests), (Who::Client(&pool), 8));
        assert!(w.sent(Some(&pool)) && !w.sent(None));
    }

    /// Boundary probing's signal against a reference marking 1%.
    fn near_boundary() -> Signal<'static> {
        Signal {
            detector: "boundary_probing",
            feature: "margin_per_client".into(),
            test: "low_margin_client_fisher",
            marks: "near the boundary".into(),
            reference: (10, 1000),
            threat: Threat::Evasion,
        }
    }

    /// A shift that marks every client's requests alike (a confidence
    /// collapse crowding all answers at the boundary) is no client's: the
    /// rest of the window marks as much, and nothing crosses. One client
    /// above the rest still does.
    #[test]
    fn a_shift_marking_every_client_alike_names_none() {
        let everyone: Vec<(Option<&str>, bool)> = ["a", "b", "c", "d"]
            .iter()
            .flat_map(|c| (0..50).map(move |i| (Some(*c), i % 5 == 0)))
            .collect();
        let w = worst(everyone.clone(), (10, 1000)).unwrap();
        assert!(w.p_value > 0.5, "{w:?}");
        let judged = crate::judge::judge(
            &Default::default(),
            vec![w.score(near_boundary(), Vec::new())],
        );
        assert!(judged[0].crossed.is_none(), "{judged:?}");
        let mut one_more = everyone;
        one_more.extend([(Some("mallory"), true); 20]);
        let w = worst(one_more, (10, 1000)).unwrap();
        let judged = crate::judge::judge(
            &Default::default(),
            vec![w.score(near_boundary(), Vec::new())],
        );
        assert_eq!(w.client, Who::Client("mallory"));
        assert!(judged[0].crossed.is_some(), "{judged:?}");
    }

    /// Decoys cannot lift the rest of the window past an attacker's reach:
    /// two heavy ids whose requests are all marked, among thirty ordinary
    /// clients, are each still found.
    #[test]
    fn heavy_decoys_do_not_hide_each_other() {
        let ids: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        let mut requests: Vec<(Option<&str>, bool)> = ids
            .iter()
            .flat_map(|c| (0..10).map(move |i| (Some(c.as_str()), i == 0 && c == "c0")))
            .collect();
        requests.extend([(Some("a"), true); 150]);
        requests.extend([(Some("b"), true); 150]);
        let w = worst(requests, (10, 1000)).unwrap();
        assert!(matches!(w.client, Who::Client("a" | "b")), "{w:?}");
        assert_eq!(w.rest.0, 0, "{w:?}");
        let judged = crate::judge::judge(
            &Default::default(),
            vec![w.score(near_boundary(), Vec::new())],
        );
        assert!(judged[0].crossed.is_some(), "{judged:?}");
    }

    /// A heavy, ordinary client a little above the reference's rate has a
    /// tiny p-value on its many requests but is no attacker: the share's
    /// ratio to the reference's rate gates the page.
    #[test]
    fn a_heavy_client_slightly_above_the_reference_rate_does_not_page() {
        let mut requests: Vec<(Option<&str>, bool)> =
            (0..20_000).map(|i| (Some("big"), i % 25 < 3)).collect();
        let ordinary = ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"];
        for o in ordinary {
            requests.extend((0..2000).map(|i| (Some(o), i % 10 == 0)));
        }
        let w = worst(requests, (4000, 40_000)).unwrap();
        assert_eq!((w.client, w.marked), (Who::Client("big"), 2400));
        let signal = |reference| Signal {
            detector: "out_of_distribution",
            feature: "features_coverage_per_client".into(),
            test: "shell_client_fisher",
            marks: "in the shell".into(),
            reference,
            threat: Threat::Extraction,
        };
        let score = w.score(signal((4000, 40_000)), Vec::new());
        assert!(score.p_value < 1e-4, "{}", score.p_value);
        let judged = crate::judge::judge(&Default::default(), vec![score]);
        assert!(judged[0].crossed.is_none(), "{judged:?}");
        // Three times the reference's rate pages.
        let mut requests: Vec<(Option<&str>, bool)> =
            (0..500).map(|i| (Some("big"), i % 10 < 4)).collect();
        requests.extend((0..100).map(|i| (Some("small"), i % 10 == 0)));
        let w = worst(requests, (400, 4000)).unwrap();
        let judged = crate::judge::judge(
            &Default::default(),
            vec![w.score(signal((400, 4000)), Vec::new())],
        );
        assert!(judged[0].crossed.is_some(), "{judged:?}");
    }
}
