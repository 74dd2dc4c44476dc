//! Prometheus metrics of promshard itself, served at `/metrics`.
//!
//! One [`Metrics`] value owns the registry; the daemon records each pass's
//! report into it with [`Metrics::record_pass`] and friends, so metric names
//! and labels live in this one file. Names follow Prometheus conventions:
//! `_total` for counters, base units (seconds).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::pass::{PassError, PassReport};
use crate::push::DeliveryResult;
use crate::rules::RulesReport;

type LabelSet = Vec<(&'static str, String)>;

fn service(name: &str) -> LabelSet {
    vec![("service", name.to_string())]
}

fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The `result` of a pass (`ok`, `failed`, `refused` by the mass-drop
/// guard, `all_nodes_down`) and its error message, for metrics, logs and
/// the API alike.
pub fn pass_outcome(result: &Result<PassReport, PassError>) -> (&'static str, Option<String>) {
    match result {
        Ok(r) if r.failed_deliveries() == 0 => ("ok", None),
        Ok(r) => (
            "failed",
            Some(format!("{} deliveries failed", r.failed_deliveries())),
        ),
        Err(e @ PassError::MassDrop { .. }) => ("refused", Some(e.to_string())),
        Err(e @ PassError::AllNodesDown { .. }) => ("all_nodes_down", Some(e.to_string())),
        Err(e) => ("failed", Some(e.to_string())),
    }
}

/// Every metric's name (after the `promshard_` prefix) and help text, in
/// the order `/metrics` lists them.
const HELP: &[(&str, &str)] = &[
    ("pass_duration_seconds", "Duration of a service pass"),
    (
        "passes",
        "Passes by service and result (ok, failed, refused)",
    ),
    (
        "targets",
        "Valid targets of a service in its last good pass",
    ),
    ("node_targets", "Targets assigned to a node"),
    (
        "invalid_targets",
        "Invalid targets skipped in the last pass",
    ),
    ("script_errors", "Script failures by service and kind"),
    ("script_reloads", "Script recompilations by result"),
    ("config_reloads", "Config reloads by result"),
    (
        "files_written",
        "sd files rewritten because their content changed",
    ),
    ("deliveries", "Deliveries by service, node and result"),
    (
        "mass_drop_refusals",
        "Passes refused by the mass-drop guard",
    ),
    (
        "last_success_timestamp_seconds",
        "Unix time of the last successful pass",
    ),
    (
        "node_up",
        "1 if the node is in the ring (healthy), 0 if not",
    ),
    (
        "membership_changes",
        "Node membership changes (health checks) by service and direction (up, down)",
    ),
    (
        "live_nodes",
        "Nodes in the ring of a health-checked service; 0 means every node is down and the last files are kept",
    ),
    (
        "delivery_run_duration_seconds",
        "Duration of one batched delivery run (e.g. ansible-playbook)",
    ),
    (
        "node_weight",
        "Planned weight of each node: the sum of its targets' weights (expected series with weights: {from: series})",
    ),
    (
        "oversized_targets",
        "Targets heavier than a node's fair share of the weight, each placed whole",
    ),
    (
        "affinity_groups",
        "Affinity groups placed (affinity:), targets lacking a label of the template included",
    ),
    (
        "affinity_ungrouped_targets",
        "Targets lacking a label of the affinity template, each placed by its own address",
    ),
    (
        "oversized_groups",
        "Affinity groups heavier than a node's fair share, each placed whole",
    ),
    (
        "audit_targets",
        "Targets by audit state (ok, missing, extra, duplicate, down, unknown, pending) in the last observation",
    ),
    (
        "node_series",
        "Series the service's targets feed into each node (summed scrape samples after relabelling)",
    ),
    (
        "node_head_series",
        "Series in each observed Prometheus's head block, all jobs",
    ),
    (
        "observe_errors",
        "Observations of a node that failed (timeout, refused, bad answer)",
    ),
    (
        "observe_duration_seconds",
        "Duration of one observation of every node of a service",
    ),
    (
        "rule_files",
        "Rule files in effect for every node of a service",
    ),
    (
        "rule_files_refused",
        "Rule files the last pass refused (validation failed or unreadable; the last good version stays)",
    ),
    (
        "rule_deliveries",
        "Deliveries of a service's rule set to a node, by result",
    ),
    (
        "handover_seconds",
        "How long a moving target was on both its old and its new node",
    ),
    (
        "handover_timeouts",
        "Handovers ended by handover_timeout, not by the new node's confirmation",
    ),
    (
        "handovers_pending",
        "Handovers waiting for the new node to confirm",
    ),
    (
        "node_draining",
        "1 while a drained node still holds targets, 0 once it holds none",
    ),
    (
        "leader",
        "1 on the instance that is the elected leader (ha:), else 0",
    ),
    (
        "ha_role",
        "1 for this instance's role in the ha: cluster (leader or standby)",
    ),
    (
        "ha_epoch",
        "The epoch this instance leads with (ha:); absent on a standby",
    ),
];

/// Register `metric` under `name` with its text from [`HELP`].
fn register<M: Metric + Clone>(registry: &mut Registry, name: &'static str, metric: M) -> M {
    let help = HELP
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .unwrap_or_else(|| panic!("metric {name} has no HELP entry"));
    registry.register(name, help, metric.clone());
    metric
}

fn histograms() -> Family<LabelSet, Histogram, fn() -> Histogram> {
    Family::new_with_constructor(pass_histogram)
}

/// Every `result` [`pass_outcome`] can give.
const PASS_OUTCOMES: [&str; 4] = ["ok", "failed", "refused", "all_nodes_down"];

/// All metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub pass_duration: Family<LabelSet, Histogram, fn() -> Histogram>,
    pub passes: Family<LabelSet, Counter>,
    pub targets: Family<LabelSet, Gauge>,
    pub node_targets: Family<LabelSet, Gauge>,
    pub invalid_targets: Family<LabelSet, Gauge>,
    pub script_errors: Family<LabelSet, Counter>,
    pub script_reloads: Family<LabelSet, Counter>,
    pub config_reloads: Family<LabelSet, Counter>,
    pub files_written: Family<LabelSet, Counter>,
    pub deliveries: Family<LabelSet, Counter>,
    pub mass_drop_refusals: Family<LabelSet, Counter>,
    pub last_success: Family<LabelSet, Gauge<f64, AtomicU64>>,
    pub node_up: Family<LabelSet, Gauge>,
    pub membership_changes: Family<LabelSet, Counter>,
    pub live_nodes: Family<LabelSet, Gauge>,
    pub delivery_run_duration: Family<LabelSet, Histogram, fn() -> Histogram>,
    pub audit_targets: Family<LabelSet, Gauge>,
    pub node_weight: Family<LabelSet, Gauge>,
    pub oversized_targets: Family<LabelSet, Gauge>,
    pub affinity_groups: Family<LabelSet, Gauge>,
    pub affinity_ungrouped_targets: Family<LabelSet, Gauge>,
    pub oversized_groups: Family<LabelSet, Gauge>,
    pub node_series: Family<LabelSet, Gauge>,
    pub node_head_series: Family<LabelSet, Gauge>,
    pub observe_errors: Family<LabelSet, Counter>,
    pub observe_duration: Family<LabelSet, Histogram, fn() -> Histogram>,
    /// Handovers and drains.
    pub handover: HandoverMetrics,
    pub rules: RuleMetrics,
    /// `ha:` only (absent without it).
    pub leader: Family<LabelSet, Gauge>,
    pub ha_role: Family<LabelSet, Gauge>,
    pub ha_epoch: Family<LabelSet, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("promshard");
        Self {
            pass_duration: register(&mut registry, "pass_duration_seconds", histograms()),
            passes: register(&mut registry, "passes", Family::default()),
            targets: register(&mut registry, "targets", Family::default()),
            node_targets: register(&mut registry, "node_targets", Family::default()),
            invalid_targets: register(&mut registry, "invalid_targets", Family::default()),
            script_errors: register(&mut registry, "script_errors", Family::default()),
            script_reloads: register(&mut registry, "script_reloads", Family::default()),
            config_reloads: register(&mut registry, "config_reloads", Family::default()),
            files_written: register(&mut registry, "files_written", Family::default()),
            deliveries: register(&mut registry, "deliveries", Family::default()),
            mass_drop_refusals: register(&mut registry, "mass_drop_refusals", Family::default()),
            last_success: register(
                &mut registry,
                "last_success_timestamp_seconds",
                Family::default(),
            ),
            node_up: register(&mut registry, "node_up", Family::default()),
            membership_changes: register(&mut registry, "membership_changes", Family::default()),
            live_nodes: register(&mut registry, "live_nodes", Family::default()),
            delivery_run_duration: register(
                &mut registry,
                "delivery_run_duration_seconds",
                histograms(),
            ),
            node_weight: register(&mut registry, "node_weight", Family::default()),
            oversized_targets: register(&mut registry, "oversized_targets", Family::default()),
            affinity_groups: register(&mut registry, "affinity_groups", Family::default()),
            affinity_ungrouped_targets: register(
                &mut registry,
                "affinity_ungrouped_targets",
                Family::default(),
            ),
            oversized_groups: register(&mut registry, "oversized_groups", Family::default()),
            audit_targets: register(&mut registry, "audit_targets", Family::default()),
            node_series: register(&mut registry, "node_series", Family::default()),
            node_head_series: register(&mut registry, "node_head_series", Family::default()),
            observe_errors: register(&mut registry, "observe_errors", Family::default()),
            observe_duration: register(&mut registry, "observe_duration_seconds", histograms()),
            rules: RuleMetrics::new(&mut registry),
            handover: HandoverMetrics::new(&mut registry),
            leader: register(&mut registry, "leader", Family::default()),
            ha_role: register(&mut registry, "ha_role", Family::default()),
            ha_epoch: register(&mut registry, "ha_epoch", Family::default()),
            registry,
        }
    }

    /// Record an observation: audit counts, series per node, errors.
    pub fn record_observation(&self, name: &str, o: &crate::observe::ServiceObservation) {
        self.observe_duration
            .get_or_create(&service(name))
            .observe(o.duration_ms as f64 / 1000.0);
        for (state, n) in &o.audit.counts {
            self.audit_targets
                .get_or_create(&vec![
                    ("service", name.to_string()),
                    ("state", state.as_str().into()),
                ])
                .set(*n as i64);
        }
        for n in &o.nodes {
            let l = vec![("service", name.to_string()), ("node", n.node.clone())];
            match (n.series, &n.error) {
                (Some(series), _) => {
                    self.node_series.get_or_create(&l).set(series as i64);
                }
                (None, Some(_)) => {
                    self.node_series.remove(&l);
                    self.observe_errors.get_or_create(&l).inc();
                }
                (None, None) => {}
            }
            if let Some(head) = n.head_series {
                self.node_head_series
                    .get_or_create(&vec![("node", n.node.clone())])
                    .set(head as i64);
            }
        }
    }

    /// Record a finished pass (successful or not).
    pub fn record_pass(&self, name: &str, seconds: f64, result: &Result<PassReport, PassError>) {
        self.pass_duration
            .get_or_create(&service(name))
            .observe(seconds);
        let (outcome, _) = pass_outcome(result);
        self.passes
            .get_or_create(&vec![
                ("service", name.to_string()),
                ("result", outcome.into()),
            ])
            .inc();
        match result {
            Ok(r) => {
                self.targets
                    .get_or_create(&service(name))
                    .set(r.targets as i64);
                self.invalid_targets
                    .get_or_create(&service(name))
                    .set(r.invalid as i64);
                for seconds in &r.delivery_runs_s {
                    self.delivery_run_duration
                        .get_or_create(&service(name))
                        .observe(*seconds);
                }
                self.files_written
                    .get_or_create(&service(name))
                    .inc_by(r.changed_files() as u64);
                self.oversized_targets
                    .get_or_create(&service(name))
                    .set(r.oversized_count as i64);
                if let Some(rules) = &r.rules {
                    self.rules.record(name, rules);
                }
                if let Some(a) = &r.affinity {
                    let svc = service(name);
                    self.affinity_groups
                        .get_or_create(&svc)
                        .set(a.groups as i64);
                    self.affinity_ungrouped_targets
                        .get_or_create(&svc)
                        .set(a.ungrouped as i64);
                    self.oversized_groups
                        .get_or_create(&svc)
                        .set(a.oversized_count as i64);
                }
                for n in &r.nodes {
                    let node = vec![("service", name.to_string()), ("node", n.node.clone())];
                    self.node_targets.get_or_create(&node).set(n.count as i64);
                    let weight = n.weight.unwrap_or(n.count as u64);
                    self.node_weight.get_or_create(&node).set(weight as i64);
                    if n.delivered
                        && let Some(res) = n.result
                    {
                        let mut l = node.clone();
                        l.push(("result", res.as_str().into()));
                        self.deliveries.get_or_create(&l).inc();
                    }
                }
                if r.failed_deliveries() == 0 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    self.last_success.get_or_create(&service(name)).set(now);
                }
            }
            Err(PassError::MassDrop { .. }) => {
                self.mass_drop_refusals.get_or_create(&service(name)).inc();
            }
            Err(PassError::Script(e)) => {
                self.script_errors
                    .get_or_create(&vec![
                        ("service", name.to_string()),
                        ("kind", e.kind().into()),
                    ])
                    .inc();
            }
            Err(_) => {}
        }
    }

    /// Forget the per-node series of nodes that are no longer planned.
    /// (`node_up` stays: a node out of the ring is still watched, at 0.)
    pub fn forget_node(&self, service_name: &str, node: &str) {
        let l = vec![
            ("service", service_name.to_string()),
            ("node", node.to_string()),
        ];
        self.node_targets.remove(&l);
        self.node_series.remove(&l);
        self.node_weight.remove(&l);
    }

    /// Forget a removed service: its gauges (a stale `last_success` would
    /// page someone), per-node series and per-service counters. Call after
    /// its runner has stopped, so no pass re-creates them.
    pub fn forget_service<'a>(&self, name: &str, nodes: impl IntoIterator<Item = &'a String>) {
        let svc = service(name);
        self.targets.remove(&svc);
        self.invalid_targets.remove(&svc);
        self.last_success.remove(&svc);
        self.live_nodes.remove(&svc);
        self.pass_duration.remove(&svc);
        self.delivery_run_duration.remove(&svc);
        self.files_written.remove(&svc);
        self.mass_drop_refusals.remove(&svc);
        self.oversized_targets.remove(&svc);
        self.affinity_groups.remove(&svc);
        self.affinity_ungrouped_targets.remove(&svc);
        self.oversized_groups.remove(&svc);
        self.rules.forget(name);
        let with = |key, value: &str| vec![("service", name.to_string()), (key, value.to_string())];
        for result in PASS_OUTCOMES {
            self.passes.remove(&with("result", result));
        }
        for kind in crate::script::ScriptError::KINDS {
            self.script_errors.remove(&with("kind", kind));
        }
        for direction in ["up", "down"] {
            self.membership_changes
                .remove(&with("direction", direction));
        }
        self.observe_duration.remove(&svc);
        for state in crate::observe::TargetState::ALL {
            self.audit_targets.remove(&with("state", state.as_str()));
        }
        for node in nodes {
            let l = with("node", node);
            self.node_targets.remove(&l);
            self.node_series.remove(&l);
            self.node_weight.remove(&l);
            self.observe_errors.remove(&l);
            self.node_up.remove(&l);
            for result in crate::push::DeliveryResult::ALL {
                let mut l = l.clone();
                l.push(("result", result.as_str().into()));
                self.deliveries.remove(&l);
            }
        }
    }

    /// Record a membership event: `node_up` of every node, the count of
    /// changes, the live-node gauge; series of unwatched nodes go.
    pub fn membership(&self, e: &crate::membership::Event) {
        let node = |n: &str| vec![("service", e.service.clone()), ("node", n.to_string())];
        for n in &e.removed {
            self.node_up.remove(&node(n));
        }
        for (n, up) in &e.nodes {
            self.node_up.get_or_create(&node(n)).set(i64::from(*up));
        }
        if e.nodes.is_empty() {
            self.live_nodes.remove(&service(&e.service));
        } else {
            self.live_nodes
                .get_or_create(&service(&e.service))
                .set(e.live() as i64);
        }
        for c in &e.changes {
            self.membership_changes
                .get_or_create(&vec![
                    ("service", e.service.clone()),
                    ("direction", if c.up { "up" } else { "down" }.into()),
                ])
                .inc();
        }
    }

    /// Count a script reload (`ok` or `failed`).
    /// The instance's part in the `ha:` cluster.
    pub fn ha(&self, s: &crate::ha::HaStatus) {
        let leader = s.role == crate::ha::Role::Leader;
        self.leader
            .get_or_create(&Vec::new())
            .set(i64::from(leader));
        for role in [crate::ha::Role::Leader, crate::ha::Role::Standby] {
            self.ha_role
                .get_or_create(&vec![("role", role.as_str().to_string())])
                .set(i64::from(s.role == role));
        }
        match s.epoch {
            Some(e) => {
                self.ha_epoch
                    .get_or_create(&Vec::new())
                    .set(i64::try_from(e).unwrap_or(i64::MAX));
            }
            None => {
                self.ha_epoch.remove(&Vec::new());
            }
        }
    }

    pub fn script_reload(&self, result: &'static str) {
        self.script_reloads
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// Count a config reload (`ok` or `failed`).
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The handover metrics.
pub struct HandoverMetrics {
    seconds: Family<LabelSet, Histogram, fn() -> Histogram>,
    timeouts: Family<LabelSet, Counter>,
    pending: Family<LabelSet, Gauge>,
    draining: Family<LabelSet, Gauge>,
}

fn overlap_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 12))
}

