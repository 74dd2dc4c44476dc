//! A pass's side of make-before-break handover (the pure core is
//! [`crate::shard::handover`]): what it feeds the core (the files on disk,
//! the last observation) and does with its answer (the plan the files are
//! written from, the pending handovers saved in the service state), and
//! the drained nodes kept in that state.
//!
//! A pass plans over the live nodes that are not drained, then widens that
//! plan: each moving target stays in its old owner's file beside its new
//! owner's until the new owner has scraped it. The observation loop wakes a
//! pass as soon as a handover can end ([`due`]), and that pass drops the
//! target from its old owner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::handover::Settings;
use crate::observe::ServiceObservation;
use crate::shard::handover::{self, Files, Handover, Mode, Seen};
use crate::shard::names::{FileNameArgs, FileNaming, FileType, default_file_name};
use crate::shard::placement::NodeSpec;
use crate::shard::plan::{NodePlan, Plan};
use crate::shard::target::Target;
use crate::store::state::ServiceState;

/// The timeout in effect: the configured one, or three scrape intervals
/// (the longest any node reports, 60 s before any does) and 15 s.
pub fn timeout(settings: &Settings, observation: Option<&ServiceObservation>) -> Duration {
    settings.timeout.unwrap_or_else(|| {
        let interval = observation
            .into_iter()
            .flat_map(|o| o.nodes.iter())
            .filter_map(|n| n.observed.as_ref()?.scrape_interval)
            .max()
            .unwrap_or(Duration::from_secs(60));
        handover::default_timeout(interval)
    })
}

/// Per node, the targets it reported active and healthy, with the time of
/// their last scrape.
pub fn seen(observation: &ServiceObservation) -> Seen {
    observation
        .nodes
        .iter()
        .filter_map(|n| Some((n.node.clone(), n.observed.as_ref()?)))
        .map(|(node, o)| {
            let healthy = o
                .targets
                .iter()
                .filter(|t| t.health == "up")
                .filter_map(|t| {
                    let at =
                        chrono::DateTime::parse_from_rfc3339(t.last_scrape.as_deref()?).ok()?;
                    Some((
                        t.address.clone(),
                        u64::try_from(at.timestamp_millis()).ok()?,
                    ))
                });
            (node, healthy.collect())
        })
        .collect()
}

/// Whether a pass now would end a handover of `pending`.
pub fn due(pending: &[Handover], observation: &ServiceObservation, timeout: Duration) -> bool {
    let now = now_ms();
    handover::any_due(pending, &seen(observation), now, timeout.as_millis() as u64)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a drained node stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainState {
    pub node: String,
    /// `draining` while it still holds targets, then `drained`.
    pub state: &'static str,
    /// Targets it still holds until their new owners confirm.
    pub targets_left: usize,
    /// Whether the node is live (a dead drained node holds nothing).
    pub live: bool,
}

/// One handover that ended in a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ended {
    pub target: String,
    pub from: String,
    pub to: String,
    /// How long both nodes held the target.
    pub seconds: f64,
    pub timed_out: bool,
}

/// What a pass did with handovers, in its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandoverReport {
    pub mode: Mode,
    pub timeout_s: f64,
    /// Handovers waiting for their new owner (old owner → new owner).
    pub pending: usize,
    /// The first of them (in JSON each with `started`, RFC 3339).
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "pending_json")]
    pub pending_samples: Vec<Handover>,
    /// Handovers that ended in this pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<Ended>,
    /// Drained nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<DrainState>,
    /// Every pending record (new owners restoring coverage included), for
    /// [`due`].
    #[serde(skip)]
    pub records: Vec<Handover>,
}

/// Pending handovers as the API shows them: the time in RFC 3339 like
/// every other time it answers (the state file keeps milliseconds).
fn pending_json<S: serde::Serializer>(list: &[Handover], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Pending<'a> {
        target: &'a str,
        from: Option<&'a str>,
        to: &'a str,
        started: String,
    }
    s.collect_seq(list.iter().map(|h| Pending {
        target: &h.target,
        from: h.from.as_deref(),
        to: &h.to,
        started: crate::shard::time::rfc3339_ms(h.started_ms),
    }))
}

/// How many pending handovers a report lists.
const SAMPLES: usize = 20;

/// What a pass hands to [`apply`].
pub struct Apply<'a> {
    pub settings: Settings,
    /// The service directory (the files as they are).
    pub dir: &'a Path,
    pub file_naming: FileNaming,
    /// Live nodes, drained ones included.
    pub live: &'a BTreeSet<String>,
    pub observation: Option<&'a ServiceObservation>,
    pub now_ms: u64,
}

