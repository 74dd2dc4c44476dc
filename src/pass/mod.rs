//! One dispatch pass of one service, as a pipeline of named steps:
//!
//! 1. **compute** (`compute`): the script's targets, normalized, learned
//!    weights applied, placed on the live nodes: a plan. CPU only.
//! 2. **guard** (`write::guard`): the service's lock, its state, a
//!    directory holding only files promshard wrote, and the mass-drop rule.
//! 3. **write** (`write::write_files`): each node's file rendered, written
//!    when its content changed, stale files removed.
//! 4. **rules** (`crate::rules`): with `rules:`, the rule files checked
//!    and brought to every planned node (a dry run checks only).
//! 5. **deliver** (`deliver`): changed files pushed; nodes that left get
//!    an empty one.
//! 6. **record**: the state saved, the report logged as one summary line.
//!
//! The nodes arrive resolved (script or config, then health): a pass never
//! probes. CPU work and file I/O run on the blocking pool, so the runtime
//! never stalls. Any failure before the write step leaves every file as it
//! was.

mod compute;
mod deliver;
mod error;
pub mod handover;
mod report;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Service};
use crate::push::Pusher;
use crate::script::{CompiledScript, Sandbox};
use crate::shard::assignment::Assignment;
use crate::shard::placement::NodeSpec;
use crate::store::state::{LastResult, ServiceState, state_path, unix_now};

pub use compute::{script_ctx, script_nodes};
pub use error::PassError;
pub use report::{NodeReport, PassReport, Phases, PlacementNotes, SdSnapshot, log_summary};

use compute::{Computed, Memory};
use write::{Emitted, Guarded};

/// Flags of a pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOptions {
    /// Compute and report, write and deliver nothing.
    pub dry_run: bool,
    /// Override the mass-drop guard.
    pub force: bool,
}

/// Everything a pass needs.
pub struct PassInput<'a> {
    pub config: &'a Config,
    pub service: &'a Service,
    pub script: &'a CompiledScript,
    /// The live nodes: from the config or the script ([`resolve_nodes`]),
    /// then health checks.
    pub nodes: &'a [NodeSpec],
    pub sandbox: &'a Sandbox,
    /// Target weights learned from the servers (`weights: {from: series}`):
    /// address → series. `None` reads them from the service state.
    pub learned_weights: Option<Arc<BTreeMap<String, u32>>>,
    /// The plan in effect, for `max_move_ratio` (`None`: no cap this pass).
    pub previous: Option<Arc<Assignment>>,
    /// The last observation, which confirms handovers (`None`: none yet).
    pub observation: Option<Arc<crate::observe::ServiceObservation>>,
    /// Nodes treated as drained in this dry run only (`plan --drain`).
    pub preview_drained: Vec<String>,
    /// With `ha:`, the leader's fence: confirmed right before delivering,
    /// and carried by every delivery.
    pub fence: Option<Fence>,
    /// What the previous pass warned about placement, so the same
    /// warning is not repeated every pass (`None`: warn).
    pub placement_notes: Option<PlacementNotes>,
}

/// With `ha:`, a leader's right to deliver: its epoch, and a check (asked
/// of etcd right before each delivery) that it still holds it.
#[derive(Clone)]
pub struct Fence {
    pub epoch: u64,
    pub confirm: Arc<dyn Fn() -> ConfirmFuture + Send + Sync>,
}

/// The answer of [`Fence::confirm`]: `Err` says why the leader may not deliver.
pub type ConfirmFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PassError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PassError::Join(e.to_string()))
}

/// The nodes a script supplies for `service` (see [`script_nodes`]), or
/// `None` when it uses its static `nodes:`. `node_script` is the daemon's
/// last good compiled `node_script`; `None` compiles it afresh.
pub async fn resolve_nodes(
    service: &Service,
    script: &CompiledScript,
    node_script: Option<CompiledScript>,
    sandbox: &Sandbox,
) -> Result<Option<Vec<NodeSpec>>, PassError> {
    let (service, script, sandbox) = (Arc::new(service.clone()), script.clone(), sandbox.clone());
    let name = service.name.clone();
    let nodes = blocking(move || {
        script_nodes(&service, &script, node_script.as_ref(), &sandbox).transpose()
    })
    .await??;
    if let Some(n) = &nodes {
        tracing::debug!(service = %name, nodes = n.len(), "nodes from script");
    }
    Ok(nodes)
}

