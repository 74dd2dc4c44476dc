//! What a pass reports: per node and for the service, served by the API,
//! printed by `once --json`, and logged as one summary line.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Service;
use crate::push::{DeliveryResult, NodeDelivery};
use crate::rules::RulesReport;
use crate::shard::assignment::Assignment;
use crate::shard::names::FileType;
use crate::shard::plan::{AffinityPlan, Plan};
use crate::shard::render::render;
use crate::shard::target::{Invalid, Target};
use crate::store::state::ServiceState;

use super::compute::Computed;
use super::write::Emitted;

/// How many invalid targets a report lists in full.
const INVALID_SAMPLES: usize = 20;

/// What happened to one node in a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub file: String,
    /// Content hash of the node's file.
    #[serde(skip)]
    pub hash: String,
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
    /// When the node last had its file delivered, in this pass or an
    /// earlier one (Unix seconds; RFC 3339 in JSON; not in dry runs).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::shard::time::ser_opt"
    )]
    pub delivered_at: Option<u64>,
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
    pub rules: Option<RulesReport>,
    /// Target → nodes, for `where`, the audit and the status page.
    #[serde(skip)]
    pub assignment: Arc<Assignment>,
    /// What each node holds after this pass (not in dry runs), for `/sd`.
    #[serde(skip)]
    pub sd: Option<Arc<SdSnapshot>>,
    /// Moving targets and drained nodes (with `handover: make_before_break`
    /// or a drained node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover: Option<super::handover::HandoverReport>,
    /// Hash of every node's file name and content: equal hashes, same
    /// assignment (`ha:` standbys compare it with the leader's).
    pub plan_hash: String,
    /// With `ha:`: the epoch the pass delivered with (none in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// What placement could not do as asked, as last warned about.
    #[serde(skip)]
    pub placement_notes: PlacementNotes,
}

/// Fingerprints of what a pass warns about in placement (oversized
/// targets, ungrouped targets, oversized groups; 0: none), so that a
/// daemon warns once per change rather than on every pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlacementNotes {
    oversized: u64,
    ungrouped: u64,
    oversized_groups: u64,
}

/// 0 for nothing, else a hash of the items.
fn fingerprint<T: std::hash::Hash>(items: &[T]) -> u64 {
    use std::hash::{Hash, Hasher};
    if items.is_empty() {
        return 0;
    }
    let mut h = twox_hash::XxHash64::with_seed(0);
    items.hash(&mut h);
    h.finish().max(1)
}

/// Call `log` with WARN when `now` differs from `before` (the first pass
/// of a process has no `before`), with DEBUG when it is the same, not at
/// all when there is nothing (`now` is 0).
fn once_per_change(before: Option<u64>, now: u64, log: impl Fn(tracing::Level)) {
    match (before, now) {
        (_, 0) => {}
        (Some(b), n) if b == n => log(tracing::Level::DEBUG),
        _ => log(tracing::Level::WARN),
    }
}

