//! What a target script costs per call, and what the position tracker (the
//! second run after a limit error, see `script::position`) adds. Three
//! shapes of `targets(ctx)` over 1k hosts: a loop building strings, a
//! CMDB-style `filter`/`map` with closures over parsed JSON, and helper
//! functions called with the whole inventory. Run with
//! `cargo bench --bench script`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use promshard::script::{CompiledScript, Sandbox, ScriptRun};
use rhai::Map;

const HOSTS: usize = 1_000;

const LOOP: &str = r#"
fn targets(ctx) {
    let out = [];
    for i in 0..1000 {
        out.push(`10.${i / 65536}.${(i / 256) % 256}.${i % 256}:9100`);
    }
    out
}"#;

const CLOSURES: &str = r#"
fn targets(ctx) {
    parse_json(ctx.cmdb).hosts
        .filter(|h| h.status == "active")
        .map(|h| #{ targets: [`${h.ip}:9100`], labels: #{ env: h.env, name: h.name } })
}"#;

const HELPERS: &str = r#"
fn active(hosts) { hosts.filter(|h| h.status == "active") }
fn count(hosts, env) { hosts.filter(|h| h.env == env).len() }
fn targets(ctx) {
    let hosts = active(parse_json(ctx.cmdb).hosts);
    let envs = #{};
    for e in ["prod", "staging", "dev"] { envs[e] = count(hosts, e); }
    hosts.map(|h| `${h.ip}:9100`)
}"#;

fn cmdb() -> String {
    let hosts: Vec<String> = (0..HOSTS)
        .map(|i| {
            format!(
                r#"{{"name":"web-{i}","ip":"10.{}.{}.{}","env":"{}","status":"{}"}}"#,
                i / 65536,
                (i / 256) % 256,
                i % 256,
                ["prod", "staging", "dev"][i % 3],
                if i % 10 == 0 { "retired" } else { "active" }
            )
        })
        .collect();
    format!(r#"{{"hosts":[{}]}}"#, hosts.join(","))
}

fn bench_scripts(c: &mut Criterion) {
    let mut ctx = Map::new();
    ctx.insert("cmdb".into(), cmdb().into());
    // The tracked runs are slow; no deadline may cut them short here.
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_secs(3600);
    let mut group = c.benchmark_group("script");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for (name, src) in [("loop", LOOP), ("closures", CLOSURES), ("helpers", HELPERS)] {
        let script = CompiledScript::compile_source(Path::new("bench.rhai"), src).unwrap();
        for (mode, run) in [
            ("plain", ScriptRun::new(&script, &sandbox)),
            ("tracked", ScriptRun::tracked(&script, &sandbox)),
        ] {
            group.bench_function(format!("{name}/{mode}"), |b| {
                b.iter(|| black_box(run.call("targets", (ctx.clone(),)).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_scripts);
criterion_main!(benches);
