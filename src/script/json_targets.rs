//! Native target lists: `targets_from_json(…)` parses a JSON inventory
//! straight into target groups, without building a Rhai value per host.
//!
//! Building 100k Rhai maps costs seconds (every map and string is a
//! `Dynamic`, and closures run per element); this path streams the JSON
//! with serde, applies `{field}` templates natively and hands the pass a
//! [`TargetList`] that `targets()` may return as is (or inside its array).
//! It is how promshard reaches 100k targets in well under a second.
//!
//! Two shapes of input:
//! - file_sd (`[{"targets": [...], "labels": {...}}]`), when no spec is given;
//! - inventory records (`[{"ip": "10.0.0.1", "env": "prod"}, ...]`) with a
//!   spec `#{ address: "{ip}:9100", labels: #{ env: "{env}" }, weight: "{series}" }`.
//!   `{a.b}` reads nested fields. A record missing a field of `address` is
//!   reported invalid; a label whose fields are missing is left out.

use std::fmt;
use std::sync::Arc;

use rhai::Map;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};

use std::collections::HashMap;

use crate::shard::target::{Invalid, Labels, LabelsBuilder, RawGroup};
use crate::shard::template::Template;

/// Groups built natively; returned by `targets_from_json`.
#[derive(Clone, Debug, Default)]
pub struct TargetList {
    pub groups: Arc<Vec<RawGroup>>,
    pub invalid: Arc<Vec<Invalid>>,
}

impl TargetList {
    /// Number of groups (what `len()` gives scripts).
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Fill in `t` from a JSON record into `out` (cleared first), reading
/// top-level fields through `get`; `Err(field)` names a missing field.
fn render_json<'v>(
    t: &Template,
    get: impl Fn(&str) -> Option<&'v serde_json::Value>,
    out: &mut String,
) -> Result<(), String> {
    t.render_with(
        |path, out| {
            let mut value = get(&path[0]);
            for key in &path[1..] {
                value = value.and_then(|v| v.get(key));
            }
            match value {
                Some(serde_json::Value::String(s)) => out.push_str(s),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    out.push_str(&v.to_string())
                }
                _ => return false,
            }
            true
        },
        out,
    )
}

/// How inventory records become targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub address: Template,
    pub labels: Vec<(String, Template)>,
    pub weight: Option<Template>,
}

impl Spec {
    /// Read a spec from the script's map.
    pub fn from_map(map: &Map) -> Result<Self, String> {
        let text = |key: &str, v: &rhai::Dynamic| {
            v.clone()
                .into_string()
                .map_err(|t| format!("spec.{key} must be a string template, not a {t}"))
        };
        let mut address = None;
        let mut labels = Vec::new();
        let mut weight = None;
        for (key, value) in map {
            match key.as_str() {
                "address" => address = Some(Template::parse(&text("address", value)?)?),
                "weight" => weight = Some(Template::parse(&text("weight", value)?)?),
                "labels" => {
                    let m = value
                        .clone()
                        .try_cast::<Map>()
                        .ok_or("spec.labels must be a map")?;
                    for (name, t) in m {
                        labels.push((name.to_string(), Template::parse(&text("labels", &t)?)?));
                    }
                }
                other => {
                    return Err(format!(
                        "unknown spec key {other:?} (expected address, labels, weight)"
                    ));
                }
            }
        }
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Spec {
            address: address.ok_or("spec needs an address template, e.g. \"{ip}:9100\"")?,
            labels,
            weight,
        })
    }
}

/// Parse JSON from a reader into a target list; at most `max_items`
/// records. Streams: memory stays at the size of the result.
pub fn targets_from_json(
    reader: impl std::io::Read,
    spec: Option<&Spec>,
    max_items: usize,
) -> Result<TargetList, String> {
    collect(
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, reader)),
        spec,
        max_items,
    )
}

/// [`targets_from_json`] for text already in memory (about a third faster
/// than parsing through a reader).
pub fn targets_from_json_slice(
    text: &[u8],
    spec: Option<&Spec>,
    max_items: usize,
) -> Result<TargetList, String> {
    collect(serde_json::Deserializer::from_slice(text), spec, max_items)
}

