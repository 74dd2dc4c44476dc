//! The CPU part of a pass, no file touched: the script's nodes and
//! targets, normalization, learned weights, and the plan.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rhai::Map;

use super::PassError;
use super::report::{Phases, ms_since};
use crate::config::Service;
use crate::script::{CompiledScript, Sandbox, ScriptError, ScriptRun};
use crate::shard::assignment::Assignment;
use crate::shard::names::{FileNameArgs, default_file_name};
use crate::shard::placement::NodeSpec;
use crate::shard::plan::{MoveCap, Plan, PlanInput, make_plan};
use crate::shard::target::{Invalid, Target, normalize};

/// The pure part of a pass: targets and plan. Files are rendered later, one
/// node at a time (see `write`), so that a pass never holds every file at
/// once.
pub(super) struct Computed {
    pub targets: Vec<Target>,
    pub assignment: Arc<Assignment>,
    pub invalid: Vec<Invalid>,
    pub duplicates: usize,
    pub plan: Plan,
    pub phases: Phases,
    /// What placement warned about (see `report::log_placement`).
    pub placement_notes: super::PlacementNotes,
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
pub(super) struct Memory {
    /// Learned target weights (`weights: {from: series}`).
    pub learned: Option<Arc<BTreeMap<String, u32>>>,
    /// The plan in effect (`max_move_ratio`).
    pub previous: Option<Arc<Assignment>>,
}

/// Targets and plan for `nodes` (the live ones, already resolved):
/// script → normalize (learned weights applied) → plan. Blocking.
pub(super) fn compute(
    service: &Service,
    script: &CompiledScript,
    nodes: &[NodeSpec],
    sandbox: &Sandbox,
    memory: &Memory,
) -> Result<Computed, PassError> {
    let (learned, previous) = (memory.learned.as_deref(), memory.previous.as_deref());
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
        placement_notes: Default::default(),
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
    let weights = crate::shard::weights::weights_for(&addrs, learned);
    for (i, w) in open.into_iter().zip(weights) {
        targets[i].weight = w;
    }
}
