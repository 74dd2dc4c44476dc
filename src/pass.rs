//! One dispatch pass of one service, start to finish:
//! script → normalize → mass-drop guard → plan → write → deliver → state.
//!
//! CPU work (script, planning, rendering) runs in one `spawn_blocking` task
//! so the runtime never stalls; file writes run in another. Any failure
//! before the write step leaves every file as it was. One summary line is
//! logged per pass.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::Map;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FileType, Service};
use crate::observe::Assignment;
use crate::output::{self, OutputError, content_hash, render};
use crate::plan::{
    AffinityPlan, FileNameArgs, MoveCap, Plan, PlanError, PlanInput, default_file_name, make_plan,
};
use crate::push::{Delivery, DeliveryResult, NodeDelivery, Pusher};
use crate::ring::NodeSpec;
use crate::script::{CompiledScript, Sandbox, ScriptError, ScriptRun};
use crate::state::{NodeState, ServiceState, unix_now};
use crate::target::{Invalid, Target, normalize};

/// How many invalid targets a report lists in full.
const INVALID_SAMPLES: usize = 20;

/// Flags of a pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOptions {
    /// Compute and report, write and deliver nothing.
    pub dry_run: bool,
    /// Override the mass-drop guard.
    pub force: bool,
}

/// Why a pass failed. Files are untouched unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "refusing to drop from {previous} to {now} targets (more than max_drop_ratio {max_drop_ratio}); files kept; use --force or raise max_drop_ratio if this is intended"
    )]
    MassDrop {
        previous: usize,
        now: usize,
        max_drop_ratio: f64,
    },
    #[error("writing files: {0}")]
    Output(#[from] OutputError),
    #[error("saving state {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "files written and delivered, but saving the state {path} failed: {source}; the next pass delivers them again"
    )]
    StateNotSaved {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir}: holds {} file(s) promshard did not write ({}); refusing to write or clean up there, nothing changed: move them away or set another out_dir (files promshard wrote are recorded in {state})",
        files.len(),
        sample(files),
        dir = dir.display(),
        state = state.display()
    )]
    ForeignFiles {
        dir: PathBuf,
        files: Vec<String>,
        state: PathBuf,
    },
    #[error("internal task failed: {0}")]
    Join(String),
    #[error(
        "all {nodes} nodes are down (health checks); last files and deliveries kept, not re-planning"
    )]
    AllNodesDown { nodes: usize },
}

impl PassError {
    /// Short kind for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PassError::Script(e) => e.kind(),
            PassError::Plan(_) => "plan",
            PassError::MassDrop { .. } => "mass_drop",
            PassError::Output(_) | PassError::State { .. } | PassError::StateNotSaved { .. } => {
                "io"
            }
            PassError::ForeignFiles { .. } => "foreign_files",
            PassError::Join(_) => "internal",
            PassError::AllNodesDown { .. } => "all_nodes_down",
        }
    }
}

impl PassError {
    /// Whether every file is as the last good pass left it (false when
    /// the pass failed part-way through writing, or after it).
    pub fn files_kept(&self) -> bool {
        !matches!(self, PassError::Output(_) | PassError::StateNotSaved { .. })
    }
}

/// The first few of `names`, for a message.
fn sample(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(", …");
    }
    text
}

/// What happened to one node in a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub file: String,
    pub count: usize,
    /// The file's content changed (or would, in a dry run).
    pub changed: bool,
    pub moved_in: usize,
    pub moved_out: usize,
    /// Sum of its targets' weights (expected series), when targets are
    /// weighted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u64>,
    /// Affinity groups on the node (with `affinity:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
    /// A delivery was attempted.
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<DeliveryResult>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a pass, printed by `once --json` and served by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassReport {
    pub name: String,
    pub targets: usize,
    pub invalid: usize,
    /// The first invalid entries, for operators.
    pub invalid_samples: Vec<Invalid>,
    pub duplicates: usize,
    pub replicas: usize,
    pub nodes: Vec<NodeReport>,
    /// Nodes that left and were sent an empty file.
    pub departed: Vec<NodeDelivery>,
    /// Stale files removed from the service directory.
    pub removed: Vec<String>,
    pub dry_run: bool,
    pub duration_ms: u64,
    /// Where the time went, in milliseconds.
    pub phases_ms: Phases,
    /// Seconds of each external delivery run (`ansible-playbook`).
    pub delivery_runs_s: Vec<f64>,
    /// Targets heavier than a node's fair share of the weight: each placed
    /// whole where it fits best, never dropped (the first 20).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oversized: Vec<String>,
    /// How many targets are oversized.
    pub oversized_count: usize,
    /// Moves held back by `max_move_ratio` for the next pass.
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred_moves: usize,
    /// How targets were grouped, with `affinity:`: groups, ungrouped
    /// targets, oversized groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityPlan>,
    /// Rule files checked and delivered to every node (`rules:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::rules::RulesReport>,
    /// Target → nodes, for `where`, the audit and the status page.
    #[serde(skip)]
    pub assignment: Arc<Assignment>,
    /// What each node holds after this pass (not in dry runs), for `/sd`.
    #[serde(skip)]
    pub sd: Option<Arc<SdSnapshot>>,
}

