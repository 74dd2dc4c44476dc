//! Properties of the placement (issue 8), asserted on seeded synthetic
//! fleets: equality with reference rendezvous hashing, minimal movement,
//! node weights, bounded loads, replicas and determinism.

use promshard::shard::placement::{
    Balance, NodeSpec, Placement, PlacementSettings, Rendezvous, assign, hash_key,
};
use promshard::sim::{
    SimConfig, load_stats, movement, rendezvous_assign, simulate, synthetic_addresses,
    synthetic_nodes, synthetic_weights,
};
use proptest::prelude::*;

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn bounded(load_factor: f64) -> PlacementSettings {
    PlacementSettings {
        balance: Balance::Bounded,
        load_factor,
    }
}

/// Per key, the node addresses it was given.
fn owners<'a>(nodes: &'a [NodeSpec], a: &Placement, keys: usize) -> Vec<Vec<&'a str>> {
    let mut out = vec![Vec::new(); keys];
    for (i, list) in a.per_node.iter().enumerate() {
        for &k in list {
            out[k as usize].push(nodes[i].addr.as_str());
        }
    }
    out
}

fn check_shape(a: &Placement, nodes: usize, keys: usize, replicas: usize) {
    assert_eq!(a.per_node.len(), nodes);
    let mut count = vec![0usize; keys];
    for list in &a.per_node {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "ascending, distinct");
        for &k in list {
            count[k as usize] += 1;
        }
    }
    assert!(
        count.iter().all(|&c| c == replicas.min(nodes)),
        "exactly min(R, N) nodes per key"
    );
}

#[test]
fn ten_nodes_100k_targets_max_over_mean_at_most_1_03() {
    for seed in 1..=4 {
        let r = simulate(&SimConfig {
            seed,
            ..SimConfig::new(10, 100_000)
        })
        .unwrap();
        assert!(r.load.max_over_mean <= 1.03, "seed {seed}: {:?}", r.load);
    }
}

/// The issue's balance bound is "at most 0.015 above rendezvous hashing on
/// the same fleet, 3 to 100 nodes". The placement *is* rendezvous hashing,
/// so the fast paths (integer ranks, own `ln`, top-R selection) must give
/// exactly what the textbook definition gives: excess 0 on every fleet,
/// also with node weights and replicas.
#[test]
fn placement_equals_reference_rendezvous_on_every_fleet() {
    for (nodes, seeds) in [(3usize, 4u64), (10, 4), (30, 4), (100, 6)] {
        for seed in 1..=seeds {
            let addrs = synthetic_addresses(100_000, seed);
            let keys = refs(&addrs);
            let fleet = synthetic_nodes(nodes, seed);
            let ours = assign(&fleet, &keys, None, 1, &PlacementSettings::default()).unwrap();
            let reference = rendezvous_assign(&fleet, &keys, 1).unwrap();
            assert!(ours == reference, "{nodes} nodes, seed {seed}");
            // Sampling noise only (relative σ = √(nodes/targets)): no node
            // 4.5σ above the mean.
            let s = load_stats(&fleet, &ours, None);
            let bound = 1.0 + 4.5 * (nodes as f64 / 100_000.0).sqrt();
            assert!(
                s.max_over_mean <= bound,
                "{nodes} nodes, seed {seed}: {s:?}"
            );
        }
    }
    let addrs = synthetic_addresses(30_000, 7);
    let keys = refs(&addrs);
    let mut fleet = synthetic_nodes(12, 7);
    for (i, n) in fleet.iter_mut().enumerate() {
        n.weight = [1, 2, 5, 1, 3, 1000][i % 6];
    }
    for replicas in [1, 2, 3] {
        let ours = assign(&fleet, &keys, None, replicas, &PlacementSettings::default()).unwrap();
        let reference = rendezvous_assign(&fleet, &keys, replicas).unwrap();
        assert!(ours == reference, "weighted, R={replicas}");
    }
}

#[test]
fn consistent_remove_moves_only_the_removed_nodes_targets() {
    for (nodes, replicas) in [(3, 1), (10, 1), (50, 1), (10, 2), (7, 3)] {
        let r = simulate(&SimConfig {
            replicas,
            ..SimConfig::new(nodes, 20_000)
        })
        .unwrap();
        assert_eq!(
            r.remove.between_others, 0,
            "{nodes} nodes R={replicas}: {:?}",
            r.remove
        );
        assert_eq!(r.remove.moved, r.remove.ideal, "{nodes} nodes R={replicas}");
    }
}

