//! `rules:` (top level, in `defaults:` or per service): which rule files
//! the `rules` module checks and delivers to every node of a service, and
//! how.
//!
//! Written as a list of files, or as a map with the delivery settings too.
//! A service's list is the inherited one (the top level's and `defaults:`)
//! followed by its own files; its own settings win.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Push;
use super::validate::Problems;

/// `rules:` as written: a list of files, or a map with the delivery
/// settings too.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RawRules {
    files: Vec<String>,
    dir: Option<String>,
    reload_url: Option<String>,
    playbook: Option<PathBuf>,
}

/// The map form of `rules:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesMap {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    reload_url: Option<String>,
    #[serde(default)]
    playbook: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for RawRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawRules;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of rule files, or a map with files, dir, reload_url, playbook")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<RawRules, A::Error> {
                let files = Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(a))?;
                Ok(RawRules {
                    files,
                    ..RawRules::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<RawRules, A::Error> {
                let m = RawRulesMap::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                Ok(RawRules {
                    files: m.files,
                    dir: m.dir,
                    reload_url: m.reload_url,
                    playbook: m.playbook,
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// A service's rules after inheritance: `default` (the top-level `rules:`
/// and `defaults: rules:`) first, then its own files; its own settings win.
pub(super) fn inherit(own: Option<RawRules>, default: &Option<RawRules>) -> Option<RawRules> {
    let Some(default) = default else { return own };
    let Some(own) = own else {
        return Some(default.clone());
    };
    let mut files = default.files.clone();
    files.extend(own.files.into_iter().filter(|f| !default.files.contains(f)));
    Some(RawRules {
        files,
        dir: own.dir.or_else(|| default.dir.clone()),
        reload_url: own.reload_url.or_else(|| default.reload_url.clone()),
        playbook: own.playbook.or_else(|| default.playbook.clone()),
    })
}

/// Checked `rules:` of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Absolute paths; the file-name part may hold `*` and `?`.
    pub files: Vec<PathBuf>,
    /// Each node's rules directory: `{node}` and `{service}` are filled in.
    /// Absolute (resolved against the config with `push: local`).
    pub dir: Option<String>,
    /// POSTed after a node's rule files changed; `{node}` is filled in.
    pub reload_url: Option<String>,
    /// `push: ansible`: the playbook that delivers rule files.
    pub playbook: Option<PathBuf>,
}

/// Check one `rules.files` entry: `*` and `?` only in the file name.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("names no file")?;
    if name.starts_with('.') {
        return Err("a file name starting with '.' is never delivered".into());
    }
    let dir = path.parent().map(Path::to_string_lossy).unwrap_or_default();
    if dir.contains(['*', '?']) {
        return Err("glob characters (* ?) are allowed in the file name only".into());
    }
    Ok(())
}

/// Check `rules:` against the service's `push`; problems are recorded
/// under `rules.<key>`.
pub(super) fn check_rules(raw: &RawRules, base_dir: &Path, push: &Push, p: &mut Problems) -> Rules {
    if raw.files.is_empty() {
        p.push("rules.files", "list at least one rule file or glob");
    }
    let mut files = Vec::new();
    for f in &raw.files {
        match check_pattern(f) {
            Ok(()) => files.push(base_dir.join(f)),
            Err(e) => p.push("rules.files", format!("{f:?}: {e}")),
        }
    }
    let dir = check_dir(raw.dir.as_deref(), base_dir, push, p);
    if let Some(u) = &raw.reload_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        p.push(
            "rules.reload_url",
            format!("{u:?}: use an http:// or https:// URL, e.g. http://{{node}}/-/reload"),
        );
    }
    let playbook = match push {
        Push::Ansible(a) => Some(
            raw.playbook
                .as_ref()
                .map(|pb| base_dir.join(pb))
                .unwrap_or_else(|| a.playbook.with_file_name("push_rules.yml")),
        ),
        _ => {
            if raw.playbook.is_some() {
                p.push("rules.playbook", "only with push: ansible");
            }
            None
        }
    };
    Rules {
        files,
        dir,
        reload_url: raw.reload_url.clone(),
        playbook,
    }
}

/// `rules.dir`: required when promshard delivers, absolute on the node
/// with Ansible, resolved against the config with `push: local`.
fn check_dir(dir: Option<&str>, base_dir: &Path, push: &Push, p: &mut Problems) -> Option<String> {
    let dir = match (dir, push) {
        (None, Push::Local { .. } | Push::Ansible(_)) => {
            p.push(
                "rules.dir",
                "required with push local or ansible: the directory each node's Prometheus reads rule_files from, e.g. /etc/prometheus/rules/{service}",
            );
            None
        }
        (Some(d), Push::Local { .. }) => Some(base_dir.join(d).to_string_lossy().into_owned()),
        (Some(d), Push::Ansible(_)) if !d.starts_with('/') => {
            p.push(
                "rules.dir",
                format!("{d:?}: must be absolute (a path on the node)"),
            );
            None
        }
        (d, _) => d.map(String::from),
    };
    if let Some(d) = &dir
        && Path::new(d)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        p.push("rules.dir", format!("{d:?} contains '..'"));
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawRules {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// The keys `check_rules` records problems under, or the checked rules.
    fn check(raw: &RawRules, push: &Push) -> Result<Rules, Vec<String>> {
        let mut p = Problems::default();
        let rules = check_rules(raw, Path::new("/etc/promshard"), push, &mut p);
        p.finish(rules)
            .map_err(|list| list.into_iter().map(|c| c.location).collect())
    }

    #[test]
    fn list_and_map_forms_parse_and_unknown_keys_are_named() {
        assert_eq!(raw("[a.yml, 'r/*.yml']").files, ["a.yml", "r/*.yml"]);
        let m = raw("{files: [a.yml], dir: /r, reload_url: 'http://{node}/-/reload'}");
        assert_eq!(m.dir.as_deref(), Some("/r"));
        let e = serde_yaml_ng::from_str::<RawRules>("{files: [a], dirs: x}").unwrap_err();
        assert!(e.to_string().contains("unknown field `dirs`"), "{e}");
        let j: RawRules = serde_json::from_value(serde_json::json!(["x.yml"])).unwrap();
        assert_eq!(j.files, ["x.yml"]);
    }

    #[test]
    fn inherited_files_come_first_own_settings_win() {
        let top = Some(raw(
            "{files: [common.yml], dir: /top, reload_url: 'http://{node}/-/reload'}",
        ));
        let own = raw("{files: [own.yml, common.yml], dir: /own}");
        let r = inherit(Some(own), &top).unwrap();
        assert_eq!(r.files, ["common.yml", "own.yml"]);
        assert_eq!(r.dir.as_deref(), Some("/own"));
        assert_eq!(r.reload_url.as_deref(), Some("http://{node}/-/reload"));
        assert_eq!(inherit(None, &top), top);
        assert_eq!(inherit(None, &None), None);
    }

    #[test]
    fn check_names_each_bad_key() {
        let local = Push::Local {
            dest: "/x/{node}.json".into(),
        };
        let e = check(&raw("['r/*/x.yml']"), &local).unwrap_err();
        assert_eq!(e, ["rules.files", "rules.dir"]);
        let e = check(
            &raw("{files: [a.yml], dir: d, reload_url: 'ftp://x'}"),
            &local,
        )
        .unwrap_err();
        assert_eq!(e, ["rules.reload_url"]);
        let ok = check(&raw("{files: ['r/*.yml'], dir: 'n/{node}'}"), &local).unwrap();
        assert_eq!(ok.files, [PathBuf::from("/etc/promshard/r/*.yml")]);
        assert_eq!(ok.dir.as_deref(), Some("/etc/promshard/n/{node}"));
        // Pull only: no directory needed.
        assert!(check(&raw("[a.yml]"), &Push::None).is_ok());
    }

    #[test]
    fn patterns_glob_the_file_name_only() {
        assert!(check_pattern("rules/*.yml").is_ok());
        assert!(check_pattern("rules/*/x.yml").is_err());
        assert!(check_pattern("rules/.hidden.yml").is_err());
    }
}
