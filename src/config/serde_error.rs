//! What serde says about a file that does not fit the [`raw`](super::raw)
//! types, in promshard's words: under the same location as every other
//! problem (`services[1] "mysql": replicas`), with the YAML position kept,
//! the types named as a user writes them (`expected an integer, got
//! "two"`, not `invalid type: string "two", expected i64`), and a misspelt
//! key answered with the closest known one.
//!
//! serde_yaml_ng puts the path of the failing value in front of its
//! message (`services[1].replicas: invalid type: …`); that path is turned
//! into a location here, with the service's name looked up in the parsed
//! document. The messages of serde's own errors (`unknown field`,
//! `invalid type`, …) are stable text that serde documents as such.

use super::ConfigProblem;

/// A serde_yaml_ng error on `text` as a problem.
pub(super) fn yaml_problem(text: &str, e: &serde_yaml_ng::Error) -> ConfigProblem {
    let message = e.to_string();
    let Some(l) = e.location() else {
        return problem("document".into(), explain(&message, ""));
    };
    let message = message
        .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or(&message);
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if is_path(path) => (path, rest),
        _ => (".", message),
    };
    let at = match is_unknown(message) {
        true => format!(" (line {})", l.line()),
        false => format!(" (line {} column {})", l.line(), l.column()),
    };
    if path == "." && !is_serde_message(message) {
        // A YAML syntax error: there is no key to name, only the position.
        return problem(
            format!("line {} column {}", l.line(), l.column()),
            message.into(),
        );
    }
    problem(location(text, path), explain(message, &at))
}

/// A serde error on the map a drop-in's `fn service()` returned, at `path`
/// inside it.
pub(super) fn value_problem(path: &str, message: &str) -> ConfigProblem {
    let key = match path {
        "" | "." => String::new(),
        p => format!(": {p}"),
    };
    problem(format!("fn service(){key}"), explain(message, ""))
}

fn problem(location: String, message: String) -> ConfigProblem {
    ConfigProblem { location, message }
}

/// Whether `s` is a path as serde_yaml_ng writes it: keys, `[index]` and
/// `?` for a value inside an untagged enum, joined by `.`.
fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']' | '?'))
}

fn is_unknown(message: &str) -> bool {
    message.starts_with("unknown field `") || message.starts_with("unknown variant `")
}

fn is_serde_message(message: &str) -> bool {
    [
        "unknown field `",
        "unknown variant `",
        "invalid type: ",
        "invalid value: ",
        "missing field `",
        "duplicate field `",
        "data did not match",
    ]
    .iter()
    .any(|p| message.starts_with(p))
}

/// `services[1].push.forks` → `services[1] "mysql": push.forks`; other
/// paths stay as they are, the top level is the empty location.
fn location(text: &str, path: &str) -> String {
    if path == "." {
        return String::new();
    }
    let service = path.strip_prefix("services[").and_then(|rest| {
        let (index, rest) = rest.split_once(']')?;
        Some((index.parse::<usize>().ok()?, rest.trim_start_matches('.')))
    });
    let Some((index, key)) = service else {
        return path.into();
    };
    let name = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| v["services"][index]["name"].as_str().map(str::to_string));
    let mut at = format!("services[{index}]");
    if let Some(name) = name {
        at.push_str(&format!(" {name:?}"));
    }
    if !key.is_empty() {
        at.push_str(&format!(": {key}"));
    }
    at
}

/// serde's message in a user's words; `at` (the position, or nothing) goes
/// after the part that names the value.
fn explain(message: &str, at: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown("key", rest, at);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        return unknown("value", rest, at);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message
            .strip_prefix(prefix)
            .and_then(|m| m.split_once(", expected "))
        {
            return format!(
                "expected {}, got {}{at}",
                expected_kind(expected),
                got_value(got)
            );
        }
    }
    if let Some(field) = quoted(message, "missing field `") {
        return format!("missing key {field:?}{at}");
    }
    if let Some(field) = quoted(message, "duplicate field `") {
        return format!("key {field:?} is given twice{at}");
    }
    if message.starts_with("data did not match any variant of untagged enum RawNode") {
        return format!("expected \"host:port\" or {{addr: \"host:port\", weight: N}}{at}");
    }
    format!("{message}{at}")
}

/// The name between `prefix` and the next backquote.
fn quoted<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// `rest`: ``replica`, expected one of `name`, `script`…`` (or `expected
/// `dest``, or `there are no fields`). The closest known name is offered
/// when it is close enough to be a typo, else the whole list.
fn unknown(what: &str, rest: &str, at: &str) -> String {
    let Some((name, expected)) = rest.split_once('`') else {
        return format!("unknown {what} {rest}{at}");
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(name, &known) {
        Some(best) => format!("unknown {what} {name:?}{at}, did you mean {best:?}?"),
        None if known.is_empty() => format!("unknown {what} {name:?}{at}"),
        None => format!(
            "unknown {what} {name:?}{at}; expected one of {}",
            known.join(", ")
        ),
    }
}

/// The name of `known` closest to `name` by edit distance, if it is within
/// a third of the name's length (at least 2 edits): `replica` → `replicas`,
/// `intervall` → `interval`, but nothing for a key from another program.
pub(super) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// serde's "expected" part (`i64`, `struct RawHealth`, `a string`, …) as a
/// user writes values.
fn expected_kind(expected: &str) -> String {
    let integer = |t: &str| {
        t.strip_prefix(['i', 'u'])
            .is_some_and(|b| b == "size" || b.parse::<u8>().is_ok())
    };
    match expected {
        t if integer(t) && t.starts_with('u') => "a whole number of 0 or more".into(),
        t if integer(t) => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "a list".into(),
        "a boolean" => "true or false".into(),
        t if t.starts_with("struct ")
            || t.starts_with("internally tagged enum")
            || t == "a map" =>
        {
            "a map of keys".into()
        }
        t => t.into(),
    }
}

/// serde's "invalid type" part (`string "two"`, ``integer `5` ``, `map`, …)
/// as the value was written.
fn got_value(got: &str) -> String {
    for prefix in [
        "string ",
        "integer ",
        "floating point ",
        "boolean ",
        "character ",
    ] {
        if let Some(v) = got.strip_prefix(prefix) {
            return v.trim_matches('`').into();
        }
    }
    match got {
        "map" => "a map".into(),
        "sequence" => "a list".into(),
        "unit value" => "nothing (null)".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_closest_key_and_strangers_the_list() {
        let known = ["replicas", "resync_interval", "schedule"];
        assert_eq!(closest("replica", &known), Some("replicas"));
        assert_eq!(closest("shcedule", &known), Some("schedule"));
        assert_eq!(closest("scrape_configs", &known), None);
        assert_eq!(
            explain("unknown field `wat`, expected `dest`", " (line 3)"),
            "unknown key \"wat\" (line 3); expected one of dest"
        );
        assert_eq!(
            explain(
                "unknown variant `locl`, expected one of `none`, `local`, `ansible`",
                ""
            ),
            "unknown value \"locl\", did you mean \"local\"?"
        );
    }

    #[test]
    fn types_are_named_as_a_user_writes_values() {
        assert_eq!(
            explain("invalid type: string \"two\", expected i64", ""),
            "expected an integer, got \"two\""
        );
        assert_eq!(
            explain("invalid value: integer `-1`, expected u64", ""),
            "expected a whole number of 0 or more, got -1"
        );
        assert_eq!(
            explain("invalid type: sequence, expected struct RawHealth", ""),
            "expected a map of keys, got a list"
        );
        assert_eq!(explain("missing field `from`", ""), "missing key \"from\"");
    }
}
