//! Placement benchmarks (issue 8): lookup cost per target and the planning
//! step alone — assigning 100k realistic targets to 10 and 100 nodes — in
//! both balance modes, with and without weights. Run with
//! `cargo bench --bench ring`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promshard::shard::placement::{Balance, PlacementSettings, Rendezvous, assign, hash_key};
use promshard::sim::{WeightDist, synthetic_addresses, synthetic_nodes, synthetic_weights};

fn bench_ring(c: &mut Criterion) {
    let addrs = synthetic_addresses(100_000, 1);
    let keys: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k)).collect();
    let target_weights = synthetic_weights(keys.len(), 1);
    // Series per target as `weights: {from: series}` learns them: median
    // about 245, a long tail into the tens of thousands.
    let series = WeightDist::LogNormal {
        mu: 5.5,
        sigma: 1.2,
    }
    .sample(keys.len(), 1);
    let consistent = PlacementSettings::default();
    let bounded = PlacementSettings {
        balance: Balance::Bounded,
        ..PlacementSettings::default()
    };

    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(keys.len() as u64));
    for n in [10usize, 100] {
        let ring = Rendezvous::new(&synthetic_nodes(n, 1), &consistent).expect("ring");
        g.bench_function(format!("hash+lookup/{n}_nodes"), |b| {
            b.iter(|| {
                keys.iter()
                    .map(|k| ring.node_for(k))
                    .fold(0u32, |a, x| a ^ x)
            })
        });
        g.bench_function(format!("lookup_prehashed/{n}_nodes"), |b| {
            b.iter(|| {
                hashes
                    .iter()
                    .map(|&h| ring.node_for_hash(h))
                    .fold(0u32, |a, x| a ^ x)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("assign_100k");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for n in [10usize, 100] {
        let nodes = synthetic_nodes(n, 1);
        g.bench_function(format!("consistent/{n}_nodes"), |b| {
            b.iter(|| assign(black_box(&nodes), &keys, None, 1, &consistent))
        });
        g.bench_function(format!("bounded/{n}_nodes"), |b| {
            b.iter(|| assign(black_box(&nodes), &keys, None, 1, &bounded))
        });
        // Node weights take the `ln` path; target weights only matter to
        // bounded mode.
        let mut weighted = nodes.clone();
        for (i, node) in weighted.iter_mut().enumerate() {
            node.weight = 1 + (i % 3) as u32;
        }
        g.bench_function(format!("consistent_node_weights/{n}_nodes"), |b| {
            b.iter(|| assign(black_box(&weighted), &keys, None, 1, &consistent))
        });
        g.bench_function(format!("bounded_target_weights/{n}_nodes"), |b| {
            b.iter(|| assign(black_box(&nodes), &keys, Some(&target_weights), 1, &bounded))
        });
        g.bench_function(format!("bounded_lognormal_series/{n}_nodes"), |b| {
            b.iter(|| assign(black_box(&nodes), &keys, Some(&series), 1, &bounded))
        });
    }
    let nodes = synthetic_nodes(10, 1);
    g.bench_function("consistent/10_nodes_3_replicas", |b| {
        b.iter(|| assign(black_box(&nodes), &keys, None, 3, &consistent))
    });
    g.finish();
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