#[test]
fn consistent_add_moves_about_one_over_n_plus_one_all_to_the_new_node() {
    for (nodes, replicas) in [(3, 1), (10, 1), (50, 1), (10, 2)] {
        let r = simulate(&SimConfig {
            replicas,
            ..SimConfig::new(nodes, 100_000)
        })
        .unwrap();
        assert_eq!(r.add.between_others, 0, "{nodes} nodes: {:?}", r.add);
        // Ideal = R·M/(N+1); the new node's share carries sampling and ring
        // noise (≈ 3% at 51 nodes × 2000 targets).
        assert!(
            (0.9..=1.1).contains(&r.add.ratio),
            "{nodes} nodes R={replicas}: {:?}",
            r.add
        );
    }
}

#[test]
fn node_share_follows_node_weight_within_5_percent() {
    let addrs = synthetic_addresses(100_000, 3);
    let keys = refs(&addrs);
    let mut fleet = synthetic_nodes(8, 3);
    let weights = [1u32, 2, 3, 1, 4, 1, 2, 1];
    for (n, w) in fleet.iter_mut().zip(weights) {
        n.weight = w;
    }
    let a = assign(&fleet, &keys, None, 1, &PlacementSettings::default()).unwrap();
    let s = load_stats(&fleet, &a, None);
    assert!(s.max_over_mean <= 1.05 && s.min_over_mean >= 0.95, "{s:?}");
}

#[test]
fn raising_a_weight_only_pulls_targets_to_that_node() {
    let addrs = synthetic_addresses(20_000, 4);
    let keys = refs(&addrs);
    let fleet = synthetic_nodes(6, 4);
    let mut heavier = fleet.clone();
    heavier[2].weight = 2;
    let s = PlacementSettings::default();
    let before = assign(&fleet, &keys, None, 1, &s).unwrap();
    let after = assign(&heavier, &keys, None, 1, &s).unwrap();
    let (moved, between) = movement(
        (&fleet, &before),
        (&heavier, &after),
        keys.len(),
        &fleet[2].addr,
    );
    assert_eq!(between, 0);
    assert!(moved > 0);
}

#[test]
fn bounded_keeps_every_node_within_load_factor() {
    for (nodes, tw) in [(10, false), (100, false), (10, true), (30, true)] {
        let addrs = synthetic_addresses(100_000, 5);
        let keys = refs(&addrs);
        let weights = tw.then(|| synthetic_weights(keys.len(), 5));
        let mut fleet = synthetic_nodes(nodes, 5);
        fleet[0].weight = 2; // and a bigger server
        let a = assign(&fleet, &keys, weights.as_deref(), 1, &bounded(1.02)).unwrap();
        check_shape(&a, nodes, keys.len(), 1);
        let s = load_stats(&fleet, &a, weights.as_deref());
        // Loads are integers: allow one target (or one target weight) of rounding.
        let slack = if tw { 20_000.0 / s.mean } else { 1.0 / s.mean };
        assert!(
            s.max_over_mean <= 1.02 + slack,
            "{nodes} nodes, weights {tw}: {s:?}"
        );
    }
}

