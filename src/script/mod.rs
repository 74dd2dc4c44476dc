//! Target scripts: the Rhai engine, its sandbox, the host API and calls into
//! `targets(ctx)` / `file_name(f)`.
//!
//! A script is compiled once into an [`CompiledScript`] (an `Arc<AST>`); each
//! pass makes a fresh, sandboxed [`Engine`] (limits on operations, call depth,
//! string/array/map sizes and a wall-clock deadline enforced in
//! `on_progress`) and calls functions with a fresh `Scope`. Nothing a script
//! can call writes files, spawns processes or reads outside its allowed
//! directories. Calls are blocking: run them off the async runtime.
//!
//! Around that core: [`cache`] keeps the last good compiled version of every
//! script, [`watch`] recompiles on file changes and publishes
//! [`ScriptEvent`]s, and [`dropin`] turns `scripts_dir/<name>.rhai` files
//! into services.
//!
//! The script contract: `fn targets(ctx)` (required) returns the targets;
//! `fn file_name(f)` (optional) names the files; `fn nodes(ctx)` (optional)
//! returns the Prometheus nodes; `fn service()` (optional, drop-ins) returns
//! the service's settings.

mod alloc;
pub mod cache;
mod convert;
mod dns;
pub mod dropin;
mod host;
mod http;
pub mod json_targets;
mod position;
mod sd;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

pub use crate::config::Limits;
pub use cache::ScriptCache;
pub use convert::groups_from_dynamic;
pub use host::{DEFAULT_HTTP_TIMEOUT, env_allowed};
pub use watch::{ScriptEvent, watch};

use crate::shard::placement::NodeSpec;
use crate::shard::target::{Invalid, RawGroup};

// Nesting limits of the parser; Rhai's debug-build defaults reject ordinary
// scripts (a map literal inside a loop inside a function).
const MAX_EXPR_DEPTH: usize = 256;
const MAX_FN_EXPR_DEPTH: usize = 128;

/// What a script may touch besides pure computation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub limits: Limits,
    /// Directories `read_file` may read, besides the script's own directory.
    pub allowed_dirs: Vec<PathBuf>,
    /// Environment variable names `env()` may read (`PREFIX_*` or exact).
    pub env_allowlist: Vec<String>,
    /// DNS servers of `dns_*()` and `dns_sd_configs`; empty: the system's.
    pub dns_servers: Vec<std::net::SocketAddr>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            allowed_dirs: Vec::new(),
            env_allowlist: vec!["PROMSHARD_*".to_string()],
            dns_servers: Vec::new(),
        }
    }
}

impl Sandbox {
    /// The sandbox of every script of `config`.
    pub fn for_config(config: &crate::config::Config) -> Sandbox {
        Sandbox {
            limits: config.script_limits.clone(),
            allowed_dirs: config.allowed_dirs.clone(),
            env_allowlist: config.env_allowlist.clone(),
            dns_servers: config.dns_servers.clone(),
        }
    }
}

/// A script failure, with the file and (when known) line and column.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScriptError {
    #[error("{path}: cannot read script: {source}")]
    Read {
        path: PathBuf,
        source: Arc<std::io::Error>,
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
    #[error(
        "{path}{}: {function}() stopped: {}, more than script_limits.{} = {value}; {}",
        place(.line, .column), .limit.what, .limit.key, .limit.hint
    )]
    Limit {
        path: PathBuf,
        function: String,
        /// Where the limit tripped; 0 when Rhai did not keep it (it drops
        /// the position of limit errors at script-function boundaries).
        line: usize,
        column: usize,
        limit: &'static Limit,
        /// The limit's configured value.
        value: u64,
    },
    #[error(
        "{path}: {function}() allocated more than {limit_mb} MiB and was stopped (script_limits.max_memory_mb)"
    )]
    Memory {
        path: PathBuf,
        function: String,
        limit_mb: u64,
    },
    #[error("{path}: {function}() did not finish within {timeout:?} and was stopped")]
    Timeout {
        path: PathBuf,
        function: String,
        timeout: Duration,
    },
    #[error("{path}: {function}() is not defined")]
    Missing { path: PathBuf, function: String },
    #[error(
        "{path}: defines no function (a script needs fn targets(ctx), a node script fn nodes(ctx)); an empty file is not taken as a new version"
    )]
    Empty { path: PathBuf },
    #[error(
        "{path}: service {service} has no nodes: set nodes: or node_script: in the config, or define fn nodes(ctx) in the script"
    )]
    NoNodes { path: PathBuf, service: String },
    #[error("{path}: {function}() returned {message}")]
    BadResult {
        path: PathBuf,
        function: String,
        message: String,
    },
}

fn place(line: &usize, column: &usize) -> String {
    if *line == 0 {
        String::new()
    } else {
        format!(":{line}:{column}")
    }
}

