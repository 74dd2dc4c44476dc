//! What the daemon publishes about each service (`/api/v1/services`, the
//! status page, `/sd`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Service;
use crate::membership::NodeStatus;
use crate::observe::{ServiceObservation, TargetState};
use crate::pass::PassReport;
use crate::script::cache::ScriptState;

/// Result of the last pass of a service, for `/api/v1/services`.
#[derive(Debug, Clone, Serialize)]
pub struct LastPass {
    /// When the pass finished (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser")]
    pub finished_at: u64,
    /// `ok`, `failed` (script, plan, I/O or delivery) or `refused` (mass-drop guard).
    pub result: &'static str,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the API shows about one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub script: PathBuf,
    pub schedule: String,
    /// Next cron tick (RFC 3339), when known.
    pub next_run: Option<String>,
    pub passes: u64,
    /// The script version serving and why a newer edit is not.
    pub script_state: ScriptState,
    pub last_pass: Option<LastPass>,
    /// When the last successful pass finished (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser_opt")]
    pub last_success: Option<u64>,
    /// The last successful pass (the plan now in effect).
    pub current: Option<PassReport>,
    /// Per-node health, when the service has `health:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<NodeStatus>>,
    /// Every node any plan of this service has had; `/sd` answers `[]`
    /// (not 404) for those no longer in the plan.
    #[serde(skip)]
    pub nodes_seen: std::collections::BTreeSet<String>,
    /// Audit counts of the last observation (`observe:`), by state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<BTreeMap<TargetState, usize>>,
    /// When the last observation finished (Unix seconds; RFC 3339 in JSON).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::shard::time::ser_opt"
    )]
    pub observed_at: Option<u64>,
    /// Series each node really ingests from the service's targets, as last
    /// observed (next to the planned `weight` of each node in `current`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_series: Option<BTreeMap<String, u64>>,
    /// The last observation (served whole by `/api/v1/services/{name}/audit`).
    #[serde(skip)]
    pub observation: Option<Arc<ServiceObservation>>,
    /// When each node's file last changed: the audit's grace.
    #[serde(skip)]
    pub changed_at: BTreeMap<String, Instant>,
    /// When each node last had its file delivered (Unix seconds), kept for
    /// a node that left the plan (down) too.
    #[serde(skip)]
    pub delivered_at: BTreeMap<String, u64>,
    /// Each configured node's weight (1 when not set or from a script):
    /// the share of series the status page expects on it.
    #[serde(skip)]
    pub node_weights: BTreeMap<String, u32>,
}

impl ServiceStatus {
    /// A service that has not run yet.
    pub fn new(service: &Service) -> Self {
        ServiceStatus {
            name: service.name.clone(),
            script: service.script.clone(),
            schedule: service.schedule.to_string(),
            next_run: None,
            passes: 0,
            script_state: ScriptState::default(),
            last_pass: None,
            last_success: None,
            current: None,
            health: None,
            nodes_seen: Default::default(),
            audit: None,
            observed_at: None,
            observed_series: None,
            observation: None,
            changed_at: BTreeMap::new(),
            delivered_at: BTreeMap::new(),
            node_weights: BTreeMap::new(),
        }
    }
}
