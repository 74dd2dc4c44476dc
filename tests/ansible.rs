//! `push: ansible` end to end: the real `promshard once` binary, the real
//! `ansible-playbook` (`PROMSHARD_ANSIBLE_PLAYBOOK`, else `PATH`), the
//! shipped `playbooks/push_sd.yml`, real files, and for the reload test a
//! real Prometheus on loopback (`PROMSHARD_PROMETHEUS`, else `PATH`).
//!
//! Every "node" is reached with `ansible_connection: local`; its
//! `dest_dir` is `<tmp>/dest/<node>`. Tests that need ansible are
//! `#[ignore = "needs ansible-playbook"]`; `bash .ci/test` runs them with
//! `--include-ignored`. Playbook runs are counted by a small play appended
//! to the shipped playbook (`counted.yml`): it leaves one file per host per
//! run under `runs/`, and records `ansible_host` and the `note` var.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_promshard");

mod util;
use util::child::{free_port, poll};
use util::sshd::SshHosts;
use util::tools::{ansible_playbook, ansible_python, prometheus};

fn shipped_playbook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/push_sd.yml")
}

/// `10.0.0.1:9090` → `10_0_0_1_9090`, as the counting play names files.
fn flat(node: &str) -> String {
    node.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The shipped playbook plus a play that records each run per host.
const COUNTED: &str = r#"
- import_playbook: SHIPPED
- name: record this run
  hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.tempfile:
        path: "{{ runs_dir }}"
        prefix: "run_{{ node | regex_replace('[^A-Za-z0-9]', '_') }}."
    - ansible.builtin.copy:
        content: "{{ ansible_host }}"
        dest: "{{ runs_dir }}/host_{{ node | regex_replace('[^A-Za-z0-9]', '_') }}"
    - ansible.builtin.copy:
        content: "{{ note }}"
        dest: "{{ runs_dir }}/note_{{ node | regex_replace('[^A-Za-z0-9]', '_') }}"
      when: note is defined
"#;

/// The output of one `promshard once --json`.
struct Once {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: Value,
}

impl Once {
    /// The report of `node` in the first service.
    fn node(&self, node: &str) -> &Value {
        self.report["services"][0]["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["node"] == node))
            .unwrap_or_else(|| panic!("no node {node} in report:\n{}", self.describe()))
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// `(result, delivered, attempts)` of a node.
    fn outcome(&self, node: &str) -> (String, bool, u64) {
        let n = self.node(node);
        (
            n["result"].as_str().unwrap_or("-").to_string(),
            n["delivered"].as_bool().unwrap_or(false),
            n["attempts"].as_u64().unwrap_or(0),
        )
    }
}

/// A temp dir holding a config, a script, its targets and the nodes' dirs.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("promshard-ansible-test-")
            .tempdir()
            .expect("temp dir");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let f = Fixture { _tmp: tmp, root };
        f.write(
            "scripts/t.rhai",
            r#"
fn targets(ctx) {
    let out = [];
    for t in read_json("targets.json") {
        out.push(#{ targets: [t.addr], labels: #{ team: t.team } });
    }
    out
}
"#,
        );
        f.write(
            "counted.yml",
            COUNTED.replace("SHIPPED", &shipped_playbook().to_string_lossy()),
        );
        fs::create_dir_all(f.root.join("runs")).expect("runs dir");
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).expect("parent dir");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// `n` targets `10.1.0.<i>:9100`; `team` of target `tweak` is `changed`.
    fn targets(&self, n: usize, tweak: Option<usize>) {
        let list: Vec<Value> = (0..n)
            .map(|i| {
                let team = if Some(i) == tweak { "changed" } else { "core" };
                json!({"addr": format!("10.1.{}.{}:9100", i / 250, i % 250 + 1), "team": team})
            })
            .collect();
        self.write("scripts/targets.json", serde_json::to_vec(&list).unwrap());
    }

    /// Per-node destination directories, created.
    fn dest_dirs(&self, nodes: &[&str]) {
        for n in nodes {
            fs::create_dir_all(self.dest(n)).expect("dest dir");
        }
    }

    fn dest(&self, node: &str) -> PathBuf {
        self.root.join("dest").join(node)
    }

    /// Write `promshard.yaml` for one service `web` with `push` settings
    /// merged over the defaults of these tests.
    fn config(&self, nodes: &[&str], push: Value, extra: &str) {
        let mut p = json!({
            "kind": "ansible",
            "playbook": "counted.yml",
            "dest_sd_file_name": "{service}.json",
            "forks": 5,
            "timeout": "90s",
            "retries": 0,
            "ansible_playbook": ansible_playbook(),
            "vars": {
                "ansible_connection": "local",
                "dest_dir": format!("{}/dest/{{node}}", self.root.display()),
                "runs_dir": self.path("runs"),
                "sd_validate_python": ansible_python(),
            },
        });
        merge(&mut p, push);
        let text = format!(
            "out_dir: out\nservices:\n  - name: web\n    script: scripts/t.rhai\n    port: 9100\n    nodes: {}\n    push: {}\n{extra}",
            serde_json::to_string(nodes).unwrap(),
            p
        );
        self.write("promshard.yaml", text);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(&self.root)
            .arg("--config")
            .arg(self.path("promshard.yaml"))
            .args(args)
            .env("ANSIBLE_PYTHON_INTERPRETER", ansible_python())
            .env("RUST_LOG", "promshard=info");
        c
    }

    /// `promshard once --json`.
    fn once(&self) -> Once {
        let out = self
            .command(&["once", "--json"])
            .output()
            .expect("run promshard");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        Once {
            code: out.status.code(),
            stdout,
            stderr,
            report,
        }
    }

    /// `promshard once` when every node's file is as delivered: each node
    /// `skipped-unchanged`, delivered by no new run, and no
    /// `ansible-playbook` started at all.
    fn once_with_nothing_to_deliver(&self, nodes: &[&str]) {
        let once = self.once();
        assert_eq!(once.code, Some(0), "{}", once.describe());
        for node in nodes {
            assert_eq!(
                once.outcome(node),
                ("skipped-unchanged".into(), false, 0),
                "{node}\n{}",
                once.describe()
            );
            assert_eq!(self.runs(node), 1, "{node} was delivered again");
        }
        assert!(
            !once.stderr.contains("ansible-playbook run"),
            "a pass with nothing changed started ansible-playbook:\n{}",
            once.describe()
        );
    }

    /// How many playbook runs delivered to `node` (counted by `counted.yml`).
    fn runs(&self, node: &str) -> usize {
        let prefix = format!("run_{}.", flat(node));
        fs::read_dir(self.path("runs"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .count()
            })
            .unwrap_or(0)
    }

    fn recorded(&self, what: &str, node: &str) -> String {
        let p = self.path(&format!("runs/{what}_{}", flat(node)));
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The file promshard wrote for `node` under `out_dir`.
    fn out_file(&self, once: &Once, node: &str) -> Vec<u8> {
        let file = once.node(node)["file"].as_str().unwrap_or("").to_string();
        let p = self.path("out/web").join(file);
        fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Write `hang.yml`: each host runs a module that sleeps ten minutes
    /// with a marker argument; returns the marker.
    fn hang_playbook(&self) -> String {
        self.hang_playbook_for(600)
    }

    /// [`Self::hang_playbook`] with a sleep of `secs`.
    fn hang_playbook_for(&self, secs: u32) -> String {
        let marker = format!("{}/hang-marker", self.root.display());
        self.write(
            "hang.yml",
            format!(
                r#"
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.command:
        argv: ["{}", "-c", "import time; time.sleep({secs})", "{marker}"]
"#,
                ansible_python().display()
            ),
        );
        marker
    }

    /// Wait until `count` hung modules run; panics if `child` exits first.
    fn wait_for_hang(&self, marker: &str, count: usize, child: &mut std::process::Child) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        while seen.len() < count {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sleeping modules never appeared; last seen: {seen:?}");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("promshard exited ({status}) before the hang; last seen {seen:?}");
            }
            seen = processes_with(marker);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until no process mentions this fixture's directory.
    fn assert_no_leftovers(&self) {
        let root = self.root.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with(&root);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind:\n{}",
                left.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn delivered(&self, node: &str) -> Option<Vec<u8>> {
        fs::read(self.dest(node).join("web.json")).ok()
    }
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

const NODES: [&str; 3] = ["10.0.0.1:9090", "10.0.0.2:9091", "[fd00::3]:9092"];

#[test]
#[ignore = "needs ansible-playbook"]
fn three_nodes_receive_their_own_files_then_an_unchanged_rerun_runs_no_playbook() {
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&NODES);
    f.config(&NODES, json!({}), "");
    let first = f.once();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let mut contents = BTreeSet::new();
    for node in NODES {
        assert_eq!(
            first.outcome(node),
            ("changed".into(), true, 1),
            "{node}\n{}",
            first.describe()
        );
        let delivered = f.delivered(node).expect("delivered file");
        assert_eq!(
            delivered,
            f.out_file(&first, node),
            "{node} got another node's file"
        );
        contents.insert(delivered);
        assert_eq!(f.runs(node), 1, "{node}");
    }
    assert_eq!(contents.len(), 3, "every node has its own, distinct file");
    // The right machine is addressed: ansible_host is the node's host part.
    assert_eq!(f.recorded("host", "10.0.0.1:9090"), "10.0.0.1");
    assert_eq!(f.recorded("host", "10.0.0.2:9091"), "10.0.0.2");
    assert_eq!(f.recorded("host", "[fd00::3]:9092"), "fd00::3");

    // A new process (a restart) with nothing changed runs no playbook.
    f.once_with_nothing_to_deliver(&NODES);
}

const RULE: &str = "groups:\n  - name: web\n    rules:\n      - record: app:up:sum\n        expr: sum by (app) (up)\n";

/// The rule files one node got, by name (the manifest included).
fn rule_dir(f: &Fixture, node: &str) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(f.path("rules-dest").join(node))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, fs::read(e.path()).expect("read rule file"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs ansible-playbook"]
fn rule_files_reach_every_node_through_the_shipped_rules_playbook_and_a_bad_edit_is_kept_out() {
    let f = Fixture::new();
    f.targets(12, None);
    f.dest_dirs(&NODES);
    f.write("rules/a.yml", RULE);
    f.write("rules/b.yml", RULE.replace("name: web", "name: web2"));
    let playbook = shipped_playbook().with_file_name("push_rules.yml");
    let rules = format!(
        "    rules: {{files: [rules/*.yml], dir: \"{}/rules-dest/{{node}}\", playbook: \"{}\"}}\n",
        f.root.display(),
        playbook.display()
    );
    f.config(&NODES, json!({"vars": {"create_rules_dir": true}}), &rules);
    let first = f.once();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let report = &first.report["services"][0]["rules"];
    assert_eq!(
        report["deliveries"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    for node in NODES {
        let got = rule_dir(&f, node);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(names, [".promshard-rules", "a.yml", "b.yml"], "{node}");
        assert_eq!(got["a.yml"], RULE.as_bytes(), "{node}");
    }

    // Nothing changed: no playbook run at all.
    let second = f.once();
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert!(
        second.report["services"][0]["rules"]["deliveries"].is_null(),
        "{}",
        second.describe()
    );
    assert!(
        !second.stderr.contains("ansible-playbook run"),
        "{}",
        second.describe()
    );

    // a.yml broken, b.yml dropped: the nodes keep a.yml as it was, lose b.yml.
    f.write("rules/a.yml", RULE.replace("    rules:", "   rules:"));
    fs::remove_file(f.path("rules/b.yml")).expect("remove b.yml");
    let third = f.once();
    assert_eq!(
        third.code,
        Some(1),
        "a refused rule file fails the run: {}",
        third.describe()
    );
    let problem = &third.report["services"][0]["rules"]["problems"][0];
    assert_eq!(
        problem["file"],
        f.path("rules/a.yml").to_string_lossy().as_ref(),
        "{problem}"
    );
    assert_eq!(problem["line"], 3, "{problem}");
    for node in NODES {
        let got = rule_dir(&f, node);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [".promshard-rules", "a.yml"],
            "{node}: {}",
            third.describe()
        );
        assert_eq!(got["a.yml"], RULE.as_bytes(), "{node} kept the good a.yml");
    }

    // A node leaves the service: promshard's rule files go, its own stay.
    f.write("rules/a.yml", RULE);
    let theirs = f.path("rules-dest").join(NODES[2]).join("theirs.yml");
    fs::write(&theirs, "x").expect("a file of the node's own");
    f.config(
        &NODES[..2],
        json!({"vars": {"create_rules_dir": true}}),
        &rules,
    );
    let fourth = f.once();
    assert_eq!(fourth.code, Some(0), "{}", fourth.describe());
    let departed = &fourth.report["services"][0]["rules"]["departed"];
    assert_eq!(departed[0]["node"], NODES[2], "{}", fourth.describe());
    assert_eq!(departed[0]["result"], "changed", "{departed}");
    let left: Vec<String> = rule_dir(&f, NODES[2]).into_keys().collect();
    assert_eq!(
        left,
        [".promshard-rules", "theirs.yml"],
        "{}",
        fourth.describe()
    );
    for node in &NODES[..2] {
        assert_eq!(rule_dir(&f, node)["a.yml"], RULE.as_bytes(), "{node}");
    }
    rules_playbook_is_fenced_by_the_epoch(&f);
}

/// `ha:`: the rules playbook refuses a delivery older than the epoch
/// marker in a node's rules directory, and an unconfirmed lease delivers
/// nothing (the rules step is driven directly: `once` refuses `ha:`).
fn rules_playbook_is_fenced_by_the_epoch(f: &Fixture) {
    use promshard::push::DeliveryResult;
    let config = promshard::config::Config::load(&f.path("promshard.yaml")).expect("config");
    let service = &config.services[0];
    let nodes: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
    let marker = |node: &str| {
        f.path("rules-dest")
            .join(node)
            .join("..promshard-rules.epoch")
    };
    fs::write(marker(NODES[0]), "9\n").expect("newer leader's marker");
    let step = |lease: Result<u64, String>| {
        let mut state = BTreeMap::new();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(promshard::rules::step(
            service,
            &config.out_dir,
            &nodes,
            &mut state,
            false,
            Some(lease),
            &tokio_util::sync::CancellationToken::new(),
        ))
        .expect("a rules report")
    };
    f.write("rules/a.yml", RULE.replace("name: web", "name: web3"));
    let report = step(Ok(5));
    for d in &report.deliveries {
        let fenced = d.node == NODES[0];
        let want = if fenced {
            DeliveryResult::Fenced
        } else {
            DeliveryResult::Changed
        };
        assert_eq!(d.result, want, "{d:?}");
        let got = rule_dir(f, &d.node);
        if fenced {
            let why = d.error.as_deref().unwrap_or_default();
            assert!(
                why.starts_with("fenced:") && why.contains("epoch 9"),
                "{why}"
            );
            assert_eq!(
                got["a.yml"],
                RULE.as_bytes(),
                "the fenced node kept its file"
            );
            assert_eq!(fs::read_to_string(marker(NODES[0])).unwrap(), "9\n");
        } else {
            assert!(String::from_utf8_lossy(&got["a.yml"]).contains("web3"));
            assert_eq!(fs::read_to_string(marker(&d.node)).unwrap().trim(), "5");
        }
    }
    assert_eq!(report.deliveries.len(), NODES.len());

    // The lease is not confirmed: nothing runs, every node is fenced.
    f.write("rules/a.yml", RULE.replace("name: web", "name: web4"));
    let before: Vec<_> = NODES.iter().map(|n| rule_dir(f, n)).collect();
    let report = step(Err("lease lost".into()));
    assert!(
        report
            .deliveries
            .iter()
            .all(|d| d.result == DeliveryResult::Fenced && d.error.as_deref() == Some("lease lost")),
        "{:?}",
        report.deliveries
    );
    let after: Vec<_> = NODES.iter().map(|n| rule_dir(f, n)).collect();
    assert_eq!(before, after, "no rule file changed without the lease");
}

#[test]
#[ignore = "needs ansible-playbook"]
fn changing_one_target_redelivers_only_its_node() {
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&NODES);
    f.config(&NODES, json!({}), "");
    let first = f.once();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let before: BTreeMap<&str, Vec<u8>> = NODES
        .iter()
        .map(|n| (*n, f.delivered(n).expect("delivered")))
        .collect();

    f.targets(30, Some(7));
    let second = f.once();
    assert_eq!(second.code, Some(0), "{}", second.describe());
    let changed: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| second.node(n)["changed"] == true)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "a label change touches one file\n{}",
        second.describe()
    );
    for node in NODES {
        let now = f.delivered(node).expect("delivered");
        if changed.contains(&node) {
            assert_eq!(second.outcome(node), ("changed".into(), true, 1));
            assert_eq!(f.runs(node), 2);
            assert_ne!(now, before[node]);
            assert_eq!(now, f.out_file(&second, node));
            assert!(String::from_utf8_lossy(&now).contains("changed"));
        } else {
            assert_eq!(
                second.outcome(node),
                ("skipped-unchanged".into(), false, 0),
                "{node}\n{}",
                second.describe()
            );
            assert_eq!(f.runs(node), 1, "{node} was delivered again");
            assert_eq!(now, before[node]);
        }
    }
}

#[test]
#[ignore = "needs ansible-playbook"]
fn unwritable_dest_fails_after_retries_others_succeed_and_next_pass_retries() {
    let f = Fixture::new();
    let bad = NODES[1];
    f.targets(30, None);
    f.dest_dirs(&[NODES[0], NODES[2]]);
    // A regular file where the directory should be: unwritable even for root.
    f.write(&format!("dest/{bad}"), "not a directory");
    f.config(&NODES, json!({"retries": 1}), "");

    let first = f.once();
    assert_eq!(
        first.code,
        Some(1),
        "failed deliveries fail the pass\n{}",
        first.describe()
    );
    assert_eq!(
        first.outcome(bad),
        ("failed".into(), true, 2),
        "{}",
        first.describe()
    );
    let error = first.node(bad)["error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains("Not a directory") || error.contains("not a directory"),
        "{error}"
    );
    for node in [NODES[0], NODES[2]] {
        assert_eq!(first.outcome(node), ("changed".into(), true, 1), "{node}");
        assert_eq!(
            f.delivered(node).expect("delivered"),
            f.out_file(&first, node)
        );
    }
    assert!(
        first.stderr.contains("retrying failed ansible deliveries"),
        "{}",
        first.describe()
    );

    // Nothing changed, but the failed node is tried again; the others not.
    let second = f.once();
    assert_eq!(second.code, Some(1), "{}", second.describe());
    assert_eq!(second.outcome(bad), ("failed".into(), true, 2));
    for node in [NODES[0], NODES[2]] {
        assert_eq!(second.outcome(node), ("skipped-unchanged".into(), false, 0));
        assert_eq!(f.runs(node), 1);
    }

    // Repaired: the next pass delivers it.
    fs::remove_file(f.dest(bad)).expect("remove blocker");
    fs::create_dir_all(f.dest(bad)).expect("dest dir");
    let third = f.once();
    assert_eq!(third.code, Some(0), "{}", third.describe());
    assert_eq!(third.outcome(bad), ("changed".into(), true, 1));
    assert_eq!(
        f.delivered(bad).expect("delivered"),
        f.out_file(&third, bad)
    );
}

/// Processes (not zombies) whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(e.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

#[test]
#[ignore = "needs ansible-playbook"]
fn hanging_playbook_is_killed_at_the_timeout_with_no_orphans() {
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&NODES);
    let marker = f.hang_playbook();
    let timeout = 8;
    f.config(
        &NODES,
        json!({"playbook": "hang.yml", "timeout": format!("{timeout}s")}),
        "",
    );
    let started = Instant::now();
    let mut child = f
        .command(&["once", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promshard");
    // The hang is reached: the sleeping modules exist.
    f.wait_for_hang(&marker, NODES.len(), &mut child);
    let out = child.wait_with_output().expect("wait promshard");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(timeout + 20),
        "took {elapsed:?} for a {timeout}s timeout"
    );
    let report: Value = serde_json::from_str(&stdout).expect("json report");
    for n in report["services"][0]["nodes"].as_array().expect("nodes") {
        assert_eq!(n["result"], "failed", "{n}");
        assert!(n["error"].as_str().unwrap_or("").contains("timeout"), "{n}");
    }
    // Nothing of the run is left: not ansible-playbook, not its workers
    // (which run in sessions of their own), not the sleeping modules.
    f.assert_no_leftovers();
}

#[test]
#[ignore = "needs ansible-playbook"]
fn shutdown_kills_a_running_playbook_with_no_orphans() {
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&NODES);
    let marker = f.hang_playbook();
    f.config(
        &NODES,
        json!({"playbook": "hang.yml", "timeout": "300s"}),
        "",
    );
    let cfg = f.path("promshard.yaml");
    let text = fs::read_to_string(&cfg).expect("config");
    fs::write(&cfg, format!("listen: 127.0.0.1:{}\n{text}", free_port())).expect("config");
    let mut child = f
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promshard run");
    f.wait_for_hang(&marker, NODES.len(), &mut child);
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("promshard run did not exit within 30s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("killed by shutdown"), "{stderr}");
    f.assert_no_leftovers();
}

#[test]
#[ignore = "needs ansible-playbook"]
fn metacharacters_in_vars_are_passed_literally() {
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&NODES[..1]);
    let r = f.root.display().to_string();
    let note = format!(
        "$(touch {r}/pwned1); touch {r}/pwned2 `touch {r}/pwned3` {{{{ lookup('pipe', 'touch {r}/pwned4') }}}} {{% if true %}}x{{% endif %}} node={{node}} svc={{service}}"
    );
    f.config(&NODES[..1], json!({"vars": {"note": note}}), "");
    let once = f.once();
    assert_eq!(once.code, Some(0), "{}", once.describe());
    let expected = note.replace("{node}", NODES[0]).replace("{service}", "web");
    assert_eq!(f.recorded("note", NODES[0]), expected);
    for i in 1..=4 {
        assert!(
            !f.path(&format!("pwned{i}")).exists(),
            "pwned{i} was created"
        );
    }
}

#[test]
fn metacharacters_in_node_and_service_names_are_rejected() {
    let f = Fixture::new();
    f.targets(3, None);
    let r = f.root.display().to_string();
    for (nodes, name, key) in [
        (
            json!([format!("10.0.0.1:9090;touch {r}/pwned")]),
            "web",
            "nodes",
        ),
        (json!([format!("$(touch {r}/pwned):9090")]), "web", "nodes"),
        (json!(["10.0.0.1:9090"]), "web$(touch x)", "name"),
    ] {
        f.write(
            "promshard.yaml",
            format!(
                "out_dir: out\nservices:\n  - name: {}\n    script: scripts/t.rhai\n    nodes: {nodes}\n    push: {{kind: ansible, playbook: {}, vars: {{dest_dir: /tmp}}}}\n",
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(&shipped_playbook()).unwrap(),
            ),
        );
        let out = f.command(&["once"]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(key), "error names {key}: {stderr}");
        assert!(!f.path("pwned").exists());
        assert!(!f.path("out").exists(), "nothing written");
    }
}

#[test]
fn bad_ansible_settings_are_reported_by_key() {
    let f = Fixture::new();
    f.targets(3, None);
    f.write(
        "promshard.yaml",
        r#"
services:
  - name: web
    script: scripts/t.rhai
    nodes: ["10.0.0.1:9090"]
    push:
      kind: ansible
      playbook: missing.yml
      dest_sd_file_name: "../x.json"
      forks: 0
      retries: 11
      timeout: soon
      vars: {node: "x", "bad-name": 1}
"#,
    );
    let out = f.command(&["check"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "push.playbook",
        "missing.yml",
        "push.dest_sd_file_name",
        "push.forks",
        "push.retries",
        "push.timeout",
        "\"soon\"",
        "push.vars: \"node\" is set by promshard",
        "push.vars: \"bad-name\"",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(stderr.contains("services[0] \"web\""), "{stderr}");
}

/// A Prometheus on loopback; killed and reaped on drop.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(method: &str, url: &str) -> Result<String, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let resp = match method {
        "POST" => agent.post(url).send_empty(),
        _ => agent.get(url).call(),
    };
    let mut resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// A Prometheus listening on `host` (a loopback address), port probed.
fn start_prometheus(f: &Fixture, host: &str, sd_glob: &str) -> Prometheus {
    let bin = prometheus();
    let port = std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = format!("{host}:{port}");
    let config = f.write(
        "prometheus.yml",
        format!(
            "global: {{scrape_interval: 1h}}\nscrape_configs:\n  - job_name: web\n    file_sd_configs:\n      - files: [{}]\n",
            serde_json::to_string(sd_glob).unwrap()
        ),
    );
    let log = fs::File::create(f.path("prometheus.log")).expect("log file");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", f.path("tsdb").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-lifecycle")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let p = Prometheus { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(last) = http("GET", &format!("http://{}/-/ready", p.addr)) {
        assert!(
            Instant::now() < deadline,
            "prometheus not ready: {last}\n{}",
            fs::read_to_string(f.path("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// Scrape addresses of Prometheus's active targets.
fn active_targets(p: &Prometheus) -> Result<BTreeSet<String>, String> {
    let body = http("GET", &format!("http://{}/api/v1/targets", p.addr))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            t["discoveredLabels"]["__address__"]
                .as_str()
                .map(String::from)
        })
        .collect())
}

/// How many `POST /-/reload` Prometheus has served.
fn reloads(p: &Prometheus) -> u64 {
    let body = http("GET", &format!("http://{}/metrics", p.addr)).unwrap_or_default();
    body.lines()
        .filter(|l| {
            l.starts_with("prometheus_http_requests_total{") && l.contains("handler=\"/-/reload\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn wait_for_targets(p: &Prometheus, want: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = active_targets(p);
        if last.as_ref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus targets: want {want:?}, last seen {last:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// End to end over SSH: the node is a real Prometheus on the same
/// loopback address as a real sshd; the playbook copies its file over SSH
/// and POSTs the reload from the "remote" host.
#[test]
#[ignore = "needs prometheus, sshd and ansible-playbook"]
fn reload_true_makes_prometheus_pick_up_the_new_file() {
    let ssh = SshHosts::start(1);
    let f = Fixture::new();
    let sd = f.path("prom-sd");
    fs::create_dir_all(&sd).expect("sd dir");
    let prom = start_prometheus(&f, &ssh.hosts[0].addr, &format!("{}/*.json", sd.display()));
    let node = prom.addr.clone();
    f.targets(4, None);
    // resync_interval 0s: every pass runs the playbook, changed or not, so
    // an unchanged delivery is seen not to reload.
    f.config(
        &[&node],
        over_ssh(
            &ssh,
            json!({"playbook": shipped_playbook(), "vars": {"dest_dir": sd, "reload": true}}),
        ),
        "    resync_interval: 0s\n",
    );
    assert_eq!(reloads(&prom), 0);
    let want = |n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}:9100", i / 250, i % 250 + 1))
            .collect()
    };

    let first = f.once();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    assert_eq!(first.outcome(&node), ("changed".into(), true, 1));
    wait_for_targets(&prom, &want(4));
    assert_eq!(reloads(&prom), 1, "one reload for one changed file");

    f.targets(6, None);
    let second = f.once();
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert_eq!(second.outcome(&node), ("changed".into(), true, 1));
    wait_for_targets(&prom, &want(6));
    assert_eq!(reloads(&prom), 2);

    // Delivered again (resync) but unchanged on the node: no reload.
    let third = f.once();
    assert_eq!(third.code, Some(0), "{}", third.describe());
    assert_eq!(
        third.outcome(&node),
        ("ok".into(), true, 1),
        "{}",
        third.describe()
    );
    assert_eq!(reloads(&prom), 2, "reloaded for nothing");
    wait_for_targets(&prom, &want(6));
}

// Over real SSH: every host is a real `sshd` on its own loopback address
// (tests/util/sshd.rs), reached with `ansible_connection: ssh`, key auth
// and `StrictHostKeyChecking yes` against a known_hosts of the fixture's
// host keys. The "remote" files land on this machine, in the fixture.

/// Push settings that deliver to `ssh`'s hosts over SSH.
fn over_ssh(ssh: &SshHosts, extra: Value) -> Value {
    let mut vars = ssh.ansible_vars();
    merge(
        &mut vars,
        json!({"ansible_python_interpreter": ansible_python()}),
    );
    let mut push = json!({"vars": vars});
    merge(&mut push, extra);
    push
}

#[test]
#[ignore = "needs sshd and ansible-playbook"]
fn over_ssh_every_host_gets_its_file_and_an_unchanged_pass_starts_no_ansible() {
    let ssh = SshHosts::start(4);
    let nodes = ssh.nodes();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let f = Fixture::new();
    f.targets(40, None);
    f.dest_dirs(&nodes);
    f.config(&nodes, over_ssh(&ssh, json!({})), "");
    let first = f.once();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    for (node, host) in nodes.iter().zip(&ssh.hosts) {
        assert_eq!(
            first.outcome(node),
            ("changed".into(), true, 1),
            "{node}\n{}",
            first.describe()
        );
        assert_eq!(
            f.delivered(node).expect("delivered file"),
            f.out_file(&first, node)
        );
        assert_eq!(f.recorded("host", node), host.addr);
        assert!(
            host.log_text().contains("Accepted publickey"),
            "{node} was not reached over SSH: {}",
            host.log_text()
        );
    }
    // One run, with the tuned settings: pipelined, control sockets in the
    // run's private dir.
    let runs = first.stderr.matches("ansible-playbook run").count();
    assert_eq!(runs, 1, "{}", first.describe());

    f.once_with_nothing_to_deliver(&nodes);
}

/// The shipped playbook's module on its own, through `run_batch` with
/// `ansible_connection: local`: an older epoch than the node's marker is
/// refused and leaves the file, a newer one raises the marker; a file that
/// is not file_sd is refused by the module's own check and never written;
/// the same file again is `ok` (unchanged).
#[test]
#[ignore = "needs ansible-playbook"]
fn shipped_sd_playbook_fences_checks_and_writes_atomically() {
    use promshard::push::{Delivery, DeliveryResult, ansible::run_batch};
    let f = Fixture::new();
    let (stale, fresh, bad) = (NODES[0], NODES[1], NODES[2]);
    f.dest_dirs(&NODES);
    let text = format!(
        "services:\n  - name: web\n    script: scripts/t.rhai\n    nodes: {}\n    push: {}\n",
        serde_json::to_string(&NODES).unwrap(),
        json!({
            "kind": "ansible",
            "playbook": shipped_playbook(),
            "dest_sd_file_name": "web.json",
            "retries": 0,
            "ansible_playbook": ansible_playbook(),
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": ansible_python(),
                "dest_dir": format!("{}/dest/{{node}}", f.root.display()),
            },
        })
    );
    let config =
        promshard::config::Config::parse(&f.path("promshard.yaml"), &text).expect("config");
    let service = &config.services[0];
    let promshard::config::Push::Ansible(settings) = &service.push else {
        panic!("not an ansible push")
    };
    let good = r#"[{"targets":["10.1.0.1:9100"],"labels":{"team":"core"}}]"#;
    let marker = |node: &str| f.dest(node).join(".web.json.epoch");
    fs::write(marker(stale), "9\n").expect("newer leader's marker");
    fs::write(f.dest(stale).join("web.json"), "[]").expect("stale node's file");
    let src = |name: &str, text: &str| f.write(&format!("src/{name}.json"), text);
    let deliveries = vec![
        (stale, src("stale", good), Some(5)),
        (fresh, src("fresh", good), Some(5)),
        (bad, src("bad", r#"{"targets": ["10.1.0.1:9100"]}"#), None),
    ];
    let deliveries: Vec<Delivery> = deliveries
        .into_iter()
        .map(|(node, file, epoch)| Delivery {
            node: node.to_string(),
            file,
            file_name: "web.json".into(),
            epoch,
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let run = |batch: &[Delivery]| {
        rt.block_on(run_batch(
            settings,
            service,
            batch,
            &tokio_util::sync::CancellationToken::new(),
        ))
    };
    let report = run(&deliveries);
    let by_node = |node: &str| {
        report
            .nodes
            .iter()
            .find(|n| n.node == node)
            .unwrap_or_else(|| panic!("{node} missing from {report:?}"))
    };
    let (s, r, b) = (by_node(stale), by_node(fresh), by_node(bad));
    assert_eq!(s.result, DeliveryResult::Fenced, "{s:?}");
    let why = s.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("holds epoch 9") && why.contains("this delivery's 5"),
        "{why}"
    );
    assert_eq!(
        fs::read_to_string(f.dest(stale).join("web.json")).unwrap(),
        "[]"
    );
    assert_eq!(fs::read_to_string(marker(stale)).unwrap(), "9\n");
    assert_eq!(r.result, DeliveryResult::Changed, "{r:?}");
    assert_eq!(f.delivered(fresh).unwrap(), good.as_bytes());
    assert_eq!(fs::read_to_string(marker(fresh)).unwrap(), "5\n");
    assert_eq!(b.result, DeliveryResult::Failed, "{b:?}");
    let why = b.error.as_deref().unwrap_or_default();
    assert!(why.contains("not a list of file_sd target groups"), "{why}");
    assert!(f.delivered(bad).is_none(), "an invalid file was written");
    let left: Vec<_> = fs::read_dir(f.dest(bad))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");

    let again = run(&deliveries[1..2]);
    assert_eq!(again.nodes[0].result, DeliveryResult::Ok, "{again:?}");
}

/// What `host`'s sshd logged of connections and commands run.
fn ssh_sessions(host: &util::sshd::SshHost) -> (usize, usize) {
    let log = host.log_text();
    (
        log.matches("Accepted publickey").count(),
        log.matches("Starting session: command").count(),
    )
}

#[test]
#[ignore = "needs sshd and ansible-playbook"]
fn over_ssh_the_shipped_playbook_delivers_a_changed_file_in_one_ssh_command() {
    let ssh = SshHosts::start(2);
    let nodes = ssh.nodes();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let f = Fixture::new();
    f.targets(40, None);
    f.dest_dirs(&nodes);
    f.config(
        &nodes,
        over_ssh(&ssh, json!({"playbook": shipped_playbook()})),
        "",
    );
    // Delivery runs so far per host: each must be one connection running
    // one command (the module, pipelined); a host whose file did not
    // change is not contacted.
    let mut runs = vec![0; nodes.len()];
    for (pass, tweak) in [(1, None), (2, Some(3))] {
        f.targets(40, tweak);
        let once = f.once();
        assert_eq!(once.code, Some(0), "{}", once.describe());
        let mut changed = 0;
        for (i, (node, host)) in nodes.iter().zip(&ssh.hosts).enumerate() {
            let (result, _, attempts) = once.outcome(node);
            if result == "changed" {
                changed += 1;
                assert_eq!(
                    f.delivered(node).expect("delivered file"),
                    f.out_file(&once, node)
                );
            }
            runs[i] += attempts as usize;
            assert_eq!(
                ssh_sessions(host),
                (runs[i], runs[i]),
                "{node} after pass {pass} ({result}):\n{}",
                host.log_text()
            );
        }
        let want = if pass == 1 { nodes.len() } else { 1 };
        assert_eq!(changed, want, "pass {pass}: {}", once.describe());
    }
}

#[test]
#[ignore = "needs sshd and ansible-playbook"]
fn over_ssh_a_down_host_a_changed_host_key_and_a_refused_write_fail_alone() {
    let mut ssh = SshHosts::start(4);
    let nodes = ssh.nodes();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let (good, down, rekeyed, unwritable) = (nodes[0], nodes[1], nodes[2], nodes[3]);
    let f = Fixture::new();
    f.targets(40, None);
    f.dest_dirs(&nodes[..3]);
    // The destination's parent is a regular file: no write can succeed,
    // not even as root.
    f.write(&format!("dest/{unwritable}"), "not a directory");
    ssh.stop_host(1);
    ssh.change_host_key(2);
    let known_hosts = fs::read(ssh.root().join("known_hosts")).expect("known_hosts");
    f.config(&nodes, over_ssh(&ssh, json!({"retries": 1})), "");

    let first = f.once();
    assert_eq!(first.code, Some(1), "{}", first.describe());
    assert_eq!(first.outcome(good), ("changed".into(), true, 1));
    assert_eq!(f.delivered(good), Some(f.out_file(&first, good)));
    let error = |n: &str| first.node(n)["error"].as_str().unwrap_or("").to_string();

    assert_eq!(
        first.outcome(down),
        ("unreachable".into(), true, 2),
        "retried once\n{}",
        first.describe()
    );
    assert!(
        error(down).contains("Connection refused"),
        "{}",
        error(down)
    );

    assert_eq!(first.outcome(rekeyed), ("unreachable".into(), true, 2));
    assert!(
        error(rekeyed).contains("Host key verification failed")
            || error(rekeyed).contains("IDENTIFICATION HAS CHANGED"),
        "{}",
        error(rekeyed)
    );
    assert_eq!(
        f.delivered(rekeyed),
        None,
        "delivered past a changed host key"
    );
    assert!(
        !ssh.hosts[2].log_text().contains("Accepted publickey"),
        "the client authenticated to a host with an unknown key"
    );

    assert_eq!(first.outcome(unwritable), ("failed".into(), true, 2));
    assert!(
        error(unwritable).to_lowercase().contains("not a directory")
            || error(unwritable).contains("does not exist"),
        "Ansible's message: {}",
        error(unwritable)
    );
    assert!(
        first.stderr.contains("retrying failed ansible deliveries"),
        "{}",
        first.describe()
    );

    // The host is back and the disk is fixed: the next pass delivers to
    // exactly those two; the changed key is still refused, never learnt.
    ssh.start_host(1);
    fs::remove_file(f.dest(unwritable)).expect("remove blocker");
    fs::create_dir_all(f.dest(unwritable)).expect("dest dir");
    let second = f.once();
    assert_eq!(second.code, Some(1), "{}", second.describe());
    assert_eq!(second.outcome(good), ("skipped-unchanged".into(), false, 0));
    for node in [down, unwritable] {
        assert_eq!(
            second.outcome(node),
            ("changed".into(), true, 1),
            "{node}\n{}",
            second.describe()
        );
        assert_eq!(f.delivered(node), Some(f.out_file(&second, node)));
    }
    assert_eq!(second.outcome(rekeyed).0, "unreachable");
    assert_eq!(f.delivered(rekeyed), None);
    assert_eq!(
        fs::read(ssh.root().join("known_hosts")).expect("known_hosts"),
        known_hosts,
        "known_hosts was changed"
    );
}

/// `pid` and all its descendants (walking `/proc` parent links).
fn descendants(root: u32) -> Vec<(u32, String)> {
    let table: Vec<(u32, u32, String)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let (left, rest) = stat.rsplit_once(')')?;
            let comm = left.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect();
    let mut found = vec![(root, String::new())];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].0;
        for (pid, ppid, comm) in &table {
            if *ppid == parent && !found.iter().any(|(p, _)| p == pid) {
                found.push((*pid, comm.clone()));
            }
        }
        i += 1;
    }
    found
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
#[ignore = "needs sshd and ansible-playbook"]
fn over_ssh_sigterm_during_a_run_kills_and_reaps_every_ssh_process() {
    let ssh = SshHosts::start(3);
    let nodes = ssh.nodes();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let f = Fixture::new();
    f.targets(30, None);
    f.dest_dirs(&nodes);
    // The modules sleep on the "remote" hosts; promshard's side of the run
    // (ansible-playbook, its workers, ssh clients and control masters) all
    // mention its private temp dir, put under the fixture to be found.
    let marker = f.hang_playbook_for(90);
    let private = f.path("t");
    fs::create_dir_all(&private).expect("TMPDIR");
    f.config(
        &nodes,
        over_ssh(&ssh, json!({"playbook": "hang.yml", "timeout": "300s"})),
        "",
    );
    let cfg = f.path("promshard.yaml");
    let text = fs::read_to_string(&cfg).expect("config");
    fs::write(&cfg, format!("listen: 127.0.0.1:{}\n{text}", free_port())).expect("config");
    let mut child = f
        .command(&["run"])
        .env("TMPDIR", &private)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promshard run");
    f.wait_for_hang(&marker, nodes.len(), &mut child);
    let tree: Vec<(u32, String)> = descendants(child.id())
        .into_iter()
        .filter(|(p, _)| *p != child.id())
        .collect();
    let clients = tree.iter().filter(|(_, c)| c == "ssh").count();
    assert!(
        clients >= nodes.len(),
        "expected an ssh client per host in promshard's tree: {tree:?}"
    );
    let needle = format!("{}/", private.display());
    assert!(
        !processes_with(&needle).is_empty(),
        "nothing mentions the private dir"
    );
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let exited = poll(
        "promshard run to exit after SIGTERM",
        Duration::from_secs(30),
        || {
            child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        },
    );
    let status = exited.unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("killed by shutdown"), "{stderr}");
    let left = poll(
        "promshard's processes to be gone",
        Duration::from_secs(10),
        || {
            let mut left: Vec<String> = tree
                .iter()
                .filter(|(p, _)| alive(*p))
                .map(|(p, c)| format!("{p} ({c})"))
                .collect();
            left.extend(processes_with(&needle));
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    );
    // The sleeping modules are the remote hosts' own; end them here.
    for p in processes_with(&marker) {
        if let Some(pid) = p.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            // SAFETY: a sleeper this test started through sshd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    left.unwrap_or_else(|e| panic!("{e}"));
}
