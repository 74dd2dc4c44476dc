//! Daemon tests: each one starts the real `promshard run` binary as a child
//! process on a free loopback port, in its own temp directory, and watches
//! it from the outside — the files it writes, its HTTP API, its log (JSON
//! lines on stderr, captured to a file) and its exit status — the way an
//! operator and a Prometheus server see it.
//!
//! Nothing sleeps and hopes: every wait polls with a deadline and, when the
//! deadline passes, says what it saw last and shows the daemon's log. Every
//! child process is owned by a guard that kills it when the test ends, even
//! on panic.
//!
//! The Prometheus end-to-end test needs `prometheus`
//! (`PROMSHARD_PROMETHEUS`, else `PATH`); it is `#[ignore = "needs
//! prometheus"]` and `bash .ci/test` runs it with `--include-ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod util;
use util::child::{ChildGuard, free_port, holds, poll};
use util::tools::prometheus;

/// Cron that never fires during a test (once a year), so every pass we see
/// comes from start-up, a trigger or a reload.
const NEVER: &str = "0 0 0 1 1 *";

/// Where test scripts live: not `scripts/`, whose files become drop-in
/// services, so that a script is a service only when a test configures it.
const SCRIPTS: &str = "svc";

const NODES: [&str; 3] = ["10.9.0.1:9090", "10.9.0.2:9090", "10.9.0.3:9090"];

/// Log line a slow script prints as its pass begins.
const SLOW_BEGINS: &str = "slow pass begins";

// ------------------------------------------------------------------ helpers

/// One test's directory: config, scripts and out_dir.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join(SCRIPTS)).expect("scripts dir");
        Self {
            dir,
            port: free_port(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn write_script(&self, service: &str, text: &str) {
        self.write(&format!("{SCRIPTS}/{service}.rhai"), text);
    }

    fn config_path(&self) -> PathBuf {
        self.path("promshard.yaml")
    }

    /// Write `promshard.yaml`: `top` goes before `services:`.
    fn write_config(&self, top: &str, services: &[String]) {
        let text = config_yaml(&format!("127.0.0.1:{}", self.port), top, services);
        self.write("promshard.yaml", &text);
    }

    fn out(&self) -> PathBuf {
        self.path("out")
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.out().join(service)
    }

    /// Start `promshard -c promshard.yaml run`.
    fn start(&self) -> Daemon {
        self.start_with_config(&self.config_path())
    }

    fn start_with_config(&self, config: &Path) -> Daemon {
        let log = self.path("daemon.log");
        let stderr = fs::File::create(&log).expect("creating daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_promshard"))
            .arg("-c")
            .arg(config)
            .args(["--log-format", "json", "run"])
            .env("RUST_LOG", "info,tokio_cron_scheduler=warn")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning promshard run");
        Daemon {
            proc: ChildGuard::new("promshard", child),
            log,
            base: format!("http://127.0.0.1:{}", self.port),
            agent: agent(),
        }
    }
}

/// A `services:` entry for `name` (script `svc/<name>.rhai`).
fn service_yaml(name: &str, nodes: &[&str], extra: &str) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "  - name: {name}\n    script: {SCRIPTS}/{name}.rhai\n    schedule: \"{NEVER}\"\n    nodes: [{}]\n{extra}",
        nodes.join(", ")
    )
}

fn config_yaml(listen: &str, top: &str, services: &[String]) -> String {
    format!(
        "out_dir: out\nlisten: {listen}\n{top}services:\n{}",
        services.concat()
    )
}

/// `n` target addresses.
fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.1.0.{i}:9100")).collect()
}

/// A script returning `hosts` as one group labelled `version`.
fn static_script(hosts: &[String], version: &str) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "fn targets(ctx) {{\n    [#{{ targets: [{}], labels: #{{ version: \"{version}\" }} }}]\n}}\n",
        list.join(", ")
    )
}

/// A script that logs [`SLOW_BEGINS`], busy-waits `secs`, then returns `hosts`.
fn slow_script(hosts: &[String], secs: f64) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "fn targets(ctx) {{\n    log_info(\"{SLOW_BEGINS}\");\n    let t = timestamp();\n    while t.elapsed < {secs:.1} {{}}\n    [{}]\n}}\n",
        list.join(", ")
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status, content type and body of a response.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

fn read_reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok(Reply {
        status: r.status().as_u16(),
        content_type,
        body,
    })
}

fn http_get(agent: &ureq::Agent, url: &str) -> Result<Reply, String> {
    read_reply(agent.get(url).call())
}

/// The running daemon, seen from outside.
struct Daemon {
    proc: ChildGuard,
    log: PathBuf,
    base: String,
    agent: ureq::Agent,
}

impl Daemon {
    fn get(&self, path: &str) -> Result<Reply, String> {
        http_get(&self.agent, &format!("{}{path}", self.base))
    }

    fn post(&self, path: &str, token: Option<&str>) -> Result<Reply, String> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        read_reply(req.send_empty())
    }

    /// POST a dispatch and require 202.
    fn dispatch(&self, service: &str, token: Option<&str>) {
        let r = self
            .post(&format!("/api/v1/services/{service}/dispatch"), token)
            .unwrap_or_else(|e| self.fail(&format!("dispatch {service}: {e}")));
        if r.status != 202 {
            self.fail(&format!("dispatch {service}: {} {}", r.status, r.body));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's JSON lines.
    fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines whose message is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"].as_str() == Some(message))
            .collect()
    }

    /// Panic with `msg` and the tail of the daemon's log.
    fn fail(&self, msg: &str) -> ! {
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{msg}\n--- daemon log (last 40 lines) ---\n{}",
            tail.join("\n")
        )
    }

    /// Poll with a deadline; on timeout fail with what was seen and the log.
    fn wait<T>(&self, what: &str, within: Duration, check: impl FnMut() -> Result<T, String>) -> T {
        poll(what, within, check).unwrap_or_else(|e| self.fail(&e))
    }

    /// Wait until `/healthz` answers 200.
    fn wait_up(&self) {
        self.wait("/healthz 200", Duration::from_secs(20), || {
            let r = self.get("/healthz")?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        });
    }

    /// The service entries of `/api/v1/services`, by name.
    fn services(&self) -> Result<BTreeMap<String, Value>, String> {
        let r = self.get("/api/v1/services")?;
        if r.status != 200 {
            return Err(format!("/api/v1/services: {} {}", r.status, r.body));
        }
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        Ok(v["services"]
            .as_array()
            .ok_or_else(|| format!("no services array: {}", r.body))?
            .iter()
            .map(|s| (s["name"].as_str().unwrap_or("").to_string(), s.clone()))
            .collect())
    }

    /// `passes` of `service` in `/api/v1/services`.
    fn passes(&self, service: &str) -> Result<u64, String> {
        let all = self.services()?;
        let s = all
            .get(service)
            .ok_or_else(|| format!("{service} not listed (listed: {:?})", all.keys()))?;
        s["passes"]
            .as_u64()
            .ok_or_else(|| format!("no passes in {s}"))
    }

    /// Wait until `service` has had exactly... at least `n` passes.
    fn wait_passes(&self, service: &str, n: u64, within: Duration) -> u64 {
        self.wait(&format!("{service} passes >= {n}"), within, || {
            let p = self.passes(service)?;
            if p >= n {
                Ok(p)
            } else {
                Err(format!("passes = {p}"))
            }
        })
    }

    /// Wait until `n` passes of a slow script have begun (its log line).
    fn wait_slow_begun(&self, n: usize, within: Duration) {
        self.wait(&format!("slow pass {n} to begin"), within, || {
            let begun = self.logged(SLOW_BEGINS).len();
            if begun >= n {
                Ok(())
            } else {
                Err(format!("{begun} passes begun"))
            }
        });
    }

    /// Parse `/metrics` strictly.
    fn metrics(&self) -> Result<Vec<Sample>, String> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            return Err(format!("/metrics: {} {}", r.status, r.body));
        }
        parse_exposition(&r.body)
    }

    /// Value of the sample `name` whose labels include `labels` (0 if absent).
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = self.metrics().unwrap_or_else(|e| self.fail(&e));
        find_sample(&samples, name, labels).unwrap_or(0.0)
    }

    /// Wait for the process to exit, at most `within`.
    fn wait_exit(&mut self, within: Duration) -> Result<(ExitStatus, Duration), String> {
        let started = Instant::now();
        let status = poll("process exit", within, || {
            self.proc
                .exited()
                .ok_or_else(|| "still running".to_string())
        })?;
        Ok((status, started.elapsed()))
    }
}

