//! Prometheus metrics of promshard itself, served at `/metrics`.
//!
//! One [`Metrics`] value owns the registry; the daemon records each pass's
//! report into it with [`Metrics::record_pass`] and friends, so metric names
//! and labels live in this one file. Names follow Prometheus conventions:
//! `_total` for counters, base units (seconds).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::pass::{PassError, PassReport};
use crate::push::DeliveryResult;
use crate::rules::RulesReport;

pub mod help;
pub mod process;

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

/// Register `metric` under `name` with its text from [`help::METRICS`].
fn register<M: Metric + Clone>(registry: &mut Registry, name: &'static str, metric: M) -> M {
    registry.register(name, help::help(name), metric.clone());
    metric
}

fn histograms() -> Family<LabelSet, Histogram, fn() -> Histogram> {
    Family::new_with_constructor(pass_histogram)
}

/// Every `result` [`pass_outcome`] can give.
const PASS_OUTCOMES: [&str; 4] = ["ok", "failed", "refused", "all_nodes_down"];

/// The formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0, what a Prometheus server asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`promtool check metrics`, curl).
    Text,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header asks for: the text format when it
    /// accepts `text/plain` and not OpenMetrics, else OpenMetrics, as
    /// before (a media range with `q=0` is refused, as RFC 9110 says).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let accepted = |wanted: &str| {
            accept.into_iter().flat_map(|a| a.split(',')).any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case(wanted) && !refused
            })
        };
        if accepted("text/plain") && !accepted("application/openmetrics-text") {
            Format::Text
        } else {
            Format::OpenMetrics
        }
    }
}

