//! Inference bodies as serving stacks log them, one event per row:
//!
//! - Open Inference Protocol (KServe V2, Triton) REST: a request's `inputs`
//!   and a response's `outputs`, each a list of tensors `{name, shape,
//!   datatype, data}` whose first dimension is the batch; `data` is
//!   row-major, flat or nested.
//! - KServe V1: a request's `instances` and a response's `predictions`, one
//!   element per row.
//!
//! Inputs become features. A tensor of one value per row is the feature of
//! its name; a wider one gives the columns named in config, else
//! `<tensor>_<j>`. Outputs become the event's output: the probability
//! vector, the label and the score, from the tensors config names, else by
//! shape (the first floating-point tensor of two or more values in [0, 1]
//! per row is the probability vector; the first of one integer, string or
//! boolean per row the label; the first of one float the score).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DecodeError, Side};
use crate::event::{
    Attributes, FeatureValue, Features, Output, Probabilities, TelemetryEvent, intern,
};

/// How one model's tensors map to features and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelTensors {
    /// Column names of wide input tensors, by tensor name (KServe V1's rows
    /// are the tensor `instances`).
    pub columns: BTreeMap<String, Vec<String>>,
    /// The input tensor carried as the event's embedding rather than as
    /// features.
    pub embedding: Option<String>,
    /// The output tensor of class probabilities (V1: `predictions`).
    pub probabilities: Option<String>,
    /// Class names of the probability columns, in order.
    pub classes: Vec<String>,
    /// The output tensor of the predicted label.
    pub label: Option<String>,
}

/// The tensor formats' settings, shared by `oip-v2-json`,
/// `kserve-cloudevents` and `seldon-v2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TensorConfig {
    /// Request headers naming the client, tried in order: the message's own
    /// headers, then those KServe copies into `ce_metadata`.
    pub client_headers: Vec<String>,
    /// Message headers copied into the event's `attributes` under their
    /// own names, quoted in alert evidence (a tenant, a region).
    pub attribute_headers: Vec<String>,
    /// Per model (as the event names it), how its tensors map.
    pub models: BTreeMap<String, ModelTensors>,
}

impl Default for TensorConfig {
    fn default() -> Self {
        Self {
            client_headers: vec!["x-client-id".into(), "x-user-id".into()],
            attribute_headers: Vec::new(),
            models: BTreeMap::new(),
        }
    }
}

/// Most rows one message may carry, most values in one row and in all,
/// and the longest name, id or attribute copied into every row: a payload
/// under the size limit can still declare shapes whose product is absurd,
/// or an id that every one of its rows would copy. Checked before anything
/// is allocated from them.
const MAX_ROWS: usize = 10_000;
const MAX_ROW_VALUES: usize = 65_536;
const MAX_VALUES: usize = 1_000_000;
const MAX_TEXT: usize = 1024;

/// An inference body of either protocol, as far as the decoders read it.
#[derive(Debug, Default, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub(super) inputs: Option<Vec<Tensor>>,
    #[serde(default)]
    pub(super) outputs: Option<Vec<Tensor>>,
    #[serde(default)]
    pub(super) instances: Option<Vec<Value>>,
    #[serde(default)]
    pub(super) predictions: Option<Vec<Value>>,
}

/// One tensor: `data` is row-major, flat or nested.
#[derive(Debug, Deserialize)]
pub(super) struct Tensor {
    pub(super) name: String,
    #[serde(default)]
    pub(super) shape: Vec<i64>,
    #[serde(default)]
    pub(super) datatype: String,
    #[serde(default)]
    pub(super) data: Option<Value>,
}

