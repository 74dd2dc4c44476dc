//! The compiled-script cache: every script is compiled once, and the last
//! version that compiled keeps serving until a newer one compiles.
//!
//! Passes ask [`ScriptCache::get`] for a script. The first call compiles it;
//! later calls return the cached AST without touching the disk. Changes come
//! in through [`ScriptCache::reload`] (called by the watcher in
//! [`super::watch`]): a new version that compiles replaces the old one; one
//! that does not is remembered as the script's current error while the old
//! version keeps running, so a typo saved in an editor never stops a
//! service. A script that has never compiled is retried on every `get`, so a
//! service waiting for its file starts as soon as a good file appears, even
//! without a watcher.
//!
//! Keys are absolute, lexically normalized paths ([`normalize`]), so that
//! `./scripts/a.rhai`, `scripts/a.rhai` and the path a file-system event
//! reports all name the same entry.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{CompiledScript, ScriptError};

/// The absolute, lexically normalized form of `path` (links not followed,
/// the file need not exist): the key of the cache and of [`super::ScriptEvent`]s.
pub fn normalize(path: &Path) -> PathBuf {
    lexical_normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Resolve `.` and `..` without touching the file system.
fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn source_hash(source: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Entry {
    /// The last version that compiled.
    good: Option<CompiledScript>,
    /// Hash of `good`'s source and when (unix seconds) it compiled.
    good_version: Option<(u64, u64)>,
    /// Hash of the file content last compiled (good or not).
    hash: Option<u64>,
    /// Why that content did not compile (`None`: it is `good`), and since
    /// when (unix seconds).
    error: Option<(ScriptError, u64)>,
}

/// What an operator needs to know about one script: which version serves,
/// and why a newer one does not (shown by `/api/v1/services`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScriptState {
    /// Hash of the serving version's source (16 hex digits), if any compiled.
    pub version: Option<String>,
    /// When the serving version was compiled (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser_opt")]
    pub compiled_at: Option<u64>,
    /// Why the file's current content is not serving (file:line:column).
    pub error: Option<String>,
    /// When that error was first seen (Unix seconds; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::shard::time::ser_opt")]
    pub error_since: Option<u64>,
}

/// What [`ScriptCache::reload`] found.
#[derive(Debug, Clone)]
pub enum Reload {
    /// The content is new and compiled; it now serves.
    Compiled(CompiledScript),
    /// The content is new and did not compile; the previous version (if
    /// any) keeps serving.
    Failed(ScriptError),
    /// Same content as last time: nothing was compiled. `Ok` if that
    /// content is the serving version, `Err` if it failed to compile.
    Unchanged(Result<CompiledScript, ScriptError>),
    /// The file does not exist (any more). A version that compiled before
    /// keeps serving: a script deleted and written back (a deploy, a
    /// checkout) must not stop its service in between.
    Missing,
}

/// Compiled scripts by path; share it as `Arc<ScriptCache>`.
#[derive(Default)]
pub struct ScriptCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl std::fmt::Debug for ScriptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptCache")
            .field("scripts", &self.paths())
            .finish()
    }
}

