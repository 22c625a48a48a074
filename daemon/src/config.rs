//! One TOML file, every field defaulted, then `MODELWATCH_*` environment
//! overrides. Unknown fields are errors, in the file and in the environment.
//! Each section's type lives beside the component it configures; this root
//! composes them, loads, applies the environment and validates.
//!
//! Environment overrides name a path with double underscores:
//! `MODELWATCH_STORE__URL=postgres://...` sets `store.url`,
//! `MODELWATCH_SOURCE__KAFKA__BROKERS=host:9092` sets `source.kafka.brokers`.
//! Values are parsed as TOML when they parse (numbers, booleans, arrays) and
//! taken as strings otherwise. Variables without `__` are not config.

mod annotate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decode::Limits;
use crate::detect::{DetectConfig, EngineConfig};
use crate::ingest::SourceConfig;
use crate::judge::{AlertsConfig, JudgeConfig};
use crate::notify::NotifyConfig;
use crate::store::StoreConfig;
use crate::telemetry::{LogConfig, TelemetryConfig};
use crate::window::{ReferenceConfig, WindowConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config")]
    Parse(#[source] toml::de::Error),
    #[error("invalid environment override {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where telemetry comes from.
    pub source: SourceConfig,
    /// Where scores, references and alerts are kept.
    pub store: StoreConfig,
    /// The scoring engine and its device.
    pub engine: EngineConfig,
    /// Global window defaults; `models.<name>` overrides them per model.
    pub windows: WindowConfig,
    /// How each model's reference is obtained.
    pub reference: ReferenceConfig,
    /// When a score becomes an alert.
    pub judge: JudgeConfig,
    /// Per-model overrides, keyed by model name.
    pub models: BTreeMap<String, ModelConfig>,
    /// The monitor's own logs.
    pub log: LogConfig,
    /// The monitor's own metrics, health endpoints and traces.
    pub telemetry: TelemetryConfig,
    /// Alert lifecycle: when a condition pages and when it resolves.
    pub alerts: AlertsConfig,
    /// Where alert transitions are delivered.
    pub notify: NotifyConfig,
    /// The detectors' settings.
    pub detect: DetectConfig,
    /// What every message and event must keep to be scored.
    pub limits: Limits,
    /// The input formats' settings.
    pub decode: crate::decode::DecodeConfig,
    /// How the halves of request/response pairs are joined.
    pub join: crate::join::JoinConfig,
}

/// One model's overrides of the global settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Window size in events for this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_count: Option<usize>,
    /// Window duration in seconds for this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// Reference size taken from the stream for this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_size: Option<usize>,
    /// Class names, in the order of `output.probabilities` lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Who owns the model: team, runbook and labels on its notifications.
    #[serde(skip_serializing_if = "crate::notify::Owner::is_empty")]
    pub owner: crate::notify::Owner,
}

/// Window and reference settings of one model, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub window_count: usize,
    pub window_duration: Option<Duration>,
    pub reference_size: usize,
    pub classes: Vec<String>,
}

