//! The plan in effect as a lookup table: which nodes a target address is
//! assigned to. Built once per successful pass, shared read-only by the
//! audit, `where` and the status page.
//!
//! Compact on purpose, since it lives as long as the plan: every address in
//! one string, a `u32` offset each, and exactly `replicas` node indexes per
//! address in one flat vector — about 30 bytes per target at `replicas: 1`
//! (3 MiB for 100k targets) instead of a map entry with its own allocations.

use std::sync::Arc;

use crate::shard::affinity::Groups;
use crate::shard::plan::Plan;
use crate::shard::target::Target;

/// Padding in `owners` (never a node index: nodes are far fewer).
const NO_NODE: u16 = u16::MAX;

/// Target address → assigned nodes, for one service's plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Nodes in plan order (sorted by address).
    pub nodes: Vec<String>,
    /// Each node's file name, by node index.
    pub files: Vec<String>,
    /// Each node's target count, by node index.
    pub counts: Vec<usize>,
    /// Nodes per address: `min(replicas, nodes)`.
    stride: usize,
    /// Every address, sorted, each once, concatenated.
    addrs: String,
    /// Start of address `i` in `addrs`; one more entry than addresses.
    offsets: Vec<u32>,
    /// `stride` node indexes per address.
    owners: Vec<u16>,
    /// With `affinity:`: each address's group in `grouping` (`NO_GROUP`
    /// for a target that lacks a label of the template); else empty.
    groups: Vec<u32>,
    grouping: Option<Arc<Groups>>,
}

/// An address outside every affinity group.
const NO_GROUP: u32 = u32::MAX;

impl Assignment {
    /// The assignment `plan` makes of `targets`. Linear when `targets` are
    /// sorted by address, as [`crate::shard::target::normalize`] leaves them.
    pub fn from_plan(targets: &[Target], plan: &Plan) -> Assignment {
        let stride = plan.replicas.max(1);
        // Owners by target index, in node order.
        let mut owners = vec![NO_NODE; targets.len() * stride];
        let mut filled = vec![0usize; targets.len()];
        for (ni, n) in plan.nodes.iter().enumerate() {
            for &t in &n.targets {
                let t = t as usize;
                if filled[t] < stride {
                    owners[t * stride + filled[t]] = ni as u16;
                    filled[t] += 1;
                }
            }
        }
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if !targets.windows(2).all(|w| w[0].addr <= w[1].addr) {
            order.sort_by(|&a, &b| targets[a].addr.cmp(&targets[b].addr));
        }
        let mut a = Assignment {
            nodes: plan.nodes.iter().map(|n| n.node.clone()).collect(),
            files: plan.nodes.iter().map(|n| n.file.clone()).collect(),
            counts: plan.nodes.iter().map(|n| n.targets.len()).collect(),
            stride,
            ..Assignment::default()
        };
        a.addrs.reserve(targets.iter().map(|t| t.addr.len()).sum());
        a.offsets.reserve(targets.len() + 1);
        a.owners.reserve(targets.len() * stride);
        let grouping = plan.affinity.as_ref().map(|p| &p.grouping);
        if let Some(g) = grouping {
            a.grouping = Some(Arc::clone(g));
            a.groups.reserve(targets.len());
        }
        let mut last: Option<&str> = None;
        for i in order {
            let addr = &*targets[i].addr;
            // The same address with other labels is another target with the
            // same placement (placement hashes the address): list it once.
            if last == Some(addr) || filled[i] == 0 {
                continue;
            }
            last = Some(addr);
            a.offsets.push(a.addrs.len() as u32);
            a.addrs.push_str(addr);
            a.owners
                .extend_from_slice(&owners[i * stride..(i + 1) * stride]);
            if let Some(g) = grouping {
                let group = g.of_target[i];
                let grouped = !g.is_ungrouped(group as usize);
                a.groups.push(if grouped { group } else { NO_GROUP });
            }
        }
        a.offsets.push(a.addrs.len() as u32);
        a
    }