// ------------------------------------------------------------ sd files

/// The visible sd files of a service directory: name → parsed content.
fn sd_files(dir: &Path) -> Result<BTreeMap<String, Value>, String> {
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
fn node_file<'a>(
    files: &'a BTreeMap<String, Value>,
    service: &str,
    node: &str,
) -> Option<(&'a String, &'a Value)> {
    let prefix = format!("{service}_{}.", node.replace(':', "_"));
    files.iter().find(|(name, _)| name.starts_with(&prefix))
}

/// Every target address in an sd file's content.
fn addresses(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// Every label value `key` in an sd file's content.
fn label_values(groups: &Value, key: &str) -> BTreeSet<String> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["labels"][key].as_str().map(str::to_string))
        .collect()
}

/// Wait until the service directory holds `files` files, every one
/// labelled `version=<version>` (the label the test scripts set).
fn wait_version(d: &Daemon, dir: &Path, files: usize, version: &str, within: Duration) {
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
fn wait_sharded(
    d: &Daemon,
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
fn temp_files(dir: &Path) -> Vec<PathBuf> {
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

// ------------------------------------------------- Prometheus text parser

/// One sample line of the text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn find_sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Parse `{a="x",b="y"}` (without the braces); returns the labels.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without '=' in {s:?}"))?;
        let name = &rest[..eq];
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value not quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of {name} in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
        rest = &rest[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(format!("expected ',' or '}}' at {rest:?} in {s:?}")),
        };
    }
    Ok(labels)
}

/// Strict parser of the Prometheus/OpenMetrics text format: every line is a
/// `# HELP`/`# TYPE` comment, the final `# EOF`, or `name{labels} value
/// [timestamp]`, and every sample belongs to a family declared by `# TYPE`.
/// Histograms must be cumulative and end in `+Inf` = `_count`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |msg: String| format!("/metrics line {}: {msg}: {line:?}", n + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, family, rest) = (parts.next(), parts.next(), parts.next());
            let family = family.ok_or_else(|| at("comment without a metric name".into()))?;
            if !is_name(family, true) {
                return Err(at(format!("bad metric name {family:?}")));
            }
            match (kind, rest) {
                (Some("HELP"), _) | (Some("UNIT"), _) => {}
                (Some("TYPE"), Some(t)) => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !known.contains(&t) {
                        return Err(at(format!("unknown type {t:?}")));
                    }
                    if types.insert(family.to_string(), t.to_string()).is_some() {
                        return Err(at("family typed twice".into()));
                    }
                }
                _ => return Err(at("malformed # line".into())),
            }
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .ok_or_else(|| at("'{' without '}'".into()))?;
                let name = &line[..open];
                let labels = parse_labels(&line[open + 1..close]).map_err(at)?;
                ((name, labels), &line[close + 1..])
            }
            None => {
                let sp = line.find(' ').ok_or_else(|| at("no value".into()))?;
                ((&line[..sp], BTreeMap::new()), &line[sp..])
            }
        };
        let (name, labels) = series;
        if !is_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let value = value
            .strip_prefix(' ')
            .ok_or_else(|| at("expected one space before the value".into()))?;
        let mut fields = value.split(' ');
        let v = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family_ok = types.iter().any(|(family, t)| {
            let suffixes: &[&str] = match t.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => {
                    &["_bucket", "_sum", "_count", "_created", "_gcount", "_gsum"]
                }
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|s| name == format!("{family}{s}"))
        });
        if !family_ok {
            return Err(at(format!("sample {name} belongs to no # TYPE family")));
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    // Histograms: cumulative buckets, +Inf bucket equals _count.
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s
                .labels
                .get("le")
                .ok_or_else(|| format!("{family}_bucket without le"))?;
            let mut key = s.labels.clone();
            key.remove("le");
            series
                .entry(key)
                .or_default()
                .push((parse_value(le)?, s.value));
        }
        for (key, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!(
                    "{family}{key:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let inf = buckets.last().filter(|b| b.0 == f64::INFINITY).map(|b| b.1);
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == key)
                .map(|s| s.value);
            if inf.is_none() || inf != count {
                return Err(format!(
                    "{family}{key:?}: +Inf bucket {inf:?} != _count {count:?}"
                ));
            }
        }
    }
    Ok(samples)
}