/// The targets and plan of a pass, kept in memory so that `/sd` answers
/// from them: re-reading the files raced with the next pass renaming or
/// removing them (HTTP 500 mid-pass).
#[derive(Debug, PartialEq)]
pub struct SdSnapshot {
    targets: Vec<Target>,
    plan: Plan,
}

impl SdSnapshot {
    /// `node`'s targets as http_sd JSON, or `None` when it is not planned.
    pub fn render(&self, node: &str) -> Option<Vec<u8>> {
        let n = self.plan.nodes.iter().find(|n| n.node == node)?;
        Some(render(
            &self.targets,
            &n.targets,
            FileType::Json,
            self.plan.shard_of(n),
        ))
    }
}

/// Milliseconds spent in each phase of a pass (see `--json` and debug logs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    pub script: f64,
    pub normalize: f64,
    pub plan: f64,
    pub render: f64,
    pub write: f64,
    pub deliver: f64,
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

impl PassReport {
    /// Nodes whose delivery failed in this pass.
    pub fn failed_deliveries(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.result.is_some_and(|r| !r.is_success()))
            .count()
    }

    /// Files whose content changed.
    pub fn changed_files(&self) -> usize {
        self.nodes.iter().filter(|n| n.changed).count()
    }
}

/// Everything a pass needs.
pub struct PassInput<'a> {
    pub config: &'a Config,
    pub service: &'a Service,
    pub script: &'a CompiledScript,
    /// Live nodes, sorted by address.
    pub nodes: &'a [NodeSpec],
    pub sandbox: &'a Sandbox,
    /// Keeps the live ones of the nodes a script supplies (health checks;
    /// see `membership`). Static `nodes` arrive already filtered.
    pub node_filter: Option<NodeFilter>,
    /// The service's compiled `node_script` (the daemon's last good
    /// version); `None` compiles it afresh.
    pub node_script: Option<CompiledScript>,
    /// Target weights learned from the servers (`weights: {from: series}`):
    /// address → series. `None` reads them from the service state.
    pub learned_weights: Option<Arc<BTreeMap<String, u32>>>,
    /// The plan in effect, for `max_move_ratio` (`None`: no cap this pass).
    pub previous: Option<Arc<Assignment>>,
}

/// Given the nodes a script returned, the ones in the ring.
pub type NodeFilter = Arc<dyn Fn(&[NodeSpec]) -> Vec<NodeSpec> + Send + Sync>;

/// The pure part of a pass: targets and plan. Files are rendered later, one
/// node at a time ([`emit`]), so that a pass never holds every file at once.
struct Computed {
    targets: Vec<Target>,
    assignment: Arc<Assignment>,
    invalid: Vec<Invalid>,
    duplicates: usize,
    plan: Plan,
    phases: Phases,
}

/// The `ctx` map given to `targets(ctx)`.
pub fn script_ctx(service: &Service, nodes: &[NodeSpec]) -> Map {
    let mut ctx = Map::new();
    ctx.insert("service".into(), service.name.clone().into());
    ctx.insert(
        "port".into(),
        service
            .port
            .map(|p| rhai::Dynamic::from(p as i64))
            .unwrap_or(rhai::Dynamic::UNIT),
    );
    ctx.insert("replicas".into(), (service.replicas as i64).into());
    ctx.insert("file_type".into(), service.file_type.ext().into());
    let nodes: rhai::Array = nodes.iter().map(|n| n.addr.clone().into()).collect();
    ctx.insert("nodes".into(), nodes.into());
    ctx
}

fn file_name_map(a: &FileNameArgs) -> Map {
    let mut f = Map::new();
    f.insert("service".into(), a.service.clone().into());
    f.insert("node".into(), a.node.clone().into());
    f.insert("index".into(), (a.index as i64).into());
    f.insert("total".into(), (a.total as i64).into());
    f.insert("count".into(), (a.count as i64).into());
    f.insert("file_type".into(), a.file_type.ext().into());
    f
}

