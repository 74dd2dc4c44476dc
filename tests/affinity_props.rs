//! Properties of placement with `affinity:` (issue 19), asserted through
//! the real planning path (`make_plan`: grouping, the ring, expansion) on
//! seeded synthetic fleets: every group on exactly one node set, balance,
//! and movement counted in groups.

use promshard::shard::affinity::Affinity;
use promshard::shard::names::{FileNaming, default_file_name};
use promshard::shard::placement::{Balance, NodeSpec, Placement, PlacementSettings};
use promshard::shard::plan::{Plan, PlanInput, make_plan};
use promshard::shard::target::{RawGroup, Target, normalize};
use promshard::sim::{SplitMix64, movement, synthetic_addresses, synthetic_nodes};
use proptest::prelude::*;

/// `groups` applications of 1..=`max_size` targets each (uniform), every
/// target labelled `app`, plus `unlabelled` targets without the label.
fn fleet(groups: usize, max_size: u64, unlabelled: usize, seed: u64) -> Vec<Target> {
    let mut rng = SplitMix64(seed);
    let sizes: Vec<usize> = (0..groups)
        .map(|_| 1 + rng.below(max_size) as usize)
        .collect();
    let total: usize = sizes.iter().sum();
    let addrs = synthetic_addresses(total + unlabelled, seed);
    let mut raw = Vec::with_capacity(groups + 1);
    let mut at = 0;
    for (g, size) in sizes.into_iter().enumerate() {
        raw.push(RawGroup {
            index: g,
            targets: addrs[at..at + size].to_vec(),
            labels: [("app", format!("app-{g}"))].into_iter().collect(),
            weight: None,
        });
        at += size;
    }
    raw.push(RawGroup {
        index: groups,
        targets: addrs[at..].to_vec(),
        ..RawGroup::default()
    });
    normalize(raw).targets
}

fn plan(
    targets: &[Target],
    nodes: &[NodeSpec],
    ring: &PlacementSettings,
    replicas: usize,
    affinity: &Affinity,
) -> Plan {
    make_plan(
        &PlanInput {
            replicas,
            ring,
            affinity: Some(affinity),
            ..PlanInput::new("svc", nodes, targets)
        },
        |a| Ok(default_file_name(a, FileNaming::Stable)),
    )
    .unwrap()
}

fn settings(balance: Balance) -> PlacementSettings {
    PlacementSettings {
        balance,
        ..PlacementSettings::default()
    }
}

/// The plan as an assignment of groups to nodes, checking on the way that
/// every target of a group is on exactly the group's `min(R, N)` nodes.
fn groups_per_node(p: &Plan, targets: &[Target]) -> Placement {
    let grouping = &p.affinity.as_ref().expect("an affinity plan").grouping;
    let mut nodes_of_target: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    for (i, n) in p.nodes.iter().enumerate() {
        for &t in &n.targets {
            nodes_of_target[t as usize].push(i as u32);
        }
    }
    let mut per_node = vec![Vec::new(); p.nodes.len()];
    for g in 0..grouping.len() {
        let members = grouping.members(g);
        let set = &nodes_of_target[members[0] as usize];
        assert_eq!(set.len(), p.replicas, "group {g} on {set:?}");
        for &t in members {
            assert_eq!(
                &nodes_of_target[t as usize], set,
                "target {t} of group {:?} is elsewhere",
                grouping.keys[g]
            );
        }
        for &n in set {
            per_node[n as usize].push(g as u32);
        }
    }
    for (n, list) in per_node.iter().enumerate() {
        assert_eq!(p.nodes[n].groups, Some(list.len()), "GROUPS of node {n}");
    }
    Placement { per_node }
}

fn max_over_mean(p: &Plan) -> f64 {
    let counts: Vec<usize> = p.nodes.iter().map(|n| n.count).collect();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    *counts.iter().max().unwrap() as f64 / mean
}