/// Bounded loads at load factor 1.02: every node within the factor, and on
/// removing or adding one node at most 1.15× the ideal movement and at most
/// 2% of targets between nodes that stayed; up to 100 nodes, with and
/// without target weights (series counts), 8 fleets each.
#[test]
fn bounded_movement_on_remove_and_add() {
    for (nodes, target_weights) in [
        (3usize, false),
        (10, false),
        (30, false),
        (100, false),
        (10, true),
        (100, true),
    ] {
        for seed in 1..=8 {
            let r = simulate(&SimConfig {
                seed,
                settings: bounded(1.02),
                target_weights,
                ..SimConfig::new(nodes, 100_000)
            })
            .unwrap();
            let unit = if target_weights { 20_000.0 } else { 1.0 };
            for m in [&r.remove, &r.add] {
                let case = format!("{nodes} nodes, weights {target_weights}, seed {seed}: {m:?}");
                assert!(m.ratio <= 1.15, "{case}");
                assert!(m.between_others_frac <= 0.02, "{case}");
                assert!(
                    m.load_after.max_over_mean <= 1.02 + unit / m.load_after.mean,
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn bounded_beats_sampling_noise_at_100_nodes() {
    let plain = simulate(&SimConfig::new(100, 100_000)).unwrap();
    let r = simulate(&SimConfig {
        settings: bounded(1.02),
        ..SimConfig::new(100, 100_000)
    })
    .unwrap();
    assert!(
        plain.load.max_over_mean > 1.04,
        "noise floor {:?}",
        plain.load
    );
    assert!(r.load.max_over_mean <= 1.02, "{:?}", r.load);
}

/// Bounded mode with room to spare is the plain assignment.
#[test]
fn bounded_without_overflow_is_the_plain_assignment() {
    let addrs = synthetic_addresses(50_000, 8);
    let keys = refs(&addrs);
    let fleet = synthetic_nodes(5, 8);
    let plain = assign(&fleet, &keys, None, 2, &PlacementSettings::default()).unwrap();
    let roomy = assign(&fleet, &keys, None, 2, &bounded(1.5)).unwrap();
    assert!(plain == roomy);
}

#[test]
fn replica_leaving_moves_only_the_replica_it_held() {
    for balance in [Balance::Consistent] {
        let s = PlacementSettings {
            balance,
            ..PlacementSettings::default()
        };
        let addrs = synthetic_addresses(20_000, 6);
        let keys = refs(&addrs);
        let fleet = synthetic_nodes(9, 6);
        let gone = fleet[4].addr.clone();
        let rest: Vec<NodeSpec> = fleet.iter().filter(|n| n.addr != gone).cloned().collect();
        let before = assign(&fleet, &keys, None, 3, &s).unwrap();
        let after = assign(&rest, &keys, None, 3, &s).unwrap();
        check_shape(&after, rest.len(), keys.len(), 3);
        let (old, new) = (
            owners(&fleet, &before, keys.len()),
            owners(&rest, &after, keys.len()),
        );
        for (o, n) in old.iter().zip(&new) {
            let kept: Vec<&&str> = o.iter().filter(|a| **a != gone).collect();
            assert!(kept.iter().all(|a| n.contains(a)), "{o:?} -> {n:?}");
            let added = n.iter().filter(|a| !o.contains(a)).count();
            assert_eq!(
                added,
                usize::from(o.contains(&gone.as_str())),
                "{o:?} -> {n:?}"
            );
        }
    }
}

#[test]
fn hashes_and_assignment_are_stable_across_machines() {
    // Golden values: a change here changes every deployment's shards.
    assert_eq!(hash_key("10.0.0.1:9100"), GOLDEN_HASH);
    let fleet = synthetic_nodes(5, 1);
    let addrs = synthetic_addresses(8, 1);
    let ring = Rendezvous::new(&fleet, &PlacementSettings::default()).unwrap();
    let got: Vec<u32> = addrs.iter().map(|a| ring.node_for(a)).collect();
    assert_eq!(got, GOLDEN_NODES);
    // Weighted fleets go through promshard's own `ln`.
    let mut weighted = fleet.clone();
    for (i, n) in weighted.iter_mut().enumerate() {
        n.weight = 1 + i as u32 * 2;
    }
    let ring = Rendezvous::new(&weighted, &PlacementSettings::default()).unwrap();
    let got: Vec<u32> = addrs.iter().map(|a| ring.node_for(a)).collect();
    assert_eq!(got, GOLDEN_WEIGHTED);
}

const GOLDEN_HASH: u64 = 7_696_244_636_959_384_986;
const GOLDEN_NODES: [u32; 8] = [1, 1, 4, 3, 0, 3, 1, 4];
const GOLDEN_WEIGHTED: [u32; 8] = [3, 3, 4, 3, 3, 3, 1, 4];

#[test]
fn synthetic_fleet_is_deterministic_sorted_and_unique() {
    let a = synthetic_addresses(5000, 9);
    assert_eq!(a, synthetic_addresses(5000, 9));
    assert_ne!(a, synthetic_addresses(5000, 10));
    assert_eq!(a.len(), 5000);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert!(
        a.iter().all(|t| t.parse::<std::net::SocketAddr>().is_ok()),
        "ip:port"
    );
    let n = synthetic_nodes(50, 9);
    assert_eq!(n.len(), 50);
    assert!(n.windows(2).all(|w| w[0].addr < w[1].addr));
}

#[test]
fn simulator_report_serializes() {
    let r = simulate(&SimConfig {
        replicas: 2,
        ..SimConfig::new(4, 2000)
    })
    .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "load",
        "remove",
        "add",
        "config",
        "hashmod",
        "placement_bytes",
    ] {
        assert!(v.get(key).is_some(), "{key}");
    }
    assert_eq!(r.load.mean, 1000.0);
    assert!(!promshard::sim::render_text(&r).is_empty());
}

fn arb_case() -> impl Strategy<Value = (Vec<NodeSpec>, Vec<String>, Vec<u32>, usize, bool)> {
    (
        prop::collection::btree_map("[a-z]{1,6}:[0-9]{2,4}", 1u32..4, 1..9),
        prop::collection::btree_set("[a-z0-9.]{1,12}:[0-9]{1,5}", 0..300),
        1usize..5,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(nodes, keys, replicas, bounded, wseed)| {
            let nodes: Vec<NodeSpec> = nodes
                .into_iter()
                .map(|(a, w)| NodeSpec::weighted(a, w))
                .collect();
            let keys: Vec<String> = keys.into_iter().collect();
            let weights = keys
                .iter()
                .map(|k| 1 + ((hash_key(k) ^ wseed) % 7) as u32)
                .collect();
            (nodes, keys, weights, replicas, bounded)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any fleet, any keys, either mode: exactly min(R, N) distinct nodes
    /// per key, ascending lists, same answer twice, and a key's nodes do
    /// not depend on which other keys are present (consistent mode).
    #[test]
    fn assignment_shape_and_determinism((nodes, keys, weights, replicas, bounded_mode) in arb_case()) {
        let s = PlacementSettings {
            balance: if bounded_mode { Balance::Bounded } else { Balance::Consistent },
            ..PlacementSettings::default()
        };
        let k = refs(&keys);
        let a = assign(&nodes, &k, Some(&weights), replicas, &s).unwrap();
        check_shape(&a, nodes.len(), keys.len(), replicas);
        prop_assert_eq!(&a, &assign(&nodes, &k, Some(&weights), replicas, &s).unwrap());
        if !bounded_mode && keys.len() > 1 {
            let half: Vec<&str> = k.iter().step_by(2).copied().collect();
            let b = assign(&nodes, &half, None, replicas, &s).unwrap();
            let (full, part) = (owners(&nodes, &a, k.len()), owners(&nodes, &b, half.len()));
            for (j, o) in part.iter().enumerate() {
                prop_assert_eq!(o, &full[2 * j]);
            }
        }
    }

    /// Bounded mode with unit weights never exceeds any node's capacity.
    #[test]
    fn bounded_never_exceeds_capacity((nodes, keys, _w, replicas, _b) in arb_case(), lf in 1.0f64..1.5) {
        let ring = Rendezvous::new(&nodes, &bounded(lf)).unwrap();
        let a = ring.assign(&refs(&keys), None, replicas).unwrap();
        let caps = ring.capacities(keys.len() as u64, replicas);
        for (list, cap) in a.per_node.iter().zip(caps) {
            prop_assert!(list.len() as u64 <= cap);
        }
    }
}

/// Series-weighted fleets (`--weights lognormal:5.5,1.2`: median ≈ 245
/// series, a long tail into the tens of thousands), bounded at 1.02: each
/// node within the factor plus one target's weight, and on removing or
/// adding a node at most 1.15× the ideal movement, almost nothing between
/// nodes that stayed.
#[test]
fn series_weighted_fleets_stay_balanced_and_move_little() {
    use promshard::sim::WeightDist;
    for nodes in [10usize, 100] {
        for seed in 1..=4 {
            let r = simulate(&SimConfig {
                seed,
                settings: bounded(1.02),
                weight_dist: Some(WeightDist::LogNormal {
                    mu: 5.5,
                    sigma: 1.2,
                }),
                ..SimConfig::new(nodes, 100_000)
            })
            .unwrap();
            let heaviest = WeightDist::LogNormal {
                mu: 5.5,
                sigma: 1.2,
            }
            .sample(100_000, seed)
            .into_iter()
            .max()
            .unwrap_or(1) as f64;
            assert!(
                r.load.max_over_mean <= 1.02 + heaviest / r.load.mean,
                "{nodes} nodes, seed {seed}: {:?}",
                r.load
            );
            for m in [&r.remove, &r.add] {
                let case = format!("{nodes} nodes, seed {seed}: {m:?}");
                assert!(m.ratio <= 1.15, "{case}");
                assert!(m.between_others_frac <= 0.02, "{case}");
            }
        }
    }
}
