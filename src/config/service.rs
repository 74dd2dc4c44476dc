//! One service, raw → checked: a `services:` entry, the `defaults:` block
//! (checked on its own so its mistakes show even when only drop-ins use
//! it) and a drop-in's `fn service()` map all go through [`check_service`],
//! so every key means the same thing and errors name the same key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration::{DEFAULT_SCHEDULE, parse_duration, parse_schedule};
use super::raw::{
    PushKind, RawAnsible, RawHealth, RawNode, RawObserve, RawPush, RawService, RawWeights,
};
use super::rules::check_rules;
use super::validate::{
    Problems, check_service_name, check_shard_label, duration_at_least, duration_not_zero,
    fraction, in_range,
};
use super::{
    AnsiblePush, Config, ConfigProblem, Health, Observe, Push, RESERVED_VARS, Schedule,
    SeriesWeights, Service,
};
use crate::shard::affinity::Affinity;
use crate::shard::names::{FileNaming, FileType};
use crate::shard::placement::{Balance, NodeSpec, PlacementSettings};
use crate::shard::target::check_address;

/// More copies of a target than this is a config mistake (and the ring
/// counts replicas in a byte).
const MAX_REPLICAS: i64 = 100;

/// Check one service (defaults already applied). Problems are recorded
/// under their key, in the order of the keys below; the service returned
/// is only meaningful when none were.
pub(super) fn check_service(rs: RawService, base_dir: &Path, p: &mut Problems) -> Service {
    let source = check_identity(&rs, p);
    let schedule = p.take(
        "schedule",
        parse_schedule(rs.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE)),
        Schedule::Cron(DEFAULT_SCHEDULE.into()),
    );
    // No `nodes:` at all means a script supplies them (`node_script`, or
    // `fn nodes(ctx)` in the service's script; checked when it runs).
    let nodes = p.setting("nodes", rs.nodes.as_deref(), check_nodes, Vec::new());
    if rs.node_script.is_some() && rs.nodes.is_some() {
        p.push("node_script", "set nodes or node_script, not both");
    }
    let replicas = p.take("replicas", replica_count(rs.replicas.unwrap_or(1)), 1) as usize;
    let file_type = p.take(
        "file_type",
        parse_file_type(rs.file_type.as_deref()),
        FileType::Json,
    );
    let file_naming = p.take(
        "file_naming",
        parse_file_naming(rs.file_naming.as_deref()),
        FileNaming::Stable,
    );
    let port = p.setting("port", rs.port, port_number, None);
    let push = check_push(rs.push.clone(), file_type, base_dir, p);
    let (mut ring, max_drop_ratio) = check_guards(&rs, p);
    let resync_interval = p.take(
        "resync_interval",
        parse_duration(rs.resync_interval.as_deref().unwrap_or("1h")),
        Duration::from_secs(3600),
    );
    let (health, mut observe, weights) = check_observation(&rs, p);
    let (handover, needs_observe) = super::handover::check_settings(
        rs.handover.as_deref(),
        rs.handover_timeout.as_deref(),
        observe.is_some(),
        p,
    );
    if needs_observe {
        observe.get_or_insert_with(Observe::default);
    }
    let affinity = p.setting("affinity", rs.affinity.as_deref(), parse_affinity, None);
    if let Some(label) = &rs.shard_label {
        p.check("shard_label", check_shard_label(label));
    }
    let rules = rs
        .rules
        .as_ref()
        .map(|r| check_rules(r, base_dir, &push, p));
    if weights.is_some() {
        // Only bounded placement uses target weights.
        ring.balance = Balance::Bounded;
    }
    Service {
        source,
        name: rs.name.unwrap_or_default(),
        script: base_dir.join(rs.script.as_deref().unwrap_or(Path::new(""))),
        node_script: rs.node_script.as_ref().map(|n| base_dir.join(n)),
        drop_in: false,
        schedule,
        nodes,
        replicas,
        file_type,
        file_naming,
        port,
        push,
        ring,
        max_drop_ratio,
        max_move_ratio: rs.max_move_ratio,
        resync_interval,
        health,
        observe,
        weights,
        affinity,
        shard_label: rs.shard_label,
        handover,
        rules,
    }
}

