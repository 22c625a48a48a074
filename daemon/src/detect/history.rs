//! The model's own recent past: its predicted-class mix against the mix of
//! its last stored windows, the security reading of an output change.
//!
//! - **Tampering** (`within_version`): the mix moved against the same
//!   version's last windows. Nothing was deployed, so the serving model, its
//!   weights or its pre- and post-processing changed under the same name.
//! - **Poisoning** (`after_version_change`): a young version's mix against
//!   the previous version's last windows (the version whose windows are the
//!   most recent). A retrained model that answers differently from the one
//!   it replaced, on the same traffic, may carry poisoned data or a
//!   backdoor; a deploy review clears it.
//!
//! Both are chi-squared homogeneity tests of the window against each past
//! window, the median of their p-values (so that a run of odd windows in
//! the past, shorter than the clean rest, does not move it), calibrated on
//! that past: real class mixes vary from window
//! to window more than multinomial sampling allows (time of day, client
//! mix), so the statistic is divided by the dispersion the past windows
//! show among themselves (the median over neighbouring windows of their
//! chi-squared, against its median under sampling alone; at least 1)
//! before its p-value is
//! read: a quasi-likelihood correction. The median over neighbours keeps
//! a change already in the past (a tampered window stored last) from
//! inflating the dispersion. A mix that cycles slowly (a daily rhythm)
//! differs more from a long past than from its neighbours: keep
//! `[detect.history] windows` short against the cycle.
//!
//! The reference is not the past here: the output detector already compares
//! against it, and a reference months old says nothing about what changed
//! today. The past comes from the store, so that replicas sharing a model
//! and restarts see the same windows.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::threat::Threat;
use super::{DetectError, Detector, Engine, Family, Frame, Reference, Score, stats};

/// One stored window's class mix: events per predicted class.
pub type Mix = Vec<(String, u64)>;

/// The stored windows a window is judged against, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The class mixes of the last windows of the window's own model and
    /// version.
    pub same_version: Vec<Mix>,
    /// While the version is young (fewer than `history.windows` windows),
    /// the last class mixes of the version scored before it.
    pub previous: Option<(String, Vec<Mix>)>,
    /// The same windows' sizes and heaviest clients.
    pub volumes: Vec<Volume>,
}

/// One stored window's size and its heaviest clients (at most
/// `TOP_CLIENTS`, requests each): all a later window needs to tell a client
/// sending far more than it did, in bounded space.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volume {
    pub events: u64,
    pub top: Mix,
}

/// Clients a window stores the request counts of.
pub const TOP_CLIENTS: usize = 20;

/// The recent past kept in memory, for offline scoring where there is no
/// store to read it from: the same windows the store would give.
#[derive(Debug, Default)]
pub struct Recent {
    /// Per version, its last windows; versions in the order of their
    /// latest window.
    versions: Vec<(String, std::collections::VecDeque<(Mix, Volume)>)>,
}

