//! One window made durable with what it means for alerts: its scores, the
//! alert lifecycle step of each score, silences, the notifications owed to
//! the receivers the router names, and the window's stream progress, all in
//! one transaction, so that a replay of the window writes nothing twice and
//! no transition is paged without its window stored.

use chrono::{DateTime, Utc};

use super::AlertsConfig;
use super::lifecycle::{self, Observation};
use super::{AlertState, Transition, WindowVerdict};
use crate::store::{self, Coverage, Store, StoreError, Tx};

/// Which receivers an alert transition is queued for.
pub type Route<'a> = &'a (dyn Fn(&AlertState) -> Vec<String> + Sync);

/// The number a stored window got (none for a replay) and the alert
/// transitions it made.
pub type Recorded = (Option<i64>, Vec<(AlertState, Transition)>);

/// Stores a window under the next number of its key and advances its
/// alerts. A window stored before (a replay) writes nothing.
pub async fn record_window(
    store: &Store,
    v: &WindowVerdict,
    alerts: &AlertsConfig,
    route: Route<'_>,
) -> Result<Recorded, StoreError> {
    let now = Utc::now();
    let mut tx = store.begin().await?;
    let mut v = v.clone();
    // Taken first: the counter row's lock makes writers of this key take
    // turns, so the coverage check below sees every earlier window.
    v.seq = tx.allocate_window_seq(&v.model, &v.model_version).await?;
    let scope = store::version_scope(&v.model_version);
    match tx
        .coverage(&v.model, &scope, &v.low_water, &v.high_water)
        .await?
    {
        Coverage::None => {}
        Coverage::All => {
            tracing::warn!(model = %v.model, version = %v.model_version, events = v.n_events, "window already stored; nothing written");
            tx.rollback().await?;
            return Ok((None, Vec::new()));
        }
        // Neither storing (some events twice) nor dropping it (some never)
        // is right; what is stored shows what to read again.
        Coverage::Partial => {
            return Err(StoreError::Overlap {
                model: v.model.clone(),
                version: v.model_version.clone(),
            });
        }
    }
    insert_numbered(&mut tx, &mut v, now).await?;
    let mut transitions = Vec::new();
    for judged in &v.judged {
        tx.insert_score(&v, judged, now).await?;
        let obs = Observation {
            verdict: &v,
            judged,
        };
        if let Some(t) = advance_alert(&mut tx, &obs, alerts, route, now).await? {
            transitions.push(t);
        }
    }
    tx.advance_progress(&v.model, &scope, &v.high_water).await?;
    tx.commit().await?;
    Ok((Some(v.seq), transitions))
}

/// Stores a window of history (`score --store`) with its scores only: a
/// backfill neither steps live alerts nor moves stream progress, so clean
/// history cannot resolve what is firing now.
///
/// Its number comes from the same counter as live windows'; returns it.
pub async fn record_backfill(store: &Store, v: &WindowVerdict) -> Result<i64, StoreError> {
    let now = Utc::now();
    let mut tx = store.begin().await?;
    let mut v = v.clone();
    v.seq = tx.allocate_window_seq(&v.model, &v.model_version).await?;
    insert_numbered(&mut tx, &mut v, now).await?;
    for judged in &v.judged {
        tx.insert_score(&v, judged, now).await?;
    }
    tx.commit().await?;
    Ok(v.seq)
}

/// Inserts the window row under its allocated number. A number already
/// taken means windows were written without the counter (a replica of an
/// older version during a rolling upgrade): the counter moves past them and
/// the window takes the next number, instead of vanishing.
async fn insert_numbered(
    tx: &mut Tx,
    v: &mut WindowVerdict,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if tx.insert_window(v, now).await? {
        return Ok(());
    }
    tx.resync_window_seq(&v.model, &v.model_version).await?;
    let taken = v.seq;
    v.seq = tx.allocate_window_seq(&v.model, &v.model_version).await?;
    tracing::warn!(model = %v.model, version = %v.model_version, taken, renumbered = v.seq, "window number taken outside the counter");
    if tx.insert_window(v, now).await? {
        Ok(())
    } else {
        Err(StoreError::Overlap {
            model: v.model.clone(),
            version: v.model_version.clone(),
        })
    }
}