/// The nodes a script supplies for `service`, or `None` when it uses its
/// static `nodes:`. In order: `node_script`'s `fn nodes(ctx)`, then
/// `fn nodes(ctx)` in the service's own script. The result is validated like
/// `nodes:` in the config. A `node_script` is compiled afresh each time, so
/// its edits apply on the next pass. Blocking.
pub fn script_nodes(
    service: &Service,
    script: &CompiledScript,
    node_script: Option<&CompiledScript>,
    sandbox: &Sandbox,
) -> Option<Result<Vec<NodeSpec>, ScriptError>> {
    let ctx = script_ctx(service, &[]);
    if let Some(path) = &service.node_script {
        let compiled = match node_script {
            Some(s) => Ok(s.clone()),
            None => CompiledScript::compile(path),
        };
        return Some(compiled.and_then(|s| ScriptRun::new(&s, sandbox).nodes(ctx)));
    }
    if script.has_fn("nodes", 1) {
        return Some(ScriptRun::new(script, sandbox).nodes(ctx));
    }
    if service.nodes.is_empty() {
        return Some(Err(ScriptError::NoNodes {
            path: script.path.clone(),
            service: service.name.clone(),
        }));
    }
    None
}

/// What earlier passes left that this one places with.
struct Memory {
    /// Learned target weights (`weights: {from: series}`).
    learned: Option<Arc<BTreeMap<String, u32>>>,
    /// The plan in effect (`max_move_ratio`).
    previous: Option<Arc<Assignment>>,
}

fn compute(
    service: &Service,
    script: &CompiledScript,
    node_script: Option<&CompiledScript>,
    nodes: &[NodeSpec],
    sandbox: &Sandbox,
    node_filter: Option<&NodeFilter>,
    memory: &Memory,
) -> Result<Computed, PassError> {
    let (learned, previous) = (memory.learned.as_deref(), memory.previous.as_deref());
    let from_script = match script_nodes(service, script, node_script, sandbox) {
        Some(r) => Some(r?),
        None => None,
    };
    let from_script = match (from_script, node_filter) {
        (Some(all), Some(live)) => {
            let up = live(&all);
            if up.is_empty() && !all.is_empty() {
                return Err(PassError::AllNodesDown { nodes: all.len() });
            }
            Some(up)
        }
        (n, _) => n,
    };
    let nodes = from_script.as_deref().unwrap_or(nodes);
    if let Some(n) = &from_script {
        tracing::debug!(service = %service.name, nodes = n.len(), "nodes from script");
    }
    let mut phases = Phases::default();
    let t = Instant::now();
    let run = ScriptRun::new(script, sandbox);
    let (groups, mut invalid) = run.targets(script_ctx(service, nodes))?;
    phases.script = ms_since(t);
    let t = Instant::now();
    // A weight the script sets wins over a learned one.
    let explicit: HashSet<String> = match learned {
        Some(_) => groups
            .iter()
            .filter(|g| g.weight.is_some())
            .flat_map(|g| g.targets.iter().cloned())
            .collect(),
        None => HashSet::new(),
    };
    let mut normalized = normalize(groups);
    if let Some(learned) = learned {
        apply_learned(&mut normalized.targets, &explicit, learned);
    }
    invalid.extend(normalized.invalid);
    invalid.sort_by_key(|i| i.group);
    let targets = normalized.targets;
    phases.normalize = ms_since(t);
    let t = Instant::now();
    let mut script_name_error = None;
    let plan = make_plan(
        &PlanInput {
            service: &service.name,
            nodes,
            targets: &targets,
            replicas: service.replicas,
            ring: &service.ring,
            file_type: service.file_type,
            move_cap: previous
                .zip(service.max_move_ratio)
                .map(|(previous, max_ratio)| MoveCap {
                    previous,
                    max_ratio,
                }),
            affinity: service.affinity.as_ref(),
            shard_label: service.shard_label.as_deref(),
        },
        |args| match run.file_name(file_name_map(args)) {
            None => Ok(default_file_name(args, service.file_naming)),
            Some(Ok(name)) => Ok(name),
            Some(Err(e)) => {
                let msg = e.to_string();
                script_name_error = Some(e);
                Err(msg)
            }
        },
    );
    let plan = match (plan, script_name_error) {
        (Err(_), Some(e)) => return Err(e.into()),
        (p, _) => p?,
    };
    let assignment = Arc::new(Assignment::from_plan(&targets, &plan));
    phases.plan = ms_since(t);
    Ok(Computed {
        assignment,
        targets,
        invalid,
        duplicates: normalized.duplicates,
        plan,
        phases,
    })
}

