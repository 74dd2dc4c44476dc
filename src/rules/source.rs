//! The rule files of a service: patterns resolved to files, each checked,
//! and the last good copy of each kept in a store
//! (`<out_dir>/.promshard/rules/<service>/`), which is what nodes get.
//!
//! A source whose content equals its good copy is not validated again, so
//! an unchanged set costs a few reads per pass. A file a glob no longer
//! matches leaves the set; a file named literally that is missing or
//! unreadable is a problem, and its good copy stays (a typo or a
//! half-finished deploy must not unload an alert).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::validate::{check_yaml, promtool_check};
use super::{RuleFile, RuleProblem, Rules};
use crate::shard::names::glob_match;
use crate::shard::render::content_hash;
use crate::store::files::write_atomic;

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Whether `path` is (or would be) one of the files `pattern` names.
pub fn matches(pattern: &Path, path: &Path) -> bool {
    let (Some(pn), Some(n)) = (
        pattern.file_name().and_then(|n| n.to_str()),
        path.file_name().and_then(|n| n.to_str()),
    ) else {
        return false;
    };
    pattern.parent() == path.parent() && !n.starts_with('.') && glob_match(pn, n)
}

/// One rule file a pattern named.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    name: String,
    path: PathBuf,
    /// Its content, or why it could not be read.
    bytes: Result<Vec<u8>, String>,
}

/// Every file the patterns name, in pattern order (a glob's matches
/// sorted), each once; two files of the same name are a problem.
fn resolve(patterns: &[PathBuf]) -> (Vec<Source>, Vec<RuleProblem>) {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut problems = Vec::new();
    for pattern in patterns {
        let name = pattern
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_glob(&name) {
            paths.push(pattern.clone());
            continue;
        }
        let dir = pattern.parent().unwrap_or(Path::new("/"));
        let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && matches(pattern, p))
                .collect(),
            Err(e) => {
                problems.push(RuleProblem {
                    file: pattern.clone(),
                    line: None,
                    message: format!("cannot list {}: {e}", dir.display()),
                });
                Vec::new()
            }
        };
        found.sort();
        paths.extend(found);
    }
    let mut sources: Vec<Source> = Vec::new();
    for path in paths {
        if sources.iter().any(|s| s.path == path) {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(first) = sources.iter().find(|s| s.name == name) {
            problems.push(RuleProblem {
                file: path.clone(),
                line: None,
                message: format!(
                    "same file name as {}: nodes get rule files by name; rename one",
                    first.path.display()
                ),
            });
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read: {e}"));
        sources.push(Source { name, path, bytes });
    }
    (sources, problems)
}

/// Where the good copies of `service`'s rule files are kept.
pub fn store_dir(out_dir: &Path, service: &str) -> PathBuf {
    out_dir.join(".promshard").join("rules").join(service)
}

/// The good copies in a store, by name.
fn read_store(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') {
                return None;
            }
            Some((name, std::fs::read(e.path()).ok()?))
        })
        .collect()
}

/// The set in a store as `(name, content hash)`, by name, and its hash:
/// what `GET /rules/{service}` answers.
pub fn stored_set(dir: &Path) -> (Vec<(String, String)>, String) {
    let files: Vec<(String, String)> = read_store(dir)
        .into_iter()
        .map(|(name, bytes)| (name, content_hash(&bytes)))
        .collect();
    let hash = set_hash(files.iter().map(|(n, h)| (n.as_str(), h.as_str())));
    (files, hash)
}

/// One good copy in a store; `None` for a name that is not a plain file
/// name (no `/`, no `..`, no leading `.`) or not in the store.
pub fn read_stored(dir: &Path, name: &str) -> Option<Vec<u8>> {
    if crate::shard::names::check_file_name(name).is_err() {
        return None;
    }
    std::fs::read(dir.join(name)).ok()
}

/// The rule set in effect after this pass's checks.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Files in effect with their content, by name order of the patterns.
    pub files: Vec<(RuleFile, Vec<u8>)>,
    pub problems: Vec<RuleProblem>,
    pub validated_with: &'static str,
    /// Hash over every file's name and content.
    pub hash: String,
}

/// The hash of a set of files from their `(name, content hash)`, in any
/// order: what the state records per node and `GET /rules/{service}` shows.
pub fn set_hash<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut files: Vec<(&str, &str)> = files.collect();
    files.sort();
    let text: String = files.iter().map(|(n, h)| format!("{n}\0{h}\n")).collect();
    content_hash(text.as_bytes())
}

/// Validate `bytes` of `source` (YAML, then promtool on a private copy of
/// exactly these bytes, so an edit racing the check is never delivered
/// unchecked).
async fn validate(source: &Path, bytes: &[u8], promtool: Option<&Path>) -> Result<(), RuleProblem> {
    check_yaml(source, bytes)?;
    let Some(promtool) = promtool else {
        return Ok(());
    };
    let problem = |message: String| RuleProblem {
        file: source.to_path_buf(),
        line: None,
        message,
    };
    let tmp = tempfile::Builder::new()
        .prefix("promshard-rules-")
        .tempdir()
        .map_err(|e| problem(format!("cannot make a temp dir to check it: {e}")))?;
    let copy = tmp.path().join(source.file_name().unwrap_or_default());
    std::fs::write(&copy, bytes).map_err(|e| problem(format!("{}: {e}", copy.display())))?;
    promtool_check(promtool, &copy).await.map_err(|mut p| {
        p.file = source.to_path_buf();
        p
    })
}

