//! Columnar views of a set of events, typed by the model's reference.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::{FeatureValue, Probabilities, TelemetryEvent};

/// Which features are numeric and which categorical, decided once from the
/// reference: a feature is numeric when every present reference value is a
/// number, categorical when every present value is a string or boolean.
/// Features of mixed type are left out and named in `mixed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub numeric: Vec<String>,
    pub categorical: Vec<String>,
    pub mixed: Vec<String>,
}

impl Schema {
    pub fn infer(events: &[TelemetryEvent]) -> Self {
        let names: BTreeSet<&String> = events.iter().flat_map(|e| e.features.keys()).collect();
        let mut schema = Schema::default();
        for name in names {
            let (mut num, mut cat) = (0usize, 0usize);
            for e in events {
                match e.features.get(name) {
                    Some(FeatureValue::Number(_)) => num += 1,
                    Some(FeatureValue::Text(_) | FeatureValue::Bool(_)) => cat += 1,
                    _ => {}
                }
            }
            match (num > 0, cat > 0) {
                (true, false) => schema.numeric.push(name.clone()),
                (false, true) => schema.categorical.push(name.clone()),
                (true, true) => schema.mixed.push(name.clone()),
                (false, false) => {}
            }
        }
        schema
    }
}

/// The values detectors read, one column per schema feature plus the model
/// output. Missing values and values of the wrong type are left out of their
/// column, so columns may differ in length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub rows: usize,
    pub numeric: Vec<Vec<f64>>,
    pub categorical: Vec<Vec<String>>,
    /// Probability vectors, in configured class order where names are given.
    pub probabilities: Vec<Vec<f64>>,
    /// Predicted class per event: `output.label`, else the most probable class.
    pub predicted: Vec<String>,
    /// Whether the predicted class matched `actual`, per probability row,
    /// where the event carries a true label.
    pub correct: Vec<Option<bool>>,
    /// Regression outputs (`output.score`).
    pub regression: Vec<f64>,
    /// Embeddings, for multivariate and out-of-distribution detectors.
    pub embeddings: Vec<Vec<f64>>,
    /// Each event's numeric features in schema order, where all are present
    /// (incomplete rows are left out).
    pub feature_rows: Vec<Vec<f64>>,
    /// The model version every event carried, or the most common one
    /// (`None` when no event named one).
    pub version: Option<String>,
    /// Who sent each of `embeddings` and of `feature_rows`.
    pub embedding_senders: Vec<Sender>,
    pub feature_row_senders: Vec<Sender>,
}

/// The request and client ids of one event, for evidence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sender {
    pub request_id: Option<String>,
    pub client_id: Option<String>,
}

impl Sender {
    fn of(e: &TelemetryEvent) -> Self {
        Self {
            request_id: e.request_id.clone(),
            client_id: e.client_id.clone(),
        }
    }

    /// `req-17 client=shop-3`, or `-` when the event named neither.
    pub fn label(&self) -> String {
        match (&self.request_id, &self.client_id) {
            (Some(r), Some(c)) => format!("{r} client={c}"),
            (Some(r), None) => r.clone(),
            (None, Some(c)) => format!("client={c}"),
            (None, None) => "-".into(),
        }
    }
}

impl Frame {
    /// The rows a multivariate detector compares: embeddings when the model
    /// sends them, else the numeric feature rows.
    pub fn vectors(&self) -> (&'static str, &[Vec<f64>]) {
        if self.embeddings.is_empty() {
            ("numeric_features", &self.feature_rows)
        } else {
            ("embedding", &self.embeddings)
        }
    }
}

