//! The loop back from reality: what each Prometheus really scrapes.
//!
//! promshard decides who scrapes what; this module checks it. For a service
//! with `observe:`, the daemon asks every node of the plan in effect, every
//! `interval`, for the job's active targets (health, last scrape, last
//! error) and the series each costs ([`prom`]), then compares that with the
//! plan ([`audit`]): every target `ok`, `missing`, `extra`, `duplicate`,
//! `down`, `unknown` or `pending`. The plan itself is kept as a compact
//! lookup table ([`Assignment`]) built by every pass, which also answers
//! `where` without any observation.
//!
//! Observation never blocks a pass: it runs beside the runner, on the
//! blocking pool, one request chain per node, all nodes at once, each bounded
//! by `observe.timeout`. A node that does not answer is reported (`unknown`
//! for its targets), never taken as empty.

pub mod prom;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::shard::assignment::Assignment;
pub use crate::shard::audit::{Audit, TargetState};
pub use prom::{ActiveTarget, NodeObservation};

use crate::config::Observe;
use crate::shard::audit;

/// One node's answer in an observation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeResult {
    pub node: String,
    /// Unix seconds when the answer came.
    pub at: u64,
    /// The answer; `None` when the node did not answer (see `error`).
    #[serde(skip)]
    pub observed: Option<NodeObservation>,
    /// Series of the job's targets on this node (summed samples).
    pub series: Option<u64>,
    /// Series in the node's head block (all jobs).
    pub head_series: Option<u64>,
    /// Its file changed less than the grace ago: targets not active yet
    /// are `pending`, not `missing`.
    pub in_grace: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last observation of one service and its audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceObservation {
    /// Unix seconds when it finished.
    pub at: u64,
    pub duration_ms: u64,
    /// The job asked for.
    pub job: String,
    pub nodes: Vec<NodeResult>,
    /// `min(replicas, nodes)` of the plan audited.
    pub replicas: usize,
    pub audit: Audit,
    /// The plan it was compared with.
    #[serde(skip)]
    pub assignment: Arc<Assignment>,
}

impl ServiceObservation {
    /// The answer of `node`, if it answered.
    pub fn node(&self, node: &str) -> Option<&NodeObservation> {
        self.nodes
            .iter()
            .find(|n| n.node == node)
            .and_then(|n| n.observed.as_ref())
    }
}

/// Ask every node of `assignment` (all at once) what it scrapes for the
/// service's job, and audit the answers. `changed_at` holds when each
/// node's file last changed, for the grace of new assignments.
pub async fn observe_service(
    service: &str,
    settings: &Observe,
    assignment: Arc<Assignment>,
    changed_at: &BTreeMap<String, Instant>,
    replicas: usize,
    handing: &audit::Handing,
) -> ServiceObservation {
    let started = Instant::now();
    let job = settings.job.clone().unwrap_or_else(|| service.to_string());
    let asks: Vec<_> = assignment
        .nodes
        .iter()
        .map(|node| {
            let api = crate::shard::template::for_node(&settings.api, service, node);
            let (job, timeout) = (job.clone(), settings.timeout);
            tokio::task::spawn_blocking(move || prom::observe(&api, &job, timeout))
        })
        .collect();
    let mut answers = Vec::with_capacity(asks.len());
    for (node, ask) in assignment.nodes.iter().zip(asks) {
        let answer = ask
            .await
            .unwrap_or_else(|e| Err(format!("observation task failed: {e}")));
        answers.push((node, answer, crate::store::state::unix_now()));
    }
    // A node with no target of the job yet reports no scrape interval; the
    // job's is the same on every server of the pool.
    let job_interval = answers
        .iter()
        .filter_map(|(_, a, _)| a.as_ref().ok()?.scrape_interval)
        .max()
        .unwrap_or(DEFAULT_SCRAPE_INTERVAL);
    let grace = settings.refresh + job_interval;
    let nodes: Vec<NodeResult> = answers
        .into_iter()
        .map(|(node, answer, at)| {
            let (observed, error) = match answer {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e)),
            };
            NodeResult {
                node: node.clone(),
                at,
                series: observed.as_ref().map(NodeObservation::series),
                head_series: observed.as_ref().and_then(|o| o.head_series),
                in_grace: changed_at.get(node).is_some_and(|t| t.elapsed() < grace),
                observed,
                error,
            }
        })
        .collect();
    let inputs = audit_inputs(&nodes);
    let replicas = replicas.min(assignment.nodes.len()).max(1);
    let audit = audit::audit_during(&assignment, &inputs, replicas, handing);
    ServiceObservation {
        at: crate::store::state::unix_now(),
        duration_ms: started.elapsed().as_millis() as u64,
        job,
        nodes,
        replicas,
        audit,
        assignment,
    }
}

