//! Columnar views of a set of events, typed by the model's reference.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::{FeatureValue, Name, Probabilities, TelemetryEvent};

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
        // One pass over every event's features, counting by kind. Events
        // in a run with the same names (the same interned names, in the
        // same order: one producer) count by position, and the run is
        // added by name once it ends.
        let mut kinds: std::collections::HashMap<&str, (usize, usize)> = Default::default();
        let mut layout: &[Name] = &[];
        let mut run: Vec<(usize, usize)> = Vec::new();
        fn flush<'e>(
            kinds: &mut std::collections::HashMap<&'e str, (usize, usize)>,
            layout: &'e [Name],
            run: &[(usize, usize)],
        ) {
            for (name, (num, cat)) in layout.iter().zip(run) {
                let k = kinds.entry(&**name).or_default();
                k.0 += num;
                k.1 += cat;
            }
        }
        for e in events {
            let names = e.features.names();
            let same = names.len() == layout.len()
                && names.iter().zip(layout).all(|(a, b)| Name::ptr_eq(a, b));
            if !same {
                flush(&mut kinds, layout, &run);
                layout = names;
                run = vec![(0, 0); names.len()];
            }
            for (k, value) in run.iter_mut().zip(e.features.values()) {
                match value {
                    FeatureValue::Number(_) => k.0 += 1,
                    FeatureValue::Text(_) | FeatureValue::Bool(_) => k.1 += 1,
                    _ => {}
                }
            }
        }
        flush(&mut kinds, layout, &run);
        let names: BTreeSet<&str> = kinds.keys().copied().collect();
        let mut schema = Schema::default();
        for name in names {
            match kinds[name] {
                (num, 0) if num > 0 => schema.numeric.push(name.to_string()),
                (0, cat) if cat > 0 => schema.categorical.push(name.to_string()),
                (0, 0) => {}
                _ => schema.mixed.push(name.to_string()),
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
    /// |output.score - actual| where the event carries a numeric true value.
    pub regression_error: Vec<f64>,
    /// Embeddings, for multivariate and out-of-distribution detectors.
    pub embeddings: Vec<Vec<f64>>,
    /// Each event's numeric features in schema order, where all are present
    /// (incomplete rows are left out).
    pub feature_rows: Vec<Vec<f64>>,
    /// The model version every event carried, or the most common one
    /// (`None` when no event named one).
    pub version: Option<String>,
    /// Who sent each of `embeddings`, `feature_rows` and `probabilities`.
    pub embedding_senders: Vec<Sender>,
    pub feature_row_senders: Vec<Sender>,
    pub probability_senders: Vec<Sender>,
    /// The model's stored past the window is judged against (set by the
    /// scorer; empty for a reference).
    pub history: super::history::History,
    /// Requests per named client, for volume; bounded by the window's size.
    pub clients: std::collections::HashMap<String, u64>,
    /// Who sent every event, in order, with the class it was answered.
    pub senders: Vec<Sender>,
    /// Per event, the sum of its numeric features named `*_tokens` (an LLM
    /// call's usage), where it has any.
    pub tokens: Vec<Option<f64>>,
}

/// The tokens an event's call used: its numeric features named in
/// `names` (the schema's `*_tokens`) summed. No work for models without
/// any, which is most of them.
fn tokens(e: &TelemetryEvent, names: &[&str]) -> Option<f64> {
    let used: Vec<f64> = names
        .iter()
        .filter_map(|n| e.features.get(n)?.as_number())
        .collect();
    (!used.is_empty()).then(|| used.iter().sum())
}

/// The request and client ids of one event, for evidence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sender {
    pub request_id: Option<String>,
    pub client_id: Option<String>,
    /// The class the model answered with, where it gave one: label flips
    /// between a client's neighbouring requests are read from it.
    pub predicted: Option<String>,
    /// Its client is on `detect.exempt_clients`: left out of the per-client
    /// tests.
    pub exempt: bool,
    /// The event's attributes as evidence (`tenant=acme region=eu`),
    /// shared by the sender's copies.
    pub context: Option<std::sync::Arc<str>>,
}

/// The most of an event's attributes quoted with it, and the longest value.
const CONTEXT_ATTRIBUTES: usize = 8;
const CONTEXT_VALUE_CHARS: usize = 64;

impl Sender {
    fn of(
        e: &TelemetryEvent,
        predicted: &Option<String>,
        context: Option<std::sync::Arc<str>>,
    ) -> Self {
        Self {
            request_id: e.request_id.clone(),
            client_id: e.client_id.clone(),
            predicted: predicted.clone(),
            exempt: false,
            context,
        }
    }

