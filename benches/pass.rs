//! Full-plan benchmark (issue 8): the pure part of a pass for 100k targets
//! with four labels each (one of them unique per host, as in a CMDB export)
//! on 10 nodes: normalize, make_plan, then render every node's file, with no
//! I/O. Separate groups show each step alone. Run with
//! `cargo bench --bench pass`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promshard::config::FileType;
use promshard::output::render_into;
use promshard::plan::{PlanInput, default_file_name, make_plan};
use promshard::ring::{NodeSpec, RingSettings};
use promshard::sim::synthetic_nodes;
use promshard::target::{RawGroup, Target, normalize};

/// 100k inventory records shaped like `examples/gen_targets.rs` output.
fn groups(n: usize) -> Vec<RawGroup> {
    let roles = ["web", "api", "db", "cache", "queue", "batch"];
    let dcs = ["fra1", "ams1", "lon1", "par1"];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let role = roles[(state >> 33) as usize % roles.len()];
            let dc = dcs[(state >> 41) as usize % dcs.len()];
            let env = if (state >> 50).is_multiple_of(5) {
                "staging"
            } else {
                "prod"
            };
            RawGroup {
                index: i,
                targets: vec![format!(
                    "10.{}.{}.{}:9100",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                )],
                labels: [
                    ("dc", dc.to_string()),
                    ("env", env.to_string()),
                    ("hostname", format!("{role}-{dc}-{i:07}")),
                    ("role", role.to_string()),
                ]
                .into_iter()
                .collect(),
                weight: None,
            }
        })
        .collect()
}

/// make_plan then render every node into one reused buffer; total bytes.
fn plan_and_render(targets: &[Target], nodes: &[NodeSpec], ring: &RingSettings) -> usize {
    let plan = make_plan(
        &PlanInput {
            service: "svc",
            nodes,
            targets,
            replicas: 1,
            ring,
            file_type: FileType::Json,
        },
        |a| Ok(default_file_name(a)),
    )
    .expect("plan");
    let mut buf = Vec::new();
    plan.nodes
        .iter()
        .map(|n| {
            render_into(&mut buf, targets, &n.targets, FileType::Json);
            buf.len()
        })
        .sum()
}

fn bench_pass(c: &mut Criterion) {
    const N: usize = 100_000;
    let input = groups(N);
    let nodes = synthetic_nodes(10, 1);
    let ring = RingSettings::default();
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
