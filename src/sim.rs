//! `promshard rendezvous`: a placement simulator for operators sizing a pool.
//!
//! It answers the three questions people choose a sharder by, on a fleet
//! that looks like theirs: how evenly are targets spread, how many move when
//! a Prometheus node leaves or joins, and how much of that is avoidable. The
//! fleet is synthetic but realistic (`ip:port` targets in /24 subnets with
//! the usual exporter ports) and comes from a seeded generator, so a run is
//! reproducible and two operators comparing settings see the same numbers.
//!
//! For comparison the report also shows what Prometheus `hashmod` (modulo
//! hashing) does on the same fleet and the same changes.
//!
//! [`simulate`] is pure and returns a serializable [`SimReport`]; [`main`]
//! only prints it.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use crate::shard::placement::{
    Balance, NodeSpec, Placement, PlacementError, PlacementSettings, Rendezvous, hash_key,
};

/// Arguments of `promshard rendezvous`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Number of Prometheus nodes.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Number of synthetic targets.
    #[arg(long, default_value_t = 100_000)]
    pub targets: usize,
    /// Replicas per target.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// `consistent` (minimal movement) or `bounded` (load capped at
    /// load-factor × fair share).
    #[arg(long, value_enum, default_value_t = BalanceArg::Consistent)]
    pub balance: BalanceArg,
    /// Bounded mode: node capacity as a multiple of its fair share.
    #[arg(long, default_value_t = crate::shard::placement::DEFAULT_LOAD_FACTOR)]
    pub load_factor: f64,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Node weights, comma separated, repeated over the nodes (e.g. `1,2`).
    #[arg(long, value_delimiter = ',')]
    pub node_weights: Vec<u32>,
    /// Give targets synthetic weights (series counts, long-tailed) and
    /// balance load instead of target count.
    #[arg(long)]
    pub target_weights: bool,
    /// Target weights (series per target) from a distribution,
    /// `lognormal:MU,SIGMA` (of ln series, e.g. `lognormal:6,1.5`), or from
    /// a file, `file:PATH` (one number per line, repeated over the targets).
    #[arg(long, value_name = "lognormal:MU,SIGMA|file:PATH")]
    pub weights: Option<String>,
    /// Place affinity groups instead of targets: the targets are spread
    /// over this many groups, each placed whole (see `affinity:`), with
    /// log-normal sizes (σ = 1: most groups small, a few ten times the
    /// median) unless `--group-sizes` says otherwise.
    #[arg(long)]
    pub groups: Option<usize>,
    /// Sizes of the groups (targets per group), `uniform:MIN,MAX`,
    /// `lognormal:MU,SIGMA` or `file:PATH`; `--targets` is then their sum.
    #[arg(long, value_name = "uniform:MIN,MAX|lognormal:MU,SIGMA|file:PATH")]
    pub group_sizes: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--balance` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BalanceArg {
    Consistent,
    Bounded,
}

impl From<BalanceArg> for Balance {
    fn from(b: BalanceArg) -> Self {
        match b {
            BalanceArg::Consistent => Balance::Consistent,
            BalanceArg::Bounded => Balance::Bounded,
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    pub nodes: usize,
    pub targets: usize,
    pub replicas: usize,
    pub seed: u64,
    pub settings: PlacementSettings,
    /// Node weights, repeated over the nodes; empty = all 1.
    pub node_weights: Vec<u32>,
    /// Synthetic target weights instead of weight 1.
    pub target_weights: bool,
    /// Target weights from a distribution or a list (wins over
    /// `target_weights`).
    pub weight_dist: Option<WeightDist>,
    /// Place this many affinity groups of targets instead of targets.
    pub groups: Option<usize>,
    /// Targets per group; default log-normal (σ = 1) around
    /// `targets / groups`.
    pub group_sizes: Option<WeightDist>,
}

/// Where simulated target weights come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WeightDist {
    /// `exp(N(mu, sigma))`: series counts are roughly log-normal.
    LogNormal { mu: f64, sigma: f64 },
    /// Uniform integers in `min..=max`.
    Uniform { min: u32, max: u32 },
    /// Given weights, repeated over the targets.
    List {
        count: usize,
        #[serde(skip)]
        weights: Vec<u32>,
    },
}

impl WeightDist {
    /// Parse `lognormal:MU,SIGMA`, `uniform:MIN,MAX` or `file:PATH`.
    pub fn parse(spec: &str) -> Result<WeightDist, String> {
        if let Some(rest) = spec.strip_prefix("uniform:") {
            let range = rest.split_once(',').and_then(|(a, b)| {
                Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
            });
            return match range {
                Some((min, max)) if 1 <= min && min <= max => Ok(WeightDist::Uniform { min, max }),
                _ => Err(format!(
                    "{spec:?}: want uniform:MIN,MAX with 1 <= MIN <= MAX"
                )),
            };
        }
        if let Some(rest) = spec.strip_prefix("lognormal:") {
            let (mu, sigma) = rest
                .split_once(',')
                .ok_or_else(|| format!("{spec:?}: want lognormal:MU,SIGMA"))?;
            let num = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("{spec:?}: {v:?}: {e}"))
            };
            let (mu, sigma) = (num(mu)?, num(sigma)?);
            if !(sigma >= 0.0 && sigma.is_finite() && mu.is_finite()) {
                return Err(format!("{spec:?}: sigma must be >= 0 and both finite"));
            }
            return Ok(WeightDist::LogNormal { mu, sigma });
        }
        if let Some(path) = spec.strip_prefix("file:") {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let weights = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    l.trim()
                        .parse::<u32>()
                        .map(|w| w.max(1))
                        .map_err(|e| format!("{path}:{}: {l:?}: {e}", i + 1))
                })
                .collect::<Result<Vec<u32>, String>>()?;
            if weights.is_empty() {
                return Err(format!("{path}: no weights"));
            }
            return Ok(WeightDist::List {
                count: weights.len(),
                weights,
            });
        }
        Err(format!(
            "{spec:?}: want lognormal:MU,SIGMA, uniform:MIN,MAX or file:PATH"
        ))
    }

    /// `n` weights, reproducible from `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<u32> {
        match self {
            WeightDist::List { weights, .. } => weights.iter().copied().cycle().take(n).collect(),
            WeightDist::Uniform { min, max } => {
                let mut rng = SplitMix64(seed ^ 0x0075_6e69_666f_726d);
                let span = u64::from(max - min) + 1;
                (0..n).map(|_| min + rng.below(span) as u32).collect()
            }
            WeightDist::LogNormal { mu, sigma } => {
                let mut rng = SplitMix64(seed ^ 0x6c6f_676e_6f72);
                let mut unit = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (0..n)
                    .map(|_| {
                        // Box–Muller: one standard normal from two uniforms.
                        let z = (-2.0 * unit().ln()).sqrt()
                            * (2.0 * std::f64::consts::PI * unit()).cos();
                        (mu + sigma * z).exp().clamp(1.0, f64::from(u32::MAX)) as u32
                    })
                    .collect()
            }
        }
    }
}