    /// `req-17 client=shop-3 tenant=acme`, or `-` when the event named
    /// none of them.
    pub fn label(&self) -> String {
        let ids = match (&self.request_id, &self.client_id) {
            (Some(r), Some(c)) => format!("{r} client={c}"),
            (Some(r), None) => r.clone(),
            (None, Some(c)) => format!("client={c}"),
            (None, None) => String::new(),
        };
        match (&self.context, ids.is_empty()) {
            (None, true) => "-".into(),
            (None, false) => ids,
            (Some(c), true) => c.to_string(),
            (Some(c), false) => format!("{ids} {c}"),
        }
    }
}

/// The attributes last quoted, and how: the rows of one message share
/// theirs, and are quoted once.
#[derive(Default)]
struct Contexts(Option<(crate::event::Attributes, Option<std::sync::Arc<str>>)>);

impl Contexts {
    fn of(&mut self, attributes: &crate::event::Attributes) -> Option<std::sync::Arc<str>> {
        if attributes.is_empty() {
            return None;
        }
        match &self.0 {
            Some((last, quoted)) if std::sync::Arc::ptr_eq(last, attributes) => quoted.clone(),
            _ => {
                let quoted = context(attributes);
                self.0 = Some((attributes.clone(), quoted.clone()));
                quoted
            }
        }
    }
}

/// Attributes in name order, the first `CONTEXT_ATTRIBUTES`, values cut at
/// `CONTEXT_VALUE_CHARS`: evidence stays short however many the producer
/// attached. Missing values are left out; control characters are spaces.
fn context(attributes: &crate::event::Attributes) -> Option<std::sync::Arc<str>> {
    let quoted: Vec<String> = attributes
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                FeatureValue::Number(x) => x.to_string(),
                FeatureValue::Bool(b) => b.to_string(),
                // A line break would start a line of its own in a page.
                FeatureValue::Text(t) => t
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(CONTEXT_VALUE_CHARS)
                    .collect(),
                FeatureValue::Missing(()) => return None,
            };
            Some(format!("{k}={text}"))
        })
        .take(CONTEXT_ATTRIBUTES)
        .collect();
    (!quoted.is_empty()).then(|| quoted.join(" ").into())
}

impl Frame {
    /// Marks the requests of exempt clients, and drops those clients from
    /// the per-client counts. Returns how many requests they sent.
    pub fn exempt(&mut self, exempt: &super::clients::ExemptClients) -> u64 {
        if exempt.0.is_empty() {
            return 0;
        }
        let senders = [
            &mut self.embedding_senders,
            &mut self.feature_row_senders,
            &mut self.probability_senders,
            &mut self.senders,
        ];
        // Each distinct id matched once, however many requests it sent.
        let mut matched: std::collections::HashMap<String, bool> = Default::default();
        for s in senders.into_iter().flatten() {
            s.exempt = s
                .client_id
                .as_deref()
                .is_some_and(|c| match matched.get(c) {
                    Some(m) => *m,
                    None => *matched.entry(c.to_string()).or_insert(exempt.matches(c)),
                });
        }
        let mut requests = 0;
        self.clients.retain(|c, n| {
            let keep = !matched.get(c).copied().unwrap_or_else(|| exempt.matches(c));
            requests += if keep { 0 } else { *n };
            keep
        });
        requests
    }

    /// The rows of a vector space (`features` or `embedding`) and who sent
    /// each.
    pub fn space(&self, space: &str) -> (&[Vec<f64>], &[Sender]) {
        match space {
            "features" => (&self.feature_rows, &self.feature_row_senders),
            _ => (&self.embeddings, &self.embedding_senders),
        }
    }

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
    /// No values yet: `schema`'s columns, and the lists every event adds
    /// to sized for `n` events.
    fn with_rows(schema: &Schema, n: usize) -> Self {
        let mut f = Frame {
            numeric: vec![Vec::new(); schema.numeric.len()],
            categorical: vec![Vec::new(); schema.categorical.len()],
            senders: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
            predicted: Vec::with_capacity(n),
            ..Frame::default()
        };
        if schema.numeric.len() >= 2 {
            f.feature_rows.reserve(n);
            f.feature_row_senders.reserve(n);
        }
        f
    }

