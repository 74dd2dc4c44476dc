//! Rule files delivered to every node of a service (`rules:`).
//!
//! Sharding by target breaks rules that aggregate over a whole job; with
//! `affinity:` what belongs together is on one server, and then the same
//! recording and alerting rules must be loaded on every server of the pool.
//! A service's `rules:` lists rule files (paths or globs, relative to the
//! config); every pass:
//!
//! 1. [`source`]: the patterns are resolved, each file read and, when its
//!    content differs from the last good copy, validated ([`validate`]: a
//!    YAML parse of the rule-file shape with line numbers, then
//!    `promtool check rules` when promtool is found). A valid file becomes
//!    the new good copy under `<out_dir>/.promshard/rules/<service>/`; a
//!    file that fails keeps its last good copy in effect, and the problem
//!    names the file and line.
//! 2. [`deliver`]: the good copies go to every planned node whose copy is
//!    not this set yet (a hash per node in the service state), with the
//!    service's push: `local` copies into `rules.dir` and POSTs
//!    `rules.reload_url`; `ansible` runs the rules playbook once for all of
//!    them; `none` serves them at `GET /rules/{service}/{file}`.
//!
//! Prometheus loads `rule_files` only at start-up and on a reload (SIGHUP,
//! or `POST /-/reload` with `--web.enable-lifecycle`): that is why a
//! delivery that changed a node's files reloads it, and a failed reload is
//! retried by the next pass.
//!
//! [`watch`] triggers a pass when a rule file changes, as scripts do.

pub mod deliver;
pub mod http;
pub mod metrics;
pub mod source;
pub mod validate;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Push;
use crate::push::DeliveryResult;

pub use deliver::{NodeRules, step};

/// `rules:` as written: a list of files, or a map with the delivery
/// settings too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRules {
    files: Vec<String>,
    dir: Option<String>,
    reload_url: Option<String>,
    playbook: Option<PathBuf>,
}

/// The map form of `rules:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesMap {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    reload_url: Option<String>,
    #[serde(default)]
    playbook: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for RawRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawRules;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of rule files, or a map with files, dir, reload_url, playbook")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<RawRules, A::Error> {
                let files = Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(a))?;
                Ok(RawRules {
                    files,
                    ..RawRules::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<RawRules, A::Error> {
                let m = RawRulesMap::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                Ok(RawRules {
                    files: m.files,
                    dir: m.dir,
                    reload_url: m.reload_url,
                    playbook: m.playbook,
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// A service's rules after inheritance: `default` (the top-level `rules:`
/// and `defaults: rules:`) first, then its own files; its own settings win.
pub fn inherit(own: Option<RawRules>, default: &Option<RawRules>) -> Option<RawRules> {
    let Some(default) = default else { return own };
    let Some(own) = own else {
        return Some(default.clone());
    };
    let mut files = default.files.clone();
    files.extend(own.files.into_iter().filter(|f| !default.files.contains(f)));
    Some(RawRules {
        files,
        dir: own.dir.or_else(|| default.dir.clone()),
        reload_url: own.reload_url.or_else(|| default.reload_url.clone()),
        playbook: own.playbook.or_else(|| default.playbook.clone()),
    })
}

/// Checked `rules:` of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Absolute paths; the file-name part may hold `*` and `?`.
    pub files: Vec<PathBuf>,
    /// Each node's rules directory: `{node}` and `{service}` are filled in.
    /// Absolute (resolved against the config with `push: local`).
    pub dir: Option<String>,
    /// POSTed after a node's rule files changed; `{node}` is filled in.
    pub reload_url: Option<String>,
    /// `push: ansible`: the playbook that delivers rule files.
    pub playbook: Option<PathBuf>,
}

/// Problems by key, as `config` collects them.
type KeyProblems = Vec<(&'static str, String)>;

/// Check `rules:` against the service's `push`.
pub fn check(raw: &RawRules, base_dir: &Path, push: &Push) -> Result<Rules, KeyProblems> {
    let mut p: KeyProblems = Vec::new();
    if raw.files.is_empty() {
        p.push(("rules.files", "list at least one rule file or glob".into()));
    }
    let mut files = Vec::new();
    for f in &raw.files {
        match source::check_pattern(f) {
            Ok(()) => files.push(base_dir.join(f)),
            Err(e) => p.push(("rules.files", format!("{f:?}: {e}"))),
        }
    }
    let dir = match (&raw.dir, push) {
        (None, Push::Local { .. } | Push::Ansible(_)) => {
            p.push((
                "rules.dir",
                "required with push local or ansible: the directory each node's Prometheus reads rule_files from, e.g. /etc/prometheus/rules/{service}".into(),
            ));
            None
        }
        (Some(d), Push::Local { .. }) => Some(base_dir.join(d).to_string_lossy().into_owned()),
        (Some(d), Push::Ansible(_)) if !d.starts_with('/') => {
            p.push((
                "rules.dir",
                format!("{d:?}: must be absolute (a path on the node)"),
            ));
            None
        }
        (d, _) => d.clone(),
    };
    if let Some(d) = &dir
        && Path::new(d)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        p.push(("rules.dir", format!("{d:?} contains '..'")));
    }
    if let Some(u) = &raw.reload_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        p.push((
            "rules.reload_url",
            format!("{u:?}: use an http:// or https:// URL, e.g. http://{{node}}/-/reload"),
        ));
    }
    let playbook = match push {
        Push::Ansible(a) => Some(
            raw.playbook
                .as_ref()
                .map(|pb| base_dir.join(pb))
                .unwrap_or_else(|| a.playbook.with_file_name("push_rules.yml")),
        ),
        _ => {
            if raw.playbook.is_some() {
                p.push(("rules.playbook", "only with push: ansible".into()));
            }
            None
        }
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Rules {
        files,
        dir,
        reload_url: raw.reload_url.clone(),
        playbook,
    })
}

/// `promshard check`: validate every rule file of `service` (as if none
/// had been checked before) and print the outcome; whether all are valid.
pub fn check_command(service: &crate::config::Service) -> bool {
    let Some(rules) = &service.rules else {
        return true;
    };
    let checked = tempfile::tempdir().and_then(|fresh| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(source::prepare(rules, fresh.path(), false)))
    });
    let prepared = match checked {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "cannot check the rule files of service {}: {e}",
                service.name
            );
            return false;
        }
    };
    for p in &prepared.problems {
        eprintln!("{p} (service {}, rules)", service.name);
    }
    if prepared.problems.is_empty() {
        println!(
            "ok: rules of service {}: {} file(s) valid (checked with {})",
            service.name,
            prepared.files.len(),
            prepared.validated_with
        );
    }
    prepared.problems.is_empty()
}

