//! A small harness for integration tests that run the real `promshard`
//! binary, in the style of ripgrep's `tests/util.rs`.
//!
//! Each test gets its own temp directory ([`Dir`]) into which it writes a
//! config, scripts and data files; [`Dir::run`] then runs the binary built by
//! cargo (`CARGO_BIN_EXE_promshard`) with that directory as its working
//! directory and returns everything it produced ([`Run`]). Nothing is mocked:
//! the binary reads real files and writes real files, and the assertions look
//! at those files. Failures print the command, exit code, stdout and stderr,
//! so a red test says what the binary actually did.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod browser;
pub mod certs;
pub mod child;
pub mod daemon;
pub mod dns;
pub mod etcd;
pub mod exporters;
pub mod exposition;
pub mod fixture;
pub mod http;
pub mod logfmt;
pub mod prom;
pub mod sshd;
pub mod tools;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_promshard");

/// A temp directory that is deleted when dropped.
pub struct Dir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dir {
    /// A fresh, empty temp directory.
    pub fn new() -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix("promshard-test-")
            .tempdir()
            .expect("create temp dir");
        // Canonical, so that paths in messages compare equal to ours.
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        Dir { _tmp: tmp, root }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `rel` inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Write `contents` to `rel`, creating parent directories.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Write the config file `promshard.yaml`.
    pub fn config(&self, yaml: &str) -> PathBuf {
        self.write("promshard.yaml", yaml)
    }

    /// Read `rel` as bytes.
    pub fn read(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let path = self.join(rel);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The regular, non-hidden files directly in `rel`, by name. Hidden files
    /// (temp files, state) are not sd files and are left out.
    pub fn files(&self, rel: impl AsRef<Path>) -> BTreeMap<String, Vec<u8>> {
        let dir = self.join(rel);
        let mut out = BTreeMap::new();
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().expect("file type").is_file() {
                continue;
            }
            out.insert(name, fs::read(entry.path()).expect("read sd file"));
        }
        out
    }

    /// Every path below the directory (relative, sorted), files and dirs.
    pub fn tree(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(base).unwrap_or(&path);
                out.push(rel.display().to_string());
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }

    /// Run `promshard --config promshard.yaml ARGS…` in this directory.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut full = vec!["--config", "promshard.yaml"];
        full.extend_from_slice(args);
        run_in(&self.root, &full)
    }
}

/// Run the binary with `args` in `cwd` (no shell; logs without colour).
pub fn run_in(cwd: &Path, args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What one run of the binary produced.
#[derive(Debug, Clone)]
pub struct Run {
    pub args: Vec<String>,
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "promshard {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// Panic with the whole run unless it exited 0.
    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "expected success:\n{}", self.describe());
        self
    }

    /// Panic with the whole run unless it exited non-zero (not by a signal).
    #[track_caller]
    pub fn failure(self) -> Run {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit:\n{}",
            self.describe()
        );
        self
    }

    /// Panic unless stderr contains every one of `needles`.
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Run {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.describe()
            );
        }
        self
    }

    /// Panic unless stdout contains every one of `needles`.
    #[track_caller]
    pub fn stdout_has(&self, needles: &[&str]) -> &Run {
        for n in needles {
            assert!(
                self.stdout.contains(n),
                "stdout lacks {n:?}:\n{}",
                self.describe()
            );
        }
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }

    /// stderr lines that are JSON objects (`--log-format json`).
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

/// Parse file_sd JSON into (address → labels) pairs, one per target listed.
#[track_caller]
pub fn sd_entries(bytes: &[u8]) -> Vec<(String, BTreeMap<String, String>)> {
    let groups: Vec<serde_json::Value> = serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not file_sd JSON ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    });
    let mut out = Vec::new();
    for g in groups {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(g.get("labels").cloned().unwrap_or_default())
                .unwrap_or_default();
        let targets = g["targets"].as_array().expect("targets array").clone();
        for t in targets {
            out.push((
                t.as_str().expect("string target").to_string(),
                labels.clone(),
            ));
        }
    }
    out
}

/// A deterministic permutation of `v` (xorshift; no rand dependency).
pub fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut out = v.to_vec();
    let mut s = seed.max(1);
    for i in (1..out.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.swap(i, (s % (i as u64 + 1)) as usize);
    }
    out
}

/// A config with one service per `(name, script, extra YAML lines)`, all on
/// `nodes`, writing to `out/`.
pub fn config_yaml(nodes: &[&str], services: &[(&str, &str, &str)]) -> String {
    let nodes = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut y = String::from("out_dir: out\nlisten: 127.0.0.1:0\nservices:\n");
    for (name, script, extra) in services {
        y.push_str(&format!(
            "  - name: {name}\n    script: {script}\n    nodes: [{nodes}]\n    port: 9100\n"
        ));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str(&format!("    {}\n", line.trim()));
        }
    }
    y
}

/// A script whose targets are the JSON in `data` (relative to the script).
pub fn json_script(data: &str) -> String {
    format!("fn targets(ctx) {{\n    parse_json(read_file(\"{data}\"))\n}}\n")
}

/// `n` nodes `127.0.0.1:9091…`.
pub fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("127.0.0.1:{}", 9090 + i)).collect()
}

/// `&str` views of `v`.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Peak resident set size of this process, in MiB (`VmHWM`): memory tests
/// run one test per binary so that it is theirs alone.
pub fn peak_rss_mib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024
}