    pub fn build<'a>(
        events: impl IntoIterator<Item = &'a TelemetryEvent>,
        schema: &Schema,
        classes: &[String],
    ) -> Self {
        let mut events = events.into_iter().peekable();
        let n = events.size_hint().0;
        let mut f = Frame::with_rows(schema, n);
        let mut versions: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut slots = Slots::of(schema);
        // The first event's columns sized for every event at once: grown by
        // doubling, a reference's columns took twice their size in fresh
        // pages, copied. Not every column of the schema: a producer that
        // invents a name per event would make that rows x names.
        if let Some(first) = events.peek() {
            slots.reserve(first, &mut f, n);
        }
        let mut row = vec![0.0; schema.numeric.len()];
        let mut contexts = Contexts::default();
        let token_names: Vec<&str> = schema
            .numeric
            .iter()
            .map(String::as_str)
            .filter(|n| n.ends_with("_tokens"))
            .collect();
        for e in events {
            f.rows += 1;
            if let Some(c) = &e.client_id {
                match f.clients.get_mut(c) {
                    Some(n) => *n += 1,
                    None => {
                        f.clients.insert(c.clone(), 1);
                    }
                }
            }
            if let Some(v) = &e.model_version {
                *versions.entry(v.as_str()).or_default() += 1;
            }
            let present = slots.place(e, &mut f, &mut row);
            let probs = e.output.probabilities.as_ref().map(|p| ordered(p, classes));
            let label = predicted(e, &probs);
            let sender = Sender::of(e, &label, contexts.of(&e.attributes));
            f.tokens.push(tokens(e, &token_names));
            if schema.numeric.len() >= 2 && present == schema.numeric.len() {
                f.feature_rows.push(row.clone());
                f.feature_row_senders.push(sender.clone());
            }
            if let Some((values, _)) = probs {
                f.probabilities.push(values);
                f.probability_senders.push(sender.clone());
                f.correct
                    .push(match (&label, e.actual.as_ref().and_then(actual_label)) {
                        (Some(predicted), Some(actual)) => Some(*predicted == actual),
                        _ => None,
                    });
            }
            if let Some(v) = &e.embedding {
                f.embeddings.push(v.clone());
                f.embedding_senders.push(sender.clone());
            }
            f.senders.push(sender);
            if let Some(l) = label {
                f.predicted.push(l);
            }
            if let Some(v) = e.output.score.filter(|v| v.is_finite()) {
                f.regression.push(v);
                let actual = e.actual.as_ref().and_then(|a| a.as_f64());
                if let Some(error) = actual.map(|a| (v - a).abs()).filter(|d| d.is_finite()) {
                    f.regression_error.push(error);
                }
            }
        }
        f.version = versions
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(v, _)| v.to_string());
        f
    }
}

/// Where each schema feature's values go, sorted by name. An event's
/// features are sorted by name too, so one merge of the two places every
/// value; and events of one producer share their interned names, so the
/// merge is done once per layout and the next event with the same names
/// (compared by pointer) reuses it. A map lookup per feature and event was
/// most of what building a frame cost.
struct Slots<'s> {
    slots: Vec<(&'s str, Slot)>,
    /// The last layout seen: each feature name's address and its slot.
    layout: Vec<(*const u8, Option<Slot>)>,
}

#[derive(Clone, Copy)]
enum Slot {
    Numeric(usize),
    Categorical(usize),
}

/// The most values a frame reserves room for up front (32 MB of numbers):
/// 80 features of a 50,000-event reference fit; past it columns grow.
const RESERVED: usize = 1 << 22;

impl<'s> Slots<'s> {
    fn of(schema: &'s Schema) -> Self {
        let numeric = schema.numeric.iter().enumerate();
        let categorical = schema.categorical.iter().enumerate();
        let mut slots: Vec<(&str, Slot)> = numeric
            .map(|(i, n)| (n.as_str(), Slot::Numeric(i)))
            .chain(categorical.map(|(i, n)| (n.as_str(), Slot::Categorical(i))))
            .collect();
        slots.sort_by(|a, b| a.0.cmp(b.0));
        Self {
            slots,
            layout: Vec::new(),
        }
    }

    /// Pushes `e`'s values onto their columns and its numeric ones into
    /// `row` (schema order); returns how many numeric features it had.
    fn place(&mut self, e: &TelemetryEvent, f: &mut Frame, row: &mut [f64]) -> usize {
        let names = e.features.names();
        let same = self.layout.len() == names.len()
            && self
                .layout
                .iter()
                .zip(names)
                .all(|((p, _), n)| *p == n.as_ptr());
        if !same {
            self.layout = self.layout_of(names);
        }
        let mut present = 0;
        for ((_, slot), value) in self.layout.iter().zip(e.features.values()) {
            match slot {
                Some(Slot::Numeric(i)) => {
                    if let Some(v) = value.as_number() {
                        f.numeric[*i].push(v);
                        row[*i] = v;
                        present += 1;
                    }
                }
                Some(Slot::Categorical(i)) => {
                    if let Some(v) = value.as_category() {
                        f.categorical[*i].push(v);
                    }
                }
                None => {}
            }
        }
        present
    }

    /// Room for `n` values in each column `e` has a value for, at most
    /// `RESERVED` values in all: a first event of many features the
    /// others lack reserves no more than that.
    fn reserve(&self, e: &TelemetryEvent, f: &mut Frame, n: usize) {
        let layout = self.layout_of(e.features.names());
        let each = n.min(RESERVED / layout.len().max(1));
        for (_, slot) in layout {
            match slot {
                Some(Slot::Numeric(i)) => f.numeric[i].reserve_exact(each),
                Some(Slot::Categorical(i)) => f.categorical[i].reserve_exact(each),
                None => {}
            }
        }
    }

