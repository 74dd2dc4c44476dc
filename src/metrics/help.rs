//! The one list of promshard's metrics: name, type, labels and help text.
//!
//! `/metrics` takes each HELP line from here, and `docs/metrics.md` is
//! this table rendered ([`reference`]; a unit test fails when the page and
//! the list disagree), so the text an operator reads in Prometheus and in
//! the docs never drifts apart.

/// The type of a metric, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's documentation.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// The name after `promshard_`, without `_total`.
    pub name: &'static str,
    pub kind: Kind,
    /// Label names, with their values in brackets where they are a fixed set.
    pub labels: &'static str,
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: Kind,
    labels: &'static str,
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric of promshard, in the order of `docs/metrics.md`.
pub const METRICS: &[MetricDoc] = &[
    doc(
        "build_info",
        Gauge,
        "version, commit",
        "Always 1; its labels name the version and git commit promshard was built from",
    ),
    doc(
        "pass_duration_seconds",
        Histogram,
        "service",
        "Duration of a service pass",
    ),
    doc(
        "passes",
        Counter,
        "service, result (ok, failed, refused, all_nodes_down)",
        "Passes by service and result: ok, failed (a step or a delivery failed), refused (mass-drop guard), all_nodes_down",
    ),
    doc(
        "schedule_interval_seconds",
        Gauge,
        "service",
        "Longest time between two scheduled passes of the service (its cron schedule or @every interval)",
    ),
    doc(
        "last_success_timestamp_seconds",
        Gauge,
        "service",
        "Unix time of the last successful pass; 0 until the first one",
    ),
    doc(
        "targets",
        Gauge,
        "service",
        "Valid targets of a service in its last good pass",
    ),
    doc(
        "invalid_targets",
        Gauge,
        "service",
        "Invalid targets skipped in the last pass",
    ),
    doc(
        "node_targets",
        Gauge,
        "service, node",
        "Targets assigned to a node",
    ),
    doc(
        "script_errors",
        Counter,
        "service, kind (read, compile, runtime, limit, timeout, memory, missing, no_nodes, bad_result)",
        "Failed script runs by service and kind",
    ),
    doc(
        "script_reloads",
        Counter,
        "result (ok, failed)",
        "Script recompilations by result; a failed one keeps the last good version running",
    ),
    doc(
        "config_reloads",
        Counter,
        "result (ok, failed)",
        "Config reloads by result; a failed one keeps the running config",
    ),
    doc(
        "files_written",
        Counter,
        "service",
        "sd files rewritten because their content changed",
    ),
    doc(
        "deliveries",
        Counter,
        "service, node, result (ok, changed, failed, unreachable, skipped-unchanged, fenced)",
        "Deliveries of a node's sd file by result",
    ),
    doc(
        "mass_drop_refusals",
        Counter,
        "service",
        "Passes refused by the mass-drop guard (max_drop_ratio); the last good files stay",
    ),
    doc(
        "node_up",
        Gauge,
        "service, node",
        "1 if the node is in the ring (healthy), 0 if not (health:)",
    ),
    doc(
        "membership_changes",
        Counter,
        "service, direction (up, down)",
        "Nodes entering (up) or leaving (down) the ring on health checks",
    ),
    doc(
        "live_nodes",
        Gauge,
        "service",
        "Nodes in the ring of a health-checked service; 0 means every node is down and the last files are kept",
    ),
    doc(
        "delivery_run_duration_seconds",
        Histogram,
        "service",
        "Duration of one batched delivery run (e.g. ansible-playbook)",
    ),
    doc(
        "node_weight",
        Gauge,
        "service, node",
        "Planned weight of each node: the sum of its targets' weights (expected series with weights: {from: series})",
    ),
    doc(
        "oversized_targets",
        Gauge,
        "service",
        "Targets heavier than a node's fair share of the weight, each placed whole",
    ),
    doc(
        "affinity_groups",
        Gauge,
        "service",
        "Affinity groups placed (affinity:), targets lacking a label of the template included",
    ),
    doc(
        "affinity_ungrouped_targets",
        Gauge,
        "service",
        "Targets lacking a label of the affinity template, each placed by its own address",
    ),
    doc(
        "oversized_groups",
        Gauge,
        "service",
        "Affinity groups heavier than a node's fair share, each placed whole",
    ),
    doc(
        "audit_targets",
        Gauge,
        "service, state (ok, missing, extra, duplicate, down, unknown, pending)",
        "Targets by audit state in the last observation (observe:)",
    ),
    doc(
        "node_series",
        Gauge,
        "service, node",
        "Series the service's targets feed into each node (summed scrape samples after relabelling)",
    ),
    doc(
        "node_head_series",
        Gauge,
        "node",
        "Series in each observed Prometheus's head block, all jobs",
    ),
    doc(
        "observe_errors",
        Counter,
        "service, node",
        "Observations of a node that failed (timeout, refused, bad answer)",
    ),
    doc(
        "observe_duration_seconds",
        Histogram,
        "service",
        "Duration of one observation of every node of a service",
    ),
    doc(
        "rule_files",
        Gauge,
        "service",
        "Rule files in effect for every node of a service (rules:)",
    ),
    doc(
        "rule_files_refused",
        Gauge,
        "service",
        "Rule files the last pass refused (validation failed or unreadable; the last good version stays)",
    ),
    doc(
        "rule_deliveries",
        Counter,
        "service, result",
        "Deliveries of a service's rule set to a node, by result",
    ),
    doc(
        "handover_seconds",
        Histogram,
        "service",
        "How long a moving target was on both its old and its new node",
    ),
    doc(
        "handover_timeouts",
        Counter,
        "service",
        "Handovers ended by handover_timeout, not by the new node's confirmation",
    ),
    doc(
        "handovers_pending",
        Gauge,
        "service",
        "Handovers waiting for the new node to confirm",
    ),
    doc(
        "node_draining",
        Gauge,
        "service, node",
        "1 while a drained node still holds targets, 0 once it holds none",
    ),
    doc(
        "leader",
        Gauge,
        "",
        "1 on the instance that is the elected leader (ha:), else 0",
    ),
    doc(
        "ha_role",
        Gauge,
        "role (leader, standby)",
        "1 for this instance's role in the ha: cluster",
    ),
    doc(
        "ha_epoch",
        Gauge,
        "",
        "The epoch this instance leads with (ha:); absent on a standby",
    ),
    doc(
        "owned_services",
        Gauge,
        "",
        "Services this instance owns and delivers (ha: mode shared)",
    ),
    doc(
        "service_owner",
        Gauge,
        "service, owner",
        "1 for the instance that owns the service, as last seen in etcd (ha: mode shared)",
    ),
];

