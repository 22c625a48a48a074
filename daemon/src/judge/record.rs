//! One window made durable with what it means for alerts: its scores, the
//! alert lifecycle step of each score, silences, the notifications owed to
//! the receivers the router names, and the window's stream progress, all in
//! one transaction, so that a replay of the window writes nothing twice and
//! no transition is paged without its window stored.

use chrono::{DateTime, Utc};

use super::AlertsConfig;
use super::episode::{self, GroupBy};
use super::lifecycle::{self, Observation};
use super::{AlertState, Status, Transition, WindowVerdict};
use crate::detect::Family;
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
    let mut stepped = Vec::new();
    for judged in &v.judged {
        tx.insert_score(&v, judged, now).await?;
        let obs = Observation {
            verdict: &v,
            judged,
        };
        if let Some((state, t)) = advance_alert(&mut tx, &obs, alerts, now).await? {
            stepped.push((state, t, Some(judged.score.family)));
        }
    }
    // A window that could not be scored says nothing about any condition.
    if v.error.is_none() && !v.judged.is_empty() {
        stepped.extend(step_unscored(&mut tx, &v, alerts, now).await?);
    }
    let (retiring, retired) = retire_versions(&mut tx, &v, alerts, now).await?;
    stepped.extend(retiring);
    let transitions = page(&mut tx, &v, stepped, &retired, alerts.group_by, route, now).await?;
    tx.advance_progress(&v.model, &scope, &v.high_water).await?;
    tx.insert_halves(&v.model, &scope, v.seq, &v.halves).await?;
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
/// score crossed), silenced or not, saved. Returns the transition it made.
async fn advance_alert(
    tx: &mut Tx,
    obs: &Observation<'_>,
    alerts: &AlertsConfig,
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
    state.id = Some(tx.save_alert(&state, now).await?);
    Ok(transition.map(|t| (state, t)))
}

/// A step, for each open finding of the window's model version that the
/// window did not score (`lifecycle::unscored`).
async fn step_unscored(
    tx: &mut Tx,
    v: &WindowVerdict,
    alerts: &AlertsConfig,
    now: DateTime<Utc>,
) -> Result<Vec<Stepped>, StoreError> {
    let scored: std::collections::HashSet<String> = v
        .judged
        .iter()
        .map(|j| {
            super::dedup_key(
                &v.model,
                &v.model_version,
                &j.score.detector,
                &j.score.feature,
            )
        })
        .collect();
    let mut stepped = Vec::new();
    for mut a in tx.open_alerts_of(&v.model, &v.model_version).await? {
        if a.detector == episode::EPISODE || scored.contains(&a.dedup_key) {
            continue;
        }
        let t = lifecycle::unscored(&mut a, v, alerts, now);
        tx.save_alert(&a, now).await?;
        stepped.extend(t.map(|t| (a, t, None)));
    }
    Ok(stepped)
}

/// The open findings of the model's versions that stopped serving: a
/// version with no live window for `alerts.retire_after_secs` while this
/// one stores them has its findings resolved (`lifecycle::retire`). A
/// version rolled back or replaced scores nothing more, and its alerts (a
/// poisoned release's above all) would otherwise stay open for good.
/// Idleness is time, not other versions' windows, so that a 1% canary
/// between two of its own windows is not retired. Returns their steps and
/// the versions retired, whose episodes settle.
async fn retire_versions(
    tx: &mut Tx,
    v: &WindowVerdict,
    alerts: &AlertsConfig,
    now: DateTime<Utc>,
) -> Result<(Vec<Stepped>, Vec<String>), StoreError> {
    let (mut stepped, mut retired) = (Vec::new(), Vec::new());
    if alerts.retire_after_secs == 0 {
        return Ok((stepped, retired));
    }
    for version in tx
        .versions_with_open_alerts(&v.model, &v.model_version)
        .await?
    {
        if !idle(tx, &v.model, &version, alerts, now).await? {
            continue;
        }
        // A replica writing that version's window now holds its counter:
        // waiting for it, then looking again, sees its window.
        tx.lock_window_counter(&v.model, &version).await?;
        if !idle(tx, &v.model, &version, alerts, now).await? {
            continue;
        }
        tracing::info!(model = %v.model, version = %version, idle_secs = alerts.retire_after_secs, "version no longer serves; its open alerts resolve");
        for mut a in tx.open_alerts_of(&v.model, &version).await? {
            if a.detector == episode::EPISODE {
                continue;
            }
            let t = lifecycle::retire(&mut a, now);
            tx.save_alert(&a, now).await?;
            stepped.extend(t.map(|t| (a, t, None)));
        }
        retired.push(version);
    }
    Ok((stepped, retired))
}

