//! The configuration file (`promshard.yaml`): raw serde types, defaults and
//! validation into a checked [`Config`] that the rest of the code trusts.
//!
//! Parsing is strict (unknown keys are errors). Validation collects every
//! problem it finds, each naming the file, the service and the key, so that
//! `promshard check` can list them all at once. Relative paths resolve against
//! the directory of the config file, not the working directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::ring::{NodeSpec, RingSettings};
use crate::target::check_address;

/// Default cron schedule: every minute, at second 0.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// Where: e.g. `services[1] "mysql": replicas`, or `line 3 column 5`.
    pub location: String,
    pub message: String,
}

/// Every problem found in a config file; `Display` gives one line each.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.file.display(), p.location, p.message)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- raw types

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_out_dir")]
    out_dir: PathBuf,
    #[serde(default = "default_listen")]
    listen: String,
    /// Extra directories scripts may `read_file` from.
    #[serde(default)]
    allowed_dirs: Vec<PathBuf>,
    /// Bearer token required by mutating API calls.
    #[serde(default)]
    api_token: Option<String>,
    #[serde(default)]
    api_token_file: Option<PathBuf>,
    #[serde(default)]
    services: Vec<RawService>,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("var/sd")
}

fn default_listen() -> String {
    "127.0.0.1:9310".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    script: PathBuf,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    file_type: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    push: Option<RawPush>,
    #[serde(default)]
    ring: Option<RingSettings>,
    #[serde(default)]
    max_drop_ratio: Option<f64>,
    #[serde(default)]
    resync_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawNode {
    Addr(String),
    Weighted { addr: String, weight: Option<i64> },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawPush {
    None,
    Local { dest: String },
}

// ------------------------------------------------------------ checked types

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Directory of `path`; relative paths resolve against it.
    pub base_dir: PathBuf,
    pub out_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra directories scripts may read (resolved).
    pub allowed_dirs: Vec<PathBuf>,
    /// Bearer token for `POST` API calls (from `api_token` or `api_token_file`).
    pub api_token: Option<String>,
    pub services: Vec<Arc<Service>>,
}

/// Format of the sd files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Json,
    Yaml,
}

impl FileType {
    /// File extension without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            FileType::Json => "json",
            FileType::Yaml => "yaml",
        }
    }
}

/// When a service's pass runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Cron with seconds, e.g. `0 * * * * *`.
    Cron(String),
    /// `@every 30s`.
    Every(Duration),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron(c) => f.write_str(c),
            Schedule::Every(d) => write!(f, "@every {}s", d.as_secs()),
        }
    }
}

/// Where each node's file goes after it is written under `out_dir`.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// Files only (Prometheus reads `out_dir`, or pulls via http_sd).
    None,
    /// Copy to a path template with `{node}` and `{service}`.
    Local { dest: String },
}

/// A validated service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Absolute (or config-relative resolved) path of the script.
    pub script: PathBuf,
    pub schedule: Schedule,
    /// Static nodes, sorted by address.
    pub nodes: Vec<NodeSpec>,
    pub replicas: usize,
    pub file_type: FileType,
    pub port: Option<u16>,
    pub push: Push,
    pub ring: RingSettings,
    /// A pass that would drop more than this share of targets is refused.
    pub max_drop_ratio: f64,
    /// Re-deliver unchanged files this often anyway.
    pub resync_interval: Duration,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem {
                location: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(path, &text)
    }

    /// Validate config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let fail = |location: String, message: String| ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem { location, message }],
        };
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let location = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "document".into());
            fail(location, e.to_string())
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut problems = Vec::new();
        let listen = match raw.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                problems.push(ConfigProblem {
                    location: "listen".into(),
                    message: format!("{:?} is not an ip:port socket address", raw.listen),
                });
                SocketAddr::from(([127, 0, 0, 1], 9310))
            }
        };
        let api_token = match (&raw.api_token, &raw.api_token_file) {
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem {
                    location: "api_token_file".into(),
                    message: "set api_token or api_token_file, not both".into(),
                });
                None
            }
            (Some(t), None) => Some(t.trim().to_string()),
            (None, Some(f)) => match std::fs::read_to_string(base_dir.join(f)) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    problems.push(ConfigProblem {
                        location: "api_token_file".into(),
                        message: format!("cannot read {}: {e}", base_dir.join(f).display()),
                    });
                    None
                }
            },
            (None, None) => None,
        };
        if api_token.as_deref() == Some("") {
            problems.push(ConfigProblem {
                location: "api_token".into(),
                message: "must not be empty".into(),
            });
        }
        let mut services = Vec::new();
        let mut names = BTreeSet::new();
        if raw.services.is_empty() {
            problems.push(ConfigProblem {
                location: "services".into(),
                message: "no services configured".into(),
            });
        }
        for (i, rs) in raw.services.into_iter().enumerate() {
            let location = format!("services[{i}] {:?}", rs.name);
            if !names.insert(rs.name.clone()) {
                problems.push(ConfigProblem {
                    location: location.clone(),
                    message: format!("duplicate service name {:?}", rs.name),
                });
            }
            match check_service(rs, &base_dir) {
                Ok(s) => services.push(Arc::new(s)),
                Err(list) => {
                    problems.extend(list.into_iter().map(|(key, message)| ConfigProblem {
                        location: format!("{location}: {key}"),
                        message,
                    }))
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                file: path.to_path_buf(),
                problems,
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            out_dir: base_dir.join(raw.out_dir),
            allowed_dirs: raw.allowed_dirs.iter().map(|d| base_dir.join(d)).collect(),
            api_token,
            base_dir,
            listen,
            services,
        })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Check a service name: it becomes a directory and a file-name part.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '_', '-' and '.', and must not start with '.'"
        ));
    }
    Ok(())
}

