//! Target scripts: the Rhai engine, its sandbox, the host API and calls into
//! `targets(ctx)` / `file_name(f)`.
//!
//! A script is compiled once into an [`CompiledScript`] (an `Arc<AST>`); each
//! pass makes a fresh, sandboxed [`Engine`] (limits on operations, call depth,
//! string/array/map sizes and a wall-clock deadline enforced in
//! `on_progress`) and calls functions with a fresh `Scope`. Nothing a script
//! can call writes files, spawns processes or reads outside its allowed
//! directories. Calls are blocking: run them off the async runtime.

mod convert;
mod host;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

pub use convert::groups_from_dynamic;

use crate::target::{Invalid, RawGroup};

// Nesting limits of the parser; Rhai's debug-build defaults reject ordinary
// scripts (a map literal inside a loop inside a function).
const MAX_EXPR_DEPTH: usize = 256;
const MAX_FN_EXPR_DEPTH: usize = 128;

/// Sandbox limits for every script call.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall-clock deadline of one call.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000_000,
            max_call_levels: 64,
            max_string_size: 64 << 20,
            max_array_size: 2_000_000,
            max_map_size: 100_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a script may touch besides pure computation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sandbox {
    pub limits: Limits,
    /// Directories `read_file` may read, besides the script's own directory.
    pub allowed_dirs: Vec<PathBuf>,
}

/// A script failure, with the file and (when known) line and column.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{path}: cannot read script: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: syntax error: {message}")]
    Compile {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {function}() {}: {message}", at(.line, .column))]
    Runtime {
        path: PathBuf,
        function: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {function}() did not finish within {timeout:?} and was stopped")]
    Timeout {
        path: PathBuf,
        function: String,
        timeout: Duration,
    },
    #[error("{path}: {function}() is not defined")]
    Missing { path: PathBuf, function: String },
    #[error("{path}: {function}() returned {message}")]
    BadResult {
        path: PathBuf,
        function: String,
        message: String,
    },
}

fn at(line: &usize, column: &usize) -> String {
    if *line == 0 {
        "failed".into()
    } else {
        format!("failed at line {line}, column {column}")
    }
}

impl ScriptError {
    /// Short kind for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Read { .. } => "read",
            ScriptError::Compile { .. } => "compile",
            ScriptError::Runtime { .. } => "runtime",
            ScriptError::Timeout { .. } => "timeout",
            ScriptError::Missing { .. } => "missing",
            ScriptError::BadResult { .. } => "bad_result",
        }
    }
}

/// A compiled script; cheap to clone.
#[derive(Clone)]
pub struct CompiledScript {
    pub path: PathBuf,
    ast: Arc<AST>,
}

impl std::fmt::Debug for CompiledScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledScript")
            .field("path", &self.path)
            .finish()
    }
}

impl CompiledScript {
    /// Read and compile a script file.
    pub fn compile(path: &Path) -> Result<Self, ScriptError> {
        let source = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::compile_source(path, &source)
    }

    /// Compile script text as if read from `path`.
    pub fn compile_source(path: &Path, source: &str) -> Result<Self, ScriptError> {
        let mut engine = Engine::new();
        engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
        let ast = engine.compile(source).map_err(|e| ScriptError::Compile {
            path: path.to_path_buf(),
            line: e.position().line().unwrap_or(0),
            column: e.position().position().unwrap_or(0),
            message: e.err_type().to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            ast: Arc::new(ast),
        })
    }

    /// Whether the script defines `name` with `arity` parameters.
    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }
}

/// A sandboxed engine bound to one script, for the calls of one pass.
pub struct ScriptRun {
    engine: Engine,
    script: CompiledScript,
    deadline: Arc<Mutex<Instant>>,
    timeout: Duration,
}

impl ScriptRun {
    /// Make a sandboxed engine for `script`.
    pub fn new(script: &CompiledScript, sandbox: &Sandbox) -> Self {
        let limits = &sandbox.limits;
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
        let deadline = Arc::new(Mutex::new(Instant::now() + limits.timeout));
        let watched = Arc::clone(&deadline);
        engine.on_progress(move |ops| {
            // Reading the clock on every operation would cost more than the
            // operation; every 256th is precise enough for a deadline in seconds.
            if ops % 256 == 0 {
                let deadline = *watched.lock().unwrap_or_else(|p| p.into_inner());
                if Instant::now() >= deadline {
                    return Some(Dynamic::from("deadline"));
                }
            }
            None
        });
        let script_dir = script
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut read_dirs = vec![script_dir];
        read_dirs.extend(sandbox.allowed_dirs.iter().cloned());
        host::register(&mut engine, host::HostContext { read_dirs });
        Self {
            engine,
            script: script.clone(),
            deadline,
            timeout: limits.timeout,
        }
    }

