//! What one server reported for one job: the data the audit and the
//! weights are computed from (filled by the Prometheus client in
//! `observe::prom`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One active target of the job on one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActiveTarget {
    /// `__address__` as discovered (before relabelling).
    pub address: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    /// RFC 3339 time of the last scrape, if any.
    pub last_scrape: Option<String>,
    /// The last scrape's error, empty when it succeeded.
    pub last_error: String,
    /// The job's scrape interval as the server reports it (e.g. `15s`).
    pub scrape_interval: String,
    /// Samples of the last scrape after relabelling: the series it feeds.
    pub series: Option<u64>,
    /// The target's labels after relabelling, as the server attaches them.
    pub labels: BTreeMap<String, String>,
}

impl ActiveTarget {
    /// A failing scrape; `unknown` (not scraped yet) is not a failure.
    pub fn healthy(&self) -> bool {
        self.health != "down"
    }
}

/// What one server answered for one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeObservation {
    /// The job's active targets, sorted by address.
    pub targets: Vec<ActiveTarget>,
    /// Series in the server's head block (all jobs).
    pub head_series: Option<u64>,
    /// Longest scrape interval seen among the targets.
    #[serde(skip)]
    pub scrape_interval: Option<Duration>,
}

impl NodeObservation {
    /// Series of the job's targets on this server (summed samples).
    pub fn series(&self) -> u64 {
        self.targets.iter().filter_map(|t| t.series).sum()
    }

    /// The active target at `address`.
    pub fn target(&self, address: &str) -> Option<&ActiveTarget> {
        self.targets
            .binary_search_by(|t| t.address.as_str().cmp(address))
            .ok()
            .map(|i| &self.targets[i])
    }
}
