//! Validation of one rule file: our own YAML check of the rule-file shape
//! (so a host without promtool still catches syntax errors, with their
//! line), then `promtool check rules` when promtool is found — the same
//! parser Prometheus loads the file with, which also checks every PromQL
//! expression. promtool runs as an argument vector with a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::RuleProblem;

/// Longest a `promtool check rules` may take.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The shape Prometheus expects; other keys are left to promtool.
#[derive(Deserialize)]
struct RuleFileShape {
    groups: Vec<GroupShape>,
}

#[derive(Deserialize)]
struct GroupShape {
    name: String,
    #[serde(default)]
    rules: Vec<RuleShape>,
}

#[derive(Deserialize)]
struct RuleShape {
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    expr: Option<serde_yaml_ng::Value>,
}

/// Whether `text` has only comments and blank lines (Prometheus accepts an
/// empty rule file).
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

/// Check the YAML and the rule-file shape of `bytes`, read from `file`.
pub fn check_yaml(file: &Path, bytes: &[u8]) -> Result<(), RuleProblem> {
    let problem = |line: Option<usize>, message: String| RuleProblem {
        file: file.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| problem(None, format!("not UTF-8: {e}")))?;
    if is_blank(text) {
        return Ok(());
    }
    let shape: RuleFileShape = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let message = e.to_string();
        let message = match e.location() {
            Some(l) => message
                .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or(&message)
                .to_string(),
            None => message,
        };
        problem(line, message)
    })?;
    let mut names = std::collections::BTreeSet::new();
    for (g, group) in shape.groups.iter().enumerate() {
        if !names.insert(&group.name) {
            return Err(problem(
                None,
                format!("groups[{g}]: group name {:?} repeated", group.name),
            ));
        }
        for (i, r) in group.rules.iter().enumerate() {
            let at = format!("group {:?}, rule {}", group.name, i + 1);
            match (&r.record, &r.alert) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(problem(None, format!("{at}: set one of record or alert")));
                }
                _ => {}
            }
            if r.expr.is_none() {
                return Err(problem(None, format!("{at}: expr is missing")));
            }
        }
    }
    Ok(())
}

/// The promtool to validate with: `PROMSHARD_PROMTOOL`, else `promtool`
/// on `PATH`; `None` when there is none (then the YAML check only).
pub fn find_promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMSHARD_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("promtool"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Run `promtool check rules <file>`.
pub async fn promtool_check(promtool: &Path, file: &Path) -> Result<(), RuleProblem> {
    let problem = |line, message| RuleProblem {
        file: file.to_path_buf(),
        line,
        message,
    };
    let child = tokio::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PROMTOOL_TIMEOUT, child).await {
        Err(_) => {
            return Err(problem(
                None,
                format!(
                    "{} check rules: no answer within {}s",
                    promtool.display(),
                    PROMTOOL_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(e)) => {
            return Err(problem(
                None,
                format!("cannot run {}: {e}", promtool.display()),
            ));
        }
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let (line, message) = parse_promtool(file, &text);
    Err(problem(line, message))
}

/// The first failure line of promtool's output, as `(line, message)`.
/// promtool writes `<file>: <line>:<col>: <msg>` for rule errors and
/// `<file>: yaml: line <n>: <msg>` for YAML ones.
pub fn parse_promtool(file: &Path, output: &str) -> (Option<usize>, String) {
    let prefix = format!("{}: ", file.display());
    let Some(rest) = output.lines().find_map(|l| l.trim().strip_prefix(&prefix)) else {
        let lines: Vec<&str> = output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Checking") && *l != "FAILED:")
            .collect();
        return (None, format!("promtool: {}", lines.join(" | ")));
    };
    let number = |s: &str| s.parse::<usize>().ok();
    if let Some(after) = rest.strip_prefix("yaml: line ")
        && let Some((n, msg)) = after.split_once(": ")
        && let Some(n) = number(n)
    {
        return (Some(n), format!("yaml: {msg}"));
    }
    if let Some((pos, msg)) = rest.split_once(": ")
        && let Some((l, c)) = pos.split_once(':')
        && let (Some(l), Some(_)) = (number(l), number(c))
    {
        return (Some(l), msg.to_string());
    }
    (None, rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<(), RuleProblem> {
        check_yaml(Path::new("/r/a.yml"), text.as_bytes())
    }

    #[test]
    fn yaml_errors_carry_their_line() {
        let e = yaml("groups:\n  - name: g\n    rules:\n      - record: x\n        expr: [\n")
            .unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        let e = yaml("groups:\n  - name: g\n   rules: []\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = yaml("group:\n  - name: g\n").unwrap_err();
        assert!(e.message.contains("groups"), "{e}");
    }

    #[test]
    fn shape_problems_name_group_and_rule() {
        let e = yaml("groups:\n  - name: g\n    rules:\n      - record: x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/r/a.yml: group \"g\", rule 1: expr is missing"
        );
        let e = yaml("groups:\n  - name: g\n    rules:\n      - expr: up\n").unwrap_err();
        assert!(e.message.contains("record or alert"), "{e}");
        let e = yaml("groups: [{name: g}, {name: g}]").unwrap_err();
        assert!(e.message.contains("repeated"), "{e}");
        assert!(yaml("# nothing yet\n").is_ok());
        assert!(
            yaml("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n").is_ok()
        );
    }

    #[test]
    fn promtool_output_gives_line_and_message() {
        let f = Path::new("/r/a.yml");
        let out = "Checking /r/a.yml\n  FAILED:\n/r/a.yml: 5:15: group \"g\", rule 1, \"x\": could not parse expression: 1:17: parse error: unclosed left parenthesis\n";
        let (line, msg) = parse_promtool(f, out);
        assert_eq!(line, Some(5));
        assert!(msg.starts_with("group \"g\", rule 1"), "{msg}");
        let (line, msg) = parse_promtool(f, "/r/a.yml: yaml: line 3: did not find expected key\n");
        assert_eq!(
            (line, msg.as_str()),
            (Some(3), "yaml: did not find expected key")
        );
        let (line, msg) = parse_promtool(f, "Checking /r/a.yml\n  FAILED:\nsomething else\n");
        assert_eq!((line, msg.as_str()), (None, "promtool: something else"));
    }
}