impl HandoverMetrics {
    fn new(registry: &mut Registry) -> Self {
        let overlaps: fn() -> Histogram = overlap_histogram;
        Self {
            seconds: register(
                registry,
                "handover_seconds",
                Family::new_with_constructor(overlaps),
            ),
            timeouts: register(registry, "handover_timeouts", Family::default()),
            pending: register(registry, "handovers_pending", Family::default()),
            draining: register(registry, "node_draining", Family::default()),
        }
    }

    /// Record a pass's handovers; `before` is the previous pass's report
    /// (nodes no longer drained lose their gauge).
    pub fn record(
        &self,
        service: &str,
        before: Option<&crate::pass::handover::HandoverReport>,
        r: &crate::pass::handover::HandoverReport,
    ) {
        let svc = vec![("service", service.to_string())];
        self.pending.get_or_create(&svc).set(r.pending as i64);
        self.timeouts.get_or_create(&svc).inc_by(0);
        for e in &r.ended {
            self.seconds.get_or_create(&svc).observe(e.seconds);
            if e.timed_out {
                self.timeouts.get_or_create(&svc).inc();
            }
        }
        let node = |n: &str| vec![("service", service.to_string()), ("node", n.to_string())];
        for d in &r.drained {
            let draining = i64::from(d.targets_left > 0);
            self.draining.get_or_create(&node(&d.node)).set(draining);
        }
        let undrained = before
            .into_iter()
            .flat_map(|b| b.drained.iter())
            .filter(|d| !r.drained.iter().any(|n| n.node == d.node));
        for d in undrained {
            self.draining.remove(&node(&d.node));
        }
    }
}

