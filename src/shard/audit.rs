//! The audit: the plan in effect compared with what each Prometheus really
//! scrapes. Pure: an [`Assignment`], the last observation of each node and
//! the time; no I/O.
//!
//! Every target gets exactly one state, the first that applies:
//!
//! | state | meaning |
//! |---|---|
//! | `missing` | assigned to a node that answered and does not have it active, past the grace |
//! | `extra` | active on a node that answered and is not assigned it (stale file, hand edit, a second promshard) |
//! | `duplicate` | active on more nodes than `replicas` |
//! | `down` | active where assigned, but its own scrape fails: not a sharding problem |
//! | `unknown` | an assigned node did not answer, so nothing can be said |
//! | `pending` | missing on a node whose file changed less than the grace ago (file_sd refresh + one scrape interval) |
//! | `ok` | active on every node it is assigned to, and healthy |
//!
//! Targets are matched by `__address__` as discovered, so a relabelled
//! `instance` does not break the match. During a make-before-break
//! handover the old node keeps a moving target on purpose until the new one
//! confirms: [`audit_during`] is told which, and does not count it there.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::shard::assignment::Assignment;
use crate::shard::handover::Handover;
use crate::shard::observation::{ActiveTarget, NodeObservation};

/// How many targets per non-ok state an audit lists.
pub const SAMPLES: usize = 100;

/// A target's audit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Missing,
    Extra,
    Duplicate,
    Down,
    Unknown,
    Pending,
    Ok,
}

impl TargetState {
    /// Every state, in order of precedence.
    pub const ALL: [TargetState; 7] = [
        TargetState::Missing,
        TargetState::Extra,
        TargetState::Duplicate,
        TargetState::Down,
        TargetState::Unknown,
        TargetState::Pending,
        TargetState::Ok,
    ];

    /// Label value for metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Missing => "missing",
            TargetState::Extra => "extra",
            TargetState::Duplicate => "duplicate",
            TargetState::Down => "down",
            TargetState::Unknown => "unknown",
            TargetState::Pending => "pending",
            TargetState::Ok => "ok",
        }
    }
}

/// What one node answered, as the audit sees it.
pub struct NodeInput<'a> {
    /// `None`: the node did not answer (its error is reported elsewhere).
    pub observed: Option<&'a NodeObservation>,
    /// Whether the node's file changed less than the grace ago.
    pub in_grace: bool,
}

/// One listed target of a non-ok state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditSample {
    pub target: String,
    /// Nodes the plan assigns it to.
    pub assigned: Vec<String>,
    /// Nodes that have it active.
    pub active: Vec<String>,
}

/// Per node: what the plan gives it and what it does.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeAudit {
    pub node: String,
    /// Targets the plan assigns it.
    pub assigned: usize,
    /// Targets of this job it has active (`None`: it did not answer).
    pub active: Option<usize>,
    /// Assigned targets it does not have active (past the grace).
    pub missing: usize,
    /// Active targets the plan does not assign it.
    pub extra: usize,
    /// Active targets whose scrape fails.
    pub down: usize,
}

/// The audit of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Audit {
    /// Targets per state (every state present, 0 when none).
    pub counts: BTreeMap<TargetState, usize>,
    pub nodes: Vec<NodeAudit>,
    /// Up to [`SAMPLES`] targets per non-ok state.
    pub samples: BTreeMap<TargetState, Vec<AuditSample>>,
}

/// Address → the nodes that have it active, and what each reported.
type Active<'a> = HashMap<&'a str, Vec<(&'a str, &'a ActiveTarget)>>;

/// Audit `assignment` against what each node answered. `nodes` holds one
/// entry per node of the assignment; a node missing from it counts as not
/// answering. Targets active on nodes but in no plan are audited too
/// (`extra`).
pub fn audit(
    assignment: &Assignment,
    nodes: &BTreeMap<String, NodeInput<'_>>,
    replicas: usize,
) -> Audit {
    audit_during(assignment, nodes, replicas, &Handing::new())
}

