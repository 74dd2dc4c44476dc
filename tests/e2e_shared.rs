//! End to end: `ha.mode: shared` with a real etcd and up to four
//! `promshard run` instances sharing 12 services (`push: local`, each
//! service its own sd file per node).
//!
//! Who delivered a service is read from the epoch markers beside its files
//! (`.svcN.json.epoch`): the epoch is the revision of the service's owner
//! key, and etcd's history of that key says which instance it named. The
//! owner keys are read at every revision of a move's window to show that no
//! service was ever without an owner, and every instance's pass summary
//! lines (`epoch` field) to show that no epoch had two writers. Takeover
//! times and the number of services moved are printed (`--nocapture`).
//!
//! Needs `etcd` (`PROMSHARD_ETCD`, else `PATH`) and `promtool`; `bash .ci/test`
//! installs them.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use promshard::config::ha::{HaConfig, HaMode};
use promshard::ha::etcd::{Client, Range};
use util::Dir;
use util::child::{free_port, holds, poll, poll_every};
use util::daemon::Promshard;
use util::etcd::Etcd;

const TTL: Duration = Duration::from_secs(2);
const SERVICES: usize = 12;
const NODES: [&str; 2] = ["127.0.0.1:19090", "127.0.0.1:19091"];

/// Owner of each service: (instance, epoch).
type Owners = BTreeMap<String, (String, u64)>;
/// Keys by name: (value, mod_revision).
type Keys = BTreeMap<String, (String, i64)>;

struct Lab {
    dir: Dir,
    _etcd: Etcd,
    client: Client,
    rt: tokio::runtime::Runtime,
    ports: Vec<u16>,
    instances: Vec<Option<Promshard>>,
}

fn service(i: usize) -> String {
    format!("svc{i}")
}

impl Lab {
    /// etcd and the configs of `n` instances (none started).
    fn new(n: usize) -> Lab {
        let dir = Dir::new();
        let etcd = Etcd::start(dir.path(), 1);
        let cfg = HaConfig {
            endpoints: vec![format!("http://{}", etcd.members[0].client)],
            tls: None,
            user: None,
            name: "lab".into(),
            lease_ttl: TTL,
            instance: "test".into(),
            mode: HaMode::Shared,
        };
        let client = Client::new(&cfg, Duration::from_secs(3)).expect("etcd client");
        dir.write(
            "targets.rhai",
            "fn targets(ctx) { [\"127.0.9.1:9100\", \"127.0.9.2:9100\", \"127.0.9.3:9100\"] }\n",
        );
        let lab = Lab {
            ports: (0..n).map(|_| free_port()).collect(),
            instances: (0..n).map(|_| None).collect(),
            client,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            _etcd: etcd,
            dir,
        };
        let nodes: Vec<String> = NODES.iter().map(|n| format!("\"{n}\"")).collect();
        for i in 0..n {
            let mut config = format!(
                "out_dir: out\nlisten: 127.0.0.1:{port}\n\
                 ha: {{etcd: {{endpoints: {endpoints}}}, name: lab, lease_ttl: {ttl}s, instance: i{i}, mode: shared}}\n\
                 services:\n",
                port = lab.ports[i],
                endpoints = lab._etcd.endpoints_yaml(),
                ttl = TTL.as_secs(),
            );
            for s in 0..SERVICES {
                config.push_str(&format!(
                    "  - name: {name}\n    script: ../targets.rhai\n    schedule: \"*/2 * * * * *\"\n    \
                     nodes: [{nodes}]\n    push: {{kind: local, dest: \"{root}/{{node}}/sd/{name}.json\"}}\n",
                    name = service(s),
                    nodes = nodes.join(", "),
                    root = lab.dir.path().display(),
                ));
            }
            lab.dir.write(format!("i{i}/promshard.yaml"), config);
        }
        lab
    }

    fn run(&mut self, i: usize) {
        self.instances[i] = Some(Promshard::start(
            &self.dir.join(format!("i{i}")),
            self.ports[i],
        ));
    }

    fn instance(&self, i: usize) -> &Promshard {
        self.instances[i].as_ref().expect("instance running")
    }

    fn fail(&self, msg: &str) -> ! {
        let logs: Vec<String> = self
            .instances
            .iter()
            .flatten()
            .map(|p| p.log_tail(15))
            .collect();
        panic!("{msg}\n{}", logs.join("\n"))
    }