/// Metrics of rule files (`rules:`): `promshard_rule_files` (files in
/// effect), `promshard_rule_files_refused` (files the last pass refused)
/// and `promshard_rule_deliveries_total{result}` (deliveries to nodes).
pub struct RuleMetrics {
    files: Family<LabelSet, Gauge>,
    refused: Family<LabelSet, Gauge>,
    deliveries: Family<LabelSet, Counter>,
}

fn with_result(name: &str, result: DeliveryResult) -> LabelSet {
    vec![
        ("service", name.to_string()),
        ("result", result.as_str().into()),
    ]
}

impl RuleMetrics {
    fn new(registry: &mut Registry) -> Self {
        Self {
            files: register(registry, "rule_files", Family::default()),
            refused: register(registry, "rule_files_refused", Family::default()),
            deliveries: register(registry, "rule_deliveries", Family::default()),
        }
    }

    /// Record the rules step of a pass.
    fn record(&self, name: &str, r: &RulesReport) {
        self.files
            .get_or_create(&service(name))
            .set(r.files.len() as i64);
        self.refused
            .get_or_create(&service(name))
            .set(r.problems.len() as i64);
        for d in &r.deliveries {
            self.deliveries
                .get_or_create(&with_result(name, d.result))
                .inc();
        }
    }

