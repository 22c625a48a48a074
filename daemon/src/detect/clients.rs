//! One client among many: the per-client signals' shared test. An attacker
//! sending a few percent of a large window's requests hides in its total;
//! tested alone, its share of suspicious requests stands out.

use super::stats;

/// Requests a client must send in a window to be tested on its own.
pub const MIN_CLIENT_REQUESTS: u64 = 5;

/// Where requests without a client id are counted together.
pub const NO_CLIENT: &str = "(no client id)";
/// Where the requests of clients too small to test alone are counted
/// together: an attacker rotating ids, a few requests each, lands here.
pub const SMALL_CLIENTS: &str = "(clients with fewer than 5 requests)";

/// The client most unlike the reference, by the share of its requests a
/// signal marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst<'a> {
    /// The client, or `NO_CLIENT` or `SMALL_CLIENTS`.
    pub client: &'a str,
    /// Its requests, and how many of them were marked.
    pub requests: u64,
    pub marked: u64,
    /// Fisher's one-sided p-value times the clients tested (Bonferroni).
    pub p_value: f64,
    pub tested: usize,
    small: std::collections::HashSet<&'a str>,
}

impl Worst<'_> {
    /// Whether a request of `client` is counted in the worst one.
    pub fn sent(&self, client: Option<&str>) -> bool {
        match (client, self.client) {
            (None, c) => c == NO_CLIENT,
            (Some(c), SMALL_CLIENTS) => self.small.contains(c),
            (Some(c), worst) => c == worst,
        }
    }
}

/// Fisher's exact test of each client with at least `MIN_CLIENT_REQUESTS`
/// requests against the reference's rate (`reference` = marked, rows);
/// requests without a client id, and those of clients below the minimum,
/// are tested as two more clients. The smallest p-value times the number
/// of clients tested, so that across clients the false-alarm rate stays
/// within the judge's alpha. One result however many clients, so invented
/// client ids cannot multiply alerts; none with fewer than two clients
/// tested (the window's own score then says it all). State lives for the
/// window only: bounded by its size.
pub fn worst<'a>(
    requests: impl IntoIterator<Item = (Option<&'a str>, bool)>,
    reference: (u64, u64),
) -> Option<Worst<'a>> {
    let mut clients: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for (client, marked) in requests {
        let (n, k) = clients.entry(client.unwrap_or(NO_CLIENT)).or_default();
        *n += 1;
        *k += u64::from(marked);
    }
    let mut small = std::collections::HashSet::new();
    let (mut pooled_n, mut pooled_k) = (0, 0);
    clients.retain(|c, (n, k)| {
        if *n >= MIN_CLIENT_REQUESTS || *c == NO_CLIENT {
            return true;
        }
        small.insert(*c);
        pooled_n += *n;
        pooled_k += *k;
        false
    });
    clients.insert(SMALL_CLIENTS, (pooled_n, pooled_k));
    let tested: Vec<(&str, u64, u64, f64)> = clients
        .into_iter()
        .filter(|(_, (n, _))| *n >= MIN_CLIENT_REQUESTS)
        .map(|(c, (n, k))| {
            (
                c,
                n,
                k,
                stats::fisher_greater(k, n, reference.0, reference.1),
            )
        })
        .collect();
    if tested.len() < 2 {
        return None;
    }
    let &(client, requests, marked, p) = tested
        .iter()
        .min_by(|a, b| a.3.total_cmp(&b.3).then_with(|| a.0.cmp(b.0)))?;
    Some(Worst {
        client,
        requests,
        marked,
        p_value: (p * tested.len() as f64).min(1.0),
        tested: tested.len(),
        small: if client == SMALL_CLIENTS {
            small
        } else {
            Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("mallory", 10, 6, 4)
        );
        let alone = stats::fisher_greater(6, 10, 10, 1000);
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
        assert_eq!((w.client, w.requests, w.marked), (SMALL_CLIENTS, 20, 20));
        assert!(w.sent(Some("rot3")) && !w.sent(Some("a")));
        let mut anonymous: Vec<(Option<&str>, bool)> = requests[..60].to_vec();
        anonymous.extend([(None, true); 8]);
        let w = worst(anonymous, (10, 1000)).unwrap();
        assert_eq!((w.client, w.requests, w.marked), (NO_CLIENT, 8, 8));
        assert!(w.sent(None));
    }
}