/// The nodes that are not drained.
pub fn undrained(nodes: &[NodeSpec], drained: &BTreeSet<String>) -> Vec<NodeSpec> {
    nodes
        .iter()
        .filter(|n| !drained.contains(&n.addr))
        .cloned()
        .collect()
}

/// The nodes a pass leaves out of its plan: those drained in the state,
/// and in a dry run those `plan --drain` names.
pub fn drained_for(
    out_dir: &Path,
    service: &crate::config::Service,
    input: &crate::pass::PassInput<'_>,
    options: crate::pass::PassOptions,
) -> BTreeSet<String> {
    let mut drained = ServiceState::load(out_dir, &service.name).drained;
    if options.dry_run {
        drained.extend(input.preview_drained.iter().cloned());
    }
    drained
}

/// Lines for `plan` and `once`: pending handovers and drained nodes.
pub fn describe(r: &HandoverReport) -> Vec<String> {
    let mut lines = Vec::new();
    if r.pending > 0 {
        lines.push(format!(
            "  handovers pending: {} (old node keeps the target until the new one has scraped it, at most {:.0}s)",
            r.pending, r.timeout_s
        ));
        for h in &r.pending_samples {
            let from = h.from.as_deref().unwrap_or("-");
            lines.push(format!("    {}: {from} -> {}", h.target, h.to));
        }
    }
    for d in &r.drained {
        lines.push(format!(
            "  drained {}: {}, {} target(s) left{}",
            d.node,
            d.state,
            d.targets_left,
            if d.live { "" } else { " (not live)" }
        ));
    }
    lines
}

/// The pass's hook: [`apply`] with `make_before_break` or while a node is
/// drained; else the plan as it is (no report).
pub fn in_pass(
    service: &crate::config::Service,
    plan: &mut Plan,
    targets: &[Target],
    state: &mut ServiceState,
    a: &Apply<'_>,
) -> Option<HandoverReport> {
    let active = service.handover.mode == Mode::MakeBeforeBreak || !state.drained.is_empty();
    if !active {
        state.handovers.clear();
        return None;
    }
    let report = apply(plan, targets, state, a);
    if report.pending > 0 || !report.ended.is_empty() {
        tracing::info!(
            service = %service.name,
            pending = report.pending,
            ended = report.ended.len(),
            timed_out = report.ended.iter().filter(|e| e.timed_out).count(),
            "handovers"
        );
    }
    Some(report)
}

/// Widen `plan` (made over the live nodes that are not drained) with what
/// each node must keep while its targets move, give each live drained node
/// its file, and save the pending handovers in `state`.
pub fn apply(
    plan: &mut Plan,
    targets: &[Target],
    state: &mut ServiceState,
    a: &Apply<'_>,
) -> HandoverReport {
    let timeout = timeout(&a.settings, a.observation);
    let wanted = plan_files(plan, targets);
    let outcome = match a.settings.mode {
        Mode::MakeBeforeBreak => {
            let files = current_files(a.dir, state, plan.file_type, a.live);
            let seen = a.observation.map(seen).unwrap_or_default();
            handover::step(&handover::Step {
                files: &files,
                plan: &wanted,
                live: a.live,
                pending: &state.handovers,
                seen: &seen,
                now_ms: a.now_ms,
                timeout_ms: timeout.as_millis() as u64,
            })
        }
        Mode::Immediate => handover::Outcome {
            files: wanted,
            ..Default::default()
        },
    };
    let mut by_addr: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        by_addr.entry(&t.addr).or_default().push(i as u32);
    }
    for (node, addrs) in &outcome.files {
        let indices = addrs.iter().flat_map(|a| by_addr.get(a.as_str())).flatten();
        let n = node_plan(plan, state, node, a.file_naming);
        n.targets = indices
            .copied()
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        n.count = n.targets.len();
    }
    for node in state.drained.iter().filter(|n| a.live.contains(*n)) {
        node_plan(plan, state, node, a.file_naming);
    }
    state.handovers = outcome.pending;
    report(plan, state, &outcome.finished, a, timeout)
}

