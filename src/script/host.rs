//! The host API scripts can call. Small on purpose: every function here is
//! documented in README and nothing here writes or spawns.

use std::path::{Component, Path, PathBuf};

use rhai::{Dynamic, Engine, EvalAltResult};

/// What host functions of one script may reach.
#[derive(Clone, Debug)]
pub struct HostContext {
    /// `read_file` resolves relative paths against the first and may read
    /// below any of these.
    pub read_dirs: Vec<PathBuf>,
}

type HostResult<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(message: String) -> HostResult<T> {
    Err(message.into())
}

/// Register the host API on `engine`.
pub fn register(engine: &mut Engine, ctx: HostContext) {
    let reader = ctx.clone();
    engine.register_fn("read_file", move |path: &str| -> HostResult<String> {
        let resolved = resolve_readable(&reader.read_dirs, path).or_else(fail)?;
        std::fs::read_to_string(&resolved)
            .or_else(|e| fail(format!("read_file({path:?}): {}: {e}", resolved.display())))
    });
    engine.register_fn("parse_json", |text: &str| -> HostResult<Dynamic> {
        let value: serde_json::Value =
            serde_json::from_str(text).or_else(|e| fail(format!("parse_json: {e}")))?;
        rhai::serde::to_dynamic(value)
    });
    engine.register_fn(
        "log_info",
        |msg: &str| tracing::info!(target: "script", "{msg}"),
    );
    engine.register_fn(
        "log_warn",
        |msg: &str| tracing::warn!(target: "script", "{msg}"),
    );
}

/// Resolve `path` (relative to the first dir) and refuse anything that
/// leaves every allowed directory, lexically and after following links.
pub fn resolve_readable(dirs: &[PathBuf], path: &str) -> Result<PathBuf, String> {
    let base = dirs.first().ok_or("read_file: no readable directory")?;
    let joined = lexical_normalize(&base.join(path));
    let real = joined.canonicalize().unwrap_or_else(|_| joined.clone());
    let allowed = dirs.iter().any(|d| {
        let d_lex = lexical_normalize(d);
        let d_real = d.canonicalize().unwrap_or_else(|_| d_lex.clone());
        joined.starts_with(&d_lex) && real.starts_with(&d_real)
    });
    if allowed {
        Ok(joined)
    } else {
        Err(format!(
            "read_file({path:?}): outside the allowed directories ({})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("scripts")];
        std::fs::create_dir_all(&dirs[0]).unwrap();
        assert!(resolve_readable(&dirs, "../../etc/passwd").is_err());
        assert!(resolve_readable(&dirs, "/etc/passwd").is_err());
        assert!(resolve_readable(&dirs, "data/x.json").is_ok());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", dirs[0].join("link")).unwrap();
            assert!(resolve_readable(&dirs, "link/passwd").is_err());
        }
    }
}
