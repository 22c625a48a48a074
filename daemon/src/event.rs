//! The telemetry event: what one model request/response looks like once decoded.
//!
//! The JSON form is documented in `docs/event.schema.json`; this is its Rust
//! shape. Events flow forward from `decode` through `window` to `detect`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event came from: a stream (Kafka `topic/partition`, a file
/// path, the demo generator), the message's monotonically increasing offset
/// in it, and the event's index inside that message (a message may carry an
/// array of events). Offsets drive at-least-once acknowledgement; offset and
/// index together drive replay de-duplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePos {
    pub stream: String,
    pub offset: i64,
    pub index: i64,
}

impl SourcePos {
    pub fn mark(&self) -> Mark {
        Mark {
            offset: self.offset,
            index: self.index,
        }
    }
}

/// A point in one stream, ordered by offset, then by index in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    pub offset: i64,
    pub index: i64,
}

/// One feature value: numbers are numeric features, strings and booleans
/// categorical ones. `null` means "missing" and is skipped by detectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FeatureValue {
    Number(f64),
    Bool(bool),
    /// Boxed, not a `String`: a value is 24 bytes, not 32, and a held
    /// event's values are most of what it costs.
    Text(Box<str>),
    Missing(()),
}

// What a held event's size rests on (see `Text`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<FeatureValue>() == 24);

impl FeatureValue {
    pub fn as_number(&self) -> Option<f64> {
        match self {
            FeatureValue::Number(v) => Some(*v),
            _ => None,
        }
    }