/// `name` and `script` (or `source`) are required; the name must suit a
/// directory. The checked `source:` block, if any.
fn check_identity(rs: &RawService, p: &mut Problems) -> Option<super::source::SdBlock> {
    match &rs.name {
        None => p.push("name", "required"),
        Some(n) => p.check("name", check_service_name(n)),
    }
    match (&rs.script, &rs.source) {
        (None, None) => p.push("script", "required (or source:, a Prometheus SD block)"),
        (Some(_), Some(_)) => p.push(
            "source",
            "give script: or source:, not both (a script can call prometheus_sd(#{…}))",
        ),
        _ => {}
    }
    check_source(rs, p)
}

/// `source:`: parsed and checked now, so `check` reports a bad block.
fn check_source(rs: &RawService, p: &mut Problems) -> Option<super::source::SdBlock> {
    let value = rs.source.clone()?;
    match super::source::parse_sd_block(value) {
        Ok((block, _rules)) => Some(block),
        Err(e) => {
            p.push("source", e);
            None
        }
    }
}

/// The ring's load factor and the limits on how much one pass may move
/// or drop: the ring settings and `max_drop_ratio`.
fn check_guards(rs: &RawService, p: &mut Problems) -> (PlacementSettings, f64) {
    let ring = rs.ring.clone().unwrap_or_default();
    if !(ring.load_factor >= 1.0 && ring.load_factor.is_finite()) {
        let message = format!("{} must be >= 1.0", ring.load_factor);
        p.push("ring.load_factor", message);
    }
    if let Some(r) = rs.max_move_ratio {
        p.check("max_move_ratio", fraction(r).map(drop));
    }
    let max_drop_ratio = rs.max_drop_ratio.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&max_drop_ratio) {
        let message = format!("{max_drop_ratio} must be between 0 and 1");
        p.push("max_drop_ratio", message);
    }
    (ring, max_drop_ratio)
}

/// `health:`, `observe:` and `weights:`.
fn check_observation(
    rs: &RawService,
    p: &mut Problems,
) -> (Option<Health>, Option<Observe>, Option<SeriesWeights>) {
    let health = rs.health.as_ref().map(|h| check_health(h, p));
    let mut observe = rs.observe.as_ref().map(|o| check_observe(o, p));
    let weights = rs.weights.as_ref().map(|w| check_weights(w, p));
    if weights.is_some() {
        // Series come from observation.
        observe.get_or_insert_with(Observe::default);
    }
    (health, observe, weights)
}

fn replica_count(r: i64) -> Result<i64, String> {
    in_range(r, 1..=MAX_REPLICAS, |r| {
        if r < 1 {
            format!("replicas must be >= 1 (got {r})")
        } else {
            format!("replicas must be <= {MAX_REPLICAS} (got {r})")
        }
    })
}

fn port_number(n: i64) -> Result<Option<u16>, String> {
    let n = in_range(n, 1..=65535, |n| {
        format!("{n} is not a port number (1-65535)")
    })?;
    Ok(Some(n as u16))
}

fn parse_file_type(text: Option<&str>) -> Result<FileType, String> {
    match text.unwrap_or("json") {
        "json" => Ok(FileType::Json),
        "yaml" | "yml" => Ok(FileType::Yaml),
        other => Err(format!("{other:?} is not json or yaml")),
    }
}

fn parse_file_naming(text: Option<&str>) -> Result<FileNaming, String> {
    match text.unwrap_or("stable") {
        "stable" => Ok(FileNaming::Stable),
        "counted" => Ok(FileNaming::Counted),
        other => Err(format!("{other:?} is not stable or counted")),
    }
}

fn parse_affinity(text: &str) -> Result<Option<Affinity>, String> {
    Affinity::parse(text).map(Some)
}