/// Give every target without a script weight its learned weight (the
/// median of the known ones for a target never observed).
fn apply_learned(
    targets: &mut [Target],
    explicit: &HashSet<String>,
    learned: &BTreeMap<String, u32>,
) {
    let open: Vec<usize> = (0..targets.len())
        .filter(|&i| !explicit.contains(&*targets[i].addr))
        .collect();
    let addrs: Vec<&str> = open.iter().map(|&i| &*targets[i].addr).collect();
    let weights = crate::observe::weights::weights_for(&addrs, learned);
    for (i, w) in open.into_iter().zip(weights) {
        targets[i].weight = w;
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Targets heavier than a node's fair share of the total weight.
fn oversized_targets<'a>(targets: &'a [Target], plan: &Plan) -> Vec<&'a Target> {
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    crate::plan::oversized(&weights, plan.replicas, plan.nodes.len())
        .into_iter()
        .map(|i| &targets[i])
        .collect()
}

/// Whether dropping from `previous` to `now` targets must be refused.
pub fn is_mass_drop(previous: usize, now: usize, max_drop_ratio: f64) -> bool {
    if previous == 0 || max_drop_ratio >= 1.0 {
        return false;
    }
    now == 0 || (now as f64) < (1.0 - max_drop_ratio) * previous as f64
}

/// Whether a node's file must be (re)delivered.
fn needs_delivery(prev: Option<&NodeState>, hash: &str, resync: Duration, now: u64) -> bool {
    let Some(prev) = prev else { return true };
    prev.delivered_hash.as_deref() != Some(hash)
        || !matches!(prev.last_result.as_deref(), Some("ok" | "changed"))
        || prev
            .delivered_at
            .is_none_or(|t| now.saturating_sub(t) >= resync.as_secs())
}

/// What [`emit`] produced for one node.
struct NodeFile {
    hash: String,
    moved_in: usize,
    moved_out: usize,
    /// The file was (re)written.
    written: bool,
}

/// What [`emit`] did.
struct Emitted {
    files: Vec<NodeFile>,
    removed: Vec<String>,
    render_ms: f64,
    write_ms: f64,
}

/// How a node's address set changes from `old` (the content of the file it
/// had, if readable) to `next` (the addresses of its new file).
fn node_movement(next: &HashSet<&str>, old: Option<&[u8]>, file_type: FileType) -> (usize, usize) {
    let now = old
        .and_then(|b| output::parse_addresses(b, file_type).ok())
        .unwrap_or_default();
    (
        next.iter().filter(|a| !now.contains(**a)).count(),
        now.iter().filter(|a| !next.contains(a.as_str())).count(),
    )
}

/// Render every node's file, one at a time, hash it, count how its
/// addresses moved against the file the node had (from `old`: node → file
/// name, per the state) and, when `write`, write it if its content changed
/// and remove stale files (only names in `owned`: file → node, the files
/// promshard wrote). Movement needs no parsing when a node's file is
/// unchanged (the usual case). Only one file's content is in memory at once.
///
/// A node has one file at every instant: when its name changes, its old
/// file is renamed to the new name before the new content replaces it, and
/// files a crash left under other names for it go as soon as it has one.
/// (Except when a script's names move between nodes: then every old file is
/// read first and stale ones go at the end.)
fn emit(
    dir: &Path,
    targets: &[Target],
    plan: &Plan,
    old: &BTreeMap<String, String>,
    owned: &BTreeMap<String, String>,
    write: bool,
) -> Result<Emitted, OutputError> {
    let started = Instant::now();
    let file_type = plan.file_type;
    let err = |path: PathBuf| move |source| OutputError { path, source };
    if write {
        std::fs::create_dir_all(dir).map_err(err(dir.to_path_buf()))?;
    }
    let next_set = |n: &crate::plan::NodePlan| -> HashSet<&str> {
        n.targets
            .iter()
            .map(|&i| &*targets[i as usize].addr)
            .collect()
    };
    let read_old = |node: &str| old.get(node).and_then(|f| std::fs::read(dir.join(f)).ok());
    let planned: BTreeSet<&str> = plan.nodes.iter().map(|n| n.file.as_str()).collect();
    // A node's new file may carry the name another node's old file had
    // (custom file names): then read every old file before writing any.
    let shared_name = plan
        .nodes
        .iter()
        .any(|n| old.iter().any(|(node, f)| *f == n.file && *node != n.node));
    let early: Option<Vec<(usize, usize)>> = (write && shared_name).then(|| {
        plan.nodes
            .iter()
            .map(|n| node_movement(&next_set(n), read_old(&n.node).as_deref(), file_type))
            .collect()
    });
    let mut render_time = Duration::ZERO;
    let mut bytes = Vec::new();
    let mut files = Vec::with_capacity(plan.nodes.len());
    let mut removed = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let t = Instant::now();
        output::render_into(&mut bytes, targets, &n.targets, file_type, plan.shard_of(n));
        render_time += t.elapsed();
        let hash = content_hash(&bytes);
        let prev = if early.is_some() {
            None
        } else {
            read_old(&n.node)
        };
        let (moved_in, moved_out) = match &early {
            Some(moves) => moves[i],
            None if prev.as_deref() == Some(bytes.as_slice()) => (0, 0),
            None => node_movement(&next_set(n), prev.as_deref(), file_type),
        };
        let mut written = false;
        if write {
            let path = dir.join(&n.file);
            let mut current = if old.get(&n.node) == Some(&n.file) {
                prev
            } else {
                std::fs::read(&path).ok()
            };
            let renamed_from = old.get(&n.node).filter(|f| **f != n.file);
            if let (None, false, Some(from)) = (&current, shared_name, renamed_from) {
                match std::fs::rename(dir.join(from), &path) {
                    Ok(()) => current = std::fs::read(&path).ok(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(dir.join(from))(e)),
                }
            }
            // The node's files under other names (only after a crash, or
            // when the rename above found nothing): removed while the node
            // still has a file, or right after it got one.
            let drop_leftovers = |removed: &mut Vec<String>| -> Result<(), OutputError> {
                if shared_name {
                    return Ok(());
                }
                let leftovers = owned.iter().filter(|(f, node)| {
                    **node == n.node && **f != n.file && !planned.contains(f.as_str())
                });
                for (f, _) in leftovers {
                    match std::fs::remove_file(dir.join(f)) {
                        Ok(()) => removed.push(f.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(err(dir.join(f))(e)),
                    }
                }
                Ok(())
            };
            let had_file = current.is_some();
            if had_file {
                drop_leftovers(&mut removed)?;
            }
            if current.as_deref() != Some(bytes.as_slice()) {
                output::write_atomic(dir, &n.file, &bytes).map_err(err(path))?;
                written = true;
            }
            if !had_file {
                drop_leftovers(&mut removed)?;
            }
        }
        files.push(NodeFile {
            hash,
            moved_in,
            moved_out,
            written,
        });
    }
    if write {
        let owned: BTreeSet<&str> = owned.keys().map(String::as_str).collect();
        removed.extend(output::remove_stale(dir, &owned, &planned)?);
        removed.sort();
    }
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    Ok(Emitted {
        files,
        removed,
        render_ms: ms(render_time),
        write_ms: ms(started.elapsed().saturating_sub(render_time)),
    })
}