    /// Each name's slot, by merging the two sorted lists.
    fn layout_of(&self, names: &[Name]) -> Vec<(*const u8, Option<Slot>)> {
        let mut at = 0;
        names
            .iter()
            .map(|name| {
                while at < self.slots.len() && self.slots[at].0 < &**name {
                    at += 1;
                }
                let slot = self
                    .slots
                    .get(at)
                    .filter(|(slot_name, _)| *slot_name == &**name)
                    .map(|(_, slot)| *slot);
                (name.as_ptr(), slot)
            })
            .collect()
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
/// The probabilities in class order and the class names they go with
/// (borrowed where they are the configured ones: this runs per event).
/// The class the event answered with: its label, else its most probable
/// class.
fn predicted(e: &TelemetryEvent, probs: &Option<(Vec<f64>, Cow<'_, [String]>)>) -> Option<String> {
    e.output.label.clone().or_else(|| {
        let (values, names) = probs.as_ref()?;
        argmax(values).map(|i| {
            names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}"))
        })
    })
}

fn ordered<'a>(p: &'a Probabilities, classes: &'a [String]) -> (Vec<f64>, Cow<'a, [String]>) {
    match p {
        Probabilities::List(v) => (v.clone(), Cow::Borrowed(classes)),
        Probabilities::Named(map) => {
            if classes.is_empty() {
                (
                    map.values().copied().collect(),
                    Cow::Owned(map.keys().cloned().collect()),
                )
            } else {
                let mut names = classes.to_vec();
                names.extend(map.keys().filter(|k| !classes.contains(k)).cloned());
                let values = names
                    .iter()
                    .map(|n| map.get(n).copied().unwrap_or(0.0))
                    .collect();
                (values, Cow::Owned(names))
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

    /// Columns are sized up front for the features the first event has,
    /// not for every name the schema holds: a producer inventing a name per
    /// event gets columns of its values, not rows x names of room.
    #[test]
    fn a_name_per_event_reserves_no_room_per_name() {
        let n = 2000;
        let events: Vec<TelemetryEvent> = (0..n)
            .map(|i| {
                ev(&format!(
                    r#"{{"model":"m","features":{{"a":{i},"b":1,"x{i}":2}}}}"#
                ))
            })
            .collect();
        let schema = Schema::infer(&events);
        assert_eq!(schema.numeric.len(), n + 2);
        let f = Frame::build(&events, &schema, &[]);
        let room: usize = f.numeric.iter().map(Vec::capacity).sum();
        assert!(room < 10 * n, "room for {room} values, {} held", 3 * n);
        assert!(
            f.numeric[0].capacity() >= n,
            "the first event's columns are sized once"
        );
        // A first event of many features the others lack: bounded room.
        let mut wide = r#"{"model":"m","features":{"a":0"#.to_string();
        for k in 0..5000 {
            wide.push_str(&format!(r#","w{k}":1"#));
        }
        let mut events = vec![ev(&format!("{wide}}}}}"))];
        events.extend((1..n).map(|i| ev(&format!(r#"{{"model":"m","features":{{"a":{i}}}}}"#))));
        let schema = Schema::infer(&events);
        let f = Frame::build(&events, &schema, &[]);
        let room: usize = f.numeric.iter().map(Vec::capacity).sum();
        assert!(room <= RESERVED + 4 * n, "room for {room} values");
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

    #[test]
    fn a_senders_attributes_are_quoted_short_and_bounded() {
        let many: Vec<String> = (0..12).map(|i| format!(r#""k{i:02}":{i}"#)).collect();
        let long = "r".repeat(100);
        let events = vec![
            ev(&format!(
                r#"{{"model":"m","request_id":"q1","attributes":{{"region":"{long}","canary":true,"tenant":"ac\nme","gone":null}}}}"#
            )),
            ev(&format!(
                r#"{{"model":"m","attributes":{{{}}}}}"#,
                many.join(",")
            )),
            ev(r#"{"model":"m","client_id":"c"}"#),
        ];
        let f = Frame::build(&events, &Schema::infer(&events), &[]);
        let labels: Vec<String> = f.senders.iter().map(Sender::label).collect();
        assert_eq!(
            labels[0],
            format!("q1 canary=true region={} tenant=ac me", "r".repeat(64))
        );
        let quoted: Vec<String> = (0..8).map(|i| format!("k{i:02}={i}")).collect();
        assert_eq!(labels[1], quoted.join(" "));
        assert_eq!(labels[2], "client=c");
    }
}
