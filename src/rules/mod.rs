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
//!    them; with any push the daemon serves them at
//!    `GET /rules/{service}/{file}` for nodes that pull.
//!
//! Prometheus loads `rule_files` only at start-up and on a reload (SIGHUP,
//! or `POST /-/reload` with `--web.enable-lifecycle`): that is why a
//! delivery that changed a node's files reloads it, and a failed reload is
//! retried by the next pass.
//!
//! [`watch`] triggers a pass when a rule file changes, as scripts do.
//! `config::rules` reads and checks `rules:`; the pass runs [`step`]
//! before its dry-run return, so `plan` shows the rule files too.

pub mod deliver;
pub mod source;
pub mod validate;
pub mod watch;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::push::DeliveryResult;

pub use crate::config::Rules;
pub use deliver::step;

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
    /// Nodes that left the service this pass: promshard's rule files
    /// removed from them (one attempt, like the empty sd file they get).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<RulesDelivery>,
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
        if !self.departed.is_empty() {
            let removed = self.departed.iter().filter(|d| d.result.is_success());
            println!(
                "    removed from {} of {} node(s) that left",
                removed.count(),
                self.departed.len()
            );
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