/// Path of the shared empty file sent to nodes that left.
fn empty_file(out_dir: &Path, file_type: FileType) -> PathBuf {
    out_dir
        .join(".promshard")
        .join(format!("empty.{}", file_type.ext()))
}

/// Run one pass. Returns a report even when deliveries failed (see
/// [`PassReport::failed_deliveries`]); returns an error when nothing was
/// written.
pub async fn run_pass(
    input: PassInput<'_>,
    options: PassOptions,
    cancel: &CancellationToken,
) -> Result<PassReport, PassError> {
    let started = Instant::now();
    let service = input.service;
    let out_dir = input.config.out_dir.clone();
    let dir = out_dir.join(&service.name);
    // Learned weights: the daemon's, or (once, plan) those the last pass
    // saved, so that every command places alike.
    let learned = service.weights.map(|_| {
        input
            .learned_weights
            .clone()
            .unwrap_or_else(|| Arc::new(ServiceState::load(&out_dir, &service.name).weights))
    });
    let computed = {
        let memory = Memory {
            learned: learned.clone(),
            previous: input.previous.clone(),
        };
        let (svc, script, node_script, nodes, sandbox, filter) = (
            Arc::new(service.clone()),
            input.script.clone(),
            input.node_script.clone(),
            input.nodes.to_vec(),
            input.sandbox.clone(),
            input.node_filter.clone(),
        );
        tokio::task::spawn_blocking(move || {
            compute(
                &svc,
                &script,
                node_script.as_ref(),
                &nodes,
                &sandbox,
                filter.as_ref(),
                &memory,
            )
        })
        .await
        .map_err(|e| PassError::Join(e.to_string()))??
    };
    // One pass per service across processes too; the state is read, and
    // the directory checked for files promshard did not write, under the
    // lock. Blocking I/O: off the runtime.
    let planned: BTreeMap<String, String> = computed
        .plan
        .nodes
        .iter()
        .map(|n| (n.file.clone(), n.node.clone()))
        .collect();
    let (lock, mut state) = {
        let (out_dir, dir, name, write) = (
            out_dir.clone(),
            dir.clone(),
            service.name.clone(),
            !options.dry_run,
        );
        let planned = planned.clone();
        tokio::task::spawn_blocking(move || -> Result<_, PassError> {
            let lock = if write {
                Some(
                    ServiceState::lock(&out_dir, &name).map_err(|source| PassError::State {
                        path: out_dir.join(".promshard").join(format!("{name}.lock")),
                        source,
                    })?,
                )
            } else {
                None
            };
            let state = ServiceState::load_existing(&out_dir, &name).unwrap_or_default();
            let owned: BTreeSet<&str> = state.owned().into_keys().collect();
            let planned: BTreeSet<&str> = planned.keys().map(String::as_str).collect();
            let foreign = output::foreign_files(&dir, &owned, &planned)?;
            if !foreign.is_empty() {
                return Err(PassError::ForeignFiles {
                    dir,
                    files: foreign,
                    state: crate::state::state_path(&out_dir, &name),
                });
            }
            Ok((lock, state))
        })
        .await
        .map_err(|e| PassError::Join(e.to_string()))??
    };
    let previous = state.targets;
    let now_count = computed.targets.len();
    if !options.force && is_mass_drop(previous, now_count, service.max_drop_ratio) {
        return Err(PassError::MassDrop {
            previous,
            now: now_count,
            max_drop_ratio: service.max_drop_ratio,
        });
    }
    for bad in &computed.invalid {
        tracing::warn!(service = %service.name, group = bad.group, value = %bad.value, reason = %bad.reason, "invalid target skipped");
    }
    // Render, compare with the current files, and (unless a dry run) write
    // changed files and remove stale ones: effects from here on.
    let old: BTreeMap<String, String> = state
        .nodes
        .iter()
        .map(|(node, ns)| (node.clone(), ns.file.clone()))
        .collect();
    let write = !options.dry_run;
    // Record the names about to be written before writing them, so that a
    // crash part-way still leaves every file known as promshard's own.
    let new_names = planned
        .iter()
        .any(|(file, node)| state.files.get(file) != Some(node));
    if write && new_names {
        state.files.extend(planned.clone());
        let (saved, out_dir, name) = (state.clone(), out_dir.clone(), service.name.clone());
        tokio::task::spawn_blocking(move || {
            saved
                .save(&out_dir, &name)
                .map_err(|source| PassError::State {
                    path: crate::state::state_path(&out_dir, &name),
                    source,
                })
        })
        .await
        .map_err(|e| PassError::Join(e.to_string()))??;
    }
    let owned: BTreeMap<String, String> = state
        .owned()
        .into_iter()
        .map(|(f, n)| (f.to_string(), n.to_string()))
        .collect();
    let (computed, emitted) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let e = emit(&dir, &computed.targets, &computed.plan, &old, &owned, write);
            (computed, e)
        })
        .await
        .map_err(|e| PassError::Join(e.to_string()))?
    };
    let emitted = emitted?;
    let hashes: Vec<String> = emitted.files.iter().map(|f| f.hash.clone()).collect();
    let weighted = computed.targets.iter().any(|t| t.weight != 1);
    let oversized = oversized_targets(&computed.targets, &computed.plan);
    if computed.plan.deferred_moves > 0 {
        tracing::info!(service = %service.name, deferred = computed.plan.deferred_moves, "moves held back by max_move_ratio; a later pass continues the rebalance");
    }
    if !oversized.is_empty() {
        let first: Vec<&str> = oversized.iter().take(5).map(|t| &*t.addr).collect();
        tracing::warn!(service = %service.name, count = oversized.len(), first = %first.join(" "), "targets heavier than a node's fair share: each placed whole on the node where it fits best");
    }
    if let Some(a) = &computed.plan.affinity {
        log_affinity(&service.name, a);
    }
    let mut nodes: Vec<NodeReport> = computed
        .plan
        .nodes
        .iter()
        .zip(&emitted.files)
        .map(|(n, f)| NodeReport {
            node: n.node.clone(),
            file: n.file.clone(),
            count: n.count,
            changed: if write {
                f.written
            } else {
                state
                    .nodes
                    .get(&n.node)
                    .is_none_or(|s| s.hash != f.hash || s.file != n.file)
            },
            moved_in: f.moved_in,
            moved_out: f.moved_out,
            weight: weighted.then(|| {
                n.targets
                    .iter()
                    .map(|&i| u64::from(computed.targets[i as usize].weight))
                    .sum()
            }),
            groups: n.groups,
            delivered: false,
            result: None,
            attempts: 0,
            error: None,
        })
        .collect();
    let mut report = PassReport {
        name: service.name.clone(),
        targets: now_count,
        invalid: computed.invalid.len(),
        invalid_samples: computed
            .invalid
            .iter()
            .take(INVALID_SAMPLES)
            .cloned()
            .collect(),
        duplicates: computed.duplicates,
        replicas: computed.plan.replicas,
        assignment: Arc::clone(&computed.assignment),
        oversized: oversized
            .iter()
            .take(20)
            .map(|t| t.addr.to_string())
            .collect(),
        oversized_count: oversized.len(),
        deferred_moves: computed.plan.deferred_moves,
        affinity: computed.plan.affinity.clone(),
        rules: None,
        nodes: Vec::new(),
        departed: Vec::new(),
        removed: Vec::new(),
        dry_run: options.dry_run,
        duration_ms: 0,
        phases_ms: computed.phases.clone(),
        delivery_runs_s: Vec::new(),
        sd: None,
    };
    report.phases_ms.render = emitted.render_ms;
    let planned_list: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
    report.rules = crate::rules::step(
        service,
        &out_dir,
        &planned_list,
        &mut state.rules,
        options.dry_run,
        cancel,
    )
    .await;
    if options.dry_run {
        report.nodes = nodes;
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    report.removed = emitted.removed;
    report.phases_ms.write = emitted.write_ms;
    let t = Instant::now();

    let pusher = Pusher::for_service(service);
    let now = unix_now();
    let planned_nodes: BTreeSet<String> = nodes.iter().map(|n| n.node.clone()).collect();
    let departed: Vec<String> = state
        .nodes
        .keys()
        .filter(|n| !planned_nodes.contains(n.as_str()))
        .cloned()
        .collect();
    if pusher.delivers() {
        let batch: Vec<Delivery> = nodes
            .iter()
            .zip(&hashes)
            .filter(|(n, hash)| {
                needs_delivery(state.nodes.get(&n.node), hash, service.resync_interval, now)
            })
            .map(|(n, _)| Delivery {
                node: n.node.clone(),
                file: dir.join(&n.file),
                file_name: n.file.clone(),
            })
            .collect();
        let delivered = pusher.deliver(service, batch, cancel, true).await;
        report.delivery_runs_s = delivered.run_seconds;
        for r in delivered.nodes {
            if let Some(n) = nodes.iter_mut().find(|n| n.node == r.node) {
                n.delivered = true;
                n.result = Some(r.result);
                n.attempts = r.attempts;
                n.error = r.error;
            }
        }
        for n in nodes.iter_mut().filter(|n| !n.delivered) {
            n.result = Some(DeliveryResult::SkippedUnchanged);
        }
        if !departed.is_empty() {
            let empty = empty_file(&out_dir, service.file_type);
            let body = render(&[], &[], service.file_type, None);
            let written = empty
                .parent()
                .map(|d| {
                    std::fs::create_dir_all(d).and_then(|_| {
                        output::write_atomic(
                            d,
                            &format!("empty.{}", service.file_type.ext()),
                            &body,
                        )
                    })
                })
                .unwrap_or(Ok(()));
            if let Err(e) = written {
                tracing::warn!(service = %service.name, error = %e, "cannot write the empty file for departed nodes");
            } else {
                let batch = departed
                    .iter()
                    .map(|node| Delivery {
                        node: node.clone(),
                        file: empty.clone(),
                        file_name: format!("empty.{}", service.file_type.ext()),
                    })
                    .collect();
                let delivered = pusher.deliver(service, batch, cancel, false).await;
                report.delivery_runs_s.extend(delivered.run_seconds);
                report.departed = delivered.nodes;
            }
        }
    }

    report.phases_ms.deliver = ms_since(t);

    // Remember what was done.
    state.targets = now_count;
    if let Some(learned) = &learned {
        state.weights = (**learned).clone();
    }
    for (n, hash) in nodes.iter().zip(&hashes) {
        let entry = state.nodes.entry(n.node.clone()).or_default();
        entry.file = n.file.clone();
        entry.hash = hash.clone();
        match n.result {
            Some(r) if n.delivered => {
                entry.last_result = Some(r.as_str().into());
                if r.is_success() {
                    entry.delivered_hash = Some(hash.clone());
                    entry.delivered_at = Some(now);
                }
            }
            Some(_) => {}
            None => {
                // `push: none`: the file in out_dir is the delivery.
                entry.last_result = Some("ok".into());
                entry.delivered_hash = Some(hash.clone());
                entry.delivered_at = Some(now);
            }
        }
    }
    let told: BTreeSet<&str> = report
        .departed
        .iter()
        .filter(|d| d.result.is_success())
        .map(|d| d.node.as_str())
        .collect();
    state.settle_departed(&planned_nodes, pusher.delivers().then_some(&told), now);
    // Every other file promshard had here was removed by `emit`.
    state.files = planned;
    {
        let (out_dir, name) = (out_dir.clone(), service.name.clone());
        tokio::task::spawn_blocking(move || {
            let saved = state.save(&out_dir, &name);
            drop(lock);
            saved.map_err(|source| PassError::StateNotSaved {
                path: crate::state::state_path(&out_dir, &name),
                source,
            })
        })
        .await
        .map_err(|e| PassError::Join(e.to_string()))??;
    }

    report.nodes = nodes;
    report.sd = Some(Arc::new(SdSnapshot {
        targets: computed.targets,
        plan: computed.plan,
    }));
    report.duration_ms = started.elapsed().as_millis() as u64;
    log_summary(&report);
    Ok(report)
}

