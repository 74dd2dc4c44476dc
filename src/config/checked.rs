//! The high level: the checked types the rest of promshard trusts.
//!
//! Built only by the checks in this module from the raw types, so every
//! value here is in range, every path is resolved against the config's
//! directory and every default is filled in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::raw::RawService;
use super::rules::Rules;
use crate::shard::affinity::Affinity;
use crate::shard::names::{FileNaming, FileType};
use crate::shard::placement::{NodeSpec, PlacementSettings};

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
    /// `web_config_file`: TLS and basic auth on the API, read and checked.
    pub web: Option<Arc<super::web::WebConfig>>,
    /// Directory scanned (top level only) for drop-in `<name>.rhai` services.
    pub scripts_dir: PathBuf,
    /// Sandbox limits of every script call (`script_limits:`).
    pub script_limits: Limits,
    /// Patterns of environment variable names scripts may read.
    pub env_allowlist: Vec<String>,
    /// Services written in the config file. Drop-in services are added by
    /// `script::dropin::effective_services`; use that for the full list.
    pub services: Vec<Arc<Service>>,
    /// The `defaults:` block, applied to every service.
    pub(super) defaults: RawService,
    /// `ha:`: elect one delivering leader on etcd.
    pub ha: Option<super::ha::HaConfig>,
    /// `dns: {servers}`: the DNS servers scripts ask; empty: the system's.
    pub dns_servers: Vec<SocketAddr>,
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

impl Schedule {
    /// The longest time between two runs: the interval of `@every`; for
    /// cron, the widest gap among its next 200 runs (a weekday-only cron
    /// has a weekend gap), so "no success for N intervals" never fires on
    /// a gap the schedule itself made.
    pub fn longest_interval(&self) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(expr) => cron_longest_gap(expr).unwrap_or(Duration::ZERO),
        }
    }
}

fn cron_longest_gap(expr: &str) -> Option<Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
    let runs: Vec<_> = cron.iter_after(now).take(200).collect();
    runs.windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .max()
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

/// Inventory vars promshard sets itself; `vars` may not use these names.
pub const RESERVED_VARS: &[&str] = &[
    "src_sd_file",
    "dest_sd_file_name",
    "service",
    "service_port",
    "node",
    "promshard_epoch",
];

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
    /// Whether runs get promshard's SSH settings (`push::ansible::tuned_settings`).
    pub tuning: bool,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Absolute (or config-relative resolved) path of the script; with
    /// `source:`, the config file (what errors name).
    pub script: PathBuf,
    /// `source:`: targets from a Prometheus service discovery block
    /// instead of a script.
    pub source: Option<super::source::SdBlock>,
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
    pub ring: PlacementSettings,
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
    /// How targets move between nodes (`handover:`, `handover_timeout:`).
    pub handover: super::handover::Settings,
    /// Rule files delivered to every node (`rules:`; see the `rules` module).
    pub rules: Option<Rules>,
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

/// `script_limits:`: sandbox limits for every script call.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall-clock deadline of one call.
    pub timeout: Duration,
    /// How much one call may allocate (net of what it frees). A backstop
    /// for growth the size limits cannot see (a map filled key by key is
    /// only measured when a function is called on it); the script engine
    /// counts each thread's allocations to enforce it.
    pub max_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Sizes are totals over a whole value, nested arrays and maps
        // included (that is how Rhai counts): a CMDB answer of 100k hosts
        // with ten fields each is a million map entries.
        Self {
            max_operations: 1_000_000_000,
            max_call_levels: 64,
            max_string_size: 64 << 20,
            max_array_size: 2_000_000,
            max_map_size: 2_000_000,
            timeout: Duration::from_secs(30),
            max_memory: 512 << 20,
        }
    }
}
