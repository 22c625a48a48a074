//! The Grafana dashboards against the store they read: every panel's,
//! variable's and annotation's SQL runs, as the read-only dashboard role,
//! on a PostgreSQL database the demo filled, and returns rows; and the JSON
//! keeps the shape Grafana needs (a data source variable every query uses,
//! unique panel ids, a layout).

mod common;

use std::process::Command;

use common::{daemon_binary, succeeded, unique};
use serde_json::Value;
use sqlx::{Column, Row, TypeInfo};

/// Grafana's macros as the PostgreSQL data source expands them, over all time.
fn expand(sql: &str, models: &str) -> String {
    let (from, to) = ("'1970-01-01T00:00:00Z'", "'2100-01-01T00:00:00Z'");
    let mut out = sql
        .replace("$__timeFrom()", from)
        .replace("$__timeTo()", to)
        .replace("$model", models);
    while let Some(at) = out.find("$__timeFilter(") {
        let rest = &out[at + "$__timeFilter(".len()..];
        let close = rest.find(')').expect("closing parenthesis");
        let column = rest[..close].to_string();
        out = format!(
            "{}{column} BETWEEN {from} AND {to}{}",
            &out[..at],
            &rest[close + 1..]
        );
    }
    assert!(!out.contains('$'), "unexpanded macro in {out}");
    out
}

/// Every SQL text of a dashboard: panel targets, query variables, annotations.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["rawSql"].as_str().unwrap().to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            out.push((
                format!("variable {}", v["name"]),
                v["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        out.push((
            format!("annotation {}", a["name"]),
            a["target"]["rawSql"].as_str().unwrap().to_string(),
        ));
    }
    out
}

const POSTGRES: &str = "grafana-postgresql-datasource";
const PROMETHEUS: &str = "prometheus";

/// Every dashboard shipped, parsed, with the data source plugin its
/// `datasource` variable picks from.
fn dashboards() -> Vec<(String, Value, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let plugin = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["type"] == "datasource")
            .and_then(|v| v["query"].as_str())
            .unwrap_or_default()
            .to_string();
        out.push((path.display().to_string(), d, plugin));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The shape Grafana needs: a data source variable that every panel,
/// target, variable and annotation uses (no fixed uid to break in another
/// Grafana), unique panel ids, each panel laid out on the 24-column grid.
fn check_shape(name: &str, d: &Value) {
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "{name}");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .unwrap_or_else(|| panic!("{name}: no data source variable"));
    assert!(
        [POSTGRES, PROMETHEUS].contains(&ds["query"].as_str().unwrap_or("")),
        "{name}"
    );
    let var = format!("${{{}}}", ds["name"].as_str().unwrap());
    let uses_var = |v: &Value, what: &str| {
        assert_eq!(
            v["uid"].as_str(),
            Some(var.as_str()),
            "{name}: {what} has a fixed data source"
        );
    };
    let mut ids = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{name}: id of {title} repeats"
        );
        uses_var(&p["datasource"], title);
        for t in p["targets"].as_array().unwrap() {
            uses_var(&t["datasource"], title);
        }
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{name}: {title} off the grid"
        );
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{name}: {title} says nothing"
        );
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        uses_var(&v["datasource"], "a variable");
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        uses_var(&a["datasource"], "an annotation");
    }
}

/// A fresh database the demo filled; its URL.
async fn demo_database(prefix: &str) -> String {
    let url = common::fresh_database(&unique(prefix)).await;
    let out = Command::new(daemon_binary())
        .args(["demo", "--device", "cpu", "--store", &url])
        .env_remove("MODELWATCH_CONFIG")
        .output()
        .unwrap();
    succeeded(&out);
    url
}

