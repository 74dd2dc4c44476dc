//! Real Prometheus servers for end-to-end tests: each on a free loopback
//! port with its own TSDB directory, scraping one job whose targets come
//! from `file_sd` files in its own directory (which promshard fills).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::child::{ChildGuard, free_port, poll};
use super::http::get;
use super::tools::prometheus;

/// One Prometheus process.
pub struct Prom {
    /// `127.0.0.1:port`, also its node name in promshard.
    pub addr: String,
    /// Its directory, `<root>/<addr>`: config, TSDB, log; sd files go to
    /// [`Prom::sd_dir`].
    pub dir: PathBuf,
    pub proc: ChildGuard,
}

impl Prom {
    /// Start a server scraping job `job` every `interval` from
    /// `<dir>/sd/*.json`, loading rules from `<dir>/rules/*.yml` (on a
    /// reload: it runs with `--web.enable-lifecycle`); returns once it
    /// answers `/-/ready`.
    pub fn start(root: &Path, job: &str, interval: &str) -> Prom {
        Prom::start_with(root, |dir| {
            format!(
                "global: {{scrape_interval: {interval}, scrape_timeout: {interval}, evaluation_interval: {interval}}}\n\
                 rule_files: [\"{dir}/rules/*.yml\"]\n\
                 scrape_configs:\n  - job_name: {job}\n    file_sd_configs:\n      - files: [\"{dir}/sd/*.json\"]\n",
                dir = dir.display()
            )
        })
    }

    /// Start a server on a free port in `<root>/<addr>` with the
    /// `prometheus.yml` that `config` writes for that directory; returns
    /// once it answers `/-/ready`.
    pub fn start_with(root: &Path, config: impl FnOnce(&Path) -> String) -> Prom {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = root.join(&addr);
        fs::create_dir_all(dir.join("sd")).expect("prometheus dir");
        fs::write(dir.join("prometheus.yml"), config(&dir)).expect("prometheus.yml");
        let proc = spawn(&addr, &dir);
        let mut p = Prom { addr, dir, proc };
        p.wait_ready();
        p
    }

    /// SIGKILL the server (its port and directory stay its own).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start the server again on the same port, directory and TSDB, without
    /// waiting for it (the time it takes to be ready is part of what a test
    /// measures).
    pub fn respawn(&mut self) {
        self.proc = spawn(&self.addr, &self.dir);
    }

    /// Wait until it answers `/-/ready` (30 s); panics with its log's end.
    pub fn wait_ready(&mut self) {
        let url = format!("http://{}/-/ready", self.addr);
        let result = poll("prometheus ready", Duration::from_secs(30), || {
            if let Some(status) = self.proc.exited() {
                return Err(format!("exited: {status}: {}", self.log_tail()));
            }
            get(&url).map(|_| ())
        });
        result.unwrap_or_else(|e| panic!("prometheus {}: {e}", self.addr));
    }

    /// The directory its `file_sd` glob reads.
    pub fn sd_dir(&self) -> PathBuf {
        self.dir.join("sd")
    }

    /// The directory its `rule_files` glob reads.
    pub fn rules_dir(&self) -> PathBuf {
        self.dir.join("rules")
    }

    /// `(group, rule name)` of every rule it has loaded.
    pub fn rules(&self) -> Result<Vec<(String, String)>, String> {
        let v = self.api("/api/v1/rules")?;
        let mut out = Vec::new();
        for g in v["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let name = |v: &Value| v.as_str().unwrap_or_default().to_string();
                out.push((name(&g["name"]), name(&r["name"])));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(5).collect();
        lines.join("\n")
    }

    /// `(address, health)` of every active target, by `__address__`.
    pub fn active(&self) -> Result<Vec<(String, String)>, String> {
        let v = self.api("/api/v1/targets?state=active")?;
        let list = v["activeTargets"]
            .as_array()
            .ok_or_else(|| format!("no activeTargets: {v}"))?;
        let mut out: Vec<(String, String)> = list
            .iter()
            .map(|t| {
                (
                    t["discoveredLabels"]["__address__"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let q: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let v = self.api(&format!("/api/v1/query?query={q}"))?;
        Ok(v["result"].as_array().cloned().unwrap_or_default())
    }

    /// `data` of a Prometheus API answer.
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let body = get(&format!("http://{}{path}", self.addr))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{path}: {v}"));
        }
        Ok(v["data"].clone())
    }
}

/// `prometheus` on `addr` with the config, TSDB and log (appended) in `dir`.
fn spawn(addr: &str, dir: &Path) -> ChildGuard {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("prometheus.log"))
        .expect("prometheus.log");
    let child = Command::new(prometheus())
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-lifecycle")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    ChildGuard::new(format!("prometheus {addr}"), child)
}

/// Ok when `promtool check metrics` accepts the exposition `body` without
/// a word (no lint finding either); else what it said, with the body.
pub fn check_metrics(body: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(super::tools::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(body.as_bytes())
        .map_err(|e| format!("feeding promtool: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool output: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {:?}\n{said}\n--- /metrics ---\n{body}",
            out.status
        ))
    }
}
