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

use crate::target::{Invalid, Labels, RawGroup};

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

/// One piece of a `{field}` template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Field(Vec<String>),
}

/// A parsed `"{ip}:9100"`-style template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parse `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                                name.push(c)
                            }
                            _ => {
                                return Err(format!(
                                    "template {text:?}: unclosed or invalid {{field}}"
                                ));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("template {text:?}: empty {{}}"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name.split('.').map(str::to_string).collect()));
                }
                '}' => return Err(format!("template {text:?}: unmatched '}}'")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template(pieces))
    }

    /// Fill in from a JSON record; `Err(field)` names a missing field.
    fn render(
        &self,
        record: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path) => {
                    let mut value = record.get(&path[0]);
                    for key in &path[1..] {
                        value = value.and_then(|v| v.get(key));
                    }
                    match value {
                        Some(serde_json::Value::String(s)) => out.push_str(s),
                        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                            out.push_str(&v.to_string())
                        }
                        _ => return Err(path.join(".")),
                    }
                }
            }
        }
        Ok(out)
    }
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

/// Parse JSON text into a target list; at most `max_items` records.
pub fn targets_from_json(
    reader: impl std::io::Read,
    spec: Option<&Spec>,
    max_items: usize,
) -> Result<TargetList, String> {
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, reader));
    let mut out = Collect {
        spec,
        max_items,
        groups: Vec::new(),
        invalid: Vec::new(),
    };
    (&mut out).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(TargetList {
        groups: Arc::new(out.groups),
        invalid: Arc::new(out.invalid),
    })
}

struct Collect<'a> {
    spec: Option<&'a Spec>,
    max_items: usize,
    groups: Vec<RawGroup>,
    invalid: Vec<Invalid>,
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
                    match seq.next_element::<serde_json::Map<String, serde_json::Value>>()? {
                        None => break,
                        Some(record) => match record_group(index, &record, spec) {
                            Ok(g) => self.groups.push(g),
                            Err(reason) => self.invalid.push(Invalid {
                                group: index,
                                value: serde_json::Value::Object(record).to_string(),
                                reason,
                            }),
                        },
                    }
                }
            }
            index += 1;
        }
        Ok(())
    }
}

fn record_group(
    index: usize,
    record: &serde_json::Map<String, serde_json::Value>,
    spec: &Spec,
) -> Result<RawGroup, String> {
    let address = spec
        .address
        .render(record)
        .map_err(|field| format!("field {field:?} of the address template is missing"))?;
    let labels = spec
        .labels
        .iter()
        .filter_map(|(name, t)| t.render(record).ok().map(|v| (name.clone(), v)))
        .collect();
    let weight = match &spec.weight {
        None => None,
        Some(t) => Some(
            t.render(record)
                .ok()
                .and_then(|w| w.parse::<u32>().ok())
                .filter(|w| *w >= 1)
                .ok_or("weight is not a positive integer")?,
        ),
    };
    Ok(RawGroup {
        index,
        targets: vec![address],
        labels,
        weight,
    })
}

type HostResult<T> = Result<T, Box<rhai::EvalAltResult>>;

/// Register `targets_from_json` and `targets_from_json_file` (1 or 2 args).
pub(super) fn register(engine: &mut rhai::Engine, ctx: &Arc<super::host::HostContext>) {
    engine.register_type_with_name::<TargetList>("TargetList");
    engine.register_fn("len", |l: &mut TargetList| l.len() as i64);
    let max = ctx.limits.max_array_size;
    engine.register_fn(
        "targets_from_json",
        move |text: &str| -> HostResult<TargetList> {
            targets_from_json(text.as_bytes(), None, max)
                .map_err(|e| format!("targets_from_json: {e}").into())
        },
    );
    engine.register_fn(
        "targets_from_json",
        move |text: &str, spec: Map| -> HostResult<TargetList> {
            let spec = Spec::from_map(&spec).map_err(|e| format!("targets_from_json: {e}"))?;
            targets_from_json(text.as_bytes(), Some(&spec), max)
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
    let resolved = super::host::resolve_readable(&ctx.read_dirs, path)?;
    let file = std::fs::File::open(&resolved).map_err(|e| {
        format!(
            "targets_from_json_file({path:?}): {}: {e}",
            resolved.display()
        )
    })?;
    targets_from_json(file, spec, ctx.limits.max_array_size).map_err(|e| {
        format!(
            "targets_from_json_file({path:?}): {}: {e}",
            resolved.display()
        )
        .into()
    })
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
    fn templates() {
        assert!(Template::parse("{ip").is_err());
        assert!(Template::parse("ip}").is_err());
        assert!(Template::parse("{}").is_err());
        let t = Template::parse("{{x}}{a.b}:{port}").unwrap();
        let rec = serde_json::json!({"a": {"b": "h"}, "port": 9100});
        assert_eq!(t.render(rec.as_object().unwrap()).unwrap(), "{x}h:9100");
    }

    #[test]
    fn records_become_groups_and_missing_fields_are_reported() {
        let text = r#"[{"ip":"10.0.0.1","env":"prod"},{"env":"dev"},{"ip":"10.0.0.2"}]"#;
        let s = spec("{ip}:9100", &[("env", "{env}")]);
        let list = targets_from_json(text.as_bytes(), Some(&s), 10).unwrap();
        assert_eq!(list.groups.len(), 2);
        assert_eq!(list.groups[0].targets, ["10.0.0.1:9100"]);
        assert_eq!(list.groups[0].labels["env"], "prod");
        assert!(list.groups[1].labels.is_empty());
        assert_eq!(list.invalid.len(), 1);
        assert_eq!(list.invalid[0].group, 1);
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
