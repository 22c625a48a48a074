use super::{
    DISCRETE_VALUES, DetectError, Detector, Effect, Engine, Family, Frame, Reference, Score,
    chi2_score, ks_scores, stats,
};
use std::collections::BTreeMap;
use std::convert::Infallible;

use super::Schema;
use super::band::{self, Band};
use crate::config::{Bins, DriftConfig, DriftTest, EffectSize, FeatureDrift as Settings, Gate};

/// Per-feature input drift. By default (the statistics note's choice): KS on
/// numeric features, chi-squared on categorical ones and on numeric ones
/// with few distinct values; on references above `large_reference` rows
/// each score also carries its effect size (normalised Wasserstein for KS,
/// Jensen-Shannon distance for chi-squared), which must pass its threshold
/// too before the score alerts. Every choice can be set per feature or per
/// model and feature, and is recorded with the score.
pub struct FeatureDrift {
    pub config: DriftConfig,
}

/// A feature's column pair, as numbers or as category labels.
enum Columns<'a> {
    Numeric(&'a [f64], &'a [f64]),
    Labels(&'a [String], &'a [String]),
}

/// What a feature's effect size will be: which statistic, the configured
/// threshold, and whether it gates.
struct Plan {
    choice: EffectSize,
    threshold: f64,
    gating: bool,
}

fn plan(config: &DriftConfig, settings: &Settings, n_reference: usize, chi2: bool) -> Option<Plan> {
    let threshold = settings.effect_threshold.unwrap_or(config.effect_threshold);
    let gating = match settings.gate.unwrap_or(Gate::Auto) {
        Gate::Auto => n_reference > config.large_reference,
        Gate::Always => true,
        Gate::Never => false,
    };
    let choice = match settings.effect.unwrap_or(EffectSize::Auto) {
        // Outside its gate the default effect is not computed: small
        // references are judged on the p-value alone.
        EffectSize::Auto if !gating => return None,
        EffectSize::Auto if chi2 => EffectSize::JensenShannon,
        EffectSize::Auto => EffectSize::Wasserstein,
        EffectSize::None => return None,
        other => other,
    };
    Some(Plan {
        choice,
        threshold,
        gating,
    })
}

fn bin_rule(settings: &Settings) -> Option<stats::Binning> {
    match settings.bins.unwrap_or(Bins::Auto) {
        Bins::Auto => None,
        Bins::Sturges => Some(stats::Binning::Sturges),
        Bins::Values => Some(stats::Binning::Values),
    }
}

fn effect_value(choice: EffectSize, settings: &Settings, columns: &Columns) -> (&'static str, f64) {
    let binned = || match columns {
        Columns::Numeric(r, c) => {
            let (cr, cc, _) = stats::bin_numeric_as(r, c, bin_rule(settings));
            (cr, cc)
        }
        Columns::Labels(r, c) => stats::bin_categorical(r, c),
    };
    match choice {
        EffectSize::Wasserstein => match columns {
            Columns::Numeric(r, c) => (
                "wasserstein_normalised",
                stats::wasserstein_normalised(r, c),
            ),
            // Categories have no distance between them.
            Columns::Labels(..) => {
                let (cr, cc) = binned();
                ("jensen_shannon", stats::jensen_shannon(&cr, &cc))
            }
        },
        EffectSize::Psi => {
            let (cr, cc) = binned();
            ("psi", stats::psi_with_epsilon(&cr, &cc, settings.epsilon))
        }
        EffectSize::Hellinger => {
            let (cr, cc) = binned();
            ("hellinger", stats::hellinger(&cr, &cc))
        }
        _ => {
            let (cr, cc) = binned();
            ("jensen_shannon", stats::jensen_shannon(&cr, &cc))
        }
    }
}

