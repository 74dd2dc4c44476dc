//! Rendering and writing sd files.
//!
//! Rendering is pure: a node's targets become Prometheus file_sd content
//! (JSON or YAML), targets with identical labels grouped, everything sorted,
//! so the same input gives the same bytes. Writing is atomic: a temp file in
//! the same directory (`.{name}.tmp`, which no `*.json`/`*.yml` glob
//! matches), fsync, rename, fsync of the directory. A reader sees the old
//! file or the new one, never a torn one. Files are created only inside the
//! service's own directory, and only files promshard wrote there (recorded
//! in its state) are ever removed: a directory holding anything else is
//! refused ([`foreign_files`]).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use twox_hash::XxHash3_64;

use crate::config::FileType;
use crate::target::{Labels, Target};

#[derive(Serialize)]
struct Group<'a> {
    targets: Vec<&'a str>,
    labels: GroupLabels<'a>,
}

/// The label every target of one node's file gets with `shard_label:`.
#[derive(Clone, Copy, Debug)]
pub struct ShardLabel<'a> {
    pub name: &'a str,
    /// The node's address, the label's value.
    pub node: &'a str,
}

/// A group's labels as written: the target's own, plus the shard label,
/// which replaces a target label of the same name (promshard decides who
/// scrapes a target, so only it can say which shard that is).
struct GroupLabels<'a> {
    labels: &'a Labels,
    shard: Option<ShardLabel<'a>>,
}

impl Serialize for GroupLabels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(shard) = self.shard else {
            return self.labels.serialize(s);
        };
        let own = self.labels.iter().filter(|(k, _)| *k != shard.name);
        let mut map = s.serialize_map(None)?;
        let mut pending = Some((shard.name, shard.node));
        // Names stay sorted, as in every other group.
        for (k, v) in own {
            if let Some(p) = pending.filter(|p| p.0 < k) {
                map.serialize_entry(p.0, p.1)?;
                pending = None;
            }
            map.serialize_entry(k, v)?;
        }
        if let Some((k, v)) = pending {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Hasher for keys that hash themselves to one `u64` already ([`Labels`]
/// carries its content hash): passes it through instead of re-hashing.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Group a node's targets by label set. Groups come in the order of their
/// first (smallest) address and addresses stay sorted, so the output depends
/// only on content, and grouping is one hash lookup per target instead of
/// sorting label maps.
fn groups<'a>(
    targets: &'a [Target],
    indices: &[u32],
    shard: Option<ShardLabel<'a>>,
) -> Vec<Group<'a>> {
    let mut slot: HashMap<&'a Labels, usize, BuildHasherDefault<PassThrough>> = HashMap::default();
    let mut groups: Vec<Group<'a>> = Vec::new();
    let mut sorted = indices.to_vec();
    sorted.sort_unstable_by(|&a, &b| targets[a as usize].addr.cmp(&targets[b as usize].addr));
    for i in sorted {
        let t = &targets[i as usize];
        let at = *slot.entry(&t.labels).or_insert_with(|| {
            groups.push(Group {
                targets: Vec::new(),
                labels: GroupLabels {
                    labels: &t.labels,
                    shard,
                },
            });
            groups.len() - 1
        });
        groups[at].targets.push(&t.addr);
    }
    groups
}

/// Render one node's file_sd content; `shard` adds its shard label to
/// every target.
pub fn render(
    targets: &[Target],
    indices: &[u32],
    file_type: FileType,
    shard: Option<ShardLabel<'_>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    render_into(&mut out, targets, indices, file_type, shard);
    out
}

/// [`render`] into `out` (cleared first), so one buffer serves every node.
pub fn render_into(
    out: &mut Vec<u8>,
    targets: &[Target],
    indices: &[u32],
    file_type: FileType,
    shard: Option<ShardLabel<'_>>,
) {
    out.clear();
    let groups = groups(targets, indices, shard);
    if groups.is_empty() {
        out.extend_from_slice(b"[]\n");
        return;
    }
    match file_type {
        FileType::Json => render_json(out, &groups),
        FileType::Yaml => {
            // Serializing plain strings and maps cannot fail.
            out.extend_from_slice(
                serde_yaml_ng::to_string(&groups)
                    .unwrap_or_default()
                    .as_bytes(),
            )
        }
    }
}