/// Resolve, read and check `rules`; when `write`, make every valid file
/// the new good copy in `store` and drop copies no longer named.
pub async fn prepare(rules: &Rules, store: &Path, write: bool) -> Prepared {
    let promtool = super::validate::find_promtool();
    let (patterns, dir) = (rules.files.clone(), store.to_path_buf());
    let (sources, mut problems, good) = tokio::task::spawn_blocking(move || {
        let (sources, problems) = resolve(&patterns);
        (sources, problems, read_store(&dir))
    })
    .await
    .unwrap_or_default();
    let mut files = Vec::new();
    for s in sources {
        let old = good.get(&s.name);
        let checked = match &s.bytes {
            Err(e) => Err(RuleProblem {
                file: s.path.clone(),
                line: None,
                message: e.clone(),
            }),
            Ok(b) if old == Some(b) => Ok(b.clone()),
            Ok(b) => validate(&s.path, b, promtool.as_deref())
                .await
                .map(|()| b.clone()),
        };
        let (bytes, kept) = match checked {
            Ok(b) => (b, false),
            Err(p) => {
                problems.push(p);
                match old {
                    Some(b) => (b.clone(), true),
                    None => continue,
                }
            }
        };
        let file = RuleFile {
            name: s.name,
            source: s.path,
            hash: content_hash(&bytes),
            kept,
        };
        files.push((file, bytes));
    }
    let prepared = Prepared {
        hash: set_hash(
            files
                .iter()
                .map(|(f, _)| (f.name.as_str(), f.hash.as_str())),
        ),
        files,
        problems,
        validated_with: if promtool.is_some() {
            "promtool"
        } else {
            "yaml"
        },
    };
    if write {
        let (dir, files) = (store.to_path_buf(), prepared.files.clone());
        let saved = tokio::task::spawn_blocking(move || save_store(&dir, &good, &files)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(dir = %store.display(), error = %e, "cannot update the good copies of rule files; nodes still get this pass's set");
        }
    }
    prepared
}

/// Make the store hold exactly `files`.
fn save_store(
    dir: &Path,
    had: &BTreeMap<String, Vec<u8>>,
    files: &[(RuleFile, Vec<u8>)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (f, bytes) in files {
        if had.get(&f.name) != Some(bytes) {
            write_atomic(dir, &f.name, bytes)?;
        }
    }
    for name in had.keys() {
        if !files.iter().any(|(f, _)| &f.name == name) {
            std::fs::remove_file(dir.join(name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_file_names() {
        assert!(glob_match("*.yml", "a.yml"));
        assert!(glob_match("*.yml", ".yml"));
        assert!(!glob_match("*.yml", "a.yaml"));
        assert!(glob_match("app-?.rules.y*ml", "app-1.rules.yaml"));
        assert!(glob_match("*a*b*", "xxaybzz"));
        assert!(!glob_match("a*b", "acbd"));
        assert!(matches(Path::new("/r/*.yml"), Path::new("/r/x.yml")));
        assert!(!matches(Path::new("/r/*.yml"), Path::new("/r/.x.yml")));
        assert!(!matches(Path::new("/r/*.yml"), Path::new("/s/x.yml")));
    }

    #[test]
    fn resolve_sorts_globs_and_refuses_a_second_file_of_the_same_name() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("more")).unwrap();
        for f in ["b.yml", "a.yml", ".a.yml.tmp", "more/a.yml", "c.txt"] {
            std::fs::write(d.join(f), "groups: []\n").unwrap();
        }
        let (sources, problems) =
            resolve(&[d.join("*.yml"), d.join("more/a.yml"), d.join("missing.yml")]);
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a.yml", "b.yml", "missing.yml"]);
        assert!(sources[2].bytes.is_err());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("same file name"),
            "{:?}",
            problems
        );
    }

    #[tokio::test]
    async fn a_refused_edit_keeps_the_good_copy_and_a_dropped_file_leaves_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
        std::fs::create_dir(&src).unwrap();
        let good = "groups:\n  - name: g\n    rules:\n      - record: a\n        expr: up\n";
        std::fs::write(src.join("a.yml"), good).unwrap();
        std::fs::write(src.join("b.yml"), good).unwrap();
        let rules = Rules {
            files: vec![src.join("*.yml")],
            dir: None,
            reload_url: None,
            playbook: None,
        };
        let first = prepare(&rules, &store, true).await;
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(first.files.len(), 2);
        std::fs::write(src.join("a.yml"), "groups:\n  - name: g\n   rules: []\n").unwrap();
        std::fs::remove_file(src.join("b.yml")).unwrap();
        let second = prepare(&rules, &store, true).await;
        assert_eq!(second.problems.len(), 1);
        assert_eq!(second.problems[0].line, Some(3), "{}", second.problems[0]);
        assert_eq!(second.files.len(), 1);
        assert!(second.files[0].0.kept);
        assert_eq!(second.files[0].1, good.as_bytes());
        assert_ne!(first.hash, second.hash);
        let kept: Vec<_> = read_store(&store).into_keys().collect();
        assert_eq!(kept, ["a.yml"]);
    }
}