fn at(line: &usize, column: &usize) -> String {
    if *line == 0 {
        "failed".into()
    } else {
        format!("failed at line {line}, column {column}")
    }
}

impl ScriptError {
    /// The script the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ScriptError::Read { path, .. }
            | ScriptError::Compile { path, .. }
            | ScriptError::Runtime { path, .. }
            | ScriptError::Limit { path, .. }
            | ScriptError::Timeout { path, .. }
            | ScriptError::Memory { path, .. }
            | ScriptError::Missing { path, .. }
            | ScriptError::Empty { path }
            | ScriptError::NoNodes { path, .. }
            | ScriptError::BadResult { path, .. } => path,
        }
    }

    /// Line and column, for compile and runtime errors (0 when unknown).
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ScriptError::Compile { line, column, .. }
            | ScriptError::Runtime { line, column, .. }
            | ScriptError::Limit { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }

    /// Every value [`ScriptError::kind`] gives.
    pub const KINDS: [&'static str; 9] = [
        "read",
        "compile",
        "runtime",
        "limit",
        "timeout",
        "memory",
        "missing",
        "no_nodes",
        "bad_result",
    ];

    /// Short kind for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ScriptError::Read { .. } => "read",
            // Never serves, like a script that does not compile.
            ScriptError::Compile { .. } | ScriptError::Empty { .. } => "compile",
            ScriptError::Runtime { .. } => "runtime",
            ScriptError::Limit { .. } => "limit",
            ScriptError::Timeout { .. } => "timeout",
            ScriptError::Memory { .. } => "memory",
            ScriptError::Missing { .. } => "missing",
            ScriptError::NoNodes { .. } => "no_nodes",
            ScriptError::BadResult { .. } => "bad_result",
        }
    }
}

/// A compiled script; cheap to clone.
#[derive(Clone)]
pub struct CompiledScript {
    pub path: PathBuf,
    ast: Arc<AST>,
    /// Made by promshard (a `source:` service), not written by a user: its
    /// errors carry no line and column, which would point into text
    /// nobody wrote.
    generated: bool,
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
            source: Arc::new(source),
        })?;
        Self::compile_source(path, &source)
    }

    /// Compile script text as if read from `path`.
    pub fn compile_source(path: &Path, source: &str) -> Result<Self, ScriptError> {
        let mut engine = Engine::new();
        engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
        // `eval` would run text that was never compiled (or checked) here.
        engine.disable_symbol("eval");
        let ast = engine.compile(source).map_err(|e| ScriptError::Compile {
            path: path.to_path_buf(),
            line: e.position().line().unwrap_or(0),
            column: e.position().position().unwrap_or(0),
            message: e.err_type().to_string(),
        })?;
        // A file truncated by a failed deploy or saved empty by mistake
        // compiles; it must not replace the version that works.
        if ast.iter_functions().next().is_none() {
            return Err(ScriptError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            ast: Arc::new(ast),
            generated: false,
        })
    }

    /// Compile a script promshard made itself, named by `path` in errors.
    pub fn generated(path: &Path, source: &str) -> Result<Self, ScriptError> {
        Self::compile_source(path, source).map(|s| Self {
            generated: true,
            ..s
        })
    }

    /// Whether the script defines `name` with `arity` parameters.
    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }
}

/// The token of a stop from `on_progress` (`"deadline"` or `"memory"`), if
/// `err` is or wraps one; a stop inside a closure called by `map`/`filter`
/// arrives wrapped.
fn terminated(err: &EvalAltResult) -> Option<String> {
    match err {
        EvalAltResult::ErrorTerminated(token, _) => Some(token.to_string()),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => terminated(inner),
        _ => None,
    }
}

/// A sandbox limit as messages name it.
#[derive(Debug)]
pub struct Limit {
    /// What went over, e.g. "too many operations".
    pub what: &'static str,
    /// The config key under `script_limits`.
    pub key: &'static str,
    /// What to do about it.
    pub hint: &'static str,
    /// Its configured value.
    value: fn(&Limits) -> u64,
}

const BIG_LISTS: &str = "raise it, or for big inventories use targets_from_json / targets_from_json_file, which build targets natively";

const OPERATIONS: Limit = Limit {
    what: "too many operations",
    key: "max_operations",
    hint: "raise it or do less work per call (for big lists, targets_from_json / targets_from_json_file build targets natively)",
    value: |l| l.max_operations,
};
const CALL_LEVELS: Limit = Limit {
    what: "too many nested function calls",
    key: "max_call_levels",
    hint: "look for unbounded recursion, or raise it",
    value: |l| l.max_call_levels as u64,
};
const STRING_SIZE: Limit = Limit {
    what: "a string too long",
    key: "max_string_size",
    hint: BIG_LISTS,
    value: |l| l.max_string_size as u64,
};
const ARRAY_SIZE: Limit = Limit {
    what: "an array too large (counted over the whole value)",
    key: "max_array_size",
    hint: BIG_LISTS,
    value: |l| l.max_array_size as u64,
};
const MAP_SIZE: Limit = Limit {
    what: "a map too large (counted over the whole value)",
    key: "max_map_size",
    hint: BIG_LISTS,
    value: |l| l.max_map_size as u64,
};