    /// Drop the series of a removed service.
    fn forget(&self, name: &str) {
        self.files.remove(&service(name));
        self.refused.remove(&service(name));
        for result in DeliveryResult::ALL {
            self.deliveries.remove(&with_result(name, result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_help_entry_is_a_registered_metric() {
        // Empty families are not encoded, so look for a second mention of
        // each name: its registration in `new`.
        let source = include_str!("metrics.rs");
        for (name, _) in HELP {
            assert!(
                source.matches(&format!("\"{name}\"")).count() >= 2,
                "{name} has help text but is never registered"
            );
        }
    }

    #[test]
    fn encodes_with_prefix_and_total_suffix() {
        let m = Metrics::new();
        m.config_reload("ok");
        m.pass_duration.get_or_create(&service("s")).observe(0.2);
        let text = m.encode();
        assert!(
            text.contains("promshard_config_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE promshard_pass_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn a_forgotten_service_leaves_no_series_and_others_stay() {
        let m = Metrics::new();
        let node = |svc: &str| vec![("service", svc.to_string()), ("node", "n:1".to_string())];
        for svc in ["gone", "kept"] {
            m.last_success.get_or_create(&service(svc)).set(1.0);
            m.node_targets.get_or_create(&node(svc)).set(3);
            let mut l = node(svc);
            l.push(("result", "unreachable".into()));
            m.deliveries.get_or_create(&l).inc();
            let e = vec![("service", svc.to_string()), ("kind", "bad_result".into())];
            m.script_errors.get_or_create(&e).inc();
            let p = vec![("service", svc.to_string()), ("result", "refused".into())];
            m.passes.get_or_create(&p).inc();
        }
        m.forget_service("gone", &["n:1".to_string()]);
        let text = m.encode();
        assert!(!text.contains("service=\"gone\""), "{text}");
        for name in [
            "last_success",
            "node_targets",
            "deliveries",
            "script_errors",
            "passes",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.contains(name) && l.contains("service=\"kept\"")),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn delivery_runs_and_affinity_are_observed() {
        let m = Metrics::new();
        let report = PassReport {
            name: "s".into(),
            targets: 0,
            invalid: 0,
            invalid_samples: Vec::new(),
            duplicates: 0,
            replicas: 1,
            nodes: Vec::new(),
            departed: Vec::new(),
            removed: Vec::new(),
            dry_run: false,
            duration_ms: 0,
            phases_ms: Default::default(),
            delivery_runs_s: vec![1.5, 0.5],
            oversized: Vec::new(),
            oversized_count: 0,
            deferred_moves: 0,
            affinity: Some(crate::shard::plan::AffinityPlan {
                template: "{labels.app}".into(),
                groups: 7,
                ungrouped: 2,
                ungrouped_samples: Vec::new(),
                oversized: Vec::new(),
                oversized_count: 1,
                grouping: std::sync::Arc::new(crate::shard::affinity::Groups::new(
                    &[],
                    &crate::shard::affinity::Affinity::parse("{labels.app}").unwrap(),
                )),
            }),
            rules: Some(crate::rules::RulesReport {
                files: Vec::new(),
                problems: vec![crate::rules::RuleProblem {
                    file: "r.yml".into(),
                    line: Some(3),
                    message: "bad".into(),
                }],
                validated_with: "yaml",
                hash: String::new(),
                deliveries: vec![crate::rules::RulesDelivery {
                    node: "n:1".into(),
                    result: crate::push::DeliveryResult::Failed,
                    error: None,
                }],
                departed: Vec::new(),
            }),
            assignment: Default::default(),
            sd: None,
            handover: None,
            plan_hash: String::new(),
        };
        m.record_pass("s", 2.0, &Ok(report));
        let text = m.encode();
        for line in [
            "promshard_affinity_groups{service=\"s\"} 7",
            "promshard_affinity_ungrouped_targets{service=\"s\"} 2",
            "promshard_oversized_groups{service=\"s\"} 1",
            "promshard_rule_files{service=\"s\"} 0",
            "promshard_rule_files_refused{service=\"s\"} 1",
            "promshard_rule_deliveries_total{service=\"s\",result=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        let text = m.encode();
        assert!(
            text.contains("promshard_delivery_run_duration_seconds_count{service=\"s\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("promshard_passes_total{service=\"s\",result=\"ok\"} 1"),
            "{text}"
        );
    }
}