impl SimConfig {
    /// `nodes` × `targets`, one replica, default ring settings, seed 1.
    pub fn new(nodes: usize, targets: usize) -> Self {
        Self {
            nodes,
            targets,
            replicas: 1,
            seed: 1,
            settings: PlacementSettings::default(),
            node_weights: Vec::new(),
            target_weights: false,
            weight_dist: None,
            groups: None,
            group_sizes: None,
        }
    }

    /// Targets per group (with `groups`), reproducible from the seed.
    pub fn group_sizes(&self) -> Option<Vec<u32>> {
        let groups = self.groups?;
        let dist = self.group_sizes.clone().unwrap_or_else(|| {
            // Mean of exp(N(mu, 1)) is exp(mu + 1/2).
            let mean = (self.targets as f64 / groups.max(1) as f64).max(1.0);
            WeightDist::LogNormal {
                mu: mean.ln() - 0.5,
                sigma: 1.0,
            }
        });
        Some(dist.sample(groups, self.seed))
    }
}

/// The affinity groups of a simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupStats {
    pub groups: usize,
    pub targets: u64,
    pub smallest: u32,
    pub median: u32,
    pub largest: u32,
    /// Groups heavier than a node's fair share: placed whole, flagged.
    pub oversized: usize,
}

/// Spread of load over nodes. Load is the number of (target, replica)
/// placements, or their weight with target weights.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadStats {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
    /// Busiest node relative to its weighted fair share (= max/mean when
    /// all nodes weigh the same).
    pub max_over_mean: f64,
    /// Idlest node relative to its weighted fair share.
    pub min_over_mean: f64,
    /// Standard deviation of load / fair share, relative (0.01 = 1%).
    pub rel_stddev: f64,
    pub stddev: f64,
}