fn audit_inputs(nodes: &[NodeResult]) -> BTreeMap<String, audit::NodeInput<'_>> {
    nodes
        .iter()
        .map(|n| {
            let input = audit::NodeInput {
                observed: n.observed.as_ref(),
                in_grace: n.in_grace,
            };
            (n.node.clone(), input)
        })
        .collect()
}

/// Prometheus's default, for a node that has no target of the job yet.
const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(60);

/// One node's side of a `where` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhereNode {
    pub node: String,
    /// The plan assigns the target to this node.
    pub assigned: bool,
    /// What the node reported for it (`None`: not active there, or the node
    /// was not observed).
    pub observed: Option<ActiveTarget>,
    /// Why the node could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where one target is, for one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhereAnswer {
    pub service: String,
    pub target: String,
    /// The nodes the plan assigns it to.
    pub assigned: Vec<String>,
    /// Each assigned node's file name.
    pub files: Vec<String>,
    /// Its affinity group key (`None` without `affinity:`, or when it lacks
    /// a label of the template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its audit state, when the service is observed.
    pub state: Option<TargetState>,
    /// Unix seconds of the observation used (`None`: nothing observed).
    pub observed_at: Option<u64>,
    /// Assigned nodes and every node that has it active.
    pub nodes: Vec<WhereNode>,
}

/// Where `target` is in `assignment`, with what `observation` saw of it.
/// `None` when it is neither assigned nor seen active anywhere.
pub fn locate(
    service: &str,
    target: &str,
    assignment: &Assignment,
    observation: Option<&ServiceObservation>,
) -> Option<WhereAnswer> {
    let assigned: Vec<String> = assignment
        .nodes_of(target)
        .into_iter()
        .map(String::from)
        .collect();
    let mut nodes: Vec<WhereNode> = Vec::new();
    for node in &assignment.nodes {
        let seen = observation.and_then(|o| o.nodes.iter().find(|n| &n.node == node));
        let active = seen
            .and_then(|n| n.observed.as_ref())
            .and_then(|o| o.target(target))
            .cloned();
        let is_assigned = assigned.contains(node);
        if is_assigned || active.is_some() {
            nodes.push(WhereNode {
                node: node.clone(),
                assigned: is_assigned,
                observed: active,
                error: seen.and_then(|n| n.error.clone()),
            });
        }
    }
    if nodes.is_empty() {
        return None;
    }
    let files = assigned
        .iter()
        .filter_map(|n| {
            assignment
                .node_index(n)
                .map(|i| assignment.files[i].clone())
        })
        .collect();
    let state = observation.map(|o| {
        let owners: Vec<&str> = assigned.iter().map(String::as_str).collect();
        let on: Vec<(&str, &ActiveTarget)> = o
            .nodes
            .iter()
            .filter_map(|n| Some((n.node.as_str(), n.observed.as_ref()?.target(target)?)))
            .collect();
        audit::state_of(&owners, &on, &audit_inputs(&o.nodes), o.replicas).0
    });
    Some(WhereAnswer {
        service: service.to_string(),
        target: target.to_string(),
        assigned,
        files,
        group: assignment.group_of(target).map(String::from),
        state,
        observed_at: observation.map(|o| o.at),
        nodes,
    })
}