    /// The category label of a categorical value; numbers are not categories.
    pub fn as_category(&self) -> Option<String> {
        match self {
            FeatureValue::Text(s) => Some(s.to_string()),
            FeatureValue::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A feature name, shared by every event that carries it.
pub type Name = std::sync::Arc<str>;

/// An event's features, sorted by name: the values in one allocation per
/// event, the names interned and their list shared by every event of the
/// same layout (one producer's). A window of events is then read column by
/// column without a map lookup or a cache miss per value (a map of owned
/// strings per event was most of what building a window's columns cost),
/// and a feature costs its value alone (24 bytes, not 48 with its name
/// and a `String`: at 50 features half of an event).
/// In JSON an object; a name given twice keeps its last value, as a map
/// would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// Strictly increasing.
    names: Arc<[Name]>,
    values: Vec<FeatureValue>,
}

impl Features {
    pub fn get(&self, name: &str) -> Option<&FeatureValue> {
        self.names
            .binary_search_by(|n| (**n).cmp(name))
            .ok()
            .map(|i| &self.values[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FeatureValue)> {
        self.names.iter().map(|n| &**n).zip(&self.values)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The names in order; events of one layout share the same list.
    pub fn names(&self) -> &[Name] {
        &self.names
    }

    /// The values, in the order of `names`.
    pub fn values(&self) -> &[FeatureValue] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn from_pairs(pairs: Vec<(Name, FeatureValue)>) -> Self {
        // Stable, so that of equal names the last given stays last.
        let (pairs, shared) = sort_by_name(pairs);
        let mut values = Vec::with_capacity(pairs.len());
        if let Some(names) = shared {
            values.extend(pairs.into_iter().map(|(_, v)| v));
            return Self { names, values };
        }
        let mut names: Vec<Name> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            match names.last() {
                Some(last) if *last == name => *values.last_mut().expect("paired") = value,
                _ => {
                    names.push(name);
                    values.push(value);
                }
            }
        }
        values.shrink_to_fit();
        Self {
            names: names.into(),
            values,
        }
    }
}

impl<K: AsRef<str>> FromIterator<(K, FeatureValue)> for Features {
    fn from_iter<I: IntoIterator<Item = (K, FeatureValue)>>(iter: I) -> Self {
        Self::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (intern(k.as_ref()), v))
                .collect(),
        )
    }
}

impl std::ops::Index<&str> for Features {
    type Output = FeatureValue;

    fn index(&self, name: &str) -> &FeatureValue {
        self.get(name)
            .unwrap_or_else(|| panic!("no feature named {name}"))
    }
}

/// The names of the last event sorted on this thread, in the order they
/// arrived, and the order that sorted them. Holding the names keeps their
/// addresses from being reused by other names, so an event whose names are
/// these same allocations, in this order, is sorted by this order unchecked.
#[derive(Default)]
struct Layout {
    names: Vec<Name>,
    order: Vec<usize>,
    /// The sorted names, where they strictly increase (no name was given
    /// twice; a repeated name takes the stable sort, so its last value
    /// stays last): the list every event of this layout shares.
    sorted: Option<Arc<[Name]>>,
}

/// A layout of more names than this, or of a name longer than the interner
/// keeps, is not kept: what a producer sends decides what is held here (at
/// most 4,096 x 128 bytes a thread).
const LAYOUT_NAMES: usize = 4096;

thread_local! {
    static LAST_LAYOUT: std::cell::RefCell<Layout> = Default::default();
}

type Pairs = Vec<(Name, FeatureValue)>;

/// `pairs` sorted by name, stably. A producer sends its features in the
/// same order every time: when this event's names are the last sorted
/// event's (the same interned names, in the same order), the order that
/// sorted those sorts these, instead of a comparison sort per event. Also
/// the sorted names' shared list, where they strictly increase (no name
/// given twice).
fn sort_by_name(pairs: Pairs) -> (Pairs, Option<Arc<[Name]>>) {
    LAST_LAYOUT.with(|last| {
        let mut last = last.borrow_mut();
        let reuse = last.sorted.is_some()
            && last.names.len() == pairs.len()
            && last
                .names
                .iter()
                .zip(&pairs)
                .all(|(a, (b, _))| Name::ptr_eq(a, b));
        let mut shared = last.sorted.clone().filter(|_| reuse);
        if !reuse {
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            order.sort_by(|&a, &b| pairs[a].0.cmp(&pairs[b].0));
            let strict = order.windows(2).all(|w| pairs[w[0]].0 < pairs[w[1]].0);
            shared = strict.then(|| order.iter().map(|&i| pairs[i].0.clone()).collect());
            // Names the interner would not keep are not kept here either.
            let keep =
                pairs.len() <= LAYOUT_NAMES && pairs.iter().all(|(n, _)| n.len() <= INTERNED_BYTES);
            *last = match keep {
                true => Layout {
                    names: pairs.iter().map(|(n, _)| n.clone()).collect(),
                    order,
                    sorted: shared.clone(),
                },
                false => Layout {
                    order,
                    ..Layout::default()
                },
            };
        }
        let mut slots: Vec<Option<(Name, FeatureValue)>> = pairs.into_iter().map(Some).collect();
        let sorted = last.order.iter().filter_map(|&i| slots[i].take()).collect();
        (sorted, shared)
    })
}

/// Names kept per thread for sharing. Names are interned while the JSON is
/// parsed, before any limit is checked, so what a producer sends decides
/// what lands here: only names up to `INTERNED_BYTES` are kept, and a full
/// table starts over (a producer inventing names cannot pin memory, nor
/// crowd out the real names for good). At most 4,096 x 128 bytes a thread.
const INTERNED: usize = 4096;
const INTERNED_BYTES: usize = 128;

thread_local! {
    static NAMES: std::cell::RefCell<std::collections::HashSet<Name, foldhash::fast::RandomState>> =
        Default::default();
}

/// The shared copy of `name`.
pub fn intern(name: &str) -> Name {
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Name = name.into();
        if name.len() <= INTERNED_BYTES {
            if names.len() >= INTERNED {
                names.clear();
            }
            names.insert(n.clone());
        }
        n
    })
}

impl Serialize for Features {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FeaturesVisitor)
    }
}

struct FeaturesVisitor;

impl<'de> serde::de::Visitor<'de> for FeaturesVisitor {
    type Value = Features;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of feature name -> value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Features, A::Error> {
        // The last layout's names, expected in its order: a key equal to
        // the expected name takes it without a lookup in the interned names.
        let layout = LAST_LAYOUT.with(|l| std::mem::take(&mut *l.borrow_mut()));
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        let mut read = || {
            while let Some(k) = map.next_key_seed(KnownName(layout.names.get(pairs.len())))? {
                pairs.push((k, map.next_value()?));
            }
            Ok(())
        };
        let read = read();
        LAST_LAYOUT.with(|l| *l.borrow_mut() = layout);
        read.map(|()| Features::from_pairs(pairs))
    }
}