    fn wait<T>(&self, what: &str, within: Duration, check: impl FnMut() -> Result<T, String>) -> T {
        poll(what, within, check).unwrap_or_else(|e| self.fail(&e))
    }

    /// The keys under `promshard/lab/<kind>/` at `revision` (0: now), by
    /// name, with the store's revision.
    fn keys(&self, kind: &str, revision: i64) -> Result<(Keys, i64), String> {
        let prefix = format!("promshard/lab/{kind}/");
        let mut range = Range::prefix(prefix.clone());
        range.revision = revision;
        let r = self
            .rt
            .block_on(self.client.range(range))
            .map_err(|e| e.to_string())?;
        let keys = r
            .kvs
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                (name, (value, kv.mod_revision))
            })
            .collect();
        Ok((keys, r.header.revision))
    }

    fn owners_at(&self, revision: i64) -> Result<Owners, String> {
        let (keys, _) = self.keys("owner", revision)?;
        Ok(keys
            .into_iter()
            .map(|(s, (i, rev))| (s, (i, rev as u64)))
            .collect())
    }

    fn revision(&self) -> i64 {
        self.keys("owner", 0).unwrap_or_else(|e| self.fail(&e)).1
    }

    fn file(&self, node: &str, service: &str) -> PathBuf {
        self.dir
            .join(node)
            .join("sd")
            .join(format!("{service}.json"))
    }

    /// Per service, the epochs in its markers (one per node; None: none).
    fn markers(&self) -> BTreeMap<String, Vec<Option<u64>>> {
        (0..SERVICES)
            .map(|s| {
                let name = service(s);
                let epochs = NODES
                    .iter()
                    .map(|n| {
                        let marker = self
                            .file(n, &name)
                            .with_file_name(format!(".{name}.json.epoch"));
                        fs::read_to_string(marker)
                            .ok()
                            .and_then(|t| t.trim().parse().ok())
                    })
                    .collect();
                (name, epochs)
            })
            .collect()
    }

    /// Ok with the owners when every service is owned by one of `running`
    /// as the spread wants, nobody asks for one, and every service's files
    /// carry its owner's epoch.
    fn settled(&self, running: &[usize]) -> Result<Owners, String> {
        let owners = self.owners_at(0)?;
        let names: Vec<String> = running.iter().map(|i| format!("i{i}")).collect();
        let inst: Vec<&str> = names.iter().map(String::as_str).collect();
        let svcs: Vec<String> = (0..SERVICES).map(service).collect();
        let svc: Vec<(&str, Option<u64>)> = svcs.iter().map(|s| (s.as_str(), Some(3))).collect();
        let desired = promshard::shard::spread::spread(&inst, &svc).map_err(|e| e.to_string())?;
        let have: BTreeMap<String, String> = owners
            .iter()
            .map(|(s, (i, _))| (s.clone(), i.clone()))
            .collect();
        if have != desired {
            return Err(format!("owners {have:?}, want {desired:?}"));
        }
        let (ready, _) = self.keys("ready", 0)?;
        if !ready.is_empty() {
            return Err(format!("asks pending: {ready:?}"));
        }
        let markers = self.markers();
        for (s, (_, epoch)) in &owners {
            if markers[s].iter().any(|m| *m != Some(*epoch)) {
                return Err(format!(
                    "{s}: markers {:?}, owner epoch {epoch}",
                    markers[s]
                ));
            }
        }
        Ok(owners)
    }

    /// Fail unless every service has an owner at every revision from
    /// `from` to `to` (etcd's history of the owner keys).
    fn no_gap(&self, from: i64, to: i64, services: &BTreeSet<String>) {
        for rev in from..=to {
            let owners = self.owners_at(rev).unwrap_or_else(|e| self.fail(&e));
            let missing: Vec<&String> = services
                .iter()
                .filter(|s| !owners.contains_key(*s))
                .collect();
            if !missing.is_empty() {
                self.fail(&format!("revision {rev}: no owner for {missing:?}"));
            }
        }
    }

    /// Ok when instance `i`'s `/metrics` passes `promtool check metrics`
    /// and shows `owners`: one owner series per service, and its own count.
    fn owner_metrics(&self, i: usize, owners: &Owners) -> Result<(), String> {
        let d = self.instance(i);
        // promtool reads the text format (the default is OpenMetrics).
        let text = util::http::agent(Duration::from_secs(5))
            .get(format!("{}/metrics", d.base))
            .header("Accept", "text/plain;version=0.0.4")
            .call();
        util::prom::check_metrics(&util::http::read_reply(text)?.body)?;
        let body = d.body("/metrics")?;
        let mine = owners
            .values()
            .filter(|(o, _)| *o == format!("i{i}"))
            .count();
        let owned = d.metric("promshard_owned_services", &[]);
        if owned != mine as f64 {
            return Err(format!("promshard_owned_services {owned}, want {mine}"));
        }
        for (s, (o, _)) in owners {
            let v = d.metric("promshard_service_owner", &[("service", s), ("owner", o)]);
            let series = body
                .matches(&format!("promshard_service_owner{{service=\"{s}\""))
                .count();
            if v != 1.0 || series != 1 {
                return Err(format!(
                    "{s}: owner {o} series {v}, {series} series in {body}"
                ));
            }
        }
        Ok(())
    }

    /// Ok when instance `i` answers for every service as its owner
    /// delivered it: `/api/v1/services` and `where` name the owner, the
    /// status page counts what it owns, `/sd` answers for every service.
    fn shows_owners(&self, i: usize, owners: &Owners) -> Result<(), String> {
        let d = self.instance(i);
        let v = d.json("/api/v1/services")?;
        for (s, (o, e)) in owners {
            let shown = &v["ha"]["owners"][s];
            if shown["instance"] != o.as_str() || shown["epoch"] != *e {
                return Err(format!("i{i}: {s} shown as {shown}, owner {o} epoch {e}"));
            }
            d.body(&format!("/sd/{s}/{}", NODES[0]))?;
        }
        let mine = owners
            .values()
            .filter(|(o, _)| *o == format!("i{i}"))
            .count();
        let page = d.body("/")?;
        let line = format!("owns and delivers {mine} of {SERVICES} services");
        if !page.contains(&line) || (mine > 0 && !page.contains("(this instance)")) {
            return Err(format!("i{i}: the status page lacks {line:?}: {page}"));
        }
        let w = d.json("/api/v1/where?target=127.0.9.1:9100")?;
        let answers = w["services"].as_array().cloned().unwrap_or_default();
        if answers.len() != SERVICES {
            return Err(format!("i{i}: where answered {w}"));
        }
        for a in &answers {
            let s = a["service"].as_str().unwrap_or_default();
            if owners.get(s).map(|(o, _)| o.as_str()) != a["owner"].as_str() {
                return Err(format!("i{i}: where names owner {} for {s}", a["owner"]));
            }
        }
        Ok(())
    }

    /// Wait until every service of `theirs` (with the epoch it had) is
    /// delivered anew on every node, by someone else; when each was.
    fn taken_over(&self, what: &str, theirs: &BTreeMap<String, u64>) -> BTreeMap<String, Duration> {
        let mut took = BTreeMap::new();
        let start = Instant::now();
        let within = 2 * TTL + Duration::from_secs(5);
        poll_every(what, within, Duration::from_millis(10), || {
            let markers = self.markers();
            for (s, old) in theirs {
                if !took.contains_key(s) && markers[s].iter().all(|m| m.is_some_and(|e| e > *old)) {
                    took.insert(s.clone(), start.elapsed());
                }
            }
            if took.len() == theirs.len() {
                Ok(())
            } else {
                Err(format!(
                    "taken over: {took:?} of {theirs:?}; markers {markers:?}"
                ))
            }
        })
        .unwrap_or_else(|e| self.fail(&e));
        took
    }

    /// Every delivery an instance's log records: (time, service, epoch).
    /// (Read from its log file: also of an instance killed since.)
    fn deliveries(&self, i: usize) -> Vec<(String, String, u64)> {
        let log =
            fs::read_to_string(self.dir.join(format!("i{i}/promshard.log"))).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["fields"]["message"] == "pass done")
            .filter(|l| l["fields"]["delivered"].as_u64().unwrap_or(0) > 0)
            .filter_map(|l| {
                Some((
                    l["timestamp"].as_str()?.to_string(),
                    l["fields"]["service"].as_str()?.to_string(),
                    l["fields"]["epoch"].as_u64()?,
                ))
            })
            .collect()
    }
}