fn collect<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    spec: Option<&Spec>,
    max_items: usize,
) -> Result<TargetList, String> {
    let mut out = Collect {
        spec,
        fields: spec.map(Spec::fields).unwrap_or_default(),
        max_items,
        groups: Vec::new(),
        invalid: Vec::new(),
        scratch: Scratch::default(),
    };
    (&mut out).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    out.groups.shrink_to_fit();
    Ok(TargetList {
        groups: Arc::new(out.groups),
        invalid: Arc::new(out.invalid),
    })
}

impl Spec {
    /// The distinct top-level record fields the templates read.
    fn fields(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let templates = std::iter::once(&self.address)
            .chain(self.labels.iter().map(|(_, t)| t))
            .chain(self.weight.as_ref());
        for name in templates.flat_map(|t| t.fields().map(|path| path[0].as_str())) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }
}

/// Label sets remembered for sharing between records (bounded, so that an
/// inventory of unique label sets does not grow a second copy).
const SHARED_LABEL_SETS: usize = 1 << 16;

/// Buffers reused from one record to the next.
#[derive(Default)]
struct Scratch {
    /// The current record's fields, in input order.
    record: Vec<(Key, serde_json::Value)>,
    text: String,
    labels: LabelsBuilder,
    /// Label sets seen so far, by content hash: records with equal labels
    /// share one allocation.
    shared: HashMap<u64, Labels>,
}

struct Collect<'a> {
    spec: Option<&'a Spec>,
    /// Top-level fields the spec reads; other fields are kept only to
    /// quote an invalid record whole.
    fields: Vec<String>,
    max_items: usize,
    groups: Vec<RawGroup>,
    invalid: Vec<Invalid>,
    scratch: Scratch,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSdGroup {
    targets: Vec<String>,
    #[serde(default)]
    labels: Labels,
}

impl<'de> DeserializeSeed<'de> for &mut Collect<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut Collect<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            if index >= self.max_items {
                return Err(serde::de::Error::custom(format!(
                    "more than {} items (max_array_size)",
                    self.max_items
                )));
            }
            match self.spec {
                None => match seq.next_element::<FileSdGroup>()? {
                    None => break,
                    Some(g) => self.groups.push(RawGroup {
                        index,
                        targets: g.targets,
                        labels: g.labels,
                        weight: None,
                    }),
                },
                Some(spec) => {
                    let seed = RecordSeed {
                        fields: &self.fields,
                        record: &mut self.scratch.record,
                    };
                    if seq.next_element_seed(seed)?.is_none() {
                        break;
                    }
                    match record_group(index, &self.fields, spec, &mut self.scratch) {
                        Ok(g) => self.groups.push(g),
                        Err(reason) => self.invalid.push(Invalid {
                            group: index,
                            value: record_text(&self.fields, &mut self.scratch.record),
                            reason,
                        }),
                    }
                }
            }
            index += 1;
        }
        Ok(())
    }
}

/// A record field name: one the spec reads (by position in the field
/// list, no allocation), or another one.
enum Key {
    Known(usize),
    Other(String),
}

struct KeySeed<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|n| n == v) {
            Some(i) => Key::Known(i),
            None => Key::Other(v.to_string()),
        })
    }
}

/// Reads one inventory record into a reused buffer instead of a fresh
/// `serde_json::Map` (a B-tree and a key string per field, per record).
struct RecordSeed<'a> {
    fields: &'a [String],
    record: &'a mut Vec<(Key, serde_json::Value)>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    // Same wording as `serde_json::Map`, which records used to be read as.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.record.clear();
        Ok(())
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        self.record.clear();
        while let Some(key) = map.next_key_seed(KeySeed(self.fields))? {
            let value = map.next_value::<serde_json::Value>()?;
            self.record.push((key, value));
        }
        Ok(())
    }
}

/// The value of top-level field `fields[i]` (the last one, if repeated, as
/// in a JSON object map).
fn field(record: &[(Key, serde_json::Value)], i: usize) -> Option<&serde_json::Value> {
    record
        .iter()
        .rev()
        .find(|(k, _)| matches!(k, Key::Known(j) if *j == i))
        .map(|(_, v)| v)
}

