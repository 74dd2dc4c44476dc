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
    /// Unix seconds since the node left the plan (`None` while planned).
    /// With `push: none` a departed node is remembered this way for
    /// [`DEPARTED_RETENTION_S`], so that `/sd` keeps answering it `[]`
    /// after a restart instead of 404 (on a failed refresh Prometheus
    /// keeps its old targets and would scrape them twice).
    pub departed_at: Option<u64>,
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
