//! `promshard run` as a child process, seen from outside the way an
//! operator sees it: started in a directory with its config, logging JSON
//! lines to a file, asked over HTTP. Every wait polls with a deadline and,
//! when the deadline passes, says what it saw last and shows the log's end.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::child::{ChildGuard, free_port, poll};
use super::exposition::{Sample, find_sample, parse_exposition};
use super::http::{Reply, agent, http_get, read_reply};
use super::prom::Prom;

/// Write `<dir>/promshard.yaml` with one service `name` (script
/// `<name>.rhai`, never on a schedule) sharding over `proms`, each node's
/// file copied into its server's sd directory; `extra` adds service keys
/// (YAML lines indented four spaces). Returns the API port.
pub fn write_lab_config(dir: &Path, name: &str, proms: &[Prom], extra: &str) -> u16 {
    let nodes: Vec<String> = proms.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let port = free_port();
    let config = format!(
        "out_dir: out\nlisten: 127.0.0.1:{port}\nservices:\n  - name: {name}\n    \
         script: {name}.rhai\n    schedule: \"0 0 0 1 1 *\"\n    nodes: [{}]\n    \
         push: {{kind: local, dest: \"{}/{{node}}/sd/{name}.json\"}}\n{extra}",
        nodes.join(", "),
        dir.display()
    );
    fs::write(dir.join("promshard.yaml"), config).expect("promshard.yaml");
    port
}

/// A running daemon.
pub struct Promshard {
    pub proc: ChildGuard,
    pub log: PathBuf,
    /// `http://127.0.0.1:port`.
    pub base: String,
    agent: ureq::Agent,
    /// `Authorization` sent with every GET (basic auth).
    authorization: Option<String>,
}

impl Promshard {
    /// Run `promshard -c promshard.yaml run` in `dir` (`port` is its
    /// `listen`) and wait until `/healthz` answers.
    pub fn start(dir: &Path, port: u16) -> Promshard {
        let d = Promshard::spawn(dir, Path::new("promshard.yaml"), port);
        d.wait("the API to answer", Duration::from_secs(20), || {
            d.body("/healthz").map(|_| ())
        });
        d
    }

    /// Run `promshard -c <config> run` in `dir` without waiting for it.
    pub fn spawn(dir: &Path, config: &Path, port: u16) -> Promshard {
        let log = dir.join("promshard.log");
        let child = Command::new(env!("CARGO_BIN_EXE_promshard"))
            .arg("-c")
            .arg(config)
            .args(["--log-format", "json", "run"])
            .current_dir(dir)
            .env("RUST_LOG", "info,tokio_cron_scheduler=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("promshard.log"))
            .spawn()
            .expect("starting promshard run");
        Promshard {
            proc: ChildGuard::new("promshard", child),
            log,
            base: format!("http://127.0.0.1:{port}"),
            agent: agent(Duration::from_secs(10)),
            authorization: None,
        }
    }

    /// Ask it at `base` (e.g. `https://…`) with `agent`, sending
    /// `authorization` with every GET.
    pub fn asked_with(
        mut self,
        base: String,
        agent: ureq::Agent,
        authorization: Option<String>,
    ) -> Promshard {
        self.base = base;
        self.agent = agent;
        self.authorization = authorization;
        self
    }

    /// GET `path` on the API, any status.
    pub fn get(&self, path: &str) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        match &self.authorization {
            None => http_get(&self.agent, &url),
            Some(a) => read_reply(self.agent.get(&url).header("Authorization", a).call())
                .map_err(|e| format!("GET {url}: {e}")),
        }
    }

    /// GET `path`; the body of a 2xx answer.
    pub fn body(&self, path: &str) -> Result<String, String> {
        let r = self.get(path)?;
        if (200..300).contains(&r.status) {
            Ok(r.body)
        } else {
            Err(format!("{path}: {} {}", r.status, r.body))
        }
    }

