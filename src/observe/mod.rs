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
    /// When the answer came (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser")]
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
    /// When it finished (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser")]
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

/// What [`observe_service`] compares: the plan in effect and the nodes
/// that hold its files.
pub struct Planned<'a> {
    pub assignment: Arc<Assignment>,
    /// Every node with a file: the assignment's, and a drained node or an
    /// old owner that keeps targets until their handover ends.
    pub nodes: &'a [String],
    /// When each node's file last changed, for the grace of new assignments.
    pub changed_at: &'a BTreeMap<String, Instant>,
    /// The moving targets and their old nodes.
    pub handing: &'a audit::Handing,
}

/// Ask every node of `planned` (all at once) what it scrapes for the
/// service's job, and audit the answers.
pub async fn observe_service(
    service: &str,
    settings: &Observe,
    planned: Planned<'_>,
    replicas: usize,
) -> ServiceObservation {
    let Planned {
        assignment,
        nodes: to_ask,
        changed_at,
        handing,
    } = planned;
    let started = Instant::now();
    let job = settings.job.clone().unwrap_or_else(|| service.to_string());
    let asks: Vec<_> = to_ask
        .iter()
        .map(|node| {
            let api = crate::shard::template::for_node(&settings.api, service, node);
            let (job, timeout) = (job.clone(), settings.timeout);
            tokio::task::spawn_blocking(move || prom::observe(&api, &job, timeout))
        })
        .collect();
    let mut answers = Vec::with_capacity(asks.len());
    for (node, ask) in to_ask.iter().zip(asks) {
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

/// A node's part in where a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The plan assigns it the target.
    Assigned,
    /// Its old owner: keeps it until the new owner has scraped it.
    HandingOver,
    /// Neither: it should not have the target.
    NotAssigned,
}

impl Role {
    /// The word `where` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Assigned => "assigned",
            Role::HandingOver => "handing over",
            Role::NotAssigned => "NOT ASSIGNED",
        }
    }
}

/// One node's side of a `where` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhereNode {
    pub node: String,
    /// The plan assigns the target to this node.
    pub assigned: bool,
    pub role: Role,
    /// What the node reported for it (`None`: not active there, or the node
    /// was not observed).
    pub observed: Option<ActiveTarget>,
    /// Why the node could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A move of the target waiting for its new owner (make-before-break).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhereHandover {
    /// The old owner, which keeps it meanwhile.
    pub from: String,
    /// What the old owner does with it: `still scraping`, `not scraping`,
    /// `scrape failing`, `not scraped yet`, `not answering` or `not observed`.
    pub from_state: &'static str,
    pub to: String,
    /// What the new owner does with it: `active`, `not yet active`,
    /// `active, scrape failing`, `active, not scraped yet`, `not
    /// answering` or `not observed`.
    pub to_state: &'static str,
    /// When the new owner was given it (Unix ms; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser_ms")]
    pub since: u64,
}

/// `handover pending: old (still scraping) → new (not yet active)`: the
/// one wording of a pending move, for the CLI and the status page.
pub fn handover_text(from: &str, from_state: &str, to: &str, to_state: &str) -> String {
    format!("handover pending: {from} ({from_state}) → {to} ({to_state})")
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
    /// Its audit state, when the service is observed: the audit's own
    /// verdict, handovers included.
    pub state: Option<TargetState>,
    /// Its moves waiting for the new owner.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handover: Vec<WhereHandover>,
    /// When the observation used finished (Unix seconds; RFC 3339 in
    /// JSON; `None`: nothing observed).
    #[serde(serialize_with = "crate::shard::time::ser_opt")]
    pub observed_at: Option<u64>,
    /// Assigned nodes, old owners handing it over, and every node that
    /// has it active.
    pub nodes: Vec<WhereNode>,
}

