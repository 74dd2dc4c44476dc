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

use crate::affinity::Affinity;
use crate::ring::{NodeSpec, RingSettings};
use crate::script::Limits;
pub use crate::script::dropin::{DropInProblem, check_service_scripts, effective_services};
use crate::target::{check_address, check_label_name};

/// More copies of a target than this is a config mistake (and the ring
/// counts replicas in a byte).
const MAX_REPLICAS: i64 = 100;

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
    /// Where drop-in scripts live (top level only); default `scripts`.
    #[serde(default = "default_scripts_dir")]
    scripts_dir: PathBuf,
    /// Settings every service inherits unless it sets them itself.
    #[serde(default)]
    defaults: RawService,
    #[serde(default)]
    script_limits: RawLimits,
    /// Environment variables scripts may read with `env()`.
    #[serde(default)]
    env_allowlist: Option<Vec<String>>,
    #[serde(default)]
    services: Vec<RawService>,
    /// Rule files for every service (see `rules`).
    #[serde(default)]
    rules: Option<crate::rules::RawRules>,
}

fn default_scripts_dir() -> PathBuf {
    PathBuf::from("scripts")
}

/// A service as written, every key optional here (required ones are checked
/// with the rest): a `services:` entry, the `defaults:` block (which may not
/// name a service or script) or the map a drop-in's `fn service()` returns
/// (its name and script come from its file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    script: Option<PathBuf>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    nodes: Option<Vec<RawNode>>,
    #[serde(default)]
    node_script: Option<PathBuf>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    file_type: Option<String>,
    #[serde(default)]
    file_naming: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    push: Option<RawPush>,
    #[serde(default)]
    ring: Option<RingSettings>,
    #[serde(default)]
    max_drop_ratio: Option<f64>,
    #[serde(default)]
    max_move_ratio: Option<f64>,
    #[serde(default)]
    resync_interval: Option<String>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    observe: Option<RawObserve>,
    #[serde(default)]
    weights: Option<RawWeights>,
    #[serde(default)]
    affinity: Option<String>,
    #[serde(default)]
    shard_label: Option<String>,
    #[serde(default)]
    rules: Option<crate::rules::RawRules>,
}

/// `weights:`; `from` is required, the rest take the defaults of
/// [`SeriesWeights`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    smoothing: Option<f64>,
    #[serde(default)]
    threshold: Option<f64>,
}

/// `observe:`; unset keys take the defaults of [`Observe`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObserve {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    refresh: Option<String>,
}

/// `script_limits:`; unset keys keep the defaults of [`Limits`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_operations: Option<u64>,
    #[serde(default)]
    max_call_levels: Option<usize>,
    #[serde(default)]
    max_string_size: Option<usize>,
    #[serde(default)]
    max_array_size: Option<usize>,
    #[serde(default)]
    max_map_size: Option<usize>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_memory_mb: Option<u64>,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("var/sd")
}

fn default_listen() -> String {
    "127.0.0.1:9310".into()
}

/// `health:`; unset keys take the defaults of [`Health`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fall: Option<i64>,
    #[serde(default)]
    rise: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawNode {
    Addr(String),
    Weighted { addr: String, weight: Option<i64> },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawPush {
    None,
    Local { dest: String },
    Ansible(AnsibleRaw),
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
    /// Directory scanned (top level only) for drop-in `<name>.rhai` services.
    pub scripts_dir: PathBuf,
    /// Sandbox limits of every script call (`script_limits:`).
    pub script_limits: Limits,
    /// Patterns of environment variable names scripts may read.
    pub env_allowlist: Vec<String>,
    /// Services written in the config file. Drop-in services are added by
    /// [`effective_services`]; use that for the full list.
    pub services: Vec<Arc<Service>>,
    /// The `defaults:` block, applied to every service.
    defaults: RawService,
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

/// How sd files are named when the script defines no `fn file_name(f)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileNaming {
    /// `{service}_{node}.{ext}`: a node keeps one name, so it never has two
    /// files, even for an instant.
    Stable,
    /// `{service}_{node}_{index}_{total}_{count}.{ext}`, the names of the
    /// tool promshard replaces; the name changes with the count.
    Counted,
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
    /// One batched `ansible-playbook` run per pass.
    Ansible(AnsiblePush),
}

/// Settings of `push: {kind: ansible}` (see `push::ansible`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnsiblePush {
    /// The playbook, resolved against the config directory.
    pub playbook: PathBuf,
    /// File name on the node; may use `{node}` and `{service}`.
    pub dest_sd_file_name: String,
    /// Extra host vars; string values may use `{node}` and `{service}`.
    pub vars: BTreeMap<String, serde_json::Value>,
    pub forks: usize,
    /// Limit of one `ansible-playbook` run.
    pub timeout: Duration,
    /// Extra runs for failed or unreachable nodes within a pass.
    pub retries: u32,
    /// The program: a name looked up in PATH, or a path (config-relative).
    pub ansible_playbook: PathBuf,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Absolute (or config-relative resolved) path of the script.
    pub script: PathBuf,
    pub schedule: Schedule,
    /// Static nodes, sorted by address; empty when a script supplies them.
    pub nodes: Vec<NodeSpec>,
    /// A separate script whose `fn nodes(ctx)` supplies the nodes.
    pub node_script: Option<PathBuf>,
    /// Found in `scripts_dir` rather than written in the config file.
    pub drop_in: bool,
    pub replicas: usize,
    pub file_type: FileType,
    pub file_naming: FileNaming,
    pub port: Option<u16>,
    pub push: Push,
    pub ring: RingSettings,
    /// A pass that would drop more than this share of targets is refused.
    pub max_drop_ratio: f64,
    /// At most this share of the total weight changes node in one pass (a
    /// big rebalance is spread over several passes); `None`: no cap.
    pub max_move_ratio: Option<f64>,
    /// Re-deliver unchanged files this often anyway.
    pub resync_interval: Duration,
    /// Probe the nodes and keep only healthy ones in the ring (`health:`).
    pub health: Option<Health>,
    /// Ask each node what it really scrapes (`observe:`; see `observe`).
    pub observe: Option<Observe>,
    /// Weigh targets by the series observed (`weights: {from: series}`).
    pub weights: Option<SeriesWeights>,
    /// Place targets with the same key on the same node(s) (`affinity:`).
    pub affinity: Option<Affinity>,
    /// Every target in a node's file gets this label, valued the node.
    pub shard_label: Option<String>,
    /// Rule files delivered to every node (`rules:`; see `rules`).
    pub rules: Option<crate::rules::Rules>,
}

