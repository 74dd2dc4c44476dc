//! `push: ansible`: deliver a pass's files with one batched
//! `ansible-playbook` run per service pass.
//!
//! Every node that needs its file (the pass decides which) becomes one host
//! of a generated inventory, and a single `ansible-playbook -i <inventory> <playbook> --forks N`
//! delivers them all. Per-host outcomes come from the `PLAY RECAP` of the
//! built-in `default` stdout callback (ansible-core ships no JSON stdout
//! callback), and hosts that failed or were unreachable are retried, alone,
//! with backoff, up to `retries` times in the same pass.
//!
//! Speed over SSH: by Ansible's defaults every module is a temp dir, an
//! upload, a chmod and a cleanup on the host. Each run is pipelined, keeps
//! one SSH connection per host (ControlMaster sockets in the batch's
//! private dir) and gathers no facts ([`tuned_settings`]); measured with
//! `-vvv` against a real sshd, a changed file then takes 7 commands and
//! one upload per host instead of 11 and three. The control masters leave
//! the process tree by design, so they are killed when their run ends.
//!
//! Safety:
//! - No shell: the command is an argument vector. Every string value in the
//!   inventory is marked `__ansible_unsafe`, so Ansible never evaluates
//!   Jinja in it either: a var or file name like `{{ lookup('pipe', …) }}`
//!   or `$(…)` reaches the playbook literally.
//! - Node names carry the Prometheus port (`10.0.0.1:9090`), which must not
//!   become the SSH port, so each host gets a plain alias
//!   (`n0_10_0_0_1_9090`) and `ansible_host` set to the address part.
//! - The inventory lives in a private temp dir removed after the pass.
//! - `ansible-playbook` runs in its own process group with a timeout. Its
//!   forked workers call `setsid()`, so killing the group alone would leave
//!   them (and the modules they run) behind: on timeout or shutdown the
//!   whole process tree is found through `/proc`, stopped, and killed group
//!   by group; the child is always reaped.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Delivery, DeliveryResult, NodeDelivery};
use crate::config::{AnsiblePush, Service};

/// Inventory vars promshard sets itself (checked against `vars` in config).
pub use crate::config::RESERVED_VARS;

/// Backoff before retry `n` (1-based): 1s, 2s, 4s, … capped at 30s.
fn backoff(retry: u32) -> Duration {
    Duration::from_secs(1u64 << retry.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// How much of ansible-playbook's stdout/stderr is kept for parsing.
const OUTPUT_CAP: usize = 16 << 20;

/// One `ansible-playbook` invocation of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsibleRun {
    /// 1 for the first run of the pass, 2 for the first retry, …
    pub attempt: u32,
    /// Hosts in the run's inventory.
    pub hosts: usize,
    pub duration: Duration,
    /// `exit 0`, `exit 2`, `timeout`, `cancelled`, `spawn error`, …
    pub outcome: String,
}

/// Everything a batched delivery did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchReport {
    /// One report per delivery, in batch order.
    pub nodes: Vec<NodeDelivery>,
    pub runs: Vec<AnsibleRun>,
}

/// The inventory alias of the `index`-th node: letters, digits and `_` only.
pub fn host_alias(index: usize, node: &str) -> String {
    let clean: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("n{index}_{clean}")
}

/// The machine part of a node name: `10.0.0.1:9090` → `10.0.0.1`,
/// `[fd00::1]:9090` → `fd00::1`.
pub fn node_host(node: &str) -> &str {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once("]:").map_or(rest, |(h, _)| h);
    }
    node.rsplit_once(':').map_or(node, |(h, _)| h)
}

/// Fill `{node}` and `{service}` into every string of `v`.
fn expand(v: &Value, node: &str, service: &str) -> Value {
    match v {
        Value::String(s) => Value::String(crate::shard::template::for_node(s, service, node)),
        Value::Array(a) => Value::Array(a.iter().map(|x| expand(x, node, service)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), expand(x, node, service)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Mark every string as `__ansible_unsafe` so Ansible never templates it.
fn unsafe_strings(v: Value) -> Value {
    match v {
        Value::String(s) => {
            let mut m = Map::new();
            m.insert("__ansible_unsafe".into(), Value::String(s));
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(unsafe_strings).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, x)| (k, unsafe_strings(x))).collect())
        }
        other => other,
    }
}

