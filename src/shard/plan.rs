//! Planning: targets + live nodes + ring settings → a [`Plan`].
//!
//! Pure: no I/O. A `Plan` says, for every live node (sorted), which targets
//! it scrapes and what its file is called. Every node gets an entry, empty
//! if it has no targets, so that a node that lost its targets is told so.
//! `plan`, `once` and the daemon all go through here; effects consume a Plan.
//!
//! With `affinity:` the ring places groups of targets instead of targets
//! (see [`crate::shard::affinity`]); the plan then also says how many groups each
//! node has and which groups are too heavy to balance.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::shard::affinity::{Affinity, Groups};
use crate::shard::assignment::Assignment;
use crate::shard::names::{FileNameArgs, FileType, check_file_name};
use crate::shard::placement::{NodeSpec, PlacementError, PlacementSettings, Rendezvous};
use crate::shard::render::ShardLabel;
use crate::shard::target::Target;

/// Why no plan could be made; nothing is written for that service.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Rendezvous(#[from] PlacementError),
    #[error("file name {name:?} for node {node} {reason}")]
    BadFileName {
        node: String,
        name: String,
        reason: String,
    },
    #[error("nodes {first} and {second} would both write {name:?}")]
    DuplicateFileName {
        first: String,
        second: String,
        name: String,
    },
}

/// One node's share of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePlan {
    pub node: String,
    pub index: usize,
    pub file: String,
    /// Ascending indices into the plan's target list.
    #[serde(skip)]
    pub targets: Vec<u32>,
    pub count: usize,
    /// Affinity groups on the node (with `affinity:` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
}

/// The assignment of one service's targets to its live nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub service: String,
    pub file_type: FileType,
    pub targets: usize,
    /// `min(replicas, nodes)`: how many nodes each target is on.
    pub replicas: usize,
    pub nodes: Vec<NodePlan>,
    /// Moves held back by `max_move_ratio` for a later pass: those targets
    /// stay on their previous nodes for now.
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred_moves: usize,
    /// How targets were grouped (with `affinity:` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityPlan>,
    /// The label naming its node that every target of a file gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_label: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A cap on what one pass moves: the plan in effect and the largest share
/// of the total weight that may change node in one pass.
#[derive(Clone, Copy)]
pub struct MoveCap<'a> {
    pub previous: &'a Assignment,
    pub max_ratio: f64,
}

impl Plan {
    /// Every planned file name with its node.
    pub fn files(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .map(|n| (n.file.clone(), n.node.clone()))
            .collect()
    }

    /// The shard label of `node`'s file, if the service sets one.
    pub fn shard_of<'a>(&'a self, node: &'a NodePlan) -> Option<ShardLabel<'a>> {
        self.shard_label.as_deref().map(|name| ShardLabel {
            name,
            node: &node.node,
        })
    }
}

/// How many groups/targets a plan lists in full.
const SAMPLES: usize = 20;

/// The grouping of a plan made with `affinity:`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AffinityPlan {
    /// The template.
    pub template: String,
    /// Groups, ungrouped targets included.
    pub groups: usize,
    /// Targets whose template names a label they lack: each placed by its
    /// own address, as without affinity.
    pub ungrouped: usize,
    /// The first of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ungrouped_samples: Vec<String>,
    /// Groups heavier than a node's fair share, heaviest first (the first
    /// 20): each placed whole, never split.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oversized: Vec<OversizedGroup>,
    pub oversized_count: usize,
    /// The groups themselves, for `where` (shared, not copied, by the
    /// report and the lookup table).
    #[serde(skip)]
    pub grouping: Arc<Groups>,
}

/// A group too heavy for a node's fair share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OversizedGroup {
    pub key: String,
    pub targets: usize,
    pub weight: u64,
}

/// Indices of the `weights` heavier than a node's fair share of their
/// total (`total × replicas / nodes`, at least 1): what cannot be balanced
/// without splitting it.
pub fn oversized(weights: &[u32], replicas: usize, nodes: usize) -> Vec<usize> {
    if nodes == 0 {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let fair = (total * replicas.min(nodes) as u64 / nodes as u64).max(1);
    (0..weights.len())
        .filter(|&i| u64::from(weights[i]) > fair)
        .collect()
}

/// Inputs of [`make_plan`]. [`PlanInput::new`] gives the common case; the
/// fields are public so a caller sets what it needs on top:
/// `PlanInput { replicas: 2, ..PlanInput::new(service, nodes, targets) }`.
pub struct PlanInput<'a> {
    pub service: &'a str,
    /// Live nodes, sorted by address.
    pub nodes: &'a [NodeSpec],
    /// Normalized (sorted, deduplicated) targets.
    pub targets: &'a [Target],
    pub replicas: usize,
    pub ring: &'a PlacementSettings,
    pub file_type: FileType,
    /// Spread a big rebalance over several passes (`max_move_ratio`).
    pub move_cap: Option<MoveCap<'a>>,
    /// Place targets in groups by this key.
    pub affinity: Option<&'a Affinity>,
    /// Label every target with its node under this name.
    pub shard_label: Option<&'a str>,
}