/// The limit behind a Rhai limit error, if `err` is or wraps one, and the
/// position Rhai kept (the innermost one that is known).
fn limit_hit(err: &EvalAltResult) -> Option<(&'static Limit, Position)> {
    let limit = match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) => {
            return limit_hit(inner).map(|(l, p)| (l, if p.is_none() { *pos } else { p }));
        }
        EvalAltResult::ErrorTooManyOperations(_) => &OPERATIONS,
        EvalAltResult::ErrorStackOverflow(_) => &CALL_LEVELS,
        EvalAltResult::ErrorDataTooLarge(what, _) => match what.as_str() {
            "Length of string" => &STRING_SIZE,
            "Size of object map" => &MAP_SIZE,
            _ => &ARRAY_SIZE,
        },
        _ => return None,
    };
    Some((limit, err.position()))
}

/// Stop a call at its deadline or when it allocated more than
/// `max_memory`, checked in `on_progress`.
fn watch_progress(
    engine: &mut Engine,
    limits: &Limits,
    deadline: &Arc<Mutex<Instant>>,
    alloc_start: &Arc<std::sync::atomic::AtomicI64>,
) {
    let watched = Arc::clone(deadline);
    let ticks = std::sync::atomic::AtomicU32::new(0);
    let alloc_watched = Arc::clone(alloc_start);
    let max_memory = i64::try_from(limits.max_memory).unwrap_or(i64::MAX);
    engine.on_progress(move |_ops| {
        // Reading the clock on every operation would cost more than the
        // operation; every 256th is precise enough for a deadline in
        // seconds. Count calls here rather than use `ops`: closures called
        // from native functions (`map`, `filter`, …) restart Rhai's
        // operation count, which would never reach a multiple of 256.
        let n = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A thread-local read: cheap enough for every operation.
        let start = alloc_watched.load(std::sync::atomic::Ordering::Relaxed);
        if alloc::allocated().wrapping_sub(start) > max_memory {
            return Some(Dynamic::from("memory"));
        }
        if n.is_multiple_of(256) {
            let deadline = *watched.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() >= deadline {
                return Some(Dynamic::from("deadline"));
            }
        }
        None
    });
}

/// A sandboxed engine bound to one script, for the calls of one pass.
pub struct ScriptRun {
    engine: Engine,
    script: CompiledScript,
    sandbox: Sandbox,
    deadline: Arc<Mutex<Instant>>,
    /// What the calling thread had allocated when the current call started.
    alloc_start: Arc<std::sync::atomic::AtomicI64>,
    limits: Limits,
    /// Set on the engine that re-runs a call to find where a limit hit.
    tracker: Option<position::Tracker>,
}

impl ScriptRun {
    /// Make a sandboxed engine for `script`.
    pub fn new(script: &CompiledScript, sandbox: &Sandbox) -> Self {
        Self::build(script, sandbox, false)
    }

    /// Like [`ScriptRun::new`], with the position tracker installed (what a
    /// limit error's second run uses; public for the benchmark).
    #[doc(hidden)]
    pub fn tracked(script: &CompiledScript, sandbox: &Sandbox) -> Self {
        Self::build(script, sandbox, true)
    }

    fn build(script: &CompiledScript, sandbox: &Sandbox, track: bool) -> Self {
        let limits = &sandbox.limits;
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
        // No `import` (it would read any file) and no `eval` of strings.
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        let deadline = Arc::new(Mutex::new(Instant::now() + limits.timeout));
        let alloc_start = Arc::new(std::sync::atomic::AtomicI64::new(0));
        watch_progress(&mut engine, limits, &deadline, &alloc_start);
        let script_dir = script
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut read_dirs = vec![script_dir];
        read_dirs.extend(sandbox.allowed_dirs.iter().cloned());
        host::register(
            &mut engine,
            host::HostContext {
                script: script.path.clone(),
                read_dirs,
                env_allowlist: sandbox.env_allowlist.clone(),
                dns_servers: sandbox.dns_servers.clone(),
                limits: limits.clone(),
                deadline: Arc::clone(&deadline),
            },
        );
        let tracker = track.then(|| position::Tracker::install(&mut engine));
        Self {
            engine,
            script: script.clone(),
            sandbox: sandbox.clone(),
            deadline,
            alloc_start,
            limits: limits.clone(),
            tracker,
        }
    }