/// Effect of one membership change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MoveStats {
    /// The node removed or added.
    pub node: String,
    /// Placements that changed node (a replica that moved counts once).
    pub moved: u64,
    /// Least possible: the removed node's placements, or the added node's
    /// fair share.
    pub ideal: u64,
    /// `moved / ideal`.
    pub ratio: f64,
    /// Placements that moved between two nodes present before and after.
    pub between_others: u64,
    /// `between_others` as a fraction of all placements.
    pub between_others_frac: f64,
    /// Load spread after the change.
    pub load_after: LoadStats,
}

/// The simulator's answer; see [`simulate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    pub config: SimConfig,
    /// Heap bytes of the placement (8 bytes of seed + 4 of weight per node).
    pub placement_bytes: usize,
    pub load: LoadStats,
    pub remove: MoveStats,
    pub add: MoveStats,
    /// Prometheus `hashmod` (modulo hashing, one replica, weights ignored)
    /// on the same fleet and changes, for comparison.
    pub hashmod: HashmodStats,
    /// With `groups`: the groups placed (keys, moves and hashmod then
    /// count groups; load counts targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupStats>,
}

/// Modulo hashing (`hash % N`, as Prometheus `hashmod` relabelling does) on
/// the simulated fleet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HashmodStats {
    pub max_over_mean: f64,
    /// Fraction of targets that change node when the node is removed.
    pub remove_moved_frac: f64,
    /// Fraction of targets that change node when the node is added.
    pub add_moved_frac: f64,
}

/// splitmix64: a tiny deterministic generator (no dependency, same
/// sequence on every platform).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; slight bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }
}

/// Exporter ports and how often a host runs one (per mille).
const PORTS: [(u16, u64); 7] = [
    (9100, 1000), // node_exporter: every host
    (8080, 250),  // application metrics
    (9113, 120),  // nginx
    (9104, 100),  // mysqld
    (9187, 80),   // postgres
    (9121, 60),   // redis
    (9256, 150),  // process-exporter
];