impl Recent {
    pub fn history(&self, version: &str, windows: usize) -> History {
        let mixes = |past: &std::collections::VecDeque<(Mix, Volume)>| -> Vec<Mix> {
            past.iter()
                .filter(|(m, _)| !m.is_empty())
                .map(|(m, _)| m.clone())
                .collect()
        };
        let own = self.versions.iter().find(|(name, _)| name == version);
        let same_version = own.map(|(_, past)| mixes(past)).unwrap_or_default();
        let previous = match own.is_none_or(|(_, past)| past.len() < windows) {
            true => self
                .versions
                .iter()
                .rev()
                .find(|(name, _)| name != version)
                .map(|(name, past)| (name.clone(), mixes(past))),
            false => None,
        };
        History {
            same_version,
            previous,
            volumes: own
                .map(|(_, past)| past.iter().map(|(_, v)| v.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Records a scored window: its class mix (empty for a model without
    /// classes) and its volume.
    pub fn push(&mut self, version: &str, (mix, volume): (Mix, Volume), windows: usize) {
        let at = self.versions.iter().position(|(v, _)| v == version);
        let (name, mut past) = match at {
            Some(i) => self.versions.remove(i),
            None => (version.to_string(), Default::default()),
        };
        past.push_back((mix, volume));
        while past.len() > windows {
            past.pop_front();
        }
        self.versions.push((name, past));
    }
}

pub struct ClassPrior {
    pub config: ClassPriorConfig,
    pub history: HistoryConfig,
}

impl Detector for ClassPrior {
    fn name(&self) -> &'static str {
        "class_prior"
    }

    fn score(
        &self,
        _engine: &Engine,
        _reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        // Counted as the store keeps the past: names cut, rare classes
        // summed under one.
        let now = counted(super::class_mix(&window.predicted).iter());
        let history = &window.history;
        let min = self.history.min_windows;
        let mut scores = Vec::new();
        if history.same_version.len() >= min {
            let reading = "against the same version's last windows: with nothing deployed, the serving model or its pipeline changed";
            scores.extend(self.against(
                ("within_version", Threat::Tampering, reading),
                &history.same_version,
                &now,
            ));
        }
        // The past holds a previous version only while this one is young.
        if let Some((version, past)) = &history.previous
            && past.len() >= min
        {
            let reading = format!(
                "a new version against the last windows of {version}: its training data or artefact may be poisoned or backdoored"
            );
            scores.extend(self.against(
                ("after_version_change", Threat::Poisoning, &reading),
                past,
                &now,
            ));
        }
        Ok(scores)
    }
}

impl ClassPrior {
    fn against(
        &self,
        (feature, threat, reading): (&str, Threat, &str),
        past: &[Mix],
        now: &stats::Counted,
    ) -> Option<Score> {
        if now.total == 0 {
            return None;
        }
        let dispersion = dispersion(past)?;
        let (p_value, statistic, dof) = median_against(past, now, dispersion)?;
        let pool = pooled(past, now);
        let (pool, now) = aligned(&pool, now);
        let (r, c) = stats::bin_counted(&pool, &now);
        Some(Score {
            detector: "class_prior".into(),
            family: Family::Security,
            feature: feature.into(),
            test: "chi2_dispersed".into(),
            statistic,
            p_value,
            n_reference: pool.total as usize,
            n_window: now.total as usize,
            method: format!(
                "median chi2 dof={dof} against each past window / dispersion {dispersion:.3} of {} past windows; {reading}",
                past.len()
            ),
            effect: Some(super::Effect {
                name: "jensen_shannon".into(),
                value: stats::jensen_shannon(&r, &c),
                threshold: self.config.min_distance,
                gating: true,
                band: None,
            }),
            examples: Vec::new(),
            band: None,
            threat: Some(threat),
        })
    }
}

/// The window against each past window (sparse classes pooled): each
/// chi-squared divided by the dispersion and read at its own degrees of
/// freedom (pairs may differ in them), and the median of those p-values
/// with its statistic and dof. The median, not a test against the pooled
/// past: an odd run in the past shorter than the clean rest moves a pooled
/// mean (and then the return to normal pages again) but not the median. Of
/// an even count, the larger p-value: a change must show against most of
/// the past. One class on both sides has no degree of freedom and p = 1.
/// None without a past window with events.
fn median_against(
    past: &[Mix],
    now: &stats::Counted,
    dispersion: f64,
) -> Option<(f64, f64, usize)> {
    let mut each: Vec<(f64, f64, usize)> = past
        .iter()
        .map(|m| counted(m.iter()))
        .filter(|one| one.total > 0)
        .map(|one| {
            let (one, now) = aligned(&one, now);
            let (r, c) = stats::bin_counted(&one, &now);
            let (r, c, _) = stats::pool_sparse(&r, &c);
            let x = stats::chi2_homogeneity(&r, &c);
            let statistic = x.statistic / dispersion;
            let p = match x.dof {
                0 => 1.0,
                dof => stats::chi2_sf(statistic, dof),
            };
            (p, statistic, x.dof)
        })
        .collect();
    if each.is_empty() {
        return None;
    }
    each.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(each[each.len() / 2])
}

/// The past windows summed, each aligned with the window first, so that a
/// class some windows summed under `OTHER_CLASSES` is counted alike.
fn pooled(past: &[Mix], now: &stats::Counted) -> stats::Counted {
    let mut pool = stats::Counted::default();
    for m in past {
        let (one, _) = aligned(&counted(m.iter()), now);
        for (class, n) in one.counts {
            *pool.counts.entry(class).or_default() += n;
        }
        pool.total += one.total;
    }
    pool
}

/// Two stored mixes each name their commonest classes and sum the rest
/// under `OTHER_CLASSES`: a class one names and the other summed into its
/// rest moves into the rest on both sides, so that the two agree on what
/// a class is.
fn aligned(a: &stats::Counted, b: &stats::Counted) -> (stats::Counted, stats::Counted) {
    let other = super::OTHER_CLASSES;
    let fold = |x: &stats::Counted, y: &stats::Counted| {
        let mut out = stats::Counted {
            total: x.total,
            ..Default::default()
        };
        for (class, n) in &x.counts {
            let summed =
                class != other && !y.counts.contains_key(class) && y.counts.contains_key(other);
            let name = if summed { other } else { class.as_str() };
            *out.counts.entry(name.to_string()).or_default() += n;
        }
        out
    };
    (fold(a, b), fold(b, a))
}

fn counted<'a>(mix: impl Iterator<Item = &'a (String, u64)>) -> stats::Counted {
    let mut c = stats::Counted::default();
    for (class, n) in mix {
        *c.counts.entry(class.clone()).or_default() += n;
        c.total += n;
    }
    c
}

/// How much more the past windows differ from one to the next than
/// sampling alone would make them: the median over neighbouring pairs of
/// their chi-squared against its median under sampling, at least 1. Neighbours, not
/// each window against the rest: a change a few windows back then spoils
/// one pair, where it would spoil every window's "rest". None for fewer
/// than two pairs with events.
fn dispersion(past: &[Mix]) -> Option<f64> {
    let mut ratios: Vec<f64> = past
        .windows(2)
        .filter_map(|pair| {
            let (before, after) = (counted(pair[0].iter()), counted(pair[1].iter()));
            if before.total == 0 || after.total == 0 {
                return None;
            }
            let (before, after) = aligned(&before, &after);
            let (r, c) = stats::bin_counted(&before, &after);
            let (r, c, _) = stats::pool_sparse(&r, &c);
            let x = stats::chi2_homogeneity(&r, &c);
            // Against the median of chi-squared(dof), not its mean dof: a
            // median of pairs is compared, and chi-squared(1)'s median is
            // 0.45, so dividing by dof would halve the dispersion.
            Some(match x.dof {
                0 => 1.0,
                dof => x.statistic / stats::chi2_median(dof),
            })
        })
        .collect();
    if ratios.len() < 2 {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some(stats::quantile_sorted(&ratios, 0.5).max(1.0))
}

/// The stored past a window is judged against, for the detectors that
/// read one (`class_prior`, `client_volume`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// How many of the model version's last stored windows make the past;
    /// a version with fewer is young, and its class mix is also compared
    /// with the version before it.
    pub windows: usize,
    /// Fewer past windows than this and there is no score: a dispersion or
    /// a client's usual volume needs a few windows to be estimated. The
    /// dispersion is a median over neighbouring pairs; on two or three
    /// pairs it is noisy enough to page well above alpha where the mix
    /// varies more than sampling.
    pub min_windows: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            windows: 20,
            min_windows: 5,
        }
    }
}

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), String> {
        let (n, min) = (self.windows, self.min_windows);
        if !(3..=n).contains(&min) || n > 1000 {
            return Err(format!(
                "detect.history needs 3 <= min_windows <= windows <= 1000, got {min} and {n}"
            ));
        }
        Ok(())
    }
}

