//! `promshard run` as a child process for end-to-end tests: started in a
//! directory with its config, logging JSON to a file, asked over HTTP.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::child::{ChildGuard, poll};
use super::prom::get;

/// Write `<dir>/promshard.yaml` with one service `name` (script
/// `<name>.rhai`, never on a schedule) sharding over `proms`, each node's
/// file copied into its server's sd directory; `extra` adds service keys
/// (YAML lines indented four spaces). Returns the API port.
pub fn write_lab_config(dir: &Path, name: &str, proms: &[super::prom::Prom], extra: &str) -> u16 {
    let nodes: Vec<String> = proms.iter().map(|p| format!("\"{}\"", p.addr)).collect();
    let port = super::child::free_port();
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
}

impl Promshard {
    /// Run `promshard -c promshard.yaml run` in `dir`; `port` is its `listen`.
    pub fn start(dir: &Path, port: u16) -> Promshard {
        let log = dir.join("promshard.log");
        let child = Command::new(env!("CARGO_BIN_EXE_promshard"))
            .args(["-c", "promshard.yaml", "--log-format", "json", "run"])
            .current_dir(dir)
            .env("RUST_LOG", "info,tokio_cron_scheduler=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("promshard.log"))
            .spawn()
            .expect("starting promshard run");
        let d = Promshard {
            proc: ChildGuard::new("promshard", child),
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        d.wait("the API to answer", Duration::from_secs(20), || {
            d.get("/healthz").map(|_| ())
        });
        d
    }

    /// GET `path` on the API; the body of a 2xx answer.
    pub fn get(&self, path: &str) -> Result<String, String> {
        get(&format!("{}{path}", self.base))
    }

    /// GET `path` as JSON.
    pub fn json(&self, path: &str) -> Result<Value, String> {
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
    }

    /// Poll `check` until it holds; on timeout fail with the log's end.
    pub fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl FnMut() -> Result<T, String>,
    ) -> T {
        poll(what, within, check).unwrap_or_else(|e| self.fail(&e))
    }

    /// Panic with `msg` and the last 30 lines of the daemon's log.
    pub fn fail(&self, msg: &str) -> ! {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{msg}\n--- promshard log (last 30 lines) ---\n{}",
            tail.join("\n")
        )
    }
}