/// Targets in a handover: address → the old nodes that keep it until its
/// new node confirms.
pub type Handing = HashMap<String, Vec<String>>;

/// The moves among a pass's pending handovers (records without an old
/// node only restore coverage), as the audit takes them.
pub fn handing_of(pending: &[Handover]) -> Handing {
    let mut out = Handing::new();
    for h in pending {
        if let Some(from) = &h.from {
            out.entry(h.target.clone()).or_default().push(from.clone());
        }
    }
    out
}

/// One target's verdict: its state, its state on each owner, and the
/// nodes that count as having it active.
pub struct Verdict<'a> {
    pub state: TargetState,
    pub per_owner: Vec<TargetState>,
    /// Where it is active, the old nodes of its handover left out.
    pub on: Vec<(&'a str, &'a ActiveTarget)>,
}

/// The state of one target assigned to `owners`, active on `on`, moving
/// away from `old` (empty unless it is in a handover): the one rule the
/// audit, `where` and the status page all apply. A handover's old node
/// keeps the target on purpose, so it is neither `extra` nor `duplicate`
/// there.
pub fn target_state<'a>(
    owners: &[&str],
    on: &[(&'a str, &'a ActiveTarget)],
    nodes: &BTreeMap<String, NodeInput<'_>>,
    replicas: usize,
    old: &[String],
) -> Verdict<'a> {
    let on: Vec<(&str, &ActiveTarget)> = on
        .iter()
        .filter(|(n, _)| !old.iter().any(|o| o == n))
        .copied()
        .collect();
    let (state, per_owner) = state_of(owners, &on, nodes, replicas);
    Verdict {
        state,
        per_owner,
        on,
    }
}

/// [`audit`], with the targets `handing` over: on their old nodes they are
/// expected, neither `extra` nor `duplicate`.
pub fn audit_during(
    assignment: &Assignment,
    nodes: &BTreeMap<String, NodeInput<'_>>,
    replicas: usize,
    handing: &Handing,
) -> Audit {
    let active = active_by_address(nodes);
    let mut out = Audit::empty(assignment, nodes);
    for (addr, owners) in assignment.iter() {
        let owners: Vec<&str> = owners.collect();
        let on = active.get(addr).map(Vec::as_slice).unwrap_or(&[]);
        let old = handing.get(addr).map(Vec::as_slice).unwrap_or(&[]);
        let Verdict {
            state,
            per_owner,
            on,
        } = target_state(&owners, on, nodes, replicas, old);
        for (node, node_state) in owners.iter().zip(per_owner) {
            if let Some(i) = assignment.node_index(node) {
                match node_state {
                    TargetState::Missing => out.nodes[i].missing += 1,
                    TargetState::Down => out.nodes[i].down += 1,
                    _ => {}
                }
            }
        }
        let strangers = on.iter().filter(|(n, _)| !owners.contains(n));
        out.count_extra(assignment, strangers);
        out.record(&active, addr, owners, state);
    }
    // Active somewhere, assigned nowhere: a target this plan does not have.
    let mut foreign: Vec<&str> = active
        .keys()
        .copied()
        .filter(|a| assignment.nodes_of(a).is_empty())
        .collect();
    foreign.sort_unstable();
    for addr in foreign {
        out.count_extra(assignment, active[addr].iter());
        out.record(&active, addr, Vec::new(), TargetState::Extra);
    }
    out
}

/// Index what every answering node has active by target address, so each
/// target is looked up once.
fn active_by_address<'a>(nodes: &'a BTreeMap<String, NodeInput<'_>>) -> Active<'a> {
    let mut active: Active<'a> = HashMap::new();
    for (node, input) in nodes {
        for t in input.observed.map(|o| o.targets.as_slice()).unwrap_or(&[]) {
            active
                .entry(t.address.as_str())
                .or_default()
                .push((node.as_str(), t));
        }
    }
    active
}