/// The services `owners` gives instance `i`, with their epochs.
fn owned_by(owners: &Owners, i: usize) -> BTreeMap<String, u64> {
    owners
        .iter()
        .filter(|(_, (o, _))| *o == format!("i{i}"))
        .map(|(s, (_, e))| (s.clone(), *e))
        .collect()
}

fn per_instance(owners: &Owners) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for (i, _) in owners.values() {
        *c.entry(i.clone()).or_default() += 1;
    }
    c
}

fn moved(a: &Owners, b: &Owners) -> usize {
    a.iter()
        .filter(|(s, (i, _))| b.get(*s).map(|o| &o.0) != Some(i))
        .count()
}

fn all_services() -> BTreeSet<String> {
    (0..SERVICES).map(service).collect()
}

#[test]
#[ignore = "needs etcd and promtool"]
fn services_spread_move_one_at_a_time_and_fail_over_within_two_lease_ttls() {
    let mut lab = Lab::new(4);
    for i in 0..3 {
        lab.run(i);
    }
    // Three instances: 4/4/4, each service delivered by its owner alone.
    let three = lab.wait(
        "12 services spread over 3 instances",
        Duration::from_secs(60),
        || lab.settled(&[0, 1, 2]),
    );
    let counts = per_instance(&three);
    eprintln!("3 instances: {counts:?}");
    assert!(
        counts.len() == 3 && counts.values().all(|&n| (3..=5).contains(&n)),
        "{counts:?}"
    );
    holds("the spread stays", TTL, || {
        lab.settled(&[0, 1, 2]).map(drop)
    })
    .unwrap_or_else(|e| lab.fail(&e));
    lab.wait("the owners in /metrics", Duration::from_secs(5), || {
        lab.owner_metrics(0, &three)
    });
    lab.wait(
        "every instance to show every owner",
        Duration::from_secs(5),
        || (0..3).try_for_each(|i| lab.shows_owners(i, &three)),
    );

    // A fourth joins: about 3 services move, one at a time, none without
    // an owner at any revision.
    let before_join = lab.revision();
    let started = Instant::now();
    lab.run(3);
    let four = lab.wait(
        "12 services spread over 4 instances",
        Duration::from_secs(60),
        || lab.settled(&[0, 1, 2, 3]),
    );
    let joined = moved(&three, &four);
    eprintln!(
        "a fourth instance joined: {joined} services moved in {:?}; {:?}",
        started.elapsed(),
        per_instance(&four)
    );
    assert!((1..=6).contains(&joined), "{joined} moved on join");
    lab.no_gap(before_join, lab.revision(), &all_services());

    // kill -9 one: its services are delivered by the others within 2 × TTL.
    let victim = 0;
    let theirs = owned_by(&four, victim);
    let others: BTreeSet<String> = all_services()
        .into_iter()
        .filter(|s| !theirs.contains_key(s))
        .collect();
    let before_kill = lab.revision();
    if let Some(mut p) = lab.instances[victim].take() {
        p.proc.kill();
    }
    let took = lab.taken_over("the killed instance's services", &theirs);
    let slowest = took.values().max().copied().unwrap_or_default();
    eprintln!(
        "kill -9 of i{victim}: its {} services delivered by the others after {took:?} (slowest {slowest:?}, lease_ttl {TTL:?})",
        theirs.len()
    );
    assert!(
        slowest < 2 * TTL,
        "takeover took {slowest:?}, more than 2 × lease_ttl"
    );
    let three_again = lab.wait(
        "12 services spread over the 3 left",
        Duration::from_secs(60),
        || lab.settled(&[1, 2, 3]),
    );
    let left = moved(&four, &three_again);
    eprintln!(
        "after the kill: {left} services moved ({} were the killed instance's); {:?}",
        theirs.len(),
        per_instance(&three_again)
    );
    assert!(
        left >= theirs.len() && left <= theirs.len() + 2,
        "{left} moved on leave"
    );
    // The others' services never lost their owner, and those that stayed
    // where they were kept their epochs.
    lab.no_gap(before_kill, lab.revision(), &others);
    for s in &others {
        let (before, after) = (&four[s], &three_again[s]);
        assert!(
            before.0 != after.0 || before.1 == after.1,
            "{s} stayed on {} but its epoch went {} -> {}",
            before.0,
            before.1,
            after.1
        );
    }

    // SIGSTOP one past its lease, SIGCONT: it delivers nothing stale.
    let paused = 1;
    let held = owned_by(&three_again, paused);
    lab.instance(paused).proc.signal(libc::SIGSTOP);
    let took = lab.taken_over("the paused instance's services", &held);
    eprintln!(
        "SIGSTOP of i{paused}: its {} services delivered by the others after {took:?}",
        held.len(),
    );
    let newest = lab
        .markers()
        .values()
        .flatten()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0);
    let lines_before = lab.instance(paused).log_lines().len();
    lab.instance(paused).proc.signal(libc::SIGCONT);
    holds("no stale delivery after SIGCONT", 2 * TTL, || {
        let markers = lab.markers();
        for (s, old) in &held {
            if markers[s].contains(&Some(*old)) {
                return Err(format!(
                    "{s} carries the paused epoch {old} again: {:?}",
                    markers[s]
                ));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| lab.fail(&e));
    let after: Vec<serde_json::Value> = lab.instance(paused).log_lines().split_off(lines_before);
    let stale: Vec<&serde_json::Value> = after
        .iter()
        .filter(|l| l["fields"]["message"] == "pass done")
        .filter(|l| l["fields"]["delivered"].as_u64().unwrap_or(0) > 0)
        .filter(|l| l["fields"]["epoch"].as_u64().is_some_and(|e| e <= newest))
        .collect();
    assert!(
        stale.is_empty(),
        "the paused instance delivered after SIGCONT: {stale:?}"
    );
    let noticed = after.iter().any(|l| {
        let text = l.to_string();
        text.contains("lease lost")
            || text.contains("fenced")
            || text.contains("ownership of every service ended")
    });
    assert!(
        noticed,
        "the paused instance's log shows no lost lease: {after:?}"
    );

    // SIGTERM revokes the lease: the others take over within a tick.
    let resumed = lab.wait(
        "12 services spread over 3 instances again",
        Duration::from_secs(60),
        || lab.settled(&[1, 2, 3]),
    );
    let stopping = 3;
    let theirs = owned_by(&resumed, stopping);
    lab.instance(stopping).proc.signal(libc::SIGTERM);
    let took = lab.taken_over("the stopped instance's services", &theirs);
    let slowest = took.values().max().copied().unwrap_or_default();
    eprintln!(
        "SIGTERM of i{stopping}: its {} services delivered by the others after {took:?}",
        theirs.len()
    );
    assert!(slowest < TTL, "SIGTERM takeover took {slowest:?}");

    // No two writers: each (service, epoch) delivered by one instance, the
    // one etcd's owner key named at that revision, and never after a newer
    // epoch of the service was delivered by another.
    let mut by: BTreeMap<(String, u64), BTreeSet<usize>> = BTreeMap::new();
    let mut timeline: BTreeMap<String, Vec<(String, u64, usize)>> = BTreeMap::new();
    for i in 0..4 {
        for (t, s, e) in lab.deliveries(i) {
            by.entry((s.clone(), e)).or_default().insert(i);
            timeline.entry(s).or_default().push((t, e, i));
        }
    }
    for ((s, e), writers) in &by {
        assert_eq!(writers.len(), 1, "{s} epoch {e} delivered by {writers:?}");
        let owner = lab
            .owners_at(*e as i64)
            .unwrap_or_else(|err| lab.fail(&err));
        let named = owner.get(s).map(|(i, _)| i.clone());
        let writer = format!("i{}", writers.iter().next().unwrap());
        assert_eq!(
            named.as_deref(),
            Some(writer.as_str()),
            "{s} epoch {e}: etcd named {named:?}"
        );
    }
    for (s, mut events) in timeline {
        events.sort();
        let mut newest: Option<(u64, usize)> = None;
        for (t, e, i) in events {
            if let Some((ne, ni)) = newest
                && ni != i
            {
                assert!(
                    e >= ne,
                    "{s}: i{i} delivered epoch {e} at {t} after i{ni} delivered {ne}"
                );
            }
            if newest.is_none_or(|(ne, _)| e >= ne) {
                newest = Some((e, i));
            }
        }
    }
    eprintln!(
        "{} (service, epoch) deliveries checked: one writer each",
        by.len()
    );
}