/// One score's step of its alert: the open incident (or a new one when the
/// score crossed), silenced or not, saved, and its transition queued.
async fn advance_alert(
    tx: &mut Tx,
    obs: &Observation<'_>,
    alerts: &AlertsConfig,
    route: Route<'_>,
    now: DateTime<Utc>,
) -> Result<Option<(AlertState, Transition)>, StoreError> {
    let key = obs.dedup_key();
    let open = tx.open_alert(&key).await?;
    if open.is_none() && obs.judged.crossed.is_none() {
        return Ok(None);
    }
    let next_incident = match open {
        None => tx.next_incident(&key).await?,
        Some(_) => 0,
    };
    let (state, transition) = lifecycle::step(open, obs, alerts, next_incident, now);
    let Some(mut state) = state else {
        return Ok(None);
    };
    if transition == Some(Transition::Fired) {
        state.silenced = tx.silenced(&state, now).await?;
    }
    let id = tx.save_alert(&state, now).await?;
    state.id = Some(id);
    let Some(t) = transition else {
        return Ok(None);
    };
    if !state.silenced {
        // A resolve goes where the incident's trigger went, whatever the
        // alert's labels are now (its severity rose, its model's owner or
        // the routing changed): every receiver that was paged is told it
        // is over, and no other.
        let receivers = match t {
            Transition::Fired => route(&state),
            Transition::Resolved => tx.fired_receivers(id).await?,
        };
        for receiver in receivers {
            tx.enqueue(&receiver, id, t, &state, now).await?;
        }
    }
    Ok(Some((state, t)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::judge::Status;

    fn mark(offset: i64) -> crate::event::Mark {
        crate::event::Mark { offset, index: 0 }
    }

    fn verdict(seq: i64, p: f64) -> WindowVerdict {
        let t = Utc::now();
        let score = crate::detect::Score {
            detector: "feature_drift".into(),
            family: crate::detect::Family::Drift,
            feature: "x".into(),
            test: "ks".into(),
            statistic: 0.5,
            p_value: p,
            n_reference: 100,
            n_window: 50,
            method: "exact".into(),
            effect: None,
            examples: Vec::new(),
            band: None,
            threat: None,
        };
        WindowVerdict {
            model: "m".into(),
            model_version: "v".into(),
            seq,
            start: t,
            end: t,
            n_events: 3,
            close_reason: "count",
            device: "flex:cpu".into(),
            error: None,
            judged: vec![crate::judge::Judged {
                crossed: (p < 0.01).then_some(crate::judge::Severity::Warning),
                score,
                threshold: 0.01,
            }],
            sample_request_ids: vec!["r1".into()],
            high_water: HashMap::from([("t/0".to_string(), mark(40 + seq))]),
            low_water: HashMap::from([("t/0".to_string(), mark(40 + seq))]),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            class_mix: vec![("fraud".into(), 1), ("legit".into(), 2)],
        }
    }

    #[tokio::test]
    async fn sqlite_window_writes_are_idempotent_and_queue_notifications() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["pager".to_string()];
        let (seq, fired) = record_window(&store, &verdict(0, 1e-5), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(seq, Some(0));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1, Transition::Fired);
        assert_eq!(
            record_window(&store, &verdict(0, 1e-5), &cfg, &route)
                .await
                .unwrap(),
            (None, Vec::new()),
            "replay writes nothing"
        );
        assert_eq!(store.next_window_seq("m", "v").await.unwrap(), 1);
        let (_, resolved) = record_window(&store, &verdict(1, 0.5), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(resolved[0].1, Transition::Resolved);
        // Each window's class mix once, replay or not.
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        let mix: Vec<(i64, String, i64)> =
            sqlx::query_as("SELECT window_seq, class, events FROM window_classes ORDER BY 1, 2")
                .fetch_all(pool)
                .await
                .unwrap();
        let one = |seq| [(seq, "fraud".to_string(), 1), (seq, "legit".to_string(), 2)];
        assert_eq!(mix, [one(0), one(1)].concat());
        let alerts = store.list_alerts(None).await.unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].status, Status::Resolved);
        assert_eq!(
            alerts[0].trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );

        // Delivered in order, one at a time.
        let first = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(first.transition, Transition::Fired);
        store
            .mark_failed(first.id, Utc::now(), "connection refused")
            .await
            .unwrap();
        assert_eq!(store.backlog().await.unwrap()[0].pending, 2);
        let again = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.attempts),
            (first.id, 1),
            "a failed notification stays first"
        );
        store.mark_sent(again.id).await.unwrap();
        let second = store.next_notification("pager").await.unwrap().unwrap();
        assert_eq!(second.transition, Transition::Resolved);
        store.mark_sent(second.id).await.unwrap();
        assert!(store.next_notification("pager").await.unwrap().is_none());
        assert!(store.backlog().await.unwrap().is_empty());

        let lower = WindowVerdict {
            seq: 2,
            high_water: HashMap::from([("t/0".to_string(), mark(7))]),
            ..verdict(2, 0.5)
        };
        let (seq, _) = record_window(&store, &lower, &cfg, &route).await.unwrap();
        assert_eq!(seq, None, "a window behind stored progress is a replay");
        assert_eq!(
            store.load_progress("m", "version:v").await.unwrap()["t/0"],
            mark(41),
            "progress never moves back"
        );
    }

    /// A window that stored progress holds in part was read by another
    /// member too: storing it would count events twice, dropping it would
    /// lose the rest, so it is refused for the run to restart.
    #[tokio::test]
    async fn a_window_overlapping_stored_ones_is_refused() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig::default();
        let route = |_: &AlertState| Vec::new();
        record_window(&store, &verdict(0, 0.5), &cfg, &route)
            .await
            .unwrap();
        let straddling = WindowVerdict {
            low_water: HashMap::from([("t/0".to_string(), mark(35))]),
            high_water: HashMap::from([("t/0".to_string(), mark(50))]),
            ..verdict(1, 0.5)
        };
        let err = record_window(&store, &straddling, &cfg, &route)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Overlap { .. }), "{err}");
        let half = WindowVerdict {
            low_water: HashMap::from([("t/0".to_string(), mark(30)), ("t/1".to_string(), mark(0))]),
            high_water: HashMap::from([
                ("t/0".to_string(), mark(40)),
                ("t/1".to_string(), mark(9)),
            ]),
            ..verdict(1, 0.5)
        };
        let err = record_window(&store, &half, &cfg, &route)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Overlap { .. }), "{err}");
        assert_eq!(
            store.next_window_seq("m", "v").await.unwrap(),
            1,
            "no number spent"
        );
    }

    /// Windows written without the counter (an older replica during a
    /// rolling upgrade) push the counter past them; no window vanishes.
    #[tokio::test]
    async fn numbers_taken_outside_the_counter_are_skipped() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert!(
            tx.insert_window(&verdict(0, 0.5), Utc::now())
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        let route = |_: &AlertState| Vec::new();
        let (seq, _) = record_window(&store, &verdict(1, 0.5), &AlertsConfig::default(), &route)
            .await
            .unwrap();
        assert_eq!(seq, Some(1));
    }

    /// A resolve goes to the receivers that got the trigger, even when the
    /// routing would name others now (an owner, a label or the severity
    /// changed in between): no page is left open, none resolved unopened.
    #[tokio::test]
    async fn a_resolve_follows_its_trigger_whatever_the_routing_says_now() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let before = |_: &AlertState| vec!["pager".to_string(), "soc".to_string()];
        record_window(&store, &verdict(0, 1e-5), &cfg, &before)
            .await
            .unwrap();
        let after = |_: &AlertState| vec!["other".to_string()];
        let (_, resolved) = record_window(&store, &verdict(1, 0.5), &cfg, &after)
            .await
            .unwrap();
        assert_eq!(resolved[0].1, Transition::Resolved);
        for receiver in ["pager", "soc"] {
            let mut got = Vec::new();
            while let Some(n) = store.next_notification(receiver).await.unwrap() {
                got.push(n.transition);
                store.mark_sent(n.id).await.unwrap();
            }
            assert_eq!(got, [Transition::Fired, Transition::Resolved], "{receiver}");
        }
        assert!(store.next_notification("other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn silences_keep_alerts_from_paging() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["pager".to_string()];
        store
            .add_silence(
                "m",
                Some("feature_drift"),
                None,
                "deploy",
                Utc::now() + chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        store
            .add_silence(
                "m",
                None,
                None,
                "expired",
                Utc::now() - chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        assert_eq!(store.silences().await.unwrap().len(), 1);
        record_window(&store, &verdict(0, 1e-5), &cfg, &route)
            .await
            .unwrap();
        let a = &store.list_alerts(Some(Status::Firing)).await.unwrap()[0];
        assert!(a.silenced);
        assert!(store.next_notification("pager").await.unwrap().is_none());
        assert!(store.acknowledge(a.id.unwrap()).await.unwrap());
        assert!(store.list_alerts(None).await.unwrap()[0].acknowledged);
        assert!(!store.acknowledge(999).await.unwrap());
    }
}