/// `weights: {from: series}`: each target weighs the series it feeds, as
/// observed (see `observe::weights`); placement is bounded by weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesWeights {
    /// Weight of a new observation in the moving average (0 < s ≤ 1).
    pub smoothing: f64,
    /// Relative change of the average that changes the weight in use.
    pub threshold: f64,
}

impl Default for SeriesWeights {
    fn default() -> Self {
        SeriesWeights {
            smoothing: 0.5,
            threshold: 0.2,
        }
    }
}

/// `observe:` of a service: how each node's Prometheus API is asked what it
/// scrapes, for the audit, `where` and the status page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Observe {
    /// Time between two observations of every node.
    pub interval: Duration,
    /// Limit of one node's observation (all its requests).
    pub timeout: Duration,
    /// The node's API base URL; `{node}` is the node's address.
    pub api: String,
    /// The scrape job (pool) whose targets are this service's; `None`: the
    /// service's name.
    pub job: Option<String>,
    /// How long a node takes to act on a new file (file_sd's 5 s update
    /// throttle, or http_sd's `refresh_interval`); with one scrape interval
    /// it is the grace before an assigned target counts as missing.
    pub refresh: Duration,
}

impl Default for Observe {
    fn default() -> Self {
        Observe {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            api: "http://{node}".into(),
            job: None,
            refresh: Duration::from_secs(5),
        }
    }
}

/// `health:` of a service: how its nodes are probed (see `membership`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Health {
    /// HTTP path probed on each node, e.g. `/-/healthy`; 2xx is healthy.
    pub path: String,
    /// Time between two probes of a node.
    pub interval: Duration,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// Consecutive failures that take a node out of the ring.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/-/healthy".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
        }
    }
}