/// 10k groups of 1–50 targets (≈ 255k targets): bounded placement keeps
/// every node within 1.05 of the mean on 10 and on 100 nodes; consistent
/// placement is the groups' own sampling noise (≈ 1.10 at 10 nodes, 1.30
/// at 100). A node joining takes about its fair share of groups: in
/// consistent mode exactly the groups that now rank it first (≤ 1.15× the
/// ideal) and nothing between the others; bounded at 10 nodes ≤ 1.15×.
/// Bounded at 100 nodes moves more (1.65× here, 1.4–1.7× with
/// `promshard rendezvous --groups`): a node holds only ~100 groups, so the
/// 2% headroom is about one group and the overflow reshuffles; this
/// bounds it so that it cannot silently grow.
#[test]
fn ten_thousand_groups_balance_and_move_whole() {
    let app = Affinity::parse("{labels.app}").unwrap();
    let targets = fleet(10_000, 50, 0, 7);
    for nodes in [10usize, 100] {
        let mut all = synthetic_nodes(nodes + 1, 7);
        let spare = all.pop().unwrap();
        let mut larger = all.clone();
        larger.push(spare.clone());
        larger.sort_by(|a, b| a.addr.cmp(&b.addr));
        for balance in [Balance::Bounded, Balance::Consistent] {
            let s = settings(balance);
            let before = plan(&targets, &all, &s, 1, &app);
            let after = plan(&targets, &larger, &s, 1, &app);
            let (a, b) = (
                groups_per_node(&before, &targets),
                groups_per_node(&after, &targets),
            );
            let (moved, between) = movement((&all, &a), (&larger, &b), 10_000, &spare.addr);
            let ideal = 10_000.0 / (nodes + 1) as f64;
            let ratio = moved as f64 / ideal;
            let (spread, spread_after) = (max_over_mean(&before), max_over_mean(&after));
            eprintln!(
                "{nodes} nodes, {balance:?}: max/mean {spread:.4} (after add {spread_after:.4}); add moves {moved} groups = {ratio:.3}× ideal, {between} between others"
            );
            let limit = if nodes == 100 && balance == Balance::Bounded {
                1.8
            } else {
                1.15
            };
            assert!(ratio <= limit, "{nodes} nodes {balance:?}: {ratio}");
            match balance {
                Balance::Bounded => {
                    assert!(
                        spread <= 1.05 && spread_after <= 1.05,
                        "{spread} {spread_after}"
                    );
                    assert!(between as f64 <= 0.02 * 10_000.0, "{between}");
                }
                Balance::Consistent => assert_eq!(between, 0, "none between staying nodes"),
            }
        }
    }
}

/// A node leaving, consistent mode: exactly its own groups move, nothing
/// else; bounded: about its share, little between the others.
#[test]
fn a_node_leaving_moves_only_whole_groups() {
    let app = Affinity::parse("{labels.app}").unwrap();
    let targets = fleet(3_000, 50, 0, 3);
    let all = synthetic_nodes(10, 3);
    let gone = all[4].clone();
    let rest: Vec<NodeSpec> = all.iter().filter(|n| **n != gone).cloned().collect();
    for balance in [Balance::Consistent, Balance::Bounded] {
        let s = settings(balance);
        let before = plan(&targets, &all, &s, 1, &app);
        let after = plan(&targets, &rest, &s, 1, &app);
        let (a, b) = (
            groups_per_node(&before, &targets),
            groups_per_node(&after, &targets),
        );
        let own = a.per_node[4].len() as u64;
        let (moved, between) = movement((&all, &a), (&rest, &b), 3_000, &gone.addr);
        match balance {
            Balance::Consistent => assert_eq!((moved, between), (own, 0)),
            Balance::Bounded => {
                assert!(moved as f64 <= 1.15 * own as f64, "{moved} of {own}");
                assert!(between <= 60, "{between}");
            }
        }
    }
}

/// A group heavier than a node's fair share is placed whole, flagged, and
/// in bounded mode the other nodes stay within their capacity.
#[test]
fn an_oversized_group_is_whole_flagged_and_the_rest_balanced() {
    let app = Affinity::parse("{labels.app}").unwrap();
    let mut raw: Vec<RawGroup> = (0..500)
        .map(|g| RawGroup {
            index: g,
            targets: (0..4).map(|i| format!("10.0.{g}.{i}:9100")).collect(),
            labels: [("app", format!("small-{g}"))].into_iter().collect(),
            weight: None,
        })
        .collect();
    raw.push(RawGroup {
        index: 500,
        targets: (0..1000)
            .map(|i| format!("10.9.{}.{}:9100", i / 250, i % 250))
            .collect(),
        labels: [("app", "giant")].into_iter().collect(),
        weight: None,
    });
    let targets = normalize(raw).targets;
    let nodes = synthetic_nodes(5, 1);
    let p = plan(&targets, &nodes, &settings(Balance::Bounded), 1, &app);
    groups_per_node(&p, &targets);
    let a = p.affinity.as_ref().unwrap();
    assert_eq!(a.oversized_count, 1);
    assert_eq!(
        (a.oversized[0].key.as_str(), a.oversized[0].targets),
        ("giant", 1000)
    );
    // 3000 targets over 5 nodes: a fair share is 600, capacity 612.
    let giant = p.nodes.iter().position(|n| n.count >= 1000).unwrap();
    assert_eq!(p.nodes[giant].count, 1000, "the giant sits alone");
    for (i, n) in p.nodes.iter().enumerate().filter(|&(i, _)| i != giant) {
        assert!(n.count <= 612, "node {i}: {}", n.count);
    }
}