/// Check `push:`; problems are recorded under `push.<key>`.
fn check_push(
    raw: Option<RawPush>,
    file_type: FileType,
    base_dir: &Path,
    p: &mut Problems,
) -> Push {
    let Some(raw) = raw else {
        return Push::None;
    };
    for key in raw.foreign_keys() {
        let kind = format!("{:?}", raw.kind).to_lowercase();
        p.push(&format!("push.{key}"), format!("not a key of kind {kind}"));
    }
    match raw.kind {
        PushKind::None => Push::None,
        PushKind::Local => {
            let Some(dest) = raw.dest else {
                p.push("push.dest", "required for kind local");
                return Push::None;
            };
            if !dest.contains("{node}") {
                p.push(
                    "push.dest",
                    format!(
                        "{dest:?} must contain {{node}} so that nodes do not overwrite each other"
                    ),
                );
            }
            let dest = if Path::new(&dest).is_absolute() {
                dest
            } else {
                base_dir.join(&dest).to_string_lossy().into_owned()
            };
            Push::Local { dest }
        }
        PushKind::Ansible => Push::Ansible(p.under("push.", |p| {
            check_ansible(raw.ansible(), file_type, base_dir, p)
        })),
    }
}

/// Default `push.forks`: a run uses min(forks, hosts in it), so a fleet up
/// to this size is delivered in one wave of SSH connections.
const DEFAULT_FORKS: i64 = 50;

/// Check `push: {kind: ansible}` (keys without the `push.` prefix).
fn check_ansible(
    raw: RawAnsible,
    file_type: FileType,
    base_dir: &Path,
    p: &mut Problems,
) -> AnsiblePush {
    let playbook = match raw.playbook {
        None => {
            p.push("playbook", "required for kind ansible");
            PathBuf::new()
        }
        Some(pb) => {
            let pb = base_dir.join(pb);
            if !pb.is_file() {
                p.push("playbook", format!("{} is not a file", pb.display()));
            }
            pb
        }
    };
    let dest_sd_file_name = raw
        .dest_sd_file_name
        .unwrap_or_else(|| format!("{{service}}.{}", file_type.ext()));
    p.check("dest_sd_file_name", plain_file_name(&dest_sd_file_name));
    let vars = check_vars(raw.vars, p);
    let forks = in_range(raw.forks.unwrap_or(DEFAULT_FORKS), 1..=1000, |n| {
        format!("{n} must be 1..=1000")
    });
    let forks = p.take("forks", forks, 1) as usize;
    let timeout = p.take(
        "timeout",
        duration_not_zero(
            raw.timeout.as_deref().unwrap_or("120s"),
            "must be more than 0s",
        ),
        Duration::from_secs(120),
    );
    let retries = in_range(raw.retries.unwrap_or(2), 0..=10, |n| {
        format!("{n} must be 0..=10")
    });
    let retries = p.take("retries", retries, 0) as u32;
    let ansible_playbook = match raw.ansible_playbook {
        None => PathBuf::from("ansible-playbook"),
        Some(a) if a.as_os_str().is_empty() => {
            p.push("ansible_playbook", "must not be empty");
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
        tuning: raw.tuning.unwrap_or(true),
    }
}

/// The name an sd file gets on the node: no directory part.
fn plain_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.contains('/')
        || name == "."
        || name == ".."
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "{name:?} must be a plain file name (no '/', not '..')"
        ));
    }
    Ok(())
}

/// Check `vars:` of ansible push: Ansible names, none that promshard sets,
/// values that convert to JSON.
fn check_vars(
    raw: BTreeMap<String, serde_yaml_ng::Value>,
    p: &mut Problems,
) -> BTreeMap<String, serde_json::Value> {
    let mut vars = BTreeMap::new();
    for (k, v) in raw {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            p.push(
                "vars",
                format!("{k:?} is not a valid Ansible variable name"),
            );
        } else if RESERVED_VARS.contains(&k.as_str()) {
            let message = format!("{k:?} is set by promshard and cannot be overridden");
            p.push("vars", message);
        }
        match serde_json::to_value(&v) {
            Ok(j) => {
                vars.insert(k, j);
            }
            Err(e) => p.push("vars", format!("{k:?}: unsupported value: {e}")),
        }
    }
    vars
}

/// A duration key: `default` when unset; the problem (and the default)
/// when it does not parse or is shorter than `min`.
fn duration_key(
    p: &mut Problems,
    key: &str,
    value: &Option<String>,
    default: Duration,
    min: Duration,
) -> Duration {
    p.setting(
        key,
        value.as_deref(),
        |t| duration_at_least(t, min),
        default,
    )
}