impl<'a> PlanInput<'a> {
    /// One replica, default ring settings, JSON files, no move cap, no
    /// affinity, no shard label.
    pub fn new(service: &'a str, nodes: &'a [NodeSpec], targets: &'a [Target]) -> Self {
        Self {
            service,
            nodes,
            targets,
            replicas: 1,
            ring: &PlacementSettings::DEFAULT,
            file_type: FileType::Json,
            move_cap: None,
            affinity: None,
            shard_label: None,
        }
    }
}

/// Assign targets to nodes and name the files. `namer` is the script's
/// `file_name()` when it has one, else [`default_file_name`].
pub fn make_plan(
    input: &PlanInput<'_>,
    namer: impl FnMut(&FileNameArgs) -> Result<String, String>,
) -> Result<Plan, PlanError> {
    let ring = Rendezvous::new(input.nodes, input.ring)?;
    let grouping = input.affinity.map(|a| Groups::new(input.targets, a));
    let mut placed = place(&ring, input, grouping.as_ref())?;
    // Held-back moves are per target, so a group would be split while it
    // moves: with affinity groups move whole, uncapped.
    let deferred_moves = match (input.move_cap, &grouping) {
        (Some(cap), None) => cap_moves(&mut placed.per_node, input.nodes, input.targets, cap),
        _ => 0,
    };
    let nodes = name_files(input, placed, namer)?;
    let total = input.nodes.len();
    let replicas = input.replicas.min(total);
    let affinity = input
        .affinity
        .zip(grouping)
        .map(|(a, grouping)| affinity_plan(a, grouping, replicas, total));
    Ok(Plan {
        service: input.service.to_string(),
        file_type: input.file_type,
        targets: input.targets.len(),
        replicas,
        nodes,
        deferred_moves,
        affinity,
        shard_label: input.shard_label.map(str::to_string),
    })
}

/// Where the ring put the targets.
struct Placed {
    /// Per node, the indices of its targets.
    per_node: Vec<Vec<u32>>,
    /// With affinity, per node the number of groups.
    groups: Option<Vec<usize>>,
}

/// Place the targets, or with affinity their groups, on the ring.
fn place(
    ring: &Rendezvous,
    input: &PlanInput<'_>,
    grouping: Option<&Groups>,
) -> Result<Placed, PlanError> {
    Ok(match grouping {
        None => {
            let hashes: Vec<u64> = input.targets.iter().map(|t| t.hash).collect();
            let any_weight = input.targets.iter().any(|t| t.weight != 1);
            let weights: Option<Vec<u32>> =
                any_weight.then(|| input.targets.iter().map(|t| t.weight).collect());
            let a = ring.assign_hashes(&hashes, weights.as_deref(), input.replicas)?;
            Placed {
                per_node: a.per_node,
                groups: None,
            }
        }
        Some(g) => {
            let a = ring.assign_hashes(&g.hashes, Some(&g.weights), input.replicas)?;
            Placed {
                per_node: a.per_node.iter().map(|groups| g.expand(groups)).collect(),
                groups: Some(a.per_node.iter().map(Vec::len).collect()),
            }
        }
    })
}

/// Name each node's file and pair it with the node's targets; a name the
/// namer refuses, that is unsafe, or that two nodes share is an error.
fn name_files(
    input: &PlanInput<'_>,
    placed: Placed,
    mut namer: impl FnMut(&FileNameArgs) -> Result<String, String>,
) -> Result<Vec<NodePlan>, PlanError> {
    let total = input.nodes.len();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(total);
    let Placed { per_node, groups } = placed;
    for (i, (node, targets)) in input.nodes.iter().zip(per_node).enumerate() {
        let args = FileNameArgs {
            service: input.service.to_string(),
            node: node.addr.clone(),
            index: i + 1,
            total,
            count: targets.len(),
            file_type: input.file_type,
        };
        let file = safe_file_name(&mut namer, &args)?;
        if let Some(first) = names.insert(file.clone(), node.addr.clone()) {
            return Err(PlanError::DuplicateFileName {
                first,
                second: node.addr.clone(),
                name: file,
            });
        }
        nodes.push(NodePlan {
            node: node.addr.clone(),
            index: i + 1,
            file,
            count: targets.len(),
            targets,
            groups: groups.as_ref().map(|g| g[i]),
        });
    }
    Ok(nodes)
}

