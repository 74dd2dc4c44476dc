//! Ansible delivery over real SSH to a fleet: batched vs the seed's one
//! `ansible-playbook` per node.
//!
//! Fifty real `sshd` on loopback addresses (tests/util/sshd.rs: own host
//! key each, key auth, `StrictHostKeyChecking yes`), the shipped
//! `playbooks/push_sd.yml`, one sd file of 200 targets per host. The
//! `run_batch` modes share inventory generation and result parsing; only
//! the number of processes and settings differ:
//! - batched: one run with all hosts, `--forks` = hosts (promshard);
//! - batched, `tuning: false`: the same with Ansible's own defaults (no
//!   pipelining, control sockets in `~/.ansible/cp`);
//! - per node: one run per host, all started at once (the seed started
//!   one per node in a goroutine), and one after the other.
//!
//! Every measured delivery copies (fresh destination dirs), so each host
//! reports `changed`. Then two `promshard once` passes of the real binary:
//! the first delivers every changed file, the second has nothing to do and
//! must start no `ansible-playbook` at all (asserted from its log).
//!
//! Run with `cargo bench --bench ansible`; it finds `ansible-playbook` and
//! `sshd` like the tests do (`PROMSHARD_ANSIBLE_PLAYBOOK`,
//! `PROMSHARD_SSHD`, else `PATH`). `PROMSHARD_BENCH_HOSTS` sets the fleet
//! (default 50), `PROMSHARD_BENCH_ITERS` the iterations of the batched
//! modes (default 3; the per-node modes run once), and
//! `PROMSHARD_BENCH_PER_NODE=0` leaves the slow per-node modes out. Without the tools it
//! prints why and exits 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use promshard::config::{Config, Push};
use promshard::push::Delivery;
use promshard::push::ansible::{BatchReport, run_batch};
use tokio_util::sync::CancellationToken;

#[path = "../tests/util/child.rs"]
#[allow(dead_code)]
mod child;
#[path = "../tests/util/sshd.rs"]
#[allow(dead_code)]
mod sshd;
#[path = "../tests/util/tools.rs"]
#[allow(dead_code)] // the bench uses the non-panicking part only
mod tools;

fn find_tools() -> Result<(PathBuf, PathBuf), &'static str> {
    let playbook = tools::locate("ansible-playbook", "PROMSHARD_ANSIBLE_PLAYBOOK").ok_or(
        "no ansible-playbook (put ansible-core on PATH or set PROMSHARD_ANSIBLE_PLAYBOOK)",
    )?;
    let python = tools::python_for(&playbook).ok_or("cannot tell which python runs ansible")?;
    if tools::locate("sshd", "PROMSHARD_SSHD").is_none() && !Path::new("/usr/sbin/sshd").is_file() {
        return Err("no sshd (apt-get install openssh-server, or set PROMSHARD_SSHD)");
    }
    Ok((playbook, python))
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 200 targets for host `i`, as file_sd JSON.
fn sd_file(i: usize) -> Vec<u8> {
    let groups: Vec<serde_json::Value> = (0..200)
        .map(|t| {
            serde_json::json!({
                "targets": [format!("10.{}.{}.{}:9100", i % 250, t / 250, t % 250 + 1)],
                "labels": {"env": "prod", "dc": "fra1", "role": "web"},
            })
        })
        .collect();
    serde_json::to_vec_pretty(&groups).expect("json")
}

/// Everything a mode needs.
struct Bench {
    root: PathBuf,
    nodes: Vec<String>,
    deliveries: Vec<Delivery>,
    push_yaml: String,
    rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    round: usize,
    /// CPU time of the `ansible-playbook` trees of the last run (the
    /// controller's share; sshd's is not in it).
    controller_cpu: Duration,
    /// CPU time of the hosts' side of the last run: sshd sessions, shells
    /// and modules, as their sshd reaped them. Only the tuned runs end
    /// every session with the run (their control masters are killed);
    /// `tuning: false` leaves masters open for 60 s, whose sessions end and
    /// count later, so the figure is printed for the batched run only.
    hosts_cpu: Duration,
    ssh: sshd::SshHosts,
}

