//! End to end: live membership with three real Prometheus servers.
//!
//! Each Prometheus runs on its own free loopback port with its own TSDB
//! directory and a `file_sd_configs` glob over its own directory, which
//! `promshard run` fills with `push: local` (`dest: .../{node}/sd.json`).
//! promshard probes each server's `/-/healthy` every 500 ms (fall 2, rise 2).
//! The test then watches what matters to an SRE — which targets each
//! Prometheus actually has as active targets (`/api/v1/targets`) — through
//! the scenarios of issue 7: steady state, one server killed, the server
//! back, all servers down and back. Targets need not answer: Prometheus
//! lists them either way (the addresses are unused loopback ones, so scrapes
//! fail fast and cheaply).
//!
//! Every wait polls with a deadline and, on failure, says what it saw last
//! and shows promshard's log. Every child is killed by a guard on drop.
//! Convergence times are printed (run with `--nocapture` to see them).
//!
//! Needs `prometheus` (`PROMSHARD_PROMETHEUS`, else `PATH`):
//! `#[ignore = "needs prometheus"]`; `bash .ci/test` runs it with
//! `--include-ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::Dir;
use util::child::{free_port, poll_every};
use util::daemon::Promshard;
use util::prom::Prom;
use util::tools::prometheus;

const SERVICE: &str = "sharded";
const TARGETS: usize = 300;
/// Health settings given to promshard.
const INTERVAL: Duration = Duration::from_millis(500);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// Slack the issue allows on top of fall×interval / rise×interval. It
/// covers Prometheus's own start-up and its discovery manager, which passes
/// file_sd updates to the scrape manager at most every 5 s.
const SLACK: Duration = Duration::from_secs(10);

/// Three Prometheus servers per test: run the tests one at a time, so that
/// the timings measured are not those of a machine running six.
static SERIAL: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------ helpers

/// Poll every 100 ms (three Prometheus APIs per check): the value and the
/// time it took.
fn poll<T>(
    what: &str,
    within: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    poll_every(what, within, Duration::from_millis(100), check)
}

/// Node address → the set of target addresses its Prometheus has.
type Assignment = BTreeMap<String, BTreeSet<String>>;

/// How many servers have each target; targets no server has are counted 0.
fn coverage(a: &Assignment, all: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut count: BTreeMap<String, usize> = all.iter().map(|t| (t.clone(), 0)).collect();
    for targets in a.values() {
        for t in targets {
            *count.entry(t.clone()).or_default() += 1;
        }
    }
    count
}

/// `Ok` when every target of `all` is on exactly `r` servers and no server
/// has anything else; else a short description of the first problems.
fn exactly(a: &Assignment, all: &BTreeSet<String>, r: usize) -> Result<(), String> {
    let bad: Vec<String> = coverage(a, all)
        .into_iter()
        .filter(|(_, n)| *n != r)
        .map(|(t, n)| format!("{t}×{n}"))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} targets not on exactly {r} servers (first: {}); per server: {}",
            bad.len(),
            bad.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            sizes(a)
        ))
    }
}

