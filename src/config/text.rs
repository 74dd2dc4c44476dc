//! The file as text, before serde sees it: read at most
//! [`MAX_CONFIG_BYTES`], refuse nesting deeper than
//! [`MAX_CONFIG_NESTING`] and empty documents, then parse the YAML into the
//! raw types. Each of these stops at its first problem: there is nothing
//! to check key by key in text that did not parse.

use std::path::Path;

use super::ConfigProblem;
use super::raw::RawConfig;

/// The largest config file read. Big fleets list their nodes in scripts,
/// not here; a config of this size is a mistake or an attack.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The deepest nesting of flow collections (`[…]`, `{…}`) accepted. The
/// YAML parser takes time quadratic in the depth (100k levels: 46 s)
/// before its own recursion limit rejects the document.
pub const MAX_CONFIG_NESTING: usize = 32;

/// Refuse text too large or nested too deep before it reaches the parser.
/// Quoted scalars and comments are skipped; a bracket inside a plain
/// scalar counts, which only matters beyond [`MAX_CONFIG_NESTING`]
/// unbalanced ones.
fn check_shape(text: &str) -> Result<(), (String, String)> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err((
            "file".into(),
            format!(
                "larger than {} MiB; list big node sets from a script (fn nodes(ctx) or node_script)",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut chars = line.char_indices().peekable();
        let mut prev = ' ';
        while let Some((col, c)) = chars.next() {
            let at_token = prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':');
            match c {
                '#' if prev.is_whitespace() => break,
                '"' | '\'' if at_token => {
                    // Skip to the closing quote (on this line; a multi-line
                    // quoted scalar only hides brackets, never adds them).
                    let mut escaped = false;
                    for (_, q) in chars.by_ref() {
                        match q {
                            '\\' if c == '"' && !escaped => escaped = true,
                            q if q == c && !escaped => break,
                            _ => escaped = false,
                        }
                    }
                    prev = c;
                    continue;
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_CONFIG_NESTING {
                        return Err((
                            format!("line {} column {}", n + 1, col + 1),
                            format!("nested more than {MAX_CONFIG_NESTING} levels deep"),
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

/// Whether YAML text holds no content: only blank lines, comments and
/// document markers.
fn is_empty_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Read the file at `path`, or a `file` problem saying why not (and how to
/// name it when it is missing). At most one byte past the cap is read: a
/// huge file is refused without being held in memory.
pub(super) fn read(path: &Path) -> Result<String, ConfigProblem> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_string(
                &mut std::io::Read::take(f, MAX_CONFIG_BYTES as u64 + 1),
                &mut text,
            )
        })
        .map_err(|e| {
            let tried = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "; run promshard from the directory that holds it, or name it with -c FILE"
            } else {
                ""
            };
            problem(
                "file",
                format!("cannot read {}: {e}{hint}", tried.display()),
            )
        })?;
    Ok(text)
}

/// Parse config text into the raw types, after the shape checks.
pub(super) fn parse_yaml(text: &str) -> Result<RawConfig, ConfigProblem> {
    check_shape(text).map_err(|(location, message)| problem(&location, message))?;
    // An empty file would parse as "every default": a truncated or
    // half-written file would silently replace the running config.
    if is_empty_yaml(text) {
        return Err(problem(
            "file",
            "is empty; write at least `services: []` to run on defaults and drop-ins only".into(),
        ));
    }
    serde_yaml_ng::from_str(text).map_err(|e| super::serde_error::yaml_problem(text, &e))
}

fn problem(location: &str, message: String) -> ConfigProblem {
    ConfigProblem {
        location: location.into(),
        message,
    }
}
