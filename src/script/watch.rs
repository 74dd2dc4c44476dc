//! Hot reload: watch script directories, recompile changed scripts into the
//! [`ScriptCache`], and publish what happened as [`ScriptEvent`]s.
//!
//! Editors save in several steps (write a temp file, rename it over the
//! original, touch it again), so raw file-system events are collected until
//! the directory has been quiet for [`DEBOUNCE`], then every touched
//! `*.rhai` path is looked at once: a file that exists and whose content
//! changed is recompiled; a file that disappeared is dropped. Events carry
//! normalized paths (see [`super::cache::normalize`]); the daemon maps them
//! to the services that use the script (see [`ScriptEvent::affects`]) and
//! re-reads the drop-in service list on `Added`/`Removed`.
//!
//! Directories are watched non-recursively: `scripts/examples/` is not a
//! drop-in directory. A directory that does not exist when the watcher
//! starts is skipped with a warning.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ScriptError;
use super::cache::{Reload, ScriptCache, normalize};
use crate::config::{Config, Service};

/// Quiet time after the last file-system event before scripts are reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// What happened to a script file.
#[derive(Debug, Clone)]
pub enum ScriptEvent {
    /// A new script appeared and compiled.
    Added { path: PathBuf },
    /// A known script changed and the new version compiled; it now serves.
    Reloaded { path: PathBuf },
    /// A script changed (or appeared) and does not compile, or cannot be
    /// read; the previous version, if any, keeps serving. A compile error
    /// has file, line and column.
    Failed { path: PathBuf, error: ScriptError },
    /// A script file was removed. Its last good version stays cached: a
    /// service in the config keeps running it, a drop-in stops.
    Removed { path: PathBuf },
}

impl ScriptEvent {
    /// The (normalized) script path.
    pub fn path(&self) -> &Path {
        match self {
            ScriptEvent::Added { path }
            | ScriptEvent::Reloaded { path }
            | ScriptEvent::Failed { path, .. }
            | ScriptEvent::Removed { path } => path,
        }
    }

    /// Whether `service` runs this script (as its script or node script).
    pub fn affects(&self, service: &Service) -> bool {
        let path = self.path();
        normalize(&service.script) == path
            || service
                .node_script
                .as_deref()
                .is_some_and(|n| normalize(n) == path)
    }
}

/// The directories to watch for `config`: `scripts_dir` plus the directory
/// of every configured script and node script; normalized and deduplicated.
pub fn watch_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    dirs.insert(normalize(&config.scripts_dir));
    for s in &config.services {
        for p in std::iter::once(&s.script).chain(s.node_script.as_ref()) {
            if let Some(parent) = normalize(p).parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    dirs.into_iter().collect()
}

fn is_script(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rhai")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// What the watcher last saw of a script file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// Readable, with this content hash.
    Content(u64),
    /// There, but reading it failed this way (permissions, a directory).
    Unreadable(std::io::ErrorKind),
    /// Not there.
    Gone,
}

fn look(path: &Path) -> Seen {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            Seen::Content(h.finish())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::Gone,
        Err(e) => Seen::Unreadable(e.kind()),
    }
}

/// Start watching `dirs`. Changes are compiled into `cache` and reported on
/// `tx` until `cancel` is cancelled (the returned task then ends). Must be
/// called inside a tokio runtime. Fails only if no watcher can be created;
/// a directory that cannot be watched is logged and skipped.
pub fn watch(
    dirs: Vec<PathBuf>,
    cache: Arc<ScriptCache>,
    tx: UnboundedSender<ScriptEvent>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, notify::Error> {
    let (raw_tx, raw_rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            Ok(ev) => {
                for p in ev.paths {
                    let _ = raw_tx.send(p);
                }
            }
            Err(e) => tracing::warn!(error = %e, "script watcher error"),
        })?;
    let watched = watch_each(&mut watcher, &dirs);
    let known = scan(&watched);
    tracing::info!(dirs = ?watched, scripts = known.len(), "watching scripts");
    let reloader = Reloader {
        raw_rx,
        cache,
        known,
        tx,
        cancel,
    };
    Ok(tokio::spawn(reloader.run(watcher)))
}

/// Watch each directory once (normalized); returns those being watched.
fn watch_each(watcher: &mut impl notify::Watcher, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut watched: Vec<PathBuf> = Vec::new();
    for dir in dirs.iter().map(|d| normalize(d)) {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch script directory; changes there need a restart")
            }
        }
    }
    watched
}