/// The host vars of one delivery (before unsafe-marking).
pub fn host_vars(settings: &AnsiblePush, service: &Service, d: &Delivery) -> Map<String, Value> {
    let mut vars = Map::new();
    vars.insert("ansible_host".into(), node_host(&d.node).into());
    for (k, v) in &settings.vars {
        vars.insert(k.clone(), expand(v, &d.node, &service.name));
    }
    let src = std::path::absolute(&d.file).unwrap_or_else(|_| d.file.clone());
    vars.insert(
        "src_sd_file".into(),
        src.to_string_lossy().into_owned().into(),
    );
    vars.insert(
        "dest_sd_file_name".into(),
        crate::shard::template::for_node(&settings.dest_sd_file_name, &service.name, &d.node)
            .into(),
    );
    vars.insert("service".into(), service.name.clone().into());
    if let Some(port) = service.port {
        vars.insert("service_port".into(), port.into());
    }
    vars.insert("node".into(), d.node.clone().into());
    if let Some(epoch) = d.epoch {
        vars.insert("promshard_epoch".into(), epoch.into());
    }
    vars
}

/// The inventory (JSON, read by Ansible's YAML inventory plugin).
fn inventory(hosts: &[(&str, Map<String, Value>)]) -> Value {
    let hosts: Map<String, Value> = hosts
        .iter()
        .map(|(alias, vars)| {
            (
                alias.to_string(),
                unsafe_strings(Value::Object(vars.clone())),
            )
        })
        .collect();
    serde_json::json!({ "all": { "hosts": hosts } })
}

/// Per-host counters from a `PLAY RECAP` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    pub ok: u32,
    pub changed: u32,
    pub unreachable: u32,
    pub failed: u32,
}

impl HostStats {
    fn result(self) -> DeliveryResult {
        if self.unreachable > 0 {
            DeliveryResult::Unreachable
        } else if self.failed > 0 {
            DeliveryResult::Failed
        } else if self.changed > 0 {
            DeliveryResult::Changed
        } else {
            DeliveryResult::Ok
        }
    }
}

/// Parse the last `PLAY RECAP` block of the `default` callback's output.
pub fn parse_recap(stdout: &str) -> HashMap<String, HostStats> {
    let mut out = HashMap::new();
    let Some(start) = stdout.rfind("PLAY RECAP") else {
        return out;
    };
    for line in stdout[start..].lines().skip(1) {
        let mut words = line.split_whitespace();
        let (Some(host), Some(":")) = (words.next(), words.next()) else {
            continue;
        };
        let mut s = HostStats::default();
        for kv in words {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let n = v.parse().unwrap_or(0);
            match k {
                "ok" => s.ok = n,
                "changed" => s.changed = n,
                "unreachable" => s.unreachable = n,
                "failed" => s.failed = n,
                _ => {}
            }
        }
        out.insert(host.to_string(), s);
    }
    out
}

/// The last error message per host, from `fatal: [host]: FAILED! => {…}`
/// (and `UNREACHABLE!`) lines.
pub fn parse_errors(stdout: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in stdout.lines() {
        let Some(rest) = line
            .strip_prefix("fatal: [")
            .or_else(|| line.strip_prefix("failed: ["))
        else {
            continue;
        };
        let Some((host, rest)) = rest.split_once(']') else {
            continue;
        };
        let detail = rest.split_once("=> ").map_or(rest, |(_, d)| d).trim();
        let msg = match serde_json::from_str::<Value>(detail) {
            Ok(v) => {
                let msg = v.get("msg").and_then(Value::as_str).unwrap_or(detail);
                match v.get("stderr").and_then(Value::as_str).map(str::trim) {
                    Some(e) if !e.is_empty() => format!("{msg}: {e}"),
                    _ => msg.to_string(),
                }
            }
            Err(_) => detail.to_string(),
        };
        out.insert(host.to_string(), truncate(&msg, 500));
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The last non-empty lines of `text`, for error messages.
fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    truncate(&v[v.len().saturating_sub(lines)..].join(" | "), 800)
}

/// How one `ansible-playbook` process ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    WaitFailed(std::io::Error),
}