/// Whether (model, version) stored no live window for the last
/// `alerts.retire_after_secs`.
async fn idle(
    tx: &mut Tx,
    model: &str,
    version: &str,
    alerts: &AlertsConfig,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let quiet = chrono::Duration::seconds(alerts.retire_after_secs.min(i64::MAX as u64) as i64);
    Ok(tx
        .last_window_at(model, version)
        .await?
        .is_some_and(|last| now - last >= quiet))
}

/// A finding's step that changed its status, with the family of the score
/// behind it (none for a finding the window did not score).
type Stepped = (AlertState, Transition, Option<Family>);

/// Queues the window's transitions for the receivers: each finding's own
/// or, when findings are grouped, its episode's. Returns the transitions
/// receivers were told of.
async fn page(
    tx: &mut Tx,
    v: &WindowVerdict,
    mut stepped: Vec<Stepped>,
    retired: &[String],
    group_by: GroupBy,
    route: Route<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<(AlertState, Transition)>, StoreError> {
    // Triggers first, so that an episode a finding leaves in the window in
    // which another joins stays open; and among them findings with a
    // threat, so that an episode opened by a security finding carries its
    // threat as a label.
    stepped.sort_by_key(|(a, t, _)| (*t == Transition::Resolved, a.evidence.threat.is_none()));
    let mut told = Vec::new();
    let mut episodes = Episodes::default();
    for (mut state, t, family) in stepped.into_iter().filter(|(a, _, _)| !a.silenced) {
        match t {
            Transition::Fired if group_by == GroupBy::Finding => {
                notify(tx, &route(&state), t, &state, now).await?;
                told.push((state, t));
            }
            Transition::Fired => {
                episodes.fire(tx, &mut state, group_by, family, now).await?;
                tx.save_alert(&state, now).await?;
            }
            Transition::Resolved => {
                // An incident that paged on its own (fired before findings
                // were grouped) resolves on its own, to the receivers it
                // paged; a grouped one through its episode, whatever the
                // grouping is now.
                // Its episode counts its firing findings below.
                let own = tx.fired_receivers(state.id.unwrap_or_default()).await?;
                if !own.is_empty() || state.evidence.episode.is_none() {
                    notify(tx, &own, t, &state, now).await?;
                    told.push((state, t));
                }
            }
        }
    }
    episodes
        .settle(tx, &v.model, &v.model_version, v.seq, now)
        .await?;
    for version in retired {
        // No window of its own: the episode keeps its last one.
        episodes.settle(tx, &v.model, version, 0, now).await?;
    }
    told.extend(episodes.page(tx, route, now).await?);
    Ok(told)
}

async fn notify(
    tx: &mut Tx,
    receivers: &[String],
    t: Transition,
    a: &AlertState,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let id = a.id.unwrap_or_default();
    for receiver in receivers {
        tx.enqueue(receiver, id, t, a, now).await?;
    }
    Ok(())
}

/// The episodes one window touches, changed in memory and paged once at
/// the end, so that a trigger lists every finding that fired with it.
#[derive(Default)]
struct Episodes {
    /// By key: the episode and whether this window opened it.
    touched: Vec<(AlertState, bool)>,
}

impl Episodes {
    /// The open episode of `key`, from this window or the store.
    async fn open(&mut self, tx: &mut Tx, key: &str) -> Result<Option<usize>, StoreError> {
        let found = self
            .touched
            .iter()
            .position(|(e, _)| e.dedup_key == key && e.status != Status::Resolved);
        if found.is_some() {
            return Ok(found);
        }
        let Some(e) = tx.open_alert(key).await? else {
            return Ok(None);
        };
        self.touched.push((e, false));
        Ok(Some(self.touched.len() - 1))
    }

    /// A finding fired: it joins its model's open episode, or opens one.
    async fn fire(
        &mut self,
        tx: &mut Tx,
        finding: &mut AlertState,
        group_by: GroupBy,
        family: Option<Family>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = episode::key(group_by, finding, family);
        if let Some(i) = self.open(tx, &key).await? {
            let e = &mut self.touched[i].0;
            episode::join(e, finding, now);
            finding.evidence.episode = Some(episode::reference(e));
            // A silence that ran out while the episode went on: the
            // receivers it kept quiet are paged now.
            if e.silenced {
                e.silenced = tx.silenced(e, now).await?;
            }
            return Ok(());
        }
        let incident = tx.next_incident(&key).await?;
        let mut e = episode::open(finding, key, incident, now);
        e.silenced = tx.silenced(&e, now).await?;
        finding.evidence.episode = Some(episode::reference(&e));
        self.touched.push((e, true));
        Ok(())
    }

    /// Counts each open episode's firing findings, as stored after the
    /// window's steps; an episode with none left resolves. Episodes the
    /// window did not touch are counted too, and kept only when their
    /// count changed.
    async fn settle(
        &mut self,
        tx: &mut Tx,
        model: &str,
        version: &str,
        seq: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let open = tx.open_alerts_of(model, version).await?;
        let (stored, findings): (Vec<_>, Vec<_>) = open
            .into_iter()
            .partition(|a| a.detector == episode::EPISODE);
        let firing = |e: &AlertState| {
            let reference = episode::reference(e);
            findings
                .iter()
                .filter(|f| f.status == Status::Firing)
                .filter(|f| f.evidence.episode.as_deref() == Some(reference.as_str()))
                .count()
        };
        for mut e in stored {
            let known = self.touched.iter().any(|(t, _)| t.id == e.id);
            let was = e.evidence.members.as_ref().map(|m| m.firing);
            let n = firing(&e);
            if !known && was != Some(n) {
                episode::settle(&mut e, n, seq, now);
                self.touched.push((e, false));
            }
        }
        for (e, _) in self.touched.iter_mut().filter(|(e, _)| {
            e.status != Status::Resolved && e.model == model && e.model_version == version
        }) {
            let n = firing(e);
            episode::settle(e, n, seq, now);
        }
        Ok(())
    }

    /// Saves the touched episodes and queues their pages: a trigger to
    /// every receiver an episode reaches and has not paged (all of them
    /// when it opened; those its risen severity now reaches when it grew),
    /// a resolve to every receiver it paged when its last finding left.
    async fn page(
        self,
        tx: &mut Tx,
        route: Route<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(AlertState, Transition)>, StoreError> {
        let mut told = Vec::new();
        for (mut e, opened) in self.touched {
            if opened {
                e.evidence.paged_severity = Some(e.severity);
            }
            let id = tx.save_alert(&e, now).await?;
            e.id = Some(id);
            if e.silenced {
                continue;
            }
            let paged = tx.fired_receivers(id).await?;
            let t = if e.status == Status::Resolved {
                notify(tx, &paged, Transition::Resolved, &e, now).await?;
                Transition::Resolved
            } else {
                let due: Vec<String> = route(&e)
                    .into_iter()
                    .filter(|r| !paged.contains(r))
                    .collect();
                notify(tx, &due, Transition::Fired, &e, now).await?;
                Transition::Fired
            };
            if opened || t == Transition::Resolved {
                told.push((e, t));
            }
        }
        Ok(told)
    }
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
            halves: Default::default(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            class_mix: vec![("fraud".into(), 1), ("legit".into(), 2)],
            top_clients: vec![("shop-1".into(), 2), ("shop-2".into(), 1)],
        }
    }

    /// Stored windows are the next window's past: class mixes, sizes and
    /// heaviest clients, the last so many of the version, and while it is
    /// young the mixes of the version seen before it.
    #[tokio::test]
    async fn stored_windows_are_the_next_windows_past() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig::default();
        let route = |_: &AlertState| Vec::new();
        for seq in 0..3 {
            let mut v = verdict(seq, 0.5);
            v.end += chrono::Duration::seconds(seq);
            if seq == 0 {
                v.model_version = "old".into();
                v.class_mix = vec![("fraud".into(), 9)];
            }
            record_window(&store, &v, &cfg, &route).await.unwrap();
        }
        let past = store.history("m", "v", 20).await.unwrap();
        let mix = vec![("fraud".to_string(), 1), ("legit".to_string(), 2)];
        assert_eq!(past.same_version, [mix.clone(), mix]);
        let top = vec![("shop-1".to_string(), 2), ("shop-2".to_string(), 1)];
        let volume = crate::detect::history::Volume { events: 3, top };
        assert_eq!(past.volumes, [volume.clone(), volume]);
        let old = vec![vec![("fraud".to_string(), 9)]];
        assert_eq!(past.previous, Some(("old".to_string(), old)));
        // The last window only, and no longer young.
        let last = store.history("m", "v", 1).await.unwrap();
        assert_eq!((last.same_version.len(), last.volumes.len()), (1, 1));
        assert_eq!(last.previous, None);
    }

    #[tokio::test]
    async fn sqlite_window_writes_are_idempotent_and_queue_notifications() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            group_by: GroupBy::Finding,
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
            group_by: GroupBy::Finding,
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
            group_by: GroupBy::Finding,
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

    use crate::detect::threat::Threat;
    use crate::judge::Severity;

    /// A window of the model in which each `(detector, feature, p, threat)`
    /// was scored; p < 0.01 crosses (critical under 1e-8).
    type Finding<'a> = (&'a str, &'a str, f64, Option<Threat>);

    fn findings(seq: i64, scores: &[Finding]) -> WindowVerdict {
        let base = verdict(seq, 0.5);
        let judged = scores
            .iter()
            .map(|&(detector, feature, p, threat)| {
                let mut j = base.judged[0].clone();
                j.score.detector = detector.into();
                j.score.feature = feature.into();
                j.score.p_value = p;
                j.score.threat = threat;
                if threat.is_some() {
                    j.score.family = crate::detect::Family::Security;
                }
                j.crossed = (p < 0.01).then_some(if p < 1e-8 {
                    Severity::Critical
                } else {
                    Severity::Warning
                });
                j
            })
            .collect();
        WindowVerdict { judged, ..base }
    }

    async fn drain(store: &Store, receiver: &str) -> Vec<(Transition, AlertState)> {
        let mut got = Vec::new();
        while let Some(n) = store.next_notification(receiver).await.unwrap() {
            got.push((n.transition, n.alert.clone()));
            store.mark_sent(n.id).await.unwrap();
        }
        got
    }

    /// Findings of one model that fire together page once, as an episode
    /// that lists them all, takes the highest severity, and resolves with
    /// its last finding; the findings keep their own rows. A receiver the
    /// episode reaches only once its severity rose gets its one trigger
    /// then, and the resolve.
    // Over 80 lines: one episode's story, window by window; split, its
    // steps would lose the state each one leaves for the next.
    #[tokio::test]
    async fn findings_that_fire_together_page_once_as_an_episode() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |a: &AlertState| {
            let mut r = vec!["team".to_string()];
            if a.severity == Severity::Critical {
                r.push("pager".to_string());
            }
            r
        };
        let w0 = findings(
            0,
            &[
                ("feature_drift", "x", 1e-4, None),
                ("feature_drift", "y", 1e-5, None),
                ("multivariate_drift", "pca", 1e-3, None),
            ],
        );
        let (_, told) = record_window(&store, &w0, &cfg, &route).await.unwrap();
        assert_eq!(told.len(), 1, "one page for three findings: {told:?}");
        let (episode, t) = &told[0];
        assert_eq!(*t, Transition::Fired);
        assert_eq!(episode.dedup_key, "m/v/episode/all");
        assert_eq!(episode.severity, Severity::Warning);
        assert_eq!(episode.evidence.members.as_ref().unwrap().joined, 3);

        // A critical finding joins: no second page to the team, the first
        // to the pager. x resolves; the others hold the episode open.
        let w1 = findings(
            1,
            &[
                ("feature_drift", "x", 0.5, None),
                ("feature_drift", "y", 1e-5, None),
                ("multivariate_drift", "pca", 1e-3, None),
                ("feature_drift", "z", 1e-12, None),
            ],
        );
        let (_, told) = record_window(&store, &w1, &cfg, &route).await.unwrap();
        assert!(told.is_empty(), "{told:?}");
        // y resolves too; pca and z hold the episode open.
        let w2 = findings(
            2,
            &[
                ("feature_drift", "y", 0.5, None),
                ("multivariate_drift", "pca", 1e-3, None),
                ("feature_drift", "z", 1e-12, None),
            ],
        );
        let (_, told) = record_window(&store, &w2, &cfg, &route).await.unwrap();
        assert!(told.is_empty(), "pca and z still fire: {told:?}");
        // Everything clean: the episode resolves once.
        let w3 = findings(
            3,
            &[
                ("multivariate_drift", "pca", 0.5, None),
                ("feature_drift", "z", 0.5, None),
            ],
        );
        let (_, told) = record_window(&store, &w3, &cfg, &route).await.unwrap();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].1, Transition::Resolved);

        let team = drain(&store, "team").await;
        let transitions: Vec<Transition> = team.iter().map(|(t, _)| *t).collect();
        assert_eq!(transitions, [Transition::Fired, Transition::Resolved]);
        let pager = drain(&store, "pager").await;
        let transitions: Vec<Transition> = pager.iter().map(|(t, _)| *t).collect();
        assert_eq!(transitions, [Transition::Fired, Transition::Resolved]);
        let resolved = &pager[1].1;
        assert_eq!(
            resolved.evidence.paged_severity,
            Some(Severity::Warning),
            "labels keep the severity it paged with"
        );
        assert_eq!(
            resolved.severity,
            Severity::Critical,
            "the highest finding's"
        );
        let members = resolved.evidence.members.as_ref().unwrap();
        let listed: Vec<&str> = members
            .findings
            .iter()
            .map(|f| f.feature.as_str())
            .collect();
        assert_eq!(listed, ["x", "y", "pca", "z"]);
        assert_eq!((members.joined, members.firing), (4, 0));

        // Per-finding rows stay, each naming its episode.
        let rows = store.list_alerts(None).await.unwrap();
        let rows: Vec<&AlertState> = rows.iter().filter(|a| a.detector != "episode").collect();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|a| a.status == Status::Resolved
            && a.evidence.episode.as_deref() == Some("m/v/episode/all#1")));
    }

    /// A security finding opening an episode gives it its threat label;
    /// plain findings of the window join it. A finding of another threat
    /// joins too, and the episode pages a receiver routed on that threat
    /// then, once; the threat label stays the one the episode opened with.
    #[tokio::test]
    async fn threats_join_an_episode_and_page_the_receivers_routed_on_them() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |a: &AlertState| {
            let mut r = vec!["team".to_string()];
            if a.threats().contains(&Threat::Tampering) {
                r.push("soc".to_string());
            }
            r
        };
        let w0 = findings(
            0,
            &[
                ("feature_drift", "x", 1e-4, None),
                (
                    "out_of_distribution",
                    "features",
                    1e-5,
                    Some(Threat::Evasion),
                ),
            ],
        );
        let (_, told) = record_window(&store, &w0, &cfg, &route).await.unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].0.dedup_key, "m/v/episode/all");
        assert_eq!(told[0].0.evidence.threat, Some(Threat::Evasion));
        assert_eq!(told[0].0.evidence.members.as_ref().unwrap().joined, 2);
        let w1 = findings(
            1,
            &[
                ("feature_drift", "x", 1e-4, None),
                (
                    "out_of_distribution",
                    "features",
                    1e-5,
                    Some(Threat::Evasion),
                ),
                (
                    "output_distribution",
                    "predicted_class",
                    1e-4,
                    Some(Threat::Tampering),
                ),
            ],
        );
        let (_, told) = record_window(&store, &w1, &cfg, &route).await.unwrap();
        assert!(told.is_empty(), "a join is no new episode: {told:?}");
        let team = drain(&store, "team").await;
        assert_eq!(team.len(), 1, "the team was paged once");
        let soc = drain(&store, "soc").await;
        assert_eq!(soc.len(), 1, "the SOC was paged when tampering joined");
        assert_eq!(soc[0].1.evidence.threat, Some(Threat::Evasion));
        assert_eq!(soc[0].1.threats(), [Threat::Evasion, Threat::Tampering]);

        // By family, drift and security page apart.
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let by_family = AlertsConfig {
            group_by: GroupBy::Family,
            ..cfg
        };
        let (_, told) = record_window(&store, &w0, &by_family, &route)
            .await
            .unwrap();
        let mut keys: Vec<&str> = told.iter().map(|(a, _)| a.dedup_key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["m/v/episode/drift", "m/v/episode/security"]);
    }

    /// Grouping changed while incidents are open: each resolves the way it
    /// paged, so no receiver is left with an open page.
    #[tokio::test]
    async fn open_incidents_resolve_the_way_they_paged_when_the_grouping_changes() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let by_finding = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            group_by: GroupBy::Finding,
            ..AlertsConfig::default()
        };
        let by_model = AlertsConfig {
            group_by: GroupBy::Model,
            ..by_finding.clone()
        };
        let route = |_: &AlertState| vec!["pager".to_string()];
        let x = ("feature_drift", "x", 1e-4, None);
        let y = ("feature_drift", "y", 1e-4, None);
        record_window(&store, &findings(0, &[x]), &by_finding, &route)
            .await
            .unwrap();
        record_window(&store, &findings(1, &[x, y]), &by_model, &route)
            .await
            .unwrap();
        let clean = |seq| {
            findings(
                seq,
                &[
                    ("feature_drift", "x", 0.5, None),
                    ("feature_drift", "y", 0.5, None),
                ],
            )
        };
        let (_, told) = record_window(&store, &clean(2), &by_finding, &route)
            .await
            .unwrap();
        let mut keys: Vec<(String, Transition)> = told
            .iter()
            .map(|(a, t)| (a.dedup_key.clone(), *t))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            keys,
            [
                ("m/v/episode/all".to_string(), Transition::Resolved),
                ("m/v/feature_drift/x".to_string(), Transition::Resolved),
            ]
        );
        let got: Vec<(Transition, String)> = drain(&store, "pager")
            .await
            .into_iter()
            .map(|(t, a)| (t, a.dedup_key))
            .collect();
        assert_eq!(got.len(), 4, "two triggers, two resolves: {got:?}");
    }

    /// A firing finding whose score stops coming (a per-client score with
    /// too few clients, a detector turned off) resolves after
    /// `unscored_windows` windows that did not score it, and its episode
    /// with it: neither stays open for good to swallow the model's next
    /// episode. A pending one waits for its next score (labels that come
    /// every other window must not keep an error alert from firing).
    #[tokio::test]
    async fn a_finding_no_longer_scored_resolves_and_closes_its_episode() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            unscored_windows: 2,
            per_detector: [(
                "regression_error".to_string(),
                super::super::Hysteresis {
                    pending_windows: Some(3),
                    resolve_windows: None,
                },
            )]
            .into(),
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["team".to_string()];
        let probing = ("boundary_probing", "margin_per_client", 1e-6, None);
        let error = ("regression_error", "mae", 1e-6, None);
        let x_clean = ("feature_drift", "x", 0.5, None);
        record_window(
            &store,
            &findings(0, &[probing, error, x_clean]),
            &cfg,
            &route,
        )
        .await
        .unwrap();
        // An errored window (scored nothing) says nothing.
        let failed = WindowVerdict {
            judged: Vec::new(),
            error: Some("scoring failed".into()),
            ..findings(1, &[])
        };
        record_window(&store, &failed, &cfg, &route).await.unwrap();
        let (_, told) = record_window(&store, &findings(2, &[x_clean]), &cfg, &route)
            .await
            .unwrap();
        assert!(told.is_empty(), "one window without the score: {told:?}");
        let (_, told) = record_window(&store, &findings(3, &[x_clean]), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(
            (told[0].0.detector.as_str(), told[0].1),
            ("episode", Transition::Resolved)
        );
        let pending: Vec<String> = store
            .list_alerts(Some(Status::Pending))
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.detector)
            .collect();
        assert_eq!(pending, ["regression_error"], "a pending alert waits");
        // The model's next shift opens a new episode and pages.
        let x = ("feature_drift", "x", 1e-6, None);
        let (_, told) = record_window(&store, &findings(4, &[x]), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(told.len(), 1);
        assert_eq!((told[0].0.incident, told[0].1), (2, Transition::Fired));
    }

    /// A version that stopped serving (a poisoned release rolled back)
    /// resolves its open alerts and its episode once it stored no window
    /// for `retire_after_secs` while another version stores them, and
    /// pages the resolve once; a version that still serves now and then
    /// (a canary) keeps them, however many windows the other stores.
    #[tokio::test]
    async fn the_alerts_of_a_version_no_longer_serving_resolve() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            retire_after_secs: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["soc".to_string()];
        let poisoning = (
            "class_prior",
            "after_version_change",
            1e-6,
            Some(Threat::Poisoning),
        );
        let clean = ("feature_drift", "x", 0.5, None);
        fn window(version: &str, seq: i64, scores: &[Finding]) -> WindowVerdict {
            WindowVerdict {
                model_version: version.into(),
                ..findings(seq, scores)
            }
        }
        let record = |version: &'static str, seq: i64, scores: Vec<Finding<'static>>| {
            let store = store.clone();
            let cfg = cfg.clone();
            async move {
                let (_, t) = record_window(&store, &window(version, seq, &scores), &cfg, &route)
                    .await
                    .unwrap();
                t.into_iter()
                    .map(|(a, t)| (a.dedup_key, t))
                    .collect::<Vec<_>>()
            }
        };
        let fired = record("v8", 0, vec![poisoning]).await;
        assert_eq!(fired, [("m/v8/episode/all".to_string(), Transition::Fired)]);
        // Many windows of v7 within the second: v8 is not idle.
        for seq in 0..40 {
            assert!(record("v7", seq, vec![clean]).await.is_empty());
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        // v8 serves again before it would retire, so its clock restarts.
        assert!(record("v8", 1, vec![poisoning]).await.is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert!(record("v7", 40, vec![clean]).await.is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let resolved = record("v7", 41, vec![clean]).await;
        assert_eq!(
            resolved,
            [("m/v8/episode/all".to_string(), Transition::Resolved)]
        );
        assert!(
            store
                .list_alerts(Some(Status::Firing))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(record("v7", 42, vec![clean]).await.is_empty());
        let paged: Vec<Transition> = drain(&store, "soc")
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(paged, [Transition::Fired, Transition::Resolved]);
    }

    /// Episodes count their firing findings from the stored rows every
    /// window: a finding that lost its link to the episode (written by an
    /// older replica during an upgrade) cannot hold it open for good, and a
    /// stale tally in the episode's own row (an acknowledgement racing a
    /// window) is corrected.
    #[tokio::test]
    async fn an_episode_counts_its_firing_findings_from_the_store() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            resolve_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["team".to_string()];
        let x = ("feature_drift", "x", 1e-6, None);
        record_window(&store, &findings(0, &[x]), &cfg, &route)
            .await
            .unwrap();
        let rows = store.list_alerts(Some(Status::Firing)).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        for mut a in rows {
            match a.evidence.members.as_mut() {
                Some(m) => m.firing = 7,
                None => a.evidence.episode = None,
            }
            tx.save_alert(&a, Utc::now()).await.unwrap();
        }
        tx.commit().await.unwrap();
        let (_, told) = record_window(&store, &findings(1, &[x]), &cfg, &route)
            .await
            .unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].1, Transition::Resolved);
        assert_eq!(told[0].0.evidence.members.as_ref().unwrap().firing, 0);
    }

    /// A silence that runs out while its episode goes on: the next finding
    /// that joins pages the receivers it kept quiet.
    #[tokio::test]
    async fn an_episode_pages_once_its_silence_has_run_out() {
        let store = Store::open("sqlite::memory:", 1).await.unwrap();
        let cfg = AlertsConfig {
            pending_windows: 1,
            ..AlertsConfig::default()
        };
        let route = |_: &AlertState| vec!["team".to_string()];
        let id = store
            .add_silence(
                "m",
                Some("episode"),
                None,
                "deploy",
                Utc::now() + chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        let x = ("feature_drift", "x", 1e-6, None);
        let y = ("feature_drift", "y", 1e-6, None);
        record_window(&store, &findings(0, &[x]), &cfg, &route)
            .await
            .unwrap();
        assert!(drain(&store, "team").await.is_empty(), "silenced");
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        sqlx::query("UPDATE silences SET expires_at = $1 WHERE id = $2")
            .bind(Utc::now() - chrono::Duration::minutes(1))
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
        record_window(&store, &findings(1, &[x, y]), &cfg, &route)
            .await
            .unwrap();
        let team = drain(&store, "team").await;
        assert_eq!(team.len(), 1, "{team:?}");
        assert_eq!(team[0].0, Transition::Fired);
        assert_eq!(team[0].1.evidence.members.as_ref().unwrap().joined, 2);
    }
}