/// The directory relative paths in the config at `path` resolve against:
/// absolute and free of `..` (a config named `../x/promshard.yaml` must not
/// turn every destination into a path with `..`, which delivery refuses).
fn config_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem {
                location: "file".into(),
                message,
            }],
        };
        // Read at most one byte past the cap: a huge file is refused
        // without being held in memory.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(f, MAX_CONFIG_BYTES as u64 + 1),
                    &mut text,
                )
            })
            .map_err(|e| {
                let tried = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
                let hint = if e.kind() == std::io::ErrorKind::NotFound {
                    "; run promshard from the directory that holds it, or name it with -c FILE"
                } else {
                    ""
                };
                fail(format!("cannot read {}: {e}{hint}", tried.display()))
            })?;
        Self::parse(path, &text)
    }

    /// Validate config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let fail = |location: String, message: String| ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem { location, message }],
        };
        if let Err((location, message)) = check_shape(text) {
            return Err(fail(location, message));
        }
        // An empty file would parse as "every default": a truncated or
        // half-written file would silently replace the running config.
        if is_empty_yaml(text) {
            return Err(fail(
                "file".into(),
                "is empty; write at least `services: []` to run on defaults and drop-ins only"
                    .into(),
            ));
        }
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let message = e.to_string();
            match e.location() {
                // The position goes in front, once, like every other problem.
                Some(l) => {
                    let at = format!("line {} column {}", l.line(), l.column());
                    let message = message
                        .strip_suffix(&format!(" at {at}"))
                        .unwrap_or(&message)
                        .to_string();
                    fail(at, message)
                }
                None => fail("document".into(), message),
            }
        })?;
        let base_dir = config_dir(path);
        let mut problems = Vec::new();
        let mut raw = raw;
        // Top-level rules go to every service, like those in `defaults:`.
        raw.defaults.rules = crate::rules::inherit(raw.defaults.rules.take(), &raw.rules);
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
        let script_limits = match check_limits(&raw.script_limits) {
            Ok(l) => l,
            Err(list) => {
                problems.extend(list.into_iter().map(|(key, message)| ConfigProblem {
                    location: format!("script_limits.{key}"),
                    message,
                }));
                Limits::default()
            }
        };
        let env_allowlist = raw
            .env_allowlist
            .clone()
            .unwrap_or_else(|| vec!["PROMSHARD_*".to_string()]);
        if let Some(bad) = env_allowlist
            .iter()
            .find(|p| p.is_empty() || p.trim_end_matches('*').contains('*'))
        {
            problems.push(ConfigProblem {
                location: "env_allowlist".into(),
                message: format!("{bad:?}: use a name or a prefix ending in one '*'"),
            });
        }
        // The defaults are checked once on their own, so that a mistake in
        // them is reported even when only drop-in services use them.
        for (key, set) in [
            ("name", raw.defaults.name.is_some()),
            ("script", raw.defaults.script.is_some()),
        ] {
            if set {
                problems.push(ConfigProblem {
                    location: format!("defaults.{key}"),
                    message: "not allowed in defaults: each service sets its own".into(),
                });
            }
        }
        let as_service = RawService {
            name: Some("defaults".into()),
            script: Some(PathBuf::new()),
            ..raw.defaults.clone()
        };
        if let Err(list) = check_service(as_service, &base_dir) {
            problems.extend(list.into_iter().map(|(key, message)| ConfigProblem {
                location: format!("defaults.{key}"),
                message,
            }));
        }
        let mut services = Vec::new();
        let mut names = BTreeSet::new();
        for (i, rs) in raw.services.into_iter().enumerate() {
            let name = rs.name.clone().unwrap_or_default();
            let location = format!("services[{i}] {name:?}");
            if rs.name.is_some() && !names.insert(name.clone()) {
                problems.push(ConfigProblem {
                    location: location.clone(),
                    message: format!("duplicate service name {name:?}"),
                });
            }
            match check_service(rs.with_defaults(&raw.defaults), &base_dir) {
                Ok(s) => services.push(Arc::new(s)),
                Err(list) => {
                    problems.extend(list.into_iter().map(|(key, message)| ConfigProblem {
                        location: format!("{location}: {key}"),
                        message,
                    }))
                }
            }
        }
        let out_dir = base_dir.join(raw.out_dir);
        if let Err(message) = check_out_dir(&out_dir) {
            problems.push(ConfigProblem {
                location: "out_dir".into(),
                message,
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                file: path.to_path_buf(),
                problems,
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            out_dir,
            allowed_dirs: raw.allowed_dirs.iter().map(|d| base_dir.join(d)).collect(),
            api_token,
            scripts_dir: base_dir.join(raw.scripts_dir),
            script_limits,
            env_allowlist,
            defaults: raw.defaults,
            base_dir,
            listen,
            services,
        })
    }

    /// Build the drop-in service `name` for `script` from the `defaults:`
    /// block overridden by `settings` (what the script's `fn service()`
    /// returned, as JSON), validated exactly like a service in the file.
    /// `script_nodes`: the script defines `fn nodes(ctx)`, so nodes from the
    /// defaults are not inherited. Problems name the key.
    pub fn drop_in_service(
        &self,
        name: &str,
        script: &Path,
        settings: Option<serde_json::Value>,
        script_nodes: bool,
    ) -> Result<Service, Vec<ConfigProblem>> {
        let own: RawService = match settings {
            None => RawService::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| {
                vec![ConfigProblem {
                    location: "fn service()".into(),
                    message: e.to_string(),
                }]
            })?,
        };
        let mut defaults = self.defaults.clone();
        if script_nodes {
            defaults.nodes = None;
        }
        for (key, set, why) in [
            ("name", own.name.is_some(), "a drop-in is named by its file"),
            (
                "script",
                own.script.is_some(),
                "a drop-in's script is its own file",
            ),
        ] {
            if set {
                return Err(vec![ConfigProblem {
                    location: format!("fn service(): {key}"),
                    message: format!("not allowed: {why}"),
                }]);
            }
        }
        let raw = RawService {
            name: Some(name.to_string()),
            script: Some(script.to_path_buf()),
            ..own
        }
        .with_defaults(&defaults);
        let mut service = check_service(raw, &self.base_dir).map_err(|list| {
            list.into_iter()
                .map(|(key, message)| ConfigProblem {
                    location: format!("fn service(): {key}"),
                    message,
                })
                .collect::<Vec<_>>()
        })?;
        // `script` is already resolved (it was found in `scripts_dir`).
        service.script = script.to_path_buf();
        service.drop_in = true;
        Ok(service)
    }

    /// Why the HTTP API is open to more than this host, if it is: a
    /// non-loopback `listen` without `api_token`.
    pub fn exposure_warning(&self) -> Option<String> {
        if self.listen.ip().is_loopback() || self.api_token.is_some() {
            return None;
        }
        Some(format!(
            "{}: listen {} is not a loopback address and no api_token is set: anyone who reaches it can read the services, their status and every sd file, and POST calls are refused; set api_token_file, or listen on 127.0.0.1",
            self.path.display(),
            self.listen
        ))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The longest service name: it becomes a directory and part of file
/// names, which a file system limits to 255 bytes.
pub const MAX_SERVICE_NAME: usize = 200;

/// The largest config file read. Big fleets list their nodes in scripts,
/// not here; a config of this size is a mistake or an attack.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The deepest nesting of flow collections (`[…]`, `{…}`) accepted. The
/// YAML parser takes time quadratic in the depth (100k levels: 46 s)
/// before its own recursion limit rejects the document.
pub const MAX_CONFIG_NESTING: usize = 32;

/// Refuse text too large or nested too deep before it reaches the parser.
/// Quoted scalars and comments are skipped; a bracket inside a plain
/// scalar counts, which only matters beyond [`MAX_CONFIG_NESTING`]
/// unbalanced ones.
fn check_shape(text: &str) -> Result<(), (String, String)> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err((
            "file".into(),
            format!(
                "larger than {} MiB; list big node sets from a script (fn nodes(ctx) or node_script)",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut chars = line.char_indices().peekable();
        let mut prev = ' ';
        while let Some((col, c)) = chars.next() {
            let at_token = prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':');
            match c {
                '#' if prev.is_whitespace() => break,
                '"' | '\'' if at_token => {
                    // Skip to the closing quote (on this line; a multi-line
                    // quoted scalar only hides brackets, never adds them).
                    let mut escaped = false;
                    for (_, q) in chars.by_ref() {
                        match q {
                            '\\' if c == '"' && !escaped => escaped = true,
                            q if q == c && !escaped => break,
                            _ => escaped = false,
                        }
                    }
                    prev = c;
                    continue;
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_CONFIG_NESTING {
                        return Err((
                            format!("line {} column {}", n + 1, col + 1),
                            format!("nested more than {MAX_CONFIG_NESTING} levels deep"),
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

/// Whether YAML text holds no content: only blank lines, comments and
/// document markers.
fn is_empty_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Check a `shard_label:` name. `job` and `instance` identify a series and
/// `__` names are dropped after relabelling, so none of them can carry the
/// shard.
fn check_shard_label(name: &str) -> Result<(), String> {
    let reason = check_label_name(name).err().or(match name {
        "job" | "instance" => Some("job and instance identify a series; choose another name, e.g. shard"),
        _ if name.starts_with("__") => {
            Some("names starting with '__' are dropped after relabelling; choose another name, e.g. shard")
        }
        _ => None,
    });
    match reason {
        Some(r) => Err(format!("{name:?}: {r}")),
        None => Ok(()),
    }
}

/// Check a service name: it becomes a directory and a file-name part.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "is {} characters long, at most {MAX_SERVICE_NAME} (it becomes a directory and part of file names)",
            name.len()
        ));
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

/// Directories `out_dir` must not be: promshard creates and removes files
/// in `<out_dir>/<service>/`, and a service called `etc` must never find
/// `/etc` there.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
];

/// Refuse an `out_dir` that is `/` or a system directory, as written (with
/// `.` and `..` resolved) or once links are followed.
fn check_out_dir(out_dir: &Path) -> Result<(), String> {
    let mut lexical = PathBuf::new();
    for c in out_dir.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let real = std::fs::canonicalize(out_dir).ok();
    match [Some(lexical), real]
        .into_iter()
        .flatten()
        .find(|p| SYSTEM_DIRS.iter().any(|d| Path::new(d) == p))
    {
        Some(system) => Err(format!(
            "{} is the system directory {}: promshard creates and removes files below out_dir; give it a directory of its own (e.g. /var/lib/promshard/sd)",
            out_dir.display(),
            system.display()
        )),
        None => Ok(()),
    }
}

type KeyProblems = Vec<(&'static str, String)>;

fn check_service(rs: RawService, base_dir: &Path) -> Result<Service, KeyProblems> {
    let mut p: KeyProblems = Vec::new();
    let name = rs.name.clone().unwrap_or_default();
    match &rs.name {
        None => p.push(("name", "required".into())),
        Some(n) => {
            if let Err(e) = check_service_name(n) {
                p.push(("name", e));
            }
        }
    }
    if rs.script.is_none() {
        p.push(("script", "required".into()));
    }
    let schedule = match parse_schedule(rs.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE)) {
        Ok(s) => s,
        Err(e) => {
            p.push(("schedule", e));
            Schedule::Cron(DEFAULT_SCHEDULE.into())
        }
    };
    // No `nodes:` at all means a script supplies them (`node_script`, or
    // `fn nodes(ctx)` in the service's script; checked when it runs).
    let nodes = match rs.nodes.as_deref().map(check_nodes) {
        None => Vec::new(),
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            p.push(("nodes", e));
            Vec::new()
        }
    };
    if rs.node_script.is_some() && rs.nodes.is_some() {
        p.push(("node_script", "set nodes or node_script, not both".into()));
    }
    let replicas = match rs.replicas.unwrap_or(1) {
        r if (1..=MAX_REPLICAS).contains(&r) => r as usize,
        r if r < 1 => {
            p.push(("replicas", format!("replicas must be >= 1 (got {r})")));
            1
        }
        r => {
            p.push((
                "replicas",
                format!("replicas must be <= {MAX_REPLICAS} (got {r})"),
            ));
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
    let file_naming = match rs.file_naming.as_deref().unwrap_or("stable") {
        "stable" => FileNaming::Stable,
        "counted" => FileNaming::Counted,
        other => {
            p.push(("file_naming", format!("{other:?} is not stable or counted")));
            FileNaming::Stable
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
        RawPush::Ansible(raw) => Push::Ansible(check_ansible(raw, file_type, base_dir, &mut p)),
    };
    let ring = rs.ring.unwrap_or_default();
    if !(ring.load_factor >= 1.0 && ring.load_factor.is_finite()) {
        p.push((
            "ring.load_factor",
            format!("{} must be >= 1.0", ring.load_factor),
        ));
    }
    let max_move_ratio = rs.max_move_ratio;
    if let Some(r) = max_move_ratio
        && !(r > 0.0 && r <= 1.0)
    {
        p.push((
            "max_move_ratio",
            format!("{r} must be above 0 and at most 1"),
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
    let health = rs.health.as_ref().map(|h| check_health(h, &mut p));
    let mut observe = rs.observe.as_ref().map(|o| check_observe(o, &mut p));
    let weights = rs.weights.as_ref().map(|w| check_weights(w, &mut p));
    let affinity = rs.affinity.as_deref().and_then(|text| {
        Affinity::parse(text)
            .map_err(|e| p.push(("affinity", e)))
            .ok()
    });
    let shard_label = rs.shard_label.clone();
    if let Some(Err(e)) = shard_label.as_deref().map(check_shard_label) {
        p.push(("shard_label", e));
    }
    let rules = rs.rules.as_ref().and_then(|raw| {
        crate::rules::check(raw, base_dir, &push)
            .map_err(|list| p.extend(list))
            .ok()
    });
    let mut ring = ring;
    if weights.is_some() {
        // Series come from observation, and only bounded placement uses
        // target weights.
        observe.get_or_insert_with(Observe::default);
        ring.balance = crate::ring::Balance::Bounded;
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Service {
        resync_interval,
        health,
        observe,
        weights,
        affinity,
        shard_label,
        rules,
        script: base_dir.join(rs.script.as_deref().unwrap_or(Path::new(""))),
        node_script: rs.node_script.as_ref().map(|n| base_dir.join(n)),
        drop_in: false,
        name,
        schedule,
        nodes,
        replicas,
        file_type,
        file_naming,
        port,
        push,
        ring,
        max_drop_ratio,
        max_move_ratio,
    })
}

impl RawService {
    /// Fill every setting the service leaves unset from `d`. A service with
    /// its own `node_script` does not inherit static nodes, and vice versa.
    fn with_defaults(mut self, d: &RawService) -> RawService {
        fn or<T: Clone>(own: &mut Option<T>, default: &Option<T>) {
            if own.is_none() {
                own.clone_from(default);
            }
        }
        if self.nodes.is_none() && self.node_script.is_none() {
            or(&mut self.nodes, &d.nodes);
            if self.nodes.is_none() {
                or(&mut self.node_script, &d.node_script);
            }
        }
        or(&mut self.schedule, &d.schedule);
        or(&mut self.replicas, &d.replicas);
        or(&mut self.file_type, &d.file_type);
        or(&mut self.file_naming, &d.file_naming);
        or(&mut self.port, &d.port);
        or(&mut self.push, &d.push);
        or(&mut self.ring, &d.ring);
        or(&mut self.max_drop_ratio, &d.max_drop_ratio);
        or(&mut self.max_move_ratio, &d.max_move_ratio);
        or(&mut self.resync_interval, &d.resync_interval);
        or(&mut self.health, &d.health);
        or(&mut self.observe, &d.observe);
        or(&mut self.weights, &d.weights);
        or(&mut self.affinity, &d.affinity);
        or(&mut self.shard_label, &d.shard_label);
        self.rules = crate::rules::inherit(self.rules.take(), &d.rules);
        self
    }
}

/// The keys of `push: {kind: ansible, …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnsibleRaw {
    #[serde(default)]
    playbook: Option<PathBuf>,
    #[serde(default)]
    dest_sd_file_name: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    forks: Option<i64>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    ansible_playbook: Option<PathBuf>,
}

/// Check `push: {kind: ansible}`; problems are pushed under `push.<key>`.
fn check_ansible(
    raw: AnsibleRaw,
    file_type: FileType,
    base_dir: &Path,
    p: &mut KeyProblems,
) -> AnsiblePush {
    let playbook = match raw.playbook {
        None => {
            p.push(("push.playbook", "required for kind ansible".into()));
            PathBuf::new()
        }
        Some(pb) => {
            let pb = base_dir.join(pb);
            if !pb.is_file() {
                p.push(("push.playbook", format!("{} is not a file", pb.display())));
            }
            pb
        }
    };
    let dest_sd_file_name = raw
        .dest_sd_file_name
        .unwrap_or_else(|| format!("{{service}}.{}", file_type.ext()));
    if dest_sd_file_name.is_empty()
        || dest_sd_file_name.contains('/')
        || dest_sd_file_name == "."
        || dest_sd_file_name == ".."
        || dest_sd_file_name.chars().any(char::is_control)
    {
        p.push((
            "push.dest_sd_file_name",
            format!("{dest_sd_file_name:?} must be a plain file name (no '/', not '..')"),
        ));
    }
    let mut vars = BTreeMap::new();
    for (k, v) in raw.vars {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            p.push((
                "push.vars",
                format!("{k:?} is not a valid Ansible variable name"),
            ));
        } else if crate::push::ansible::RESERVED_VARS.contains(&k.as_str()) {
            p.push((
                "push.vars",
                format!("{k:?} is set by promshard and cannot be overridden"),
            ));
        }
        match serde_json::to_value(&v) {
            Ok(j) => {
                vars.insert(k, j);
            }
            Err(e) => p.push(("push.vars", format!("{k:?}: unsupported value: {e}"))),
        }
    }
    let forks = match raw.forks.unwrap_or(10) {
        n if (1..=1000).contains(&n) => n as usize,
        n => {
            p.push(("push.forks", format!("{n} must be 1..=1000")));
            1
        }
    };
    let timeout = match parse_duration(raw.timeout.as_deref().unwrap_or("120s")) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            p.push(("push.timeout", "must be more than 0s".into()));
            Duration::from_secs(120)
        }
        Err(e) => {
            p.push(("push.timeout", e));
            Duration::from_secs(120)
        }
    };
    let retries = match raw.retries.unwrap_or(2) {
        n if (0..=10).contains(&n) => n as u32,
        n => {
            p.push(("push.retries", format!("{n} must be 0..=10")));
            0
        }
    };
    let ansible_playbook = match raw.ansible_playbook {
        None => PathBuf::from("ansible-playbook"),
        Some(a) if a.as_os_str().is_empty() => {
            p.push(("push.ansible_playbook", "must not be empty".into()));
            a
        }
        // A bare name is looked up in PATH; a path is config-relative.
        Some(a) if a.components().count() == 1 && !a.is_absolute() => a,
        Some(a) => base_dir.join(a),
    };
    AnsiblePush {
        playbook,
        dest_sd_file_name,
        vars,
        forks,
        timeout,
        retries,
        ansible_playbook,
    }
}

/// A duration key: `default` when unset; a problem under `key` (and the
/// default) when it does not parse or is shorter than `min`.
fn checked_duration(
    p: &mut KeyProblems,
    key: &'static str,
    value: &Option<String>,
    default: Duration,
    min: Duration,
) -> Duration {
    match value.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(t)) if t >= min => t,
        Some(Ok(_)) => {
            p.push((
                key,
                format!(
                    "{:?} must be at least {min:?}",
                    value.as_deref().unwrap_or("")
                ),
            ));
            default
        }
        Some(Err(e)) => {
            p.push((key, e));
            default
        }
    }
}

/// Check `weights:`; problems are pushed under `weights.<key>`.
fn check_weights(raw: &RawWeights, p: &mut KeyProblems) -> SeriesWeights {
    let d = SeriesWeights::default();
    match raw.from.as_deref() {
        Some("series") => {}
        Some(other) => p.push((
            "weights.from",
            format!("{other:?}: the only source is \"series\""),
        )),
        None => p.push((
            "weights.from",
            "missing; write weights: {from: series}".into(),
        )),
    }
    let mut fraction = |key: &'static str, v: Option<f64>, default: f64, min: f64| match v {
        None => default,
        Some(x) if x > min && x <= 1.0 => x,
        Some(x) => {
            p.push((key, format!("{x} must be above {min} and at most 1")));
            default
        }
    };
    SeriesWeights {
        smoothing: fraction("weights.smoothing", raw.smoothing, d.smoothing, 0.0),
        threshold: fraction("weights.threshold", raw.threshold, d.threshold, 0.0),
    }
}

/// Check `observe:`; problems are pushed under `observe.<key>`.
fn check_observe(raw: &RawObserve, p: &mut KeyProblems) -> Observe {
    let d = Observe::default();
    let min = Duration::from_millis(100);
    let interval = checked_duration(p, "observe.interval", &raw.interval, d.interval, min);
    let timeout = checked_duration(
        p,
        "observe.timeout",
        &raw.timeout,
        d.timeout.min(interval),
        min,
    );
    let refresh = checked_duration(p, "observe.refresh", &raw.refresh, d.refresh, min);
    if timeout > interval {
        p.push((
            "observe.timeout",
            format!("{timeout:?} must not exceed observe.interval ({interval:?})"),
        ));
    }
    let api = raw.api.clone().unwrap_or(d.api);
    if !(api.starts_with("http://") || api.starts_with("https://"))
        || api.chars().any(char::is_whitespace)
    {
        p.push((
            "observe.api",
            format!("{api:?} must be an http:// or https:// URL, e.g. \"http://{{node}}\""),
        ));
    }
    if raw.job.as_deref().is_some_and(|j| j.is_empty()) {
        p.push(("observe.job", "must not be empty".into()));
    }
    Observe {
        interval,
        timeout,
        api,
        job: raw.job.clone(),
        refresh,
    }
}

/// Check `health:`; problems are pushed under `health.<key>`.
fn check_health(raw: &RawHealth, p: &mut KeyProblems) -> Health {
    let d = Health::default();
    let path = raw.path.clone().unwrap_or(d.path);
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push((
            "health.path",
            format!("{path:?} must start with '/' and contain no spaces or control characters"),
        ));
    }
    let min = Duration::from_millis(10);
    let interval = checked_duration(p, "health.interval", &raw.interval, d.interval, min);
    let timeout = checked_duration(
        p,
        "health.timeout",
        &raw.timeout,
        d.timeout.min(interval),
        min,
    );
    if timeout > interval {
        p.push((
            "health.timeout",
            format!(
                "{:?} must not exceed health.interval ({:?})",
                raw.timeout.as_deref().unwrap_or(""),
                raw.interval.as_deref().unwrap_or("5s")
            ),
        ));
    }
    let mut count = |key: &'static str, v: Option<i64>, default: u32| match v {
        None => default,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            p.push((key, format!("{n} must be between 1 and 100")));
            default
        }
    };
    let fall = count("health.fall", raw.fall, d.fall);
    let rise = count("health.rise", raw.rise, d.rise);
    Health {
        path,
        interval,
        timeout,
        fall,
        rise,
    }
}

fn check_limits(raw: &RawLimits) -> Result<Limits, KeyProblems> {
    let mut p: KeyProblems = Vec::new();
    let d = Limits::default();
    fn positive<T: Copy + PartialOrd + Default + fmt::Display>(
        p: &mut KeyProblems,
        key: &'static str,
        v: Option<T>,
        default: T,
    ) -> T {
        match v {
            Some(n) if n <= T::default() => {
                p.push((key, format!("{n} must be greater than 0")));
                default
            }
            Some(n) => n,
            None => default,
        }
    }
    let timeout = match raw.timeout.as_deref().map(parse_duration) {
        None => d.timeout,
        Some(Ok(t)) if !t.is_zero() => t,
        Some(Ok(_)) => {
            p.push(("timeout", "must be greater than 0".into()));
            d.timeout
        }
        Some(Err(e)) => {
            p.push(("timeout", e));
            d.timeout
        }
    };
    let limits = Limits {
        max_operations: positive(
            &mut p,
            "max_operations",
            raw.max_operations,
            d.max_operations,
        ),
        max_call_levels: positive(
            &mut p,
            "max_call_levels",
            raw.max_call_levels,
            d.max_call_levels,
        ),
        max_string_size: positive(
            &mut p,
            "max_string_size",
            raw.max_string_size,
            d.max_string_size,
        ),
        max_array_size: positive(
            &mut p,
            "max_array_size",
            raw.max_array_size,
            d.max_array_size,
        ),
        max_map_size: positive(&mut p, "max_map_size", raw.max_map_size, d.max_map_size),
        timeout,
        max_memory: positive(
            &mut p,
            "max_memory_mb",
            raw.max_memory_mb,
            d.max_memory >> 20,
        ) << 20,
    };
    if p.is_empty() { Ok(limits) } else { Err(p) }
}

/// Check nodes a script returned (JSON of an array of `"host:port"` strings
/// or `{addr, weight}` maps) exactly like `nodes:` in the config.
pub fn nodes_from_json(value: serde_json::Value) -> Result<Vec<NodeSpec>, String> {
    let raw: Vec<RawNode> = serde_json::from_value(value).map_err(|e| {
        format!("expected an array of \"host:port\" strings or #{{addr, weight}} maps: {e}")
    })?;
    check_nodes(&raw)
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
    fn name_and_script_are_required_of_services_and_refused_elsewhere() {
        let text =
            "defaults: {name: x, script: y.rhai}\nservices:\n  - nodes: [\"10.0.0.1:9090\"]\n";
        let e = parse(text).unwrap_err().to_string();
        for want in [
            "defaults.name: not allowed in defaults",
            "defaults.script: not allowed in defaults",
            "services[0] \"\": name: required",
            "services[0] \"\": script: required",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let c = parse(GOOD).unwrap();
        let named = serde_json::json!({"name": "other", "replicas": 2});
        let e = c
            .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(named), false)
            .unwrap_err();
        assert_eq!(e[0].location, "fn service(): name", "{e:?}");
        let ok = serde_json::json!({"replicas": 2, "nodes": ["10.0.0.1:9090"]});
        let s = c
            .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(ok), false)
            .unwrap();
        assert_eq!((s.name.as_str(), s.replicas), ("extra", 2));
    }

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
    fn affinity_and_shard_label_are_checked_and_inherited() {
        let text = GOOD.replace(
            "port: 9100",
            "port: 9100\n    affinity: \"{labels.app\"\n    shard_label: instance",
        );
        let e = parse(&text).unwrap_err().to_string();
        for want in [
            "promshard.yaml: services[0] \"node_exporter\": affinity: template \"{labels.app\": unclosed",
            "services[0] \"node_exporter\": shard_label: \"instance\": job and instance identify a series",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    affinity: \"{app}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("affinity: template \"{app}\": unknown placeholder {app}: use {labels.<name>}, {host} or {address}"), "{e}");
        let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    shard_label: \"1x\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shard_label: \"1x\": label names must start"),
            "{e}"
        );
        let inherited =
            format!("defaults: {{affinity: \"{{labels.app}}\", shard_label: shard}}\n{GOOD}");
        let c = parse(&inherited).unwrap();
        let s = &c.services[0];
        assert_eq!(
            s.affinity.as_ref().map(Affinity::as_str),
            Some("{labels.app}")
        );
        assert_eq!(s.shard_label.as_deref(), Some("shard"));
        assert_eq!(parse(GOOD).unwrap().services[0].affinity, None);
        let bad = serde_json::json!({"affinity": "{labels.app}-{dc}"});
        let e = c
            .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(bad), false)
            .unwrap_err();
        assert_eq!(e[0].location, "fn service(): affinity", "{e:?}");
        assert!(e[0].message.contains("unknown placeholder {dc}"), "{e:?}");
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

    #[test]
    fn health_defaults_and_overrides() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.services[0].health, None, "no health: no probes");
        let c = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {}")).unwrap();
        assert_eq!(c.services[0].health, Some(Health::default()));
        let text = GOOD.replace(
            "port: 9100",
            "port: 9100\n    health: {path: /ready, interval: 500ms, timeout: 200ms, fall: 2, rise: 1}",
        );
        let h = parse(&text).unwrap().services[0].health.clone().unwrap();
        assert_eq!(
            h,
            Health {
                path: "/ready".into(),
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(200),
                fall: 2,
                rise: 1
            }
        );
        // Inherited from `defaults:`.
        let text = format!("defaults:\n  health: {{fall: 5}}\n{GOOD}");
        let h = parse(&text).unwrap().services[0].health.clone().unwrap();
        assert_eq!(h.fall, 5);
    }

    #[test]
    fn health_errors_name_the_key() {
        let text = GOOD.replace(
            "port: 9100",
            "port: 9100\n    health: {path: healthy, interval: 1s, timeout: 2s, fall: 0, rise: 101}",
        );
        let e = parse(&text).unwrap_err().to_string();
        let keys = ["health.path", "health.timeout", "health.fall"];
        for key in keys.into_iter().chain(["health.rise"]) {
            assert!(
                e.contains(&format!("services[0] \"node_exporter\": {key}: ")),
                "{key} missing in:\n{e}"
            );
        }
        let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {interval: soon}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("health.interval"), "{e}");
        let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {intervall: 1s}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("intervall"), "{e}");
    }
}