impl PassReport {
    /// The handovers this pass left pending (none without handover).
    pub fn pending_handovers(&self) -> &[crate::shard::handover::Handover] {
        self.handover
            .as_ref()
            .map(|h| h.records.as_slice())
            .unwrap_or_default()
    }
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
    pub fn new(targets: Vec<Target>, plan: Plan) -> Self {
        Self { targets, plan }
    }

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

pub(super) fn ms_since(t: Instant) -> f64 {
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

impl PassReport {
    /// The report of a pass that computed `computed` and wrote `emitted`
    /// (delivery fields empty; the deliver step fills them).
    pub(super) fn assemble(
        service: &Service,
        computed: &Computed,
        emitted: &Emitted,
        state: &ServiceState,
        dry_run: bool,
    ) -> PassReport {
        let oversized = oversized_targets(&computed.targets, &computed.plan);
        let nodes = node_reports(computed, emitted, state, dry_run);
        let plan_hash = plan_hash(&nodes);
        let mut phases_ms = computed.phases.clone();
        phases_ms.render = emitted.render_ms;
        PassReport {
            name: service.name.clone(),
            targets: computed.targets.len(),
            invalid: computed.invalid.len(),
            invalid_samples: computed
                .invalid
                .iter()
                .take(INVALID_SAMPLES)
                .cloned()
                .collect(),
            duplicates: computed.duplicates,
            replicas: computed.plan.replicas,
            nodes,
            departed: Vec::new(),
            removed: Vec::new(),
            dry_run,
            duration_ms: 0,
            phases_ms,
            delivery_runs_s: Vec::new(),
            oversized: oversized
                .iter()
                .take(20)
                .map(|t| t.addr.to_string())
                .collect(),
            oversized_count: oversized.len(),
            deferred_moves: computed.plan.deferred_moves,
            affinity: computed.plan.affinity.clone(),
            rules: None,
            assignment: Arc::clone(&computed.assignment),
            sd: None,
            handover: None,
            plan_hash,
            epoch: None,
            placement_notes: computed.placement_notes,
        }
    }
}

/// The hash of a plan's files: every node, its file name and content hash.
fn plan_hash(nodes: &[NodeReport]) -> String {
    let text: String = nodes
        .iter()
        .map(|n| format!("{}\t{}\t{}\n", n.node, n.file, n.hash))
        .collect();
    crate::shard::render::content_hash(text.as_bytes())
}

/// One report per planned node. In a dry run a node counts as changed when
/// its content or name differs from what the state says it has.
fn node_reports(
    computed: &Computed,
    emitted: &Emitted,
    state: &ServiceState,
    dry_run: bool,
) -> Vec<NodeReport> {
    let weighted = computed.targets.iter().any(|t| t.weight != 1);
    computed
        .plan
        .nodes
        .iter()
        .zip(&emitted.files)
        .map(|(n, f)| NodeReport {
            node: n.node.clone(),
            file: n.file.clone(),
            hash: f.hash.clone(),
            count: n.count,
            changed: if dry_run {
                state
                    .nodes
                    .get(&n.node)
                    .is_none_or(|s| s.hash != f.hash || s.file != n.file)
            } else {
                f.written
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
            delivered_at: None,
            error: None,
        })
        .collect()
}

/// Log what placement could not do as asked (WARN once per change; see
/// [`PlacementNotes`]), and the invalid targets.
pub(super) fn log_placement(input: &super::PassInput<'_>, computed: &Computed) -> PlacementNotes {
    let (service, before) = (input.service.name.as_str(), input.placement_notes);
    for bad in &computed.invalid {
        tracing::warn!(service, group = bad.group, value = %bad.value, reason = %bad.reason, "invalid target skipped");
    }
    let plan = &computed.plan;
    if plan.deferred_moves > 0 {
        tracing::info!(
            service,
            deferred = plan.deferred_moves,
            "moves held back by max_move_ratio; a later pass continues the rebalance"
        );
    }
    let oversized = oversized_targets(&computed.targets, plan);
    let addrs: Vec<&str> = oversized.iter().map(|t| &*t.addr).collect();
    let mut notes = PlacementNotes {
        oversized: fingerprint(&addrs),
        ..PlacementNotes::default()
    };
    let first = addrs.iter().take(5).copied().collect::<Vec<_>>().join(" ");
    once_per_change(before.map(|b| b.oversized), notes.oversized, |level| {
        let count = oversized.len();
        let msg = "targets heavier than a node's fair share: each placed whole on the node where it fits best";
        if level == tracing::Level::WARN {
            tracing::warn!(service, count, first = %first, "{msg}");
        } else {
            tracing::debug!(service, count, first = %first, "{msg}");
        }
    });
    if before.is_some_and(|b| b.oversized != 0) && notes.oversized == 0 {
        tracing::info!(
            service,
            "no target is heavier than a node's fair share any more"
        );
    }
    if let Some(a) = &plan.affinity {
        log_affinity(service, a, before, &mut notes);
    }
    notes
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Targets heavier than a node's fair share of the total weight.
fn oversized_targets<'a>(targets: &'a [Target], plan: &Plan) -> Vec<&'a Target> {
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    crate::shard::plan::oversized(&weights, plan.replicas, plan.nodes.len())
        .into_iter()
        .map(|i| &targets[i])
        .collect()
}

/// Warn about what affinity could not do as asked: targets without the
/// labels of the template, groups too heavy to balance.
fn log_affinity(
    service: &str,
    a: &AffinityPlan,
    before: Option<PlacementNotes>,
    notes: &mut PlacementNotes,
) {
    let count = a.ungrouped;
    notes.ungrouped = fingerprint(&[(count, &a.ungrouped_samples)][..usize::from(count > 0)]);
    let first = a
        .ungrouped_samples
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    once_per_change(before.map(|b| b.ungrouped), notes.ungrouped, |level| {
        let msg = "targets lack a label of the affinity template: each placed by its own address";
        if level == tracing::Level::WARN {
            tracing::warn!(service, affinity = %a.template, count, first = %first, "{msg}");
        } else {
            tracing::debug!(service, affinity = %a.template, count, first = %first, "{msg}");
        }
    });
    let groups: Vec<(&str, u64)> = a.oversized.iter().map(|g| (&*g.key, g.weight)).collect();
    notes.oversized_groups =
        fingerprint(&[(a.oversized_count, &groups)][..usize::from(a.oversized_count > 0)]);
    let first: Vec<String> = groups
        .iter()
        .take(5)
        .map(|(k, w)| format!("{k}={w}"))
        .collect();
    once_per_change(
        before.map(|b| b.oversized_groups),
        notes.oversized_groups,
        |level| {
            let (count, first) = (a.oversized_count, first.join(" "));
            let msg =
                "affinity groups heavier than a node's fair share: each placed whole, not split";
            if level == tracing::Level::WARN {
                tracing::warn!(service, count, first = %first, "{msg}");
            } else {
                tracing::debug!(service, count, first = %first, "{msg}");
            }
        },
    );
}

/// The one summary line per pass.
pub fn log_summary(r: &PassReport) {
    let per_node = crate::logging::Object::new(r.nodes.iter().map(|n| (n.node.clone(), n.count)));
    let attempted = r.nodes.iter().filter(|n| n.delivered).count();
    let failed = r.failed_deliveries();
    tracing::info!(
        service = %r.name,
        targets = r.targets,
        invalid = r.invalid,
        duplicates = r.duplicates,
        nodes = r.nodes.len(),
        per_node = ?per_node,
        files_changed = r.changed_files(),
        files_removed = r.removed.len(),
        deliveries = attempted,
        delivered = attempted - failed,
        delivery_failed = failed,
        departed = r.departed.len(),
        epoch = r.epoch,
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

    fn level(before: Option<u64>, now: u64) -> Option<tracing::Level> {
        let seen = std::cell::Cell::new(None);
        once_per_change(before, now, |l| seen.set(Some(l)));
        seen.get()
    }

    #[test]
    fn placement_warnings_come_once_per_change() {
        let (a, b) = (fingerprint(&["t1:1"]), fingerprint(&["t1:1", "t2:1"]));
        assert_eq!(fingerprint::<&str>(&[]), 0);
        assert_ne!(a, b);
        assert_eq!(level(None, a), Some(tracing::Level::WARN), "first pass");
        assert_eq!(level(Some(a), a), Some(tracing::Level::DEBUG), "same set");
        assert_eq!(level(Some(a), b), Some(tracing::Level::WARN), "changed set");
        assert_eq!(level(Some(a), 0), None, "nothing to say");
    }
}
