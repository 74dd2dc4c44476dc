//! Prometheus relabelling (`relabel_configs`), applied to discovered
//! targets before they are placed.
//!
//! Users migrating from Prometheus's own service discovery bring their
//! `relabel_configs` along, so the rules behave exactly as Prometheus's do
//! (checked against a real Prometheus in `tests/sources.rs`): each rule sees
//! the labels the previous one left; `source_labels` are joined with
//! `separator` (default `;`); `regex` (RE2 syntax, default `(.*)`) is
//! anchored at both ends; `replacement` (default `$1`) expands `$1`,
//! `${1}` and `$name`; setting a label to the empty string removes it.
//! `hashmod` is refused: sharding is what promshard itself does, after
//! relabelling, with every target on exactly `replicas` servers.
//!
//! After the rules, [`finish`] turns a label set into a target the way
//! Prometheus does: `__address__` is the address, and `__meta_*`, `__tmp*`
//! and every other `__` label are dropped, except those Prometheus reads
//! from a target (`__scheme__`, `__metrics_path__`, `__param_*`, …), which
//! pass through to the file the node scrapes.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A label set while it is relabelled: name → value, sorted.
pub type LabelMap = BTreeMap<String, String>;

/// One `relabel_configs` entry as written, with Prometheus's field names.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub source_labels: Option<Vec<String>>,
    #[serde(default)]
    pub separator: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub modulus: Option<u64>,
    #[serde(default)]
    pub target_label: Option<String>,
    #[serde(default)]
    pub replacement: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

/// Every action name accepted, for messages.
pub const ACTIONS: &str = "replace, keep, drop, keepequal, dropequal, labelmap, labeldrop, labelkeep, lowercase, uppercase";

/// A checked rule with its regex compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    source_labels: Vec<String>,
    separator: String,
    regex: Regex,
    target_label: String,
    replacement: String,
    action: Action,
}

/// Why a rule was refused; `index` is its position in `relabel_configs`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("relabel_configs[{index}]: {message}")]
pub struct RuleError {
    pub index: usize,
    pub message: String,
}

/// Check and compile `relabel_configs`.
pub fn compile(raw: &[RawRule]) -> Result<Vec<Rule>, RuleError> {
    raw.iter()
        .enumerate()
        .map(|(index, r)| compile_rule(r).map_err(|message| RuleError { index, message }))
        .collect()
}

fn parse_action(name: &str) -> Result<Action, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "replace" => Action::Replace,
        "keep" => Action::Keep,
        "drop" => Action::Drop,
        "keepequal" => Action::KeepEqual,
        "dropequal" => Action::DropEqual,
        "labelmap" => Action::LabelMap,
        "labeldrop" => Action::LabelDrop,
        "labelkeep" => Action::LabelKeep,
        "lowercase" => Action::Lowercase,
        "uppercase" => Action::Uppercase,
        "hashmod" => {
            return Err(
                "action hashmod is not supported: promshard shards the targets itself \
                 (every target on exactly `replicas` live servers); drop the rule and list the \
                 servers in nodes:"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "unknown action {other:?} (expected one of {ACTIONS})"
            ));
        }
    })
}

fn compile_rule(r: &RawRule) -> Result<Rule, String> {
    let action = parse_action(r.action.as_deref().unwrap_or("replace"))?;
    let pattern = r.regex.as_deref().unwrap_or("(.*)");
    let regex =
        Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex {pattern:?}: {e}"))?;
    let target_label = r.target_label.clone().unwrap_or_default();
    if r.modulus.is_some() {
        return Err("modulus is only for hashmod, which promshard does not support".into());
    }
    let needs_target = matches!(
        action,
        Action::Replace
            | Action::Lowercase
            | Action::Uppercase
            | Action::KeepEqual
            | Action::DropEqual
    );
    if needs_target && target_label.is_empty() {
        return Err(format!("action {action:?} needs target_label").to_lowercase());
    }
    let templated = action == Action::Replace;
    if needs_target && !valid_target(&target_label, templated) {
        return Err(format!(
            "target_label {target_label:?} is not a valid label name"
        ));
    }
    let only_regex = matches!(action, Action::LabelDrop | Action::LabelKeep);
    if only_regex
        && (r.source_labels.is_some()
            || r.separator.is_some()
            || r.target_label.is_some()
            || r.replacement.is_some())
    {
        return Err(format!("{} takes only regex", action_name(action)));
    }
    let equal = matches!(action, Action::KeepEqual | Action::DropEqual);
    if equal && (r.regex.is_some() || r.replacement.is_some()) {
        return Err(format!(
            "{} takes only source_labels and target_label",
            action_name(action)
        ));
    }
    Ok(Rule {
        source_labels: r.source_labels.clone().unwrap_or_default(),
        separator: r.separator.clone().unwrap_or_else(|| ";".into()),
        regex,
        target_label,
        replacement: r.replacement.clone().unwrap_or_else(|| "$1".into()),
        action,
    })
}

fn action_name(a: Action) -> String {
    format!("{a:?}").to_lowercase()
}