impl Audit {
    /// Every state at 0 and a row per node of the assignment, so states
    /// and nodes with nothing to report still show.
    fn empty(assignment: &Assignment, nodes: &BTreeMap<String, NodeInput<'_>>) -> Audit {
        Audit {
            counts: TargetState::ALL.iter().map(|&s| (s, 0)).collect(),
            nodes: assignment
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeAudit {
                    node: n.clone(),
                    assigned: assignment.counts[i],
                    active: nodes
                        .get(n)
                        .and_then(|o| o.observed)
                        .map(|o| o.targets.len()),
                    ..NodeAudit::default()
                })
                .collect(),
            samples: BTreeMap::new(),
        }
    }

    /// Count a target on each node in `on` (`(node, report)`) that has it
    /// active without being assigned it.
    fn count_extra<'a>(
        &mut self,
        assignment: &Assignment,
        on: impl Iterator<Item = &'a (&'a str, &'a ActiveTarget)>,
    ) {
        for (n, _) in on {
            if let Some(i) = assignment.node_index(n) {
                self.nodes[i].extra += 1;
            }
        }
    }

    /// Count `addr` in `state`, and list it (up to [`SAMPLES`] per state)
    /// unless it is ok.
    fn record(&mut self, active: &Active<'_>, addr: &str, assigned: Vec<&str>, state: TargetState) {
        *self.counts.entry(state).or_default() += 1;
        if state == TargetState::Ok {
            return;
        }
        let list = self.samples.entry(state).or_default();
        if list.len() < SAMPLES {
            let on: Vec<String> = active
                .get(addr)
                .map(|v| v.iter().map(|(n, _)| n.to_string()).collect())
                .unwrap_or_default();
            list.push(AuditSample {
                target: addr.to_string(),
                assigned: assigned.iter().map(|s| s.to_string()).collect(),
                active: on,
            });
        }
    }
}