impl Frame {
    pub fn build<'a>(
        events: impl IntoIterator<Item = &'a TelemetryEvent>,
        schema: &Schema,
        classes: &[String],
    ) -> Self {
        let mut f = Frame {
            numeric: vec![Vec::new(); schema.numeric.len()],
            categorical: vec![Vec::new(); schema.categorical.len()],
            ..Frame::default()
        };
        let mut versions: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in events {
            f.rows += 1;
            if let Some(v) = &e.model_version {
                *versions.entry(v.as_str()).or_default() += 1;
            }
            // The feature row is gathered in the same pass: one map lookup
            // per feature and event is most of what building a frame costs.
            let mut row = Vec::with_capacity(schema.numeric.len());
            for (i, name) in schema.numeric.iter().enumerate() {
                if let Some(v) = e.features.get(name).and_then(FeatureValue::as_number) {
                    f.numeric[i].push(v);
                    row.push(v);
                }
            }
            if schema.numeric.len() >= 2 && row.len() == schema.numeric.len() {
                f.feature_rows.push(row);
                f.feature_row_senders.push(Sender::of(e));
            }
            for (i, name) in schema.categorical.iter().enumerate() {
                if let Some(v) = e.features.get(name).and_then(FeatureValue::as_category) {
                    f.categorical[i].push(v);
                }
            }
            let probs = e.output.probabilities.as_ref().map(|p| ordered(p, classes));
            let label = e.output.label.clone().or_else(|| {
                probs.as_ref().and_then(|(values, names)| {
                    argmax(values).map(|i| {
                        names
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("class_{i}"))
                    })
                })
            });
            if let Some((values, _)) = probs {
                f.probabilities.push(values);
                f.correct
                    .push(match (&label, e.actual.as_ref().and_then(actual_label)) {
                        (Some(predicted), Some(actual)) => Some(*predicted == actual),
                        _ => None,
                    });
            }
            if let Some(l) = label {
                f.predicted.push(l);
            }
            if let Some(v) = e.output.score.filter(|v| v.is_finite()) {
                f.regression.push(v);
            }
            if let Some(v) = &e.embedding {
                f.embeddings.push(v.clone());
                f.embedding_senders.push(Sender::of(e));
            }
        }
        f.version = versions
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(v, _)| v.to_string());
        f
    }
}

/// A true label as a class name: strings as they are, numbers and booleans
/// in their JSON form (`1`, `true`).
fn actual_label(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Probabilities as a vector plus the class name of each position.
fn ordered(p: &Probabilities, classes: &[String]) -> (Vec<f64>, Vec<String>) {
    match p {
        Probabilities::List(v) => (v.clone(), classes.to_vec()),
        Probabilities::Named(map) => {
            if classes.is_empty() {
                (
                    map.values().copied().collect(),
                    map.keys().cloned().collect(),
                )
            } else {
                let mut names = classes.to_vec();
                names.extend(map.keys().filter(|k| !classes.contains(k)).cloned());
                let values = names
                    .iter()
                    .map(|n| map.get(n).copied().unwrap_or(0.0))
                    .collect();
                (values, names)
            }
        }
    }
}

fn argmax(v: &[f64]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> TelemetryEvent {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["ts"] = "2026-01-01T00:00:00Z".into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn schema_and_frame() {
        let events = vec![
            ev(
                r#"{"model":"m","features":{"a":1,"b":"x","c":1},"output":{"probabilities":[0.1,0.9]}}"#,
            ),
            ev(
                r#"{"model":"m","features":{"a":2,"b":"y","c":"z"},"output":{"probabilities":{"no":0.7,"yes":0.3}}}"#,
            ),
            ev(r#"{"model":"m","features":{"a":null},"output":{"label":"maybe"}}"#),
        ];
        let s = Schema::infer(&events);
        assert_eq!(s.numeric, vec!["a"]);
        assert_eq!(s.categorical, vec!["b"]);
        assert_eq!(s.mixed, vec!["c"]);
        let f = Frame::build(&events, &s, &["no".into(), "yes".into()]);
        assert_eq!(f.rows, 3);
        assert_eq!(f.numeric[0], vec![1.0, 2.0]);
        assert_eq!(f.categorical[0], vec!["x", "y"]);
        assert_eq!(f.probabilities, vec![vec![0.1, 0.9], vec![0.7, 0.3]]);
        assert_eq!(f.predicted, vec!["yes", "no", "maybe"]);
    }
}