/// A map key read as `expected` when it is equal to it, else interned.
struct KnownName<'a>(Option<&'a Name>);

impl<'de> serde::de::DeserializeSeed<'de> for KnownName<'_> {
    type Value = Name;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KnownName<'_> {
    type Value = Name;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a feature name")
    }

    fn visit_str<E>(self, v: &str) -> Result<Name, E> {
        Ok(match self.0 {
            Some(n) if **n == *v => n.clone(),
            _ => intern(v),
        })
    }
}

/// Class probabilities either as a list aligned with the model's configured
/// class names or as an explicit `class -> probability` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Probabilities {
    List(Vec<f64>),
    Named(BTreeMap<String, f64>),
}

// Both enums are read by the JSON's own type, one pass: serde's `untagged`
// buffers every value and tries each variant in turn, which cost more than
// the rest of decoding an event.
impl<'de> Deserialize<'de> for FeatureValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FeatureVisitor)
    }
}

struct FeatureVisitor;

impl<'de> serde::de::Visitor<'de> for FeatureVisitor {
    type Value = FeatureValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, string, boolean or null")
    }
    fn visit_f64<E>(self, v: f64) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Number(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Number(v as f64))
    }
    fn visit_bool<E>(self, v: bool) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Bool(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Text(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Text(v.into_boxed_str()))
    }
    fn visit_unit<E>(self) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Missing(()))
    }
    fn visit_none<E>(self) -> Result<FeatureValue, E> {
        Ok(FeatureValue::Missing(()))
    }
}

impl<'de> Deserialize<'de> for Probabilities {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbabilitiesVisitor)
    }
}

struct ProbabilitiesVisitor;

