//! The consistent hash ring: which Prometheus node(s) scrape which target.
//!
//! Pure: no I/O, no clock, no randomness. The same nodes, keys and settings
//! give the same assignment on every machine and every run, so two promshard
//! instances agree and `plan` shows exactly what `once` would do.
//!
//! # Why this layout
//!
//! Users judge a sharder by balance, movement and speed, so each choice here
//! was made by measurement (`promshard ring`, `cargo bench --bench ring`):
//!
//! * **Points.** A node of weight `w` owns `vnodes × w` points on a 64-bit
//!   circle. They are derived from the node's own address only (xxh3 of the
//!   address seeds a splitmix64 sequence), never from the other nodes, so a
//!   node leaving moves only the targets it held and a node joining takes
//!   targets only from the arcs in front of its own points: nothing ever
//!   moves between two nodes that stayed. Raising a node's weight only adds
//!   points, so it also only pulls targets towards that node.
//! * **How many points.** A node's share of the circle is a sum of `vnodes`
//!   random gaps, so its relative error is ≈ `1/√vnodes`: 3.1% at 1024, 1.1%
//!   at 8192. Sampling noise of the targets themselves is `1/√(targets per
//!   node)` (1% for 10k targets per node) and no scheme can beat it; 8192
//!   points per node brings the ring within a few thousandths of rendezvous
//!   hashing (the noise floor) at 3 to 100 nodes while costing 8 bytes per
//!   point (64 KiB per node).
//! * **Lookup.** Points are packed in one `u64` each (44 bits of position,
//!   20 bits of node index) and sorted; a bucket table over the top bits of
//!   the position (≈ 2 points per bucket) turns the lookup into one table
//!   read and a scan of a couple of neighbouring words instead of a binary
//!   search over hundreds of thousands of points. Building sorts by bucket
//!   (counting sort) and then each tiny bucket, which is linear in practice.
//! * **Hash.** Targets are hashed with seedless xxh3-64 ([`hash_key`]), fast
//!   on short `ip:port` strings and identical on every platform.
//!
//! # Bounded loads
//!
//! [`Balance::Bounded`] caps every node at `load_factor ×` its weighted fair
//! share of the total target weight (consistent hashing with bounded loads).
//! To keep it deterministic and to move as little as possible it is a global
//! greedy in order of ring distance: every (target, node) proposal is ranked
//! by the clockwise distance from the target to the node's point, the closest
//! proposals are granted first, and a target refused by a full node walks on
//! to the next node clockwise. A node therefore keeps the targets closest to
//! its points; targets of a removed node, which arrive from farther away, are
//! the ones that walk on, instead of displacing targets that stayed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

/// Low bits of a packed point that hold the node index.
const NODE_BITS: u32 = 20;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
/// Largest number of nodes a ring can hold.
pub const MAX_NODES: usize = NODE_MASK as usize;
/// Largest number of points a ring can hold (index table is `u32`).
pub const MAX_POINTS: usize = u32::MAX as usize;

/// A Prometheus node on the ring; `weight` scales its share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub addr: String,
    pub weight: u32,
}

impl NodeSpec {
    /// A node of weight 1.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            weight: 1,
        }
    }

    /// A node of the given weight.
    pub fn weighted(addr: impl Into<String>, weight: u32) -> Self {
        Self {
            addr: addr.into(),
            weight,
        }
    }
}

/// How targets are spread over the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Plain consistent hashing with virtual nodes: minimal movement,
    /// balance within sampling noise of the targets.
    #[default]
    Consistent,
    /// Consistent hashing with bounded loads: no node above `load_factor` ×
    /// its weighted fair share of the target weight.
    Bounded,
}

/// Ring tuning; the defaults are chosen by measurement (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RingSettings {
    /// `consistent` or `bounded`.
    pub balance: Balance,
    /// Bounded mode only: capacity of a node as a multiple of its weighted
    /// fair share (≥ 1.0).
    pub load_factor: f64,
    /// Points per unit of node weight.
    pub vnodes: u32,
}

/// Default points per unit of node weight (see the module doc).
pub const DEFAULT_VNODES: u32 = 8192;
/// Default bounded-load capacity factor.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.02;

impl Default for RingSettings {
    fn default() -> Self {
        Self {
            balance: Balance::Consistent,
            load_factor: DEFAULT_LOAD_FACTOR,
            vnodes: DEFAULT_VNODES,
        }
    }
}