/// A model's class mix against its own recent windows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassPriorConfig {
    /// Score each window's class mix against the model's last stored
    /// windows (`[detect.history]`).
    pub enabled: bool,
    /// The Jensen-Shannon distance between the window's mix and the past's
    /// that a score must also reach: on windows of many thousands of
    /// events a shift of a fraction of a percent is significant and
    /// harmless.
    pub min_distance: f64,
}

impl Default for ClassPriorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_distance: 0.02,
        }
    }
}

impl ClassPriorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.min_distance) {
            return Err(format!(
                "detect.class_prior.min_distance must lie in [0, 1), got {}",
                self.min_distance
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(counts: &[(&str, u64)]) -> Mix {
        counts.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    /// The window against each past window, the median: a run of odd
    /// windows shorter than the rest does not move it, and a window of the
    /// odd kind is far from most of the past.
    #[test]
    fn the_median_against_the_past_ignores_a_shorter_odd_run() {
        let mut past: Vec<Mix> = vec![mix(&[("a", 750), ("b", 250)]); 4];
        past.extend(vec![mix(&[("a", 250), ("b", 750)]); 3]);
        let usual = counted(mix(&[("a", 750), ("b", 250)]).iter());
        let odd = counted(mix(&[("a", 250), ("b", 750)]).iter());
        assert_eq!(median_against(&past, &usual, 1.0), Some((1.0, 0.0, 1)));
        let (p, far, dof) = median_against(&past[..5], &odd, 1.0).unwrap();
        assert!(far > 100.0 && dof == 1 && p < 1e-20, "{far} {p}");
        // A dispersion of 4 reads the statistic a quarter as large.
        let (_, quarter, _) = median_against(&past[..5], &odd, 4.0).unwrap();
        assert!((quarter - far / 4.0).abs() < 1e-9);
        // One class on both sides: no degree of freedom.
        let one = counted(mix(&[("a", 10)]).iter());
        assert_eq!(
            median_against(&[mix(&[("a", 9)])], &one, 1.0),
            Some((1.0, 0.0, 0))
        );
    }

    /// A class one stored mix names and another summed into its rest is
    /// counted in the rest on both sides: a model with more classes than a
    /// mix keeps does not differ from its past by bookkeeping.
    #[test]
    fn mixes_agree_on_what_their_rest_holds() {
        let other = crate::detect::OTHER_CLASSES;
        let a = counted(mix(&[("x", 50), ("y", 30), (other, 20)]).iter());
        let b = counted(mix(&[("x", 50), ("z", 30), (other, 20)]).iter());
        let (a, b) = aligned(&a, &b);
        assert_eq!(a.counts[other], 50);
        assert_eq!(b.counts[other], 50);
        assert_eq!((a.counts.len(), b.counts.len(), a.total), (2, 2, 100));
        // Without a rest, a missing class is a real zero.
        let c = counted(mix(&[("x", 100)]).iter());
        let (c2, a2) = aligned(&c, &a);
        assert_eq!((c2.counts.len(), a2.counts.len()), (1, 2));
    }

    /// Windows that vary no more than sampling have dispersion 1; windows
    /// that swing between two mixes have more, and one odd window after
    /// them does not set it.
    #[test]
    fn dispersion_is_the_median_excess_over_sampling_and_at_least_one() {
        let steady = vec![mix(&[("a", 500), ("b", 500)]); 5];
        assert_eq!(dispersion(&steady), Some(1.0));
        let swinging: Vec<Mix> = (0..6)
            .map(|i| match i % 2 {
                0 => mix(&[("a", 600), ("b", 400)]),
                _ => mix(&[("a", 400), ("b", 600)]),
            })
            .collect();
        let d = dispersion(&swinging).unwrap();
        assert!(d > 10.0, "{d}");
        let mut odd = swinging.clone();
        odd.push(mix(&[("a", 1000)]));
        let with_odd = dispersion(&odd).unwrap();
        assert!(with_odd < 2.0 * d, "{with_odd} against {d}");
        assert_eq!(dispersion(&steady[..2]), None);
    }
}