/// The process metrics (no `promshard_` prefix, as every Prometheus
/// client library names them).
pub const PROCESS: &[MetricDoc] = &[
    doc(
        "process_cpu_seconds",
        Counter,
        "",
        "Total user and system CPU time spent in seconds",
    ),
    doc(
        "process_resident_memory_bytes",
        Gauge,
        "",
        "Resident memory size in bytes",
    ),
    doc(
        "process_virtual_memory_bytes",
        Gauge,
        "",
        "Virtual memory size in bytes",
    ),
    doc(
        "process_start_time_seconds",
        Gauge,
        "",
        "Start time of the process since unix epoch in seconds",
    ),
    doc(
        "process_open_fds",
        Gauge,
        "",
        "Number of open file descriptors",
    ),
    doc(
        "process_max_fds",
        Gauge,
        "",
        "Maximum number of open file descriptors",
    ),
];

/// The help text of `name` (as in [`METRICS`] or [`PROCESS`]).
pub fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .chain(PROCESS)
        .find(|d| d.name == name)
        .map(|d| d.help)
        .unwrap_or_else(|| panic!("metric {name} has no entry in metrics::help"))
}

fn full_name(prefix: &str, d: &MetricDoc) -> String {
    let total = if d.kind == Counter { "_total" } else { "" };
    format!("`{prefix}{}{total}`", d.name)
}

/// The metrics reference page (`docs/metrics.md`), rendered from the lists.
pub fn reference() -> String {
    let mut out = String::from(
        "# Metrics\n\n\
         <!-- Rendered from src/metrics/help.rs by `PROMSHARD_BLESS=1 cargo test --lib metrics`; edit that list, not this page. -->\n\n\
         `GET /metrics` answers in the Prometheus text format 0.0.4 when the\n\
         `Accept` header asks for `text/plain` and not for OpenMetrics, and in\n\
         OpenMetrics 1.0.0 otherwise (a Prometheus server asks for OpenMetrics\n\
         first). Every counter and every per-service series is there, at 0,\n\
         from the first scrape after a service starts, so `increase()` and\n\
         `rate()` see the first event; a service's series go when it is removed.\n\n\
         | metric | type | labels | meaning |\n|---|---|---|---|\n",
    );
    let rows = METRICS
        .iter()
        .map(|d| (full_name("promshard_", d), d))
        .chain(PROCESS.iter().map(|d| (full_name("", d), d)));
    for (name, d) in rows {
        let labels = if d.labels.is_empty() { "—" } else { d.labels };
        out.push_str(&format!(
            "| {name} | {} | {labels} | {} |\n",
            d.kind.as_str(),
            d.help
        ));
    }
    out.push_str(
        "\nPrometheus adds `instance` and `job` to each. The process metrics are\n\
         read from `/proc/self` on each scrape (Linux).\n",
    );
    out
}