    /// GET `path` as JSON (2xx only).
    pub fn json(&self, path: &str) -> Result<Value, String> {
        let body = self.body(path)?;
        serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
    }

    /// POST `path` with no body, with `token` as a bearer token if given.
    pub fn post(&self, path: &str, token: Option<&str>) -> Result<Reply, String> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        read_reply(req.send_empty())
    }

    /// POST a dispatch and require 202.
    pub fn dispatch(&self, service: &str, token: Option<&str>) {
        let r = self
            .post(&format!("/api/v1/services/{service}/dispatch"), token)
            .unwrap_or_else(|e| self.fail(&format!("dispatch {service}: {e}")));
        if r.status != 202 {
            self.fail(&format!("dispatch {service}: {} {}", r.status, r.body));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, headed by its path.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(n)..];
        format!("--- {} ---\n{}", self.log.display(), tail.join("\n"))
    }

    /// The log's JSON lines.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Log lines whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["fields"]["message"].as_str() == Some(message))
            .collect()
    }

    /// Error lines of the log that name `service` in their fields.
    pub fn errors_about(&self, service: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["level"] == "ERROR" && l["fields"]["service"] == service)
            .collect()
    }

    /// Panic with `msg` and the last 40 lines of the daemon's log.
    pub fn fail(&self, msg: &str) -> ! {
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{msg}\n--- promshard log (last 40 lines) ---\n{}",
            tail.join("\n")
        )
    }

    /// Poll `check` until it holds; on timeout fail with what was seen last
    /// and the log's end.
    pub fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl FnMut() -> Result<T, String>,
    ) -> T {
        poll(what, within, check).unwrap_or_else(|e| self.fail(&e))
    }

    /// Wait until `/healthz` answers 200.
    pub fn wait_up(&self) {
        self.wait("/healthz 200", Duration::from_secs(20), || {
            let r = self.get("/healthz")?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        });
    }

    /// Wait until the daemon is up and watching scripts, so that a file
    /// written from now on is an event and not part of the start-up scan.
    pub fn wait_watching(&self) {
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

    /// Wait for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Result<(ExitStatus, Duration), String> {
        let started = Instant::now();
        let status = poll("process exit", within, || {
            self.proc
                .exited()
                .ok_or_else(|| "still running".to_string())
        })?;
        Ok((status, started.elapsed()))
    }

    /// The service entries of `/api/v1/services`, by name.
    pub fn services(&self) -> Result<BTreeMap<String, Value>, String> {
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
    pub fn passes(&self, service: &str) -> Result<u64, String> {
        let all = self.services()?;
        let s = all
            .get(service)
            .ok_or_else(|| format!("{service} not listed (listed: {:?})", all.keys()))?;
        s["passes"]
            .as_u64()
            .ok_or_else(|| format!("no passes in {s}"))
    }

    /// Wait until `service` has had at least `n` passes; returns how many.
    pub fn wait_passes(&self, service: &str, n: u64, within: Duration) -> u64 {
        self.wait(&format!("{service} passes >= {n}"), within, || {
            let p = self.passes(service)?;
            if p >= n {
                Ok(p)
            } else {
                Err(format!("passes = {p}"))
            }
        })
    }

    /// Wait until `/api/v1/services` does (`true`) or does not list `name`.
    pub fn wait_listed(
        &self,
        name: &str,
        listed: bool,
        within: Duration,
    ) -> BTreeMap<String, Value> {
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

    /// `/metrics`, parsed strictly.
    pub fn metrics(&self) -> Result<Vec<Sample>, String> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            return Err(format!("/metrics: {} {}", r.status, r.body));
        }
        parse_exposition(&r.body)
    }

    /// Value of the sample `name` whose labels include `labels` (0 if absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = self.metrics().unwrap_or_else(|e| self.fail(&e));
        find_sample(&samples, name, labels).unwrap_or(0.0)
    }
}