#[test]
fn the_exposition_parser_rejects_malformed_lines() {
    let good = "# HELP x_total Things.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"\"} 3\n# EOF\n";
    let s = parse_exposition(good).expect("good text parses");
    assert_eq!(s[0].labels["b"], "q\"");
    for bad in [
        "# TYPE x counter\nx_total{a=\"1\"}  3\n",
        "# TYPE x counter\nx_total{a=1} 3\n",
        "# TYPE x counter\nx_total{a=\"1\" 3\n",
        "# TYPE x counter\nx_total{a=\"1\"} three\n",
        "# TYPE x counter\ny_total 3\n",
        "# TYPE x counter\nx_total 1\nx_total 2\n",
        "# TYPE x counter\n# EOF\nx_total 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// -------------------------------------------------------------------- tests

/// A one-service setup: `web`, three nodes, `n` static targets labelled v1.
fn web_setup(top: &str, n: usize) -> (Setup, Vec<String>) {
    let s = Setup::new();
    let h = hosts(n);
    s.write_script("web", &static_script(&h, "v1"));
    s.write_config(top, &[service_yaml("web", &NODES, "")]);
    (s, h)
}

#[test]
fn first_pass_at_start_up_writes_the_files() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let files = wait_sharded(
        &d,
        &s.service_dir("web"),
        NODES.len(),
        &h,
        Duration::from_secs(20),
    );
    for node in NODES {
        assert!(
            node_file(&files, "web", node).is_some(),
            "no file for {node} in {:?}",
            files.keys()
        );
    }
    // The cron never fires in a test: this was the start-up pass (its
    // status is recorded just after its files are written).
    d.wait_passes("web", 1, Duration::from_secs(10));
    assert_eq!(d.passes("web"), Ok(1));
}

#[test]
fn editing_a_script_changes_the_files_within_one_second() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let dir = s.service_dir("web");
    wait_sharded(&d, &dir, NODES.len(), &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    s.write_script("web", &static_script(&h, "v2"));
    let edited = Instant::now();
    wait_version(&d, &dir, NODES.len(), "v2", Duration::from_secs(1));
    eprintln!("files changed {:?} after the edit", edited.elapsed());
}

#[test]
fn adding_a_service_starts_it_and_an_invalid_config_is_rejected() {
    let s = Setup::new();
    let (ha, hb) = (hosts(12), hosts(7));
    s.write_script("alpha", &static_script(&ha, "a"));
    s.write_script("beta", &static_script(&hb, "b"));
    let alpha = service_yaml("alpha", &NODES, "");
    let beta = service_yaml("beta", &NODES[..2], "");
    s.write_config("", std::slice::from_ref(&alpha));
    let d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));

    // Add beta: the watcher reloads the file and beta's first pass runs.
    s.write_config("", &[alpha.clone(), beta.clone()]);
    wait_sharded(&d, &s.service_dir("beta"), 2, &hb, Duration::from_secs(10));
    d.wait_passes("beta", 1, Duration::from_secs(10));
    assert!(d.metric("promshard_config_reloads_total", &[("result", "ok")]) >= 1.0);

    // An invalid edit (replicas: 0, beta dropped) is rejected as a whole.
    let failed_before = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
    let bad_alpha = alpha.replace("    schedule:", "    replicas: 0\n    schedule:");
    assert_ne!(bad_alpha, alpha);
    s.write_config("", &[bad_alpha]);
    d.wait("the rejection in the log", Duration::from_secs(10), || {
        let lines = d.log_lines();
        let rejected = lines.iter().find(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("config rejected") && m.contains("replicas"))
        });
        rejected
            .map(|_| ())
            .ok_or_else(|| format!("{} log lines, none rejecting", lines.len()))
    });
    d.wait(
        "config_reloads_total{result=\"failed\"} to move",
        Duration::from_secs(5),
        || {
            let v = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
            if v > failed_before {
                Ok(())
            } else {
                Err(format!("{v} (before: {failed_before})"))
            }
        },
    );

    // The running config stays: both services listed, alpha still passes.
    let listed = d.services().unwrap_or_else(|e| d.fail(&e));
    assert!(
        listed.contains_key("alpha") && listed.contains_key("beta"),
        "{:?}",
        listed.keys()
    );
    let before = d.passes("alpha").unwrap_or_else(|e| d.fail(&e));
    d.dispatch("alpha", None);
    d.wait_passes("alpha", before + 1, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["alpha"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
}

#[test]
fn sighup_reloads_the_config() {
    let s = Setup::new();
    let (ha, hb) = (hosts(9), hosts(5));
    s.write_script("alpha", &static_script(&ha, "a"));
    s.write_script("beta", &static_script(&hb, "b"));
    let alpha = service_yaml("alpha", &NODES, "");
    let beta = service_yaml("beta", &NODES, "");
    // The config is a link to a file in another directory (as with a
    // ConfigMap), so the file watcher does not see the edit: only SIGHUP can.
    fs::create_dir_all(s.path("real")).expect("mkdir real");
    let listen = format!("127.0.0.1:{}", s.port);
    s.write(
        "real/promshard.yaml",
        &config_yaml(&listen, "", std::slice::from_ref(&alpha)),
    );
    std::os::unix::fs::symlink("real/promshard.yaml", s.config_path()).expect("symlink");
    let mut d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));

    s.write(
        "real/promshard.yaml",
        &config_yaml(&listen, "", &[alpha, beta]),
    );
    d.proc.signal(libc::SIGHUP);
    wait_sharded(&d, &s.service_dir("beta"), 3, &hb, Duration::from_secs(10));
    let reloads = d.logged("config reloaded");
    assert!(
        reloads.iter().any(|l| l["fields"]["trigger"] == "SIGHUP"),
        "no SIGHUP reload logged: {reloads:?}"
    );
    assert!(d.proc.exited().is_none(), "SIGHUP killed the daemon");
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let before = d.metrics().unwrap_or_else(|e| d.fail(&e));
    let ok = [("service", "web"), ("result", "ok")];
    assert_eq!(
        find_sample(&before, "promshard_passes_total", &ok),
        Some(1.0)
    );
    assert_eq!(
        find_sample(&before, "promshard_targets", &[("service", "web")]),
        Some(20.0)
    );
    let per_node: f64 = NODES
        .iter()
        .map(|n| {
            find_sample(
                &before,
                "promshard_node_targets",
                &[("service", "web"), ("node", n)],
            )
            .unwrap_or(-1.0)
        })
        .sum();
    assert_eq!(per_node, 20.0, "node_targets should add up to the targets");
    assert_eq!(
        find_sample(
            &before,
            "promshard_files_written_total",
            &[("service", "web")]
        ),
        Some(3.0)
    );

    d.dispatch("web", None);
    d.wait(
        "promshard_passes_total{service=\"web\",result=\"ok\"} = 2",
        Duration::from_secs(10),
        || {
            let after = d.metrics()?;
            match find_sample(&after, "promshard_passes_total", &ok) {
                Some(2.0) => Ok(after),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let after = d.metrics().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(
        find_sample(
            &after,
            "promshard_pass_duration_seconds_count",
            &[("service", "web")]
        ),
        Some(2.0)
    );
    // Nothing changed, so nothing was rewritten.
    assert_eq!(
        find_sample(
            &after,
            "promshard_files_written_total",
            &[("service", "web")]
        ),
        Some(3.0)
    );
}

#[test]
fn http_sd_serves_exactly_what_each_node_file_holds() {
    let s = Setup::new();
    let h = hosts(20);
    s.write_script("web", &static_script(&h, "v1"));
    // One target over two nodes: one node has none. YAML files are served as JSON.
    s.write_script("tiny", &static_script(&hosts(1), "t"));
    s.write_config(
        "",
        &[
            service_yaml("web", &NODES, ""),
            service_yaml("tiny", &NODES[..2], "    file_type: yaml\n"),
        ],
    );
    let d = s.start();
    let web = wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    let tiny = wait_sharded(
        &d,
        &s.service_dir("tiny"),
        2,
        &hosts(1),
        Duration::from_secs(20),
    );
    d.wait("ready", Duration::from_secs(10), || {
        let r = d.get("/readyz")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });

    let mut empty_seen = 0;
    for (service, nodes, files) in [("web", &NODES[..], &web), ("tiny", &NODES[..2], &tiny)] {
        for node in nodes {
            let (name, content) = node_file(files, service, node)
                .unwrap_or_else(|| panic!("no file for {service}/{node}: {:?}", files.keys()));
            let r = d
                .get(&format!("/sd/{service}/{node}"))
                .unwrap_or_else(|e| d.fail(&e));
            assert_eq!(r.status, 200, "/sd/{service}/{node}: {}", r.body);
            assert!(
                r.content_type.starts_with("application/json"),
                "content type {:?}",
                r.content_type
            );
            let served: Value = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("/sd/{service}/{node} is not JSON ({e}): {}", r.body));
            assert_eq!(&served, content, "/sd/{service}/{node} differs from {name}");
            if addresses(content).is_empty() {
                assert_eq!(
                    served,
                    Value::Array(vec![]),
                    "a node without targets gets []"
                );
                empty_seen += 1;
            }
        }
    }
    assert_eq!(empty_seen, 1, "tiny should have exactly one empty node");

    for path in [
        "/sd/nope/10.9.0.1:9090",
        "/sd/web/10.9.9.9:9090",
        "/sd/tiny/10.9.0.3:9090",
    ] {
        let r = d.get(path).unwrap_or_else(|e| d.fail(&e));
        assert_eq!(r.status, 404, "{path}: {} {}", r.status, r.body);
    }
}

#[test]
fn two_triggers_during_a_long_pass_give_exactly_one_follow_up() {
    let s = Setup::new();
    let h = hosts(6);
    s.write_script("slow", &slow_script(&h, 2.0));
    s.write_config("", &[service_yaml("slow", &NODES, "")]);
    let d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    assert_eq!(d.logged(SLOW_BEGINS).len(), 1);

    // Start pass 2 and wait until its script is running.
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    d.dispatch("slow", None);
    d.dispatch("slow", None);
    // Both triggers landed during pass 2 (it has not finished yet).
    assert_eq!(
        d.passes("slow"),
        Ok(1),
        "pass 2 ended before both triggers were sent; the test proves nothing"
    );

    d.wait_passes("slow", 3, Duration::from_secs(20));
    holds(
        "exactly 3 passes (1 start-up, 1 dispatched, 1 follow-up)",
        Duration::from_secs(3),
        || {
            let p = d.passes("slow")?;
            let begun = d.logged(SLOW_BEGINS).len();
            if p == 3 && begun == 3 {
                Ok(())
            } else {
                Err(format!("passes = {p}, begun = {begun}"))
            }
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
}

#[test]
fn dispatch_requires_the_bearer_token_when_one_is_set() {
    let (s, h) = web_setup("api_token: s3cret\n", 10);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let path = "/api/v1/services/web/dispatch";
    for (token, want) in [(None, 401), (Some("wrong"), 401), (Some("s3cre"), 401)] {
        let r = d.post(path, token).unwrap_or_else(|e| d.fail(&e));
        assert_eq!(r.status, want, "token {token:?}: {}", r.body);
    }
    // Refused calls did nothing.
    assert_eq!(d.passes("web"), Ok(1));
    let r = d.post(path, Some("s3cret")).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 202, "{}", r.body);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let r = d
        .post("/api/v1/services/nope/dispatch", Some("s3cret"))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);
    // Reads stay open.
    assert_eq!(d.get("/api/v1/services").map(|r| r.status), Ok(200));
}

#[test]
fn dispatch_is_refused_on_a_non_loopback_listener_without_a_token() {
    let s = Setup::new();
    let h = hosts(4);
    s.write_script("web", &static_script(&h, "v1"));
    let text = config_yaml(
        &format!("0.0.0.0:{}", s.port),
        "",
        &[service_yaml("web", &NODES, "")],
    );
    s.write("promshard.yaml", &text);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let r = d
        .post("/api/v1/services/web/dispatch", None)
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(d.passes("web"), Ok(1));
}

#[test]
fn readyz_is_503_until_every_service_had_a_successful_pass() {
    let s = Setup::new();
    s.write_script("quick", &static_script(&hosts(3), "q"));
    s.write_script("slow", &slow_script(&hosts(3), 2.0));
    s.write_config(
        "",
        &[
            service_yaml("quick", &NODES, ""),
            service_yaml("slow", &NODES, ""),
        ],
    );
    let d = s.start();
    d.wait_up();
    // quick is done, slow is still in its first pass: not ready.
    d.wait_passes("quick", 1, Duration::from_secs(20));
    let r = d.get("/readyz").unwrap_or_else(|e| d.fail(&e));
    let slow_passes = d.passes("slow");
    assert_eq!(
        slow_passes,
        Ok(0),
        "slow's first pass ended too early; the test proves nothing"
    );
    assert_eq!(r.status, 503, "readyz before slow's first pass: {}", r.body);
    d.wait("/readyz 200", Duration::from_secs(30), || {
        let r = d.get("/readyz")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    for name in ["quick", "slow"] {
        assert!(all[name]["last_success"].is_u64(), "{name}: {}", all[name]);
    }
}

#[test]
fn sigterm_exits_zero_within_ten_seconds_without_temp_files() {
    let (s, h) = web_setup("", 20);
    let mut d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.proc.signal(libc::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        d.logged("stopped").len() == 1,
        "no clean stop logged (took {took:?})"
    );
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    // The files stay for Prometheus to keep reading.
    assert_eq!(sd_files(&s.service_dir("web")).map(|f| f.len()), Ok(3));
}

#[test]
fn sigterm_during_a_pass_exits_zero_without_temp_files() {
    let s = Setup::new();
    let h = hosts(30);
    s.write_script("slow", &slow_script(&h, 2.0));
    s.write_config("", &[service_yaml("slow", &NODES, "")]);
    let mut d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    d.proc.signal(libc::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    if d.logged("stopped").len() != 1 {
        d.fail(&format!("no clean stop logged (exit after {took:?})"));
    }
    // The pass in progress was finished, not abandoned.
    assert_eq!(d.logged("pass done").len(), 2, "pass 2 did not complete");
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    let files = sd_files(&s.service_dir("slow")).unwrap_or_else(|e| panic!("torn file: {e}"));
    let total: usize = files.values().map(|f| addresses(f).len()).sum();
    assert_eq!((files.len(), total), (3, 30));
}

#[test]
#[ignore = "needs prometheus"]
fn prometheus_http_sd_shows_exactly_the_node_targets() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let files = wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    // The node with the most targets makes the strongest check.
    let (node, want) = NODES
        .iter()
        .map(|n| {
            let (_, content) = node_file(&files, "web", n).expect("node file");
            (
                *n,
                addresses(content).into_iter().collect::<BTreeSet<String>>(),
            )
        })
        .max_by_key(|(_, a)| a.len())
        .expect("nodes");
    assert!(!want.is_empty());

    let prom_port = free_port();
    let prom_config = format!(
        "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\nscrape_configs:\n  - job_name: web\n    http_sd_configs:\n      - url: \"http://127.0.0.1:{}/sd/web/{node}\"\n        refresh_interval: 1s\n",
        s.port
    );
    s.write("prometheus.yml", &prom_config);
    let prom_log = s.path("prometheus.log");
    let child = Command::new(prometheus())
        .arg(format!(
            "--config.file={}",
            s.path("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", s.path("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&prom_log).expect("prometheus.log"))
        .spawn()
        .expect("starting prometheus");
    let mut prom = ChildGuard::new("prometheus", child);
    let agent = agent();
    let targets_url = format!("http://127.0.0.1:{prom_port}/api/v1/targets?state=active");
    let mut active = |want: &BTreeSet<String>, version: &str| -> Result<(), String> {
        if let Some(status) = prom.exited() {
            return Err(format!(
                "prometheus exited ({status}): {}",
                fs::read_to_string(&prom_log).unwrap_or_default()
            ));
        }
        let r = http_get(&agent, &targets_url)?;
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        let targets = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let got: BTreeSet<String> = targets
            .iter()
            .filter_map(|t| {
                t["discoveredLabels"]["__address__"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let labelled = targets.iter().all(|t| t["labels"]["version"] == version);
        if &got == want && targets.len() == want.len() && labelled {
            Ok(())
        } else {
            Err(format!(
                "{} active targets {got:?} (version {version} on all: {labelled})",
                targets.len()
            ))
        }
    };
    d.wait(
        "Prometheus to show the node's targets",
        Duration::from_secs(60),
        || active(&want, "v1"),
    );

    // Prometheus follows changes: relabel the targets and re-dispatch.
    s.write_script("web", &static_script(&h, "v2"));
    d.dispatch("web", None);
    d.wait(
        "Prometheus to show the relabelled targets",
        Duration::from_secs(60),
        || active(&want, "v2"),
    );
    drop(prom);
}

#[test]
fn the_api_answers_while_a_reload_waits_for_a_long_pass() {
    let s = Setup::new();
    s.write_script("quick", &static_script(&hosts(3), "q"));
    s.write_script("slow", &slow_script(&hosts(3), 3.0));
    let quick = service_yaml("quick", &NODES, "");
    s.write_config("", &[quick.clone(), service_yaml("slow", &NODES, "")]);
    let d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    // Change slow: its runner is replaced once its pass ends.
    s.write_config("", &[quick, service_yaml("slow", &NODES[..2], "")]);
    d.wait("the reload to start", Duration::from_secs(5), || {
        let n = d.logged("config reloaded").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    for (what, path) in [
        ("GET", "/api/v1/services"),
        ("POST", "/api/v1/services/quick/dispatch"),
    ] {
        let started = Instant::now();
        let r = if what == "GET" {
            d.get(path)
        } else {
            d.post(path, None)
        };
        let took = started.elapsed();
        let r = r.unwrap_or_else(|e| d.fail(&e));
        assert!(r.status < 300, "{what} {path}: {} {}", r.status, r.body);
        assert!(
            took < Duration::from_secs(1),
            "{what} {path} took {took:?} during the reload"
        );
    }
    assert_eq!(
        d.passes("slow"),
        Ok(1),
        "slow pass 2 ended before the calls; the test proves nothing"
    );
    d.wait_passes("slow", 3, Duration::from_secs(20));
}

// ------------------------------------------------------- drop-in services

/// The default `scripts_dir`: its top-level `.rhai` files are drop-ins.
const DROPINS: &str = "scripts";

/// A drop-in script: `fn service()` returns `settings` (a Rhai map body,
/// e.g. `schedule: "@every 1s"`), `fn targets` returns `hosts` labelled
/// `version`.
fn dropin_script(settings: &str, hosts: &[String], version: &str) -> String {
    format!(
        "fn service() {{\n    #{{ {settings} }}\n}}\n\n{}",
        static_script(hosts, version)
    )
}

/// `nodes: [...]` for a drop-in's `fn service()`.
fn rhai_nodes(nodes: &[&str]) -> String {
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!("nodes: [{}]", list.join(", "))
}

impl Setup {
    /// A setup with the explicit service `web` (three nodes, cron that
    /// never fires, `n` targets) and an empty drop-in directory.
    fn with_dropin_dir(n: usize) -> (Self, Vec<String>) {
        let (s, h) = web_setup("", n);
        fs::create_dir_all(s.path(DROPINS)).expect("drop-in dir");
        (s, h)
    }

    fn dropin_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{DROPINS}/{name}.rhai"))
    }

    /// Drop `scripts/<name>.rhai` in place the way an operator's tooling
    /// does: written next to it under a hidden name, then renamed.
    fn drop_in(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("{DROPINS}/.{name}.rhai.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        let to = self.dropin_path(name);
        fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("renaming to {}: {e}", to.display()));
    }
}

impl Daemon {
    /// Wait until the daemon is up and watching scripts, so that a file
    /// dropped from now on is an event and not part of the start-up scan.
    fn wait_watching(&self) {
        self.wait(
            "\"promshard running\" logged",
            Duration::from_secs(20),
            || {
                if self.logged("promshard running").is_empty() {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            },
        );
    }

    /// Wait until `/api/v1/services` does (`true`) or does not list `name`.
    fn wait_listed(&self, name: &str, listed: bool, within: Duration) -> BTreeMap<String, Value> {
        let what = if listed { "listed" } else { "no longer listed" };
        self.wait(&format!("{name} {what}"), within, || {
            let all = self.services()?;
            if all.contains_key(name) == listed {
                Ok(all)
            } else {
                Err(format!("listed: {:?}", all.keys()))
            }
        })
    }

    /// Error lines of the log that name `service` in their fields.
    fn errors_about(&self, service: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["level"] == "ERROR" && l["fields"]["service"] == service)
            .collect()
    }
}

/// Start the `web` + drop-in setup, wait for `web`'s first pass and the
/// watcher, then drop in `extra` (on two nodes, every second, `hosts(8)`)
/// and wait for its files. Returns the setup, the daemon, and extra's
/// targets.
fn start_and_drop_in_extra() -> (Setup, Daemon, Vec<String>) {
    let (s, h) = Setup::with_dropin_dir(10);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let listed = d.services().unwrap_or_else(|e| d.fail(&e));
    assert!(!listed.contains_key("extra"), "{:?}", listed.keys());
    assert!(!s.service_dir("extra").exists());

    let he = hosts(8);
    let settings = format!("schedule: \"@every 1s\", {}", rhai_nodes(&NODES[..2]));
    s.drop_in("extra", &dropin_script(&settings, &he, "e1"));
    let dropped = Instant::now();
    wait_sharded(&d, &s.service_dir("extra"), 2, &he, Duration::from_secs(5));
    eprintln!(
        "drop-in files written {:?} after the drop",
        dropped.elapsed()
    );
    (s, d, he)
}

#[test]
fn a_dropped_in_script_starts_its_service_which_follows_its_own_schedule() {
    let (_s, d, _) = start_and_drop_in_extra();
    let all = d.wait_listed("extra", true, Duration::from_secs(5));
    let extra = &all["extra"];
    assert_eq!(extra["schedule"], "@every 1s", "{extra}");
    let script = extra["script"].as_str().unwrap_or_default();
    assert!(
        Path::new(script).ends_with(format!("{DROPINS}/extra.rhai")),
        "script {script:?}"
    );
    assert!(
        d.logged("service started")
            .iter()
            .any(|l| l["fields"]["service"] == "extra")
    );

    // Its own schedule: passes keep coming with no trigger from the test.
    let first = d.wait_passes("extra", 1, Duration::from_secs(5));
    let later = d.wait_passes("extra", first + 2, Duration::from_secs(5));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["extra"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    eprintln!("extra: {first} -> {later} passes");

    // The explicit service was neither restarted nor re-passed.
    assert_eq!(d.passes("web"), Ok(1));
    assert_eq!(
        d.logged("service started")
            .iter()
            .filter(|l| l["fields"]["service"] == "web")
            .count(),
        1
    );
    assert!(
        d.errors_about("extra").is_empty(),
        "{:?}",
        d.errors_about("extra")
    );
}

#[test]
fn removing_a_dropped_in_script_stops_its_service_and_leaves_its_files() {
    let (s, d, he) = start_and_drop_in_extra();
    d.wait_passes("extra", 1, Duration::from_secs(5));
    let dir = s.service_dir("extra");
    let about_extra = |d: &Daemon| -> Result<Vec<String>, String> {
        Ok(d.metrics()?
            .into_iter()
            .filter(|m| m.labels.get("service").is_some_and(|v| v == "extra"))
            .map(|m| m.name)
            .collect())
    };
    let before = about_extra(&d).unwrap_or_else(|e| d.fail(&e));
    assert!(
        before
            .iter()
            .any(|n| n == "promshard_last_success_timestamp_seconds"),
        "{before:?}"
    );

    fs::remove_file(s.dropin_path("extra")).expect("removing the drop-in");
    d.wait_listed("extra", false, Duration::from_secs(5));
    // Its series go (a stale last-success gauge would page someone).
    d.wait(
        "extra's metrics to go",
        Duration::from_secs(5),
        || match about_extra(&d)? {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still exported: {left:?}")),
        },
    );
    let warned = d.wait("the removal warning", Duration::from_secs(5), || {
        let lines = d.log_lines();
        lines
            .iter()
            .find(|l| {
                l["level"] == "WARN"
                    && l["fields"]["service"] == "extra"
                    && l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("files are left in place"))
            })
            .cloned()
            .ok_or_else(|| format!("{} log lines, no warning about extra", lines.len()))
    });
    let named = warned["fields"]["dir"].as_str().unwrap_or_default();
    assert!(Path::new(named).ends_with("out/extra"), "{warned}");

    // The files stay as they were, and nothing runs the service any more
    // (it was due every second).
    let kept = wait_sharded(&d, &dir, 2, &he, Duration::from_secs(1));
    holds(
        "extra stopped, its files unchanged",
        Duration::from_secs(3),
        || {
            let now = sd_files(&dir)?;
            if now != kept {
                return Err(format!("files changed: {:?}", now.keys()));
            }
            let all = d.services()?;
            if all.contains_key("extra") {
                return Err("extra listed again".into());
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    let r = d
        .get(&format!("/sd/extra/{}", NODES[0]))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);

    // The other service is unaffected.
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
}

#[test]
fn a_drop_in_with_a_broken_service_fn_is_reported_and_others_keep_running() {
    let (s, d, _) = start_and_drop_in_extra();
    let before = d.wait_passes("extra", 1, Duration::from_secs(5));

    s.drop_in(
        "zero",
        &dropin_script(
            &format!("replicas: 0, {}", rhai_nodes(&NODES)),
            &hosts(3),
            "z",
        ),
    );
    let reported = d.wait(
        "the problem with zero logged",
        Duration::from_secs(5),
        || {
            d.errors_about("zero")
                .into_iter()
                .next()
                .ok_or_else(|| "no error naming zero".to_string())
        },
    );
    let message = reported["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("zero.rhai") && message.contains("fn service(): replicas"),
        "the error should name the file and the key: {reported}"
    );

    // zero is not a service; the others go on: extra on its schedule, web
    // on demand.
    holds("zero not started", Duration::from_secs(1), || {
        match d.services()?.contains_key("zero") {
            false => Ok(()),
            true => Err("zero listed".into()),
        }
    })
    .unwrap_or_else(|e| d.fail(&e));
    assert!(!s.service_dir("zero").exists());
    d.wait_passes("extra", before + 2, Duration::from_secs(5));
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    for name in ["web", "extra"] {
        assert_eq!(
            all[name]["last_pass"]["result"], "ok",
            "{name}: {}",
            all[name]
        );
    }

    // Fixing the file starts it.
    s.drop_in(
        "zero",
        &dropin_script(
            &format!("replicas: 1, {}", rhai_nodes(&NODES)),
            &hosts(3),
            "z",
        ),
    );
    wait_sharded(
        &d,
        &s.service_dir("zero"),
        3,
        &hosts(3),
        Duration::from_secs(5),
    );
    d.wait_listed("zero", true, Duration::from_secs(5));
}

#[test]
fn a_script_that_stops_compiling_keeps_serving_until_it_is_fixed() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let dir = s.service_dir("web");
    let good = wait_sharded(&d, &dir, 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let failed = [("result", "failed")];
    let failed_before = d.metric("promshard_script_reloads_total", &failed);

    // A syntax error on line 2.
    s.write_script("web", "fn targets(ctx) {\n    [\"10.1.0.1:9100\",, ]\n}\n");
    let counted = d.wait(
        "script_reloads_total{result=\"failed\"} to move",
        Duration::from_secs(5),
        || {
            let v = d.metric("promshard_script_reloads_total", &failed);
            if v > failed_before {
                Ok(v)
            } else {
                Err(format!("{v} (before: {failed_before})"))
            }
        },
    );
    assert_eq!(counted, failed_before + 1.0);
    let reported = d
        .log_lines()
        .into_iter()
        .find(|l| {
            l["level"] == "ERROR"
                && l["fields"]["line"].as_u64() == Some(2)
                && l["fields"]["script"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("web.rhai"))
        })
        .unwrap_or_else(|| d.fail("no compile error naming web.rhai line 2"));
    assert!(
        reported["fields"]["column"].as_u64().is_some_and(|c| c > 0),
        "{reported}"
    );
    // Reported once, not by the watcher and again by the daemon.
    let errors: Vec<Value> = d
        .log_lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line per failed compile: {errors:?}"
    );

    // The API tells which version serves and why the edit does not.
    let state = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["script_state"];
    let error = state["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("web.rhai:2:") && error.contains("syntax error"),
        "script_state.error names file:line:column: {state}"
    );
    assert!(state["error_since"].as_u64().is_some(), "{state}");
    assert!(
        state["version"].as_str().is_some_and(|v| v.len() == 16),
        "the serving version: {state}"
    );
    let serving = state["version"].clone();

    // The last good version keeps serving: a pass runs it and the files
    // stay as they were.
    assert_eq!(
        d.passes("web"),
        Ok(1),
        "a failed compile must not trigger a pass"
    );
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    assert_eq!(
        sd_files(&dir),
        Ok(good.clone()),
        "files changed under a broken script"
    );

    // The fix takes effect within a second.
    let ok_before = d.metric("promshard_script_reloads_total", &[("result", "ok")]);
    s.write_script("web", &static_script(&h, "v2"));
    let fixed = Instant::now();
    wait_version(&d, &dir, 3, "v2", Duration::from_secs(1));
    eprintln!("files changed {:?} after the fix", fixed.elapsed());
    assert!(d.metric("promshard_script_reloads_total", &[("result", "ok")]) > ok_before);
    assert_eq!(
        d.metric("promshard_script_reloads_total", &failed),
        counted,
        "the fix counted as a failure"
    );
    let state = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["script_state"];
    assert!(
        state["error"].is_null(),
        "error cleared by the fix: {state}"
    );
    assert_ne!(
        state["version"], serving,
        "the fixed version serves: {state}"
    );
}

#[test]
fn a_running_drop_in_edited_into_a_broken_service_fn_keeps_running() {
    let (s, d, he) = start_and_drop_in_extra();
    d.wait_passes("extra", 1, Duration::from_secs(5));
    let errors_before = d.errors_about("extra").len();

    // The script still compiles; its settings are invalid.
    let settings = format!(
        "schedule: \"@every 1s\", replicas: 0, {}",
        rhai_nodes(&NODES[..2])
    );
    s.drop_in("extra", &dropin_script(&settings, &he, "e1"));
    let reported = d.wait(
        "the problem with extra logged",
        Duration::from_secs(5),
        || {
            d.errors_about("extra")
                .into_iter()
                .nth(errors_before)
                .ok_or_else(|| "no new error naming extra".to_string())
        },
    );
    let message = reported["fields"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fn service(): replicas"), "{reported}");

    // Like an invalid config edit: the running service stays, with its
    // last good settings, on its schedule.
    let now = d.passes("extra").unwrap_or_else(|e| d.fail(&e));
    d.wait_passes("extra", now + 2, Duration::from_secs(5));
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(all["extra"]["schedule"], "@every 1s", "{}", all["extra"]);
    let removed: Vec<Value> = d
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["fields"]["service"] == "extra"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("service removed") || m.contains("service changed"))
        })
        .collect();
    assert!(
        removed.is_empty(),
        "extra was stopped or restarted: {removed:?}"
    );
    assert!(
        d.logged("drop-in service keeps running with its last good settings")
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["service"] == "extra"),
        "no warning that extra keeps its last good settings"
    );
    wait_sharded(&d, &s.service_dir("extra"), 2, &he, Duration::from_secs(1));
}

/// A node taken out of a service (config edit) must get `[]` from
/// `/sd/{service}/{node}`, not 404: Prometheus keeps its last targets when an
/// http_sd refresh fails, and would go on scraping targets it lost.
#[test]
fn http_sd_answers_empty_for_a_node_that_left() {
    let s = Setup::new();
    let h = hosts(12);
    s.write_script("web", &static_script(&h, "v1"));
    s.write_config("", &[service_yaml("web", &NODES, "")]);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    // The pass is recorded just after its files are written.
    d.wait_passes("web", 1, Duration::from_secs(10));
    let gone = NODES[2];
    // The files are written before the pass ends; /sd answers 503 until then.
    d.wait(
        "/sd of the node to answer 200",
        Duration::from_secs(10),
        || {
            let r = d.get(&format!("/sd/web/{gone}"))?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    );

    s.write_config("", &[service_yaml("web", &NODES[..2], "")]);
    wait_sharded(&d, &s.service_dir("web"), 2, &h, Duration::from_secs(20));
    d.wait(
        "the departed node to get []",
        Duration::from_secs(10),
        || {
            let r = d.get(&format!("/sd/web/{gone}"))?;
            match (r.status, serde_json::from_str::<Value>(&r.body)) {
                (200, Ok(Value::Array(a))) if a.is_empty() => Ok(()),
                _ => Err(format!("{} {}", r.status, r.body)),
            }
        },
    );
    // A node the service never had is still unknown.
    let r = d
        .get("/sd/web/10.9.9.9:9090")
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);

    // Still [] after a restart: the new process only knows from the state
    // file that the node was there.
    d.proc.signal(libc::SIGTERM);
    drop(d);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let r = d
        .get(&format!("/sd/web/{gone}"))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!((r.status, r.body.trim()), (200, "[]"), "after restart");
}

#[test]
fn a_failed_delivery_is_logged_with_its_reason_and_not_as_a_failed_pass() {
    let s = Setup::new();
    let h = hosts(12);
    s.write_script("web", &static_script(&h, "v1"));
    // A regular file where the destination directory should be.
    s.write("blocker", "not a directory");
    let dest = format!(
        "    push: {{kind: local, dest: \"{}/{{node}}/sd.json\"}}\n",
        s.path("blocker").display()
    );
    s.write_config("", &[service_yaml("web", &NODES, &dest)]);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let failed = d.wait(
        "three delivery failures logged",
        Duration::from_secs(5),
        || {
            let lines = d.logged("delivery failed");
            if lines.len() == NODES.len() {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        },
    );
    for line in &failed {
        let f = &line["fields"];
        assert_eq!(f["result"], "failed", "{line}");
        assert!(
            NODES.contains(&f["node"].as_str().unwrap_or_default()),
            "{line}"
        );
        assert!(
            f["error"]
                .as_str()
                .is_some_and(|e| e.contains("blocker") && e.contains("Not a directory")),
            "the reason, with the path: {line}"
        );
    }
    let summary = d
        .logged("pass done")
        .pop()
        .unwrap_or_else(|| d.fail("no pass summary"));
    let f = &summary["fields"];
    assert_eq!(
        (&f["deliveries"], &f["delivered"], &f["delivery_failed"]),
        (&json!(3), &json!(0), &json!(3)),
        "attempted vs succeeded: {summary}"
    );
    assert!(
        d.log_text()
            .contains("pass wrote its files but deliveries failed"),
        "the files were written: say so"
    );
    assert!(
        !d.log_text().contains("last good files kept"),
        "files were written, not kept"
    );
    assert_eq!(
        sd_files(&s.service_dir("web")).map(|f| f.len()),
        Ok(NODES.len()),
        "the files were written"
    );
}

/// A daemon whose service `web` (on [`NODES`], `file_naming: naming`)
/// reads its targets from `svc/web.json`, sharded once.
fn churning_web(naming: &str) -> (Setup, Daemon) {
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
fn write_web_data(s: &Setup, n: usize) {
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
fn churn(
    s: &Setup,
    d: &Daemon,
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

/// `/sd` answers from the plan in memory: while passes rewrite and rename
/// the files (per-node counts change every pass, and so do the names of
/// the counted scheme), no answer is anything but 200, 404 or 503.
#[test]
fn http_sd_never_fails_while_passes_rename_files() {
    let (s, d) = churning_web("counted");
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let (_, passes) = churn(&s, &d, 2000, 50, |i| {
        let node = NODES[i % NODES.len()];
        let r = d
            .get(&format!("/sd/web/{node}"))
            .unwrap_or_else(|e| d.fail(&e));
        *answers.entry(r.status).or_default() += 1;
        if ![200, 404, 503].contains(&r.status) && bad.len() < 5 {
            bad.push(format!("{node}: {} {}", r.status, r.body));
        }
    });
    let failed: usize = answers
        .iter()
        .filter(|(s, _)| ![200, 404, 503].contains(*s))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failed, 0,
        "answers by status {answers:?} over {passes} passes; first: {bad:?}"
    );
}

/// Each node has exactly one sd file at every instant, whatever the pass
/// is doing: with the default (stable) names, and with counted names, whose
/// old file is renamed to the new name before it is rewritten.
#[test]
fn every_node_has_exactly_one_sd_file_at_every_sample() {
    for naming in ["stable", "counted"] {
        let (s, d) = churning_web(naming);
        let dir = s.service_dir("web");
        let mut samples = 0;
        let (_, passes) = churn(&s, &d, 1000, 100, |_| {
            let names: Vec<String> = fs::read_dir(&dir)
                .expect("listing the service dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            for node in NODES {
                let mine: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        n.starts_with(&format!("web_{node}_"))
                            || n.starts_with(&format!("web_{}.", node.replace(':', "_")))
                    })
                    .collect();
                if mine.len() != 1 {
                    d.fail(&format!(
                        "{naming}: sample {samples}: {node} has {} files: {names:?}",
                        mine.len()
                    ));
                }
            }
            samples += 1;
        });
        eprintln!("{naming}: {samples} samples over {passes} passes, one file per node in each");
    }
}

/// The API needs no token to read, so it never shows credentials: a
/// script whose `http_get` fails on a URL with a password and a token in
/// its query string has its error shown with both redacted.
#[test]
fn api_answers_never_show_url_credentials() {
    let s = Setup::new();
    let closed = free_port();
    s.write_script(
        "web",
        &format!(
            "fn targets(ctx) {{\n    http_get(\"http://bob:s3cret@127.0.0.1:{closed}/hosts?token=t0k3n\")\n}}\n"
        ),
    );
    s.write_config("", &[service_yaml("web", &NODES, "")]);
    let d = s.start();
    let shown = format!("http://***@127.0.0.1:{closed}/hosts?***");
    let body = d.wait(
        "web's failed pass in the API",
        Duration::from_secs(20),
        || {
            let r = d.get("/api/v1/services")?;
            if r.body.contains(&format!("127.0.0.1:{closed}")) {
                Ok(r.body)
            } else {
                Err(r.body)
            }
        },
    );
    for secret in ["bob", "s3cret", "t0k3n"] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    assert!(body.contains(&shown), "{body}");
}

// ------------------------------------------------ reloads during a pass

/// Name of the file whose presence holds a [`gated_script`] pass.
const GATE: &str = "hold";

/// A script that logs [`SLOW_BEGINS`] and then does not return while
/// `svc/hold` exists (checking it in a loop, within its deadline), the
/// way a script waiting on a hung source never returns on its own.
fn gated_script(hosts: &[String]) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "fn targets(ctx) {{\n    log_info(\"{SLOW_BEGINS}\");\n    loop {{ try {{ read_file(\"{GATE}\"); }} catch {{ break; }} }}\n    [{}]\n}}\n",
        list.join(", ")
    )
}

#[test]
fn a_reload_applies_at_once_to_idle_services_while_another_pass_is_stuck() {
    let s = Setup::new();
    let (hs, hb) = (hosts(6), hosts(4));
    s.write(&format!("{SCRIPTS}/{GATE}"), "");
    s.write_script("stuck", &gated_script(&hs));
    s.write_script("beta", &static_script(&hb, "b"));
    s.write_config("", &[service_yaml("stuck", &NODES, "")]);
    let d = s.start();
    d.wait_slow_begun(1, Duration::from_secs(20));
    d.wait_watching();

    // Change the stuck service: it keeps its pass, and says when the new
    // settings apply.
    s.write_config("", &[service_yaml("stuck", &NODES[..2], "")]);
    d.wait(
        "the deferred change in the log",
        Duration::from_secs(5),
        || {
            let lines = d.logged("service changed; new settings apply after the pass in progress");
            if lines.iter().any(|l| l["fields"]["service"] == "stuck") {
                Ok(())
            } else {
                Err(format!("{} such lines", lines.len()))
            }
        },
    );

    // Another edit adds beta: it starts at once, not after stuck's pass.
    s.write_config(
        "",
        &[
            service_yaml("stuck", &NODES[..2], ""),
            service_yaml("beta", &NODES, ""),
        ],
    );
    let edited = Instant::now();
    wait_sharded(&d, &s.service_dir("beta"), 3, &hb, Duration::from_secs(2));
    eprintln!("beta's files written {:?} after the edit", edited.elapsed());
    assert!(!s.service_dir("stuck").exists(), "stuck's pass ended early");

    // Released, stuck finishes and re-plans with its new settings.
    fs::remove_file(s.path(&format!("{SCRIPTS}/{GATE}"))).expect("removing the gate");
    wait_sharded(&d, &s.service_dir("stuck"), 2, &hs, Duration::from_secs(10));
}

// ------------------------------------------------ what a reload accepts

/// `promshard check` on this setup's config: whether it passes, and its
/// stderr.
fn check(s: &Setup) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_promshard"))
        .arg("-c")
        .arg(s.config_path())
        .arg("check")
        .current_dir(s.dir.path())
        .output()
        .expect("running promshard check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_that_check_rejects_is_never_applied_by_the_running_daemon() {
    let s = Setup::new();
    let ha = hosts(6);
    s.write_script("alpha", &static_script(&ha, "a"));
    let alpha = service_yaml("alpha", &NODES, "");
    s.write_config("", std::slice::from_ref(&alpha));
    let d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));
    d.wait_watching();

    let extra = |script: &str| {
        format!(
            "  - name: beta\n    script: {script}\n    schedule: \"{NEVER}\"\n    nodes: [\"{}\"]\n",
            NODES[0]
        )
    };
    let bad = [
        ("an empty file", String::new(), "empty"),
        (
            "a missing script",
            config_yaml(
                &format!("127.0.0.1:{}", s.port),
                "",
                &[alpha.clone(), extra("svc/nope.rhai")],
            ),
            "nope.rhai",
        ),
        (
            "script: /etc/passwd",
            config_yaml(
                &format!("127.0.0.1:{}", s.port),
                "",
                &[alpha.clone(), extra("/etc/passwd")],
            ),
            "/etc/passwd",
        ),
    ];
    for (what, text, named) in bad {
        let failed = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
        s.write("promshard.yaml", &text);
        let (ok, stderr) = check(&s);
        assert!(!ok, "check passed {what}");
        assert!(stderr.contains(named), "check on {what}: {stderr}");
        d.wait(
            &format!("{what} to be rejected"),
            Duration::from_secs(10),
            || {
                let now = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
                if now > failed {
                    Ok(())
                } else {
                    Err(format!("config_reloads_total{{result=\"failed\"}} = {now}"))
                }
            },
        );
        let rejected = d.log_lines().into_iter().any(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("config rejected") && m.contains(named))
        });
        assert!(rejected, "no rejection naming {named:?} for {what}");
        let listed = d.services().unwrap_or_else(|e| d.fail(&e));
        assert_eq!(listed.keys().collect::<Vec<_>>(), ["alpha"], "after {what}");
    }
    // The running config is intact: alpha passes into the same out_dir.
    let before = d.passes("alpha").unwrap_or_else(|e| d.fail(&e));
    d.dispatch("alpha", None);
    d.wait_passes("alpha", before + 1, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["alpha"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(5));
}

// ------------------------------------------ a script that cannot be read

#[test]
fn a_script_deleted_or_unreadable_keeps_its_last_good_version_running() {
    let (s, h) = web_setup("", 9);
    let d = s.start();
    let dir = s.service_dir("web");
    wait_sharded(&d, &dir, 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let script = s.path(&format!("{SCRIPTS}/web.rhai"));
    let pass_ok = |why: &str| {
        let before = d.passes("web").unwrap_or_else(|e| d.fail(&e));
        d.dispatch("web", None);
        d.wait_passes("web", before + 1, Duration::from_secs(10));
        let last = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["last_pass"];
        if last["result"] != "ok" {
            d.fail(&format!("pass {why}: {last}"));
        }
    };

    // Deleted (a deploy that removes, then writes back).
    fs::remove_file(&script).expect("removing the script");
    d.wait("the removal in the log", Duration::from_secs(5), || {
        let n = d.logged("script removed").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    pass_ok("while the script is deleted");

    // Unreadable: mode 000 (root reads through that, so there the path
    // becomes a directory, which no one can read as a script).
    s.write_script("web", &static_script(&h, "v1"));
    d.wait("the script to come back", Duration::from_secs(5), || {
        let n = d.logged("script added").len() + d.logged("script reloaded").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let make_unreadable = || {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = fs::remove_file(&script);
            fs::create_dir_all(&script).expect("a directory in the script's place");
        } else {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o000)).expect("chmod 000");
        }
    };
    make_unreadable();
    let read_errors = || {
        d.logged("script rejected; the last good version keeps running")
            .into_iter()
            .filter(|l| {
                l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot read script"))
            })
            .count()
    };
    d.wait(
        "the read error in the log",
        Duration::from_secs(5),
        || match read_errors() {
            0 => Err("not yet".into()),
            _ => Ok(()),
        },
    );
    pass_ok("while the script is unreadable");
    // Touched again, still unreadable: not reported again.
    make_unreadable();
    pass_ok("after another touch");
    holds(
        "the read error reported once",
        Duration::from_millis(500),
        || match read_errors() {
            1 => Ok(()),
            n => Err(format!("reported {n} times")),
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
    wait_sharded(&d, &dir, 3, &h, Duration::from_secs(1));
}

/// `max_move_ratio: 0.1`: a node added to the config moves about a quarter
/// of the targets, a tenth per pass; the daemon runs the next step by itself
/// until the plan is the uncapped one (what `promshard plan` computes).
#[test]
fn a_move_cap_spreads_a_node_addition_over_several_passes() {
    let s = Setup::new();
    let h = hosts(250);
    s.write_script("web", &static_script(&h, "v1"));
    let cap = "    max_move_ratio: 0.1\n";
    s.write_config("", &[service_yaml("web", &NODES[..2], cap)]);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 2, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let four = [NODES[0], NODES[1], NODES[2], "10.9.0.4:9090"];
    s.write_config("", &[service_yaml("web", &four, cap)]);
    // The uncapped plan of the new config.
    let goal = util::run_in(s.dir.path(), &["plan", "--json"])
        .success()
        .json();
    let want: BTreeMap<String, u64> = goal["services"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("").to_string(),
                n["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    d.wait(
        "the capped rebalance to reach the plan",
        Duration::from_secs(30),
        || {
            let current = &d.services()?["web"]["current"];
            let have: BTreeMap<String, u64> = current["nodes"]
                .as_array()
                .ok_or("no plan")?
                .iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or("").to_string(),
                        n["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}, want {want:?}"))
            }
        },
    );
    let held = d.logged("moves held back by max_move_ratio; a later pass continues the rebalance");
    assert!(
        held.len() >= 2,
        "a 50% move at 10% per pass holds moves back more than once: {held:?}"
    );
}
