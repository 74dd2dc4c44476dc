//! The daemon tests' fixture: one temp directory with a config whose
//! services read scripts from `svc/` and never fire on their cron (every
//! pass a test sees comes from start-up, a trigger or a reload), script
//! builders, drop-ins, and waits on the sd files the daemon writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Dir;
use super::child::free_port;
use super::daemon::Promshard;

/// Cron that never fires during a test (once a year), so every pass we see
/// comes from start-up, a trigger or a reload.
pub const NEVER: &str = "0 0 0 1 1 *";

/// Where test scripts live: not `scripts/`, whose files become drop-in
/// services, so that a script is a service only when a test configures it.
pub const SCRIPTS: &str = "svc";

/// The default `scripts_dir`: its top-level `.rhai` files are drop-ins.
pub const DROPINS: &str = "scripts";

/// Node names only: no test probes them or connects to them.
pub const NODES: [&str; 3] = ["10.9.0.1:9090", "10.9.0.2:9090", "10.9.0.3:9090"];

/// Log line a slow script prints as its pass begins.
pub const SLOW_BEGINS: &str = "slow pass begins";

/// One test's directory: config, scripts and out_dir, and the API port.
pub struct Setup {
    pub dir: Dir,
    pub port: u16,
}

impl Setup {
    pub fn new() -> Self {
        let dir = Dir::new();
        fs::create_dir_all(dir.join(SCRIPTS)).expect("scripts dir");
        Self {
            dir,
            port: free_port(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        self.dir.write(rel, text);
    }

    pub fn write_script(&self, service: &str, text: &str) {
        self.write(&format!("{SCRIPTS}/{service}.rhai"), text);
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("promshard.yaml")
    }

    /// Write `promshard.yaml`: `top` goes before `services:`.
    pub fn write_config(&self, top: &str, services: &[String]) {
        let text = config_yaml(&format!("127.0.0.1:{}", self.port), top, services);
        self.write("promshard.yaml", &text);
    }

    pub fn out(&self) -> PathBuf {
        self.path("out")
    }

    pub fn service_dir(&self, service: &str) -> PathBuf {
        self.out().join(service)
    }

    /// Start `promshard -c promshard.yaml run` (not waiting for it).
    pub fn start(&self) -> Promshard {
        Promshard::spawn(self.dir.path(), &self.config_path(), self.port)
    }

    /// A setup with the explicit service `web` (three nodes, cron that
    /// never fires, `n` targets) and an empty drop-in directory.
    pub fn with_dropin_dir(n: usize) -> (Self, Vec<String>) {
        let (s, h) = web_setup("", n);
        fs::create_dir_all(s.path(DROPINS)).expect("drop-in dir");
        (s, h)
    }

    pub fn dropin_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{DROPINS}/{name}.rhai"))
    }

    /// Drop `scripts/<name>.rhai` in place the way an operator's tooling
    /// does: written next to it under a hidden name, then renamed.
    pub fn drop_in(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("{DROPINS}/.{name}.rhai.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        let to = self.dropin_path(name);
        fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("renaming to {}: {e}", to.display()));
    }
}

/// A one-service setup: `web`, three nodes, `n` static targets labelled v1.
pub fn web_setup(top: &str, n: usize) -> (Setup, Vec<String>) {
    let s = Setup::new();
    let h = hosts(n);
    s.write_script("web", &static_script(&h, "v1"));
    s.write_config(top, &[service_yaml("web", &NODES, "")]);
    (s, h)
}

/// A `services:` entry for `name` (script `svc/<name>.rhai`).
pub fn service_yaml(name: &str, nodes: &[&str], extra: &str) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "  - name: {name}\n    script: {SCRIPTS}/{name}.rhai\n    schedule: \"{NEVER}\"\n    nodes: [{}]\n{extra}",
        nodes.join(", ")
    )
}

pub fn config_yaml(listen: &str, top: &str, services: &[String]) -> String {
    format!(
        "out_dir: out\nlisten: {listen}\n{top}services:\n{}",
        services.concat()
    )
}

/// `n` target addresses.
pub fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.1.0.{i}:9100")).collect()
}

/// `"a", "b", …`: a Rhai (or JSON) list body of strings.
pub fn quoted(items: &[impl AsRef<str>]) -> String {
    let list: Vec<String> = items
        .iter()
        .map(|h| format!("\"{}\"", h.as_ref()))
        .collect();
    list.join(", ")
}

/// A script returning `hosts` as one group labelled `version`.
pub fn static_script(hosts: &[String], version: &str) -> String {
    format!(
        "fn targets(ctx) {{\n    [#{{ targets: [{}], labels: #{{ version: \"{version}\" }} }}]\n}}\n",
        quoted(hosts)
    )
}

/// A script that logs [`SLOW_BEGINS`], busy-waits `secs`, then returns `hosts`.
pub fn slow_script(hosts: &[String], secs: f64) -> String {
    format!(
        "fn targets(ctx) {{\n    log_info(\"{SLOW_BEGINS}\");\n    let t = timestamp();\n    while t.elapsed < {secs:.1} {{}}\n    [{}]\n}}\n",
        quoted(hosts)
    )
}

/// A drop-in script: `fn service()` returns `settings` (a Rhai map body,
/// e.g. `schedule: "@every 1s"`), `fn targets` returns `hosts` labelled
/// `version`.
pub fn dropin_script(settings: &str, hosts: &[String], version: &str) -> String {
    format!(
        "fn service() {{\n    #{{ {settings} }}\n}}\n\n{}",
        static_script(hosts, version)
    )
}