impl Body {
    pub fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(payload).map_err(classify)
    }

    pub fn from_value(v: Value) -> Result<Self, DecodeError> {
        serde_json::from_value(v).map_err(classify)
    }

    /// Any JSON, for envelopes around a body.
    pub fn parse_value(payload: &[u8]) -> Result<Value, DecodeError> {
        serde_json::from_slice(payload).map_err(classify)
    }

    /// Which half the body is: inputs are a request, outputs with data a
    /// response (a request may list the outputs it wants, without data).
    pub fn side(&self) -> Option<Side> {
        if self.inputs.is_some() || self.instances.is_some() {
            Some(Side::Request)
        } else if self.predictions.is_some() || self.outputs.is_some() {
            Some(Side::Response)
        } else {
            None
        }
    }
}

fn classify(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::Schema(e.to_string()),
        _ => DecodeError::InvalidJson(e.to_string()),
    }
}

/// The skeleton every row of a half shares: model, version, time, ids.
pub struct RowTemplate {
    pub model: String,
    pub version: Option<String>,
    pub ts: chrono::DateTime<chrono::Utc>,
    pub request_id: Option<String>,
    pub client_id: Option<String>,
    pub attributes: Attributes,
}

impl RowTemplate {
    fn event(&self) -> TelemetryEvent {
        TelemetryEvent {
            model: self.model.clone(),
            model_version: self.version.clone(),
            ts: self.ts,
            request_id: self.request_id.clone(),
            client_id: self.client_id.clone(),
            features: Features::default(),
            embedding: None,
            output: Output::default(),
            actual: None,
            attributes: self.attributes.clone(),
        }
    }
}

/// One event per row of `body`'s `side`.
pub fn rows(
    body: &Body,
    side: Side,
    template: &RowTemplate,
    config: Option<&ModelTensors>,
) -> Result<Vec<TelemetryEvent>, DecodeError> {
    let default = ModelTensors::default();
    let config = config.unwrap_or(&default);
    let tensors = match (side, body) {
        (
            Side::Request,
            Body {
                inputs: Some(t), ..
            },
        ) => tensor_columns(t)?,
        (
            Side::Request,
            Body {
                instances: Some(rows),
                ..
            },
        ) => vec![rows_column("instances", rows)?],
        (
            Side::Response,
            Body {
                outputs: Some(t), ..
            },
        ) => tensor_columns(t)?,
        (
            Side::Response,
            Body {
                predictions: Some(rows),
                ..
            },
        ) => {
            vec![rows_column("predictions", rows)?]
        }
        _ => {
            return Err(DecodeError::Schema(format!(
                "body has no {} tensors",
                side.as_str()
            )));
        }
    };
    let n = batch_size(&tensors)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    check_sizes(&tensors, template)?;
    let mut events: Vec<TelemetryEvent> = (0..n).map(|_| template.event()).collect();
    match side {
        Side::Request => fill_inputs(&mut events, &tensors, config)?,
        Side::Response => fill_outputs(&mut events, &tensors, config)?,
    }
    Ok(events)
}

/// The bounds on what every row would copy, before the rows are made.
fn check_sizes(columns: &[Column], template: &RowTemplate) -> Result<(), DecodeError> {
    let width: usize = columns.iter().map(|c| c.width).sum();
    if width > MAX_ROW_VALUES {
        return Err(DecodeError::Schema(format!(
            "{width} values per row in all"
        )));
    }
    let values: usize = columns.iter().map(|c| c.values.len()).sum();
    if values > MAX_VALUES {
        return Err(DecodeError::Schema(format!(
            "{values} values in one message"
        )));
    }
    let texts = [
        Some(template.model.as_str()),
        template.version.as_deref(),
        template.request_id.as_deref(),
        template.client_id.as_deref(),
    ];
    let names = columns.iter().map(|c| Some(c.name.as_str()));
    let attributes = template.attributes.iter().flat_map(|(k, v)| {
        let text = match v {
            FeatureValue::Text(t) => Some(&**t),
            _ => None,
        };
        [Some(k.as_str()), text]
    });
    if let Some(long) = texts
        .into_iter()
        .chain(names)
        .chain(attributes)
        .flatten()
        .find(|t| t.len() > MAX_TEXT)
    {
        return Err(DecodeError::InvalidValue(format!(
            "a name or id of {} bytes, over {MAX_TEXT}: {:?}",
            long.len(),
            truncated(long)
        )));
    }
    Ok(())
}

