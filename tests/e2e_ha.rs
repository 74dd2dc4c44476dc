//! End to end: `ha:` with real etcd members, two `promshard run`
//! instances, and (for coverage) three real Prometheus servers.
//!
//! Every instance has its own directory and `out_dir`; both read one script
//! (so one edit changes the targets of both) and deliver to the same
//! destination, `<root>/<node>/sd/svc.json` — which is where a Prometheus
//! started by `Prom::start` reads. Who delivered is read from the epoch
//! marker beside each file (`.svc.json.epoch`), so the tests see what a
//! node sees. The lease is 2 s; takeover times are printed (run with
//! `--nocapture`).
//!
//! Needs `etcd` (`PROMSHARD_ETCD`, else `PATH`), and for two tests
//! `ansible-playbook` and `prometheus`; `bash .ci/test` installs them.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use promshard::config::Config;
use promshard::push::{Delivery, DeliveryResult, Pusher};
use tokio_util::sync::CancellationToken;
use util::child::{free_port, holds, poll, poll_every};
use util::daemon::Promshard;
use util::etcd::Etcd;
use util::prom::Prom;
use util::tools::{ansible_playbook, ansible_python};
use util::{Dir, sd_entries};

const TTL: Duration = Duration::from_secs(2);
const SERVICE: &str = "svc";

/// Timings are measured: one scenario at a time on the machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// etcd, the instances and the destination tree of one scenario.
struct Lab {
    dir: Dir,
    etcd: Etcd,
    /// Node `n`'s files are in `<dest>/<n>/sd/`.
    dest: PathBuf,
    nodes: Vec<String>,
    ports: Vec<u16>,
    instances: Vec<Option<Promshard>>,
}

impl Lab {
    /// `members` etcd members, `n` instances delivering with `push` (a
    /// YAML flow map, given the destination root: `dest`, else the lab's
    /// directory) to `nodes`, sharding `targets`.
    fn start(
        members: usize,
        n: usize,
        (nodes, dest): (Vec<String>, Option<PathBuf>),
        push: fn(&std::path::Path) -> String,
        targets: &[String],
    ) -> Lab {
        let dir = Dir::new();
        let dest = dest.unwrap_or_else(|| dir.path().to_path_buf());
        let push = push(&dest);
        let etcd = Etcd::start(dir.path(), members);
        let mut lab = Lab {
            ports: (0..n).map(|_| free_port()).collect(),
            instances: (0..n).map(|_| None).collect(),
            dir,
            etcd,
            dest,
            nodes,
        };
        lab.set_targets(targets);
        let quoted: Vec<String> = lab.nodes.iter().map(|n| format!("\"{n}\"")).collect();
        for i in 0..n {
            let config = format!(
                "out_dir: out\nlisten: 127.0.0.1:{port}\n\
                 ha: {{etcd: {{endpoints: {endpoints}}}, name: lab, lease_ttl: {ttl}s, instance: i{i}}}\n\
                 services:\n  - name: {SERVICE}\n    script: ../{SERVICE}.rhai\n    \
                 schedule: \"* * * * * *\"\n    replicas: 2\n    nodes: [{nodes}]\n    push: {push}\n",
                port = lab.ports[i],
                endpoints = lab.etcd.endpoints_yaml(),
                ttl = TTL.as_secs(),
                nodes = quoted.join(", "),
            );
            lab.dir.write(format!("i{i}/promshard.yaml"), config);
            lab.run(i);
        }
        lab
    }

    fn set_targets(&self, targets: &[String]) {
        let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        self.dir.write(
            format!("{SERVICE}.rhai"),
            format!("fn targets(ctx) {{ [{}] }}\n", quoted.join(", ")),
        );
    }

    /// Start instance `i` (again).
    fn run(&mut self, i: usize) {
        self.instances[i] = Some(Promshard::start(
            &self.dir.join(format!("i{i}")),
            self.ports[i],
        ));
    }