/// Whether dropping from `previous` to `now` targets must be refused.
pub fn is_mass_drop(previous: usize, now: usize, max_drop_ratio: f64) -> bool {
    if previous == 0 || max_drop_ratio >= 1.0 {
        return false;
    }
    now == 0 || (now as f64) < (1.0 - max_drop_ratio) * previous as f64
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
    let write = !options.dry_run;
    let learned = learned_weights(&input, &out_dir);
    // Drained nodes stay live but leave the ring (see `handover`).
    let drained = handover::drained_for(&out_dir, service, &input, options);
    let mut computed = compute_step(&input, learned.clone(), &drained).await?;
    let planned = computed.plan.files();
    let mut guarded = {
        let (out_dir, name, planned) = (out_dir.clone(), service.name.clone(), planned.clone());
        blocking(move || write::guard(&out_dir, &name, &planned, write)).await??
    };
    check_mass_drop(
        service,
        guarded.state.targets,
        computed.targets.len(),
        options,
    )?;
    guarded.state.drained.extend(drained);
    let handover = handover_step(&input, &out_dir, &mut computed, &mut guarded.state);
    let names = computed.plan.files();
    computed.placement_notes = report::log_placement(&input, &computed);
    let (computed, emitted) = write_step(
        &out_dir,
        service,
        computed,
        &mut guarded.state,
        &names,
        write,
    )
    .await?;
    let mut report = PassReport::assemble(
        service,
        &computed,
        &emitted,
        &guarded.state,
        options.dry_run,
    );
    report.handover = handover;
    report.rules = rules_step(
        &input,
        &out_dir,
        &report,
        &mut guarded.state,
        options,
        cancel,
    )
    .await;
    if options.dry_run {
        report.sd = Some(Arc::new(SdSnapshot::new(computed.targets, computed.plan)));
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    report.removed = emitted.removed;
    report.phases_ms.write = emitted.write_ms;
    let (t, now) = (Instant::now(), unix_now());
    let fence = input.fence.as_ref();
    deliver::deliver(
        service,
        &out_dir,
        &guarded.state,
        &mut report,
        fence,
        cancel,
        now,
    )
    .await;
    report.phases_ms.deliver = report::ms_since(t);
    record(&out_dir, service, &mut report, learned, guarded, names, now).await?;
    report.sd = Some(Arc::new(SdSnapshot::new(computed.targets, computed.plan)));
    report.duration_ms = started.elapsed().as_millis() as u64;
    log_summary(&report);
    Ok(report)
}

/// Keep moving targets on their old node until the new one scrapes them,
/// and empty drained nodes (see `handover`).
fn handover_step(
    input: &PassInput<'_>,
    out_dir: &Path,
    computed: &mut Computed,
    state: &mut ServiceState,
) -> Option<handover::HandoverReport> {
    let service = input.service;
    let live: BTreeSet<String> = input.nodes.iter().map(|n| n.addr.clone()).collect();
    handover::in_pass(
        service,
        &mut computed.plan,
        &computed.targets,
        state,
        &handover::Apply {
            settings: service.handover,
            dir: &out_dir.join(&service.name),
            file_naming: service.file_naming,
            live: &live,
            observation: input.observation.as_deref(),
            now_ms: handover::now_ms(),
        },
    )
}

/// Learned weights: the daemon's, or (once, plan) those the last pass
/// saved, so that every command places alike.
fn learned_weights(input: &PassInput<'_>, out_dir: &Path) -> Option<Arc<BTreeMap<String, u32>>> {
    let service = input.service;
    service.weights.map(|_| {
        input
            .learned_weights
            .clone()
            .unwrap_or_else(|| Arc::new(ServiceState::load(out_dir, &service.name).weights))
    })
}

/// Step 1: targets and plan, on the blocking pool.
async fn compute_step(
    input: &PassInput<'_>,
    learned: Option<Arc<BTreeMap<String, u32>>>,
    drained: &BTreeSet<String>,
) -> Result<Computed, PassError> {
    let memory = Memory {
        learned,
        previous: input.previous.clone(),
    };
    let (service, script, nodes, sandbox) = (
        Arc::new(input.service.clone()),
        input.script.clone(),
        handover::undrained(input.nodes, drained),
        input.sandbox.clone(),
    );
    blocking(move || compute::compute(&service, &script, &nodes, &sandbox, &memory)).await?
}

/// Step 2's rule: refuse to drop most targets at once (a broken CMDB).
fn check_mass_drop(
    service: &Service,
    previous: usize,
    now: usize,
    options: PassOptions,
) -> Result<(), PassError> {
    if !options.force && is_mass_drop(previous, now, service.max_drop_ratio) {
        return Err(PassError::MassDrop {
            previous,
            now,
            max_drop_ratio: service.max_drop_ratio,
        });
    }
    Ok(())
}

/// Step 3: record the planned names, then render and write the files.
async fn write_step(
    out_dir: &Path,
    service: &Service,
    computed: Computed,
    state: &mut ServiceState,
    planned: &BTreeMap<String, String>,
    write: bool,
) -> Result<(Computed, Emitted), PassError> {
    if write {
        let (out_dir, name, planned, mut saved) = (
            out_dir.to_path_buf(),
            service.name.clone(),
            planned.clone(),
            std::mem::take(state),
        );
        *state = blocking(move || {
            write::record_names(&out_dir, &name, &mut saved, &planned).map(|()| saved)
        })
        .await??;
    }
    let old: BTreeMap<String, String> = state
        .nodes
        .iter()
        .map(|(node, ns)| (node.clone(), ns.file.clone()))
        .collect();
    let owned: BTreeMap<String, String> = state
        .owned()
        .into_iter()
        .map(|(f, n)| (f.to_string(), n.to_string()))
        .collect();
    let dir = out_dir.join(&service.name);
    let (computed, emitted) = blocking(move || {
        let e = write::write_files(&dir, &computed.targets, &computed.plan, &old, &owned, write);
        (computed, e)
    })
    .await?;
    Ok((computed, emitted?))
}

/// Step 4: the rule files of every planned node (`None` without `rules:`).
/// Under `ha:` the lease is confirmed first, as for the sd files.
async fn rules_step(
    input: &PassInput<'_>,
    out_dir: &Path,
    report: &PassReport,
    state: &mut ServiceState,
    options: PassOptions,
    cancel: &CancellationToken,
) -> Option<crate::rules::RulesReport> {
    let service = input.service;
    service.rules.as_ref()?;
    let lease = match &input.fence {
        Some(f) if !options.dry_run => Some((f.confirm)().await.map(|()| f.epoch)),
        _ => None,
    };
    let planned: Vec<String> = report.nodes.iter().map(|n| n.node.clone()).collect();
    let (rules, dry_run) = (&mut state.rules, options.dry_run);
    crate::rules::step(service, out_dir, &planned, rules, dry_run, lease, cancel).await
}

/// Step 6: remember what was done (and tell the report when each node
/// last had its file delivered), and release the lock.
async fn record(
    out_dir: &Path,
    service: &Service,
    report: &mut PassReport,
    learned: Option<Arc<BTreeMap<String, u32>>>,
    guarded: Guarded,
    planned: BTreeMap<String, String>,
    now: u64,
) -> Result<(), PassError> {
    let Guarded { lock, mut state } = guarded;
    state.targets = report.targets;
    if let Some(learned) = &learned {
        state.weights = (**learned).clone();
    }
    for n in &mut report.nodes {
        let entry = state.nodes.entry(n.node.clone()).or_default();
        entry.file = n.file.clone();
        entry.hash = n.hash.clone();
        // No result: `push: none`, the file in out_dir is the delivery.
        let result = match n.result {
            Some(r) if n.delivered => Some(LastResult::from(r)),
            Some(_) => None,
            None => Some(LastResult::Ok),
        };
        if let Some(r) = result {
            entry.last_result = Some(r);
            if r.succeeded() {
                entry.delivered_hash = Some(n.hash.clone());
                entry.delivered_at = Some(now);
            }
        }
        n.delivered_at = entry.delivered_at;
    }
    let told: BTreeSet<&str> = report
        .departed
        .iter()
        .filter(|d| d.result.is_success())
        .map(|d| d.node.as_str())
        .collect();
    let planned_nodes: BTreeSet<String> = report.nodes.iter().map(|n| n.node.clone()).collect();
    let delivers = Pusher::for_service(service).delivers();
    state.settle_departed(&planned_nodes, delivers.then_some(&told), now);
    // Every other file promshard had here was removed by the write step.
    state.files = planned;
    let (out_dir, name) = (out_dir.to_path_buf(), service.name.clone());
    blocking(move || {
        let saved = state.save(&out_dir, &name);
        drop(lock);
        saved.map_err(|source| PassError::StateNotSaved {
            path: state_path(&out_dir, &name),
            source,
        })
    })
    .await?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::deliver::needs_delivery;
    use super::report::SdSnapshot;
    use super::*;
    use crate::shard::names::{FileType, default_file_name};
    use crate::shard::plan::{PlanInput, make_plan};
    use crate::shard::target::normalize;
    use crate::store::state::{LastResult, NodeState};

    #[test]
    fn sd_answers_carry_the_shard_label_like_the_files() {
        let targets = normalize(vec![crate::shard::target::RawGroup {
            index: 0,
            targets: (1..=20).map(|i| format!("10.0.0.{i}:9100")).collect(),
            labels: [("shard", "stale")].into_iter().collect(),
            weight: None,
        }])
        .targets;
        let nodes = [NodeSpec::new("p1:9090"), NodeSpec::new("p2:9090")];
        let plan = make_plan(
            &PlanInput {
                file_type: FileType::Yaml,
                shard_label: Some("shard"),
                ..PlanInput::new("svc", &nodes, &targets)
            },
            |a| {
                Ok(default_file_name(
                    a,
                    crate::shard::names::FileNaming::Stable,
                ))
            },
        )
        .unwrap();
        let snapshot = SdSnapshot::new(targets, plan);
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
            last_result: Some(LastResult::Ok),
            delivered_at: Some(1000),
            departed_at: None,
        };
        let hour = Duration::from_secs(3600);
        assert!(!needs_delivery(Some(&ok), "h", hour, 1000 + 10));
        assert!(needs_delivery(Some(&ok), "other", hour, 1010));
        assert!(needs_delivery(Some(&ok), "h", hour, 1000 + 3600));
        assert!(needs_delivery(None, "h", hour, 1010));
        let failed = NodeState {
            last_result: Some(LastResult::Failed),
            ..ok
        };
        assert!(needs_delivery(Some(&failed), "h", hour, 1010));
    }
}