/// A rule file that was not accepted: where and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleProblem {
    /// The source file.
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A rule file in effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFile {
    /// Its name on the nodes.
    pub name: String,
    pub source: PathBuf,
    /// Content hash of the copy in effect.
    pub hash: String,
    /// The source was edited and refused: the last good version is in
    /// effect (see `problems`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
}

/// Delivery of the rule set to one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesDelivery {
    pub node: String,
    pub result: DeliveryResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the rules step of a pass did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulesReport {
    /// The files in effect, by name: what every node gets.
    pub files: Vec<RuleFile>,
    /// Files refused this pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<RuleProblem>,
    /// `promtool` (`promtool check rules` and the YAML check) or `yaml`
    /// (promtool not found: the YAML check only).
    pub validated_with: &'static str,
    /// Hash of the whole set, recorded per node once delivered.
    pub hash: String,
    /// Nodes the set was delivered to this pass (not the unchanged ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<RulesDelivery>,
}

impl RulesReport {
    /// Deliveries that failed this pass.
    pub fn failed_deliveries(&self) -> usize {
        self.deliveries
            .iter()
            .filter(|d| !d.result.is_success())
            .count()
    }

    /// No file refused, no delivery failed.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.failed_deliveries() == 0
    }

    /// Lines for `plan` and `once`.
    pub fn print(&self) {
        println!(
            "  rules: {} file(s) for every node (checked with {}){}",
            self.files.len(),
            self.validated_with,
            if self.deliveries.is_empty() {
                String::new()
            } else {
                format!(
                    ", delivered to {} node(s), {} failed",
                    self.deliveries.len(),
                    self.failed_deliveries()
                )
            }
        );
        for f in &self.files {
            let kept = if f.kept { "  (last good version)" } else { "" };
            println!("    {}  {}{kept}", f.name, f.source.display());
        }
        for p in &self.problems {
            println!("    REFUSED {p}");
        }
        for d in self.deliveries.iter().filter(|d| !d.result.is_success()) {
            println!(
                "    FAILED {}: {}",
                d.node,
                d.error.as_deref().unwrap_or(d.result.as_str())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Push;

    fn raw(yaml: &str) -> RawRules {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn list_and_map_forms_parse_and_unknown_keys_are_named() {
        assert_eq!(raw("[a.yml, 'r/*.yml']").files, ["a.yml", "r/*.yml"]);
        let m = raw("{files: [a.yml], dir: /r, reload_url: 'http://{node}/-/reload'}");
        assert_eq!(m.dir.as_deref(), Some("/r"));
        let e = serde_yaml_ng::from_str::<RawRules>("{files: [a], dirs: x}").unwrap_err();
        assert!(e.to_string().contains("unknown field `dirs`"), "{e}");
        let j: RawRules = serde_json::from_value(serde_json::json!(["x.yml"])).unwrap();
        assert_eq!(j.files, ["x.yml"]);
    }

    #[test]
    fn inherited_files_come_first_own_settings_win() {
        let top = Some(raw(
            "{files: [common.yml], dir: /top, reload_url: 'http://{node}/-/reload'}",
        ));
        let own = raw("{files: [own.yml, common.yml], dir: /own}");
        let r = inherit(Some(own), &top).unwrap();
        assert_eq!(r.files, ["common.yml", "own.yml"]);
        assert_eq!(r.dir.as_deref(), Some("/own"));
        assert_eq!(r.reload_url.as_deref(), Some("http://{node}/-/reload"));
        assert_eq!(inherit(None, &top), top);
        assert_eq!(inherit(None, &None), None);
    }

    #[test]
    fn check_names_each_bad_key() {
        let local = Push::Local {
            dest: "/x/{node}.json".into(),
        };
        let base = Path::new("/etc/promshard");
        let e = check(&raw("['r/*/x.yml']"), base, &local).unwrap_err();
        let keys: Vec<&str> = e.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["rules.files", "rules.dir"], "{e:?}");
        let e = check(
            &raw("{files: [a.yml], dir: d, reload_url: 'ftp://x'}"),
            base,
            &local,
        )
        .unwrap_err();
        assert_eq!(e[0].0, "rules.reload_url", "{e:?}");
        let ok = check(&raw("{files: ['r/*.yml'], dir: 'n/{node}'}"), base, &local).unwrap();
        assert_eq!(ok.files, [PathBuf::from("/etc/promshard/r/*.yml")]);
        assert_eq!(ok.dir.as_deref(), Some("/etc/promshard/n/{node}"));
        // Pull only: no directory needed.
        assert!(check(&raw("[a.yml]"), base, &Push::None).is_ok());
    }

    #[test]
    fn problems_read_file_colon_line() {
        let p = RuleProblem {
            file: "/r/a.yml".into(),
            line: Some(5),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "/r/a.yml:5: bad");
    }
}