type KeyProblems = Vec<(&'static str, String)>;

fn check_service(rs: RawService, base_dir: &Path) -> Result<Service, KeyProblems> {
    let mut p: KeyProblems = Vec::new();
    if let Err(e) = check_service_name(&rs.name) {
        p.push(("name", e));
    }
    let schedule = match parse_schedule(rs.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE)) {
        Ok(s) => s,
        Err(e) => {
            p.push(("schedule", e));
            Schedule::Cron(DEFAULT_SCHEDULE.into())
        }
    };
    let nodes = match check_nodes(&rs.nodes) {
        Ok(n) => n,
        Err(e) => {
            p.push(("nodes", e));
            Vec::new()
        }
    };
    let replicas = match rs.replicas.unwrap_or(1) {
        r if r >= 1 => r as usize,
        r => {
            p.push(("replicas", format!("replicas must be >= 1 (got {r})")));
            1
        }
    };
    let file_type = match rs.file_type.as_deref().unwrap_or("json") {
        "json" => FileType::Json,
        "yaml" | "yml" => FileType::Yaml,
        other => {
            p.push(("file_type", format!("{other:?} is not json or yaml")));
            FileType::Json
        }
    };
    let port = match rs.port {
        None => None,
        Some(n) if (1..=65535).contains(&n) => Some(n as u16),
        Some(n) => {
            p.push(("port", format!("{n} is not a port number (1-65535)")));
            None
        }
    };
    let push = match rs.push.unwrap_or(RawPush::None) {
        RawPush::None => Push::None,
        RawPush::Local { dest } => {
            if !dest.contains("{node}") {
                p.push((
                    "push.dest",
                    format!(
                        "{dest:?} must contain {{node}} so that nodes do not overwrite each other"
                    ),
                ));
            }
            let dest = if Path::new(&dest).is_absolute() {
                dest
            } else {
                base_dir.join(&dest).to_string_lossy().into_owned()
            };
            Push::Local { dest }
        }
    };
    let ring = rs.ring.unwrap_or_default();
    if ring.vnodes == 0 {
        p.push(("ring.vnodes", "must be >= 1".into()));
    }
    if !(ring.load_factor >= 1.0 && ring.load_factor.is_finite()) {
        p.push((
            "ring.load_factor",
            format!("{} must be >= 1.0", ring.load_factor),
        ));
    }
    let max_drop_ratio = rs.max_drop_ratio.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&max_drop_ratio) {
        p.push((
            "max_drop_ratio",
            format!("{max_drop_ratio} must be between 0 and 1"),
        ));
    }
    let resync_interval = match parse_duration(rs.resync_interval.as_deref().unwrap_or("1h")) {
        Ok(d) => d,
        Err(e) => {
            p.push(("resync_interval", e));
            Duration::from_secs(3600)
        }
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Service {
        resync_interval,
        script: base_dir.join(&rs.script),
        name: rs.name,
        schedule,
        nodes,
        replicas,
        file_type,
        port,
        push,
        ring,
        max_drop_ratio,
    })
}