    /// kill -9 instance `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.instances[i].take() {
            p.proc.kill();
        }
    }

    fn instance(&self, i: usize) -> &Promshard {
        self.instances[i].as_ref().expect("instance running")
    }

    /// `(role, epoch)` instance `i` reports.
    fn role(&self, i: usize) -> Result<(String, Option<u64>), String> {
        let v = self.instance(i).json("/api/v1/services")?;
        let role = v["ha"]["role"].as_str().ok_or(format!("no ha.role: {v}"))?;
        Ok((role.to_string(), v["ha"]["epoch"].as_u64()))
    }

    /// The one leader among the running instances and its epoch.
    fn leader(&self) -> Result<(usize, u64), String> {
        self.leader_but(usize::MAX)
    }

    /// The one leader among the running instances but `but` (paused or
    /// stopping) and its epoch.
    fn leader_but(&self, but: usize) -> Result<(usize, u64), String> {
        let mut leaders = Vec::new();
        for i in (0..self.instances.len()).filter(|&i| i != but && self.instances[i].is_some()) {
            if let (role, Some(e)) = self.role(i)?
                && role == "leader"
            {
                leaders.push((i, e));
            }
        }
        match leaders[..] {
            [one] => Ok(one),
            _ => Err(format!("leaders: {leaders:?}")),
        }
    }

    fn file(&self, node: &str) -> PathBuf {
        self.dest
            .join(node)
            .join("sd")
            .join(format!("{SERVICE}.json"))
    }

    /// Each node's file and the epoch in its marker.
    fn delivered(&self) -> BTreeMap<String, (Option<Vec<u8>>, Option<u64>)> {
        self.nodes
            .iter()
            .map(|n| {
                let file = self.file(n);
                let marker = file.with_file_name(format!(".{SERVICE}.json.epoch"));
                let epoch = fs::read_to_string(marker)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                (n.clone(), (fs::read(file).ok(), epoch))
            })
            .collect()
    }

    /// Ok when every node's file was delivered under `epoch`.
    fn all_delivered_by(&self, epoch: u64) -> Result<(), String> {
        let d = self.delivered();
        let markers: Vec<Option<u64>> = d.values().map(|(_, e)| *e).collect();
        if d.values().all(|(f, e)| f.is_some() && *e == Some(epoch)) {
            Ok(())
        } else {
            Err(format!(
                "markers {markers:?}, want epoch {epoch} everywhere"
            ))
        }
    }

    /// Every target of the files, with how many nodes hold it.
    fn coverage(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (file, _) in self.delivered().values() {
            for (t, _) in sd_entries(file.as_deref().unwrap_or(b"[]")) {
                *out.entry(t).or_default() += 1;
            }
        }
        out
    }

    /// Fail with the logs of every instance.
    fn fail(&self, msg: &str) -> ! {
        let logs: Vec<String> = self
            .instances
            .iter()
            .flatten()
            .map(|p| p.log_tail(12))
            .collect();
        panic!("{msg}\n{}", logs.join("\n"))
    }

    fn wait<T>(&self, what: &str, within: Duration, check: impl FnMut() -> Result<T, String>) -> T {
        poll(what, within, check).unwrap_or_else(|e| self.fail(&e))
    }

    /// Wait for one leader and its delivery to every node.
    fn settled(&self) -> (usize, u64) {
        let (leader, epoch) = self.wait("one leader", Duration::from_secs(20), || self.leader());
        self.wait("the leader's delivery", Duration::from_secs(20), || {
            self.all_delivered_by(epoch)
        });
        (leader, epoch)
    }

    /// How long until every node's file carries an epoch above `old`,
    /// delivered by an instance other than `old_leader`: (leader, epoch, took).
    fn takeover(&self, old_leader: usize, old: u64, within: Duration) -> (usize, u64, Duration) {
        let every = Duration::from_millis(10);
        let (epoch, took) = poll_every("a new leader's delivery", within, every, || {
            let epochs: BTreeSet<Option<u64>> =
                self.delivered().values().map(|(_, e)| *e).collect();
            match epochs.iter().collect::<Vec<_>>()[..] {
                [Some(e)] if *e > old => Ok(*e),
                _ => Err(format!("markers {epochs:?}, want one epoch above {old}")),
            }
        })
        .unwrap_or_else(|e| self.fail(&e));
        let (leader, e) = self.wait("the new leader's status", Duration::from_secs(5), || {
            self.leader_but(old_leader)
        });
        assert_eq!(e, epoch, "the new leader reports the epoch on the files");
        assert_ne!(leader, old_leader, "leadership moved");
        (leader, epoch, took)
    }
}

fn local_push(root: &std::path::Path) -> String {
    format!(
        "{{kind: local, dest: \"{}/{{node}}/sd/{SERVICE}.json\"}}",
        root.display()
    )
}

