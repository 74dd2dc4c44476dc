//! `where` and the audit at 100k targets on 10 nodes: the lookup table a
//! pass builds ([`Assignment::from_plan`]), one `where` lookup (what the
//! API and `promshard where` do per request), and a whole audit of an
//! observation in which every node reports exactly its plan. Run with
//! `cargo bench --bench observe`; it also prints the table's size.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use promshard::observe::{ActiveTarget, Assignment, NodeObservation, WhereInput, locate};
use promshard::shard::audit::{NodeInput, audit};
use promshard::shard::names::{FileNaming, default_file_name};
use promshard::shard::plan::{Plan, PlanInput, make_plan};
use promshard::shard::target::{RawGroup, Target, normalize};
use promshard::sim::{synthetic_addresses, synthetic_nodes};

const N: usize = 100_000;

fn fleet() -> (Vec<Target>, Plan) {
    let groups = synthetic_addresses(N, 1)
        .into_iter()
        .enumerate()
        .map(|(index, addr)| RawGroup {
            index,
            targets: vec![addr],
            labels: Default::default(),
            weight: None,
        })
        .collect();
    let targets = normalize(groups).targets;
    let nodes = synthetic_nodes(10, 1);
    let plan = make_plan(&PlanInput::new("svc", &nodes, &targets), |a| {
        Ok(default_file_name(a, FileNaming::Stable))
    })
    .expect("plan");
    (targets, plan)
}

fn bench_observe(c: &mut Criterion) {
    let (targets, plan) = fleet();
    let assignment = Arc::new(Assignment::from_plan(&targets, &plan));
    println!(
        "assignment of {N} targets: {} KiB ({} bytes/target)",
        assignment.heap_bytes() / 1024,
        assignment.heap_bytes() / N
    );
    // Every node reports exactly its plan, healthy.
    let observed: BTreeMap<String, NodeObservation> = plan
        .nodes
        .iter()
        .map(|n| {
            let mut list: Vec<ActiveTarget> = n
                .targets
                .iter()
                .map(|&i| ActiveTarget {
                    address: targets[i as usize].addr.to_string(),
                    health: "up".into(),
                    ..ActiveTarget::default()
                })
                .collect();
            list.sort_by(|a, b| a.address.cmp(&b.address));
            let o = NodeObservation {
                targets: list,
                ..NodeObservation::default()
            };
            (n.node.clone(), o)
        })
        .collect();
    let probe: Vec<&str> = targets.iter().step_by(997).map(|t| &*t.addr).collect();

    let mut g = c.benchmark_group("observe_100k_10_nodes");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("assignment_from_plan", |b| {
        b.iter(|| black_box(Assignment::from_plan(&targets, &plan).len()))
    });
    let mut i = 0;
    let input = WhereInput {
        service: "svc",
        assignment: &assignment,
        pending: &[],
        observation: None,
    };
    g.bench_function("where_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % probe.len();
            black_box(locate(&input, probe[i]))
        })
    });
    g.bench_function("audit", |b| {
        b.iter(|| {
            let inputs = observed
                .iter()
                .map(|(n, o)| {
                    let input = NodeInput {
                        observed: Some(o),
                        in_grace: false,
                    };
                    (n.clone(), input)
                })
                .collect();
            black_box(audit(&assignment, &inputs, 1).counts.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_observe);
criterion_main!(benches);
