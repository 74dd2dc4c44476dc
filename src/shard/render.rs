//! Rendering sd files (pure).
//!
//! A node's targets become Prometheus file_sd content (JSON or YAML),
//! targets with identical labels grouped, everything sorted, so the same
//! input gives the same bytes.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;
use twox_hash::XxHash3_64;

use crate::shard::names::FileType;
use crate::shard::target::{Labels, Target};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::target::{RawGroup, normalize};

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
}