impl<'de> serde::de::Visitor<'de> for ProbabilitiesVisitor {
    type Value = Probabilities;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of probabilities or an object of class -> probability")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<Probabilities, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(p) = seq.next_element()? {
            v.push(p);
        }
        Ok(Probabilities::List(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<Probabilities, A::Error> {
        let mut named = BTreeMap::new();
        while let Some((k, p)) = map.next_entry()? {
            named.insert(k, p);
        }
        Ok(Probabilities::Named(named))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Probabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A decoded request/response pair of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub ts: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub features: Features,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f64>>,
    #[serde(default)]
    pub output: Output,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<serde_json::Value>,
    /// Context the producer wants quoted in alert evidence (tenant,
    /// region, latency); no detector reads it.
    #[serde(default, skip_serializing_if = "no_attributes")]
    pub attributes: Attributes,
}

/// An event's attributes by name: strings, numbers and booleans. Shared:
/// every row of a batched message carries its message's attributes.
pub type Attributes = std::sync::Arc<BTreeMap<String, FeatureValue>>;

fn no_attributes(a: &Attributes) -> bool {
    a.is_empty()
}

impl TelemetryEvent {
    /// The version label used to key windows; events without one share `""`.
    pub fn version_key(&self) -> &str {
        self.model_version.as_deref().unwrap_or("")
    }
}

/// An event together with the position of the message that carried it.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub event: TelemetryEvent,
    pub pos: SourcePos,
    /// A second message the event came from (the earlier half of a pair),
    /// held until the event is durable as `pos` is.
    pub also: Option<SourcePos>,
}

impl Positioned {
    pub fn new(event: TelemetryEvent, pos: SourcePos) -> Self {
        Self {
            event,
            pos,
            also: None,
        }
    }
}

/// The messages of both halves of the pairs among some events (and of
/// halves scored alone), per stream, offsets sorted and distinct: stored
/// with the window or reference the events went into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Halves(pub BTreeMap<String, Vec<i64>>);

impl Halves {
    pub fn of<'a>(items: impl IntoIterator<Item = &'a Positioned>) -> Self {
        let mut streams: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let halves = items
            .into_iter()
            .filter_map(|i| Some([i.also.as_ref()?, &i.pos]))
            .flatten();
        for p in halves.filter(|p| p.is_transport()) {
            match streams.get_mut(&p.stream) {
                Some(offsets) => offsets.push(p.offset),
                None => {
                    streams.insert(p.stream.clone(), vec![p.offset]);
                }
            }
        }
        for offsets in streams.values_mut() {
            offsets.sort_unstable();
            offsets.dedup();
        }
        Self(streams)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What marks a stream that is not a transport's: unpaired halves are
/// windowed on `<stream>#unpaired-<side>` (see `join`), which is never
/// acknowledged.
pub const UNPAIRED: &str = "#unpaired";

impl SourcePos {
    /// Whether the position is a transport's, to be acknowledged.
    pub fn is_transport(&self) -> bool {
        !self.stream.contains(UNPAIRED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(json: &str) -> Features {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_every_time() {
        // The second decode meets the remembered order of the first.
        for _ in 0..3 {
            let f = features(r#"{"b": 1, "a": 2, "b": 3, "c": 4}"#);
            assert_eq!(f.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
            assert_eq!(f["b"], FeatureValue::Number(3.0));
        }
        let f = features(r#"{"z": 1, "y": 2}"#);
        assert_eq!(f.keys().collect::<Vec<_>>(), ["y", "z"]);
    }

    /// Events of one layout share one list of names, whatever order the
    /// producer sent them in; a layout too large to remember is sorted
    /// alone, and lends its names to no other event.
    #[test]
    fn events_of_one_layout_share_their_names() {
        let (a, b) = (
            features(r#"{"y": 1, "x": 2}"#),
            features(r#"{"y": 3, "x": 4}"#),
        );
        assert!(std::ptr::eq(a.names(), b.names()), "one list");
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            [
                ("x", &FeatureValue::Number(4.0)),
                ("y", &FeatureValue::Number(3.0))
            ]
        );
        let other = features(r#"{"x": 5, "z": 6}"#);
        assert!(!std::ptr::eq(a.names(), other.names()));
        let wide: String = (0..=LAYOUT_NAMES)
            .map(|i| format!(r#""f{i:05}": {i}"#))
            .collect::<Vec<_>>()
            .join(",");
        let wide = features(&format!("{{{wide}}}"));
        assert_eq!(wide.len(), LAYOUT_NAMES + 1);
        assert_eq!(wide["f04096"], FeatureValue::Number(4096.0));
        let empty = features("{}");
        assert!(empty.is_empty() && empty.names().is_empty(), "{empty:?}");
    }

    /// Both halves of a pair are kept, whichever came first; a half scored
    /// alone by its own position; the unpaired stream's and lone events'
    /// positions never.
    #[test]
    fn halves_keep_both_messages_of_each_pair() {
        let at = |stream: &str, offset: i64| SourcePos {
            stream: stream.into(),
            offset,
            index: 0,
        };
        let event: TelemetryEvent =
            serde_json::from_str(r#"{"model":"m","ts":"2026-01-01T00:00:00Z"}"#).unwrap();
        let item = |pos: SourcePos, also: Option<SourcePos>| Positioned {
            also,
            ..Positioned::new(event.clone(), pos)
        };
        let items = [
            item(at("in/0", 7), Some(at("out/0", 3))),
            item(at("t/0", 5), Some(at("t/0", 4))),
            item(at("t/0", 6), Some(at("t/0", 9))),
            item(at("t/0#unpaired-request", 11), Some(at("t/0", 11))),
            item(at("t/0", 20), None),
        ];
        let halves = Halves::of(&items);
        let want: BTreeMap<String, Vec<i64>> = [
            ("in/0".to_string(), vec![7]),
            ("out/0".to_string(), vec![3]),
            ("t/0".to_string(), vec![4, 5, 6, 9, 11]),
        ]
        .into();
        assert_eq!(halves.0, want);
    }

    #[test]
    fn the_interner_keeps_short_names_and_stays_bounded() {
        assert!(std::sync::Arc::ptr_eq(&intern("amount"), &intern("amount")));
        let long = "x".repeat(INTERNED_BYTES + 1);
        assert!(!std::sync::Arc::ptr_eq(&intern(&long), &intern(&long)));
        for i in 0..(2 * INTERNED + 10) {
            intern(&format!("invented-{i}"));
            assert!(NAMES.with(|n| n.borrow().len()) <= INTERNED);
        }
        // Real names are shared again once seen after the table started over.
        assert!(std::sync::Arc::ptr_eq(&intern("amount"), &intern("amount")));
    }
}