/// A tensor cut into rows: `width` values per row, in row-major order.
struct Column {
    name: String,
    datatype: Datatype,
    width: usize,
    values: Vec<Value>,
}

impl Column {
    fn rows(&self) -> usize {
        self.values.len() / self.width.max(1)
    }

    fn row(&self, i: usize) -> &[Value] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Datatype {
    Bool,
    Int,
    Float,
    Bytes,
    /// V1 rows: whatever JSON each value is.
    Any,
}

fn datatype(name: &str) -> Result<Datatype, DecodeError> {
    Ok(match name {
        "BOOL" => Datatype::Bool,
        "UINT8" | "UINT16" | "UINT32" | "UINT64" | "INT8" | "INT16" | "INT32" | "INT64" => {
            Datatype::Int
        }
        "FP16" | "FP32" | "FP64" | "BF16" => Datatype::Float,
        "BYTES" => Datatype::Bytes,
        other => {
            return Err(DecodeError::Schema(format!(
                "unknown tensor datatype {:?}",
                truncated(other)
            )));
        }
    })
}

fn tensor_columns(tensors: &[Tensor]) -> Result<Vec<Column>, DecodeError> {
    tensors
        .iter()
        .filter(|t| t.data.is_some())
        .map(tensor_column)
        .collect()
}

/// A tensor's values, flattened, checked against its shape.
fn tensor_column(t: &Tensor) -> Result<Column, DecodeError> {
    let datatype = datatype(&t.datatype)?;
    let mut values = Vec::new();
    flatten(t.data.as_ref().unwrap_or(&Value::Null), &mut values, 0)?;
    let dims: Vec<usize> = t
        .shape
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| bad_shape(t, "a negative dimension")))
        .collect::<Result<_, _>>()?;
    let total = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| bad_shape(t, "too many values"))?;
    if total != values.len() {
        return Err(bad_shape(
            t,
            &format!("{} values where the shape holds {total}", values.len()),
        ));
    }
    // A scalar is one row; otherwise the first dimension is the batch.
    let width = dims
        .get(1..)
        .unwrap_or(&[])
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| bad_shape(t, "too many values per row"))?;
    if width > MAX_ROW_VALUES {
        return Err(bad_shape(t, &format!("{width} values per row")));
    }
    Ok(Column {
        name: t.name.clone(),
        datatype,
        width,
        values,
    })
}

fn bad_shape(t: &Tensor, why: &str) -> DecodeError {
    DecodeError::Schema(format!(
        "tensor {:?} of shape {:?}: {why}",
        truncated(&t.name),
        &t.shape[..t.shape.len().min(8)]
    ))
}