    /// Call `name(args…)` with a fresh scope and a fresh deadline.
    pub fn call(
        &self,
        name: &str,
        args: impl rhai::FuncArgs + Clone,
    ) -> Result<Dynamic, ScriptError> {
        if !self.script.ast.iter_functions().any(|f| f.name == name) {
            return Err(ScriptError::Missing {
                path: self.script.path.clone(),
                function: name.into(),
            });
        }
        self.call_raw(name, args.clone()).map_err(|e| {
            let e = self.runtime_error(name, e);
            match e {
                ScriptError::Limit { .. } if self.tracker.is_none() => self.locate(name, args, e),
                e => e,
            }
        })
    }

    /// The call itself; the error as Rhai gave it.
    fn call_raw(&self, name: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, EvalAltResult> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now() + self.limits.timeout;
        self.alloc_start
            .store(alloc::allocated(), std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &self.tracker {
            t.reset();
        }
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false);
        let value = self
            .engine
            .call_fn_with_options::<Dynamic>(options, &mut scope, &self.script.ast, name, args)
            .map_err(|e| *e)?;
        // A value built without function calls on it (a map filled key by
        // key, then returned) has not been measured yet.
        self.engine
            .ensure_data_size_within_limits(&value)
            .map_err(|e| *e)?;
        Ok(value)
    }

    /// Rhai drops the position of a limit error at function boundaries (see
    /// `position`): run the call again with the tracker and take the place
    /// from there. Calls are deterministic over the same input, and a limit
    /// error already cost the pass; a second run that ends differently (its
    /// source answered differently) leaves the error as it was.
    fn locate(&self, name: &str, args: impl rhai::FuncArgs, err: ScriptError) -> ScriptError {
        let ScriptError::Limit {
            limit: hit, value, ..
        } = &err
        else {
            return err;
        };
        let again = Self::tracked(&self.script, &self.sandbox);
        let place = match again.call_raw(name, args) {
            Err(e) => match again.runtime_error(name, e) {
                ScriptError::Limit { limit, .. } if limit.key == hit.key => again
                    .tracker
                    .as_ref()
                    .and_then(position::Tracker::innermost),
                _ => None,
            },
            Ok(_) => None,
        };
        match place {
            Some((line, column)) => ScriptError::Limit {
                path: self.script.path.clone(),
                function: name.into(),
                line,
                column,
                limit: hit,
                value: *value,
            },
            None => err,
        }
    }

    fn runtime_error(&self, function: &str, err: EvalAltResult) -> ScriptError {
        if terminated(&err).as_deref() == Some("memory") {
            return ScriptError::Memory {
                path: self.script.path.clone(),
                function: function.into(),
                limit_mb: self.limits.max_memory >> 20,
            };
        }
        if terminated(&err).is_some() {
            return ScriptError::Timeout {
                path: self.script.path.clone(),
                function: function.into(),
                timeout: self.limits.timeout,
            };
        }
        if let Some((limit, pos)) = limit_hit(&err) {
            let value = (limit.value)(&self.limits);
            return ScriptError::Limit {
                path: self.script.path.clone(),
                function: function.into(),
                line: pos.line().unwrap_or(0),
                column: pos.position().unwrap_or(0),
                limit,
                value,
            };
        }
        if self.script.generated {
            let message = match err {
                EvalAltResult::ErrorRuntime(d, _) => d.to_string(),
                other => other.to_string(),
            };
            return ScriptError::Runtime {
                path: self.script.path.clone(),
                function: function.into(),
                line: 0,
                column: 0,
                message,
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

    /// Call `nodes(ctx)` and check its result like `nodes:` in the config.
    pub fn nodes(&self, ctx: Map) -> Result<Vec<NodeSpec>, ScriptError> {
        let value = self.call("nodes", (ctx,))?;
        let bad = |message: String| ScriptError::BadResult {
            path: self.script.path.clone(),
            function: "nodes".into(),
            message,
        };
        let json: serde_json::Value = rhai::serde::from_dynamic(&value)
            .map_err(|e| bad(format!("a value that is not plain data: {e}")))?;
        crate::config::nodes_from_json(json).map_err(bad)
    }

    /// Call `service()` if the script defines it; the settings map as JSON.
    pub fn service_settings(&self) -> Option<Result<serde_json::Value, ScriptError>> {
        if !self.script.has_fn("service", 0) {
            return None;
        }
        Some(self.call("service", ()).and_then(|value| {
            let bad = |message: String| ScriptError::BadResult {
                path: self.script.path.clone(),
                function: "service".into(),
                message,
            };
            if !value.is_map() {
                return Err(bad(format!(
                    "a {}, not a map of settings",
                    value.type_name()
                )));
            }
            rhai::serde::from_dynamic(&value)
                .map_err(|e| bad(format!("a map that is not plain data: {e}")))
        }))
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
        assert_eq!(&groups[1].labels["n"], "3");
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
