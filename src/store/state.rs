//! What promshard remembers between passes and restarts, per service:
//! the last good target count (for the mass-drop guard), per node its file,
//! the file's content hash and the last delivery, and every file it created
//! in the service directory (cleanup removes those and nothing else). Stored as
//! `<out_dir>/.promshard/<service>.state` (JSON, written atomically; the
//! name ends in `.state` so no Prometheus sd glob ever matches it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::files::write_atomic;

/// Per-node memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    /// File name of the node's last written file.
    pub file: String,
    /// Content hash of that file.
    pub hash: String,
    /// Hash of the content last delivered successfully.
    pub delivered_hash: Option<String>,
    /// Result of the last delivery attempt.
    pub last_result: Option<LastResult>,
    /// Unix seconds of the last successful delivery.
    pub delivered_at: Option<u64>,
    /// Unix seconds since the node left the plan (`None` while planned).
    /// With `push: none` a departed node is remembered this way for
    /// [`DEPARTED_RETENTION_S`], so that `/sd` keeps answering it `[]`
    /// after a restart instead of 404 (on a failed refresh Prometheus
    /// keeps its old targets and would scrape them twice).
    pub departed_at: Option<u64>,
}

/// What last happened to a node's file, as remembered in the state file
/// (the names are the state file's strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastResult {
    /// Delivered; the destination already had this content.
    Ok,
    /// Delivered; the destination changed.
    Changed,
    Failed,
    Unreachable,
    /// Refused under `ha:` (not the leader, or a newer epoch at the node).
    Fenced,
    /// The node left the plan.
    Departed,
    /// Every node of the service was down: deliver again when it is back.
    #[serde(rename = "node_down")]
    NodeDown,
    /// A new `ha:` leader does not know what an earlier one delivered:
    /// deliver again.
    #[serde(rename = "new_leader")]
    NewLeader,
    /// A result this version does not know (a newer promshard wrote it):
    /// treated as not delivered.
    #[serde(other)]
    Unknown,
}

impl LastResult {
    /// Whether the node has its file as last delivered.
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Ok | Self::Changed)
    }
}

/// How long a node that left stays known with `push: none` (one week).
pub const DEPARTED_RETENTION_S: u64 = 7 * 24 * 3600;

/// Per-service memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceState {
    /// Target count of the last successful pass.
    pub targets: usize,
    pub nodes: BTreeMap<String, NodeState>,
    /// Target weights learned from the servers (`weights: {from: series}`),
    /// by address: a restart places exactly as before.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// Files promshard created in the service directory and has not
    /// removed yet, by name, with the node each was for. A name is added
    /// (and saved) before its file is first written, so that after a crash
    /// at any point every file promshard left is still known as its own.
    pub files: BTreeMap<String, String>,
    /// Targets moving between nodes and waiting for their new node to
    /// confirm (see `handover`): a restart finishes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handovers: Vec<crate::shard::handover::Handover>,
    /// Nodes drained by an operator: out of the plan, kept until their
    /// targets' new nodes confirm, then sent an empty file.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub drained: BTreeSet<String>,
    /// The rule set each node has (`rules:`), by node.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, NodeRules>,
}

/// What a node has of a service's rule set (`rules:`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRules {
    /// Hash of the set last delivered successfully.
    pub hash: Option<String>,
    /// Result of the last attempt.
    pub last_result: Option<LastResult>,
    /// Unix seconds of the last successful delivery.
    pub delivered_at: Option<u64>,
}

impl NodeRules {
    /// Whether the node must be sent the set `hash`: it changed, the last
    /// attempt failed, or the periodic resync (`resync_s`) is due.
    pub fn needs(&self, hash: &str, resync_s: u64, now: u64) -> bool {
        self.hash.as_deref() != Some(hash)
            || !self.succeeded()
            || self
                .delivered_at
                .is_none_or(|t| now.saturating_sub(t) >= resync_s)
    }

    /// Whether the last attempt delivered the set.
    pub fn succeeded(&self) -> bool {
        self.last_result.is_some_and(LastResult::succeeded)
    }
}

/// Path of a service's state file.
pub fn state_path(out_dir: &Path, service: &str) -> PathBuf {
    out_dir.join(".promshard").join(format!("{service}.state"))
}

impl ServiceState {
    /// Load the state, or an empty one if there is none yet. A corrupt file
    /// is reported and treated as empty (it only costs a re-delivery).
    pub fn load(out_dir: &Path, service: &str) -> Self {
        Self::load_existing(out_dir, service).unwrap_or_default()
    }

