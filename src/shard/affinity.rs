//! Affinity: targets that belong together are scraped by the same server.
//!
//! Sharding by target breaks what users do next with the data: a recording
//! rule `sum by (app) (up)` or an alert `absent(up{app="billing"})` sees
//! only the part of `app` its own server scrapes. With
//! `affinity: "{labels.app}"` every target gets a *group key* built from its
//! labels and address, and all targets with one key go to the same node(s)
//! (with `replicas`, the same set of nodes).
//!
//! Pure, like `ring` and `plan`. Placement does not learn anything new: the
//! targets are grouped by key ([`Groups::new`]), each group is placed as
//! ONE key of the ring — hashed by its key, weighing the sum of its
//! targets' weights (its size when targets are unweighted) — through the
//! same consistent or bounded placement, and the groups' nodes are
//! expanded back to their targets ([`Groups::expand`]). So everything the
//! ring guarantees for keys holds for groups: exactly `replicas` nodes per
//! group; a node leaving moves only its groups, a node joining takes about
//! 1/N of them and nothing moves between the others (consistent mode);
//! bounded mode keeps every node under `load_factor ×` its share as long as
//! groups are small against a share. A group heavier than a node's fair
//! share cannot be balanced without splitting it, which would defeat its
//! purpose: the ring places it whole (in bounded mode on its own first
//! choice, where the lighter groups flow around it) and the plan lists it
//! as oversized.
//!
//! A target whose template names a label it lacks is *ungrouped*: it is
//! placed by its own address, exactly where it would go without affinity,
//! and counted, so a missing label never gathers unrelated targets into one
//! giant "empty" group.

use std::collections::HashMap;

use crate::shard::placement::hash_key;
use crate::shard::target::{Target, check_label_name};
use crate::shard::template::Template;

/// A checked `affinity:` template: `{labels.<name>}`, `{host}` (the address
/// without its port), `{address}`, literal text between.
#[derive(Clone, Debug, PartialEq)]
pub struct Affinity {
    text: String,
    template: Template,
}

/// What one placeholder reads.
enum Placeholder<'a> {
    Label(&'a str),
    Host,
    Address,
}

fn placeholder(path: &[String]) -> Result<Placeholder<'_>, String> {
    match path {
        [one] if one == "host" => Ok(Placeholder::Host),
        [one] if one == "address" => Ok(Placeholder::Address),
        [labels, name] if labels == "labels" => check_label_name(name)
            .map(|()| Placeholder::Label(name))
            .map_err(|e| format!("{{labels.{name}}}: {e}")),
        _ => Err(format!(
            "unknown placeholder {{{}}}: use {{labels.<name>}}, {{host}} or {{address}}",
            path.join(".")
        )),
    }
}