/// How far a gating effect size moves between clean windows of the live
/// size: per feature, its value on each non-overlapping reference window
/// against the rest of the reference. A feature whose effect size is that
/// noisy at this window size needs more than the configured threshold
/// before it counts as real, so its threshold is raised to mean + 3 sd of
/// these values (NannyML's band) where that is higher.
pub fn calibrate(
    config: &DriftConfig,
    model: &str,
    schema: &Schema,
    frame: &Frame,
    discrete: &[bool],
    window_rows: usize,
) -> BTreeMap<String, Band> {
    let mut bands = BTreeMap::new();
    if !config.calibrate || window_rows == 0 {
        return bands;
    }
    let windows = |n: usize| band::windows(n, window_rows, config.min_band_windows);
    for (i, name) in schema.numeric.iter().enumerate() {
        let settings = config.resolve(model, name);
        let col = &frame.numeric[i];
        let chi2 = use_chi2(&settings, discrete[i]);
        let gating = plan(config, &settings, col.len(), chi2).filter(|p| p.gating);
        let (Some(p), Some(k)) = (gating, windows(col.len())) else {
            continue;
        };
        let values = band::leave_one_window_out(col, window_rows, k, |rest, window| {
            let columns = Columns::Numeric(rest, window);
            Ok::<_, Infallible>(Some(effect_value(p.choice, &settings, &columns).1))
        });
        if let Ok(Some(values)) = values {
            bands.insert(name.clone(), Band::from_windows(&values, window_rows));
        }
    }
    for (i, name) in schema.categorical.iter().enumerate() {
        let settings = config.resolve(model, name);
        let col = &frame.categorical[i];
        let gating = plan(config, &settings, col.len(), true).filter(|p| p.gating);
        let (Some(p), Some(k)) = (gating, windows(col.len())) else {
            continue;
        };
        let values = band::leave_one_window_out(col, window_rows, k, |rest, window| {
            let columns = Columns::Labels(rest, window);
            Ok::<_, Infallible>(Some(effect_value(p.choice, &settings, &columns).1))
        });
        if let Ok(Some(values)) = values {
            bands.insert(name.clone(), Band::from_windows(&values, window_rows));
        }
    }
    bands
}

fn use_chi2(settings: &Settings, discrete: bool) -> bool {
    match settings.test.unwrap_or(DriftTest::Auto) {
        DriftTest::Auto => discrete,
        DriftTest::Ks => false,
        DriftTest::Chi2 => true,
    }
}

impl FeatureDrift {
    fn effect(
        &self,
        reference: &Reference,
        feature: &str,
        settings: &Settings,
        columns: &Columns,
        n_reference: usize,
        chi2: bool,
    ) -> Option<(Effect, Option<Band>)> {
        let p = plan(&self.config, settings, n_reference, chi2)?;
        let (name, value) = effect_value(p.choice, settings, columns);
        // The calibrated floor holds for windows of the size it was cut at.
        let band = reference
            .effect_bands
            .get(feature)
            .filter(|b| b.window_rows == columns.window_len())
            .cloned();
        let floor = band
            .as_ref()
            .map_or(f64::NEG_INFINITY, |b| b.mean + 3.0 * b.sd);
        Some((
            Effect {
                name: name.into(),
                value,
                threshold: p.threshold.max(floor),
                gating: p.gating,
            },
            band.filter(|_| floor > p.threshold),
        ))
    }
}

impl Columns<'_> {
    fn window_len(&self) -> usize {
        match self {
            Columns::Numeric(_, c) => c.len(),
            Columns::Labels(_, c) => c.len(),
        }
    }
}

fn binning_note(columns: &Columns, settings: &Settings) -> &'static str {
    match (columns, bin_rule(settings)) {
        (Columns::Labels(..), _) => "categories",
        (_, Some(stats::Binning::Sturges)) => "sturges",
        (_, Some(_)) => "values",
        // `stats::bin_numeric`'s rule.
        (Columns::Numeric(r, _), None) if distinct_over(r, 20) => "sturges",
        (Columns::Numeric(..), None) => "values",
    }
}

fn distinct_over(v: &[f64], limit: usize) -> bool {
    let mut bits: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
    bits.sort_unstable();
    bits.dedup();
    bits.len() > limit
}