/// What `where` is told about one service: its plan in effect, the
/// handovers that plan left pending, and the last observation of it.
pub struct WhereInput<'a> {
    pub service: &'a str,
    pub assignment: &'a Assignment,
    pub pending: &'a [crate::shard::handover::Handover],
    pub observation: Option<&'a ServiceObservation>,
}

/// Where `target` is in the plan of `input`, with what its observation
/// saw of it. `None` when it is neither assigned, nor handed over, nor
/// seen active anywhere.
pub fn locate(input: &WhereInput<'_>, target: &str) -> Option<WhereAnswer> {
    let (assignment, observation) = (input.assignment, input.observation);
    let assigned: Vec<String> = assignment
        .nodes_of(target)
        .into_iter()
        .map(String::from)
        .collect();
    let moves: Vec<&crate::shard::handover::Handover> = input
        .pending
        .iter()
        .filter(|h| h.target == target && h.from.is_some())
        .collect();
    let old: Vec<String> = moves.iter().filter_map(|h| h.from.clone()).collect();
    let nodes = where_nodes(assignment, observation, target, &assigned, &old);
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
        let on = active_on(o, target);
        audit::target_state(&owners, &on, &audit_inputs(&o.nodes), o.replicas, &old).state
    });
    let handover = moves
        .iter()
        .map(|h| {
            let from = h.from.clone().unwrap_or_default();
            WhereHandover {
                from_state: side(observation, &from, target, false),
                to_state: side(observation, &h.to, target, true),
                from,
                to: h.to.clone(),
                since: h.started_ms,
            }
        })
        .collect();
    Some(WhereAnswer {
        service: input.service.to_string(),
        target: target.to_string(),
        assigned,
        files,
        group: assignment.group_of(target).map(String::from),
        state,
        handover,
        observed_at: observation.map(|o| o.at),
        nodes,
    })
}

/// The nodes that have `target` active in `o`, with what they reported.
fn active_on<'a>(o: &'a ServiceObservation, target: &str) -> Vec<(&'a str, &'a ActiveTarget)> {
    o.nodes
        .iter()
        .filter_map(|n| Some((n.node.as_str(), n.observed.as_ref()?.target(target)?)))
        .collect()
}

/// Every node with a part in `target`: assigned, handing it over, or
/// having it active.
fn where_nodes(
    assignment: &Assignment,
    observation: Option<&ServiceObservation>,
    target: &str,
    assigned: &[String],
    old: &[String],
) -> Vec<WhereNode> {
    let mut candidates: std::collections::BTreeSet<&str> =
        assignment.nodes.iter().map(String::as_str).collect();
    candidates.extend(old.iter().map(String::as_str));
    candidates.extend(
        observation
            .iter()
            .flat_map(|o| o.nodes.iter().map(|n| n.node.as_str())),
    );
    let mut nodes = Vec::new();
    for node in candidates {
        let seen = observation.and_then(|o| o.nodes.iter().find(|n| n.node == node));
        let active = seen
            .and_then(|n| n.observed.as_ref())
            .and_then(|o| o.target(target))
            .cloned();
        let role = if assigned.iter().any(|a| a == node) {
            Role::Assigned
        } else if old.iter().any(|o| o == node) {
            Role::HandingOver
        } else {
            Role::NotAssigned
        };
        if role != Role::NotAssigned || active.is_some() {
            nodes.push(WhereNode {
                node: node.to_string(),
                assigned: role == Role::Assigned,
                role,
                observed: active,
                error: seen.and_then(|n| n.error.clone()),
            });
        }
    }
    nodes
}