/// Nested arrays are row-major data; their depth is bounded so that a
/// hostile nesting cannot exhaust the stack (serde_json stops at 128).
fn flatten(v: &Value, out: &mut Vec<Value>, depth: usize) -> Result<(), DecodeError> {
    match v {
        Value::Array(items) if depth < 32 => {
            for item in items {
                flatten(item, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(_) => Err(DecodeError::Schema("tensor data nested too deep".into())),
        other => {
            out.push(other.clone());
            Ok(())
        }
    }
}

/// V1 rows: each element is one row, a list of values or one value.
fn rows_column(name: &str, rows: &[Value]) -> Result<Column, DecodeError> {
    let width = match rows.first() {
        Some(Value::Array(first)) => first.len(),
        _ => 1,
    };
    if width == 0 || width > MAX_ROW_VALUES {
        return Err(DecodeError::Schema(format!(
            "{name}: {width} values per row"
        )));
    }
    // Refused before anything is allocated from the first row's width.
    if rows.len() > MAX_ROWS || rows.len().saturating_mul(width) > MAX_VALUES {
        return Err(DecodeError::Schema(format!(
            "{name}: {} rows of {width} values",
            rows.len()
        )));
    }
    let mut values = Vec::with_capacity(rows.len() * width);
    for row in rows {
        match row {
            Value::Array(items) if items.len() == width => values.extend(items.iter().cloned()),
            Value::Array(items) => {
                return Err(DecodeError::Schema(format!(
                    "{name}: rows of {width} and {} values",
                    items.len()
                )));
            }
            Value::Object(_) => {
                return Err(DecodeError::Schema(format!(
                    "{name}: rows as objects are not read; send lists or the V2 protocol"
                )));
            }
            _ if width == 1 => values.push(row.clone()),
            _ => return Err(DecodeError::Schema(format!("{name}: rows of mixed shape"))),
        }
    }
    Ok(Column {
        name: name.into(),
        datatype: Datatype::Any,
        width,
        values,
    })
}

/// The rows every tensor of a half agrees on.
fn batch_size(columns: &[Column]) -> Result<usize, DecodeError> {
    let Some(first) = columns.first() else {
        return Err(DecodeError::Schema("no tensor carries data".into()));
    };
    let n = first.rows();
    if let Some(other) = columns.iter().find(|c| c.rows() != n) {
        return Err(DecodeError::Schema(format!(
            "tensors {:?} and {:?} have {n} and {} rows",
            truncated(&first.name),
            truncated(&other.name),
            other.rows()
        )));
    }
    if n > MAX_ROWS {
        return Err(DecodeError::Schema(format!("{n} rows in one message")));
    }
    Ok(n)
}

fn fill_inputs(
    events: &mut [TelemetryEvent],
    columns: &[Column],
    config: &ModelTensors,
) -> Result<(), DecodeError> {
    let mut rows: Vec<Vec<(crate::event::Name, FeatureValue)>> = vec![Vec::new(); events.len()];
    for column in columns {
        if config.embedding.as_deref() == Some(column.name.as_str()) {
            for (i, e) in events.iter_mut().enumerate() {
                let row = column.row(i);
                e.embedding = Some(row.iter().map(number).collect::<Result<_, _>>()?);
            }
            continue;
        }
        let names = column_names(column, config.columns.get(&column.name))?;
        for (i, pairs) in rows.iter_mut().enumerate() {
            for (name, v) in names.iter().zip(column.row(i)) {
                pairs.push((name.clone(), feature(v, column.datatype)?));
            }
        }
    }
    for (e, pairs) in events.iter_mut().zip(rows) {
        e.features = pairs.into_iter().collect();
    }
    Ok(())
}

fn column_names(
    column: &Column,
    configured: Option<&Vec<String>>,
) -> Result<Vec<crate::event::Name>, DecodeError> {
    match configured {
        Some(names) if names.len() == column.width => Ok(names.iter().map(|n| intern(n)).collect()),
        Some(names) => Err(DecodeError::Schema(format!(
            "tensor {:?} has {} columns where config names {}",
            truncated(&column.name),
            column.width,
            names.len()
        ))),
        None if column.width == 1 => Ok(vec![intern(&column.name)]),
        None => Ok((0..column.width)
            .map(|j| intern(&format!("{}_{j}", column.name)))
            .collect()),
    }
}

fn feature(v: &Value, datatype: Datatype) -> Result<FeatureValue, DecodeError> {
    Ok(match (v, datatype) {
        (Value::Null, _) => FeatureValue::Missing(()),
        (Value::Bool(b), Datatype::Bool | Datatype::Any) => FeatureValue::Bool(*b),
        (Value::Number(_), Datatype::Int | Datatype::Float | Datatype::Any) => {
            FeatureValue::Number(number(v)?)
        }
        (Value::String(s), Datatype::Bytes | Datatype::Any) => {
            FeatureValue::Text(s.as_str().into())
        }
        _ => {
            return Err(DecodeError::Schema(format!(
                "a {datatype:?} tensor holds {}",
                kind(v)
            )));
        }
    })
}

fn number(v: &Value) -> Result<f64, DecodeError> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| DecodeError::InvalidValue(format!("{} where a number belongs", kind(v))))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn fill_outputs(
    events: &mut [TelemetryEvent],
    columns: &[Column],
    config: &ModelTensors,
) -> Result<(), DecodeError> {
    let named = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| columns.iter().find(|c| c.name == n))
    };
    let probabilities = match &config.probabilities {
        Some(_) => Some(named(&config.probabilities).ok_or_else(|| {
            DecodeError::Schema("the configured probability output is missing".into())
        })?),
        None => columns.iter().find(|c| looks_like_probabilities(c)),
    };
    let label = match &config.label {
        Some(_) => named(&config.label),
        None => columns.iter().find(|c| c.width == 1 && is_label(c)),
    };
    let score = columns
        .iter()
        .find(|c| c.width == 1 && !is_label(c) && !label.is_some_and(|l| std::ptr::eq(l, *c)));
    for (i, e) in events.iter_mut().enumerate() {
        if let Some(p) = probabilities {
            e.output.probabilities = Some(probability_row(p.row(i), &config.classes)?);
        }
        if let Some(l) = label {
            e.output.label = label_of(&l.row(i)[0]);
        }
        if let Some(s) = score {
            e.output.score = s.row(i)[0].as_f64().filter(|x| x.is_finite());
        }
    }
    Ok(())
}