impl Detector for FeatureDrift {
    fn name(&self) -> &'static str {
        "feature_drift"
    }

    fn score(
        &self,
        engine: &Engine,
        reference: &Reference,
        window: &Frame,
    ) -> Result<Vec<Score>, DetectError> {
        let model = reference.model.as_str();
        let numeric = &reference.schema.numeric;
        let settings: Vec<Settings> = numeric
            .iter()
            .map(|f| self.config.resolve(model, f))
            .collect();
        let use_chi2 = |i: usize| use_chi2(&settings[i], reference.discrete[i]);
        // Every KS column in one device pass.
        let pairs = numeric
            .iter()
            .enumerate()
            .filter(|(i, _)| !use_chi2(*i))
            .map(|(i, name)| {
                (
                    name.clone(),
                    &reference.frame.numeric[i],
                    &window.numeric[i],
                )
            })
            .collect();
        let mut scores = ks_scores(engine, self.name(), Family::Drift, pairs)?;
        for s in &mut scores {
            let i = numeric
                .iter()
                .position(|n| *n == s.feature)
                .unwrap_or_default();
            let columns = Columns::Numeric(&reference.frame.numeric[i], &window.numeric[i]);
            let effect = self.effect(
                reference,
                &s.feature.clone(),
                &settings[i],
                &columns,
                s.n_reference,
                false,
            );
            annotate(s, effect, &columns, &settings[i]);
        }
        // Numeric features tested as categories: their values are the labels.
        for (i, name) in numeric.iter().enumerate() {
            if !use_chi2(i) {
                continue;
            }
            let as_labels = |col: &[f64]| col.iter().map(|v| v.to_string()).collect::<Vec<_>>();
            let (r, c) = (
                as_labels(&reference.frame.numeric[i]),
                as_labels(&window.numeric[i]),
            );
            if let Some(mut s) = chi2_score(engine, self.name(), Family::Drift, name, &r, &c)? {
                s.method = format!("{} numeric<={DISCRETE_VALUES}values", s.method);
                let columns = Columns::Numeric(&reference.frame.numeric[i], &window.numeric[i]);
                let effect =
                    self.effect(reference, name, &settings[i], &columns, s.n_reference, true);
                annotate(&mut s, effect, &columns, &settings[i]);
                scores.push(s);
            }
        }
        for (i, name) in reference.schema.categorical.iter().enumerate() {
            let (r, c) = (&reference.frame.categorical[i], &window.categorical[i]);
            if let Some(mut s) = chi2_score(engine, self.name(), Family::Drift, name, r, c)? {
                let settings = self.config.resolve(model, name);
                let columns = Columns::Labels(r, c);
                let effect = self.effect(reference, name, &settings, &columns, s.n_reference, true);
                annotate(&mut s, effect, &columns, &settings);
                scores.push(s);
            }
        }
        Ok(scores)
    }
}

/// Attaches the effect and names, in the score's method, the binning it was
/// computed on and whether it gates.
fn annotate(
    s: &mut Score,
    effect: Option<(Effect, Option<Band>)>,
    columns: &Columns,
    settings: &Settings,
) {
    let Some((e, band)) = effect else {
        return;
    };
    let binned = e.name != "wasserstein_normalised";
    s.method = format!(
        "{}; effect {}{}{}{}{}",
        s.method,
        e.name,
        if binned {
            format!(" bins={}", binning_note(columns, settings))
        } else {
            String::new()
        },
        match (e.name.as_str(), settings.epsilon) {
            ("psi", Some(eps)) => format!(" epsilon={eps}"),
            ("psi", None) => " epsilon=1e-4-rule".to_string(),
            _ => String::new(),
        },
        match band {
            Some(b) => format!(" threshold=mean+3sd of {} reference windows", b.windows),
            None => String::new(),
        },
        if e.gating {
            ""
        } else {
            " (recorded, not gating)"
        }
    );
    s.effect = Some(e);
}
