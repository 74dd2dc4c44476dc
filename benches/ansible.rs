//! Batched Ansible delivery vs the seed's one `ansible-playbook` per node.
//!
//! Ten nodes (`ansible_connection: local`, one destination dir each), the
//! shipped `playbooks/push_sd.yml`, ten real sd files of 200 targets. Both
//! sides go through `push::ansible::run_batch`, so inventory generation and
//! result parsing are the same; only the number of processes differs:
//! - batched: one run with all ten hosts, `--forks 10` (promshard);
//! - per node: ten runs of one host each, all started at once (the seed
//!   started one per node in a goroutine), and, for reference, one after
//!   the other.
//!
//! Every measured delivery copies (fresh destination dirs), so each host
//! reports `changed`. Run with `cargo bench --bench ansible`; it finds
//! `ansible-playbook` like the tests do (`PROMSHARD_ANSIBLE_PLAYBOOK`, else
//! `PATH`); `PROMSHARD_BENCH_ITERS` sets the iterations (default 3). Without
//! `ansible-playbook` it prints why and exits 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use promshard::config::{Config, Push};
use promshard::push::Delivery;
use promshard::push::ansible::run_batch;
use tokio_util::sync::CancellationToken;

const NODES: usize = 10;

#[path = "../tests/util/tools.rs"]
#[allow(dead_code)] // the bench uses the non-panicking part only
mod tools;

fn find_ansible() -> Option<(PathBuf, PathBuf)> {
    let playbook = tools::locate("ansible-playbook", "PROMSHARD_ANSIBLE_PLAYBOOK")?;
    let python = tools::python_for(&playbook)?;
    Some((playbook, python))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let Some((ansible_playbook, python)) = find_ansible() else {
        println!(
            "bench ansible: skipped, no ansible-playbook (put ansible-core on PATH or set PROMSHARD_ANSIBLE_PLAYBOOK)"
        );
        return;
    };
    let iters: usize = std::env::var("PROMSHARD_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/push_sd.yml");
    let nodes: Vec<String> = (0..NODES)
        .map(|i| format!("10.0.0.{}:9090", i + 1))
        .collect();
    let deliveries: Vec<Delivery> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let groups: Vec<serde_json::Value> = (0..200)
                .map(|t| {
                    serde_json::json!({
                        "targets": [format!("10.{i}.{}.{}:9100", t / 250, t % 250 + 1)],
                        "labels": {"env": "prod", "dc": "fra1", "role": "web"},
                    })
                })
                .collect();
            let file = root.join(format!("src/web_{i}.json"));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("src dir");
            std::fs::write(&file, serde_json::to_vec_pretty(&groups).expect("json"))
                .expect("src file");
            Delivery {
                node: node.clone(),
                file,
                file_name: format!("web_{i}.json"),
                epoch: None,
            }
        })
        .collect();
    let dest_root = root.join("dest");
    let config_text = format!(
        r#"
services:
  - name: web
    script: unused.rhai
    nodes: {nodes}
    push:
      kind: ansible
      playbook: {playbook}
      dest_sd_file_name: web.json
      forks: {NODES}
      retries: 0
      timeout: 300s
      ansible_playbook: {ansible_playbook}
      vars:
        ansible_connection: local
        ansible_python_interpreter: {python}
        sd_validate_python: {python}
        dest_dir: "{dest}/{{iter}}/{{node}}"
"#,
        nodes = serde_json::to_string(&nodes).expect("json"),
        playbook = serde_json::to_string(&playbook).expect("json"),
        ansible_playbook = serde_json::to_string(&ansible_playbook).expect("json"),
        python = serde_json::to_string(&python).expect("json"),
        dest = dest_root.display(),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cancel = CancellationToken::new();

    // Each measured run gets fresh destination dirs, so every host copies.
    let mut round = 0usize;
    let mut run = |mode: &str| -> Duration {
        round += 1;
        let text = config_text.replace("{iter}", &format!("{mode}-{round}"));
        let config = Config::parse(&root.join("promshard.yaml"), &text).expect("bench config");
        let service = config.services[0].clone();
        let Push::Ansible(settings) = &service.push else {
            panic!("not an ansible push")
        };
        for n in &nodes {
            std::fs::create_dir_all(dest_root.join(format!("{mode}-{round}")).join(n))
                .expect("dest dir");
        }
        let started = Instant::now();
        let reports = rt.block_on(async {
            match mode {
                "batched" => vec![run_batch(settings, &service, &deliveries, &cancel).await],
                "parallel" => {
                    let handles: Vec<_> = deliveries
                        .iter()
                        .map(|d| {
                            let (settings, service, d, cancel) =
                                (settings.clone(), service.clone(), d.clone(), cancel.clone());
                            tokio::spawn(async move {
                                run_batch(&settings, &service, &[d], &cancel).await
                            })
                        })
                        .collect();
                    let mut out = Vec::new();
                    for h in handles {
                        out.push(h.await.expect("delivery task"));
                    }
                    out
                }
                _ => {
                    let mut out = Vec::new();
                    for d in &deliveries {
                        out.push(
                            run_batch(settings, &service, std::slice::from_ref(d), &cancel).await,
                        );
                    }
                    out
                }
            }
        });
        let elapsed = started.elapsed();
        let results: Vec<&str> = reports
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.result.as_str()))
            .collect();
        assert!(
            results.len() == NODES && results.iter().all(|r| *r == "changed"),
            "{mode}: expected {NODES} changed deliveries, got {results:?}: {:?}",
            reports
                .iter()
                .flat_map(|r| r.nodes.iter().filter_map(|n| n.error.clone()))
                .collect::<Vec<_>>()
        );
        elapsed
    };

    println!(
        "bench ansible: {NODES} nodes, {} cpus, {iters} iteration(s), median wall time",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Warm-up: Python byte-code caches, ansible's first-run setup.
    run("batched");
    let batched = median((0..iters).map(|_| run("batched")).collect());
    let parallel = median((0..iters).map(|_| run("parallel")).collect());
    let serial = run("serial");
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "  batched, 1 ansible-playbook, --forks {NODES}: {:>7.2}s",
        secs(batched)
    );
    println!(
        "  seed, {NODES} ansible-playbook at once:        {:>7.2}s  ({:.1}x slower)",
        secs(parallel),
        secs(parallel) / secs(batched)
    );
    println!(
        "  {NODES} ansible-playbook one after another:   {:>7.2}s  ({:.1}x slower, 1 run)",
        secs(serial),
        secs(serial) / secs(batched)
    );
}