/// What `node` does with `target` in `observation`, in the words of a
/// handover's old side (`new: false`) or new side.
fn side(
    observation: Option<&ServiceObservation>,
    node: &str,
    target: &str,
    new: bool,
) -> &'static str {
    let Some(o) = observation else {
        return "not observed";
    };
    let Some(result) = o.nodes.iter().find(|n| n.node == node) else {
        return "not observed";
    };
    let Some(seen) = &result.observed else {
        return "not answering";
    };
    match (seen.target(target).map(|t| t.health.as_str()), new) {
        (None, false) => "not scraping",
        (None, true) => "not yet active",
        (Some("up"), false) => "still scraping",
        (Some("up"), true) => "active",
        (Some("down"), false) => "scrape failing",
        (Some("down"), true) => "active, scrape failing",
        (Some(_), false) => "not scraped yet",
        (Some(_), true) => "active, not scraped yet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::handover::Handover;

    fn observation(
        assignment: &Arc<Assignment>,
        nodes: &[(&str, &[(&str, &str)])],
    ) -> ServiceObservation {
        let nodes: Vec<NodeResult> = nodes
            .iter()
            .map(|(node, active)| NodeResult {
                node: node.to_string(),
                at: 1,
                observed: Some(NodeObservation {
                    targets: active
                        .iter()
                        .map(|(a, health)| ActiveTarget {
                            address: a.to_string(),
                            health: health.to_string(),
                            ..ActiveTarget::default()
                        })
                        .collect(),
                    ..NodeObservation::default()
                }),
                series: None,
                head_series: None,
                in_grace: true,
                error: None,
            })
            .collect();
        ServiceObservation {
            at: 1,
            duration_ms: 0,
            job: "s".into(),
            nodes,
            replicas: 1,
            audit: Audit::default(),
            assignment: Arc::clone(assignment),
        }
    }

    #[test]
    fn a_moving_target_is_a_pending_handover_with_both_servers() {
        // t:1 moves from a to b: a still scrapes it, b not yet.
        let assignment = Arc::new(Assignment::from_lists(&[("a", &["u:1"]), ("b", &["t:1"])]));
        let o = observation(
            &assignment,
            &[("a", &[("t:1", "up"), ("u:1", "up")]), ("b", &[])],
        );
        let pending = [Handover {
            target: "t:1".into(),
            from: Some("a".into()),
            to: "b".into(),
            started_ms: 1_000,
        }];
        let input = WhereInput {
            service: "s",
            assignment: &assignment,
            pending: &pending,
            observation: Some(&o),
        };
        let w = locate(&input, "t:1").expect("found");
        assert_eq!(
            w.state,
            Some(TargetState::Pending),
            "the audit's state, not extra"
        );
        let roles: Vec<(&str, Role)> = w.nodes.iter().map(|n| (n.node.as_str(), n.role)).collect();
        assert_eq!(roles, [("a", Role::HandingOver), ("b", Role::Assigned)]);
        let h = &w.handover[0];
        assert_eq!(
            handover_text(&h.from, h.from_state, &h.to, h.to_state),
            "handover pending: a (still scraping) → b (not yet active)"
        );
        // Without the handover the same observation is a stray copy.
        let plain = WhereInput {
            pending: &[],
            ..input
        };
        let w = locate(&plain, "t:1").expect("found");
        assert_eq!(w.state, Some(TargetState::Extra));
        assert_eq!(w.nodes[0].role, Role::NotAssigned);
        assert!(w.handover.is_empty());
    }

    #[test]
    fn where_times_are_rfc3339() {
        let assignment = Arc::new(Assignment::from_lists(&[("a", &["t:1"])]));
        let o = observation(&assignment, &[("a", &[("t:1", "up")])]);
        let input = WhereInput {
            service: "s",
            assignment: &assignment,
            pending: &[],
            observation: Some(&o),
        };
        let json = serde_json::to_value(locate(&input, "t:1")).expect("json");
        assert_eq!(json["observed_at"], "1970-01-01T00:00:01Z");
        let json = serde_json::to_value(&o).expect("json");
        assert_eq!(json["at"], "1970-01-01T00:00:01Z");
        assert_eq!(json["nodes"][0]["at"], "1970-01-01T00:00:01Z");
    }
}
