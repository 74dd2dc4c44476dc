//! Fault injection: `promshard once` killed with SIGKILL at random points
//! of passes over 200k targets, the way a power cut or an OOM kill would.
//!
//! Each round runs a pass that rewrites every file (the targets' labels
//! alternate between two generations, and the naming scheme between
//! `stable` and `counted` now and then, so files are renamed too) and kills
//! it after a random delay within the measured length of a pass. After
//! every kill, at rest: every `*.json` parses as file_sd, no node has two
//! files, and no file belongs to no node. Then the next pass runs to the
//! end: it must succeed and leave exactly one file per node with every
//! target exactly once. Passes are started directly (`once`) rather than
//! through a daemon, so that no time goes to waiting for triggers.
//!
//! Figures (kills before, during and after the write phase; timings) are
//! printed; the seed too (`PROMSHARD_FAULT_SEED` replays its delays).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod util;
use util::{BIN, Dir};

const TARGETS: usize = 200_000;
const NODES: usize = 10;
const KILLS: usize = 30;

/// The config for `naming`, one service `svc` on [`NODES`] nodes.
fn config(naming: &str) -> String {
    let nodes: Vec<String> = (1..=NODES)
        .map(|i| format!("\"10.9.0.{i}:9090\""))
        .collect();
    format!(
        "out_dir: out\nlisten: 127.0.0.1:0\nservices:\n  - name: svc\n    script: scripts/svc.rhai\n    nodes: [{}]\n    file_naming: {naming}\n",
        nodes.join(", ")
    )
}

/// A script reading `gen_<generation>.json` natively.
fn script(generation: &str) -> String {
    format!(
        "fn targets(ctx) {{\n    targets_from_json_file(\"gen_{generation}.json\", #{{ address: \"{{ip}}:9100\", labels: #{{ env: \"{{env}}\", gen: \"{{gen}}\" }} }})\n}}\n"
    )
}

/// [`TARGETS`] records labelled `gen: generation`.
fn inventory(generation: &str) -> String {
    let mut text = String::with_capacity(TARGETS * 60);
    text.push('[');
    for i in 0..TARGETS {
        let sep = if i == 0 { "" } else { "," };
        let env = ["prod", "staging", "dev"][i % 3];
        let _ = write!(
            text,
            "{sep}\n{{\"ip\":\"10.{}.{}.{}\",\"env\":\"{env}\",\"gen\":\"{generation}\"}}",
            i / 65536,
            (i / 256) % 256,
            i % 256
        );
    }
    text.push_str("\n]\n");
    text
}

/// xorshift64: delays without a rand dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[derive(serde::Deserialize)]
struct Group {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// What the service directory holds at rest.
struct Seen {
    /// Node → its files.
    per_node: BTreeMap<String, Vec<String>>,
    /// Targets over all files (with repeats).
    targets: usize,
    distinct: usize,
    generations: BTreeSet<String>,
}

/// Check the directory at rest: every sd file parses, belongs to a node,
/// and no node has two. Hidden files (temp files) are not sd files.
fn inspect(dir: &Path) -> Result<Seen, String> {
    let nodes: Vec<String> = (1..=NODES).map(|i| format!("10.9.0.{i}:9090")).collect();
    let mut seen = Seen {
        per_node: BTreeMap::new(),
        targets: 0,
        distinct: 0,
        generations: BTreeSet::new(),
    };
    let mut all = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let name = entry
            .map_err(|e| e.to_string())?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = fs::read(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        let groups: Vec<Group> =
            serde_json::from_slice(&bytes).map_err(|e| format!("{name} does not parse: {e}"))?;
        let node = nodes
            .iter()
            .find(|n| {
                name.starts_with(&format!("svc_{n}_"))
                    || name == format!("svc_{}.json", n.replace(':', "_"))
            })
            .ok_or_else(|| format!("{name} belongs to no node"))?;
        let files = seen.per_node.entry(node.clone()).or_default();
        files.push(name);
        if files.len() > 1 {
            return Err(format!("{node} has two files: {files:?}"));
        }
        for g in groups {
            seen.targets += g.targets.len();
            seen.generations.extend(g.labels.get("gen").cloned());
            all.extend(g.targets);
        }
    }
    seen.distinct = all.len();
    Ok(seen)
}

fn once(dir: &Dir) -> std::process::Child {
    Command::new(BIN)
        .args(["--config", "promshard.yaml", "once"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promshard once")
}

/// Run a pass to its end; it must succeed and leave one file per node
/// holding every target once, of `generation`.
fn complete_pass(dir: &Dir, generation: &str, round: usize) -> Duration {
    let started = Instant::now();
    let out = once(dir).wait_with_output().expect("waiting for once");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "round {round}: the pass after a kill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = inspect(&dir.join("out/svc")).unwrap_or_else(|e| panic!("round {round}: {e}"));
    assert_eq!(
        seen.per_node.len(),
        NODES,
        "round {round}: a node lacks a file"
    );
    assert_eq!(
        (seen.targets, seen.distinct),
        (TARGETS, TARGETS),
        "round {round}: every target exactly once"
    );
    assert_eq!(
        seen.generations,
        BTreeSet::from([generation.to_string()]),
        "round {round}"
    );
    took
}

#[test]
fn kill_9_at_random_points_of_passes_never_leaves_a_broken_or_doubled_file() {
    let started = Instant::now();
    let dir = Dir::new();
    for generation in ["a", "b"] {
        dir.write(
            format!("scripts/gen_{generation}.json"),
            inventory(generation),
        );
    }
    dir.config(&config("stable"));
    dir.write("scripts/svc.rhai", script("a"));
    complete_pass(&dir, "a", 0);
    // Kills land within the length of a pass that rewrites every file
    // (the first pass, with nothing to compare, is shorter), plus a fifth.
    dir.write("scripts/svc.rhai", script("b"));
    let pass = complete_pass(&dir, "b", 0).mul_f64(1.2);

    let seed = std::env::var("PROMSHARD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!(
        "seed {seed}; kills within {pass:?} of the start of a pass over {TARGETS} targets, {NODES} nodes"
    );
    let mut rng = Rng(seed);
    let (mut before_write, mut mid_write, mut after_write) = (0, 0, 0);
    let mut passes = Vec::new();
    let mut generation = "b";
    for round in 1..=KILLS {
        // Every pass rewrites every file; every third one renames them too.
        let previous = generation;
        generation = if generation == "a" { "b" } else { "a" };
        dir.write("scripts/svc.rhai", script(generation));
        let naming = if round % 3 == 0 { "counted" } else { "stable" };
        dir.config(&config(naming));

        let mut child = once(&dir);
        let delay = Duration::from_millis(rng.below(pass.as_millis() as u64));
        std::thread::sleep(delay);
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().expect("reaping once");

        let seen = inspect(&dir.join("out/svc"))
            .unwrap_or_else(|e| panic!("round {round}, killed after {delay:?}: {e}"));
        let fresh = seen.generations.contains(generation);
        let stale = seen.generations.contains(previous);
        match (stale, fresh) {
            _ if status.success() => after_write += 1,
            (true, true) => mid_write += 1,
            (_, false) => before_write += 1,
            (false, true) => after_write += 1,
        }
        passes.push(complete_pass(&dir, generation, round));
    }
    passes.sort();
    eprintln!(
        "{KILLS} kills: {before_write} before the first file was written, {mid_write} part-way through writing, {after_write} after every file was; every pass after a kill recovered (median {:?}, max {:?}); total {:?}",
        passes[passes.len() / 2],
        passes[passes.len() - 1],
        started.elapsed()
    );
}