/// A label name, or for `replace` one that may hold `$1`/`${name}` parts
/// (Prometheus's `relabelTarget`).
fn valid_target(name: &str, templated: bool) -> bool {
    if templated && name.contains('$') {
        let re = Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").expect("static regex");
        return re.is_match(name);
    }
    valid_label_name(name)
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn set(labels: &mut LabelMap, name: &str, value: String) {
    if value.is_empty() {
        labels.remove(name);
    } else {
        labels.insert(name.to_string(), value);
    }
}

/// Apply `rules` in order; `false` when a rule dropped the target.
pub fn apply(rules: &[Rule], labels: &mut LabelMap) -> bool {
    rules.iter().all(|r| apply_rule(r, labels))
}

fn apply_rule(r: &Rule, labels: &mut LabelMap) -> bool {
    let value = r
        .source_labels
        .iter()
        .map(|n| labels.get(n).map(String::as_str).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(&r.separator);
    match r.action {
        Action::Keep => return r.regex.is_match(&value),
        Action::Drop => return !r.regex.is_match(&value),
        Action::KeepEqual => return labels.get(&r.target_label).map_or("", |v| v) == value,
        Action::DropEqual => return labels.get(&r.target_label).map_or("", |v| v) != value,
        Action::Replace => {
            let Some(caps) = r.regex.captures(&value) else {
                return true;
            };
            let mut target = String::new();
            caps.expand(&r.target_label, &mut target);
            if !valid_label_name(&target) {
                labels.remove(&r.target_label);
                return true;
            }
            let mut out = String::new();
            caps.expand(&r.replacement, &mut out);
            if out.is_empty() {
                labels.remove(&r.target_label);
            } else {
                labels.insert(target, out);
            }
        }
        Action::Lowercase => set(labels, &r.target_label, value.to_lowercase()),
        Action::Uppercase => set(labels, &r.target_label, value.to_uppercase()),
        Action::LabelMap => {
            let before: Vec<(String, String)> =
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, v) in before {
                if let Some(caps) = r.regex.captures(&name) {
                    let mut out = String::new();
                    caps.expand(&r.replacement, &mut out);
                    set(labels, &out, v);
                }
            }
        }
        Action::LabelDrop => labels.retain(|name, _| !r.regex.is_match(name)),
        Action::LabelKeep => labels.retain(|name, _| r.regex.is_match(name)),
    }
    true
}

/// `__` labels Prometheus reads from a target; they stay in the file.
const PASSED: [&str; 4] = [
    "__scheme__",
    "__metrics_path__",
    "__scrape_interval__",
    "__scrape_timeout__",
];

/// The target a relabelled label set stands for: its `__address__` and the
/// labels a node's file carries. `None` when it has no address (Prometheus
/// drops such a target too).
pub fn finish(mut labels: LabelMap) -> Option<(String, LabelMap)> {
    let addr = labels.remove("__address__").filter(|a| !a.is_empty())?;
    labels.retain(|name, _| {
        !name.starts_with("__") || PASSED.contains(&name.as_str()) || name.starts_with("__param_")
    });
    Some((addr, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<Rule> {
        compile(&serde_yaml_ng::from_str::<Vec<RawRule>>(yaml).unwrap()).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_prometheus_ones() {
        let r = rules("[{source_labels: [a, b], target_label: c}]");
        let mut l = labels(&[("a", "x"), ("b", "y")]);
        assert!(apply(&r, &mut l));
        assert_eq!(l["c"], "x;y");
    }

    #[test]
    fn regex_is_anchored() {
        let r = rules("[{source_labels: [a], regex: 'b', action: keep}]");
        assert!(!apply(&r, &mut labels(&[("a", "abc")])));
        assert!(apply(&r, &mut labels(&[("a", "b")])));
    }

    #[test]
    fn replace_with_groups_and_empty_deletes() {
        let r = rules(
            "[{source_labels: [__address__], regex: '(.+):(\\d+)', target_label: host, replacement: '${1}-x'},
              {source_labels: [nope], target_label: a}]",
        );
        let mut l = labels(&[("__address__", "h1:9100"), ("a", "1")]);
        assert!(apply(&r, &mut l));
        assert_eq!(l.get("host").map(String::as_str), Some("h1-x"));
        assert!(
            !l.contains_key("a"),
            "an empty replacement removes the label"
        );
    }

    #[test]
    fn labelmap_and_finish() {
        let r = rules("[{regex: '__meta_dns_(.+)', action: labelmap}]");
        let mut l = labels(&[
            ("__address__", "h:1"),
            ("__meta_dns_name", "x.example."),
            ("__metrics_path__", "/m"),
        ]);
        assert!(apply(&r, &mut l));
        let (addr, l) = finish(l).unwrap();
        assert_eq!(addr, "h:1");
        assert_eq!(
            l,
            labels(&[("__metrics_path__", "/m"), ("name", "x.example.")])
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_index() {
        let raw: Vec<RawRule> = serde_yaml_ng::from_str(
            "[{action: keep}, {action: hashmod, target_label: x, modulus: 3}]",
        )
        .unwrap();
        let e = compile(&raw).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.message.contains("promshard shards"), "{e}");
        let raw: Vec<RawRule> = serde_yaml_ng::from_str("[{action: replace}]").unwrap();
        assert!(compile(&raw).unwrap_err().message.contains("target_label"));
        let raw: Vec<RawRule> = serde_yaml_ng::from_str("[{regex: '('}]").unwrap();
        assert!(compile(&raw).unwrap_err().message.contains("regex"));
    }
}
