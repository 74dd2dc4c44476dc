//! What promshard remembers between passes and restarts, per service:
//! the last good target count (for the mass-drop guard) and, per node, its
//! file, the file's content hash and the last delivery. Stored as
//! `<out_dir>/.promshard/<service>.state` (JSON, written atomically; the
//! name ends in `.state` so no Prometheus sd glob ever matches it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::write_atomic;

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
    /// Result of the last delivery attempt (`ok`, `changed`, `failed`, …).
    pub last_result: Option<String>,
    /// Unix seconds of the last successful delivery.
    pub delivered_at: Option<u64>,
}

/// Per-service memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceState {
    /// Target count of the last successful pass.
    pub targets: usize,
    pub nodes: BTreeMap<String, NodeState>,
}

/// Path of a service's state file.
pub fn state_path(out_dir: &Path, service: &str) -> PathBuf {
    out_dir.join(".promshard").join(format!("{service}.state"))
}

impl ServiceState {
    /// Load the state, or an empty one if there is none yet. A corrupt file
    /// is reported and treated as empty (it only costs a re-delivery).
    pub fn load(out_dir: &Path, service: &str) -> Self {
        let path = state_path(out_dir, service);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "state file unreadable, starting fresh");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
