use super::{
    DISCRETE_VALUES, DetectError, Detector, Effect, Engine, Family, Frame, Reference, Score,
    chi2_score, ks_scores, stats,
};
use std::collections::BTreeMap;

use self::FeatureSettings as Settings;
use super::Schema;
use super::band::{self, Band};
use super::parallel;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Per-feature input drift. By default (the statistics note's choice): KS on
/// numeric features, chi-squared on categorical ones and on numeric ones
/// with few distinct values; on references above `large_reference` rows
/// each score also carries its effect size (normalised Wasserstein for KS,
/// Jensen-Shannon distance for chi-squared), which must pass its threshold
/// too before the score alerts. The threshold comes from the effect's own
/// spread on reference windows of the live size (see `calibrate`). Every
/// choice can be set per feature or per model and feature, and is recorded
/// with the score.
pub struct FeatureDrift {
    pub config: DriftConfig,
    pub ks: stats::KsPolicy,
}

/// A feature's column pair, as numbers (the reference prepared at fit, the
/// window sorted) or as category labels.
enum Columns<'a> {
    Numeric(&'a stats::Sorted, &'a [f64]),
    Labels(&'a stats::Counted, &'a stats::Counted),
}

/// The reference's columns as calibration reads them.
pub struct Prepared<'a> {
    pub frame: &'a Frame,
    pub sorted: &'a [stats::Sorted],
    pub discrete: &'a [bool],
    pub counted: &'a [stats::Counted],
}

/// Per numeric feature tested by chi-squared, its reference values counted
/// as labels once; `None` for the features KS tests.
pub fn count_discrete(
    config: &DriftConfig,
    model: &str,
    schema: &Schema,
    frame: &Frame,
    discrete: &[bool],
) -> Vec<Option<stats::Counted>> {
    schema
        .numeric
        .iter()
        .enumerate()
        .map(|(i, name)| {
            use_chi2(&config.resolve(model, name), discrete[i])
                .then(|| stats::Counted::of(frame.numeric[i].iter().map(|v| v.to_string())))
        })
        .collect()
}

/// The threshold of a gating effect size without a band (calibration off,
/// or a reference under 1,000 rows gated with `gate = "always"`): a
/// distance of a tenth of a spread, or of a tenth of the way to disjoint
/// distributions.
pub const UNCALIBRATED_EFFECT_THRESHOLD: f64 = 0.1;

/// What a feature's effect size will be: which statistic, the configured
/// minimum, and whether it gates.
struct Plan {
    choice: EffectSize,
    minimum: Option<f64>,
    gating: bool,
}

impl Plan {
    /// What the effect must reach before the judge adds the band's bound.
    fn threshold(&self, banded: bool) -> f64 {
        match (self.minimum, banded) {
            (Some(m), _) => m,
            (None, true) => 0.0,
            (None, false) => UNCALIBRATED_EFFECT_THRESHOLD,
        }
    }
}

