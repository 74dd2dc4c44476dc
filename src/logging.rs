//! Log line formats: logfmt text (the default) and JSON.
//!
//! tracing-subscriber's default text format writes values as they are, so
//! `reason=2 consecutive failures: connect: refused` reads as one pair and
//! three stray words to a logfmt parser (Loki's, vector's, `lnav`). Here
//! every line is logfmt: `ts=… level=info target=… msg="…" key=value…`,
//! a value quoted when it holds a space, `=`, `"`, `\` or a control
//! character (escaped as in JSON), or is empty.
//!
//! A field named in [`OBJECT_FIELDS`] holds a JSON object (see [`Object`]):
//! JSON logs embed it as an object, text logs as one quoted
//! `"key=value key=value"`. JSON lines keep tracing-subscriber's shape:
//! `{"timestamp","level","fields":{"message",…},"target"}`.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields whose value is an [`Object`].
pub const OBJECT_FIELDS: &[&str] = &["per_node"];

/// A field value that is a map, e.g. targets per node: log it as
/// `per_node = ?Object::new(pairs)` under a name of [`OBJECT_FIELDS`].
pub struct Object(serde_json::Map<String, Value>);

impl Object {
    /// The object of `pairs`, in their order.
    pub fn new<K: Into<String>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(&self.0).map_err(|_| fmt::Error)?)
    }
}

/// An event's fields in order, typed as recorded.
#[derive(Default)]
struct Fields {
    message: String,
    /// The `log` crate's target, for events bridged from it.
    log_target: Option<String>,
    pairs: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let object = OBJECT_FIELDS
            .contains(&field.name())
            .then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten()
            .filter(Value::is_object);
        let value = object.unwrap_or(Value::String(text));
        self.push(field, value);
    }
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = plain(&value),
            "log.target" => self.log_target = Some(plain(&value)),
            n if n.starts_with("log.") => {}
            n => self.pairs.push((n, value)),
        }
    }

    fn of(event: &Event<'_>) -> Self {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
    }
}

/// A value as text: strings without JSON quotes, an object as
/// `key=value key=value`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Write `value` as a logfmt value: bare when it can be, else quoted.
pub fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control());
    if bare {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Colour of a level on a terminal (ANSI SGR).
fn colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "31",
        Level::WARN => "33",
        Level::INFO => "32",
        Level::DEBUG => "34",
        Level::TRACE => "35",
    }
}

/// The logfmt text format; `ansi` colours the level (terminals only).
pub struct Logfmt {
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let fields = Fields::of(event);
        let level = meta.level().as_str().to_ascii_lowercase();
        write!(w, "ts={} level=", now_rfc3339())?;
        if self.ansi {
            write!(w, "\x1b[{}m{level}\x1b[0m", colour(*meta.level()))?;
        } else {
            w.write_str(&level)?;
        }
        w.write_str(" target=")?;
        write_value(
            &mut w,
            fields.log_target.as_deref().unwrap_or(meta.target()),
        )?;
        w.write_str(" msg=")?;
        write_value(&mut w, &fields.message)?;
        for (key, value) in &fields.pairs {
            write!(w, " {key}=")?;
            write_value(&mut w, &plain(value))?;
        }
        writeln!(w)
    }
}

/// The JSON format (one object per line).
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let f = Fields::of(event);
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), Value::String(f.message));
        fields.extend(f.pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
        let line = serde_json::json!({
            "timestamp": now_rfc3339(),
            "level": meta.level().as_str(),
            "fields": fields,
            "target": f.log_target.as_deref().unwrap_or(meta.target()),
        });
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> String {
        let mut out = String::new();
        write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn values_that_would_break_a_pair_are_quoted_and_escaped() {
        assert_eq!(value("node_exporter"), "node_exporter");
        assert_eq!(value("127.0.0.1:9091"), "127.0.0.1:9091");
        assert_eq!(value(""), "\"\"");
        assert_eq!(value("a b"), "\"a b\"");
        assert_eq!(value("a=3"), "\"a=3\"");
        assert_eq!(value("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(value("C:\\dir"), "\"C:\\\\dir\"");
        assert_eq!(value("two\nlines"), "\"two\\nlines\"");
    }

    #[test]
    fn an_object_is_pairs_in_text() {
        let o = Object::new([("a:1", 3), ("b:2", 2)]);
        let v: Value = serde_json::from_str(&format!("{o:?}")).unwrap();
        assert_eq!(plain(&v), "a:1=3 b:2=2");
    }
}