impl Config {
    /// Reads `path` (when given), applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_sources(&text, std::env::vars())
    }

    /// Builds the config from file text and environment pairs; pure, for tests.
    pub fn from_sources(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(ConfigError::Parse)?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("MODELWATCH_") && k.contains("__"))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            // A value that parses as TOML (a number, a list) is taken typed,
            // unless only its string form fits the field: a group id `123`.
            let typed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"));
            let as_string = toml::Value::String(value.clone());
            match typed {
                Some(v) if !matches!(v, toml::Value::String(_)) => {
                    let mut trial = root.clone();
                    apply_override(&mut trial, &var, v)?;
                    let typed_fits = trial.clone().try_into::<Config>().is_ok();
                    let mut with_string = root.clone();
                    apply_override(&mut with_string, &var, as_string)?;
                    root = if !typed_fits && with_string.clone().try_into::<Config>().is_ok() {
                        with_string
                    } else {
                        trial
                    };
                }
                _ => apply_override(&mut root, &var, as_string)?,
            }
        }
        let mut config: Config = root.try_into().map_err(ConfigError::Parse)?;
        config.detect.alpha = config.judge.alpha;
        config.validate()?;
        Ok(config)
    }

    /// Each section checks its own values; the first complaint wins.
    fn validate(&self) -> Result<(), ConfigError> {
        self.source
            .validate()
            .and_then(|()| self.windows.validate())
            .and_then(|()| self.reference.validate())
            .and_then(|()| self.judge.validate())
            .and_then(|()| self.detect.validate(self.judge.alpha))
            .and_then(|()| self.notify.validate())
            .and_then(|()| self.validate_models())
            .and_then(|()| self.validate_retirement())
            .and_then(|()| self.validate_receiver_labels())
            .and_then(|()| self.join.validate())
            .and_then(|()| self.validate_attributes())
            .map_err(ConfigError::Invalid)
    }

    /// The decoders must not name more attributes than an event may carry:
    /// every fully attributed event would be refused.
    fn validate_attributes(&self) -> Result<(), String> {
        let most = self.limits.max_attributes;
        // KServe adds its namespace, component and endpoint.
        let tensors = self.decode.tensors.attribute_headers.len() + 3;
        let otlp = self.decode.otlp_genai.attributes.len();
        if tensors.max(otlp) > most {
            return Err(format!(
                "decode names up to {} attributes (tensors: attribute_headers and KServe's 3; otlp_genai.attributes: {otlp}), over limits.max_attributes = {most}",
                tensors.max(otlp)
            ));
        }
        Ok(())
    }

    /// A receiver's `labels` must name labels alerts can carry: the
    /// alert's own or a model owner's. A misspelt one would match nothing
    /// and the receiver would never be paged, silently.
    fn validate_receiver_labels(&self) -> Result<(), String> {
        let owners: std::collections::BTreeSet<&str> = self
            .models
            .values()
            .flat_map(|m| m.owner.labels.keys().map(String::as_str))
            .collect();
        for r in &self.notify.receivers {
            for key in r.labels.keys() {
                if !crate::notify::ALERT_LABELS.contains(&key.as_str())
                    && !owners.contains(key.as_str())
                {
                    return Err(format!(
                        "notify.receivers {}: labels names {key:?}, which no alert carries (alerts have {}, and the labels under models.*.owner.labels)",
                        r.name,
                        crate::notify::ALERT_LABELS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// A version whose windows close on time stores one at least every
    /// window duration while it serves: retiring it sooner would retire a
    /// quiet canary between its own windows.
    fn validate_retirement(&self) -> Result<(), String> {
        let after = self.alerts.retire_after_secs;
        let longest = self
            .models
            .values()
            .filter_map(|m| m.window_secs)
            .chain([self.windows.duration_secs])
            .max()
            .unwrap_or(0);
        if after != 0 && after <= longest {
            return Err(format!(
                "alerts.retire_after_secs ({after}) must be longer than the longest window duration ({longest} s), or 0"
            ));
        }
        Ok(())
    }

    fn validate_models(&self) -> Result<(), String> {
        for (name, m) in &self.models {
            if m.window_count == Some(0) && m.window_secs == Some(0) {
                return Err(format!(
                    "models.{name}: window_count and window_secs cannot both be 0"
                ));
            }
            m.owner.validate(name)?;
        }
        Ok(())
    }

    /// The effective settings of `model`: its overrides over the global defaults.
    pub fn model_settings(&self, model: &str) -> ModelSettings {
        let m = self.models.get(model);
        let secs = m
            .and_then(|m| m.window_secs)
            .unwrap_or(self.windows.duration_secs);
        ModelSettings {
            window_count: m.and_then(|m| m.window_count).unwrap_or(self.windows.count),
            window_duration: (secs > 0).then(|| Duration::from_secs(secs)),
            reference_size: m
                .and_then(|m| m.reference_size)
                .unwrap_or(self.reference.size),
            classes: m.map(|m| m.classes.clone()).unwrap_or_default(),
        }
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// A copy safe to print: passwords in the store URL, librdkafka
    /// properties that hold secrets, and OTLP header values are masked.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.store.url = crate::store::redact(&c.store.url);
        for (key, value) in &mut c.source.kafka.properties {
            let k = key.to_ascii_lowercase();
            if ["password", "secret", "token", "key"]
                .iter()
                .any(|s| k.contains(s))
                && !k.ends_with(".location")
            {
                *value = "***".into();
            }
        }
        for value in c.telemetry.otlp.headers.values_mut() {
            *value = "***".into();
        }
        c
    }

    /// The effective config as TOML with every field's documentation, as
    /// `check-config` prints it; `deploy/modelwatch.toml` is this output.
    pub fn annotated(&self) -> String {
        annotate::render(self)
    }
}

/// A secret from the environment variable or the file a config names
/// (never from the config itself): `None` when it names neither. The error
/// says which variable or file, never the secret.
pub fn read_secret(env: Option<&str>, file: Option<&str>) -> Result<Option<String>, String> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set"));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| format!("cannot read {path}: {e}"));
    }
    Ok(None)
}

fn apply_override(
    root: &mut toml::Table,
    var: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let path: Vec<String> = var["MODELWATCH_".len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            reason: "empty path segment".into(),
        });
    }
    let mut table = root;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.into(),
            reason: format!("{seg} is not a table"),
        })?;
    }
    table.insert(path[path.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DeviceChoice;
    use crate::ingest::SourceKind;

    /// An error and its causes, as the command line prints them.
    fn chain(e: ConfigError) -> String {
        let mut out = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            out += &format!(": {s}");
            source = s.source();
        }
        out
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::from_sources("", []).unwrap();
        assert_eq!(c.source.kind, SourceKind::Demo);
        assert_eq!(c.windows.count, 500);
        assert_eq!(c.engine.device, DeviceChoice::Auto);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = chain(Config::from_sources("[store]\nurll = \"x\"\n", []).unwrap_err());
        assert!(err.contains("urll"), "{err}");
        let err = chain(
            Config::from_sources("", [("MODELWATCH_STORE__NOPE".into(), "1".into())]).unwrap_err(),
        );
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::from_sources(
            "[store]\nurl = \"sqlite:a.db\"\n[windows]\ncount = 10\n",
            [
                ("MODELWATCH_STORE__URL".into(), "postgres://x@y/z".into()),
                ("MODELWATCH_WINDOWS__COUNT".into(), "20".into()),
                (
                    "MODELWATCH_SOURCE__KAFKA__TOPICS".into(),
                    "[\"a\", \"b\"]".into(),
                ),
                ("MODELWATCH_UNRELATED".into(), "ignored".into()),
                ("MODELWATCH_SOURCE__KAFKA__GROUP_ID".into(), "123".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.store.url, "postgres://x@y/z");
        assert_eq!(c.windows.count, 20);
        assert_eq!(c.source.kafka.topics, vec!["a", "b"]);
        assert_eq!(c.source.kafka.group_id, "123");
    }

    #[test]
    fn model_overrides_apply() {
        let c = Config::from_sources(
            "[models.fraud]\nwindow_count = 50\nclasses = [\"ok\", \"fraud\"]\n",
            [],
        )
        .unwrap();
        let s = c.model_settings("fraud");
        assert_eq!(s.window_count, 50);
        assert_eq!(s.reference_size, 1000);
        assert_eq!(s.classes, vec!["ok", "fraud"]);
        assert_eq!(c.model_settings("other").window_count, 500);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::from_sources("[judge]\nalpha = 0.001\n", []).unwrap();
        let again = Config::from_sources(&c.to_toml(), []).unwrap();
        assert_eq!(again.judge.alpha, 0.001);
    }

    #[test]
    fn receiver_labels_must_be_labels_alerts_carry() {
        let receiver = |labels: &str| {
            format!(
                "[[notify.receivers]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\nlabels = {{ {labels} }}\n"
            )
        };
        Config::from_sources(&receiver("team = \"fraud\", severity = \"critical\""), []).unwrap();
        let err = Config::from_sources(&receiver("modle = \"fraud-scorer\""), []).unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
        // An owner's own label is one alerts carry.
        let tier = receiver("tier = \"1\"");
        assert!(Config::from_sources(&tier, []).is_err());
        let owned = format!("{tier}[models.m.owner]\nlabels = {{ tier = \"1\" }}\n");
        Config::from_sources(&owned, []).unwrap();
    }

    #[test]
    fn shipped_production_config_is_valid() {
        let text = include_str!("../../deploy/modelwatch.toml");
        let c = Config::from_sources(text, []).unwrap();
        assert_eq!(c.source.kind, SourceKind::Kafka);
        assert_eq!(c.model_settings("fraud-scorer").window_count, 1000);
    }

    /// The reference config is what `check-config` prints for its own values,
    /// so every field's documentation there is the code's.
    #[test]
    fn shipped_production_config_is_the_generated_reference() {
        let text = include_str!("../../deploy/modelwatch.toml");
        let generated = Config::from_sources(text, []).unwrap().annotated();
        if generated != text {
            let path = std::env::temp_dir().join("modelwatch.generated.toml");
            let _ = std::fs::write(&path, &generated);
            panic!(
                "deploy/modelwatch.toml differs from the generated reference ({}); regenerate it with \
                 `env -u MODELWATCH_CONFIG modelwatch check-config --config deploy/modelwatch.toml`",
                path.display()
            );
        }
    }

    #[test]
    fn documentation_reaches_every_section() {
        let text = Config::default().annotated();
        for doc in [
            "# Bootstrap servers, comma separated.",
            "# Close a window after this many events (0: no count limit).",
            "# Significance level of one window's family of tests.",
            "#   \"wgpu-cpu\": wgpu on a software adapter such as Mesa lavapipe (tests).",
            "# Export timeout in seconds.",
        ] {
            assert!(text.contains(doc), "{doc:?} missing from:\n{text}");
        }
        let again = Config::from_sources(&text, []).unwrap();
        assert_eq!(again.to_toml(), Config::default().to_toml());
    }

    #[test]
    fn unknown_names_fail_at_parse_time() {
        for (text, bad) in [
            (
                "[source.kafka.decoders]\ntelemetry = \"modelwatch-jsn\"\n",
                "modelwatch-jsn",
            ),
            (
                "[alerts.per_severity.severe]\npending_windows = 1\n",
                "severe",
            ),
            ("[engine]\ndevice = \"tpu\"\n", "tpu"),
            (
                "[[notify.receivers]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"http://x\"\nmin_severity = \"urgent\"\n",
                "urgent",
            ),
        ] {
            let err = chain(Config::from_sources(text, []).unwrap_err());
            assert!(err.contains(bad), "{text}: {err}");
        }
    }

    #[test]
    fn printed_config_holds_no_secret() {
        let c = Config::from_sources(
            "[source.kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"pem-pass\"\n\"ssl.ca.location\" = \"/etc/ca.pem\"\n[telemetry.otlp.headers]\nauthorization = \"Bearer tok3n\"\n",
            [("MODELWATCH_STORE__URL".into(), "postgres://mw:s3cret@db/mw".into())],
        )
        .unwrap();
        let text = c.redacted().annotated();
        for secret in ["hunter2", "pem-pass", "tok3n", "s3cret"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("postgres://mw:***@db/mw"), "{text}");
        assert!(text.contains("/etc/ca.pem"), "{text}");
    }

    #[test]
    fn invalid_alpha_is_rejected() {
        assert!(Config::from_sources("[judge]\nalpha = 2.0\n", []).is_err());
    }

    #[test]
    fn decoders_naming_more_attributes_than_an_event_carries_are_refused() {
        let config = |most: usize| {
            let text = format!(
                "[limits]\nmax_attributes = {most}\n[decode.tensors]\nattribute_headers = [\"x-tenant\", \"x-region\"]\n"
            );
            Config::from_sources(&text, [])
        };
        let err = config(4).unwrap_err().to_string();
        assert!(err.contains("max_attributes = 4"), "{err}");
        config(5).unwrap();
    }
}
