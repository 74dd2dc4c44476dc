//! Drop-in services: an operator adds a service by dropping a file.
//!
//! Every `<scripts_dir>/<name>.rhai` at the top level (sub-directories such
//! as `scripts/examples/` are not scanned; hidden files are ignored) that no
//! service in the config file uses as its script or node script becomes the
//! service `<name>`. Its settings are the config's `defaults:` block,
//! overridden by the map its optional `fn service()` returns; that map is
//! validated by the same code as a service in the YAML
//! ([`Config::drop_in_service`]), so every key means the same thing and
//! errors name the key.
//!
//! [`effective_services`] is the one place that answers "which services
//! exist": `once`, `plan`, `check` and the daemon all use it. It runs
//! `fn service()` of each drop-in, which is blocking script work: call it
//! off the async runtime.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{ScriptCache, normalize};
use super::{CompiledScript, Sandbox, ScriptError, ScriptRun};
use crate::config::{Config, Service, check_service_name};

/// One line naming the drop-in services among `services` and their files,
/// relative to the config's directory (`drop-in services from scripts/:
/// mysql (scripts/mysql.rhai), …`), or `None` when there are none. `check`
/// prints it and `run` logs it at start-up: any `.rhai` file put in
/// `scripts_dir` is a live service, and this is where that shows.
pub fn describe_drop_ins(config: &Config, services: &[Arc<Service>]) -> Option<String> {
    let rel = |p: &Path| {
        p.strip_prefix(&config.base_dir)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let found: Vec<String> = services
        .iter()
        .filter(|s| s.drop_in)
        .map(|s| format!("{} ({})", s.name, rel(&s.script)))
        .collect();
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "drop-in services from {}/: {}",
        rel(&config.scripts_dir),
        found.join(", ")
    ))
}

/// Why a drop-in script did not become a service (or why there are none).
#[derive(Debug, Clone, PartialEq)]
pub struct DropInProblem {
    /// The service name the file would have given (its stem).
    pub name: String,
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for DropInProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: drop-in service {:?}: {}",
            self.path.display(),
            self.name,
            self.message
        )
    }
}

/// The top-level `*.rhai` files of `dir` as `(stem, path)`, sorted by name.
/// A missing directory has none.
pub fn drop_in_scripts(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            (!stem.starts_with('.')).then_some((stem, p))
        })
        .collect();
    out.sort();
    out
}

/// Compile a service's scripts (from `cache`: the last good version when
/// there is one) and check that the functions it needs exist. `check` runs
/// this for every service, and a config reload requires it of every service
/// in the file, so the daemon never takes a config `check` rejects. Blocking.
pub fn check_service_scripts(
    s: &Service,
    cache: &ScriptCache,
) -> Result<CompiledScript, ScriptError> {
    let script = cache.for_service(s)?;
    if !script.has_fn("targets", 1) {
        return Err(ScriptError::Missing {
            path: s.script.clone(),
            function: "targets".into(),
        });
    }
    if let Some(n) = &s.node_script {
        if !cache.get(n)?.has_fn("nodes", 1) {
            return Err(ScriptError::Missing {
                path: n.clone(),
                function: "nodes".into(),
            });
        }
    } else if s.nodes.is_empty() && !script.has_fn("nodes", 1) {
        return Err(ScriptError::NoNodes {
            path: s.script.clone(),
            service: s.name.clone(),
        });
    }
    Ok(script)
}

/// What the daemon requires of a config file before it runs it, at start-up
/// and on every reload: each service of the file passes
/// [`check_service_scripts`], as `check` requires. The problems, one line
/// each, naming the script, why, and the service. Blocking.
pub fn check_config_scripts(config: &Config, cache: &ScriptCache) -> Result<(), String> {
    let problems: Vec<String> = config
        .services
        .iter()
        .filter_map(|s| {
            check_service_scripts(s, cache)
                .err()
                .map(|e| format!("{e} (service {})", s.name))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Every service: those in the config file, then the drop-ins of
/// `scripts_dir` (sorted by name). Drop-in scripts come from `cache` (the
/// last version that compiled). Each drop-in that cannot become a service is
/// reported and left out; the others are unaffected. Blocking.
pub fn effective_services(
    config: &Config,
    cache: &ScriptCache,
) -> (Vec<Arc<Service>>, Vec<DropInProblem>) {
    let mut services: Vec<Arc<Service>> = config.services.clone();
    let mut problems = Vec::new();
    let used: BTreeSet<PathBuf> = config
        .services
        .iter()
        .flat_map(|s| std::iter::once(&s.script).chain(s.node_script.as_ref()))
        .map(|p| normalize(p))
        .collect();
    let sandbox = Sandbox::for_config(config);
    for (name, path) in drop_in_scripts(&config.scripts_dir) {
        if used.contains(&normalize(&path)) {
            continue;
        }
        let problem = |message: String| DropInProblem {
            name: name.clone(),
            path: path.clone(),
            message,
        };
        if let Some(other) = config.service(&name) {
            problems.push(problem(format!(
                "the config already has a service {name:?} (script {}); rename the file or remove the service",
                other.script.display()
            )));
            continue;
        }
        if let Err(e) = check_service_name(&name) {
            problems.push(problem(format!("bad file name: {e}")));
            continue;
        }
        let script = match cache.get(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(e.to_string()));
                continue;
            }
        };
        if !script.has_fn("targets", 1) {
            problems.push(problem("fn targets(ctx) is not defined".into()));
            continue;
        }
        let settings = match ScriptRun::new(&script, &sandbox).service_settings() {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                problems.push(problem(e.to_string()));
                continue;
            }
        };
        match config.drop_in_service(&name, &path, settings, script.has_fn("nodes", 1)) {
            Ok(s) => services.push(Arc::new(s)),
            Err(list) => problems.extend(
                list.into_iter()
                    .map(|p| problem(format!("{}: {}", p.location, p.message))),
            ),
        }
    }
    if services.is_empty() && problems.is_empty() {
        problems.push(DropInProblem {
            name: String::new(),
            path: config.scripts_dir.clone(),
            message: format!(
                "no services: none in {} and no drop-in <name>.rhai scripts here",
                config.path.display()
            ),
        });
    }
    (services, problems)
}