impl Ended {
    /// `exit 0`, `exit 2`, `timeout`, `cancelled`, … for logs and reports.
    fn describe(&self) -> String {
        match self {
            Ended::Exited(s) => match s.code() {
                Some(c) => format!("exit {c}"),
                None => format!("{s}"),
            },
            Ended::TimedOut => "timeout".into(),
            Ended::Cancelled => "cancelled".into(),
            Ended::WaitFailed(e) => format!("wait failed: {e}"),
        }
    }
}

/// What one run produced.
struct RunOutput {
    ended: Ended,
    stdout: String,
    stderr: String,
}

async fn read_capped(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                if kept.len() < OUTPUT_CAP {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// Run `ansible-playbook` once; `Err` if it could not be started.
async fn run_playbook(
    settings: &AnsiblePush,
    inventory: &Path,
    work: &Workspace,
    forks: usize,
    cancel: &CancellationToken,
) -> Result<RunOutput, String> {
    let mut cmd = Command::new(&settings.ansible_playbook);
    if settings.tuning {
        set_unless_given(&mut cmd, tuned_settings(&work.control_dir));
    }
    cmd.arg("-i")
        .arg(inventory)
        .arg(&settings.playbook)
        .arg("--forks")
        .arg(forks.to_string())
        // Our parser reads the default callback's PLAY RECAP, whatever an
        // ansible.cfg chose.
        .env("ANSIBLE_STDOUT_CALLBACK", "default")
        .env("ANSIBLE_CALLBACK_RESULT_FORMAT", "json")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_LOCAL_TEMP", &work.local_tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e}",
            settings.ansible_playbook.to_string_lossy()
        )
    })?;
    let pid = child.id().map(|p| p as i32);
    let out = child.stdout.take().map(|s| tokio::spawn(read_capped(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(read_capped(s)));
    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ended::Exited(s),
            Err(e) => Ended::WaitFailed(e),
        },
        _ = tokio::time::sleep(settings.timeout) => Ended::TimedOut,
        _ = cancel.cancelled() => Ended::Cancelled,
    };
    if !matches!(ended, Ended::Exited(_)) {
        if let Some(pid) = pid {
            kill_tree(pid);
        }
        // Reap it; SIGKILL cannot be ignored, so this returns promptly.
        let _ = child.kill().await;
    }
    // ControlPersist masters detach from the tree; they serve only this
    // run, so none outlives it.
    stop_control_masters(&work.control_dir);
    // Pipes close when the last holder dies; do not wait forever for a
    // grandchild that escaped with a copy of them.
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match h {
            Some(h) => match tokio::time::timeout(Duration::from_secs(5), h).await {
                Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
                _ => String::new(),
            },
            None => String::new(),
        }
    };
    Ok(RunOutput {
        ended,
        stdout: collect(out).await,
        stderr: collect(err).await,
    })
}