/// Targets lacking a label of the template go exactly where they would
/// without affinity, and are counted.
#[test]
fn a_missing_label_places_the_target_by_its_own_address() {
    let app = Affinity::parse("{labels.app}").unwrap();
    let targets = fleet(200, 10, 300, 5);
    let nodes = synthetic_nodes(7, 5);
    let s = settings(Balance::Consistent);
    let with = plan(&targets, &nodes, &s, 2, &app);
    let without = make_plan(
        &PlanInput {
            replicas: 2,
            ring: &s,
            ..PlanInput::new("svc", &nodes, &targets)
        },
        |a| Ok(default_file_name(a, FileNaming::Stable)),
    )
    .unwrap();
    let a = with.affinity.as_ref().unwrap();
    assert_eq!((a.groups, a.ungrouped), (500, 300));
    let unlabelled: Vec<u32> = (0..targets.len() as u32)
        .filter(|&t| !targets[t as usize].labels.contains_key("app"))
        .collect();
    for (w, wo) in with.nodes.iter().zip(&without.nodes) {
        let on = |list: &[u32]| -> Vec<u32> {
            list.iter()
                .copied()
                .filter(|t| unlabelled.contains(t))
                .collect()
        };
        assert_eq!(on(&w.targets), on(&wo.targets), "{}", w.node);
    }
}

fn arb_case() -> impl Strategy<Value = (usize, usize, u64, usize, bool, usize)> {
    (
        1usize..80,
        1usize..9,
        any::<u64>(),
        1usize..4,
        any::<bool>(),
        0usize..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any fleet, either mode, any replicas: every group on exactly one set
    /// of min(R, N) nodes, and the same plan twice.
    #[test]
    fn every_group_on_exactly_one_node_set((groups, nodes, seed, replicas, bounded, unlabelled) in arb_case()) {
        let app = Affinity::parse("{labels.app}-{labels.env}").unwrap();
        let mut targets = fleet(groups, 12, unlabelled, seed);
        // Some targets carry env too: those group by both labels.
        let env: promshard::shard::target::Labels = [("env", "prod")].into_iter().collect();
        let mut extra = targets.clone();
        for t in extra.iter_mut().step_by(3) {
            t.labels = t.labels.iter().chain(env.iter()).collect();
        }
        targets.extend(extra.into_iter().filter(|t| t.labels.contains_key("env")));
        targets.sort();
        let fleet_nodes = synthetic_nodes(nodes, seed);
        let s = settings(if bounded { Balance::Bounded } else { Balance::Consistent });
        let p = plan(&targets, &fleet_nodes, &s, replicas, &app);
        groups_per_node(&p, &targets);
        prop_assert_eq!(&p, &plan(&targets, &fleet_nodes, &s, replicas, &app));
    }
}

/// `promshard rendezvous --groups N`: groups are the keys placed, load still
/// counts targets, and consistent mode moves whole groups only.
#[test]
fn the_simulator_places_groups() {
    use promshard::sim::{SimConfig, render_text, simulate};
    let r = simulate(&SimConfig {
        groups: Some(2_000),
        ..SimConfig::new(10, 100_000)
    })
    .unwrap();
    let g = r.groups.as_ref().expect("group stats");
    assert_eq!(g.groups, 2_000);
    assert!((90_000..110_000).contains(&g.targets), "{g:?}");
    assert!(g.largest > 10 * g.median, "a realistic long tail: {g:?}");
    assert_eq!(r.remove.between_others, 0);
    assert_eq!(r.remove.ratio, 1.0);
    assert!(
        (r.load.mean - g.targets as f64 / 10.0).abs() < 1e-6,
        "load in targets"
    );
    assert!(
        render_text(&r).contains("in 2000 affinity groups"),
        "{}",
        render_text(&r)
    );
}
