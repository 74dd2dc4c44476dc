//! Why a pass failed, and what it left on disk.

use std::path::PathBuf;

use crate::script::ScriptError;
use crate::shard::plan::PlanError;
use crate::store::files::OutputError;

/// Why a pass failed. Files are untouched unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "refusing to drop from {previous} to {now} targets (more than max_drop_ratio {max_drop_ratio}); files kept; use --force or raise max_drop_ratio if this is intended"
    )]
    MassDrop {
        previous: usize,
        now: usize,
        max_drop_ratio: f64,
    },
    #[error("writing files: {0}")]
    Output(#[from] OutputError),
    #[error("saving state {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "files written and delivered, but saving the state {path} failed: {source}; the next pass delivers them again"
    )]
    StateNotSaved {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir}: holds {} file(s) promshard did not write ({}); refusing to write or clean up there, nothing changed: move them away or set another out_dir (files promshard wrote are recorded in {state})",
        files.len(),
        sample(files),
        dir = dir.display(),
        state = state.display()
    )]
    ForeignFiles {
        dir: PathBuf,
        files: Vec<String>,
        state: PathBuf,
    },
    #[error("internal task failed: {0}")]
    Join(String),
    #[error(
        "all {nodes} nodes are down (health checks); last files and deliveries kept, not re-planning"
    )]
    AllNodesDown { nodes: usize },
}

impl PassError {
    /// Whether every file is as the last good pass left it (false when
    /// the pass failed part-way through writing, or after it).
    pub fn files_kept(&self) -> bool {
        !matches!(self, PassError::Output(_) | PassError::StateNotSaved { .. })
    }
}

/// The first few of `names`, for a message.
fn sample(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(", …");
    }
    text
}