fn report(
    plan: &Plan,
    state: &ServiceState,
    finished: &[handover::Finished],
    a: &Apply<'_>,
    timeout: Duration,
) -> HandoverReport {
    let moves: Vec<&Handover> = state
        .handovers
        .iter()
        .filter(|h| h.from.is_some())
        .collect();
    let drained = state
        .drained
        .iter()
        .map(|node| {
            let left = plan
                .nodes
                .iter()
                .find(|n| &n.node == node)
                .map_or(0, |n| n.count);
            DrainState {
                node: node.clone(),
                state: if left > 0 { "draining" } else { "drained" },
                targets_left: left,
                live: a.live.contains(node),
            }
        })
        .collect();
    HandoverReport {
        mode: a.settings.mode,
        timeout_s: timeout.as_secs_f64(),
        pending: moves.len(),
        pending_samples: moves.into_iter().take(SAMPLES).cloned().collect(),
        ended: finished
            .iter()
            .map(|f| Ended {
                target: f.handover.target.clone(),
                from: f.handover.from.clone().unwrap_or_default(),
                to: f.handover.to.clone(),
                seconds: f.overlap_ms as f64 / 1000.0,
                timed_out: f.timed_out,
            })
            .collect(),
        drained,
        records: state.handovers.clone(),
    }
}

/// `node`'s entry in `plan`, added (in node order, empty) for a node the
/// plan left out: a drained node keeps its file.
fn node_plan<'p>(
    plan: &'p mut Plan,
    state: &ServiceState,
    node: &str,
    naming: FileNaming,
) -> &'p mut NodePlan {
    let at = match plan.nodes.binary_search_by(|n| n.node.as_str().cmp(node)) {
        Ok(i) => i,
        Err(i) => {
            let file = state
                .nodes
                .get(node)
                .map(|s| s.file.clone())
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| {
                    let args = FileNameArgs {
                        service: plan.service.clone(),
                        node: node.to_string(),
                        index: i + 1,
                        total: plan.nodes.len() + 1,
                        count: 0,
                        file_type: plan.file_type,
                    };
                    default_file_name(&args, naming)
                });
            plan.nodes.insert(
                i,
                NodePlan {
                    node: node.to_string(),
                    index: i + 1,
                    file,
                    targets: Vec::new(),
                    count: 0,
                    groups: None,
                },
            );
            i
        }
    };
    &mut plan.nodes[at]
}

/// The plan as node → addresses.
fn plan_files(plan: &Plan, targets: &[Target]) -> Files {
    plan.nodes
        .iter()
        .map(|n| {
            let addrs = n
                .targets
                .iter()
                .map(|&i| targets[i as usize].addr.to_string());
            (n.node.clone(), addrs.collect())
        })
        .collect()
}

/// What each live node's file holds now, read from the service directory
/// (the files are the truth after a crash or restart). An unreadable file
/// counts as empty: its node then gets no overlap.
fn current_files(
    dir: &Path,
    state: &ServiceState,
    file_type: FileType,
    live: &BTreeSet<String>,
) -> Files {
    state
        .nodes
        .iter()
        .filter(|(node, ns)| {
            live.contains(*node) && ns.departed_at.is_none() && !ns.file.is_empty()
        })
        .filter_map(|(node, ns)| {
            let bytes = std::fs::read(dir.join(&ns.file)).ok()?;
            let addrs = crate::shard::render::parse_addresses(&bytes, file_type).ok()?;
            Some((node.clone(), addrs))
        })
        .collect()
}

/// Drain (`drain: true`) or undrain `node` in `service`'s state, under the
/// service's lock (a pass in progress finishes first). Returns whether it
/// changed anything.
/// `ha:`: make the saved drained set of `service` the cluster's (`drained`,
/// from etcd), for the nodes this service has (`known`, or in its state).
/// Whether it changed.
pub fn sync_drained(
    out_dir: &Path,
    service: &str,
    drained: &BTreeSet<String>,
    known: &BTreeSet<String>,
) -> std::io::Result<bool> {
    let _lock = ServiceState::lock(out_dir, service)?;
    let mut state = ServiceState::load(out_dir, service);
    let want: BTreeSet<String> = drained
        .iter()
        .filter(|n| known.contains(*n) || state.nodes.contains_key(*n))
        .cloned()
        .collect();
    if want == state.drained {
        return Ok(false);
    }
    state.drained = want;
    state.save(out_dir, service)?;
    Ok(true)
}

pub fn set_drained(
    out_dir: &Path,
    service: &str,
    node: &str,
    drain: bool,
) -> std::io::Result<bool> {
    let _lock = ServiceState::lock(out_dir, service)?;
    let mut state = ServiceState::load(out_dir, service);
    let changed = if drain {
        state.drained.insert(node.to_string())
    } else {
        state.drained.remove(node)
    };
    if changed {
        state.save(out_dir, service)?;
    }
    Ok(changed)
}