impl ScriptCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The script to run for `path`: the last version that compiled. Compiles
    /// it on first use (and retries on every call while no version ever
    /// compiled). Cheap when cached: no disk access.
    pub fn get(&self, path: &Path) -> Result<CompiledScript, ScriptError> {
        let key = normalize(path);
        if let Some(good) = self.lock().get(&key).and_then(|e| e.good.clone()) {
            return Ok(good);
        }
        match self.reload(path) {
            Reload::Compiled(s) | Reload::Unchanged(Ok(s)) => Ok(s),
            Reload::Failed(e) | Reload::Unchanged(Err(e)) => Err(e),
            Reload::Missing => Err(ScriptError::Read {
                path: path.to_path_buf(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file",
                )),
            }),
        }
    }

    /// The script `service` runs: [`ScriptCache::get`] of its file, or for
    /// a `source:` service the script made from its block (compiled anew:
    /// it is one line, and it changes only with the config).
    pub fn for_service(
        &self,
        service: &crate::config::Service,
    ) -> Result<CompiledScript, ScriptError> {
        match &service.source {
            Some(block) => {
                CompiledScript::generated(&service.script, &super::sd::source_script(block))
            }
            None => self.get(&service.script),
        }
    }

    /// Read `path` again and compile it if its content changed. A failed
    /// compile, a missing file ([`Reload::Missing`]) or another read error
    /// (`Failed`) keeps the previous version serving.
    pub fn reload(&self, path: &Path) -> Reload {
        let key = normalize(path);
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(entry) = self.lock().get_mut(&key) {
                    // Whatever comes back is compiled, even the same text.
                    entry.hash = None;
                    let error = ScriptError::Read {
                        path: path.to_path_buf(),
                        source: Arc::new(e),
                    };
                    entry.error = Some((error, crate::store::state::unix_now()));
                }
                return Reload::Missing;
            }
            Err(e) => {
                return Reload::Failed(ScriptError::Read {
                    path: path.to_path_buf(),
                    source: Arc::new(e),
                });
            }
        };
        let hash = source_hash(&source);
        {
            let entries = self.lock();
            if let Some(e) = entries.get(&key).filter(|e| e.hash == Some(hash)) {
                return Reload::Unchanged(match (&e.error, &e.good) {
                    (Some((err, _)), _) => Err(err.clone()),
                    (None, Some(good)) => Ok(good.clone()),
                    (None, None) => Err(ScriptError::Missing {
                        path: path.to_path_buf(),
                        function: "targets".into(),
                    }),
                });
            }
        }
        // Compile without holding the lock; scripts are small, but other
        // services' passes should not wait on it.
        let compiled = CompiledScript::compile_source(path, &source);
        let mut entries = self.lock();
        let entry = entries.entry(key).or_default();
        entry.hash = Some(hash);
        let now = crate::store::state::unix_now();
        match compiled {
            Ok(script) => {
                entry.good = Some(script.clone());
                entry.good_version = Some((hash, now));
                entry.error = None;
                Reload::Compiled(script)
            }
            Err(e) => {
                entry.error = Some((e.clone(), now));
                Reload::Failed(e)
            }
        }
    }

    /// Drop `path` from the cache; whether it was there.
    pub fn forget(&self, path: &Path) -> bool {
        self.lock().remove(&normalize(path)).is_some()
    }

    /// Why the current content of `path` does not compile, if it does not
    /// (the previous version may still be serving).
    pub fn last_error(&self, path: &Path) -> Option<ScriptError> {
        self.lock()
            .get(&normalize(path))
            .and_then(|e| e.error.as_ref().map(|(err, _)| err.clone()))
    }

    /// The serving version of `path` and its current error, if any.
    pub fn state(&self, path: &Path) -> ScriptState {
        let entries = self.lock();
        let Some(e) = entries.get(&normalize(path)) else {
            return ScriptState::default();
        };
        ScriptState {
            version: e.good_version.map(|(hash, _)| format!("{hash:016x}")),
            compiled_at: e.good_version.map(|(_, at)| at),
            error: e.error.as_ref().map(|(err, _)| err.to_string()),
            error_since: e.error.as_ref().map(|(_, since)| *since),
        }
    }

    /// Whether a compiled version of `path` is serving.
    pub fn has_good(&self, path: &Path) -> bool {
        self.lock()
            .get(&normalize(path))
            .is_some_and(|e| e.good.is_some())
    }

    /// Every cached path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalized() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(normalize(Path::new("./a/../b.rhai")), cwd.join("b.rhai"));
        assert_eq!(normalize(Path::new("/x/./y/../z")), Path::new("/x/z"));
    }

    #[test]
    fn failed_compile_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.rhai");
        let cache = ScriptCache::new();
        assert!(cache.get(&path).is_err(), "missing file");
        std::fs::write(&path, "fn targets(ctx) { [\"a:1\"] }").unwrap();
        let first = cache.get(&path).unwrap();
        assert!(first.has_fn("targets", 1));
        std::fs::write(&path, "fn targets(ctx) { [\"a:1\" }").unwrap();
        match cache.reload(&path) {
            Reload::Failed(ScriptError::Compile { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(cache.get(&path).is_ok(), "old version keeps serving");
        assert!(cache.last_error(&path).is_some());
        assert!(matches!(cache.reload(&path), Reload::Unchanged(Err(_))));
        std::fs::write(&path, "fn targets(ctx) { [] }\nfn nodes(ctx) { [] }").unwrap();
        assert!(matches!(cache.reload(&path), Reload::Compiled(_)));
        assert!(cache.get(&path).unwrap().has_fn("nodes", 1));
        assert!(cache.last_error(&path).is_none());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(cache.reload(&path), Reload::Missing));
        assert!(
            cache.get(&path).unwrap().has_fn("nodes", 1),
            "still serving"
        );
        assert!(cache.last_error(&path).is_some());
        std::fs::write(&path, "fn targets(ctx) { [] }\nfn nodes(ctx) { [] }").unwrap();
        assert!(matches!(cache.reload(&path), Reload::Compiled(_)));
        assert!(cache.forget(&path));
        assert!(!cache.has_good(&path));
    }
}