/// Warn about what affinity could not do as asked: targets without the
/// labels of the template, groups too heavy to balance.
fn log_affinity(service: &str, a: &AffinityPlan) {
    if a.ungrouped > 0 {
        tracing::warn!(service, affinity = %a.template, count = a.ungrouped, first = %a.ungrouped_samples.iter().take(5).cloned().collect::<Vec<_>>().join(" "), "targets lack a label of the affinity template: each placed by its own address");
    }
    if a.oversized_count > 0 {
        let first: Vec<String> = a
            .oversized
            .iter()
            .take(5)
            .map(|g| format!("{}={}", g.key, g.weight))
            .collect();
        tracing::warn!(service, count = a.oversized_count, first = %first.join(" "), "affinity groups heavier than a node's fair share: each placed whole, not split");
    }
}

/// The one summary line per pass.
pub fn log_summary(r: &PassReport) {
    let per_node: Vec<String> = r
        .nodes
        .iter()
        .map(|n| format!("{}={}", n.node, n.count))
        .collect();
    let attempted = r.nodes.iter().filter(|n| n.delivered).count();
    let failed = r.failed_deliveries();
    tracing::info!(
        service = %r.name,
        targets = r.targets,
        invalid = r.invalid,
        duplicates = r.duplicates,
        nodes = r.nodes.len(),
        per_node = %per_node.join(" "),
        files_changed = r.changed_files(),
        files_removed = r.removed.len(),
        deliveries = attempted,
        delivered = attempted - failed,
        delivery_failed = failed,
        departed = r.departed.len(),
        duration_ms = r.duration_ms,
        "pass done"
    );
    let p = &r.phases_ms;
    tracing::debug!(
        service = %r.name,
        script_ms = p.script,
        normalize_ms = p.normalize,
        plan_ms = p.plan,
        render_ms = p.render,
        write_ms = p.write,
        deliver_ms = p.deliver,
        "pass phases"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_answers_carry_the_shard_label_like_the_files() {
        let targets = normalize(vec![crate::target::RawGroup {
            index: 0,
            targets: (1..=20).map(|i| format!("10.0.0.{i}:9100")).collect(),
            labels: [("shard", "stale")].into_iter().collect(),
            weight: None,
        }])
        .targets;
        let nodes = [NodeSpec::new("p1:9090"), NodeSpec::new("p2:9090")];
        let plan = make_plan(
            &PlanInput {
                service: "svc",
                nodes: &nodes,
                targets: &targets,
                replicas: 1,
                ring: &Default::default(),
                file_type: FileType::Yaml,
                move_cap: None,
                affinity: None,
                shard_label: Some("shard"),
            },
            |a| Ok(default_file_name(a, crate::config::FileNaming::Stable)),
        )
        .unwrap();
        let snapshot = SdSnapshot { targets, plan };
        for node in ["p1:9090", "p2:9090"] {
            let body = snapshot.render(node).unwrap();
            let groups: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            assert!(!groups.is_empty(), "{node} has targets");
            for g in groups {
                assert_eq!(g["labels"]["shard"], node, "{g}");
            }
        }
    }

    #[test]
    fn mass_drop_rule() {
        assert!(!is_mass_drop(0, 0, 0.5));
        assert!(is_mass_drop(100, 0, 0.5));
        assert!(is_mass_drop(100, 40, 0.5));
        assert!(!is_mass_drop(100, 50, 0.5));
        assert!(!is_mass_drop(100, 0, 1.0));
    }

    #[test]
    fn delivery_needed_when_changed_failed_or_due() {
        let ok = NodeState {
            file: "f".into(),
            hash: "h".into(),
            delivered_hash: Some("h".into()),
            last_result: Some("ok".into()),
            delivered_at: Some(1000),
            departed_at: None,
        };
        let hour = Duration::from_secs(3600);
        assert!(!needs_delivery(Some(&ok), "h", hour, 1000 + 10));
        assert!(needs_delivery(Some(&ok), "other", hour, 1010));
        assert!(needs_delivery(Some(&ok), "h", hour, 1000 + 3600));
        assert!(needs_delivery(None, "h", hour, 1010));
        let failed = NodeState {
            last_result: Some("failed".into()),
            ..ok
        };
        assert!(needs_delivery(Some(&failed), "h", hour, 1010));
    }
}