fn plan(config: &DriftConfig, settings: &Settings, n_reference: usize, chi2: bool) -> Option<Plan> {
    let minimum = settings.effect_threshold.or(config.effect_threshold);
    let gating = match settings.gate.unwrap_or(Gate::Auto) {
        Gate::Auto => n_reference > config.large_reference,
        Gate::Always => true,
        Gate::Never => false,
    };
    // Outside its gate the effect is still recorded (small references are
    // judged on the p-value alone): dashboards plot it per feature.
    let choice = match settings.effect.unwrap_or(EffectSize::Auto) {
        EffectSize::Auto if chi2 => EffectSize::JensenShannon,
        EffectSize::Auto => EffectSize::Wasserstein,
        EffectSize::None => return None,
        other => other,
    };
    Some(Plan {
        choice,
        minimum,
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
            let (cr, cc, _) = stats::bin_numeric_sorted(r, c, bin_rule(settings));
            (cr, cc)
        }
        Columns::Labels(r, c) => stats::bin_counted(r, c),
    };
    match choice {
        EffectSize::Wasserstein => match columns {
            Columns::Numeric(r, c) => (
                "wasserstein_normalised",
                stats::wasserstein_normalised_sorted(r, c),
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
/// (up to `band::MAX_EFFECT_WINDOWS`) against the rest of the reference;
/// where the reference holds fewer than `min_band_windows` of them, or
/// windows close by time, at a size that gives 20 and rescaled to each
/// live window (`Band::rescaled`).
/// The judge sets the feature's threshold from this band alone, as its
/// upper 1 - alpha prediction bound: what is
/// meaningful depends on the feature and the window size, and a fixed
/// number either hides real small shifts of steady features or passes the
/// noise of small windows. Contiguous windows carry whatever the reference
/// does between its own periods, which is the spread the gate is for.
pub fn calibrate(
    config: &DriftConfig,
    model: &str,
    schema: &Schema,
    reference: &Prepared,
    window_rows: usize,
) -> BTreeMap<String, Band> {
    if !config.calibrate {
        return BTreeMap::new();
    }
    let cut = |n: usize| band::effect_cut(n, window_rows, config.min_band_windows);
    // The features' bands share nothing: each on its own, on every core.
    let numeric = parallel::map(schema.numeric.len(), |i| {
        let name = &schema.numeric[i];
        let settings = config.resolve(model, name);
        let col = &reference.frame.numeric[i];
        let chi2 = use_chi2(&settings, reference.discrete[i]);
        let gating = plan(config, &settings, col.len(), chi2).filter(|p| p.gating);
        let (Some(p), Some((rows, k))) = (gating, cut(col.len())) else {
            return None;
        };
        // The rest of the reference is the prepared column less the
        // window's values: one merge per reference window, no sort of the rest.
        let full = &reference.sorted[i];
        let values: Vec<f64> = (0..k)
            .map(|j| {
                let window = stats::sorted(&col[j * rows..(j + 1) * rows]);
                if p.choice == EffectSize::Wasserstein {
                    return full.wasserstein_normalised_without(&window);
                }
                let rest = full.without(&window);
                effect_value(p.choice, &settings, &Columns::Numeric(&rest, &window)).1
            })
            .collect();
        Some((name.clone(), Band::from_windows(&values, rows)))
    });
    let mut bands: BTreeMap<String, Band> = numeric.into_iter().flatten().collect();
    for (i, name) in schema.categorical.iter().enumerate() {
        let settings = config.resolve(model, name);
        let col = &reference.frame.categorical[i];
        let gating = plan(config, &settings, col.len(), true).filter(|p| p.gating);
        let (Some(p), Some((rows, k))) = (gating, cut(col.len())) else {
            continue;
        };
        let values: Vec<f64> = (0..k)
            .map(|j| {
                let window = stats::Counted::of(&col[j * rows..(j + 1) * rows]);
                let rest = reference.counted[i].minus(&window);
                effect_value(p.choice, &settings, &Columns::Labels(&rest, &window)).1
            })
            .collect();
        bands.insert(name.clone(), Band::from_windows(&values, rows));
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
    ) -> Option<Effect> {
        let p = plan(&self.config, settings, n_reference, chi2)?;
        let (name, value) = effect_value(p.choice, settings, columns);
        let band = reference
            .effect_bands
            .get(feature)
            .and_then(|b| b.rescaled(columns.window_len(), n_reference));
        Some(Effect {
            name: name.into(),
            value,
            threshold: p.threshold(band.is_some()),
            gating: p.gating,
            band,
        })
    }
}

impl Columns<'_> {
    fn window_len(&self) -> usize {
        match self {
            Columns::Numeric(_, c) => c.len(),
            Columns::Labels(_, c) => c.total as usize,
        }
    }
}

fn binning_note(columns: &Columns, settings: &Settings) -> &'static str {
    match (columns, bin_rule(settings)) {
        (Columns::Labels(..), _) => "categories",
        (_, Some(stats::Binning::Sturges)) => "sturges",
        (_, Some(_)) => "values",
        // `stats::bin_numeric`'s rule.
        (Columns::Numeric(r, _), None) if r.distinct > 20 => "sturges",
        (Columns::Numeric(..), None) => "values",
    }
}

impl Detector for FeatureDrift {
    fn name(&self) -> &'static str {
        "feature_drift"
    }

    fn score(
        &self,
        _engine: &Engine,
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
        // Each feature alone, on every core: its window column sorted once
        // for its statistic and its effect.
        let scored = parallel::map(numeric.len(), |i| match use_chi2(i) {
            false => (false, self.ks(reference, window, &settings[i], i)),
            true => (true, self.chi2_numeric(reference, window, &settings[i], i)),
        });
        // KS-tested features first, then numeric ones tested as categories.
        let (chi2, ks): (Vec<_>, Vec<_>) = scored.into_iter().partition(|(c, _)| *c);
        let mut scores: Vec<Score> = ks.into_iter().chain(chi2).filter_map(|(_, s)| s).collect();
        scores.extend(self.categorical(reference, window));
        Ok(scores)
    }
}

impl FeatureDrift {
    /// The KS score of numeric feature `i`, with its effect.
    fn ks(
        &self,
        reference: &Reference,
        window: &Frame,
        settings: &Settings,
        i: usize,
    ) -> Option<Score> {
        let name = &reference.schema.numeric[i];
        let sorted = stats::sorted(&window.numeric[i]);
        let pair = (name.clone(), &reference.sorted[i], sorted.as_slice());
        let mut s = ks_scores(&self.ks, self.name(), Family::Drift, vec![pair]).pop()?;
        let columns = Columns::Numeric(&reference.sorted[i], &sorted);
        let effect = self.effect(reference, name, settings, &columns, s.n_reference, false);
        annotate(&mut s, effect, &columns, settings);
        Some(s)
    }

    /// The chi-squared score of numeric feature `i`, its values the labels.
    fn chi2_numeric(
        &self,
        reference: &Reference,
        window: &Frame,
        settings: &Settings,
        i: usize,
    ) -> Option<Score> {
        let name = &reference.schema.numeric[i];
        let counted;
        let r = match &reference.counted_numeric[i] {
            Some(r) => r,
            None => {
                counted =
                    stats::Counted::of(reference.frame.numeric[i].iter().map(|v| v.to_string()));
                &counted
            }
        };
        let c = stats::Counted::of(window.numeric[i].iter().map(|v| v.to_string()));
        let pool = self.config.pool_sparse_levels;
        let mut s = chi2_score((self.name(), Family::Drift, name), r, &c, pool)?;
        s.method = format!("{} numeric<={DISCRETE_VALUES}values", s.method);
        let sorted = stats::sorted(&window.numeric[i]);
        let columns = Columns::Numeric(&reference.sorted[i], &sorted);
        let effect = self.effect(reference, name, settings, &columns, s.n_reference, true);
        annotate(&mut s, effect, &columns, settings);
        Some(s)
    }

    /// Chi-squared scores of the categorical features, with their effects.
    fn categorical(&self, reference: &Reference, window: &Frame) -> Vec<Score> {
        let mut scores = Vec::new();
        for (i, name) in reference.schema.categorical.iter().enumerate() {
            let r = &reference.counted[i];
            let c = stats::Counted::of(&window.categorical[i]);
            let pool = self.config.pool_sparse_levels;
            let Some(mut s) = chi2_score((self.name(), Family::Drift, name), r, &c, pool) else {
                continue;
            };
            let settings = self.config.resolve(&reference.model, name);
            let columns = Columns::Labels(r, &c);
            let effect = self.effect(reference, name, &settings, &columns, s.n_reference, true);
            annotate(&mut s, effect, &columns, &settings);
            scores.push(s);
        }
        scores
    }
}

/// Attaches the effect and names, in the score's method, the binning it was
/// computed on and whether it gates.
fn annotate(s: &mut Score, effect: Option<Effect>, columns: &Columns, settings: &Settings) {
    let Some(e) = effect else {
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
        match (&e.band, e.threshold) {
            (Some(b), t) if t > 0.0 => format!(
                " threshold=max({t}, bound of {} reference windows)",
                b.windows
            ),
            (Some(b), _) => format!(" threshold=bound of {} reference windows", b.windows),
            (None, _) => String::new(),
        },
        if e.gating {
            ""
        } else {
            " (recorded, not gating)"
        }
    );
    s.effect = Some(e);
}

/// Per-feature drift: which test, which effect size and when it gates.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Above this many reference rows the effect size must pass its
    /// threshold as well as the p-value (`gate = "auto"`).
    pub large_reference: usize,
    /// A minimum every gating effect size must reach, for features without
    /// their own. Unset: the calibrated bound alone (0.1 where there is no
    /// band: calibration off, or a reference too short to cut one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect_threshold: Option<f64>,
    /// Set each gating effect size's threshold from its values on
    /// leave-one-out reference windows of the live size: their upper
    /// 1 - `judge.alpha` prediction bound (Student's t over the windows),
    /// so it rises for noisy features and small windows and falls for
    /// steady ones.
    pub calibrate: bool,
    /// Pool the levels a chi-squared test expects fewer than 5 times in the
    /// smaller sample (features and the class mix): on small windows they
    /// add noise and degrees of freedom, and one unseen label reads as a
    /// huge deviation. The pooling is recorded in the score's method.
    pub pool_sparse_levels: bool,
    /// Reference windows of the live size needed to cut the band at that
    /// size; with fewer (or windows closed by time) it is cut into 20
    /// windows and rescaled to each live window. At least 5.
    pub min_band_windows: usize,
    /// Overrides by feature name (every model) or by `model/feature`, which wins.
    pub features: BTreeMap<String, FeatureSettings>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            large_reference: 1000,
            effect_threshold: None,
            calibrate: true,
            pool_sparse_levels: true,
            min_band_windows: 5,
            features: BTreeMap::new(),
        }
    }
}