impl Bench {
    /// The hosts' CPU so far, once every session of the last run has
    /// ended (the control masters close them as the run ends).
    fn hosts_ticks(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ssh.hosts.iter().all(|h| h.is_idle()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ssh
            .hosts
            .iter()
            .filter_map(|h| h.sessions_cpu_ticks())
            .sum()
    }
}

/// CPU time (user + system) of every child process reaped so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Bench {
    /// One measured delivery to every host in `mode`, to fresh dirs.
    fn run(&mut self, mode: &str) -> Duration {
        self.round += 1;
        let dest = self.root.join(format!("dest/{mode}-{}", self.round));
        let tuning = mode != "untuned";
        let text = format!(
            "services:\n  - name: web\n    script: unused.rhai\n    nodes: {}\n    push:\n{}      tuning: {tuning}\n",
            serde_json::to_string(&self.nodes).expect("json"),
            self.push_yaml.replace("{dest}", &dest.to_string_lossy()),
        );
        let config = Config::parse(&self.root.join("promshard.yaml"), &text).expect("bench config");
        let service = config.services[0].clone();
        let Push::Ansible(settings) = &service.push else {
            panic!("not an ansible push")
        };
        for n in &self.nodes {
            std::fs::create_dir_all(dest.join(n)).expect("dest dir");
        }
        let (deliveries, cancel) = (&self.deliveries, &self.cancel);
        let (cpu, ticks) = (children_cpu(), self.hosts_ticks());
        let started = Instant::now();
        let reports: Vec<BatchReport> = self.rt.block_on(async {
            match mode {
                "batched" | "untuned" => {
                    vec![run_batch(settings, &service, deliveries, cancel).await]
                }
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
                    for d in deliveries {
                        out.push(
                            run_batch(settings, &service, std::slice::from_ref(d), cancel).await,
                        );
                    }
                    out
                }
            }
        });
        let elapsed = started.elapsed();
        self.controller_cpu = children_cpu() - cpu;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.hosts_cpu = Duration::from_secs_f64((self.hosts_ticks() - ticks) as f64 / hz);
        let results: Vec<&str> = reports
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.result.as_str()))
            .collect();
        assert!(
            results.len() == self.nodes.len() && results.iter().all(|r| *r == "changed"),
            "{mode}: expected {} changed deliveries, got {results:?}: {:?}",
            self.nodes.len(),
            reports
                .iter()
                .flat_map(|r| r.nodes.iter().filter_map(|n| n.error.clone()))
                .collect::<Vec<_>>()
        );
        elapsed
    }

    /// `promshard once` of the real binary over the same hosts; its time
    /// and how many `ansible-playbook` runs it logged.
    fn once(&self) -> (Duration, usize) {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_promshard"))
            .current_dir(&self.root)
            .args(["--config", "once.yaml", "once"])
            .env("RUST_LOG", "promshard=info")
            .output()
            .expect("run promshard once");
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promshard once failed:\n{stderr}");
        (elapsed, stderr.matches("ansible-playbook run").count())
    }

    /// The config and script of the `promshard once` passes.
    fn write_once_config(&self) {
        let targets: Vec<String> = (0..self.nodes.len() * 40)
            .map(|i| format!("10.9.{}.{}:9100", i / 250, i % 250 + 1))
            .collect();
        let write = |rel: &str, text: String| {
            std::fs::write(self.root.join(rel), text).expect("bench file");
        };
        write(
            "targets.json",
            serde_json::to_string(&targets).expect("json"),
        );
        write(
            "t.rhai",
            "fn targets(ctx) { read_json(\"targets.json\") }\n".into(),
        );
        let dest = self.root.join("dest/once");
        for n in &self.nodes {
            std::fs::create_dir_all(dest.join(n)).expect("dest dir");
        }
        write(
            "once.yaml",
            format!(
                "out_dir: out\nservices:\n  - name: web\n    script: t.rhai\n    nodes: {}\n    push:\n{}",
                serde_json::to_string(&self.nodes).expect("json"),
                self.push_yaml.replace("{dest}", &dest.to_string_lossy()),
            ),
        );
    }
}