/// Check `health:`; problems are recorded under `health.<key>`.
fn check_health(raw: &RawHealth, p: &mut Problems) -> Health {
    let d = Health::default();
    let path = raw.path.clone().unwrap_or(d.path);
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.push(
            "health.path",
            format!("{path:?} must start with '/' and contain no spaces or control characters"),
        );
    }
    let min = Duration::from_millis(10);
    let interval = duration_key(p, "health.interval", &raw.interval, d.interval, min);
    let default_timeout = d.timeout.min(interval);
    let timeout = duration_key(p, "health.timeout", &raw.timeout, default_timeout, min);
    if timeout > interval {
        p.push(
            "health.timeout",
            format!(
                "{:?} must not exceed health.interval ({:?})",
                raw.timeout.as_deref().unwrap_or(""),
                raw.interval.as_deref().unwrap_or("5s")
            ),
        );
    }
    let count = |n| in_range(n, 1..=100, |n| format!("{n} must be between 1 and 100"));
    let mut count = |key, v, default| p.setting(key, v, |n| count(n).map(|n| n as u32), default);
    Health {
        path,
        interval,
        timeout,
        fall: count("health.fall", raw.fall, d.fall),
        rise: count("health.rise", raw.rise, d.rise),
    }
}

/// Check `observe:`; problems are recorded under `observe.<key>`.
fn check_observe(raw: &RawObserve, p: &mut Problems) -> Observe {
    let d = Observe::default();
    let min = Duration::from_millis(100);
    let interval = duration_key(p, "observe.interval", &raw.interval, d.interval, min);
    let default_timeout = d.timeout.min(interval);
    let timeout = duration_key(p, "observe.timeout", &raw.timeout, default_timeout, min);
    let refresh = duration_key(p, "observe.refresh", &raw.refresh, d.refresh, min);
    if timeout > interval {
        p.push(
            "observe.timeout",
            format!("{timeout:?} must not exceed observe.interval ({interval:?})"),
        );
    }
    let api = raw.api.clone().unwrap_or(d.api);
    if !(api.starts_with("http://") || api.starts_with("https://"))
        || api.chars().any(char::is_whitespace)
    {
        p.push(
            "observe.api",
            format!("{api:?} must be an http:// or https:// URL, e.g. \"http://{{node}}\""),
        );
    }
    if raw.job.as_deref().is_some_and(|j| j.is_empty()) {
        p.push("observe.job", "must not be empty");
    }
    Observe {
        interval,
        timeout,
        api,
        job: raw.job.clone(),
        refresh,
    }
}

/// Check `weights:`; problems are recorded under `weights.<key>`.
fn check_weights(raw: &RawWeights, p: &mut Problems) -> SeriesWeights {
    let d = SeriesWeights::default();
    match raw.from.as_deref() {
        Some("series") => {}
        Some(other) => p.push(
            "weights.from",
            format!("{other:?}: the only source is \"series\""),
        ),
        None => p.push("weights.from", "missing; write weights: {from: series}"),
    }
    SeriesWeights {
        smoothing: p.setting("weights.smoothing", raw.smoothing, fraction, d.smoothing),
        threshold: p.setting("weights.threshold", raw.threshold, fraction, d.threshold),
    }
}

impl Config {
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
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                vec![super::serde_error::value_problem(
                    &path,
                    &e.inner().to_string(),
                )]
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
            (
                "source",
                own.source.is_some(),
                "a drop-in's targets come from its own file (it can call prometheus_sd(#{…}))",
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
        let mut p = Problems::default();
        let mut service = p.under("fn service(): ", |p| check_service(raw, &self.base_dir, p));
        // `script` is already resolved (it was found in `scripts_dir`).
        service.script = script.to_path_buf();
        service.drop_in = true;
        p.finish(service)
    }
}

/// Check nodes a script returned (JSON of an array of `"host:port"` strings
/// or `{addr, weight}` maps) exactly like `nodes:` in the config.
pub fn nodes_from_json(value: serde_json::Value) -> Result<Vec<NodeSpec>, String> {
    let raw: Vec<RawNode> = serde_json::from_value(value).map_err(|e| {
        format!("expected an array of \"host:port\" strings or #{{addr, weight}} maps: {e}")
    })?;
    check_nodes(&raw)
}

/// Check `nodes:`; the nodes sorted by address.
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