/// `n` distinct, realistic scrape targets (`ip:port`), sorted, from `seed`.
///
/// Hosts sit in 10.x.y.0/24 subnets, numbered from .1 upwards with gaps,
/// each running node_exporter and often a few other exporters — the
/// near-sequential addresses real fleets have, which is what a poor hash
/// gets wrong.
pub fn synthetic_addresses(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed ^ 0x7072_6f6d_7368_6172);
    let mut out = Vec::with_capacity(n);
    let mut block = rng.below(1 << 14);
    'fill: while out.len() < n {
        let (b, c) = ((block >> 8) & 0xff, block & 0xff);
        block += 1 + rng.below(3); // some subnets are elsewhere
        let hosts = 16 + rng.below(239); // 16..=254 used addresses
        for host in 1..=hosts {
            if rng.below(10) == 0 {
                continue; // decommissioned
            }
            for &(port, per_mille) in &PORTS {
                if rng.below(1000) < per_mille {
                    out.push(format!("10.{b}.{c}.{host}:{port}"));
                    if out.len() == n {
                        break 'fill;
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `n` Prometheus nodes (`10.250.x.y:9090`, weight 1), sorted by address.
pub fn synthetic_nodes(n: usize, seed: u64) -> Vec<NodeSpec> {
    let mut rng = SplitMix64(seed ^ 0x6e6f_6465_7321);
    let base = rng.below(1 << 12);
    let mut nodes: Vec<NodeSpec> = (0..n as u64)
        .map(|i| {
            let h = base + i * 7; // spaced out like racks
            NodeSpec::new(format!(
                "10.{}.{}.{}:9090",
                240 + (h >> 16) % 16,
                (h >> 8) & 0xff,
                h & 0xff
            ))
        })
        .collect();
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    nodes.dedup_by(|a, b| a.addr == b.addr);
    nodes
}

/// Long-tailed synthetic target weights (series per target, 50..≈20k).
pub fn synthetic_weights(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed ^ 0x7765_6967_6874);
    (0..n)
        .map(|_| {
            // Pareto-like: most targets small, a few big.
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (50.0 / (1.0 - u * 0.9975).sqrt()).min(20_000.0) as u32
        })
        .collect()
}

/// Rendezvous (highest-random-weight) hashing written straight from its
/// definition, as the reference for [`crate::shard::placement`]'s fast paths: each
/// target goes to the `replicas` nodes with the highest `w / -ln(u)`, `u`
/// from [`crate::shard::placement::draw`], ties to the lower node index, using the
/// platform's `ln` (the ring uses its own).
pub fn rendezvous_assign(
    nodes: &[NodeSpec],
    keys: &[&str],
    replicas: usize,
) -> Result<Placement, PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let seeds: Vec<u64> = nodes.iter().map(|n| hash_key(&n.addr)).collect();
    let replicas = replicas.clamp(1, nodes.len());
    let mut per_node = vec![Vec::new(); nodes.len()];
    let mut scored: Vec<(f64, usize)> = Vec::with_capacity(nodes.len());
    for (k, key) in keys.iter().enumerate() {
        let h = hash_key(key);
        scored.clear();
        for (i, node) in nodes.iter().enumerate() {
            let u = (crate::shard::placement::draw(h, seeds[i]) as f64 + 0.5) / (1u64 << 53) as f64;
            scored.push((f64::from(node.weight.max(1)) / -u.ln(), i));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in &scored[..replicas] {
            per_node[i].push(k as u32);
        }
    }
    Ok(Placement { per_node })
}

/// Modulo hashing over `nodes`: key `k` goes to node `hash % N`.
pub fn hashmod_assign(nodes: usize, hashes: &[u64]) -> Placement {
    let mut per_node = vec![Vec::new(); nodes];
    for (k, &h) in hashes.iter().enumerate() {
        per_node[(h % nodes as u64) as usize].push(k as u32);
    }
    Placement { per_node }
}

/// Load statistics of an assignment (`weights[k]` per key, 1 if `None`).
pub fn load_stats(nodes: &[NodeSpec], a: &Placement, weights: Option<&[u32]>) -> LoadStats {
    let loads: Vec<u64> = a
        .per_node
        .iter()
        .map(|list| {
            list.iter()
                .map(|&k| weights.map_or(1, |w| u64::from(w[k as usize])))
                .sum()
        })
        .collect();
    let total: u64 = loads.iter().sum();
    let wsum: u64 = nodes.iter().map(|n| u64::from(n.weight.max(1))).sum();
    let n = loads.len().max(1) as f64;
    let mean = total as f64 / n;
    // Load relative to weighted fair share.
    let rel: Vec<f64> = loads
        .iter()
        .zip(nodes)
        .map(|(&l, node)| {
            let fair = total as f64 * f64::from(node.weight.max(1)) / wsum.max(1) as f64;
            if fair > 0.0 { l as f64 / fair } else { 1.0 }
        })
        .collect();
    let var = loads
        .iter()
        .map(|&l| (l as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let rel_var = rel.iter().map(|r| (r - 1.0).powi(2)).sum::<f64>() / n;
    LoadStats {
        min: loads.iter().copied().min().unwrap_or(0),
        mean,
        max: loads.iter().copied().max().unwrap_or(0),
        max_over_mean: rel.iter().copied().fold(0.0, f64::max),
        min_over_mean: rel.iter().copied().fold(f64::INFINITY, f64::min).min(1.0e9),
        rel_stddev: rel_var.sqrt(),
        stddev: var.sqrt(),
    }
}

/// Per key, the sorted addresses of its nodes.
fn placements<'a>(nodes: &'a [NodeSpec], a: &Placement, keys: usize) -> Vec<Vec<&'a str>> {
    let mut out: Vec<Vec<&str>> = vec![Vec::new(); keys];
    for (i, list) in a.per_node.iter().enumerate() {
        for &k in list {
            out[k as usize].push(nodes[i].addr.as_str());
        }
    }
    out.iter_mut().for_each(|v| v.sort_unstable());
    out
}

/// Movement between two assignments of the same keys: (placements that
/// changed node, of which between nodes other than `changed`).
pub fn movement(
    before: (&[NodeSpec], &Placement),
    after: (&[NodeSpec], &Placement),
    keys: usize,
    changed: &str,
) -> (u64, u64) {
    let old = placements(before.0, before.1, keys);
    let new = placements(after.0, after.1, keys);
    let (mut moved, mut between) = (0u64, 0u64);
    for (o, n) in old.iter().zip(&new) {
        let gained: Vec<&&str> = n.iter().filter(|a| !o.contains(a)).collect();
        let lost = o
            .iter()
            .filter(|a| **a != changed && !n.contains(a))
            .count();
        moved += gained.len() as u64;
        // A placement moved between two other nodes when a node other than
        // `changed` lost it and another one other than `changed` gained it.
        let gained_others = gained.iter().filter(|a| ***a != changed).count();
        between += lost.min(gained_others) as u64;
    }
    (moved, between)
}

/// Apply node weights (repeated over the list) to `nodes`.
fn weigh(nodes: &mut [NodeSpec], weights: &[u32]) {
    if weights.is_empty() {
        return;
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        n.weight = weights[i % weights.len()];
    }
}

/// Run the simulation: balance on a synthetic fleet, then the effect of
/// removing its middle node and of adding one node. Pure and deterministic.
pub fn simulate(cfg: &SimConfig) -> Result<SimReport, PlacementError> {
    if cfg.nodes == 0 {
        return Err(PlacementError::NoNodes);
    }
    let keys = SimKeys::new(cfg);
    let tw = keys.weights.as_deref();
    let f = Fleets::new(cfg);
    let ring = Rendezvous::new(&f.fleet, &cfg.settings)?;
    let base = ring.assign_hashes(&keys.hashes, tw, cfg.replicas)?;
    let load = load_stats(&f.fleet, &base, tw);
    let b = Baseline {
        cfg,
        hashes: &keys.hashes,
        weights: tw,
        fleet: &f.fleet,
        placed: base.per_node.iter().map(|l| l.len() as u64).sum(),
        base,
    };
    let idx = f
        .fleet
        .iter()
        .position(|n| n.addr == f.removed.addr)
        .unwrap_or(0);
    let remove = b.change(&f.smaller, &f.removed, b.base.per_node[idx].len() as u64)?;
    let wsum: u64 = f.larger.iter().map(|n| u64::from(n.weight)).sum();
    let add_ideal = (b.placed as f64 * f64::from(f.spare.weight) / wsum as f64).round() as u64;
    let add = b.change(&f.larger, &f.spare, add_ideal)?;
    Ok(SimReport {
        config: cfg.clone(),
        placement_bytes: ring.memory_bytes(),
        load,
        remove,
        add,
        hashmod: hashmod_stats(&f, &keys.hashes, tw),
        groups: group_stats(keys.sizes, keys.targets, tw, cfg.replicas, f.fleet.len()),
    })
}

/// The keys a simulation places, with their weights: one per target, or
/// one per affinity group.
struct SimKeys {
    /// Targets in the fleet (with groups, the sum of the group sizes).
    targets: usize,
    hashes: Vec<u64>,
    weights: Option<Vec<u32>>,
    /// Targets per group, with groups.
    sizes: Option<Vec<u32>>,
}

impl SimKeys {
    fn new(cfg: &SimConfig) -> Self {
        let sizes = cfg.group_sizes();
        let targets = sizes
            .as_ref()
            .map_or(cfg.targets, |s| s.iter().map(|&n| n as usize).sum());
        let addrs = synthetic_addresses(targets, cfg.seed);
        let tw = match &cfg.weight_dist {
            Some(d) => Some(d.sample(addrs.len(), cfg.seed)),
            None => cfg
                .target_weights
                .then(|| synthetic_weights(addrs.len(), cfg.seed)),
        };
        let (hashes, weights) = match &sizes {
            None => (addrs.iter().map(|k| hash_key(k)).collect(), tw),
            Some(sizes) => {
                let (hashes, weights) = group_keys(sizes, tw.as_deref());
                (hashes, Some(weights))
            }
        };
        Self {
            targets,
            hashes,
            weights,
            sizes,
        }
    }
}

/// With groups, the keys placed are the groups: consecutive runs of
/// targets (neighbours, as an application's hosts often are), each
/// weighing its targets' total (its size when targets are unweighted).
fn group_keys(sizes: &[u32], tw: Option<&[u32]>) -> (Vec<u64>, Vec<u32>) {
    let mut at = 0usize;
    let weights = sizes
        .iter()
        .map(|&n| {
            let run = at..at + n as usize;
            at = run.end;
            tw.map_or(n, |w| {
                w[run].iter().fold(0u32, |sum, &x| sum.saturating_add(x))
            })
        })
        .collect();
    let hashes = (0..sizes.len())
        .map(|g| hash_key(&format!("group-{g}")))
        .collect();
    (hashes, weights)
}

/// The simulated fleet and its two changes: without its middle node, and
/// with one spare node more.
struct Fleets {
    fleet: Vec<NodeSpec>,
    removed: NodeSpec,
    smaller: Vec<NodeSpec>,
    spare: NodeSpec,
    larger: Vec<NodeSpec>,
}

impl Fleets {
    /// The fleet plus one spare node; weights follow the generator order.
    fn new(cfg: &SimConfig) -> Self {
        let mut all = synthetic_nodes(cfg.nodes + 1, cfg.seed);
        weigh(&mut all, &cfg.node_weights);
        let spare = all.remove(all.len() / 2 + 1 - usize::from(all.len() < 2));
        let fleet = all;
        let removed = fleet[fleet.len() / 2].clone();
        let smaller: Vec<NodeSpec> = fleet
            .iter()
            .filter(|n| n.addr != removed.addr)
            .cloned()
            .collect();
        let mut larger = fleet.clone();
        larger.push(spare.clone());
        larger.sort_by(|a, b| a.addr.cmp(&b.addr));
        Self {
            fleet,
            removed,
            smaller,
            spare,
            larger,
        }
    }
}

/// The fleet's placement, which each change is measured against.
struct Baseline<'a> {
    cfg: &'a SimConfig,
    hashes: &'a [u64],
    weights: Option<&'a [u32]>,
    fleet: &'a [NodeSpec],
    base: Placement,
    /// Placements in `base` (targets × replicas).
    placed: u64,
}

impl Baseline<'_> {
    /// What changes when the fleet becomes `nodes` (`node` removed or
    /// added), against the least possible, `ideal`.
    fn change(
        &self,
        nodes: &[NodeSpec],
        node: &NodeSpec,
        ideal: u64,
    ) -> Result<MoveStats, PlacementError> {
        let (cfg, tw) = (self.cfg, self.weights);
        let a = if nodes.is_empty() {
            Placement {
                per_node: Vec::new(),
            }
        } else {
            Rendezvous::new(nodes, &cfg.settings)?.assign_hashes(self.hashes, tw, cfg.replicas)?
        };
        let keys = self.hashes.len();
        let (moved, between) = movement((self.fleet, &self.base), (nodes, &a), keys, &node.addr);
        Ok(MoveStats {
            node: node.addr.clone(),
            moved,
            ideal,
            ratio: if ideal > 0 {
                moved as f64 / ideal as f64
            } else {
                0.0
            },
            between_others: between,
            between_others_frac: if self.placed > 0 {
                between as f64 / self.placed as f64
            } else {
                0.0
            },
            load_after: load_stats(nodes, &a, tw),
        })
    }
}

/// Modulo hashing on the same fleet and changes, for comparison: a node's
/// index is its position.
fn hashmod_stats(f: &Fleets, hashes: &[u64], tw: Option<&[u32]>) -> HashmodStats {
    let keys = hashes.len();
    let modulo = |nodes: &[NodeSpec]| hashmod_assign(nodes.len(), hashes);
    let hm_base = modulo(&f.fleet);
    let hm_moved = |nodes: &[NodeSpec], node: &NodeSpec| {
        let (moved, _) = movement(
            (&f.fleet, &hm_base),
            (nodes, &modulo(nodes)),
            keys,
            &node.addr,
        );
        moved as f64 / keys.max(1) as f64
    };
    HashmodStats {
        max_over_mean: load_stats(&f.fleet, &hm_base, tw).max_over_mean,
        remove_moved_frac: hm_moved(&f.smaller, &f.removed),
        add_moved_frac: hm_moved(&f.larger, &f.spare),
    }
}

/// The spread of group sizes and how many groups are too heavy to
/// balance, with groups.
fn group_stats(
    sizes: Option<Vec<u32>>,
    targets: usize,
    tw: Option<&[u32]>,
    replicas: usize,
    nodes: usize,
) -> Option<GroupStats> {
    sizes.map(|mut sizes| {
        let oversized =
            crate::shard::plan::oversized(tw.unwrap_or_default(), replicas, nodes).len();
        sizes.sort_unstable();
        GroupStats {
            groups: sizes.len(),
            targets: targets as u64,
            smallest: sizes.first().copied().unwrap_or(0),
            median: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
            largest: sizes.last().copied().unwrap_or(0),
            oversized,
        }
    })
}

/// Tally of node weights for the text report (`weight → count`).
fn weight_summary(cfg: &SimConfig) -> String {
    if cfg.node_weights.is_empty() {
        return String::new();
    }
    let mut tally: BTreeMap<u32, usize> = BTreeMap::new();
    for i in 0..cfg.nodes {
        *tally
            .entry(cfg.node_weights[i % cfg.node_weights.len()])
            .or_default() += 1;
    }
    let parts: Vec<String> = tally.iter().map(|(w, c)| format!("{c}×w{w}")).collect();
    format!(", node weights {}", parts.join(" "))
}

fn fmt_load(s: &LoadStats) -> String {
    format!(
        "min {}  mean {:.1}  max {}  max/mean {:.4}  min/mean {:.4}  stddev {:.1} ({:.2}%)",
        s.min,
        s.mean,
        s.max,
        s.max_over_mean,
        s.min_over_mean,
        s.stddev,
        s.rel_stddev * 100.0
    )
}

fn fmt_move(verb: &str, m: &MoveStats, unit: &str) -> String {
    format!(
        "{verb} {}: moved {} {unit} (ideal {}, {:.3}×), between other nodes {} ({:.2}%); after: max/mean {:.4}",
        m.node,
        m.moved,
        m.ideal,
        m.ratio,
        m.between_others,
        m.between_others_frac * 100.0,
        m.load_after.max_over_mean
    )
}

/// The text form of a report.
pub fn render_text(r: &SimReport) -> String {
    let c = &r.config;
    let balance = match c.settings.balance {
        Balance::Consistent => "consistent".to_string(),
        Balance::Bounded => format!("bounded (load factor {})", c.settings.load_factor),
    };
    let weighted = c.target_weights || c.weight_dist.is_some();
    let unit = if weighted { "target weight" } else { "targets" };
    let (targets, keys, grouping) = match &r.groups {
        None => (c.targets as u64, "targets", String::new()),
        Some(g) => (
            g.targets,
            "groups",
            format!(
                " in {} affinity groups (sizes {}–{}, median {}; {} heavier than a node's fair share)",
                g.groups, g.smallest, g.largest, g.median, g.oversized
            ),
        ),
    };
    [
        format!(
            "rendezvous: {} nodes, {targets} targets{}{grouping}, replicas {}, balance {balance}, seed {}{}",
            c.nodes,
            if weighted { " (weighted)" } else { "" },
            c.replicas,
            c.seed,
            weight_summary(c)
        ),
        format!("load ({unit} per node): {}", fmt_load(&r.load)),
        fmt_move("remove", &r.remove, keys),
        fmt_move("add   ", &r.add, keys),
        format!(
            "for comparison, hashmod (hash % N) on the same fleet: max/mean {:.4}, \
             remove moves {:.1}%, add moves {:.1}% of {keys}",
            r.hashmod.max_over_mean,
            r.hashmod.remove_moved_frac * 100.0,
            r.hashmod.add_moved_frac * 100.0
        ),
    ]
    .join("\n")
}

/// Run the simulator and print its report.
pub fn main(args: &SimArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    if args.replicas == 0 {
        anyhow::bail!("--replicas must be at least 1");
    }
    if args.node_weights.contains(&0) {
        anyhow::bail!("--node-weights must all be at least 1");
    }
    let cfg = SimConfig {
        nodes: args.nodes,
        targets: args.targets,
        replicas: args.replicas,
        seed: args.seed,
        settings: PlacementSettings {
            balance: args.balance.into(),
            load_factor: args.load_factor,
        },
        node_weights: args.node_weights.clone(),
        target_weights: args.target_weights,
        weight_dist: args
            .weights
            .as_deref()
            .map(WeightDist::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--weights {e}"))?,
        groups: args.groups,
        group_sizes: args
            .group_sizes
            .as_deref()
            .map(WeightDist::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--group-sizes {e}"))?,
    };
    if cfg.group_sizes.is_some() && cfg.groups.is_none() {
        anyhow::bail!("--group-sizes needs --groups N");
    }
    if cfg.groups == Some(0) {
        anyhow::bail!("--groups must be at least 1");
    }
    let started = std::time::Instant::now();
    let report = simulate(&cfg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", render_text(&report));
        println!(
            "(simulated in {:.0} ms)",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// One host of a synthetic CMDB export (see `examples/gen_targets.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticHost {
    pub hostname: String,
    pub ip: String,
    pub env: &'static str,
    pub dc: &'static str,
    pub role: &'static str,
}

/// `n` synthetic hosts, the same on every run: a fixed LCG makes the fleet
/// look irregular (roles, data centres, 20% staging) but reproducible.
pub fn synthetic_inventory(n: usize) -> impl Iterator<Item = SyntheticHost> {
    const ROLES: [&str; 6] = ["web", "api", "db", "cache", "queue", "batch"];
    const DCS: [&str; 4] = ["fra1", "ams1", "lon1", "par1"];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n).map(move |i| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let role = ROLES[(state >> 33) as usize % ROLES.len()];
        let dc = DCS[(state >> 41) as usize % DCS.len()];
        SyntheticHost {
            hostname: format!("{role}-{dc}-{i:07}"),
            ip: format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
            env: if (state >> 50).is_multiple_of(5) {
                "staging"
            } else {
                "prod"
            },
            dc,
            role,
        }
    })
}