fn is_label(c: &Column) -> bool {
    match c.datatype {
        Datatype::Int | Datatype::Bytes | Datatype::Bool => true,
        Datatype::Float => false,
        Datatype::Any => c
            .values
            .iter()
            .all(|v| v.is_string() || v.is_i64() || v.is_u64()),
    }
}

fn looks_like_probabilities(c: &Column) -> bool {
    c.width >= 2
        && matches!(c.datatype, Datatype::Float | Datatype::Any)
        && c.values
            .iter()
            .all(|v| v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)))
}

fn probability_row(row: &[Value], classes: &[String]) -> Result<Probabilities, DecodeError> {
    let p: Vec<f64> = row.iter().map(number).collect::<Result<_, _>>()?;
    if let Some(x) = p.iter().find(|x| !(0.0..=1.0).contains(*x)) {
        return Err(DecodeError::InvalidValue(format!(
            "probability output has {x}, outside [0, 1]"
        )));
    }
    if classes.is_empty() {
        return Ok(Probabilities::List(p));
    }
    if classes.len() != p.len() {
        return Err(DecodeError::Schema(format!(
            "{} probabilities where config names {} classes",
            p.len(),
            classes.len()
        )));
    }
    Ok(Probabilities::Named(
        classes.iter().cloned().zip(p).collect(),
    ))
}

fn label_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl TensorConfig {
    /// The `attribute_headers` the message carries, and `extra` (what the
    /// format itself names: a namespace, a component) where present.
    pub fn attributes<'a>(
        &self,
        msg: &super::Message<'_>,
        extra: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Attributes {
        let headers = self
            .attribute_headers
            .iter()
            .map(|name| (name.as_str(), msg.header(name)));
        let extra: Vec<(&str, Option<&str>)> = extra.into_iter().collect();
        extra
            .into_iter()
            .chain(headers)
            .filter_map(|(k, v)| {
                let v = super::oip::nonempty(v)?;
                Some((k.to_string(), FeatureValue::Text(v.into())))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into()
    }

    /// The client, from the first of `client_headers` the message carries,
    /// else from KServe's copy of the request's headers (`ce_metadata`: a
    /// JSON object of header name to a list of values).
    pub fn client(&self, msg: &super::Message<'_>, metadata: Option<&str>) -> Option<String> {
        let copied: Option<serde_json::Map<String, Value>> =
            metadata.and_then(|m| serde_json::from_str(m).ok());
        self.client_headers.iter().find_map(|name| {
            if let Some(v) = msg.header(name) {
                return Some(v.to_string());
            }
            let (_, v) = copied
                .as_ref()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(items) => items.first()?.as_str().map(str::to_string),
                _ => None,
            }
        })
    }
}
