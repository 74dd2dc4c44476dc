//! The rules step of a pass: check the rule files ([`super::source`]),
//! then bring every planned node whose copy is not this set up to date,
//! with the service's push, and record the set's hash per node in the
//! service state.
//!
//! `push: local` copies into the node's `rules.dir` (atomically, a
//! `.promshard-rules` manifest there remembers which files are ours, so a
//! file dropped from the set is removed and nothing else is), then POSTs
//! `rules.reload_url` if the directory changed or an earlier reload is
//! still owed. `push: ansible` runs the rules playbook once for all due
//! nodes (it does the same on each node). `push: none`: nodes pull.
//!
//! Under `ha:` the pass hands over the lease check it just made: refused,
//! every due node's result is `fenced` and nothing is written; confirmed,
//! the epoch goes with each delivery and an epoch marker in the node's
//! rules directory (`..promshard-rules.epoch`, kept by both `push: local`
//! and the playbook) refuses a delivery from an older leader, as for the
//! sd files (`push::fence`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::source::{Prepared, prepare, store_dir};
use super::{Rules, RulesDelivery, RulesReport};
use crate::config::{AnsiblePush, Push, Service};
use crate::push::fence::{FenceError, write_fenced};
use crate::push::{Delivery, DeliveryResult};
use crate::store::files::write_atomic;
use crate::store::state::{NodeRules, unix_now};

/// The file in a node's rules directory listing the files promshard put
/// there (never matched by a `*.yml` glob).
pub const MANIFEST: &str = ".promshard-rules";

/// How long a reload POST may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the rules step of `service` for the planned `nodes`; `None` when it
/// has no `rules:`. A dry run checks and reports only. `state` is the
/// service state's record per node. `lease` is `ha:`'s answer: the epoch
/// to deliver with, or why this instance may not deliver.
pub async fn step(
    service: &Service,
    out_dir: &Path,
    nodes: &[String],
    state: &mut BTreeMap<String, NodeRules>,
    dry_run: bool,
    lease: Option<Result<u64, String>>,
    cancel: &CancellationToken,
) -> Option<RulesReport> {
    let rules = service.rules.as_ref()?;
    let store = store_dir(out_dir, &service.name);
    let prepared = prepare(rules, &store, !dry_run).await;
    for p in &prepared.problems {
        tracing::error!(service = %service.name, file = %p.file.display(), line = p.line.unwrap_or(0), error = %p.message, "rule file refused; its last good version (if any) stays in effect");
    }
    let mut report = RulesReport {
        files: prepared.files.iter().map(|(f, _)| f.clone()).collect(),
        problems: prepared.problems.clone(),
        validated_with: prepared.validated_with,
        hash: prepared.hash.clone(),
        deliveries: Vec::new(),
        departed: Vec::new(),
    };
    if dry_run {
        return Some(report);
    }
    let departed: Vec<(String, bool)> = state
        .keys()
        .filter(|n| !nodes.contains(n))
        .map(|n| (n.clone(), false))
        .collect();
    state.retain(|node, _| nodes.contains(node));
    let now = unix_now();
    let due: Vec<(String, bool)> = nodes
        .iter()
        .filter_map(|n| {
            let had = state.get(n).cloned().unwrap_or_default();
            had.needs(&prepared.hash, service.resync_interval.as_secs(), now)
                .then(|| (n.clone(), !had.succeeded()))
        })
        .collect();
    let lease = lease.transpose();
    if !due.is_empty() {
        report.deliveries = send(service, &store, &prepared, due, &lease, true, cancel).await;
        record(service, state, &report.deliveries, &prepared, now);
    }
    if !departed.is_empty() {
        // Nodes that left get the empty set, once: our files go, theirs stay.
        let none = Prepared {
            files: Vec::new(),
            problems: Vec::new(),
            validated_with: prepared.validated_with,
            hash: String::new(),
        };
        report.departed = send(service, &store, &none, departed, &lease, false, cancel).await;
        for d in report.departed.iter().filter(|d| !d.result.is_success()) {
            tracing::warn!(service = %service.name, node = %d.node, error = d.error.as_deref().unwrap_or(""), "could not remove the rule files of a node that left; not retried");
        }
    }
    Some(report)
}

/// Deliver `prepared` to the `due` nodes (with whether a reload is owed)
/// with the service's push; one attempt only unless `retry`. `lease` is
/// `ha:`'s answer (see [`step`]).
async fn send(
    service: &Service,
    store: &Path,
    prepared: &Prepared,
    due: Vec<(String, bool)>,
    lease: &Result<Option<u64>, String>,
    retry: bool,
    cancel: &CancellationToken,
) -> Vec<RulesDelivery> {
    let Some(rules) = &service.rules else {
        return Vec::new();
    };
    match (&service.push, lease) {
        (Push::None, _) => Vec::new(),
        (_, Err(why)) => due
            .into_iter()
            .map(|(node, _)| RulesDelivery {
                node,
                result: DeliveryResult::Fenced,
                error: Some(why.clone()),
            })
            .collect(),
        (Push::Local { .. }, Ok(epoch)) => {
            local(service, rules, prepared, due, *epoch, cancel).await
        }
        (Push::Ansible(a), Ok(epoch)) => {
            let due = Due {
                nodes: &due,
                epoch: *epoch,
                retry,
            };
            ansible(a, service, rules, store, prepared, due, cancel).await
        }
    }
}