/// The state of one target assigned to `owners` and active on `on`
/// (node, what it reported), with the state on each owner.
fn state_of(
    owners: &[&str],
    on: &[(&str, &ActiveTarget)],
    nodes: &BTreeMap<String, NodeInput<'_>>,
    replicas: usize,
) -> (TargetState, Vec<TargetState>) {
    let per_owner: Vec<TargetState> = owners
        .iter()
        .map(|&node| {
            let input = nodes.get(node);
            let here = on.iter().find(|(n, _)| *n == node);
            match (input.and_then(|i| i.observed), here) {
                (None, _) => TargetState::Unknown,
                (Some(_), Some((_, t))) if !t.healthy() => TargetState::Down,
                (Some(_), Some(_)) => TargetState::Ok,
                (Some(_), None) if input.is_some_and(|i| i.in_grace) => TargetState::Pending,
                (Some(_), None) => TargetState::Missing,
            }
        })
        .collect();
    let mut state = per_owner.iter().copied().min().unwrap_or(TargetState::Ok);
    if owners.is_empty() || on.iter().any(|(n, _)| !owners.contains(n)) {
        state = state.min(TargetState::Extra);
    }
    if on.len() > replicas {
        state = state.min(TargetState::Duplicate);
    }
    (state, per_owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(nodes: &[(&str, &[&str])]) -> Assignment {
        Assignment::from_lists(nodes)
    }

    fn seen(active: &[(&str, &str)]) -> NodeObservation {
        NodeObservation {
            targets: active
                .iter()
                .map(|(addr, health)| ActiveTarget {
                    address: addr.to_string(),
                    health: health.to_string(),
                    ..ActiveTarget::default()
                })
                .collect(),
            ..NodeObservation::default()
        }
    }

    fn states(a: &Audit) -> Vec<(TargetState, Vec<String>)> {
        a.samples
            .iter()
            .map(|(s, v)| (*s, v.iter().map(|x| x.target.clone()).collect()))
            .collect()
    }

    #[test]
    fn each_target_gets_the_first_state_that_applies() {
        let a = assignment(&[("n1", &["a:1", "b:1", "c:1"]), ("n2", &["d:1", "e:1"])]);
        let n1 = seen(&[("a:1", "up"), ("b:1", "down"), ("e:1", "up"), ("z:1", "up")]);
        let n2 = seen(&[("e:1", "up")]);
        let inputs = inputs(&[("n1", Some(&n1), false), ("n2", Some(&n2), false)]);
        let audit = audit(&a, &inputs, 1);
        assert_eq!(
            states(&audit),
            vec![
                (TargetState::Missing, vec!["c:1".into(), "d:1".into()]),
                (TargetState::Extra, vec!["e:1".into(), "z:1".into()]),
                (TargetState::Down, vec!["b:1".into()]),
            ]
        );
        assert_eq!(audit.counts[&TargetState::Ok], 1);
        assert_eq!(audit.counts[&TargetState::Duplicate], 0);
        let n1 = &audit.nodes[0];
        assert_eq!(
            (n1.assigned, n1.active, n1.missing, n1.extra, n1.down),
            (3, Some(4), 1, 2, 1)
        );
    }

    #[test]
    fn a_silent_node_leaves_its_targets_unknown_and_others_alone() {
        let a = assignment(&[("n1", &["a:1"]), ("n2", &["b:1"])]);
        let n2 = seen(&[("b:1", "up")]);
        let inputs = inputs(&[("n1", None, false), ("n2", Some(&n2), false)]);
        let audit = audit(&a, &inputs, 1);
        assert_eq!(
            states(&audit),
            vec![(TargetState::Unknown, vec!["a:1".into()])]
        );
        assert_eq!(audit.counts[&TargetState::Ok], 1);
        assert_eq!(audit.nodes[0].active, None);
    }

    /// Node inputs: (node, what it answered, whether in its grace).
    fn inputs<'a>(
        list: &[(&str, Option<&'a NodeObservation>, bool)],
    ) -> BTreeMap<String, NodeInput<'a>> {
        list.iter()
            .map(|&(n, observed, in_grace)| (n.to_string(), NodeInput { observed, in_grace }))
            .collect()
    }

    #[test]
    fn missing_within_the_grace_is_pending_and_replicas_bound_duplicates() {
        let a = assignment(&[("n1", &["a:1"]), ("n2", &["a:1"]), ("n3", &[])]);
        let n1 = seen(&[("a:1", "up")]);
        let empty = seen(&[]);
        let n3 = seen(&[("a:1", "up")]);
        // Active on n1 and n3, assigned n1 and n2: extra beats pending.
        let all = inputs(&[
            ("n1", Some(&n1), false),
            ("n2", Some(&empty), true),
            ("n3", Some(&n3), false),
        ]);
        assert_eq!(
            states(&audit(&a, &all, 2)),
            vec![(TargetState::Extra, vec!["a:1".into()])]
        );
        let two = inputs(&[("n1", Some(&n1), false), ("n2", Some(&empty), true)]);
        assert_eq!(
            states(&audit(&a, &two, 2)),
            vec![(TargetState::Pending, vec!["a:1".into()])]
        );
    }

    #[test]
    fn the_old_node_of_a_handover_is_not_extra() {
        // a:1 moves from n1 to n2; both scrape it while n2 confirms.
        let a = assignment(&[("n1", &["b:1"]), ("n2", &["a:1"])]);
        let n1 = seen(&[("a:1", "up"), ("b:1", "up")]);
        let n2 = seen(&[("a:1", "up")]);
        let inputs = inputs(&[("n1", Some(&n1), false), ("n2", Some(&n2), false)]);
        let plain = audit(&a, &inputs, 1);
        assert_eq!(
            states(&plain),
            vec![(TargetState::Extra, vec!["a:1".into()])]
        );
        let handing = Handing::from([("a:1".to_string(), vec!["n1".to_string()])]);
        let during = audit_during(&a, &inputs, 1, &handing);
        assert_eq!(states(&during), vec![]);
        assert_eq!(during.counts[&TargetState::Ok], 2);
        assert_eq!(during.nodes[0].extra, 0);
    }
}
