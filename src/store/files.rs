//! Writing sd files: atomic, and cleanup that removes only what
//! promshard wrote.
//!
//! Writing is atomic: a temp file in the same directory (`.{name}.tmp`,
//! which no `*.json`/`*.yml` glob matches), fsync, rename, fsync of the
//! directory. A reader sees the old file or the new one, never a torn one.
//! Files are created only inside the service's own directory, and only
//! files promshard wrote there (recorded in its state) are ever removed: a
//! directory holding anything else is refused ([`foreign_files`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::shard::names::temp_name;

/// Write `bytes` to `dir/name` atomically (mode 0644).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(temp_name(name));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An I/O failure with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The entries of `dir` promshard did not write: everything but
/// directories that is neither in `owned` nor the temp file of an `owned`
/// or `planned` name. Sorted; none when `dir` does not exist yet.
pub fn foreign_files(
    dir: &Path,
    owned: &BTreeSet<&str>,
    planned: &BTreeSet<&str>,
) -> Result<Vec<String>, OutputError> {
    let err = |source| OutputError {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir && !owned.contains(name.as_str()) && !is_temp_of(&name, owned, planned) {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Whether `name` is the temp file [`write_atomic`] uses for a name in
/// `a` or `b`.
fn is_temp_of(name: &str, a: &BTreeSet<&str>, b: &BTreeSet<&str>) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .is_some_and(|n| a.contains(n) || b.contains(n))
}

/// Remove the regular files of `dir` that promshard wrote (`owned`, and
/// temp files of `owned` or `keep` names) and that are not in `keep`.
/// Nothing else is ever removed. Returns the removed names, sorted.
pub fn remove_stale(
    dir: &Path,
    owned: &BTreeSet<&str>,
    keep: &BTreeSet<&str>,
) -> Result<Vec<String>, OutputError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutputError { path, source }
    };
    let mut stale = Vec::new();
    for entry in fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let ours = owned.contains(name.as_str()) || is_temp_of(&name, owned, keep);
        if is_file && ours && !keep.contains(name.as_str()) {
            stale.push(name);
        }
    }
    stale.sort();
    for name in &stale {
        let path = dir.join(name);
        fs::remove_file(&path).map_err(err(&path))?;
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_promshard_wrote_are_foreign_free_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for f in ["a.json", "b.json", ".a.json.tmp", ".c.json.tmp", "passwd"] {
            fs::write(dir.join(f), "x").unwrap();
        }
        fs::create_dir(dir.join("sub")).unwrap();
        let owned: BTreeSet<&str> = ["a.json", "b.json"].into();
        let keep: BTreeSet<&str> = ["b.json", "c.json"].into();
        assert_eq!(foreign_files(dir, &owned, &keep).unwrap(), ["passwd"]);
        let removed = remove_stale(dir, &owned, &keep).unwrap();
        assert_eq!(removed, [".a.json.tmp", ".c.json.tmp", "a.json"]);
        for kept in ["b.json", "passwd", "sub"] {
            assert!(dir.join(kept).exists(), "{kept}");
        }
        let missing = dir.join("missing");
        assert!(foreign_files(&missing, &owned, &keep).unwrap().is_empty());
    }
}
