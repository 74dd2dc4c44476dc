//! Full-plan benchmark (issue 8): the pure part of a pass for 100k targets
//! with four labels each (one of them unique per host, as in a CMDB export)
//! on 10 nodes: normalize, make_plan, then render every node's file, with no
//! I/O. Separate groups show each step alone. Run with
//! `cargo bench --bench pass`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promshard::shard::names::{FileNaming, FileType, default_file_name};
use promshard::shard::placement::{NodeSpec, PlacementSettings};
use promshard::shard::plan::{PlanInput, make_plan};
use promshard::shard::render::render_into;
use promshard::shard::target::{RawGroup, Target, normalize};
use promshard::sim::{synthetic_inventory, synthetic_nodes};

/// Inventory records as `examples/gen_targets.rs` writes them.
fn groups(n: usize) -> Vec<RawGroup> {
    synthetic_inventory(n)
        .enumerate()
        .map(|(index, h)| RawGroup {
            index,
            targets: vec![format!("{}:9100", h.ip)],
            labels: [
                ("dc", h.dc.to_string()),
                ("env", h.env.to_string()),
                ("hostname", h.hostname),
                ("role", h.role.to_string()),
            ]
            .into_iter()
            .collect(),
            weight: None,
        })
        .collect()
}

/// make_plan then render every node into one reused buffer; total bytes.
fn plan_and_render(targets: &[Target], nodes: &[NodeSpec], ring: &PlacementSettings) -> usize {
    let plan = make_plan(
        &PlanInput {
            ring,
            ..PlanInput::new("svc", nodes, targets)
        },
        |a| Ok(default_file_name(a, FileNaming::Stable)),
    )
    .expect("plan");
    let mut buf = Vec::new();
    plan.nodes
        .iter()
        .map(|n| {
            render_into(&mut buf, targets, &n.targets, FileType::Json, None);
            buf.len()
        })
        .sum()
}

fn bench_pass(c: &mut Criterion) {
    const N: usize = 100_000;
    let input = groups(N);
    let nodes = synthetic_nodes(10, 1);
    let ring = PlacementSettings::default();
    let targets = normalize(input.clone()).targets;

    let mut g = c.benchmark_group("pass_100k_10_nodes");
    g.throughput(Throughput::Elements(N as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    g.bench_function("full_plan", |b| {
        b.iter_batched(
            || input.clone(),
            |groups| {
                let targets = normalize(groups).targets;
                black_box(plan_and_render(&targets, &nodes, &ring))
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("normalize", |b| {
        b.iter_batched(
            || input.clone(),
            |groups| black_box(normalize(groups).targets.len()),
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("plan_and_render", |b| {
        b.iter(|| black_box(plan_and_render(&targets, &nodes, &ring)))
    });
    g.finish();
}

criterion_group!(benches, bench_pass);
criterion_main!(benches);
