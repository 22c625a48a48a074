use super::*;
use crate::event::{FeatureValue, Features, Output};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn half(key: &str, side: Side, rows: usize, offset: i64, secs: i64) -> Half<i64> {
    let events = (0..rows)
        .map(|i| TelemetryEvent {
            model: "m".into(),
            model_version: (side == Side::Response).then(|| "v2".into()),
            ts: at(secs),
            request_id: Some(key.into()),
            client_id: (side == Side::Request).then(|| "alice".into()),
            features: match side {
                Side::Request => [("x", FeatureValue::Number(i as f64))]
                    .into_iter()
                    .collect(),
                Side::Response => Features::default(),
            },
            embedding: None,
            output: match side {
                Side::Request => Output::default(),
                Side::Response => Output {
                    label: Some(format!("class{i}")),
                    ..Output::default()
                },
            },
            actual: None,
            attributes: match side {
                Side::Request => vec![("tenant", "acme")],
                Side::Response => vec![("tenant", "other"), ("replica", "r-1")],
            }
            .into_iter()
            .map(|(k, v)| (k.to_string(), FeatureValue::Text(v.into())))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into(),
        })
        .collect();
    Half {
        pairing: Pairing {
            key: key.into(),
            side,
        },
        events,
        pos: SourcePos {
            stream: "t/0".into(),
            offset,
            index: 0,
        },
        time: at(secs),
        bytes: 100,
        carried: offset,
    }
}

fn joiner() -> Joiner<i64> {
    Joiner::new(JoinConfig {
        within_secs: 10,
        max_pending: 3,
        ..JoinConfig::default()
    })
}

#[test]
fn rows_pair_in_order_whichever_half_comes_first() {
    let now = Instant::now();
    for response_first in [false, true] {
        let mut j = joiner();
        let (req, resp) = (
            half("a", Side::Request, 2, 1, 0),
            half("a", Side::Response, 2, 2, 1),
        );
        let (first, second) = if response_first {
            (resp, req)
        } else {
            (req, resp)
        };
        assert!(matches!(j.offer(first, now), Offered::Waiting));
        let Offered::Paired { events, earlier } = j.offer(second, now) else {
            panic!("the second half must pair");
        };
        assert_eq!(earlier.carried, if response_first { 2 } else { 1 });
        assert_eq!(events.len(), 2);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.features["x"], FeatureValue::Number(i as f64));
            assert_eq!(
                e.output.label.as_deref(),
                Some(format!("class{i}").as_str())
            );
            assert_eq!(e.model_version.as_deref(), Some("v2"));
            assert_eq!(e.client_id.as_deref(), Some("alice"));
            assert_eq!(e.ts, at(0));
            let attributes: Vec<_> = e.attributes.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let text = |s: &str| FeatureValue::Text(s.into());
            assert_eq!(
                attributes,
                [("replica", &text("r-1")), ("tenant", &text("acme"))]
            );
        }
        assert_eq!(j.waiting(), 0);
    }
}

#[test]
fn a_second_half_of_one_side_or_of_other_rows_is_refused_and_the_first_waits() {
    let now = Instant::now();
    let mut j = joiner();
    j.offer(half("a", Side::Request, 2, 1, 0), now);
    let Offered::Refused(_, e) = j.offer(half("a", Side::Request, 2, 2, 0), now) else {
        panic!("a duplicate key must be refused");
    };
    assert_eq!(e.reason(), "duplicate_pair_key");
    let Offered::Refused(_, e) = j.offer(half("a", Side::Response, 3, 3, 0), now) else {
        panic!("rows that do not match must be refused");
    };
    assert_eq!(e.reason(), "pair_mismatch");
    assert!(matches!(
        j.offer(half("a", Side::Response, 2, 4, 0), now),
        Offered::Paired { .. }
    ));
}

#[test]
fn halves_expire_by_the_other_sides_time_oldest_first_and_under_the_limits() {
    let now = Instant::now();
    let mut j = joiner();
    j.offer(half("a", Side::Request, 1, 1, 0), now);
    j.offer(half("b", Side::Request, 1, 2, 5), now);
    // Requests far newer say nothing of responses: the responses may be
    // read from a topic of their own that lags.
    j.offer(half("c", Side::Request, 1, 3, 100), now);
    assert!(j.expired(now).is_empty(), "no response seen yet");
    // A response 11 s after "a" arrived: "a" is late, "b" is not; and the
    // response itself is late, requests to 100 s having been seen.
    j.offer(half("r", Side::Response, 1, 4, 11), now);
    let late: Vec<i64> = j.expired(now).into_iter().map(|h| h.carried).collect();
    assert_eq!(late, vec![1, 4]);
    // Over max_pending (3): the oldest goes first.
    j.offer(half("d", Side::Request, 1, 5, 12), now);
    j.offer(half("e", Side::Request, 1, 6, 12), now);
    let pushed: Vec<i64> = j.expired(now).into_iter().map(|h| h.carried).collect();
    assert_eq!(pushed, vec![2]);
    // A quiet source lets everything go.
    let mut quiet: Vec<i64> = j
        .expired(now + Duration::from_secs(10))
        .into_iter()
        .map(|h| h.carried)
        .collect();
    quiet.sort();
    assert_eq!(quiet, vec![3, 5, 6]);
    assert_eq!(j.waiting(), 0);
}

#[test]
fn paired_halves_leave_the_arrival_queue_bounded() {
    let now = Instant::now();
    let mut j = joiner();
    j.offer(half("old", Side::Request, 1, 0, 0), now);
    for i in 0..10_000 {
        let key = format!("k{i}");
        j.offer(half(&key, Side::Request, 1, 2 * i + 1, 1), now);
        j.offer(half(&key, Side::Response, 1, 2 * i + 2, 1), now);
    }
    assert_eq!(j.waiting(), 1);
    let queued = j.order[0].len() + j.order[1].len();
    assert!(queued <= 1026, "{queued} arrival entries");
}

#[test]
fn rows_sharing_their_messages_attributes_weigh_them_once() {
    let tenant = FeatureValue::Text("t".repeat(10_000).into());
    let shared: crate::event::Attributes =
        std::sync::Arc::new([("tenant".to_string(), tenant)].into());
    let mut h = half("a", Side::Request, 100, 1, 0);
    for e in &mut h.events {
        e.attributes = shared.clone();
    }
    let once = weight(&h.events);
    for e in &mut h.events {
        e.attributes = std::sync::Arc::new((*shared).clone());
    }
    let each = weight(&h.events);
    assert!(once < 100_000 && each > 1_000_000, "{once} {each}");
}