impl Affinity {
    /// Parse and check a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let template = Template::parse(text)?;
        let mut any = false;
        for path in template.fields() {
            placeholder(path).map_err(|e| format!("template {text:?}: {e}"))?;
            any = true;
        }
        if !any {
            return Err(format!(
                "template {text:?} has no placeholder: every target would be in one group; use e.g. \"{{labels.app}}\" or \"{{host}}\""
            ));
        }
        Ok(Self {
            text: text.to_string(),
            template,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The group key of `t` into `out`; `Err(label)` names a label the
    /// template reads that `t` lacks.
    pub fn key_into(&self, t: &Target, out: &mut String) -> Result<(), String> {
        self.template.render_with(
            |path, out| {
                // Checked by `parse`.
                let value = match placeholder(path) {
                    Ok(Placeholder::Label(name)) => t.labels.get(name),
                    Ok(Placeholder::Host) => Some(host(&t.addr)),
                    Ok(Placeholder::Address) => Some(&*t.addr),
                    Err(_) => None,
                };
                value.map(|v| out.push_str(v)).is_some()
            },
            out,
        )
    }
}

/// The host part of a checked `host:port` address (`[::1]` for `[::1]:9100`).
pub fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// A target outside every group, while grouping.
const UNGROUPED: u32 = u32::MAX;

/// Targets grouped by affinity key. Groups are numbered in key order, the
/// ungrouped ones (one per target, keyed by its address) last.
#[derive(Clone, Debug, PartialEq)]
pub struct Groups {
    /// Each group's key.
    pub keys: Vec<Box<str>>,
    /// Each group's placement hash: of its key, or of its target's address
    /// for an ungrouped target (so it lands where it would without affinity).
    pub hashes: Vec<u64>,
    /// Each group's weight: the sum of its targets' weights (saturating).
    pub weights: Vec<u32>,
    /// The group of each target.
    pub of_target: Vec<u32>,
    /// Group `g` holds targets `members[starts[g]..starts[g + 1]]`, ascending.
    starts: Vec<u32>,
    members: Vec<u32>,
    /// Groups from this index on are ungrouped targets.
    first_ungrouped: usize,
}

impl Groups {
    /// Group `targets` by `affinity`. Deterministic: groups are numbered by
    /// key, ungrouped targets after them in target order.
    pub fn new(targets: &[Target], affinity: &Affinity) -> Groups {
        // One table probe per target; only distinct keys allocate. Sorting
        // one boxed key per target instead took about twice as long with
        // few large groups (100k targets, 24 groups: 60–120 ms, now 31–45).
        let mut ids: HashMap<Box<str>, u32> = HashMap::new();
        let mut first: Vec<u32> = Vec::with_capacity(targets.len());
        let mut key = String::new();
        for t in targets {
            first.push(match affinity.key_into(t, &mut key) {
                Err(_) => UNGROUPED,
                Ok(()) => match ids.get(key.as_str()) {
                    Some(&id) => id,
                    None => {
                        let id = ids.len() as u32;
                        ids.insert(key.as_str().into(), id);
                        id
                    }
                },
            });
        }
        // Number the groups by key, whatever order the table holds them in.
        let mut sorted: Vec<(Box<str>, u32)> = ids.into_iter().collect();
        sorted.sort_unstable();
        let grouped = sorted.len();
        let mut number = vec![0u32; grouped];
        for (n, (_, id)) in sorted.iter().enumerate() {
            number[*id as usize] = n as u32;
        }
        let mut keys: Vec<Box<str>> = sorted.into_iter().map(|(k, _)| k).collect();
        let mut hashes: Vec<u64> = keys.iter().map(|k| hash_key(k)).collect();
        let mut of_target = Vec::with_capacity(targets.len());
        for (t, &id) in targets.iter().zip(&first) {
            of_target.push(if id == UNGROUPED {
                keys.push(t.addr.clone());
                hashes.push(t.hash);
                (keys.len() - 1) as u32
            } else {
                number[id as usize]
            });
        }
        // Members by group, ascending (targets are visited in order).
        let mut starts = vec![0u32; keys.len() + 1];
        let mut weights = vec![0u32; keys.len()];
        for (t, &g) in targets.iter().zip(&of_target) {
            starts[g as usize + 1] += 1;
            weights[g as usize] = weights[g as usize].saturating_add(t.weight);
        }
        for g in 0..keys.len() {
            starts[g + 1] += starts[g];
        }
        let mut fill = starts.clone();
        let mut members = vec![0u32; targets.len()];
        for (i, &g) in of_target.iter().enumerate() {
            members[fill[g as usize] as usize] = i as u32;
            fill[g as usize] += 1;
        }
        Groups {
            keys,
            hashes,
            weights,
            of_target,
            starts,
            members,
            first_ungrouped: grouped,
        }
    }

    /// Number of groups (ungrouped targets included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The targets of group `g`, ascending.
    pub fn members(&self, g: usize) -> &[u32] {
        &self.members[self.starts[g] as usize..self.starts[g + 1] as usize]
    }

    /// Whether group `g` is a target whose template named a missing label.
    pub fn is_ungrouped(&self, g: usize) -> bool {
        g >= self.first_ungrouped
    }

    /// How many targets are ungrouped.
    pub fn ungrouped(&self) -> usize {
        self.len() - self.first_ungrouped
    }

    /// The targets of the groups `groups`, ascending.
    pub fn expand(&self, groups: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = groups
            .iter()
            .flat_map(|&g| self.members(g as usize))
            .copied()
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::target::{RawGroup, normalize};

    fn targets(spec: &[(&str, &[(&str, &str)])]) -> Vec<Target> {
        normalize(
            spec.iter()
                .enumerate()
                .map(|(index, (addr, labels))| RawGroup {
                    index,
                    targets: vec![addr.to_string()],
                    labels: labels.iter().copied().collect(),
                    weight: None,
                })
                .collect(),
        )
        .targets
    }

    #[test]
    fn templates_name_what_is_wrong() {
        for (bad, says) in [
            ("{labels.app", "unclosed"),
            ("{app}", "unknown placeholder {app}"),
            ("{labels}", "unknown placeholder {labels}"),
            ("{labels.a.b}", "unknown placeholder {labels.a.b}"),
            ("{labels.9x}", "{labels.9x}: label names must start"),
            ("all", "no placeholder"),
            ("x}", "unmatched"),
        ] {
            let e = Affinity::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(Affinity::parse("{labels.dc}/{labels.app}-{host}").is_ok());
    }

    #[test]
    fn keys_from_labels_host_and_address() {
        let t = targets(&[("[::1]:9100", &[("app", "web")])]);
        let mut key = String::new();
        let a = Affinity::parse("{labels.app}@{host}|{address}").unwrap();
        a.key_into(&t[0], &mut key).unwrap();
        assert_eq!(key, "web@[::1]|[::1]:9100");
        let missing = Affinity::parse("{labels.dc}").unwrap();
        assert_eq!(missing.key_into(&t[0], &mut key), Err("labels.dc".into()));
    }

    #[test]
    fn groups_by_key_with_missing_labels_alone() {
        let t = targets(&[
            ("a:1", &[("app", "web")]),
            ("b:1", &[("app", "db")]),
            ("c:1", &[("app", "web")]),
            ("d:1", &[]),
            ("e:1", &[]),
        ]);
        let g = Groups::new(&t, &Affinity::parse("{labels.app}").unwrap());
        assert_eq!(
            &*g.keys,
            ["db".into(), "web".into(), "d:1".into(), "e:1".into()]
        );
        assert_eq!(g.members(1), [0, 2]);
        assert_eq!(g.weights, [1, 2, 1, 1]);
        assert_eq!(g.ungrouped(), 2);
        assert!(g.is_ungrouped(2) && !g.is_ungrouped(1));
        assert_eq!(g.hashes[1], hash_key("web"));
        assert_eq!(g.hashes[2], t[3].hash, "placed by its own address");
        assert_eq!(g.of_target, [1, 0, 1, 2, 3]);
        assert_eq!(g.expand(&[3, 1]), [0, 2, 4]);
    }
}