    /// Call `name(args…)` with a fresh scope and a fresh deadline.
    pub fn call(&self, name: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, ScriptError> {
        if !self.script.ast.iter_functions().any(|f| f.name == name) {
            return Err(ScriptError::Missing {
                path: self.script.path.clone(),
                function: name.into(),
            });
        }
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + self.timeout;
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false);
        self.engine
            .call_fn_with_options::<Dynamic>(options, &mut scope, &self.script.ast, name, args)
            .map_err(|e| self.runtime_error(name, *e))
    }

    fn runtime_error(&self, function: &str, err: EvalAltResult) -> ScriptError {
        if let EvalAltResult::ErrorTerminated(..) = err {
            return ScriptError::Timeout {
                path: self.script.path.clone(),
                function: function.into(),
                timeout: self.timeout,
            };
        }
        let pos: Position = err.position();
        ScriptError::Runtime {
            path: self.script.path.clone(),
            function: function.into(),
            line: pos.line().unwrap_or(0),
            column: pos.position().unwrap_or(0),
            message: err.to_string(),
        }
    }

    /// Call `targets(ctx)` and convert its result into raw groups; items
    /// that are not targets are reported in the second vector.
    pub fn targets(&self, ctx: Map) -> Result<(Vec<RawGroup>, Vec<Invalid>), ScriptError> {
        let value = self.call("targets", (ctx,))?;
        groups_from_dynamic(value).map_err(|message| ScriptError::BadResult {
            path: self.script.path.clone(),
            function: "targets".into(),
            message,
        })
    }

    /// Call `file_name(f)` if the script defines it.
    pub fn file_name(&self, f: Map) -> Option<Result<String, ScriptError>> {
        if !self.script.has_fn("file_name", 1) {
            return None;
        }
        Some(self.call("file_name", (f,)).and_then(|v| {
            v.into_string().map_err(|t| ScriptError::BadResult {
                path: self.script.path.clone(),
                function: "file_name".into(),
                message: format!("a {t}, not a string"),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> ScriptRun {
        let s = CompiledScript::compile_source(Path::new("/tmp/t.rhai"), src).unwrap();
        ScriptRun::new(&s, &Sandbox::default())
    }

    #[test]
    fn compile_error_has_line_and_column() {
        let e =
            CompiledScript::compile_source(Path::new("x.rhai"), "fn targets(ctx) {\n  let = 1;\n}")
                .unwrap_err();
        match e {
            ScriptError::Compile { line, column, .. } => assert_eq!((line, column), (2, 7)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn runtime_error_has_position() {
        let e = run("fn targets(ctx) {\n  let x = 1;\n  x.nope()\n}")
            .targets(Map::new())
            .unwrap_err();
        assert!(matches!(e, ScriptError::Runtime { line: 3, .. }), "{e}");
    }

    #[test]
    fn endless_loop_is_stopped_at_deadline() {
        let s = CompiledScript::compile_source(Path::new("t.rhai"), "fn targets(ctx) { loop {} }")
            .unwrap();
        let mut sandbox = Sandbox::default();
        sandbox.limits.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let e = ScriptRun::new(&s, &sandbox)
            .targets(Map::new())
            .unwrap_err();
        assert!(matches!(e, ScriptError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn strings_and_groups() {
        let (groups, bad) = run(r#"fn targets(ctx) { ["a:1", #{targets: ["b:2", "c:3"], labels: #{env: "prod", n: 3}}, 42] }"#)
            .targets(Map::new())
            .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].targets, ["b:2", "c:3"]);
        assert_eq!(groups[1].labels["n"], "3");
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].group, 2);
    }

    #[test]
    fn file_name_is_optional() {
        assert!(
            run("fn targets(ctx) { [] }")
                .file_name(Map::new())
                .is_none()
        );
        let r = run(r#"fn file_name(f) { `${f.node}.json` }"#);
        let mut m = Map::new();
        m.insert("node".into(), "n1".into());
        assert_eq!(r.file_name(m).unwrap().unwrap(), "n1.json");
    }
}
