//! The file step of a pass: take the service's lock, load its state,
//! refuse a directory holding files promshard did not write, then render
//! and write each node's file and remove stale ones.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::PassError;
use crate::shard::names::FileType;
use crate::shard::plan::{NodePlan, Plan};
use crate::shard::render::{content_hash, parse_addresses, render_into};
use crate::shard::target::Target;
use crate::store::files::{self, OutputError};
use crate::store::state::{ServiceState, state_path};

/// The service's state, read under its lock (held until the pass ends).
pub(super) struct Guarded {
    /// `None` in a dry run, which writes nothing.
    pub lock: Option<File>,
    pub state: ServiceState,
}

/// Take the lock (one pass per service across processes too), read the
/// state, and check the directory for files promshard did not write.
/// Blocking.
pub(super) fn guard(
    out_dir: &Path,
    name: &str,
    planned: &BTreeMap<String, String>,
    write: bool,
) -> Result<Guarded, PassError> {
    let lock = if write {
        let lock = ServiceState::lock(out_dir, name).map_err(|source| PassError::State {
            path: out_dir.join(".promshard").join(format!("{name}.lock")),
            source,
        })?;
        Some(lock)
    } else {
        None
    };
    let state = ServiceState::load_existing(out_dir, name).unwrap_or_default();
    let owned: BTreeSet<&str> = state.owned().into_keys().collect();
    let planned: BTreeSet<&str> = planned.keys().map(String::as_str).collect();
    let dir = out_dir.join(name);
    let foreign = files::foreign_files(&dir, &owned, &planned)?;
    if !foreign.is_empty() {
        return Err(PassError::ForeignFiles {
            dir,
            files: foreign,
            state: state_path(out_dir, name),
        });
    }
    Ok(Guarded { lock, state })
}

/// Record the names about to be written before writing them, so that a
/// crash part-way still leaves every file known as promshard's own.
/// Blocking.
pub(super) fn record_names(
    out_dir: &Path,
    name: &str,
    state: &mut ServiceState,
    planned: &BTreeMap<String, String>,
) -> Result<(), PassError> {
    let new_names = planned
        .iter()
        .any(|(file, node)| state.files.get(file) != Some(node));
    if !new_names {
        return Ok(());
    }
    state.files.extend(planned.clone());
    state
        .save(out_dir, name)
        .map_err(|source| PassError::State {
            path: state_path(out_dir, name),
            source,
        })
}

/// What [`write_files`] produced for one node.
pub(super) struct NodeFile {
    pub hash: String,
    pub moved_in: usize,
    pub moved_out: usize,
    /// The file was (re)written.
    pub written: bool,
}

/// What [`write_files`] did.
pub(super) struct Emitted {
    pub files: Vec<NodeFile>,
    pub removed: Vec<String>,
    pub render_ms: f64,
    pub write_ms: f64,
}

/// How a node's address set changes from `old` (the content of the file it
/// had, if readable) to `next` (the addresses of its new file).
fn node_movement(next: &HashSet<&str>, old: Option<&[u8]>, file_type: FileType) -> (usize, usize) {
    let now = old
        .and_then(|b| parse_addresses(b, file_type).ok())
        .unwrap_or_default();
    (
        next.iter().filter(|a| !now.contains(**a)).count(),
        now.iter().filter(|a| !next.contains(a.as_str())).count(),
    )
}

/// What the files of one pass are written against: the service
/// directory, each node's old file name (from the state), the files
/// promshard wrote there (file → node) and the names planned now.
struct Files<'a> {
    dir: &'a Path,
    old: &'a BTreeMap<String, String>,
    owned: &'a BTreeMap<String, String>,
    planned: BTreeSet<&'a str>,
    /// A node's new file carries the name another node's old file had
    /// (custom file names): every old file is read before any is written.
    shared_name: bool,
}

fn io_err(path: PathBuf) -> impl FnOnce(std::io::Error) -> OutputError {
    move |source| OutputError { path, source }
}