/// The namer's file name for `args`, refused unless it is a safe plain
/// file name (the daemon writes it inside the output directory).
fn safe_file_name(
    namer: &mut impl FnMut(&FileNameArgs) -> Result<String, String>,
    args: &FileNameArgs,
) -> Result<String, PlanError> {
    let file = namer(args).map_err(|reason| PlanError::BadFileName {
        node: args.node.clone(),
        name: String::new(),
        reason,
    })?;
    check_file_name(&file).map_err(|reason| PlanError::BadFileName {
        node: args.node.clone(),
        name: file.clone(),
        reason: reason.into(),
    })?;
    Ok(file)
}

/// What a plan made with `affinity:` reports about its groups: how many,
/// the targets left ungrouped, and the groups too heavy to balance,
/// heaviest first.
fn affinity_plan(a: &Affinity, grouping: Groups, replicas: usize, nodes: usize) -> AffinityPlan {
    let mut heavy = oversized(&grouping.weights, replicas, nodes);
    heavy.sort_by_key(|&g| std::cmp::Reverse(grouping.weights[g]));
    AffinityPlan {
        template: a.as_str().to_string(),
        groups: grouping.len(),
        ungrouped: grouping.ungrouped(),
        ungrouped_samples: (0..grouping.len())
            .filter(|&g| grouping.is_ungrouped(g))
            .take(SAMPLES)
            .map(|g| grouping.keys[g].to_string())
            .collect(),
        oversized: heavy
            .iter()
            .take(SAMPLES)
            .map(|&g| OversizedGroup {
                key: grouping.keys[g].to_string(),
                targets: grouping.members(g).len(),
                weight: u64::from(grouping.weights[g]),
            })
            .collect(),
        oversized_count: heavy.len(),
        grouping: Arc::new(grouping),
    }
}