    /// The state, or `None` when there is no usable state file (first run,
    /// lost or corrupt file: reported). Callers that guard against mass
    /// drops must then not assume "zero targets before".
    pub fn load_existing(out_dir: &Path, service: &str) -> Option<Self> {
        let path = state_path(out_dir, service);
        let bytes = std::fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "state file unreadable, starting fresh");
            })
            .ok()
    }

    /// Every file promshard wrote in the service directory, with its node:
    /// [`ServiceState::files`] and each node's last file (the one record
    /// that states saved before `files` existed have).
    pub fn owned(&self) -> BTreeMap<&str, &str> {
        let mut owned: BTreeMap<&str, &str> = self
            .nodes
            .iter()
            .filter(|(_, ns)| !ns.file.is_empty())
            .map(|(node, ns)| (ns.file.as_str(), node.as_str()))
            .collect();
        owned.extend(self.files.iter().map(|(f, n)| (f.as_str(), n.as_str())));
        owned
    }

    /// Take the service's lock, waiting for another promshard process (e.g.
    /// `once` while `run` is up) to finish its pass. Released on drop.
    pub fn lock(out_dir: &Path, service: &str) -> std::io::Result<std::fs::File> {
        let path = out_dir.join(".promshard").join(format!("{service}.lock"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(file)
    }

    /// After a pass: mark nodes that are not `planned` as departed and
    /// decide how long they are remembered. `told` is `Some(nodes that got
    /// their empty file)` when the service delivers, `None` with
    /// `push: none`.
    ///
    /// What a departed node holds is unknown (its old file, the empty one,
    /// or nothing if it lost its disk), so when it returns its file is
    /// delivered even if the content is what it had before. It is forgotten
    /// once it has been sent its empty file or, with nothing to send (nodes
    /// pull `/sd`), after [`DEPARTED_RETENTION_S`], so that it keeps getting
    /// `[]` across restarts.
    pub fn settle_departed(
        &mut self,
        planned: &BTreeSet<String>,
        told: Option<&BTreeSet<&str>>,
        now: u64,
    ) {
        for (node, ns) in self.nodes.iter_mut() {
            if planned.contains(node) {
                ns.departed_at = None;
            } else {
                ns.delivered_hash = None;
                ns.last_result = Some(LastResult::Departed);
                ns.departed_at.get_or_insert(now);
            }
        }
        self.nodes.retain(|node, ns| {
            planned.contains(node)
                || match told {
                    Some(told) => !told.contains(node.as_str()),
                    None => ns
                        .departed_at
                        .is_some_and(|at| now.saturating_sub(at) < DEPARTED_RETENTION_S),
                }
        });
    }

    /// Save atomically.
    pub fn save(&self, out_dir: &Path, service: &str) -> std::io::Result<()> {
        let path = state_path(out_dir, service);
        let dir = path.parent().unwrap_or(out_dir);
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        write_atomic(dir, name, &bytes)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_their_state_file_names() {
        let names = [
            (LastResult::Changed, "\"changed\""),
            (LastResult::NodeDown, "\"node_down\""),
            (LastResult::NewLeader, "\"new_leader\""),
        ];
        for (result, name) in names {
            assert_eq!(serde_json::to_string(&result).unwrap(), name);
            assert_eq!(serde_json::from_str::<LastResult>(name).unwrap(), result);
        }
        let newer: LastResult = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(newer, LastResult::Unknown);
    }

    #[test]
    fn a_node_is_due_rules_when_the_set_changed_it_failed_or_resync_is_due() {
        let hour = 3600;
        let ok = NodeRules {
            hash: Some("h".into()),
            last_result: Some(LastResult::Changed),
            delivered_at: Some(1000),
        };
        assert!(!ok.needs("h", hour, 1010));
        assert!(ok.needs("h2", hour, 1010));
        assert!(ok.needs("h", hour, 1000 + 3600));
        let failed = NodeRules {
            last_result: Some(LastResult::Failed),
            ..ok
        };
        assert!(failed.needs("h", hour, 1010));
        assert!(NodeRules::default().needs("h", hour, 1010));
    }

    #[test]
    fn departed_nodes_are_kept_until_told_or_for_a_week_without_delivery() {
        let planned: BTreeSet<String> = ["a:1".to_string()].into();
        let mut s = ServiceState::default();
        for n in ["a:1", "b:1", "c:1"] {
            s.nodes.insert(
                n.into(),
                NodeState {
                    delivered_hash: Some("h".into()),
                    ..Default::default()
                },
            );
        }
        // Delivering: b got its empty file and goes; c did not and stays,
        // marked so that it is sent its file again when it returns.
        let mut delivering = s.clone();
        delivering.settle_departed(&planned, Some(&["b:1"].into()), 100);
        assert_eq!(delivering.nodes.keys().collect::<Vec<_>>(), ["a:1", "c:1"]);
        let c = &delivering.nodes["c:1"];
        assert_eq!(
            (c.delivered_hash.as_deref(), c.departed_at),
            (None, Some(100))
        );
        assert_eq!(delivering.nodes["a:1"].delivered_hash.as_deref(), Some("h"));

        // Pull only: both stay for a week from when they left, then go.
        let mut pull = s;
        pull.settle_departed(&planned, None, 100);
        pull.settle_departed(&planned, None, 100 + DEPARTED_RETENTION_S - 1);
        assert_eq!(pull.nodes.len(), 3);
        assert_eq!(pull.nodes["b:1"].departed_at, Some(100));
        pull.settle_departed(&planned, None, 100 + DEPARTED_RETENTION_S);
        assert_eq!(pull.nodes.keys().collect::<Vec<_>>(), ["a:1"]);

        // A node that comes back is no longer departed.
        let mut back = ServiceState::default();
        back.nodes.insert(
            "a:1".into(),
            NodeState {
                departed_at: Some(5),
                ..Default::default()
            },
        );
        back.settle_departed(&planned, None, 10);
        assert_eq!(back.nodes["a:1"].departed_at, None);
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ServiceState::load(dir.path(), "s"), ServiceState::default());
        let mut s = ServiceState {
            targets: 5,
            ..Default::default()
        };
        s.nodes.insert(
            "n:1".into(),
            NodeState {
                file: "f.json".into(),
                ..Default::default()
            },
        );
        s.save(dir.path(), "s").unwrap();
        assert_eq!(ServiceState::load(dir.path(), "s"), s);
    }
}