    /// How many distinct addresses are assigned.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether nothing is assigned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn addr(&self, i: usize) -> &str {
        &self.addrs[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn owners_of(&self, i: usize) -> impl Iterator<Item = &str> {
        self.owners[i * self.stride..(i + 1) * self.stride]
            .iter()
            .filter(|&&n| n != NO_NODE)
            .map(|&n| self.nodes[n as usize].as_str())
    }

    /// The index of `addr`. Binary search: O(log n), well under a
    /// microsecond at 100k targets.
    fn find(&self, addr: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.addr(mid).cmp(addr) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The nodes `addr` is assigned to (empty if it is not in the plan).
    pub fn nodes_of(&self, addr: &str) -> Vec<&str> {
        self.find(addr)
            .map(|i| self.owners_of(i).collect())
            .unwrap_or_default()
    }

    /// The affinity group key of `addr`: `None` without `affinity:`, for an
    /// address not in the plan, or for a target lacking a label of the
    /// template (placed by its own address).
    pub fn group_of(&self, addr: &str) -> Option<&str> {
        let group = *self.groups.get(self.find(addr)?)?;
        let keys = &self.grouping.as_ref()?.keys;
        keys.get(group as usize).map(|k| &**k)
    }

    /// Every address with its nodes, sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        (0..self.len()).map(|i| (self.addr(i), self.owners_of(i)))
    }

    /// Index of `node` in [`Self::nodes`].
    pub fn node_index(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }

    /// Bytes held, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        self.addrs.capacity()
            + self.offsets.capacity() * 4
            + self.owners.capacity() * 2
            + self.groups.capacity() * 4
    }
}

#[cfg(test)]
impl Assignment {
    /// An assignment from `(node, its targets)` lists, for tests.
    pub(crate) fn from_lists(nodes: &[(&str, &[&str])]) -> Assignment {
        let mut addrs: Vec<&str> = nodes.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let targets: Vec<crate::shard::target::Target> = addrs
            .iter()
            .map(|a| crate::shard::target::Target {
                addr: (*a).into(),
                labels: Default::default(),
                weight: 1,
                hash: 0,
            })
            .collect();
        let replicas = addrs
            .iter()
            .map(|a| nodes.iter().filter(|(_, ts)| ts.contains(a)).count())
            .max()
            .unwrap_or(1);
        let plan = crate::shard::plan::Plan {
            service: "s".into(),
            file_type: crate::shard::names::FileType::Json,
            targets: targets.len(),
            replicas,
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(index, (node, ts))| {
                    let idx: Vec<u32> = ts
                        .iter()
                        .map(|t| addrs.iter().position(|a| a == t).unwrap() as u32)
                        .collect();
                    crate::shard::plan::NodePlan {
                        node: node.to_string(),
                        index,
                        file: format!("{node}.json"),
                        count: idx.len(),
                        targets: idx,
                        groups: None,
                    }
                })
                .collect(),
            deferred_moves: 0,
            affinity: None,
            shard_label: None,
        };
        Assignment::from_plan(&targets, &plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::names::FileType;
    use crate::shard::plan::NodePlan;

    fn plan(nodes: Vec<(&str, Vec<u32>)>, replicas: usize) -> Plan {
        Plan {
            service: "s".into(),
            file_type: FileType::Json,
            targets: 0,
            replicas,
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(index, (node, targets))| NodePlan {
                    node: node.into(),
                    index,
                    file: format!("{node}.json"),
                    count: targets.len(),
                    targets,
                    groups: None,
                })
                .collect(),
            deferred_moves: 0,
            affinity: None,
            shard_label: None,
        }
    }

    fn target(addr: &str) -> Target {
        Target {
            addr: addr.into(),
            labels: Default::default(),
            weight: 1,
            hash: 0,
        }
    }

    #[test]
    fn looks_up_every_address_and_nothing_else() {
        let targets: Vec<Target> = ["a:1", "b:1", "c:1", "c:1"].map(target).to_vec();
        let plan = plan(vec![("n1", vec![0, 2, 3]), ("n2", vec![1, 2, 3])], 2);
        let a = Assignment::from_plan(&targets, &plan);
        assert_eq!(a.len(), 3);
        assert_eq!(a.nodes_of("a:1"), vec!["n1"]);
        assert_eq!(a.nodes_of("b:1"), vec!["n2"]);
        assert_eq!(a.nodes_of("c:1"), vec!["n1", "n2"]);
        assert!(a.nodes_of("d:1").is_empty());
        assert!(a.nodes_of("").is_empty());
        let listed: Vec<&str> = a.iter().map(|(addr, _)| addr).collect();
        assert_eq!(listed, vec!["a:1", "b:1", "c:1"]);
        assert_eq!(a.counts, vec![3, 3]);
    }
}