fn targets(n: usize, offset: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("127.0.9.{}:9100", offset + i + 1))
        .collect()
}

/// Three node names; their "servers" are directories under the lab root.
fn file_nodes() -> (Vec<String>, Option<PathBuf>) {
    (
        (0..3).map(|i| format!("127.0.0.1:{}", 19090 + i)).collect(),
        None,
    )
}

/// The shipped playbook, run for real with a local connection.
fn ansible_push(root: &std::path::Path) -> String {
    let playbook = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playbooks/push_sd.yml");
    format!(
        "{{kind: ansible, playbook: \"{}\", ansible_playbook: \"{}\", dest_sd_file_name: {SERVICE}.json, retries: 0, \
         vars: {{ansible_connection: local, ansible_python_interpreter: \"{py}\", sd_validate_python: \"{py}\", \
         create_dest_dir: true, dest_dir: \"{}/{{node}}/sd\"}}}}",
        playbook.display(),
        ansible_playbook().display(),
        root.display(),
        py = ansible_python().display(),
    )
}

#[test]
#[ignore = "needs etcd"]
fn one_of_two_delivers_and_the_standby_takes_over_on_kill_and_on_sigterm() {
    let _one = serial();
    let mut lab = Lab::start(1, 2, file_nodes(), local_push, &targets(12, 0));
    let (leader, epoch) = lab.settled();
    let standby = 1 - leader;
    // Exactly one delivers: the standby plans (a dry run) and writes nothing.
    holds("one leader, its epoch on every node", 2 * TTL, || {
        let (l, e) = lab.leader()?;
        lab.all_delivered_by(epoch)?;
        if (l, e) != (leader, epoch) {
            return Err(format!("leader {l} epoch {e}"));
        }
        Ok(())
    })
    .unwrap_or_else(|e| lab.fail(&e));
    let status = lab.instance(standby).json("/api/v1/services").unwrap();
    assert_eq!(status["ha"]["role"], "standby", "{status}");
    assert_eq!(
        status["services"][0]["current"]["dry_run"], true,
        "the standby is warm: {status}"
    );
    assert!(
        !lab.dir.join(format!("i{standby}/out/{SERVICE}")).exists(),
        "a standby writes nothing"
    );
    let metrics = lab.instance(leader).body("/metrics").unwrap();
    assert!(
        metrics.contains("promshard_leader 1")
            && metrics.contains("promshard_ha_role{role=\"leader\"} 1"),
        "{metrics}"
    );

    // kill -9 the leader: the standby delivers once the lease has expired.
    lab.kill(leader);
    let (new, epoch2, took) = lab.takeover(leader, epoch, 2 * TTL + Duration::from_secs(1));
    eprintln!("kill -9 of the leader: the standby delivered after {took:?} (lease_ttl {TTL:?})");
    assert!(
        took < 2 * TTL,
        "kill -9 takeover took {took:?}, more than 2 × lease_ttl"
    );

    // SIGTERM resigns at once: no waiting for the TTL.
    lab.run(leader);
    lab.wait(
        "the restarted instance to be a standby",
        Duration::from_secs(10),
        || match lab.role(leader)? {
            (r, None) if r == "standby" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    lab.instance(new).proc.signal(libc::SIGTERM);
    let (_, _, took) = lab.takeover(new, epoch2, Duration::from_secs(3));
    eprintln!("SIGTERM of the leader: the standby delivered after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM takeover took {took:?}"
    );
}

/// SIGSTOP the leader past its lease; the standby takes over; SIGCONT:
/// the old leader delivers nothing, and its epoch forced through its own
/// pusher is refused by the markers.
fn paused_leader_is_fenced(push: fn(&std::path::Path) -> String) {
    let _one = serial();
    let lab = Lab::start(1, 2, file_nodes(), push, &targets(9, 0));
    let (old, stale) = lab.settled();
    let paused = &lab.instance(old).proc;
    paused.signal(libc::SIGSTOP);
    let (_, epoch, took) = lab.takeover(old, stale, 2 * TTL + Duration::from_secs(20));
    eprintln!("SIGSTOP of the leader: the standby delivered after {took:?}");
    let before = lab.delivered();
    paused.signal(libc::SIGCONT);
    // The old leader finds its lease gone and delivers nothing.
    lab.wait("the old leader to step down", 2 * TTL, || {
        match lab.role(old)? {
            (r, None) if r == "standby" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    holds("the new leader's files stay", 2 * TTL, || {
        let now = lab.delivered();
        if now == before {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .unwrap_or_else(|e| lab.fail(&e));

    // A delivery forced past the lease check, with the old epoch.
    let config = Config::load(&lab.dir.join(format!("i{old}/promshard.yaml"))).expect("config");
    let service = &config.services[0];
    let stale_file = lab.dir.write("stale.json", "[]\n");
    let batch = lab
        .nodes
        .iter()
        .map(|n| Delivery {
            node: n.clone(),
            file: stale_file.clone(),
            file_name: "stale.json".into(),
            epoch: Some(stale),
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let delivered = rt.block_on(Pusher::for_service(service).deliver(
        service,
        batch,
        &CancellationToken::new(),
        true,
    ));
    for r in &delivered.nodes {
        assert_eq!(r.result, DeliveryResult::Fenced, "{r:?}");
        let why = r.error.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("fenced:") && why.contains(&epoch.to_string()),
            "{why}"
        );
    }
    assert_eq!(delivered.nodes.len(), lab.nodes.len());
    assert_eq!(
        lab.delivered(),
        before,
        "files on disk carry the new leader's epoch"
    );
    lab.all_delivered_by(epoch).unwrap_or_else(|e| lab.fail(&e));
}

#[test]
#[ignore = "needs etcd"]
fn a_paused_leader_delivers_nothing_and_its_stale_epoch_is_fenced_push_local() {
    paused_leader_is_fenced(local_push);
}

#[test]
#[ignore = "needs etcd and ansible-playbook"]
fn a_paused_leader_delivers_nothing_and_its_stale_epoch_is_fenced_by_the_playbook() {
    paused_leader_is_fenced(ansible_push);
}

/// Targets in `node`'s file.
fn held(lab: &Lab, node: &str) -> usize {
    let file = fs::read(lab.file(node)).unwrap_or_default();
    sd_entries(&file).len()
}

#[test]
#[ignore = "needs etcd"]
fn a_drain_asked_of_the_standby_holds_when_the_leader_is_killed() {
    let _one = serial();
    let all = targets(12, 0);
    let mut lab = Lab::start(1, 2, file_nodes(), local_push, &all);
    let (leader, epoch) = lab.settled();
    let standby = 1 - leader;
    let drained = lab.nodes[0].clone();
    let reply = lab
        .instance(standby)
        .post(&format!("/api/v1/nodes/{drained}/drain"), None)
        .unwrap_or_else(|e| lab.fail(&e));
    assert_eq!(reply.status, 202, "{}", reply.body);
    // The leader reads the drain from etcd: the node empties, the other two
    // hold every target (replicas: 2).
    let emptied = |lab: &Lab| {
        let covered = lab.coverage();
        if held(lab, &drained) == 0
            && covered.len() == all.len()
            && covered.values().all(|&n| n == 2)
        {
            Ok(())
        } else {
            Err(format!(
                "{drained}: {} targets; coverage {covered:?}",
                held(lab, &drained)
            ))
        }
    };
    lab.wait(
        "the leader to empty the drained node",
        Duration::from_secs(10),
        || emptied(&lab),
    );

    lab.kill(leader);
    let (new, _, _) = lab.takeover(leader, epoch, 2 * TTL + Duration::from_secs(5));
    holds("the new leader keeps the node drained", 2 * TTL, || {
        emptied(&lab)
    })
    .unwrap_or_else(|e| lab.fail(&e));
    let status = lab.instance(new).json("/api/v1/services").unwrap();
    let shown = &status["services"][0]["current"]["handover"]["drained"][0];
    assert!(
        shown["node"] == drained.as_str() && shown["state"] == "drained",
        "the new leader shows the drained node: {status}"
    );

    let reply = lab
        .instance(new)
        .post(&format!("/api/v1/nodes/{drained}/undrain"), None)
        .unwrap_or_else(|e| lab.fail(&e));
    assert_eq!(reply.status, 202, "{}", reply.body);
    lab.wait(
        "the undrained node to get targets again",
        Duration::from_secs(10),
        || match held(&lab, &drained) {
            0 => Err(format!("{drained} still empty")),
            _ => Ok(()),
        },
    );
}

#[test]
#[ignore = "needs etcd"]
fn three_etcd_members_survive_one_and_without_etcd_nobody_delivers() {
    let _one = serial();
    let mut lab = Lab::start(3, 2, file_nodes(), local_push, &targets(10, 0));
    let (_, epoch) = lab.settled();
    // One member down: leadership and delivery go on.
    lab.etcd.members[0].proc.kill();
    lab.set_targets(&targets(14, 0));
    let want: BTreeMap<String, usize> = targets(14, 0).into_iter().map(|t| (t, 2)).collect();
    lab.wait(
        "the 14 targets delivered with one etcd member down",
        Duration::from_secs(20),
        || {
            let (_, e) = lab.leader()?;
            lab.all_delivered_by(e)?;
            let got = lab.coverage();
            if got == want {
                Ok(())
            } else {
                Err(format!("coverage {got:?}"))
            }
        },
    );
    let (_, after) = lab.leader().unwrap();
    eprintln!("one etcd member killed: epoch {epoch} -> {after} (same epoch: leadership kept)");
    // Every standby answers /sd with the delivered plan before etcd goes.
    let node = lab.nodes[0].clone();
    let delivered_targets = sd_entries(&fs::read(lab.file(&node)).unwrap());
    for i in 0..2 {
        lab.wait(
            "/sd to answer the delivered plan",
            Duration::from_secs(10),
            || {
                let got = sd_entries(
                    lab.instance(i)
                        .body(&format!("/sd/{SERVICE}/{node}"))?
                        .as_bytes(),
                );
                if got == delivered_targets {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        );
    }

    // Every member down: nobody delivers, not even a changed plan.
    for m in &mut lab.etcd.members[1..] {
        m.proc.kill();
    }
    lab.wait(
        "every instance to stop leading",
        2 * TTL + Duration::from_secs(1),
        || match (lab.role(0)?, lab.role(1)?) {
            ((a, None), (b, None)) if a == "standby" && b == "standby" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let before = lab.delivered();
    lab.set_targets(&targets(20, 0));
    for i in 0..2 {
        lab.instance(i)
            .body("/healthz")
            .unwrap_or_else(|e| lab.fail(&e));
    }
    holds("files untouched, /healthz and /sd answer", 3 * TTL, || {
        if lab.delivered() != before {
            return Err("a file changed".into());
        }
        for i in 0..2 {
            lab.instance(i).body("/healthz")?;
            let got = sd_entries(
                lab.instance(i)
                    .body(&format!("/sd/{SERVICE}/{node}"))?
                    .as_bytes(),
            );
            if got != delivered_targets {
                return Err(format!("instance {i} /sd answered {got:?}"));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| lab.fail(&e));
}

#[test]
#[ignore = "needs etcd and prometheus"]
fn coverage_holds_again_after_a_promshard_instance_is_killed() {
    let _one = serial();
    let dir = Dir::new();
    let proms: Vec<Prom> = (0..3)
        .map(|_| Prom::start(dir.path(), SERVICE, "1s"))
        .collect();
    let nodes: Vec<String> = proms.iter().map(|p| p.addr.clone()).collect();
    let nodes = (nodes, Some(dir.path().to_path_buf()));
    let mut lab = Lab::start(1, 2, nodes, local_push, &targets(30, 0));
    let covered = |want: &[String]| {
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for p in &proms {
            for (addr, _) in p.active()? {
                *got.entry(addr).or_default() += 1;
            }
        }
        let want: BTreeMap<String, usize> = want.iter().map(|t| (t.clone(), 2)).collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("scraped by: {got:?}"))
        }
    };
    let (leader, epoch) = lab.settled();
    lab.wait(
        "every target on exactly 2 servers",
        Duration::from_secs(30),
        || covered(&targets(30, 0)),
    );
    // The leader dies while the targets change: the new leader must place
    // them, and every Prometheus must scrape what it was given.
    lab.kill(leader);
    let started = Instant::now();
    lab.set_targets(&targets(24, 10));
    let (_, _, took) = lab.takeover(leader, epoch, 2 * TTL + Duration::from_secs(1));
    let refresh = Duration::from_secs(10);
    lab.wait("coverage of the new targets", 2 * TTL + refresh, || {
        covered(&targets(24, 10))
    });
    eprintln!(
        "promshard leader killed: new leader delivered after {took:?}, coverage whole again after {:?}",
        started.elapsed()
    );
    drop(dir);
}