/// `nodes: [...]` for a drop-in's `fn service()`.
pub fn rhai_nodes(nodes: &[&str]) -> String {
    format!("nodes: [{}]", quoted(nodes))
}

impl Promshard {
    /// Wait until `n` passes of a [`slow_script`] have begun (its log line).
    pub fn wait_slow_begun(&self, n: usize, within: Duration) {
        self.wait(&format!("slow pass {n} to begin"), within, || {
            let begun = self.logged(SLOW_BEGINS).len();
            if begun >= n {
                Ok(())
            } else {
                Err(format!("{begun} passes begun"))
            }
        });
    }
}

// ------------------------------------------------------------ sd files

/// The visible sd files of a service directory: name → parsed content.
pub fn sd_files(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = fs::read(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        let value: Value = if name.ends_with(".json") {
            serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))?
        } else {
            serde_yaml_ng::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))?
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// The file of `node` among `files` (default name `<service>_<node>.<ext>`,
/// the node's `:` made `_`).
pub fn node_file<'a>(
    files: &'a BTreeMap<String, Value>,
    service: &str,
    node: &str,
) -> Option<(&'a String, &'a Value)> {
    let prefix = format!("{service}_{}.", node.replace(':', "_"));
    files.iter().find(|(name, _)| name.starts_with(&prefix))
}

/// Every target address in an sd file's content.
pub fn addresses(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// Every label value `key` in an sd file's content.
pub fn label_values(groups: &Value, key: &str) -> BTreeSet<String> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["labels"][key].as_str().map(str::to_string))
        .collect()
}

/// Wait until the service directory holds `files` files, every one
/// labelled `version=<version>` (the label the test scripts set).
pub fn wait_version(d: &Promshard, dir: &Path, files: usize, version: &str, within: Duration) {
    d.wait(
        &format!("every file labelled version={version}"),
        within,
        || {
            let found = sd_files(dir)?;
            let versions: BTreeSet<String> = found
                .values()
                .flat_map(|f| label_values(f, "version"))
                .collect();
            if found.len() == files && versions == BTreeSet::from([version.to_string()]) {
                Ok(())
            } else {
                Err(format!("{} files, versions {versions:?}", found.len()))
            }
        },
    );
}

/// Wait until the service directory holds one file per node and, together,
/// exactly `want` targets, each once; returns the files.
pub fn wait_sharded(
    d: &Promshard,
    dir: &Path,
    nodes: usize,
    want: &[String],
    within: Duration,
) -> BTreeMap<String, Value> {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    d.wait(
        &format!("{} sharded over {nodes} files", dir.display()),
        within,
        || {
            let files = sd_files(dir)?;
            let all: Vec<String> = files.values().flat_map(addresses).collect();
            let set: BTreeSet<String> = all.iter().cloned().collect();
            if files.len() == nodes && set == want && all.len() == want.len() {
                Ok(files.clone())
            } else {
                Err(format!(
                    "{} files {:?} holding {} targets",
                    files.len(),
                    files.keys(),
                    all.len()
                ))
            }
        },
    )
}

/// Temp files (`.*.tmp`) anywhere under `dir`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                found.push(e.path());
            }
        }
    }
    found
}

// ------------------------------------------------ many passes, renaming

/// A daemon whose service `web` (on [`NODES`], `file_naming: naming`)
/// reads its targets from `svc/web.json`, sharded once.
pub fn churning_web(naming: &str) -> (Setup, Promshard) {
    let s = Setup::new();
    write_web_data(&s, 30);
    s.write_script(
        "web",
        "fn targets(ctx) {\n    parse_json(read_file(\"web.json\"))\n}\n",
    );
    let extra = format!("    file_naming: {naming}\n");
    s.write_config("", &[service_yaml("web", &NODES, &extra)]);
    let d = s.start();
    wait_sharded(
        &d,
        &s.service_dir("web"),
        3,
        &hosts(30),
        Duration::from_secs(20),
    );
    (s, d)
}

/// Replace `svc/web.json` (atomically: a script never reads half a list)
/// with `n` targets.
pub fn write_web_data(s: &Setup, n: usize) {
    let list: Vec<String> = hosts(n).iter().map(|h| format!("\"{h}\"")).collect();
    s.write(
        &format!("{SCRIPTS}/.web.json.new"),
        &format!("[{}]", list.join(",")),
    );
    fs::rename(
        s.path(&format!("{SCRIPTS}/.web.json.new")),
        s.path(&format!("{SCRIPTS}/web.json")),
    )
    .expect("renaming the data file");
}

/// Call `probe` at least `rounds` times while `web` runs at least
/// `passes` passes, each with other per-node counts (every 10 rounds, once
/// the last pass asked for is done: new targets and a dispatch). Returns
/// how many rounds and passes ran.
pub fn churn(
    s: &Setup,
    d: &Promshard,
    rounds: usize,
    passes: u64,
    mut probe: impl FnMut(usize),
) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = d.passes("web").unwrap_or_else(|e| d.fail(&e));
    let (mut asked_at, mut done, mut i) = (None, 0, 0);
    while i < rounds || done < passes {
        if i % 10 == 0 {
            let now = d.passes("web").unwrap_or_else(|e| d.fail(&e));
            done = now - first;
            if asked_at.is_none_or(|at| now > at) {
                write_web_data(s, 30 + (now as usize) % 17);
                d.dispatch("web", None);
                asked_at = Some(now);
            }
            if Instant::now() > deadline {
                d.fail(&format!("only {done} passes and {i} rounds in 20 s"));
            }
        }
        probe(i);
        i += 1;
    }
    (i, done)
}