/// Remember per node which set it holds; log each failure and one summary.
fn record(
    service: &Service,
    state: &mut BTreeMap<String, NodeRules>,
    deliveries: &[RulesDelivery],
    prepared: &Prepared,
    now: u64,
) {
    let changed = deliveries
        .iter()
        .filter(|d| d.result == DeliveryResult::Changed)
        .count();
    let failed = deliveries.iter().filter(|d| !d.result.is_success()).count();
    for d in deliveries {
        let entry = state.entry(d.node.clone()).or_default();
        entry.last_result = Some(d.result.into());
        let error = d.error.as_deref().unwrap_or("");
        if d.result.is_success() {
            entry.hash = Some(prepared.hash.clone());
            entry.delivered_at = Some(now);
        } else if d.result == DeliveryResult::Fenced {
            tracing::warn!(service = %service.name, node = %d.node, error, "rule delivery fenced: not the leader");
        } else {
            tracing::warn!(service = %service.name, node = %d.node, error, "rule delivery failed; retried next pass");
        }
    }
    tracing::info!(service = %service.name, files = prepared.files.len(), nodes = deliveries.len(), changed, failed, "rule files delivered");
}

/// `push: local`: copy the set into each node's directory and reload it
/// when it changed (or a reload is owed: `reload_owed`).
async fn local(
    service: &Service,
    rules: &Rules,
    prepared: &Prepared,
    due: Vec<(String, bool)>,
    epoch: Option<u64>,
    cancel: &CancellationToken,
) -> Vec<RulesDelivery> {
    let (dir, url) = (
        rules.dir.clone().unwrap_or_default(),
        rules.reload_url.clone(),
    );
    let (name, files, cancel) = (service.name.clone(), prepared.files.clone(), cancel.clone());
    let task = tokio::task::spawn_blocking(move || {
        due.into_iter()
            .map(|(node, reload_owed)| {
                if cancel.is_cancelled() {
                    return failed(node, "cancelled by shutdown".into());
                }
                let done = node_dir(&dir, &node, &name)
                    .map_err(FenceError::Io)
                    .and_then(|d| copy_fenced(&d, &files, epoch))
                    .and_then(|changed| match &url {
                        Some(u) if changed || reload_owed => reload(&u.replace("{node}", &node))
                            .map(|()| changed)
                            .map_err(FenceError::Io),
                        _ => Ok(changed),
                    });
                match done {
                    Ok(changed) => RulesDelivery {
                        node,
                        result: if changed {
                            DeliveryResult::Changed
                        } else {
                            DeliveryResult::Ok
                        },
                        error: None,
                    },
                    Err(e @ FenceError::Fenced { .. }) => RulesDelivery {
                        node,
                        result: DeliveryResult::Fenced,
                        error: Some(e.to_string()),
                    },
                    Err(FenceError::Io(e)) => failed(node, e),
                }
            })
            .collect()
    });
    task.await.unwrap_or_default()
}

/// [`copy_set`]; under `ha:` only if no newer leader wrote `dir` (the
/// epoch marker beside the manifest).
fn copy_fenced(
    dir: &Path,
    files: &[(super::RuleFile, Vec<u8>)],
    epoch: Option<u64>,
) -> Result<bool, FenceError> {
    match epoch {
        Some(epoch) => write_fenced(&dir.join(MANIFEST), epoch, || copy_set(dir, files)),
        None => copy_set(dir, files).map_err(FenceError::Io),
    }
}

fn failed(node: String, error: String) -> RulesDelivery {
    RulesDelivery {
        node,
        result: DeliveryResult::Failed,
        error: Some(error),
    }
}

/// The node's rules directory from the `rules.dir` template.
fn node_dir(template: &str, node: &str, service: &str) -> Result<PathBuf, String> {
    let dir = PathBuf::from(
        template
            .replace("{node}", node)
            .replace("{service}", service),
    );
    if dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("rules directory {} contains '..'", dir.display()));
    }
    Ok(dir)
}

/// Make `dir` hold the set: write files whose content differs, remove
/// files an earlier set put there that this one lacks (per the manifest).
/// Whether anything changed.
pub fn copy_set(dir: &Path, files: &[(super::RuleFile, Vec<u8>)]) -> Result<bool, String> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut changed = false;
    for (f, bytes) in files {
        let path = dir.join(&f.name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            write_atomic(dir, &f.name, bytes).map_err(io(&path))?;
            changed = true;
        }
    }
    let manifest: String = files.iter().map(|(f, _)| format!("{}\n", f.name)).collect();
    let before = std::fs::read_to_string(dir.join(MANIFEST)).unwrap_or_default();
    for old in before.lines() {
        let ours = crate::shard::names::check_file_name(old).is_ok();
        if ours && !files.iter().any(|(f, _)| f.name == old) {
            match std::fs::remove_file(dir.join(old)) {
                Ok(()) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dir.join(old))(e)),
            }
        }
    }
    if before != manifest {
        write_atomic(dir, MANIFEST, manifest.as_bytes()).map_err(io(&dir.join(MANIFEST)))?;
    }
    Ok(changed)
}

