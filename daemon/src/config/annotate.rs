//! The effective config as TOML with each field's documentation, taken from
//! the code's doc comments through the config's JSON Schema, so the
//! reference config (`deploy/modelwatch.toml`) cannot drift from the code.

use std::fmt::Write;

use serde_json::Value as Json;
use toml::Value;

use super::Config;

const HEADER: &str = "\
# modelwatch config: every field with its value and what it does. Every field
# is optional; a field left out takes the value shown by `modelwatch
# check-config`, which prints this form of the effective config. Any field
# can be overridden from the environment as MODELWATCH_<SECTION>__<FIELD>,
# e.g. MODELWATCH_STORE__URL. This file is that output for the values below
# (a test keeps the two equal).
";

pub fn render(config: &Config) -> String {
    let schema = schemars::schema_for!(Config);
    let root = schema.as_value();
    let table = match Value::try_from(config) {
        Ok(Value::Table(t)) => t,
        Ok(_) | Err(_) => return config.to_toml(),
    };
    let mut out = String::from(HEADER);
    let ctx = Ctx { root };
    ctx.table(&mut out, &[], &table, root);
    out
}

struct Ctx<'a> {
    root: &'a Json,
}

impl<'a> Ctx<'a> {
    /// Follows `$ref`s into `$defs`, and unwraps `Option<T>`'s `anyOf [T, null]`.
    fn resolve(&self, mut s: &'a Json) -> &'a Json {
        for _ in 0..8 {
            if let Some(r) = s.get("$ref").and_then(Json::as_str) {
                let name = r.rsplit('/').next().unwrap_or_default();
                match self.root.pointer(&format!("/$defs/{name}")) {
                    Some(d) => s = d,
                    None => return s,
                }
            } else if let Some(any) = s.get("anyOf").and_then(Json::as_array) {
                match any
                    .iter()
                    .find(|x| x.get("type") != Some(&Json::from("null")))
                {
                    Some(inner) if any.len() == 2 => s = inner,
                    _ => return s,
                }
            } else {
                return s;
            }
        }
        s
    }

    /// The schema of `key` inside an object schema; for a tagged enum
    /// (receivers), the variant named by the table's `kind`.
    fn property(&self, object: &'a Json, table: &toml::Table, key: &str) -> Option<&'a Json> {
        let object = self.resolve(object);
        if let Some(p) = object.pointer(&format!("/properties/{}", pointer_escape(key))) {
            return Some(p);
        }
        if let Some(extra) = object.get("additionalProperties").filter(|a| a.is_object()) {
            return Some(extra);
        }
        let variants = object.get("oneOf").and_then(Json::as_array)?;
        let kind = table.get("kind").and_then(Value::as_str);
        let chosen = variants
            .iter()
            .map(|v| self.resolve(v))
            .find(|v| v.pointer("/properties/kind/const").and_then(Json::as_str) == kind)?;
        self.property(chosen, table, key)
    }

    fn table(&self, out: &mut String, path: &[String], table: &toml::Table, schema: &'a Json) {
        for (key, value) in table {
            if is_section(value) {
                continue;
            }
            if key == "kind" {
                self.variants(out, schema);
            } else {
                self.doc(out, self.property(schema, table, key));
            }
            let _ = writeln!(out, "{} = {}", toml_key(key), value);
        }
        for key in self.unset(schema, table) {
            self.doc(out, self.property(schema, table, &key));
            let _ = writeln!(out, "# {} is unset", toml_key(&key));
        }
        for (key, value) in table {
            let prop = self.property(schema, table, key);
            let mut sub = path.to_vec();
            sub.push(toml_key(key));
            match value {
                Value::Table(t) => {
                    out.push('\n');
                    self.doc(out, prop);
                    let _ = writeln!(out, "[{}]", sub.join("."));
                    self.table(out, &sub, t, prop.unwrap_or(&Json::Null));
                }
                Value::Array(items) if is_section(value) => {
                    let item_schema = prop.map(|p| self.resolve(p)).and_then(|p| p.get("items"));
                    for item in items.iter().filter_map(Value::as_table) {
                        out.push('\n');
                        self.doc(out, prop);
                        let _ = writeln!(out, "[[{}]]", sub.join("."));
                        self.table(out, &sub, item, item_schema.unwrap_or(&Json::Null));
                    }
                }
                _ => {}
            }
        }
    }

    /// The kinds of a tagged enum (`kind = ...`), one line each.
    fn variants(&self, out: &mut String, schema: &'a Json) {
        let variants = self.resolve(schema).get("oneOf").and_then(Json::as_array);
        for v in variants.into_iter().flatten().map(|v| self.resolve(v)) {
            let name = v.pointer("/properties/kind/const").and_then(Json::as_str);
            let doc = v.get("description").and_then(Json::as_str);
            if let (Some(name), Some(doc)) = (name, doc) {
                let _ = writeln!(out, "#   {name:?}: {}", doc.replace('\n', " "));
            }
        }
    }

    /// Optional fields the table leaves out, so the reader sees them too.
    fn unset(&self, schema: &'a Json, table: &toml::Table) -> Vec<String> {
        let object = self.resolve(schema);
        let kind = table.get("kind").and_then(Value::as_str);
        let chosen = object
            .get("oneOf")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .map(|v| self.resolve(v))
            .find(|v| v.pointer("/properties/kind/const").and_then(Json::as_str) == kind);
        [Some(object), chosen]
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("properties").and_then(Json::as_object))
            .flat_map(|props| props.keys())
            .filter(|k| *k != "kind" && !table.contains_key(k.as_str()))
            .cloned()
            .collect()
    }

    /// A field's doc comment, and the meaning of each value of an enum.
    fn doc(&self, out: &mut String, prop: Option<&'a Json>) {
        let Some(prop) = prop else { return };
        let text = prop
            .get("description")
            .or_else(|| self.resolve(prop).get("description"))
            .and_then(Json::as_str);
        for line in text.into_iter().flat_map(str::lines) {
            let _ = writeln!(out, "# {line}");
        }
        let resolved = self.resolve(prop);
        let variants = resolved.get("oneOf").and_then(Json::as_array);
        for v in variants.into_iter().flatten() {
            if let (Some(name), Some(d)) = (
                v.get("const").and_then(Json::as_str),
                v.get("description").and_then(Json::as_str),
            ) {
                let _ = writeln!(out, "#   {name:?}: {}", d.replace('\n', " "));
            }
        }
    }
}

/// Tables and arrays of tables get headers of their own.
fn is_section(v: &Value) -> bool {
    match v {
        Value::Table(_) => true,
        Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_table),
        _ => false,
    }
}

fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