fn check_nodes(raw: &[RawNode]) -> Result<Vec<NodeSpec>, String> {
    if raw.is_empty() {
        return Err("at least one node is required".into());
    }
    let mut seen = BTreeMap::new();
    for n in raw {
        let (addr, weight) = match n {
            RawNode::Addr(a) => (a.clone(), 1),
            RawNode::Weighted { addr, weight } => (addr.clone(), weight.unwrap_or(1)),
        };
        check_node_addr(&addr)?;
        if !(1..=1000).contains(&weight) {
            return Err(format!("node {addr:?}: weight {weight} must be 1..=1000"));
        }
        if seen.insert(addr.clone(), weight as u32).is_some() {
            return Err(format!("duplicate node {addr:?}"));
        }
    }
    Ok(seen
        .into_iter()
        .map(|(addr, weight)| NodeSpec { addr, weight })
        .collect())
}

/// Check a node name: a `host:port` address (it also becomes a file-name part).
pub fn check_node_addr(addr: &str) -> Result<(), String> {
    check_address(addr).map_err(|e| format!("node {addr:?}: {e}"))
}

/// Parse a schedule: cron with seconds (5-field cron gets second 0), or `@every 30s`.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("@every") {
        let d = parse_duration(rest.trim())?;
        if d < Duration::from_secs(1) {
            return Err(format!("{text:?}: interval must be at least 1s"));
        }
        return Ok(Schedule::Every(d));
    }
    let fields = text.split_whitespace().count();
    let cron = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&cron)
        .map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))?;
    Ok(Schedule::Cron(cron))
}

/// Parse `500ms`, `30s`, `5m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 5m, 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/promshard/promshard.yaml"), text)
    }

    const GOOD: &str = r#"
out_dir: out
services:
  - name: node_exporter
    script: scripts/node.rhai
    nodes: ["10.0.0.2:9090", {addr: "10.0.0.1:9090", weight: 2}]
    port: 9100
    push: {kind: local, dest: "/srv/{node}/node.json"}
"#;

    #[test]
    fn good_config_resolves_paths_and_sorts_nodes() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.out_dir, Path::new("/etc/promshard/out"));
        let s = &c.services[0];
        assert_eq!(s.script, Path::new("/etc/promshard/scripts/node.rhai"));
        assert_eq!(
            s.nodes[0],
            NodeSpec {
                addr: "10.0.0.1:9090".into(),
                weight: 2
            }
        );
        assert_eq!(s.replicas, 1);
        assert_eq!(s.file_type, FileType::Json);
        assert_eq!(s.schedule, Schedule::Cron(DEFAULT_SCHEDULE.into()));
    }

    #[test]
    fn errors_name_file_service_and_key() {
        let text = GOOD.replace("port: 9100", "port: 9100\n    replicas: 0");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains(
                "promshard.yaml: services[0] \"node_exporter\": replicas: replicas must be >= 1"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = parse(&GOOD.replace("port: 9100", "prot: 9100"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot") && e.contains("line"), "{e}");
    }

    #[test]
    fn duplicates_and_empty_nodes_are_errors() {
        let dup = GOOD.replace("\"10.0.0.2:9090\"", "\"10.0.0.1:9090\"");
        assert!(
            parse(&dup)
                .unwrap_err()
                .to_string()
                .contains("duplicate node")
        );
        let twice = format!("{GOOD}{}", &GOOD[GOOD.find("  - name").unwrap()..]);
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("duplicate service name")
        );
        let empty = GOOD.replace(
            "nodes: [\"10.0.0.2:9090\", {addr: \"10.0.0.1:9090\", weight: 2}]",
            "nodes: []",
        );
        assert!(
            parse(&empty)
                .unwrap_err()
                .to_string()
                .contains("nodes: at least one node")
        );
    }

    #[test]
    fn bad_node_and_schedule_are_reported_together() {
        let text = GOOD
            .replace("10.0.0.2:9090", "10.0.0.2")
            .replace("port: 9100", "port: 9100\n    schedule: \"nope\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn schedules() {
        assert!(parse_schedule("*/5 * * * * *").is_ok());
        assert_eq!(
            parse_schedule("* * * * *").unwrap(),
            Schedule::Cron("0 * * * * *".into())
        );
        assert_eq!(
            parse_schedule("@every 30s").unwrap(),
            Schedule::Every(Duration::from_secs(30))
        );
        assert_eq!(
            parse_schedule("@every 5m").unwrap(),
            Schedule::Every(Duration::from_secs(300))
        );
        assert!(parse_schedule("@every 0s").is_err());
        assert!(parse_schedule("61 * * * * *").is_err());
    }
}