/// Why no ring or no assignment could be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RingError {
    #[error("no nodes: refusing to assign targets to an empty ring")]
    NoNodes,
    #[error("node {addr}: weight must be at least 1")]
    ZeroWeight { addr: String },
    #[error("ring settings: vnodes must be at least 1")]
    ZeroVnodes,
    #[error("ring settings: load_factor must be a finite number >= 1.0, got {0}")]
    BadLoadFactor(f64),
    #[error("too many nodes: {0} (at most {MAX_NODES})")]
    TooManyNodes(usize),
    #[error("too many ring points: {0} (nodes × weight × vnodes must stay below {MAX_POINTS})")]
    TooManyPoints(u64),
    #[error("{weights} target weights given for {keys} targets")]
    WeightCount { keys: usize, weights: usize },
    #[error("too many targets: {0}")]
    TooManyKeys(usize),
}

/// Result of [`assign`]: `per_node[i]` holds the ascending indices of the
/// keys assigned to `nodes[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub per_node: Vec<Vec<u32>>,
}

/// Hash a key the same way everywhere (seedless xxh3).
pub fn hash_key(key: &str) -> u64 {
    XxHash3_64::oneshot(key.as_bytes())
}

/// splitmix64 finalizer: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Position (full 64 bits) of point `v` of the node whose address hashes
/// to `seed`. Depends on nothing else, which is what makes movement minimal.
fn point_position(seed: u64, v: u64) -> u64 {
    mix64(seed.wrapping_add(v.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// An immutable ring over a fixed node list. Build once per node set and
/// reuse it for every pass; it is `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Ring {
    /// Packed points `(position & !NODE_MASK) | node`, sorted.
    points: Vec<u64>,
    /// `index[b]` = first point whose bucket (`position >> shift`) is ≥ b;
    /// `len = buckets + 1`.
    index: Vec<u32>,
    shift: u32,
    /// Node weights, by node index.
    weights: Vec<u32>,
    settings: RingSettings,
}

impl Ring {
    /// Build the ring; errors on an empty node list or bad settings.
    pub fn new(nodes: &[NodeSpec], settings: &RingSettings) -> Result<Self, RingError> {
        if nodes.is_empty() {
            return Err(RingError::NoNodes);
        }
        if nodes.len() > MAX_NODES {
            return Err(RingError::TooManyNodes(nodes.len()));
        }
        if settings.vnodes == 0 {
            return Err(RingError::ZeroVnodes);
        }
        if !(settings.load_factor.is_finite() && settings.load_factor >= 1.0) {
            return Err(RingError::BadLoadFactor(settings.load_factor));
        }
        let mut total: u64 = 0;
        for node in nodes {
            if node.weight == 0 {
                return Err(RingError::ZeroWeight {
                    addr: node.addr.clone(),
                });
            }
            total += u64::from(node.weight) * u64::from(settings.vnodes);
        }
        if total > MAX_POINTS as u64 {
            return Err(RingError::TooManyPoints(total));
        }
        let total = total as usize;

        // Generate, then sort with one MSD radix pass on the top bits into
        // cache-sized chunks and a comparison sort inside each chunk.
        let mut raw = Vec::with_capacity(total);
        for (i, node) in nodes.iter().enumerate() {
            let seed = hash_key(&node.addr);
            for v in 0..u64::from(node.weight) * u64::from(settings.vnodes) {
                raw.push((point_position(seed, v) & !NODE_MASK) | i as u64);
            }
        }
        let chunk_bits = (usize::BITS - (total / 2048).max(1).leading_zeros() - 1).min(16);
        let chunk_shift = 64 - chunk_bits;
        let mut starts = vec![0usize; (1 << chunk_bits) + 1];
        for &p in &raw {
            starts[(p.checked_shr(chunk_shift).unwrap_or(0)) as usize + 1] += 1;
        }
        for c in 0..1 << chunk_bits {
            starts[c + 1] += starts[c];
        }
        let mut fill = starts.clone();
        let mut points = vec![0u64; total];
        for &p in &raw {
            let slot = &mut fill[(p.checked_shr(chunk_shift).unwrap_or(0)) as usize];
            points[*slot] = p;
            *slot += 1;
        }

        // Within each chunk (cache-resident), counting sort by bucket, then
        // insertion sort of each bucket (about two points), filling the
        // bucket table as we go.
        let bucket_bits = (usize::BITS - (total / 2).max(1).leading_zeros())
            .clamp(chunk_bits.max(1), 64 - NODE_BITS);
        let shift = 64 - bucket_bits;
        let buckets = 1usize << bucket_bits;
        let per_chunk = 1usize << (bucket_bits - chunk_bits);
        let mut index = vec![0u32; buckets + 1];
        let mut counts = vec![0usize; per_chunk + 1];
        for c in 0..1 << chunk_bits {
            let (lo, hi) = (starts[c], starts[c + 1]);
            let base = c * per_chunk;
            counts.iter_mut().for_each(|x| *x = 0);
            for &p in &points[lo..hi] {
                counts[(p >> shift) as usize - base + 1] += 1;
            }
            for b in 0..per_chunk {
                counts[b + 1] += counts[b];
            }
            for b in 0..per_chunk {
                index[base + b] = (lo + counts[b]) as u32;
            }
            let mut at = counts.clone();
            raw.clear();
            raw.extend_from_slice(&points[lo..hi]);
            for &p in &raw {
                let slot = &mut at[(p >> shift) as usize - base];
                points[lo + *slot] = p;
                *slot += 1;
            }
            for b in 0..per_chunk {
                let bucket = &mut points[lo + counts[b]..lo + counts[b + 1]];
                for i in 1..bucket.len() {
                    let mut j = i;
                    while j > 0 && bucket[j - 1] > bucket[j] {
                        bucket.swap(j - 1, j);
                        j -= 1;
                    }
                }
            }
        }
        index[buckets] = total as u32;
        Ok(Self {
            points,
            index,
            shift,
            weights: nodes.iter().map(|n| n.weight).collect(),
            settings: settings.clone(),
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.weights.len()
    }

    /// Number of points on the circle.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// Heap bytes held by the ring (points and bucket table).
    pub fn memory_bytes(&self) -> usize {
        self.points.len() * 8 + self.index.len() * 4 + self.weights.len() * 4
    }

    /// The settings the ring was built with.
    pub fn settings(&self) -> &RingSettings {
        &self.settings
    }

    /// Index of the first point at or clockwise after hash `h`.
    #[inline]
    fn first_point(&self, h: u64) -> usize {
        let key = h & !NODE_MASK;
        let b = (h >> self.shift) as usize;
        let hi = self.index[b + 1] as usize;
        let mut i = self.index[b] as usize;
        while i < hi && self.points[i] < key {
            i += 1;
        }
        if i == self.points.len() { 0 } else { i }
    }

    /// The node a key of hash `h` belongs to (one replica, consistent mode).
    #[inline]
    pub fn node_for_hash(&self, h: u64) -> u32 {
        (self.points[self.first_point(h)] & NODE_MASK) as u32
    }

    /// The node `key` belongs to (one replica, consistent mode).
    pub fn node_for(&self, key: &str) -> u32 {
        self.node_for_hash(hash_key(key))
    }

    /// The `replicas` distinct nodes (fewer if the ring is smaller) for the
    /// key of hash `h`, written to `out` in ring order (consistent mode).
    pub fn nodes_for_hash(&self, h: u64, replicas: usize, out: &mut Vec<u32>) {
        out.clear();
        let want = replicas.min(self.node_count());
        if want == 0 {
            return;
        }
        let start = self.first_point(h);
        let len = self.points.len();
        let mut i = start;
        loop {
            let node = (self.points[i] & NODE_MASK) as u32;
            if !out.contains(&node) {
                out.push(node);
                if out.len() == want {
                    return;
                }
            }
            i += 1;
            if i == len {
                i = 0;
            }
            if i == start {
                return; // unreachable: every node has points
            }
        }
    }

    /// The `replicas` distinct nodes for `key` (consistent mode).
    pub fn nodes_for(&self, key: &str, replicas: usize, out: &mut Vec<u32>) {
        self.nodes_for_hash(hash_key(key), replicas, out);
    }

    /// Assign every key to `min(replicas, nodes)` distinct nodes according
    /// to the ring's settings; `weights[k]` is the load of key `k` (1 if
    /// `None`), used by [`Balance::Bounded`].
    pub fn assign(
        &self,
        keys: &[&str],
        weights: Option<&[u32]>,
        replicas: usize,
    ) -> Result<Assignment, RingError> {
        let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k)).collect();
        self.assign_hashes(&hashes, weights, replicas)
    }

    /// [`Ring::assign`] for pre-hashed keys (`hashes[k] = hash_key(key k)`).
    pub fn assign_hashes(
        &self,
        hashes: &[u64],
        weights: Option<&[u32]>,
        replicas: usize,
    ) -> Result<Assignment, RingError> {
        if hashes.len() > u32::MAX as usize {
            return Err(RingError::TooManyKeys(hashes.len()));
        }
        if let Some(w) = weights
            && w.len() != hashes.len()
        {
            return Err(RingError::WeightCount {
                keys: hashes.len(),
                weights: w.len(),
            });
        }
        let replicas = replicas.max(1).min(self.node_count());
        match self.settings.balance {
            Balance::Consistent => Ok(self.assign_consistent(hashes, replicas)),
            Balance::Bounded => Ok(self.assign_bounded(hashes, weights, replicas)),
        }
    }

    fn assign_consistent(&self, hashes: &[u64], replicas: usize) -> Assignment {
        let n = self.node_count();
        let expect = hashes.len() * replicas / n + 1;
        let mut per_node: Vec<Vec<u32>> = (0..n)
            .map(|_| Vec::with_capacity(expect + expect / 8))
            .collect();
        if replicas == 1 {
            for (k, &h) in hashes.iter().enumerate() {
                per_node[self.node_for_hash(h) as usize].push(k as u32);
            }
        } else {
            let mut chosen = Vec::with_capacity(replicas);
            for (k, &h) in hashes.iter().enumerate() {
                self.nodes_for_hash(h, replicas, &mut chosen);
                for &node in &chosen {
                    per_node[node as usize].push(k as u32);
                }
            }
        }
        Assignment { per_node }
    }

    /// Weighted fair share of each node when keys of total weight
    /// `key_weight` are placed `replicas` times: proportional to node weight,
    /// except that no node can hold a key twice, so no share exceeds
    /// `key_weight` (the excess is shared out among the others).
    pub fn fair_shares(&self, key_weight: u64, replicas: usize) -> Vec<f64> {
        let n = self.node_count();
        let replicas = replicas.clamp(1, n);
        let mut share = vec![0.0; n];
        let mut capped = vec![false; n];
        let mut left = key_weight as f64 * replicas as f64;
        // Water-filling; at most `replicas` rounds can cap a node.
        loop {
            let wsum: f64 = (0..n)
                .filter(|&i| !capped[i])
                .map(|i| f64::from(self.weights[i]))
                .sum();
            let mut newly = false;
            for i in (0..n).filter(|&i| !capped[i]) {
                share[i] = left * f64::from(self.weights[i]) / wsum;
            }
            for i in 0..n {
                if !capped[i] && share[i] > key_weight as f64 {
                    capped[i] = true;
                    share[i] = key_weight as f64;
                    left -= key_weight as f64;
                    newly = true;
                }
            }
            if !newly {
                return share;
            }
        }
    }

    /// Capacity of each node in bounded mode: `load_factor ×` its fair
    /// share ([`Ring::fair_shares`]), never below the fair share rounded up
    /// (so that all load fits).
    pub fn capacities(&self, key_weight: u64, replicas: usize) -> Vec<u64> {
        self.fair_shares(key_weight, replicas)
            .into_iter()
            .map(|fair| ((self.settings.load_factor * fair).floor() as u64).max(fair.ceil() as u64))
            .collect()
    }

    fn assign_bounded(
        &self,
        hashes: &[u64],
        weights: Option<&[u32]>,
        replicas: usize,
    ) -> Assignment {
        let n = self.node_count();
        let m = hashes.len();
        let weight = |k: usize| weights.map_or(1, |w| u64::from(w[k]));
        let caps = self.capacities((0..m).map(weight).sum(), replicas);
        let mut load = vec![0u64; n];
        // chosen[k * replicas ..][..count[k]]: nodes granted to key k.
        let mut chosen = vec![u32::MAX; m * replicas];
        let mut count = vec![0u8; m];
        let len = self.points.len();
        let dist =
            |k: usize, p: usize| (self.points[p] & !NODE_MASK).wrapping_sub(hashes[k] & !NODE_MASK);

        // Proposals (distance, key, point). The first proposal of every key
        // is sorted up front; the few later ones go through a heap. Both
        // are consumed in (distance, key) order, so the result is the
        // global greedy by ring distance.
        let mut first: Vec<(u64, u32, u32)> = (0..m)
            .map(|k| {
                let p = self.first_point(hashes[k]);
                (dist(k, p), k as u32, p as u32)
            })
            .collect();
        first.sort_unstable();
        let mut later: BinaryHeap<Reverse<(u64, u32, u32)>> = BinaryHeap::new();
        let mut spill: Vec<u32> = Vec::new();
        let mut fi = 0;
        loop {
            let take_first = match (first.get(fi), later.peek()) {
                (Some(a), Some(Reverse(b))) => a <= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (_, k, p) = if take_first {
                fi += 1;
                first[fi - 1]
            } else {
                later.pop().map_or((0, 0, 0), |Reverse(e)| e)
            };
            let (k, p) = (k as usize, p as usize);
            let w = weight(k);
            let node = (self.points[p] & NODE_MASK) as usize;
            let mine = &mut chosen[k * replicas..(k + 1) * replicas];
            let c = count[k] as usize;
            if !mine[..c].contains(&(node as u32)) && load[node] + w <= caps[node] {
                load[node] += w;
                mine[c] = node as u32;
                count[k] += 1;
                if count[k] as usize == replicas {
                    continue;
                }
            }
            // Walk on to the next point of a node that is not already this
            // key's and still has room (loads only grow, so a full node
            // would refuse anyway).
            let mine = &chosen[k * replicas..k * replicas + count[k] as usize];
            let mut q = p;
            let mut found = None;
            for _ in 1..len {
                q += 1;
                if q == len {
                    q = 0;
                }
                let nq = (self.points[q] & NODE_MASK) as usize;
                if !mine.contains(&(nq as u32)) && load[nq] + w <= caps[nq] {
                    found = Some(q);
                    break;
                }
            }
            match found {
                Some(q) => later.push(Reverse((dist(k, q), k as u32, q as u32))),
                None => spill.push(k as u32),
            }
        }

        // Stranded keys: the only nodes with room are ones the key already
        // has (distinct replicas), or the key is too heavy for any room
        // left (very uneven target weights). First try one swap: hand a
        // node Y with room a key j from a node Z the stranded key lacks,
        // then give it Z. Failing that, overshoot on the node whose load
        // ratio stays lowest. Rare, and deterministic (scan in key order).
        spill.sort_unstable();
        spill.dedup();
        for &k in &spill {
            let k = k as usize;
            let w = weight(k);
            while (count[k] as usize) < replicas {
                let c = count[k] as usize;
                let has = |j: usize, node: usize| {
                    chosen[j * replicas..j * replicas + count[j] as usize].contains(&(node as u32))
                };
                let mut swap = None;
                'search: for y in (0..n).filter(|&y| load[y] < caps[y]) {
                    for j in
                        (0..m).filter(|&j| j != k && !has(j, y) && load[y] + weight(j) <= caps[y])
                    {
                        for slot in 0..count[j] as usize {
                            let z = chosen[j * replicas + slot] as usize;
                            if !has(k, z) && load[z] - weight(j) + w <= caps[z] {
                                swap = Some((y, j, slot, z));
                                break 'search;
                            }
                        }
                    }
                }
                let node = if let Some((y, j, slot, z)) = swap {
                    chosen[j * replicas + slot] = y as u32;
                    load[y] += weight(j);
                    load[z] -= weight(j);
                    z
                } else {
                    let best = (0..n).filter(|&i| !has(k, i)).min_by(|&a, &b| {
                        let ra = u128::from(load[a] + w) * u128::from(caps[b].max(1));
                        let rb = u128::from(load[b] + w) * u128::from(caps[a].max(1));
                        ra.cmp(&rb).then(a.cmp(&b))
                    });
                    let Some(best) = best else { break };
                    best
                };
                load[node] += w;
                chosen[k * replicas + c] = node as u32;
                count[k] += 1;
            }
        }

        let mut per_node: Vec<Vec<u32>> = (0..n)
            .map(|i| Vec::with_capacity(caps[i].min(m as u64) as usize))
            .collect();
        for k in 0..m {
            for &node in &chosen[k * replicas..k * replicas + count[k] as usize] {
                per_node[node as usize].push(k as u32);
            }
        }
        per_node.iter_mut().for_each(|v| v.shrink_to_fit());
        Assignment { per_node }
    }
}

/// Assign every key to `min(replicas, nodes.len())` distinct nodes.
///
/// `weights[k]` is the load of key `k` (e.g. its expected series count);
/// only [`Balance::Bounded`] uses it. Build a [`Ring`] instead to reuse it
/// across passes.
pub fn assign(
    nodes: &[NodeSpec],
    keys: &[&str],
    weights: Option<&[u32]>,
    replicas: usize,
    settings: &RingSettings,
) -> Result<Assignment, RingError> {
    Ring::new(nodes, settings)?.assign(keys, weights, replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeSpec> {
        (0..n)
            .map(|i| NodeSpec::new(format!("10.0.0.{i}:9090")))
            .collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host{i}:9100")).collect()
    }

    fn counts(a: &Assignment, keys: usize) -> Vec<usize> {
        let mut count = vec![0usize; keys];
        for list in &a.per_node {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "ascending, no duplicates"
            );
            for &k in list {
                count[k as usize] += 1;
            }
        }
        count
    }

    #[test]
    fn empty_ring_is_an_error() {
        let r = assign(&[], &["a:1"], None, 1, &RingSettings::default());
        assert_eq!(r.unwrap_err(), RingError::NoNodes);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = RingSettings::default();
        let zero = [NodeSpec::weighted("a:1", 0)];
        assert!(matches!(
            assign(&zero, &[], None, 1, &s),
            Err(RingError::ZeroWeight { .. })
        ));
        let bad = RingSettings {
            load_factor: 0.5,
            ..s.clone()
        };
        assert!(matches!(
            assign(&nodes(2), &[], None, 1, &bad),
            Err(RingError::BadLoadFactor(_))
        ));
        let r = assign(&nodes(2), &["a:1"], Some(&[1, 2]), 1, &s);
        assert!(matches!(
            r,
            Err(RingError::WeightCount {
                keys: 1,
                weights: 2
            })
        ));
        let nv = RingSettings { vnodes: 0, ..s };
        assert_eq!(
            assign(&nodes(2), &[], None, 1, &nv).unwrap_err(),
            RingError::ZeroVnodes
        );
    }

    #[test]
    fn exactly_r_distinct_nodes() {
        let keys = keys(2000);
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for balance in [Balance::Consistent, Balance::Bounded] {
            let s = RingSettings {
                balance,
                ..RingSettings::default()
            };
            for replicas in 1..=4 {
                let a = assign(&nodes(3), &refs, None, replicas, &s).unwrap();
                let count = counts(&a, keys.len());
                assert!(
                    count.iter().all(|&c| c == replicas.min(3)),
                    "replicas={replicas}"
                );
            }
        }
    }

    #[test]
    fn settings_serde_defaults_and_unknown_fields() {
        let s: RingSettings = serde_yaml_ng::from_str("balance: bounded\n").unwrap();
        assert_eq!(s.balance, Balance::Bounded);
        assert_eq!(s.vnodes, DEFAULT_VNODES);
        assert!(serde_yaml_ng::from_str::<RingSettings>("vnode: 3\n").is_err());
    }

    #[test]
    fn bounded_respects_capacity_with_weights() {
        let keys = keys(5000);
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let weights: Vec<u32> = (0..keys.len() as u32)
            .map(|i| 1 + (i * 7919) % 50)
            .collect();
        let s = RingSettings {
            balance: Balance::Bounded,
            load_factor: 1.05,
            ..RingSettings::default()
        };
        let ring = Ring::new(&nodes(7), &s).unwrap();
        let a = ring.assign(&refs, Some(&weights), 1).unwrap();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let caps = ring.capacities(total, 1);
        for (i, list) in a.per_node.iter().enumerate() {
            let load: u64 = list.iter().map(|&k| u64::from(weights[k as usize])).sum();
            assert!(load <= caps[i], "node {i}: {load} > {}", caps[i]);
        }
        assert!(counts(&a, keys.len()).iter().all(|&c| c == 1));
    }

    #[test]
    fn lookup_matches_binary_search() {
        let ring = Ring::new(
            &nodes(5),
            &RingSettings {
                vnodes: 64,
                ..Default::default()
            },
        )
        .unwrap();
        for i in 0..10_000u64 {
            let h = mix64(i);
            let key = h & !NODE_MASK;
            let j = ring.points.partition_point(|&p| p < key) % ring.points.len();
            assert_eq!(ring.first_point(h), j);
        }
        assert_eq!(ring.first_point(u64::MAX), 0);
        assert_eq!(ring.first_point(0), 0);
    }
}