fn main() {
    let (ansible_playbook, python) = match find_tools() {
        Ok(t) => t,
        Err(why) => {
            println!("bench ansible: skipped, {why}");
            return;
        }
    };
    let hosts = env_count("PROMSHARD_BENCH_HOSTS", 50);
    let iters = env_count("PROMSHARD_BENCH_ITERS", 3);
    let ssh = sshd::SshHosts::start(hosts);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().to_path_buf();
    let nodes = ssh.nodes();
    let deliveries: Vec<Delivery> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let file = root.join(format!("src/web_{i}.json"));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("src dir");
            std::fs::write(&file, sd_file(i)).expect("src file");
            Delivery {
                node: node.clone(),
                file,
                file_name: format!("web_{i}.json"),
                epoch: None,
            }
        })
        .collect();
    let push_yaml = format!(
        "      kind: ansible\n      playbook: {playbook}\n      dest_sd_file_name: web.json\n      forks: {hosts}\n      retries: 0\n      timeout: 600s\n      ansible_playbook: {ansible_playbook}\n      vars:\n        ansible_connection: ssh\n        ansible_ssh_common_args: {args}\n        ansible_python_interpreter: {python}\n        dest_dir: \"{{dest}}/{{node}}\"\n",
        playbook = json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/push_sd.yml")),
        ansible_playbook = json(&ansible_playbook),
        args = json(&format!("-F {}", ssh.ssh_config().display())),
        python = json(&python),
    );
    let mut bench = Bench {
        root,
        nodes,
        deliveries,
        push_yaml,
        rt: tokio::runtime::Runtime::new().expect("runtime"),
        cancel: CancellationToken::new(),
        round: 0,
        controller_cpu: Duration::ZERO,
        hosts_cpu: Duration::ZERO,
        ssh,
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench ansible: {hosts} sshd hosts on loopback, {} cpus, load {}, median of {iters} for batched modes",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Warm-up: Python byte-code caches, ansible's first-run setup.
    bench.run("batched");
    let secs = |d: Duration| d.as_secs_f64();
    let batched = median((0..iters).map(|_| bench.run("batched")).collect());
    println!(
        "  batched, 1 ansible-playbook, --forks {hosts}:     {:>7.2}s  (CPU: controller {:.1}s, hosts {:.1}s)",
        secs(batched),
        secs(bench.controller_cpu),
        secs(bench.hosts_cpu)
    );
    let vs = |d: Duration| secs(d) / secs(batched);
    let untuned = median((0..iters).map(|_| bench.run("untuned")).collect());
    println!(
        "  batched, tuning: false (Ansible defaults):  {:>7.2}s  ({:.1}x slower)",
        secs(untuned),
        vs(untuned)
    );
    let per_node = std::env::var("PROMSHARD_BENCH_PER_NODE").as_deref() != Ok("0");
    if per_node {
        let parallel = bench.run("parallel");
        println!(
            "  seed, {hosts} ansible-playbook at once:           {:>7.2}s  ({:.1}x slower, 1 run; controller CPU {:.1}s)",
            secs(parallel),
            vs(parallel),
            secs(bench.controller_cpu)
        );
    }
    bench.write_once_config();
    let (first, first_runs) = bench.once();
    assert_eq!(first_runs, 1, "the first pass runs one ansible-playbook");
    println!(
        "  promshard once, every file changed:          {:>7.2}s  (1 ansible-playbook run)",
        secs(first)
    );
    let (second, second_runs) = bench.once();
    assert_eq!(
        second_runs, 0,
        "a pass with nothing changed started ansible-playbook"
    );
    println!(
        "  promshard once, nothing changed:             {:>7.2}s  (no ansible-playbook run)",
        secs(second)
    );
    if per_node {
        let serial = bench.run("serial");
        println!(
            "  {hosts} ansible-playbook one after another:      {:>7.2}s  ({:.1}x slower, 1 run)",
            secs(serial),
            vs(serial)
        );
    }
}

/// A path or string quoted for the YAML config.
fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("json")
}