impl DriftConfig {
    /// The settings of one feature of one model, overrides applied.
    pub fn resolve(&self, model: &str, feature: &str) -> FeatureSettings {
        let mut out = FeatureSettings::default();
        for key in [feature.to_string(), format!("{model}/{feature}")] {
            if let Some(f) = self.features.get(&key) {
                out.test = f.test.or(out.test);
                out.effect = f.effect.or(out.effect);
                out.effect_threshold = f.effect_threshold.or(out.effect_threshold);
                out.gate = f.gate.or(out.gate);
                out.bins = f.bins.or(out.bins);
                out.epsilon = f.epsilon.or(out.epsilon);
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.min_band_windows < 5 {
            return Err(format!(
                "detect.drift.min_band_windows must be at least 5, got {}: the bound of fewer windows is so wide that no shift passes it",
                self.min_band_windows
            ));
        }
        let minimums = self
            .features
            .iter()
            .map(|(k, f)| (k.as_str(), f.effect_threshold));
        for (key, t) in std::iter::once(("", self.effect_threshold)).chain(minimums) {
            if let Some(t) = t.filter(|t| !(t.is_finite() && *t >= 0.0)) {
                let at = if key.is_empty() {
                    String::new()
                } else {
                    format!("features.{key}.")
                };
                return Err(format!(
                    "detect.drift.{at}effect_threshold must be a finite number >= 0, got {t}"
                ));
            }
        }
        for (key, f) in &self.features {
            if let Some(e) = f.epsilon.filter(|e| !(*e > 0.0 && *e < 1.0)) {
                return Err(format!(
                    "detect.drift.features.{key}.epsilon must lie in (0, 1), got {e}"
                ));
            }
        }
        Ok(())
    }
}

/// One feature's settings; each unset one takes the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureSettings {
    /// The hypothesis test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<DriftTest>,
    /// The effect size recorded with the score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectSize>,
    /// A minimum the effect size must reach (the threshold itself where
    /// there is no band).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect_threshold: Option<f64>,
    /// When the effect size must pass its threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Bins of binned effect sizes (PSI, Jensen-Shannon, Hellinger) on
    /// numeric features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bins: Option<Bins>,
    /// The proportion PSI gives an empty bin (default: 1e-4, or the smallest
    /// nonzero proportion / 1e6 when that is at most 1e-4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Bins {
    /// Sturges edges over the pooled sample with more than 20 distinct
    /// reference values, else one bin per value.
    Auto,
    /// Sturges edges over the pooled sample.
    Sturges,
    /// One bin per distinct value.
    Values,
}

/// The hypothesis test of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriftTest {
    /// KS for numeric features, chi-squared for categorical ones and for
    /// numeric ones with at most 5 distinct reference values.
    Auto,
    /// Two-sample Kolmogorov-Smirnov.
    Ks,
    /// Chi-squared homogeneity.
    Chi2,
}

/// The effect size recorded with a feature's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EffectSize {
    /// Normalised Wasserstein for KS-tested features, Jensen-Shannon for
    /// chi-squared-tested ones.
    Auto,
    /// Wasserstein distance over the reference's spread.
    Wasserstein,
    /// Population stability index.
    Psi,
    /// Jensen-Shannon distance.
    JensenShannon,
    /// Hellinger distance.
    Hellinger,
    /// No effect size.
    None,
}

/// When the effect size must pass its threshold for the score to alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// On references above `large_reference` rows.
    Auto,
    /// Always.
    Always,
    /// Recorded, never required.
    Never,
}