/// All metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// The `process_*` metrics, which have no `promshard_` prefix.
    process: Registry,
    pub schedule_interval: Family<LabelSet, Gauge<f64, AtomicU64>>,
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
    /// `ha.mode: shared` only.
    pub owned_services: Family<LabelSet, Gauge>,
    pub service_owner: Family<LabelSet, Gauge>,
    /// The owner series set last, to remove them when the owner changes.
    owners_shown: std::sync::Mutex<BTreeMap<String, String>>,
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
        let (version, commit) = (crate::build::VERSION, crate::build::COMMIT);
        let build_info: Family<LabelSet, Gauge> =
            register(&mut registry, "build_info", Family::default());
        build_info
            .get_or_create(&vec![
                ("version", version.into()),
                ("commit", commit.into()),
            ])
            .set(1);
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        let m = Self {
            pass_duration: register(&mut registry, "pass_duration_seconds", histograms()),
            passes: register(&mut registry, "passes", Family::default()),
            schedule_interval: register(
                &mut registry,
                "schedule_interval_seconds",
                Family::default(),
            ),
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
            owned_services: register(&mut registry, "owned_services", Family::default()),
            service_owner: register(&mut registry, "service_owner", Family::default()),
            owners_shown: std::sync::Mutex::new(BTreeMap::new()),
            registry,
            process,
        };
        for result in ["ok", "failed"] {
            let l = vec![("result", result.into())];
            let _ = m.script_reloads.get_or_create(&l);
            let _ = m.config_reloads.get_or_create(&l);
        }
        m
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
        self.handover.forget(name);
        self.schedule_interval.remove(&svc);
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
            self.handover.draining.remove(&l);
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
        if s.mode == crate::ha::HaMode::Shared {
            self.shared_owners(s);
        }
    }

    /// `promshard_owned_services` and one `promshard_service_owner` series
    /// per service, for its owner only (the old owner's series goes).
    fn shared_owners(&self, s: &crate::ha::HaStatus) {
        self.owned_services
            .get_or_create(&Vec::new())
            .set(i64::try_from(s.owned.len()).unwrap_or(i64::MAX));
        let mut shown = self.owners_shown.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeMap<String, String> = s
            .owners
            .iter()
            .map(|(svc, o)| (svc.clone(), o.instance.clone()))
            .collect();
        for (svc, inst) in shown.iter() {
            if now.get(svc) != Some(inst) {
                self.service_owner.remove(&owner_labels(svc, inst));
            }
        }
        for (svc, inst) in &now {
            self.service_owner
                .get_or_create(&owner_labels(svc, inst))
                .set(1);
        }
        *shown = now;
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

    /// The exposition in `format`: the process metrics, then promshard's.
    pub fn encode(&self, format: Format) -> String {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = match format {
            Format::OpenMetrics => text::encode_registry(&mut out, &self.process)
                .and_then(|()| text::encode_registry(&mut out, &self.registry))
                .and_then(|()| text::encode_eof(&mut out)),
            Format::Text => prometheus_text::encode(&mut out, &self.process)
                .and_then(|()| prometheus_text::encode(&mut out, &self.registry)),
        };
        out
    }

    /// Put every series of `service` whose labels the config fixes on
    /// `/metrics` at once: counters at 0, so `increase()` sees their first
    /// event, and gauges at 0 (or their value) until the first pass sets
    /// them. Idempotent; call when a service starts or changes.
    pub fn init_service(&self, s: &crate::config::Service) {
        let name = s.name.as_str();
        let svc = service(name);
        let with = |key, value: &str| vec![("service", name.to_string()), (key, value.to_string())];
        for result in PASS_OUTCOMES {
            let _ = self.passes.get_or_create(&with("result", result));
        }
        for kind in crate::script::ScriptError::KINDS {
            let _ = self.script_errors.get_or_create(&with("kind", kind));
        }
        for counter in [&self.files_written, &self.mass_drop_refusals] {
            let _ = counter.get_or_create(&svc);
        }
        let _ = self.handover.timeouts.get_or_create(&svc);
        let _ = self.handover.pending.get_or_create(&svc);
        for gauge in [
            &self.targets,
            &self.invalid_targets,
            &self.oversized_targets,
        ] {
            let _ = gauge.get_or_create(&svc);
        }
        let _ = self.last_success.get_or_create(&svc);
        self.schedule_interval
            .get_or_create(&svc)
            .set(s.schedule.longest_interval().as_secs_f64());
        if s.health.is_some() {
            for direction in ["up", "down"] {
                let _ = self
                    .membership_changes
                    .get_or_create(&with("direction", direction));
            }
        }
        if s.rules.is_some() {
            for result in DeliveryResult::ALL {
                let _ = self
                    .rules
                    .deliveries
                    .get_or_create(&with_result(name, result));
            }
        }
        for node in &s.nodes {
            let l = with("node", &node.addr);
            if s.observe.is_some() {
                let _ = self.observe_errors.get_or_create(&l);
            }
            for result in DeliveryResult::ALL {
                let mut l = l.clone();
                l.push(("result", result.as_str().into()));
                let _ = self.deliveries.get_or_create(&l);
            }
        }
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

    /// Drop the series of a removed service (drained nodes go with
    /// `forget_service`'s node list).
    fn forget(&self, service: &str) {
        let svc = vec![("service", service.to_string())];
        self.seconds.remove(&svc);
        self.timeouts.remove(&svc);
        self.pending.remove(&svc);
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

fn owner_labels(service: &str, instance: &str) -> LabelSet {
    vec![
        ("service", service.to_string()),
        ("owner", instance.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_registered() {
        // Families without series are not encoded, so look for each name's
        // registration (whose HELP `register` takes from the list).
        let source = include_str!("mod.rs");
        for d in help::METRICS {
            assert!(
                source.contains(&format!("\"{}\"", d.name)),
                "{} is documented but never registered",
                d.name
            );
        }
        let text = Metrics::new().encode(Format::OpenMetrics);
        for d in help::PROCESS {
            let line = format!("# HELP {} {}.", d.name, d.help);
            assert!(text.contains(&line), "{line}: {text}");
        }
    }

    #[test]
    fn the_metrics_page_is_the_rendered_list() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let want = help::reference();
        if std::env::var_os("PROMSHARD_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/metrics.md differs from src/metrics/help.rs; run PROMSHARD_BLESS=1 cargo test --lib metrics"
        );
    }

    #[test]
    fn the_text_format_names_counter_families_with_total() {
        let m = Metrics::new();
        let text = m.encode(Format::Text);
        assert!(
            text.contains("# HELP promshard_config_reloads_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE promshard_config_reloads_total counter"),
            "{text}"
        );
        assert!(
            text.contains("promshard_config_reloads_total{result=\"failed\"} 0"),
            "{text}"
        );
        assert!(text.contains("promshard_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn accept_headers_choose_the_format_as_prometheus_does() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Format::OpenMetrics),
            (Some("*/*"), Format::OpenMetrics),
            (Some(prometheus), Format::OpenMetrics),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("text/plain"), Format::Text),
            (
                Some("text/plain, application/openmetrics-text;q=0"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0"),
                Format::OpenMetrics,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn encodes_with_prefix_and_total_suffix() {
        let m = Metrics::new();
        m.config_reload("ok");
        m.pass_duration.get_or_create(&service("s")).observe(0.2);
        let text = m.encode(Format::OpenMetrics);
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
        let text = m.encode(Format::OpenMetrics);
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
            epoch: None,
            placement_notes: Default::default(),
        };
        m.record_pass("s", 2.0, &Ok(report));
        let text = m.encode(Format::OpenMetrics);
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
        let text = m.encode(Format::OpenMetrics);
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