/// The whole record as JSON text (for reports), as `serde_json` prints an
/// object: keys sorted, a repeated key keeping its last value.
fn record_text(fields: &[String], record: &mut Vec<(Key, serde_json::Value)>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = record
        .drain(..)
        .map(|(k, v)| match k {
            Key::Known(i) => (fields[i].clone(), v),
            Key::Other(name) => (name, v),
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn record_group(
    index: usize,
    fields: &[String],
    spec: &Spec,
    scratch: &mut Scratch,
) -> Result<RawGroup, String> {
    let Scratch {
        record,
        text,
        labels: builder,
        shared,
    } = scratch;
    let get = |name: &str| {
        let i = fields.iter().position(|n| n == name)?;
        field(record, i)
    };
    render_json(&spec.address, get, text)
        .map_err(|field| format!("field {field:?} of the address template is missing"))?;
    let address = text.as_str().to_owned();
    let weight = match &spec.weight {
        None => None,
        Some(t) => Some(
            render_json(t, get, text)
                .ok()
                .and_then(|()| text.parse::<u32>().ok())
                .filter(|w| *w >= 1)
                .ok_or("weight is not a positive integer")?,
        ),
    };
    builder.clear();
    for (name, t) in &spec.labels {
        if render_json(t, get, text).is_ok() {
            builder.push(name, text);
        }
    }
    let hash = builder.content_hash();
    let labels = match shared.get(&hash) {
        Some(l) if builder.matches(l) => l.clone(),
        _ => {
            let l = builder.build();
            if shared.len() < SHARED_LABEL_SETS {
                shared.entry(hash).or_insert_with(|| l.clone());
            }
            l
        }
    };
    Ok(RawGroup {
        index,
        targets: vec![address],
        labels,
        weight,
    })
}

type HostResult<T> = Result<T, Box<rhai::EvalAltResult>>;

/// Inventory files up to this size are parsed from memory.
const READ_WHOLE_MAX: u64 = 32 << 20;

/// Register `targets_from_json` and `targets_from_json_file` (1 or 2 args).
pub(super) fn register(engine: &mut rhai::Engine, ctx: &Arc<super::host::HostContext>) {
    engine.register_type_with_name::<TargetList>("TargetList");
    engine.register_fn("len", |l: &mut TargetList| l.len() as i64);
    let max = ctx.limits.max_array_size;
    engine.register_fn(
        "targets_from_json",
        move |text: &str| -> HostResult<TargetList> {
            targets_from_json_slice(text.as_bytes(), None, max)
                .map_err(|e| format!("targets_from_json: {e}").into())
        },
    );
    engine.register_fn(
        "targets_from_json",
        move |text: &str, spec: Map| -> HostResult<TargetList> {
            let spec = Spec::from_map(&spec).map_err(|e| format!("targets_from_json: {e}"))?;
            targets_from_json_slice(text.as_bytes(), Some(&spec), max)
                .map_err(|e| format!("targets_from_json: {e}").into())
        },
    );
    let c = Arc::clone(ctx);
    engine.register_fn(
        "targets_from_json_file",
        move |path: &str| -> HostResult<TargetList> { from_file(&c, path, None) },
    );
    let c = Arc::clone(ctx);
    engine.register_fn(
        "targets_from_json_file",
        move |path: &str, spec: Map| -> HostResult<TargetList> {
            let spec = Spec::from_map(&spec)
                .map_err(|e| format!("targets_from_json_file({path:?}): {e}"))?;
            from_file(&c, path, Some(&spec))
        },
    );
}

fn from_file(
    ctx: &super::host::HostContext,
    path: &str,
    spec: Option<&Spec>,
) -> HostResult<TargetList> {
    let file = super::host::open_readable(ctx, "targets_from_json_file", path)?;
    // One message shape for I/O and parse errors alike.
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "targets_from_json_file({path:?}): {}: {e}",
            file.path.display()
        )
    };
    let max = ctx.limits.max_array_size;
    // Small files are read whole and parsed from memory (faster); big ones
    // are streamed so that a huge inventory is never held twice.
    let parsed = if file.size <= READ_WHOLE_MAX {
        let mut text = Vec::with_capacity(file.size as usize);
        std::io::Read::read_to_end(&mut file.reader(ctx), &mut text).map_err(|e| fail(&e))?;
        targets_from_json_slice(&text, spec, max)
    } else {
        targets_from_json(file.reader(ctx), spec, max)
    };
    parsed.map_err(|e| fail(&e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: &str, labels: &[(&str, &str)]) -> Spec {
        Spec {
            address: Template::parse(address).unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), Template::parse(v).unwrap()))
                .collect(),
            weight: None,
        }
    }

    #[test]
    fn templates_read_nested_fields_numbers_and_braces() {
        let t = Template::parse("{{x}}{a.b}:{port}").unwrap();
        let rec = serde_json::json!({"a": {"b": "h"}, "port": 9100});
        let mut out = String::new();
        render_json(&t, |name| rec.get(name), &mut out).unwrap();
        assert_eq!(out, "{x}h:9100");
    }

    #[test]
    fn memory_and_streaming_parsers_agree() {
        let text = r#"[{"ip":"10.0.0.1","env":"prod"},{"env":"dev"},{"ip":"10.0.0.2","x":[1]}]"#;
        let s = spec("{ip}:9100", &[("env", "{env}")]);
        let streamed = targets_from_json(text.as_bytes(), Some(&s), 10).unwrap();
        let sliced = targets_from_json_slice(text.as_bytes(), Some(&s), 10).unwrap();
        assert_eq!(streamed.groups, sliced.groups);
        assert_eq!(streamed.invalid, sliced.invalid);
        assert_eq!(sliced.groups.len(), 2);
        let bad = targets_from_json_slice(b"[{\"ip\": 1}", Some(&s), 10).unwrap_err();
        assert!(bad.contains("EOF"), "{bad}");
    }

    #[test]
    fn records_become_groups_and_missing_fields_are_reported() {
        let text = r#"[{"ip":"10.0.0.1","env":"prod"},{"env":"dev"},{"ip":"10.0.0.2"}]"#;
        let s = spec("{ip}:9100", &[("env", "{env}")]);
        let list = targets_from_json(text.as_bytes(), Some(&s), 10).unwrap();
        assert_eq!(list.groups.len(), 2);
        assert_eq!(list.groups[0].targets, ["10.0.0.1:9100"]);
        assert_eq!(&list.groups[0].labels["env"], "prod");
        assert!(list.groups[1].labels.is_empty());
        assert_eq!(list.invalid.len(), 1);
        assert_eq!(list.invalid[0].group, 1);
    }

    #[test]
    fn invalid_records_are_quoted_whole_and_labels_shared() {
        let text = r#"[{"z":1,"ip":"a","env":"x","ip":"10.0.0.9"},{"env":"x","b":[1,{"c":null}]},
            {"ip":"10.0.0.1","env":"prod"},{"ip":"10.0.0.2","env":"prod"},null,"x"]"#;
        let s = spec("{ip}:9100", &[("env", "{env}")]);
        let err = targets_from_json(text.as_bytes(), Some(&s), 10).unwrap_err();
        assert!(err.contains("expected a map"), "{err}");
        let text = &text[..text.rfind(",null").unwrap()];
        let list = targets_from_json(format!("{text}]").as_bytes(), Some(&s), 10).unwrap();
        assert_eq!(
            list.groups[0].targets,
            ["10.0.0.9:9100"],
            "last duplicate wins"
        );
        assert_eq!(list.invalid.len(), 1);
        assert_eq!(list.invalid[0].value, r#"{"b":[1,{"c":null}],"env":"x"}"#);
        let (p, q) = (&list.groups[1].labels, &list.groups[2].labels);
        assert_eq!(p, q);
        assert_eq!(&p["env"], "prod");
    }

    #[test]
    fn file_sd_input_and_limits() {
        let text = r#"[{"targets":["a:1","b:2"],"labels":{"env":"x"}}]"#;
        let list = targets_from_json(text.as_bytes(), None, 10).unwrap();
        assert_eq!(list.groups[0].targets.len(), 2);
        assert!(
            targets_from_json(text.as_bytes(), None, 0)
                .unwrap_err()
                .contains("max_array_size")
        );
        assert!(targets_from_json(&b"{}"[..], None, 10).is_err());
    }
}