/// POST `url` (Prometheus's `/-/reload`); 2xx is success.
fn reload(url: &str) -> Result<(), String> {
    let agent = crate::http_client::agent(RELOAD_TIMEOUT);
    let mut resp = agent
        .post(url)
        .send_empty()
        .map_err(|e| format!("reload POST {url}: {e}"))?;
    if resp.status().is_success() {
        return Ok(());
    }
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Err(format!(
        "reload POST {url}: HTTP {}: {} (does Prometheus run with --web.enable-lifecycle?)",
        resp.status(),
        body.trim()
    ))
}

/// The nodes a delivery is due to, and the `ha:` epoch it carries.
struct Due<'a> {
    nodes: &'a [(String, bool)],
    epoch: Option<u64>,
    /// Retry failed nodes (`retries`), or make one attempt only.
    retry: bool,
}

/// `push: ansible`: one run of the rules playbook for every due node.
async fn ansible(
    settings: &AnsiblePush,
    service: &Service,
    rules: &Rules,
    store: &Path,
    prepared: &Prepared,
    due: Due<'_>,
    cancel: &CancellationToken,
) -> Vec<RulesDelivery> {
    let mut run = settings.clone();
    run.playbook = rules.playbook.clone().unwrap_or_default();
    let names: Vec<serde_json::Value> = prepared
        .files
        .iter()
        .map(|(f, _)| f.name.clone().into())
        .collect();
    let src = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
    let extra = [
        ("rules_dir", rules.dir.clone().map(Into::into)),
        (
            "src_rules_dir",
            Some(src.to_string_lossy().into_owned().into()),
        ),
        ("rule_files", Some(serde_json::Value::Array(names))),
        ("rules_reload_url", rules.reload_url.clone().map(Into::into)),
    ];
    for (key, value) in extra {
        if let Some(v) = value {
            run.vars.insert(key.into(), v);
        }
    }
    let batch: Vec<Delivery> = due
        .nodes
        .iter()
        .map(|(node, _)| Delivery {
            node: node.clone(),
            file: store.to_path_buf(),
            file_name: String::new(),
            epoch: due.epoch,
        })
        .collect();
    let report = crate::push::ansible::deliver(&run, service, batch, cancel, due.retry).await;
    report
        .nodes
        .into_iter()
        .map(|n| RulesDelivery {
            node: n.node,
            result: n.result,
            error: n.error,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleFile;

    fn file(name: &str, body: &str) -> (RuleFile, Vec<u8>) {
        let f = RuleFile {
            name: name.into(),
            source: PathBuf::from(name),
            hash: crate::shard::render::content_hash(body.as_bytes()),
            kept: false,
        };
        (f, body.as_bytes().to_vec())
    }

    #[test]
    fn copy_set_writes_changes_and_removes_only_its_own_dropped_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rules");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("theirs.yml"), "x").unwrap();
        let both = [file("a.yml", "A"), file("b.yml", "B")];
        assert!(copy_set(&dir, &both).unwrap());
        assert!(!copy_set(&dir, &both).unwrap(), "unchanged set: no change");
        assert!(copy_set(&dir, &[file("a.yml", "A2")]).unwrap());
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [MANIFEST, "a.yml", "theirs.yml"]);
        assert_eq!(std::fs::read(dir.join("a.yml")).unwrap(), b"A2");
    }

    #[test]
    fn a_newer_epoch_in_the_directory_refuses_the_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rules");
        assert!(copy_fenced(&dir, &[file("a.yml", "A")], Some(7)).unwrap());
        let stale = copy_fenced(&dir, &[file("a.yml", "old")], Some(6));
        assert!(
            matches!(
                stale,
                Err(FenceError::Fenced {
                    held: 7,
                    epoch: 6,
                    ..
                })
            ),
            "{stale:?}"
        );
        assert_eq!(std::fs::read(dir.join("a.yml")).unwrap(), b"A");
        assert!(copy_fenced(&dir, &[file("a.yml", "new")], Some(8)).unwrap());
        assert_eq!(std::fs::read(dir.join("a.yml")).unwrap(), b"new");
    }

    #[test]
    fn node_dirs_fill_the_template_and_refuse_dot_dot() {
        assert_eq!(
            node_dir("/p/{node}/rules/{service}", "a:1", "web").unwrap(),
            PathBuf::from("/p/a:1/rules/web")
        );
        assert!(node_dir("/p/{node}/../x", "a:1", "web").is_err());
    }
}
