//! One client among many: the per-client signals' shared test. An attacker
//! sending a few percent of a large window's requests hides in its total;
//! tested alone, its share of suspicious requests stands out.

use super::stats;

/// Requests a client must send in a window to be tested on its own.
pub const MIN_CLIENT_REQUESTS: u64 = 5;

/// The client most unlike the reference, by the share of its requests a
/// signal marks.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst<'a> {
    pub client: &'a str,
    /// Its requests, and how many of them were marked.
    pub requests: u64,
    pub marked: u64,
    /// Fisher's one-sided p-value times the clients tested (Bonferroni).
    pub p_value: f64,
    pub tested: usize,
}

/// Fisher's exact test of each client with at least `MIN_CLIENT_REQUESTS`
/// requests against the reference's rate (`reference` = marked, rows); the
/// smallest p-value times the number of clients tested, so that across
/// clients the false-alarm rate stays within the judge's alpha. One result
/// however many clients, so invented client ids cannot multiply alerts;
/// none with fewer than two clients tested (the window's own score then
/// says it all). State lives for the window only: bounded by its size.
pub fn worst<'a>(
    requests: impl IntoIterator<Item = (Option<&'a str>, bool)>,
    reference: (u64, u64),
) -> Option<Worst<'a>> {
    let mut clients: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for (client, marked) in requests {
        if let Some(client) = client {
            let (n, k) = clients.entry(client).or_default();
            *n += 1;
            *k += u64::from(marked);
        }
    }
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
        requests.extend((0..4).map(|_| (Some("few"), true)));
        requests.extend((0..50).map(|_| (None, true)));
        let w = worst(requests, (10, 1000)).unwrap();
        assert_eq!(
            (w.client, w.requests, w.marked, w.tested),
            ("mallory", 10, 6, 4)
        );
        let alone = stats::fisher_greater(6, 10, 10, 1000);
        assert!((w.p_value - 4.0 * alone).abs() < 1e-15 * alone.max(1e-300));
        // One client tested: nothing to compare it with.
        assert!(worst((0..10).map(|_| (Some("a"), true)), (10, 1000)).is_none());
    }
}