#[tokio::test]
async fn every_panel_query_returns_rows_on_demo_data_as_the_reader_role() {
    let url = demo_database("mw_dash").await;
    let (_, reader) = common::reader(&url, "dashboards").await;
    let models: Vec<String> = sqlx::query_scalar("SELECT DISTINCT model FROM windows")
        .fetch_all(&reader)
        .await
        .unwrap();
    assert!(!models.is_empty());
    let models = models
        .iter()
        .map(|m| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(",");
    let mut checked = 0;
    for (name, d, plugin) in dashboards() {
        check_shape(&name, &d);
        if plugin != POSTGRES {
            continue;
        }
        for (what, sql) in queries(&d) {
            let sql = expand(&sql, &models);
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&reader)
                .await
                .unwrap_or_else(|e| panic!("{name}: {what}: {e}\n{sql}"));
            assert!(
                !rows.is_empty(),
                "{name}: {what} returned no rows on demo data\n{sql}"
            );
            // Grafana draws and splits series by numeric values only.
            if let Some(c) = rows[0].columns().iter().find(|c| c.name() == "value") {
                let kind = c.type_info().name();
                assert!(
                    !["TEXT", "VARCHAR"].contains(&kind),
                    "{name}: {what}: value is {kind}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked} queries");
}

/// A banded score's stored lines agree with its verdict: expected accuracy
/// crosses exactly when its value is under `band_lower`, on demo data that
/// has both (the churn model's confidence collapse).
#[tokio::test]
async fn band_lines_agree_with_the_verdicts() {
    let url = demo_database("mw_bands").await;
    let pool = sqlx::postgres::PgPool::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT value, p_value, threshold, band_lower, band_upper FROM scores
         WHERE detector = 'expected_accuracy'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut crossed = 0;
    for r in &rows {
        let (value, p, t): (f64, f64, f64) = (r.get("value"), r.get("p_value"), r.get("threshold"));
        let (lower, upper): (f64, f64) = (r.get("band_lower"), r.get("band_upper"));
        assert!(lower < upper);
        assert_eq!(
            p < t,
            value < lower,
            "value {value} band {lower}..{upper} p {p} t {t}"
        );
        crossed += usize::from(p < t);
    }
    assert!(
        crossed > 0 && crossed < rows.len(),
        "{crossed} of {}",
        rows.len()
    );
}

/// Every dashboard is valid under Grafana's published dashboard schema (the
/// types `@grafana/schema` generates from Grafana's schema, unknown fields
/// refused), and a copy with a misspelt panel field is not.
#[test]
fn dashboards_match_the_published_grafana_schema() {
    let files: Vec<std::path::PathBuf> = dashboards().iter().map(|(n, _, _)| n.into()).collect();
    assert!(files.len() >= 3, "{files:?}");
    succeeded(&common::schema_check("grafana", &files));

    let dir = std::env::temp_dir().join(unique("dashboard"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\"gridPos\": {"));
    let broken = dir.join("broken.json");
    std::fs::write(
        &broken,
        text.replacen("\"gridPos\": {", "\"gridpos\": {}, \"gridPos\": {", 1),
    )
    .unwrap();
    let out = common::schema_check("grafana", &[broken]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gridpos"),
        "{out:?}"
    );
}

/// Names in `text` that follow `open` up to `close`, split at commas.
fn labels_in<'a>(text: &'a str, open: &str, close: char) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        let tail = &rest[at + open.len()..];
        let end = tail.find(close).unwrap_or(tail.len());
        out.extend(
            tail[..end]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty()),
        );
        rest = &tail[end..];
    }
    out
}

/// The monitor-health dashboard's PromQL parses (promtool checks each
/// expression as a recording rule), names only metrics the daemon exports,
/// and groups and labels series only by labels those metrics carry, so a
/// renamed metric or label cannot leave a panel silently empty.
#[test]
fn prometheus_panels_parse_and_use_exported_metrics_and_labels() {
    let exposition = common::full_exposition();
    let dir = std::env::temp_dir().join(unique("promql"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut checked = 0;
    for (name, d, plugin) in dashboards() {
        if plugin != PROMETHEUS {
            continue;
        }
        check_shape(&name, &d);
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let concrete = expr
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "5m");
                rules.push_str(&format!(
                    "      - record: dashboard:q{checked}\n        expr: {}\n",
                    serde_json::to_string(&concrete).unwrap()
                ));
                checked += 1;
                let metrics: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("modelwatch_"))
                    .collect();
                let legend = t["legendFormat"].as_str().unwrap_or("");
                let grouped = expr.replace("by(", "by (");
                let labels = labels_in(&grouped, "by (", ')')
                    .into_iter()
                    .chain(labels_in(legend, "{{", '}'));
                for label in labels.filter(|l| !["le", "instance", "job"].contains(l)) {
                    let carried = metrics.iter().any(|m| {
                        let family = m.strip_suffix("_bucket").unwrap_or(m);
                        exposition
                            .lines()
                            .any(|l| l.starts_with(family) && l.contains(&format!("{label}=\"")))
                    });
                    assert!(
                        carried,
                        "{name}: {}: no metric of {expr} carries {label}",
                        p["title"]
                    );
                }
                for m in &metrics {
                    let family = ["_bucket", "_total"]
                        .iter()
                        .fold(*m, |m, s| m.strip_suffix(s).unwrap_or(m));
                    assert!(
                        exposition.contains(&format!("# TYPE {family} ")),
                        "{name}: {m} is not exported"
                    );
                }
            }
        }
    }
    assert!(checked >= 12, "{checked} expressions");
    let file = dir.join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool not found: tests/run.sh installs it (Debian package prometheus)");
    succeeded(&out);
}