impl Files<'_> {
    fn read_old(&self, node: &str) -> Option<Vec<u8>> {
        self.old
            .get(node)
            .and_then(|f| std::fs::read(self.dir.join(f)).ok())
    }

    /// Write `n`'s file if its content changed; `prev` is the content of
    /// its old file. Returns whether it was written.
    ///
    /// A node has one file at every instant: when its name changes, its
    /// old file is renamed to the new name before the new content replaces
    /// it, and files a crash left under other names for it go as soon as it
    /// has one.
    fn write_node(
        &self,
        n: &NodePlan,
        bytes: &[u8],
        prev: Option<Vec<u8>>,
        removed: &mut Vec<String>,
    ) -> Result<bool, OutputError> {
        let path = self.dir.join(&n.file);
        let mut current = if self.old.get(&n.node) == Some(&n.file) {
            prev
        } else {
            std::fs::read(&path).ok()
        };
        let renamed_from = self.old.get(&n.node).filter(|f| **f != n.file);
        if let (None, false, Some(from)) = (&current, self.shared_name, renamed_from) {
            match std::fs::rename(self.dir.join(from), &path) {
                Ok(()) => current = std::fs::read(&path).ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(self.dir.join(from))(e)),
            }
        }
        let had_file = current.is_some();
        if had_file {
            self.drop_leftovers(n, removed)?;
        }
        let written = current.as_deref() != Some(bytes);
        if written {
            files::write_atomic(self.dir, &n.file, bytes).map_err(io_err(path))?;
        }
        if !had_file {
            self.drop_leftovers(n, removed)?;
        }
        Ok(written)
    }

    /// Remove `n`'s files under other names (only after a crash, or when
    /// the rename found nothing): called while the node still has a file,
    /// or right after it got one.
    fn drop_leftovers(&self, n: &NodePlan, removed: &mut Vec<String>) -> Result<(), OutputError> {
        if self.shared_name {
            return Ok(());
        }
        let leftovers = self.owned.iter().filter(|(f, node)| {
            **node == n.node && **f != n.file && !self.planned.contains(f.as_str())
        });
        for (f, _) in leftovers {
            match std::fs::remove_file(self.dir.join(f)) {
                Ok(()) => removed.push(f.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(self.dir.join(f))(e)),
            }
        }
        Ok(())
    }
}

/// The addresses of `n`'s targets.
fn address_set<'a>(targets: &'a [Target], n: &NodePlan) -> HashSet<&'a str> {
    n.targets
        .iter()
        .map(|&i| &*targets[i as usize].addr)
        .collect()
}

/// Render every node's file, one at a time, hash it, count how its
/// addresses moved against the file the node had (from `old`: node → file
/// name, per the state) and, when `write`, write it if its content changed
/// and remove stale files (only names in `owned`: file → node, the files
/// promshard wrote). Movement needs no parsing when a node's file is
/// unchanged (the usual case). Only one file's content is in memory at once.
/// (When a script's names move between nodes, every old file is read first
/// and stale ones go at the end.)
pub(super) fn write_files(
    dir: &Path,
    targets: &[Target],
    plan: &Plan,
    old: &BTreeMap<String, String>,
    owned: &BTreeMap<String, String>,
    write: bool,
) -> Result<Emitted, OutputError> {
    let started = Instant::now();
    let file_type = plan.file_type;
    if write {
        std::fs::create_dir_all(dir).map_err(io_err(dir.to_path_buf()))?;
    }
    let shared_name = plan
        .nodes
        .iter()
        .any(|n| old.iter().any(|(node, f)| *f == n.file && *node != n.node));
    let files = Files {
        dir,
        old,
        owned,
        planned: plan.nodes.iter().map(|n| n.file.as_str()).collect(),
        shared_name,
    };
    let early: Option<Vec<(usize, usize)>> = (write && shared_name).then(|| {
        plan.nodes
            .iter()
            .map(|n| {
                node_movement(
                    &address_set(targets, n),
                    files.read_old(&n.node).as_deref(),
                    file_type,
                )
            })
            .collect()
    });
    let mut render_time = Duration::ZERO;
    let mut bytes = Vec::new();
    let mut out = Vec::with_capacity(plan.nodes.len());
    let mut removed = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let t = Instant::now();
        render_into(&mut bytes, targets, &n.targets, file_type, plan.shard_of(n));
        render_time += t.elapsed();
        let prev = if early.is_some() {
            None
        } else {
            files.read_old(&n.node)
        };
        let (moved_in, moved_out) = match &early {
            Some(moves) => moves[i],
            None if prev.as_deref() == Some(bytes.as_slice()) => (0, 0),
            None => node_movement(&address_set(targets, n), prev.as_deref(), file_type),
        };
        let written = write && files.write_node(n, &bytes, prev, &mut removed)?;
        out.push(NodeFile {
            hash: content_hash(&bytes),
            moved_in,
            moved_out,
            written,
        });
    }
    if write {
        let owned: BTreeSet<&str> = owned.keys().map(String::as_str).collect();
        removed.extend(files::remove_stale(dir, &owned, &files.planned)?);
        removed.sort();
    }
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    Ok(Emitted {
        files: out,
        removed,
        render_ms: ms(render_time),
        write_ms: ms(started.elapsed().saturating_sub(render_time)),
    })
}