/// Hold back moves beyond `cap.max_ratio` of the total weight: targets are
/// taken in hash order (a fixed, fleet-independent order), each move is
/// admitted while the moved weight stays within the cap (the first always,
/// so every pass makes progress), and the rest keep their previous nodes for
/// this pass. A move away from a node that left the plan is never held
/// back. Returns how many moves were held back.
fn cap_moves(
    per_node: &mut [Vec<u32>],
    nodes: &[NodeSpec],
    targets: &[Target],
    cap: MoveCap<'_>,
) -> usize {
    let index: BTreeMap<&str, u32> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.addr.as_str(), i as u32))
        .collect();
    let mut planned: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    for (n, list) in per_node.iter().enumerate() {
        for &t in list {
            planned[t as usize].push(n as u32);
        }
    }
    let total: u64 = planned
        .iter()
        .zip(targets)
        .map(|(p, t)| u64::from(t.weight) * p.len() as u64)
        .sum();
    let budget = (total as f64 * cap.max_ratio.clamp(0.0, 1.0)) as u64;
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_unstable_by_key(|&t| (targets[t].hash, t));
    let (mut moved, mut deferred, mut changed) = (0u64, 0usize, false);
    for t in order {
        let previous: Option<Vec<u32>> = cap
            .previous
            .nodes_of(&targets[t].addr)
            .iter()
            .map(|n| index.get(n).copied())
            .collect();
        let Some(mut previous) = previous.filter(|p| !p.is_empty()) else {
            continue; // new, or a previous node left: it must go now
        };
        previous.sort_unstable();
        let mut now = planned[t].clone();
        now.sort_unstable();
        if previous == now {
            continue;
        }
        let weight = u64::from(targets[t].weight)
            * now.iter().filter(|n| !previous.contains(n)).count() as u64;
        if moved == 0 || moved + weight <= budget {
            moved += weight;
        } else {
            planned[t] = previous;
            deferred += 1;
            changed = true;
        }
    }
    if changed {
        for list in per_node.iter_mut() {
            list.clear();
        }
        for (t, on) in planned.iter().enumerate() {
            for &n in on {
                per_node[n as usize].push(t as u32);
            }
        }
    }
    deferred
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::names::{FileNaming, default_file_name};
    use crate::shard::target::{RawGroup, normalize};

    fn targets(n: usize) -> Vec<Target> {
        normalize(vec![RawGroup {
            index: 0,
            targets: (0..n)
                .map(|i| format!("10.1.{}.{}:9100", i / 250, i % 250))
                .collect(),
            ..RawGroup::default()
        }])
        .targets
    }

    fn nodes(n: usize) -> Vec<NodeSpec> {
        (1..=n)
            .map(|i| NodeSpec::new(format!("prom{i}:9090")))
            .collect()
    }

    fn plan_of(t: &[Target], n: &[NodeSpec], replicas: usize) -> Result<Plan, PlanError> {
        make_plan(
            &PlanInput {
                replicas,
                ..PlanInput::new("svc", n, t)
            },
            |a| Ok(default_file_name(a, FileNaming::Stable)),
        )
    }

    #[test]
    fn every_node_gets_a_file_even_when_empty() {
        let p = plan_of(&targets(1), &nodes(3), 1).unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes.iter().filter(|n| n.count == 0).count(), 2);
        assert_eq!(p.nodes[0].file, "svc_prom1_9090.json");
        let counted = FileNameArgs {
            service: "svc".into(),
            node: "[::1]:9090".into(),
            index: 2,
            total: 3,
            count: 7,
            file_type: FileType::Yaml,
        };
        assert_eq!(
            default_file_name(&counted, FileNaming::Counted),
            "svc_[::1]:9090_2_3_7.yaml"
        );
        assert_eq!(
            default_file_name(&counted, FileNaming::Stable),
            "svc____1__9090.yaml"
        );
    }

    /// Adding a fourth node moves about a quarter of the targets; with
    /// `max_move_ratio: 0.1` each pass moves at most a tenth (plus the one
    /// move always admitted), every target stays on exactly one node, and
    /// the passes reach the uncapped plan.
    #[test]
    fn a_move_cap_spreads_a_rebalance_over_passes() {
        let t = targets(2000);
        let first = plan_of(&t, &nodes(3), 1).unwrap();
        let goal = plan_of(&t, &nodes(4), 1).unwrap();
        let mut previous = Assignment::from_plan(&t, &first);
        let n4 = nodes(4);
        let (mut steps, mut reached) = (0, false);
        while steps < 10 && !reached {
            let plan = make_plan(
                &PlanInput {
                    move_cap: Some(MoveCap {
                        previous: &previous,
                        max_ratio: 0.1,
                    }),
                    ..PlanInput::new("svc", &n4, &t)
                },
                |a| Ok(default_file_name(a, FileNaming::Stable)),
            )
            .unwrap();
            let placed: usize = plan.nodes.iter().map(|n| n.targets.len()).sum();
            assert_eq!(placed, t.len(), "every target exactly once");
            let next = Assignment::from_plan(&t, &plan);
            let moved = t
                .iter()
                .filter(|x| previous.nodes_of(&x.addr) != next.nodes_of(&x.addr))
                .count();
            assert!(moved <= t.len() / 10 + 1, "step {steps}: moved {moved}");
            reached = plan.deferred_moves == 0;
            previous = next;
            steps += 1;
        }
        assert!(reached, "not done after {steps} passes");
        assert!(
            (3..=4).contains(&steps),
            "a quarter at a tenth per pass: {steps} passes"
        );
        assert_eq!(
            previous,
            Assignment::from_plan(&t, &goal),
            "ends at the uncapped plan"
        );
    }

    #[test]
    fn no_nodes_is_an_error() {
        assert!(matches!(
            plan_of(&targets(3), &[], 1),
            Err(PlanError::Rendezvous(PlacementError::NoNodes))
        ));
    }

    #[test]
    fn bad_and_duplicate_names_are_rejected() {
        let t = targets(10);
        let n = nodes(2);
        let input = PlanInput::new("svc", &n, &t);
        let long = "x".repeat(251);
        for bad in [
            "../x.json",
            "a/b.json",
            "",
            "x\0.json",
            ".hidden.json",
            "a\\b",
            long.as_str(),
        ] {
            let r = make_plan(&input, |_| Ok(bad.to_string()));
            assert!(matches!(r, Err(PlanError::BadFileName { .. })), "{bad:?}");
        }
        let r = make_plan(&input, |_| Ok("same.json".into()));
        assert!(matches!(r, Err(PlanError::DuplicateFileName { .. })));
    }
}