/// The Ansible settings promshard sets for a run (unless `tuning: false`,
/// and each only when promshard's own environment does not set it): a
/// changed file costs one SSH connection per host and a few round trips
/// over it instead of a new connection and a module upload per step.
/// Host vars (`push.vars`, e.g. `ansible_pipelining: false`) win over
/// these, as over any Ansible environment variable; an `ansible.cfg` loses
/// to them.
pub fn tuned_settings(control_dir: &Path) -> [(&'static str, OsString); 3] {
    [
        // Modules are fed to python on stdin: no temp dir, upload and
        // chmod round trips per module.
        ("ANSIBLE_PIPELINING", "True".into()),
        // Ansible's default ssh_args already ask for ControlMaster=auto and
        // ControlPersist=60s; the sockets go in the run's private dir
        // (short: the path must fit a Unix socket address).
        ("ANSIBLE_SSH_CONTROL_PATH_DIR", control_dir.into()),
        // Facts are never used by the shipped playbooks.
        ("ANSIBLE_GATHERING", "explicit".into()),
    ]
}

/// Set each variable on `cmd` unless promshard's own environment has it.
fn set_unless_given(cmd: &mut Command, vars: impl IntoIterator<Item = (&'static str, OsString)>) {
    for (key, value) in vars {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
}

/// Kill the SSH control masters whose sockets live in `control_dir` (found
/// by the socket path in their command line: a master renames itself to
/// `ssh: <path> [mux]`).
fn stop_control_masters(control_dir: &Path) {
    let mut needle = control_dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
        {
            // SAFETY: kill has no memory-safety preconditions; the path is
            // this run's private temp dir, so only its masters match.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `(pid, ppid, pgid)` of every process, from `/proc/<pid>/stat`.
fn process_table() -> Vec<(i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may contain anything.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut f = rest.split_whitespace().skip(1);
        let ppid = f.next()?.parse().ok()?;
        let pgid = f.next()?.parse().ok()?;
        Some((pid, ppid, pgid))
    })
    .collect()
}

/// `root` and all its descendants, with their process groups.
fn tree(root: i32) -> Vec<(i32, i32)> {
    let table = process_table();
    let mut found: Vec<(i32, i32)> = table
        .iter()
        .filter(|(pid, ..)| *pid == root)
        .map(|&(pid, _, pgid)| (pid, pgid))
        .collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].0;
        for &(pid, ppid, pgid) in &table {
            if ppid == parent && !found.iter().any(|(p, _)| *p == pid) {
                found.push((pid, pgid));
            }
        }
        i += 1;
    }
    found
}

/// Kill `root` (a process-group leader we started), everything in its
/// group, and every descendant that moved to a group or session of its own.
/// The tree is frozen with SIGSTOP first so nothing forks away between
/// looking and killing; our own group is never signalled.
pub fn kill_tree(root: i32) {
    // SAFETY: getpgrp and kill have no memory-safety preconditions.
    let own = unsafe { libc::getpgrp() };
    let mut groups = BTreeSet::from([root]);
    let mut pids = BTreeSet::new();
    unsafe { libc::kill(-root, libc::SIGSTOP) };
    for _ in 0..20 {
        let mut grew = false;
        for (pid, pgid) in tree(root) {
            grew |= pids.insert(pid);
            if pgid > 1 && pgid != own && groups.insert(pgid) {
                grew = true;
                unsafe { libc::kill(-pgid, libc::SIGSTOP) };
            }
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        if !grew {
            break;
        }
    }
    for g in &groups {
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    for p in &pids {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
}

/// Deliver a batch; one report per delivery, in batch order. `retry:
/// false` makes one attempt only.
pub async fn deliver(
    settings: &AnsiblePush,
    service: &Service,
    batch: Vec<Delivery>,
    cancel: &CancellationToken,
    retry: bool,
) -> super::Delivered {
    let once;
    let settings = if retry {
        settings
    } else {
        once = AnsiblePush {
            retries: 0,
            ..settings.clone()
        };
        &once
    };
    let report = run_batch(settings, service, &batch, cancel).await;
    super::Delivered {
        nodes: report.nodes,
        run_seconds: report
            .runs
            .iter()
            .map(|r| r.duration.as_secs_f64())
            .collect(),
    }
}

/// Deliver a batch with one `ansible-playbook` run, then retry the nodes
/// that failed or were unreachable, up to `settings.retries` times.
pub async fn run_batch(
    settings: &AnsiblePush,
    service: &Service,
    batch: &[Delivery],
    cancel: &CancellationToken,
) -> BatchReport {
    if batch.is_empty() {
        return BatchReport::default();
    }
    let mut hosts = Hosts::new(settings, service, batch);
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let work = match Workspace::new() {
        Ok(w) => w,
        Err(e) => {
            hosts.fail(&pending, &e);
            return hosts.report(Vec::new());
        }
    };
    let mut runs = Vec::new();
    for attempt in 1..=settings.retries + 1 {
        if attempt > 1 {
            let wait = backoff(attempt - 1);
            tracing::info!(service = %service.name, retry = attempt - 1, nodes = pending.len(), backoff_ms = wait.as_millis() as u64, "retrying failed ansible deliveries");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
        }
        if cancel.is_cancelled() {
            hosts.fail(&pending, "cancelled by shutdown");
            break;
        }
        let step = run_once(
            settings, service, &work, &mut hosts, &pending, attempt, cancel,
        )
        .await;
        runs.extend(step.run);
        pending = step.retry;
        if pending.is_empty() {
            break;
        }
    }
    hosts.report(runs)
}

/// A batch's private temp dir: the inventories of its runs, Ansible's
/// local temp dir and the SSH control sockets. Removed when dropped.
struct Workspace {
    dir: tempfile::TempDir,
    local_tmp: PathBuf,
    control_dir: PathBuf,
    /// A shorter dir for the sockets when `dir` is too long for them.
    _short: Option<tempfile::TempDir>,
}

/// Longest control dir: a socket path (dir, `/`, Ansible's 10-hex name,
/// ssh's `.` and 16 random characters while binding) must fit the 108
/// bytes of a Unix socket address.
const CONTROL_DIR_MAX: usize = 108 - 1 - 1 - 10 - 17;

impl Workspace {
    fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("promshard-ansible-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for the inventory: {e}"))?;
        let local_tmp = dir.path().join("ansible-local");
        std::fs::create_dir(&local_tmp).map_err(|e| format!("{}: {e}", local_tmp.display()))?;
        let mut control_dir = dir.path().join("cp");
        let mut short = None;
        if control_dir.as_os_str().len() > CONTROL_DIR_MAX {
            let t = tempfile::Builder::new()
                .prefix("psh-")
                .tempdir_in("/tmp")
                .map_err(|e| format!("cannot create a temp dir for SSH control sockets: {e}"))?;
            control_dir = t.path().to_path_buf();
            short = Some(t);
        } else {
            std::fs::create_dir(&control_dir)
                .map_err(|e| format!("{}: {e}", control_dir.display()))?;
        }
        Ok(Self {
            dir,
            local_tmp,
            control_dir,
            _short: short,
        })
    }

    /// Write the inventory of the `pending` hosts for run `attempt`.
    fn write_inventory(
        &self,
        attempt: u32,
        hosts: &Hosts,
        pending: &[usize],
    ) -> Result<PathBuf, String> {
        let listed: Vec<(&str, Map<String, Value>)> = pending
            .iter()
            .map(|&i| (hosts.aliases[i].as_str(), hosts.vars[i].clone()))
            .collect();
        let path = self.dir.path().join(format!("inventory-{attempt}.json"));
        serde_json::to_vec_pretty(&inventory(&listed))
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// The hosts of a batch, by index: alias, vars, and what each came to.
struct Hosts {
    aliases: Vec<String>,
    vars: Vec<Map<String, Value>>,
    results: Vec<NodeDelivery>,
}

impl Hosts {
    fn new(settings: &AnsiblePush, service: &Service, batch: &[Delivery]) -> Self {
        Self {
            aliases: batch
                .iter()
                .enumerate()
                .map(|(i, d)| host_alias(i, &d.node))
                .collect(),
            vars: batch
                .iter()
                .map(|d| host_vars(settings, service, d))
                .collect(),
            results: batch
                .iter()
                .map(|d| NodeDelivery {
                    node: d.node.clone(),
                    result: DeliveryResult::Failed,
                    attempts: 0,
                    error: Some("not attempted".into()),
                })
                .collect(),
        }
    }

    /// Mark the hosts `which` failed for a reason that is not theirs.
    fn fail(&mut self, which: &[usize], error: &str) {
        for &i in which {
            self.results[i].result = DeliveryResult::Failed;
            self.results[i].error = Some(error.to_string());
        }
    }

    /// How many of the hosts `which` came to `result`.
    fn count(&self, which: &[usize], result: DeliveryResult) -> usize {
        which
            .iter()
            .filter(|&&i| self.results[i].result == result)
            .count()
    }

    fn report(self, runs: Vec<AnsibleRun>) -> BatchReport {
        BatchReport {
            nodes: self.results,
            runs,
        }
    }
}

/// What one run did: the run itself (none if it never started) and the
/// hosts worth retrying.
struct Attempt {
    run: Option<AnsibleRun>,
    retry: Vec<usize>,
}

/// One `ansible-playbook` run over the `pending` hosts; records each host's
/// result in `hosts`.
async fn run_once(
    settings: &AnsiblePush,
    service: &Service,
    work: &Workspace,
    hosts: &mut Hosts,
    pending: &[usize],
    attempt: u32,
    cancel: &CancellationToken,
) -> Attempt {
    let inventory = match work.write_inventory(attempt, hosts, pending) {
        Ok(p) => p,
        Err(e) => {
            hosts.fail(pending, &e);
            return Attempt {
                run: None,
                retry: Vec::new(),
            };
        }
    };
    let forks = settings.forks.min(pending.len()).max(1);
    let started = Instant::now();
    let output = run_playbook(settings, &inventory, work, forks, cancel).await;
    let duration = started.elapsed();
    let run = |outcome: String| AnsibleRun {
        attempt,
        hosts: pending.len(),
        duration,
        outcome,
    };
    for &i in pending {
        hosts.results[i].attempts = attempt;
    }
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            // Not transient: the program is missing or not executable.
            tracing::error!(service = %service.name, error = %e, "ansible-playbook did not start");
            hosts.fail(pending, &e);
            return Attempt {
                run: Some(run("spawn error".into())),
                retry: Vec::new(),
            };
        }
    };
    let run = run(output.ended.describe());
    let retry = record_results(settings, hosts, pending, &output, &run.outcome);
    tracing::info!(
        service = %service.name,
        attempt,
        hosts = pending.len(),
        forks,
        outcome = %run.outcome,
        duration_ms = run.duration.as_millis() as u64,
        ok = hosts.count(pending, DeliveryResult::Ok),
        changed = hosts.count(pending, DeliveryResult::Changed),
        failed = hosts.count(pending, DeliveryResult::Failed),
        unreachable = hosts.count(pending, DeliveryResult::Unreachable),
        "ansible-playbook run"
    );
    tracing::debug!(service = %service.name, attempt, stdout = %output.stdout, stderr = %output.stderr, "ansible-playbook output");
    Attempt {
        run: Some(run),
        // A shutdown ends the pass: nothing is retried.
        retry: if matches!(output.ended, Ended::Cancelled) {
            Vec::new()
        } else {
            retry
        },
    }
}

/// Record each pending host's result of a run; returns the hosts worth
/// retrying (failed or unreachable, not fenced).
fn record_results(
    settings: &AnsiblePush,
    hosts: &mut Hosts,
    pending: &[usize],
    output: &RunOutput,
    outcome: &str,
) -> Vec<usize> {
    let recap = parse_recap(&output.stdout);
    let errors = parse_errors(&output.stdout);
    let mut retry = Vec::new();
    for &i in pending {
        let alias = &hosts.aliases[i];
        let (result, error) = host_result(
            settings,
            output,
            outcome,
            alias,
            recap.get(alias),
            errors.get(alias),
        );
        if !result.is_success() && result != DeliveryResult::Fenced {
            retry.push(i);
        }
        hosts.results[i].result = result;
        hosts.results[i].error = error;
    }
    retry
}

/// One host's result of a run, from its `PLAY RECAP` line and its error.
fn host_result(
    settings: &AnsiblePush,
    output: &RunOutput,
    outcome: &str,
    alias: &str,
    stats: Option<&HostStats>,
    error: Option<&String>,
) -> (DeliveryResult, Option<String>) {
    let failed = |e: String| (DeliveryResult::Failed, Some(e));
    match (&output.ended, stats) {
        (Ended::Exited(_), Some(stats)) => {
            let result = stats.result();
            if result.is_success() {
                return (result, None);
            }
            let error = error
                .cloned()
                .unwrap_or_else(|| format!("{} (see ansible-playbook output)", result.as_str()));
            // The playbook's epoch marker refused a stale leader.
            if error.starts_with("fenced:") {
                return (DeliveryResult::Fenced, Some(error));
            }
            (result, Some(error))
        }
        (Ended::Exited(_), None) => failed(format!(
            "no PLAY RECAP entry for host {alias} ({outcome}); does the playbook target hosts: all? {}",
            tail(&format!("{}\n{}", output.stderr, output.stdout), 4)
        )),
        (Ended::TimedOut, _) => failed(format!(
            "ansible-playbook killed after the {}s timeout",
            settings.timeout.as_secs_f64()
        )),
        (Ended::Cancelled, _) => failed("ansible-playbook killed by shutdown".into()),
        (Ended::WaitFailed(e), _) => failed(format!("waiting for ansible-playbook: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = r#"
PLAY [all] *********************************************************************

TASK [copy] ********************************************************************
fatal: [n0_a]: FAILED! => {"changed": false, "msg": "Not a directory"}
fatal: [n2_c]: UNREACHABLE! => {"changed": false, "msg": "ssh: connect to host 10.0.0.3 port 22: Connection refused", "unreachable": true}
changed: [n1_b]

PLAY RECAP *********************************************************************
n0_a                       : ok=0    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
n1_b                       : ok=2    changed=1    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
n2_c                       : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0
n3_d                       : ok=2    changed=0    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
"#;

    #[test]
    fn recap_and_errors_are_parsed_per_host() {
        let r = parse_recap(OUT);
        assert_eq!(r.len(), 4);
        assert_eq!(r["n0_a"].result(), DeliveryResult::Failed);
        assert_eq!(r["n1_b"].result(), DeliveryResult::Changed);
        assert_eq!(r["n2_c"].result(), DeliveryResult::Unreachable);
        assert_eq!(r["n3_d"].result(), DeliveryResult::Ok);
        let e = parse_errors(OUT);
        assert_eq!(e["n0_a"], "Not a directory");
        assert!(e["n2_c"].contains("Connection refused"), "{e:?}");
        assert!(!e.contains_key("n1_b"));
        assert!(parse_recap("no recap here").is_empty());
    }

    #[test]
    fn aliases_are_plain_and_hosts_drop_the_port() {
        assert_eq!(host_alias(0, "10.0.0.1:9090"), "n0_10_0_0_1_9090");
        assert_eq!(host_alias(3, "[fd00::1]:9090"), "n3__fd00__1__9090");
        assert_eq!(node_host("10.0.0.1:9090"), "10.0.0.1");
        assert_eq!(node_host("prom-a.example:9090"), "prom-a.example");
        assert_eq!(node_host("[fd00::1]:9090"), "fd00::1");
    }

    #[test]
    fn strings_are_expanded_then_marked_unsafe() {
        let v = serde_json::json!({"d": "/srv/{service}/{node}", "n": 3, "l": ["{node}"]});
        let e = unsafe_strings(expand(&v, "a:1", "svc"));
        assert_eq!(
            e,
            serde_json::json!({
                "d": {"__ansible_unsafe": "/srv/svc/a:1"},
                "n": 3,
                "l": [{"__ansible_unsafe": "a:1"}],
            })
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), Duration::from_secs(30));
    }

    /// A child whose grandchild escaped into its own session is killed too.
    #[tokio::test]
    async fn kill_tree_reaches_children_in_other_sessions() {
        let marker = format!("{}", 4000 + std::process::id() % 1000);
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("setsid sleep {marker}1 & sleep {marker}2 & wait"))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sh");
        let pid = child.id().expect("pid") as i32;
        let find = || {
            process_table()
                .into_iter()
                .filter(|(p, ..)| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| {
                            String::from_utf8_lossy(&c).contains(&format!("sleep\0{marker}"))
                                && !String::from_utf8_lossy(&c).contains("-c")
                        })
                        .unwrap_or(false)
                        && std::fs::read_to_string(format!("/proc/{p}/stat"))
                            .map(|s| !s.contains(") Z"))
                            .unwrap_or(false)
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while find() < 2 {
            assert!(Instant::now() < deadline, "sleeps never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill_tree(pid);
        child.wait().await.expect("reap");
        let deadline = Instant::now() + Duration::from_secs(5);
        while find() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} sleep(s) survived kill_tree",
                find()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