/// What the watcher sees of each script at the start, so that only real
/// changes become events (an editor's extra touch or a no-op rename is not
/// one).
fn scan(watched: &[PathBuf]) -> HashMap<PathBuf, Seen> {
    let mut known: HashMap<PathBuf, Seen> = HashMap::new();
    for dir in watched {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for entry in rd.flatten() {
                let p = entry.path();
                if is_script(&p) {
                    known.insert(p.clone(), look(&p));
                }
            }
        }
    }
    known
}

/// The watcher task: raw paths in, debounced and reloaded, events out.
struct Reloader {
    raw_rx: UnboundedReceiver<PathBuf>,
    cache: Arc<ScriptCache>,
    /// What the watcher last saw of each script.
    known: HashMap<PathBuf, Seen>,
    tx: UnboundedSender<ScriptEvent>,
    cancel: CancellationToken,
}

impl Reloader {
    /// Reload each debounced batch until cancelled, the watcher stops, or
    /// nobody listens any more. Holds `watcher` so that it is dropped
    /// (unwatched) when the task ends.
    async fn run(mut self, watcher: impl notify::Watcher) {
        let _watcher = watcher;
        while let Some(pending) = self.next_batch().await {
            let Some(events) = self.reload(pending).await else {
                continue;
            };
            for ev in events {
                if self.tx.send(ev).is_err() {
                    return;
                }
            }
        }
    }

    /// The paths touched until the directories have been quiet for
    /// [`DEBOUNCE`]; `None` when cancelled or the watcher is gone.
    async fn next_batch(&mut self) -> Option<BTreeSet<PathBuf>> {
        let first = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            p = self.raw_rx.recv() => p?,
        };
        let mut pending = BTreeSet::from([first]);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                p = self.raw_rx.recv() => match p {
                    Some(p) => { pending.insert(p); }
                    None => break,
                },
            }
        }
        Some(pending)
    }

    /// Reload the scripts among `pending` off the runtime (reading and
    /// compiling is blocking work); `None` if that task failed.
    async fn reload(&mut self, pending: BTreeSet<PathBuf>) -> Option<Vec<ScriptEvent>> {
        let cache = Arc::clone(&self.cache);
        let batch: Vec<PathBuf> = pending.into_iter().filter(|p| is_script(p)).collect();
        let mut seen = std::mem::take(&mut self.known);
        match tokio::task::spawn_blocking(move || {
            let events = process(&batch, &cache, &mut seen);
            (events, seen)
        })
        .await
        {
            Ok((events, seen)) => {
                self.known = seen;
                Some(events)
            }
            Err(e) => {
                tracing::error!(error = %e, "script reload task failed");
                None
            }
        }
    }
}

/// Look at each touched script once and say what changed. A script that
/// cannot be read (removed, permissions, replaced by a directory) keeps its
/// last good version serving; each such state is reported once, not on
/// every touch.
fn process(
    batch: &[PathBuf],
    cache: &ScriptCache,
    known: &mut HashMap<PathBuf, Seen>,
) -> Vec<ScriptEvent> {
    let mut events = Vec::new();
    for raw in batch {
        let path = normalize(raw);
        let seen = look(&path);
        let previous = known.insert(path.clone(), seen);
        if previous == Some(seen) {
            continue;
        }
        let result = match seen {
            Seen::Gone => {
                known.remove(&path);
                if previous.is_none() && !cache.has_good(&path) {
                    continue;
                }
                cache.reload(&path);
                tracing::warn!(script = %path.display(), kept_previous = cache.has_good(&path), "script removed");
                events.push(ScriptEvent::Removed { path });
                continue;
            }
            Seen::Unreadable(_) | Seen::Content(_) => match cache.reload(&path) {
                Reload::Compiled(_) | Reload::Unchanged(Ok(_)) => Ok(()),
                Reload::Failed(e) | Reload::Unchanged(Err(e)) => Err(e),
                Reload::Missing => {
                    known.remove(&path);
                    continue;
                }
            },
        };
        match result {
            Ok(()) if previous.is_none() => {
                tracing::info!(script = %path.display(), "script added");
                events.push(ScriptEvent::Added { path });
            }
            Ok(()) => {
                tracing::info!(script = %path.display(), "script reloaded");
                events.push(ScriptEvent::Reloaded { path });
            }
            // Logged by whoever receives the event (the daemon, with the
            // reload metric), once.
            Err(error) => events.push(ScriptEvent::Failed { path, error }),
        }
    }
    events
}
