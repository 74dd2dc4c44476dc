//! The monitoring mixin (`mixin/`): the rendered files are what the
//! sources and `mixin/config.yaml` give, the rules pass `promtool check
//! rules`, every alert is unit-tested firing and not firing with `promtool
//! test rules`, and the dashboard is a Grafana dashboard model whose every
//! query is valid PromQL.
//!
//! The sources are plain YAML and JSON with `$__name` parameters (see
//! mixin/README.md for why not jsonnet); `PROMSHARD_BLESS=1 cargo test
//! --test mixin` writes the rendered files.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Grafana's own `$__` variables, kept in dashboards.
const GRAFANA_VARIABLES: &[&str] = &["rate_interval", "interval", "range"];

/// Sources under `mixin/src/`, rendered to the same path under `mixin/rendered/`.
const FILES: &[&str] = &["alerts.yaml", "rules.yaml", "dashboards/promshard.json"];

fn mixin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mixin")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config() -> BTreeMap<String, String> {
    let path = mixin().join("config.yaml");
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replace every `$__name` of `text` by its parameter; an unknown name is
/// an error, unless `grafana` and it is one of Grafana's own.
fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
    grafana: bool,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("$__") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let len = after
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        let name = &after[..len];
        match params.get(name) {
            Some(v) => out.push_str(v),
            None if grafana && GRAFANA_VARIABLES.contains(&name) => {
                out.push_str(&rest[i..i + 3 + len])
            }
            None => {
                return Err(format!(
                    "unknown parameter $__{name} (not in mixin/config.yaml)"
                ));
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitute inside every string of a JSON value.
fn substitute_json(v: &mut Value, params: &BTreeMap<String, String>) -> Result<(), String> {
    match v {
        Value::String(s) => *s = substitute(s, params, true)?,
        Value::Array(items) => {
            for i in items {
                substitute_json(i, params)?;
            }
        }
        Value::Object(map) => {
            for i in map.values_mut() {
                substitute_json(i, params)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the source `file` renders to.
fn render(file: &str) -> String {
    let params = config();
    let src = mixin().join("src").join(file);
    let text = read(&src);
    let rendered = if file.ends_with(".json") {
        let mut v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        substitute_json(&mut v, &params).map(|()| {
            let mut s = serde_json::to_string_pretty(&v).unwrap();
            s.push('\n');
            s
        })
    } else {
        substitute(&text, &params, false)
    };
    rendered.unwrap_or_else(|e| panic!("{}: {e}", src.display()))
}

fn rendered(file: &str) -> PathBuf {
    mixin().join("rendered").join(file)
}

#[test]
fn the_rendered_files_are_what_the_sources_give() {
    let bless = std::env::var_os("PROMSHARD_BLESS").is_some();
    for file in FILES {
        let want = render(file);
        let path = rendered(file);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} differs from what mixin/src/{file} renders to; run PROMSHARD_BLESS=1 cargo test --test mixin",
            path.display()
        );
    }
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(util::tools::promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
#[ignore = "needs promtool (bash .ci/test installs it)"]
fn the_rendered_rules_pass_promtool_check_rules() {
    let (ok, said) = promtool(
        &[
            "check",
            "rules",
            "rendered/alerts.yaml",
            "rendered/rules.yaml",
        ],
        &mixin(),
    );
    assert!(ok, "{said}");
    assert!(!said.contains("WARNING"), "{said}");
}

fn unit_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(mixin().join("tests"))
        .expect("mixin/tests")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
#[ignore = "needs promtool (bash .ci/test installs it)"]
fn the_alert_unit_tests_pass() {
    let files = unit_test_files();
    let mut args = vec!["test".to_string(), "rules".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, said) = promtool(&args, &mixin());
    assert!(ok, "{said}");
}

fn alert_names() -> BTreeSet<String> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&rendered("alerts.yaml"))).expect("alerts.yaml");
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert rule");
            let annotations = &rule["annotations"];
            for key in ["summary", "description", "runbook"] {
                assert!(
                    annotations[key].as_str().is_some_and(|t| !t.is_empty()),
                    "{name} has no {key}"
                );
            }
            names.insert(name.to_string());
        }
    }
    names
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for file in unit_test_files() {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&read(&file)).expect("unit test file");
        for test in doc["tests"].as_sequence().expect("tests") {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_string();
                let fires = case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty());
                if fires { &mut firing } else { &mut quiet }.insert(name);
            }
        }
    }
    for name in alert_names() {
        assert!(firing.contains(&name), "{name} is never tested firing");
        assert!(quiet.contains(&name), "{name} is never tested not firing");
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&rendered("dashboards/promshard.json"))).expect("dashboard JSON")
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_model() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let w = p["gridPos"]["w"].as_u64().unwrap() + p["gridPos"]["x"].as_u64().unwrap();
        assert!(w <= 24, "{title}: wider than the grid");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: expr"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

/// A dashboard query as PromQL: Grafana's variables replaced by values.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$service", ".*")
}

#[test]
#[ignore = "needs promtool (bash .ci/test installs it)"]
fn every_dashboard_query_is_valid_promql() {
    let d = dashboard();
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(as_promql(t["expr"].as_str().unwrap()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(SELECTOR, label): the selector is PromQL.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel.to_string())
                .unwrap_or_else(|| panic!("variable query {q}"));
            exprs.push(as_promql(&inner));
        }
    }
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = util::Dir::new();
    // JSON is YAML: promtool reads it as a rule file.
    dir.write("queries.yaml", file.to_string());
    let (ok, said) = promtool(&["check", "rules", "queries.yaml"], dir.path());
    assert!(ok, "{said}\n{}", exprs.join("\n"));
}

#[test]
fn unknown_parameters_are_refused() {
    let params = BTreeMap::from([("a".to_string(), "1".to_string())]);
    assert_eq!(substitute("x $__a y", &params, false).unwrap(), "x 1 y");
    assert!(substitute("$__b", &params, false).is_err());
    assert_eq!(
        substitute("rate(x[$__rate_interval])", &params, true).unwrap(),
        "rate(x[$__rate_interval])"
    );
}
