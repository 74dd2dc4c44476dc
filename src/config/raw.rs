//! The low level: the file as the user wrote it, in serde types.
//!
//! Every key is optional here and nothing is checked beyond its YAML type;
//! `deny_unknown_fields` makes a misspelt key an error with its position.
//! Defaults that depend on nothing (`out_dir`, `listen`, `scripts_dir`) are
//! filled by serde; every other default is applied while checking, so that
//! "unset" stays visible until a service has inherited from `defaults:`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::rules::{RawRules, inherit};
use crate::shard::placement::PlacementSettings;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Extra directories scripts may `read_file` from.
    #[serde(default)]
    pub allowed_dirs: Vec<PathBuf>,
    /// Bearer token required by mutating API calls.
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// TLS and basic auth for the API, in Prometheus's web config format.
    #[serde(default)]
    pub web_config_file: Option<PathBuf>,
    /// Where drop-in scripts live (top level only); default `scripts`.
    #[serde(default = "default_scripts_dir")]
    pub scripts_dir: PathBuf,
    /// Settings every service inherits unless it sets them itself.
    #[serde(default)]
    pub defaults: RawService,
    #[serde(default)]
    pub script_limits: RawLimits,
    /// Environment variables scripts may read with `env()`.
    #[serde(default)]
    pub env_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub services: Vec<RawService>,
    /// Rule files for every service, like `defaults: {rules: …}`.
    #[serde(default)]
    pub rules: Option<RawRules>,
    /// Leader election on etcd (`config::ha`); absent: one instance.
    #[serde(default)]
    pub ha: Option<super::ha::RawHa>,
    /// The DNS servers scripts and `dns_sd_configs` ask; absent: the
    /// system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns: Option<RawDns>,
}

/// `dns:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// `ip:port` or `ip` (port 53) of each server, asked in order.
    #[serde(default)]
    pub servers: Vec<String>,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("var/sd")
}

fn default_listen() -> String {
    "127.0.0.1:9310".into()
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
pub(super) struct RawService {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Instead of `script`: a Prometheus service discovery block.
    #[serde(default)]
    pub source: Option<serde_json::Value>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub nodes: Option<Vec<RawNode>>,
    #[serde(default)]
    pub node_script: Option<PathBuf>,
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub file_naming: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub push: Option<RawPush>,
    #[serde(default)]
    pub ring: Option<PlacementSettings>,
    #[serde(default)]
    pub max_drop_ratio: Option<f64>,
    #[serde(default)]
    pub max_move_ratio: Option<f64>,
    #[serde(default)]
    pub resync_interval: Option<String>,
    #[serde(default)]
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub observe: Option<RawObserve>,
    #[serde(default)]
    pub weights: Option<RawWeights>,
    #[serde(default)]
    pub affinity: Option<String>,
    #[serde(default)]
    pub shard_label: Option<String>,
    #[serde(default)]
    pub handover: Option<String>,
    #[serde(default)]
    pub handover_timeout: Option<String>,
    pub rules: Option<RawRules>,
}

impl RawService {
    /// Fill every setting the service leaves unset from `d`. A service with
    /// its own `node_script` does not inherit static nodes, and vice versa.
    pub fn with_defaults(mut self, d: &RawService) -> RawService {
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
        or(&mut self.handover, &d.handover);
        or(&mut self.handover_timeout, &d.handover_timeout);
        self.rules = inherit(self.rules.take(), &d.rules);
        self
    }
}

/// One entry of `nodes:`: `"host:port"` or `{addr, weight}` (and no other
/// key: a misspelt `weight` must not quietly mean 1).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum RawNode {
    Addr(String),
    Weighted { addr: String, weight: Option<i64> },
}

/// `push:`. One flat map whose `kind` says which other keys apply (checked
/// with the service), not a serde enum tagged by `kind`: serde buffers a
/// tagged enum before reading it, which would lose the line of a misspelt
/// key inside it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPush {
    pub kind: PushKind,
    /// `kind: local`: the path template of each node's copy.
    #[serde(default)]
    pub dest: Option<String>,
    /// `kind: ansible`: the keys of [`RawAnsible`].
    #[serde(default)]
    pub playbook: Option<PathBuf>,
    #[serde(default)]
    pub dest_sd_file_name: Option<String>,
    #[serde(default)]
    pub vars: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    #[serde(default)]
    pub forks: Option<i64>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub ansible_playbook: Option<PathBuf>,
    #[serde(default)]
    pub tuning: Option<bool>,
}

/// `push.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum PushKind {
    None,
    Local,
    Ansible,
}

impl RawPush {
    /// The keys set that `kind` does not use.
    pub fn foreign_keys(&self) -> Vec<&'static str> {
        let ansible = [
            ("playbook", self.playbook.is_some()),
            ("dest_sd_file_name", self.dest_sd_file_name.is_some()),
            ("vars", self.vars.is_some()),
            ("forks", self.forks.is_some()),
            ("timeout", self.timeout.is_some()),
            ("retries", self.retries.is_some()),
            ("ansible_playbook", self.ansible_playbook.is_some()),
            ("tuning", self.tuning.is_some()),
        ];
        let local = [("dest", self.dest.is_some())];
        let unused: Vec<(&'static str, bool)> = match self.kind {
            PushKind::None => local.into_iter().chain(ansible).collect(),
            PushKind::Local => ansible.to_vec(),
            PushKind::Ansible => local.to_vec(),
        };
        unused
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect()
    }

    /// The ansible keys.
    pub fn ansible(self) -> RawAnsible {
        RawAnsible {
            playbook: self.playbook,
            dest_sd_file_name: self.dest_sd_file_name,
            vars: self.vars.unwrap_or_default(),
            forks: self.forks,
            timeout: self.timeout,
            retries: self.retries,
            ansible_playbook: self.ansible_playbook,
            tuning: self.tuning,
        }
    }
}

/// The keys of `push: {kind: ansible, …}`.
#[derive(Debug, Clone)]
pub(super) struct RawAnsible {
    pub playbook: Option<PathBuf>,
    pub dest_sd_file_name: Option<String>,
    pub vars: BTreeMap<String, serde_yaml_ng::Value>,
    pub forks: Option<i64>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    pub ansible_playbook: Option<PathBuf>,
    pub tuning: Option<bool>,
}

/// `health:`; unset keys take the defaults of [`Health`](super::Health).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fall: Option<i64>,
    #[serde(default)]
    pub rise: Option<i64>,
}

/// `observe:`; unset keys take the defaults of [`Observe`](super::Observe).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObserve {
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub refresh: Option<String>,
}

/// `weights:`; `from` is required, the rest take the defaults of
/// [`SeriesWeights`](super::SeriesWeights).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeights {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub smoothing: Option<f64>,
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// `script_limits:`; unset keys keep the defaults of [`Limits`](super::Limits).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default)]
    pub max_operations: Option<u64>,
    #[serde(default)]
    pub max_call_levels: Option<usize>,
    #[serde(default)]
    pub max_string_size: Option<usize>,
    #[serde(default)]
    pub max_array_size: Option<usize>,
    #[serde(default)]
    pub max_map_size: Option<usize>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
}