/// One group per line: readable, diffable and fast to write.
fn render_json(out: &mut Vec<u8>, groups: &[Group<'_>]) {
    out.reserve(64 * groups.iter().map(|g| g.targets.len()).sum::<usize>());
    out.extend_from_slice(b"[\n");
    for (i, g) in groups.iter().enumerate() {
        out.extend_from_slice(b"  ");
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, g);
        out.extend_from_slice(if i + 1 < groups.len() { b",\n" } else { b"\n" });
    }
    out.extend_from_slice(b"]\n");
}

/// Parse file_sd content back into addresses (for `plan`'s movement view).
pub fn parse_addresses(bytes: &[u8], file_type: FileType) -> Result<BTreeSet<String>, String> {
    #[derive(serde::Deserialize)]
    struct OwnedGroup {
        #[serde(default)]
        targets: Vec<String>,
    }
    let groups: Vec<OwnedGroup> = match file_type {
        FileType::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string())?,
        FileType::Yaml => serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())?,
    };
    Ok(groups.into_iter().flat_map(|g| g.targets).collect())
}

/// Content hash used to detect changes (hex xxh3).
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:016x}", XxHash3_64::oneshot(bytes))
}

/// Temp name for `name`: hidden and not ending in the real extension.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

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
    use crate::target::{RawGroup, normalize};

    fn sample() -> Vec<Target> {
        let lab = |e: &str| [("env".to_string(), e.to_string())].into_iter().collect();
        normalize(vec![
            RawGroup {
                index: 0,
                targets: vec!["b:1".into(), "a:1".into()],
                labels: lab("prod"),
                weight: None,
            },
            RawGroup {
                index: 1,
                targets: vec!["c:1".into()],
                labels: lab("dev"),
                weight: None,
            },
        ])
        .targets
    }

    #[test]
    fn json_groups_by_labels_in_address_order() {
        let t = sample();
        let all: Vec<u32> = (0..t.len() as u32).collect();
        let text = String::from_utf8(render(&t, &all, FileType::Json, None)).unwrap();
        assert_eq!(
            text,
            "[\n  {\"targets\":[\"a:1\",\"b:1\"],\"labels\":{\"env\":\"prod\"}},\n  {\"targets\":[\"c:1\"],\"labels\":{\"env\":\"dev\"}}\n]\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(render(&t, &[], FileType::Json, None), b"[]\n");
    }

    #[test]
    fn shard_label_on_every_group_sorted_and_overriding() {
        let t = sample();
        let all: Vec<u32> = (0..t.len() as u32).collect();
        for (name, want) in [
            ("shard", r#"{"env":"prod","shard":"p1:9090"}"#),
            ("a", r#"{"a":"p1:9090","env":"prod"}"#),
            ("env", r#"{"env":"p1:9090"}"#),
        ] {
            let shard = ShardLabel {
                name,
                node: "p1:9090",
            };
            let text = String::from_utf8(render(&t, &all, FileType::Json, Some(shard))).unwrap();
            assert!(text.contains(want), "{name}: {text}");
            assert_eq!(text.matches(&format!("\"{name}\":")).count(), 2, "{text}");
            let yaml = render(&t, &all, FileType::Yaml, Some(shard));
            let back: serde_json::Value = serde_yaml_ng::from_slice(&yaml).unwrap();
            assert_eq!(back[0]["labels"][name], "p1:9090");
        }
    }

    #[test]
    fn yaml_round_trips() {
        let t = sample();
        let all: Vec<u32> = (0..t.len() as u32).collect();
        let bytes = render(&t, &all, FileType::Yaml, None);
        let addrs = parse_addresses(&bytes, FileType::Yaml).unwrap();
        assert_eq!(addrs.into_iter().collect::<Vec<_>>(), ["a:1", "b:1", "c:1"]);
        assert_eq!(parse_addresses(b"[]\n", FileType::Yaml).unwrap().len(), 0);
    }

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