fn sizes(a: &Assignment) -> String {
    a.iter()
        .map(|(n, t)| format!("{n}={}", t.len()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ the lab

/// Three Prometheus servers and a promshard, in one temp directory.
struct Lab {
    root: Dir,
    proms: Vec<Prom>,
    promshard: Option<Promshard>,
    port: u16,
    targets: BTreeSet<String>,
}

impl Lab {
    fn new(replicas: usize) -> Lab {
        let root = Dir::new();
        let proms: Vec<Prom> = (0..3)
            .map(|_| {
                Prom::start_with(&root.join("prom"), |dir| {
                    format!(
                        "global:\n  scrape_interval: 10s\n  scrape_timeout: 1s\n\
                         scrape_configs:\n  - job_name: {SERVICE}\n    file_sd_configs:\n      \
                         - files: ['{}/*.json']\n        refresh_interval: 1s\n",
                        dir.join("sd").display()
                    )
                })
            })
            .collect();
        // Unused loopback addresses: refused at once, listed all the same.
        let targets: BTreeSet<String> = (0..TARGETS)
            .map(|i| format!("127.0.{}.{}:9", 10 + i / 200, 1 + i % 200))
            .collect();
        let script = format!(
            "fn targets(ctx) {{\n    [{}]\n}}\n",
            targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        root.write("scripts/sharded.rhai", script);
        let port = free_port();
        let nodes: Vec<String> = proms.iter().map(|p| format!("\"{}\"", p.addr)).collect();
        root.config(&format!(
            "out_dir: out\nlisten: 127.0.0.1:{port}\nservices:\n  - name: {SERVICE}\n    \
             script: scripts/sharded.rhai\n    schedule: \"0 0 0 1 1 *\"\n    nodes: [{}]\n    \
             replicas: {replicas}\n    push: {{kind: local, dest: \"{}/prom/{{node}}/sd/sd.json\"}}\n    \
             health: {{path: /-/healthy, interval: {}ms, timeout: 400ms, fall: {FALL}, rise: {RISE}}}\n",
            nodes.join(", "),
            root.path().display(),
            INTERVAL.as_millis(),
        ));
        Lab {
            root,
            proms,
            promshard: None,
            port,
            targets,
        }
    }

    fn start_promshard(&mut self) {
        let config = Path::new("promshard.yaml");
        self.promshard = Some(Promshard::spawn(self.root.path(), config, self.port));
    }

    /// The running promshard.
    fn d(&self) -> &Promshard {
        self.promshard.as_ref().expect("promshard started")
    }

    /// Panic with `msg` and the end of promshard's log.
    fn fail(&self, msg: &str) -> ! {
        let log = fs::read_to_string(self.root.join("promshard.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let mut proms = String::new();
        for p in &self.proms {
            proms.push_str(&format!(
                "--- prometheus {} log (last 5 lines, newest first) ---\n{}\n",
                p.addr,
                p.log_tail()
            ));
        }
        panic!(
            "{msg}\n--- promshard log (last 40 lines) ---\n{}\n{proms}",
            tail.join("\n")
        );
    }

    /// The active targets of Prometheus `i`.
    fn active(&self, i: usize) -> Result<BTreeSet<String>, String> {
        Ok(self.proms[i]
            .active()?
            .into_iter()
            .map(|(addr, _)| addr)
            .collect())
    }

    /// What the servers in `which` have.
    fn assignment(&self, which: &[usize]) -> Result<Assignment, String> {
        which
            .iter()
            .map(|&i| Ok((self.proms[i].addr.clone(), self.active(i)?)))
            .collect()
    }

    /// The sd file delivered to Prometheus `i`.
    fn delivered(&self, i: usize) -> Vec<u8> {
        fs::read(self.proms[i].dir.join("sd/sd.json")).unwrap_or_default()
    }

    /// Files promshard keeps in its out_dir for the service.
    fn out_files(&self) -> BTreeMap<String, Vec<u8>> {
        self.root.files(format!("out/{SERVICE}"))
    }

    /// Per node: `in_ring` as the API shows it.
    fn in_ring(&self) -> Result<BTreeMap<String, bool>, String> {
        let v = self.d().json("/api/v1/services")?;
        let health = v["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == SERVICE))
            .and_then(|s| s["health"].as_array())
            .ok_or_else(|| format!("no health in {v}"))?;
        Ok(health
            .iter()
            .filter_map(|n| Some((n["node"].as_str()?.to_string(), n["in_ring"].as_bool()?)))
            .collect())
    }

    fn all(&self) -> Vec<usize> {
        (0..self.proms.len()).collect()
    }

    /// Start everything and wait for the steady state: every target on
    /// exactly `replicas` servers.
    fn steady(&mut self, replicas: usize) -> Assignment {
        self.start_promshard();
        let all = self.all();
        let (a, took) = poll("steady state", Duration::from_secs(30), || {
            let a = self.assignment(&all)?;
            exactly(&a, &self.targets, replicas)?;
            Ok(a)
        })
        .unwrap_or_else(|e| self.fail(&e));
        eprintln!(
            "[replicas {replicas}] steady state after {took:?}: {}",
            sizes(&a)
        );
        a
    }

    /// Kill server `dead`; wait until the survivors cover every target
    /// exactly `min(replicas, 2)` times, checking on every poll that no
    /// survivor lost a target it had in `before`. Returns the time it took.
    fn kill_one(&mut self, dead: usize, replicas: usize, before: &Assignment) -> Duration {
        let survivors: Vec<usize> = self.all().into_iter().filter(|&i| i != dead).collect();
        let file_before = self.delivered(dead);
        self.proms[dead].kill();
        let start = Instant::now();
        let mut replanned = None;
        let (a, took) = poll(
            "the survivors to cover every target",
            FALL * INTERVAL + SLACK,
            || {
                if replanned.is_none() && self.delivered(dead) != file_before {
                    replanned = Some(start.elapsed());
                }
                let a = self.assignment(&survivors)?;
                for (node, had) in before.iter().filter(|(n, _)| a.contains_key(*n)) {
                    let lost: Vec<&String> = had.difference(&a[node]).collect();
                    if !lost.is_empty() {
                        self.fail(&format!(
                            "survivor {node} lost {} of its targets (moved between survivors), e.g. {:?}",
                            lost.len(),
                            lost.first()
                        ));
                    }
                }
                exactly(&a, &self.targets, replicas.min(survivors.len()))?;
                Ok(a)
            },
        )
        .unwrap_or_else(|e| self.fail(&e));
        // The node that left was sent an empty file (push: local always
        // reaches it), so it cannot scrape stale targets when it returns.
        let file = self.delivered(dead);
        let groups: Vec<Value> = serde_json::from_slice(&file).unwrap_or_else(|e| {
            self.fail(&format!(
                "file of the dead node is not a JSON array ({e}): {}",
                String::from_utf8_lossy(&file)
            ))
        });
        if !groups.is_empty() {
            self.fail(&format!(
                "the dead node's file still has {} groups",
                groups.len()
            ));
        }
        eprintln!(
            "[replicas {replicas}] killed {}: promshard re-planned after {replanned:?}; \
             survivors' Prometheus converged in {took:?} (limit {:?}): {}",
            self.proms[dead].addr,
            FALL * INTERVAL + SLACK,
            sizes(&a)
        );
        took
    }

    /// Start the servers `which` again; wait until the assignment equals
    /// `want` (the steady state), then check that it stays so for 3 s (no
    /// target scraped twice once settled). Returns the time it took.
    fn restart(&mut self, which: &[usize], want: &Assignment, what: &str) -> Duration {
        let files_before: Vec<Vec<u8>> = which.iter().map(|&i| self.delivered(i)).collect();
        for &i in which {
            self.proms[i].respawn();
        }
        let start = Instant::now();
        let mut replanned = None;
        let all = self.all();
        let (_, took) = poll(
            "the assignment of the steady state",
            RISE * INTERVAL + SLACK,
            || {
                if replanned.is_none()
                    && which
                        .iter()
                        .zip(&files_before)
                        .any(|(&i, before)| self.delivered(i) != *before)
                {
                    replanned = Some(start.elapsed());
                }
                let a = self.assignment(&all)?;
                if &a == want {
                    return Ok(());
                }
                let diff: Vec<String> = want
                    .iter()
                    .map(|(n, t)| {
                        let now = a.get(n).cloned().unwrap_or_default();
                        format!(
                            "{n}: {} missing, {} extra",
                            t.difference(&now).count(),
                            now.difference(t).count()
                        )
                    })
                    .collect();
                Err(diff.join("; "))
            },
        )
        .unwrap_or_else(|e| self.fail(&e));
        eprintln!(
            "[{what}] promshard delivered the returning files after {replanned:?} \
             (Prometheus start-up included); steady state in {took:?} (limit {:?})",
            RISE * INTERVAL + SLACK
        );
        let settled = Instant::now();
        while settled.elapsed() < Duration::from_secs(3) {
            let a = self.assignment(&all).unwrap_or_else(|e| self.fail(&e));
            if &a != want {
                self.fail(&format!("assignment changed after settling: {}", sizes(&a)));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        took
    }
}

#[test]
#[ignore = "needs prometheus"]
fn every_target_scraped_exactly_once_through_failures() {
    prometheus();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::new(1);

    // 1. Steady state.
    let steady = lab.steady(1);
    let delivered: Vec<Vec<u8>> = lab.all().iter().map(|&i| lab.delivered(i)).collect();

    // 2. One server killed.
    let down = lab.kill_one(1, 1, &steady);

    // 3. Back (same port, same directories).
    let up = lab.restart(&[1], &steady, "replicas 1, one back");
    let after: Vec<Vec<u8>> = lab.all().iter().map(|&i| lab.delivered(i)).collect();
    assert_eq!(after, delivered, "same nodes, same files, byte for byte");

    // 4. All down: the files must be kept through the outage.
    let out_before = lab.out_files();
    assert_eq!(out_before.len(), 3, "{:?}", out_before.keys());
    for p in &mut lab.proms {
        p.kill();
    }
    let t = Instant::now();
    let check_files = |lab: &Lab| -> Result<(), String> {
        for i in lab.all() {
            if lab.delivered(i) != delivered[i] {
                return Err(format!(
                    "the file delivered to {} changed during the outage: {}",
                    lab.proms[i].addr,
                    String::from_utf8_lossy(&lab.delivered(i))
                ));
            }
        }
        if lab.out_files() != out_before {
            return Err(format!(
                "out_dir files changed during the outage: {:?}",
                lab.out_files().keys()
            ));
        }
        Ok(())
    };
    let (_, noticed) = poll(
        "promshard to see every node down",
        FALL * INTERVAL + SLACK,
        || {
            check_files(&lab).unwrap_or_else(|e| lab.fail(&e));
            let ring = lab.in_ring()?;
            if ring.values().any(|&up| up) {
                return Err(format!("in ring: {ring:?}"));
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| lab.fail(&e));
    eprintln!("[replicas 1] all down: promshard saw it after {noticed:?}");
    // Loud: /readyz fails and the gauge says 0.
    let ready = lab.d().get("/readyz").unwrap_or_else(|e| lab.fail(&e));
    let (status, body) = (ready.status, ready.body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("every node is down"), "{body}");
    let metrics = lab
        .d()
        .get("/metrics")
        .unwrap_or_else(|e| lab.fail(&e))
        .body;
    assert!(
        metrics.contains(&format!("promshard_live_nodes{{service=\"{SERVICE}\"}} 0")),
        "{metrics}"
    );
    for p in &lab.proms {
        let line = format!(
            "promshard_node_up{{service=\"{SERVICE}\",node=\"{}\"}} 0",
            p.addr
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "promshard_membership_changes_total{{service=\"{SERVICE}\",direction=\"down\"}} 4"
        )),
        "one node down in step 2, three in step 4:\n{metrics}"
    );
    // …and stay kept a while longer.
    while t.elapsed() < FALL * INTERVAL + Duration::from_secs(4) {
        check_files(&lab).unwrap_or_else(|e| lab.fail(&e));
        std::thread::sleep(Duration::from_millis(100));
    }
    // One server comes back with an empty disk: it must get its file even
    // though the content did not change.
    let lost = lab.proms[2].dir.join("sd/sd.json");
    fs::remove_file(&lost).unwrap_or_else(|e| panic!("removing {}: {e}", lost.display()));
    let all = lab.all();
    let back = lab.restart(&all, &steady, "replicas 1, all back");
    assert_eq!(
        lab.delivered(2),
        delivered[2],
        "the lost file is delivered again"
    );

    println!(
        "convergence (interval {INTERVAL:?}, fall {FALL}, rise {RISE}, {TARGETS} targets, replicas 1): \
         one down {down:?}, one back {up:?}, all down noticed {noticed:?}, all back {back:?}"
    );
}

#[test]
#[ignore = "needs prometheus"]
fn every_target_scraped_exactly_twice_with_two_replicas() {
    prometheus();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = Lab::new(2);
    let steady = lab.steady(2);
    let down = lab.kill_one(0, 2, &steady);
    let up = lab.restart(&[0], &steady, "replicas 2, one back");
    println!(
        "convergence (interval {INTERVAL:?}, fall {FALL}, rise {RISE}, {TARGETS} targets, replicas 2): \
         one down {down:?}, one back {up:?}"
    );
}

/// HA determinism: two promshard instances with the same config and the
/// same view of the nodes write identical files, byte for byte — even when
/// their scripts return the targets in a different order.
#[test]
fn two_instances_write_identical_files() {
    let targets: Vec<String> = (0..250)
        .map(|i| format!("10.3.{}.{}:9100", i / 100, i % 100))
        .collect();
    let run = |order: &[String]| -> BTreeMap<String, Vec<u8>> {
        let dir = Dir::new();
        let script = format!(
            "fn targets(ctx) {{\n    [{}]\n}}\n",
            order
                .iter()
                .map(|t| format!("#{{ targets: [\"{t}\"], labels: #{{ team: \"a\" }} }}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        dir.write("scripts/sharded.rhai", script);
        dir.config(&format!(
            "out_dir: out\nservices:\n  - name: {SERVICE}\n    script: scripts/sharded.rhai\n    \
             nodes: [\"10.0.0.1:9090\", \"10.0.0.2:9090\", {{addr: \"10.0.0.3:9090\", weight: 2}}]\n    \
             replicas: 2\n    health: {{path: /-/healthy, interval: 1s}}\n"
        ));
        dir.run(&["once"]).success();
        dir.files(format!("out/{SERVICE}"))
    };
    let a = run(&targets);
    let mut reversed = targets.clone();
    reversed.reverse();
    let b = run(&reversed);
    assert_eq!(a.len(), 3, "one file per node: {:?}", a.keys());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same file names"
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs between the two instances"
        );
    }
}

/// Nodes from a script's `fn nodes(ctx)` are health-checked like static
/// ones: the dead one leaves the ring, the API shows why.
#[test]
fn script_nodes_are_health_checked() {
    // A tiny healthy "Prometheus": 200 to every request.
    let alive = TcpListener::bind("127.0.0.1:0").expect("bind");
    let alive_addr = alive.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut conn in alive.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let dead_addr = format!("127.0.0.1:{}", free_port());
    let dir = Dir::new();
    let port = free_port();
    dir.write(
        "scripts/sharded.rhai",
        format!(
            "fn nodes(ctx) {{ [\"{alive_addr}\", \"{dead_addr}\"] }}\n\
             fn targets(ctx) {{ [\"10.1.0.1:9100\", \"10.1.0.2:9100\", \"10.1.0.3:9100\", \"10.1.0.4:9100\"] }}\n"
        ),
    );
    dir.config(&format!(
        "out_dir: out\nlisten: 127.0.0.1:{port}\nservices:\n  - name: {SERVICE}\n    \
             script: scripts/sharded.rhai\n    schedule: \"0 0 0 1 1 *\"\n    \
             health: {{interval: 200ms, timeout: 150ms, fall: 2, rise: 2}}\n"
    ));
    let d = Promshard::spawn(dir.path(), Path::new("promshard.yaml"), port);
    let seen = poll(
        "the dead script node out of the ring",
        Duration::from_secs(15),
        || {
            let body = d.get("/api/v1/services")?.body;
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            let s = &v["services"][0];
            let planned: Vec<&str> = s["current"]["nodes"]
                .as_array()
                .map(|n| n.iter().filter_map(|n| n["node"].as_str()).collect())
                .unwrap_or_default();
            let dead = s["health"]
                .as_array()
                .and_then(|h| h.iter().find(|n| n["node"] == dead_addr.as_str()))
                .cloned()
                .unwrap_or(Value::Null);
            if planned == [alive_addr.as_str()] && dead["in_ring"] == false {
                Ok(dead)
            } else {
                Err(format!("planned {planned:?}; health {}", s["health"]))
            }
        },
    );
    let (dead, _) = seen.unwrap_or_else(|e| {
        let log = d.log_text();
        panic!("{e}\n--- promshard log ---\n{log}")
    });
    assert_eq!(dead["state"], "down", "{dead}");
    let reason = dead["last_change_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("consecutive failures: connect: connection refused"),
        "{dead}"
    );
    assert!(
        dead["last_change"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339: {dead}"
    );
    let log = d.log_text();
    assert!(
        log.lines().any(|l| l.contains("node out of the ring")
            && l.contains(&dead_addr)
            && l.contains("connection refused")),
        "the change is logged with its reason:\n{log}"
    );
}
