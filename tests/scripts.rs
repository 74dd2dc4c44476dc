//! Target scripts as a product: sandbox, host API, node scripts, hot reload,
//! drop-in services, the mass-drop guard and the shipped examples.
//!
//! Library-level tests call the script engine directly; the others run the
//! real `promshard` binary on a temp dir. HTTP sources are real servers on
//! 127.0.0.1:0 (see `http_fixture`). Nothing sleeps and hopes: waits poll an
//! event channel with a deadline and say what they saw last.

mod http_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_fixture::{Reply, Server};
use promshard::config::Config;
use promshard::script::cache::{Reload, normalize};
use promshard::script::dropin::effective_services;
use promshard::script::{
    CompiledScript, Limits, Sandbox, ScriptCache, ScriptError, ScriptEvent, ScriptRun, watch,
};
use rhai::Map;
use tokio_util::sync::CancellationToken;

// ------------------------------------------------------------------ helpers

fn compile(dir: &Path, src: &str) -> CompiledScript {
    let path = dir.join("t.rhai");
    std::fs::write(&path, src).unwrap();
    CompiledScript::compile(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn call(src: &str, sandbox: &Sandbox) -> Result<rhai::Dynamic, ScriptError> {
    let dir = tempfile::tempdir().unwrap();
    let s = compile(dir.path(), &format!("fn run() {{ {src} }}"));
    ScriptRun::new(&s, sandbox).call("run", ())
}

fn call_err(src: &str, sandbox: &Sandbox) -> String {
    match call(src, sandbox) {
        Ok(v) => panic!("expected an error from `{src}`, got {v}"),
        Err(e) => e.to_string(),
    }
}

/// A temp dir with a config, scripts and the binary to run on it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(config: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("promshard.yaml"), config).unwrap();
        Site { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn run(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_promshard"));
        cmd.current_dir(self.dir.path())
            .arg("--config")
            .arg(self.path("promshard.yaml"))
            .args(args)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run promshard")
    }

    /// The files under out/<service>, name → content.
    fn files(&self, service: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(self.path("out").join(service))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `once --json` output of the first service.
fn report(o: &Output) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)));
    v["services"][0].clone()
}

fn total_in_files(site: &Site, service: &str) -> usize {
    site.files(service)
        .iter()
        .map(|(_, body)| {
            let groups: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
            groups
                .iter()
                .map(|g| g["targets"].as_array().unwrap().len())
                .sum::<usize>()
        })
        .sum()
}

const ONE_SERVICE: &str = r#"
out_dir: out
services:
  - name: web
    script: scripts/web.rhai
    nodes: ["10.0.0.1:9090", "10.0.0.2:9090"]
    port: 9100
"#;

fn n_targets(n: usize) -> String {
    format!(
        "fn targets(ctx) {{ let out = []; for i in 0..{n} {{ out.push(`10.9.0.${{i}}:9100`); }} out }}"
    )
}

// ------------------------------------------------------------------ sandbox

#[test]
fn endless_loop_is_stopped_within_deadline_plus_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let s = compile(
        dir.path(),
        "fn targets(ctx) { let i = 0; loop { i += 1; } }",
    );
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_millis(500);
    sandbox.limits.max_operations = u64::MAX;
    let started = Instant::now();
    let e = ScriptRun::new(&s, &sandbox)
        .targets(Map::new())
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, ScriptError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("did not finish within"), "{e}");
    assert!(
        took < Duration::from_millis(1500),
        "stopped after {took:?}, deadline 500ms"
    );
    // Also inside closures that native functions call (their operation
    // count starts afresh on every call).
    let s = compile(
        dir.path(),
        "fn targets(ctx) { [1, 2].map(|x| { loop {} }) }",
    );
    let started = Instant::now();
    let e = ScriptRun::new(&s, &sandbox)
        .targets(Map::new())
        .unwrap_err();
    assert!(matches!(e, ScriptError::Timeout { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn endless_loop_in_the_binary_fails_the_pass_within_deadline() {
    let site = Site::new(&format!("{ONE_SERVICE}script_limits: {{timeout: 1s}}\n"));
    site.write("scripts/web.rhai", "fn targets(ctx) { loop {} }");
    let started = Instant::now();
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        text(&o).contains("did not finish within 1s"),
        "{}",
        text(&o)
    );
}

#[test]
fn operation_call_depth_and_size_limits_come_from_config() {
    let cfg = format!(
        "{ONE_SERVICE}script_limits: {{max_operations: 1000, max_call_levels: 8, max_string_size: 100, max_array_size: 50, max_map_size: 5, timeout: 2s}}\n"
    );
    let config = Config::parse(Path::new("/x/promshard.yaml"), &cfg).unwrap();
    let sandbox = Sandbox::for_config(&config);
    assert_eq!(sandbox.limits.max_array_size, 50);
    assert_eq!(sandbox.limits.timeout, Duration::from_secs(2));
    assert!(call_err("let i = 0; while i < 100000 { i += 1; }", &sandbox).contains("operations"));
    let dir = tempfile::tempdir().unwrap();
    let s = compile(dir.path(), "fn f(n) { f(n + 1) }\nfn run() { f(0) }");
    let e = ScriptRun::new(&s, &sandbox).call("run", ()).unwrap_err();
    let lower = e.to_string().to_lowercase();
    assert!(
        lower.contains("stack overflow") || lower.contains("function calls"),
        "{e}"
    );
    assert!(call_err(r#"let s = "x"; s.pad(200, "y"); s"#, &sandbox).contains("string"));
    assert!(call_err("let a = []; a.pad(51, 0); a", &sandbox).contains("array"));
    assert!(
        call_err(
            "let m = #{}; for i in 0..10 { m[`k${i}`] = i; } m",
            &sandbox
        )
        .contains("map")
    );
    let bad = Config::parse(
        Path::new("/x/promshard.yaml"),
        &format!("{ONE_SERVICE}script_limits: {{max_array_size: 0, timeout: soon}}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("script_limits.max_array_size"), "{bad}");
    assert!(bad.contains("script_limits.timeout"), "{bad}");
}

/// A sandbox with small limits, so each test script hits one quickly.
fn small_limits() -> Sandbox {
    let mut sandbox = Sandbox::default();
    let l = &mut sandbox.limits;
    (l.max_operations, l.max_call_levels) = (1000, 8);
    (l.max_string_size, l.max_array_size, l.max_map_size) = (100, 50, 5);
    sandbox
}

/// Run `run()` of each script and check that its limit error names the
/// file, line and column, the config key with its value, and what to do.
/// Each case: where the limit is hit, the script, the expected
/// `file:line:column` suffix.
fn assert_limit_errors(key: &str, advice: &str, cases: &[(&str, &str, (usize, usize))]) {
    let sandbox = small_limits();
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for (where_, src, (line, column)) in cases {
        let s = compile(dir.path(), src);
        let e = ScriptRun::new(&s, &sandbox).call("run", ()).unwrap_err();
        let text = e.to_string();
        let at = format!("{}:{line}:{column}: run() stopped", s.path.display());
        let right = e.kind() == "limit"
            && e.position() == Some((*line, *column))
            && text.starts_with(&at)
            && text.contains(key)
            && text.contains(advice);
        if !right {
            wrong.push(format!("{where_} (expected :{line}:{column}): {text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn operations_limit_error_names_the_place_the_key_and_what_to_do() {
    assert_limit_errors(
        "script_limits.max_operations = 1000",
        "for big lists, targets_from_json",
        &[
            (
                "entry function",
                "fn run() {\n  let i = 0;\n  while i < 100000 { i += 1; }\n}",
                (3, 24),
            ),
            (
                "nested function",
                "fn spin() {\n  let i = 0;\n  while i < 100000 { i += 1; }\n}\nfn run() {\n  spin()\n}",
                (3, 24),
            ),
            (
                "closure",
                "fn run() {\n  [1, 2, 3].map(|x| {\n    let i = 0; while i < 100000 { i += 1; } x })\n}",
                (3, 37),
            ),
        ],
    );
}

#[test]
fn call_levels_limit_error_names_the_place_the_key_and_what_to_do() {
    assert_limit_errors(
        "script_limits.max_call_levels = 8",
        "look for unbounded recursion",
        &[
            ("entry function", "fn run() {\n  run()\n}", (2, 3)),
            (
                "nested function",
                "fn f(n) {\n  f(n + 1)\n}\nfn run() {\n  f(0)\n}",
                (2, 3),
            ),
            (
                "closure",
                "fn run() {\n  [1].map(|x| {\n    run() })\n}",
                (3, 5),
            ),
        ],
    );
}

#[test]
fn string_size_limit_error_names_the_place_the_key_and_what_to_do() {
    assert_limit_errors(
        "script_limits.max_string_size = 100",
        "targets_from_json",
        &[
            (
                "entry function",
                "fn run() {\n  let s = \"x\";\n  s.pad(200, \"y\");\n  s\n}",
                (3, 3),
            ),
            (
                "nested function",
                "fn grow(s) {\n  s.pad(200, \"y\");\n  s\n}\nfn run() {\n  grow(\"x\")\n}",
                (2, 3),
            ),
            (
                "closure",
                "fn run() {\n  [\"x\"].map(|s| {\n    s.pad(200, \"y\"); s })\n}",
                (3, 5),
            ),
        ],
    );
}

#[test]
fn array_size_limit_error_names_the_place_the_key_and_what_to_do() {
    assert_limit_errors(
        "script_limits.max_array_size = 50",
        "targets_from_json",
        &[
            (
                "entry function",
                "fn run() {\n  let a = [];\n  a.pad(51, 0);\n  a\n}",
                (3, 3),
            ),
            (
                "nested function",
                "fn grow(a) {\n  a.pad(51, 0);\n  a\n}\nfn run() {\n  grow([])\n}",
                (2, 3),
            ),
            (
                "closure",
                "fn run() {\n  [1].map(|x| {\n    let a = []; a.pad(51, 0); a })\n}",
                (3, 5),
            ),
        ],
    );
}

#[test]
fn map_size_limit_error_names_the_place_the_key_and_what_to_do() {
    assert_limit_errors(
        "script_limits.max_map_size = 5",
        "targets_from_json",
        &[
            (
                "entry function",
                "fn run() {\n  let m = #{};\n  for i in 0..10 { m[`k${i}`] = i; }\n  m\n}",
                (4, 3),
            ),
            (
                "nested function",
                "fn fill(m) {\n  for i in 0..10 { m[`k${i}`] = i; }\n  m.len()\n}\nfn run() {\n  fill(#{})\n}",
                (3, 3),
            ),
            (
                "closure",
                "fn run() {\n  [1].map(|x| {\n    let m = #{}; for i in 0..10 { m[`k${i}`] = i; } m.len() })\n}",
                (3, 35),
            ),
        ],
    );
}

#[test]
fn scripts_cannot_import_eval_or_print_to_stdout() {
    let sandbox = Sandbox::default();
    let e = call_err(r#"import "/etc/passwd" as p; 1"#, &sandbox);
    assert!(e.contains("passwd"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.rhai");
    std::fs::write(&path, r#"fn run() { eval("1 + 1") }"#).unwrap();
    let e = CompiledScript::compile(&path).unwrap_err();
    assert!(matches!(e, ScriptError::Compile { line: 1, .. }), "{e}");
}

#[test]
fn read_file_outside_allowed_dirs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(scripts.join("data")).unwrap();
    std::fs::write(scripts.join("data/hosts.json"), r#"[{"ip": "10.0.0.1"}]"#).unwrap();
    let s = compile(
        &scripts,
        r#"
fn escape() { read_file("../../etc/passwd") }
fn absolute() { read_file("/etc/passwd") }
fn inside() { read_json("data/hosts.json") }
fn missing() { read_file("data/nope.json") }
"#,
    );
    let run = ScriptRun::new(&s, &Sandbox::default());
    for f in ["escape", "absolute"] {
        let e = run.call(f, ()).unwrap_err().to_string();
        assert!(e.contains("outside the allowed directories"), "{f}: {e}");
        assert!(e.contains("line 2") || e.contains("line 3"), "{f}: {e}");
    }
    assert_eq!(
        run.call("inside", ()).unwrap().to_string(),
        r#"[#{"ip": "10.0.0.1"}]"#
    );
    let e = run.call("missing", ()).unwrap_err().to_string();
    assert!(e.contains("nope.json"), "{e}");
    // An allowed_dirs entry opens another directory, and only that one.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("x.txt"), "hello").unwrap();
    let s = compile(
        &scripts,
        &format!("fn run() {{ read_file({:?}) }}", other.path().join("x.txt")),
    );
    assert!(
        ScriptRun::new(&s, &Sandbox::default())
            .call("run", ())
            .is_err()
    );
    let sandbox = Sandbox {
        allowed_dirs: vec![other.path().to_path_buf()],
        ..Sandbox::default()
    };
    assert_eq!(
        ScriptRun::new(&s, &sandbox)
            .call("run", ())
            .unwrap()
            .to_string(),
        "hello"
    );
}

#[test]
fn reading_a_fifo_stops_at_the_calls_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fifo =
        std::ffi::CString::new(dir.path().join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let s = compile(
        dir.path(),
        r#"
fn text() { read_file("pipe") }
fn json() { read_json("pipe") }
fn targets() { targets_from_json_file("pipe") }
"#,
    );
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_millis(500);
    for function in ["text", "json", "targets"] {
        // On a thread: a call that blocks on the FIFO must fail the test,
        // not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, sandbox) = (s.clone(), sandbox.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = ScriptRun::new(&s, &sandbox).call(function, ());
            let _ = tx.send((result.map(|v| v.to_string()), started.elapsed()));
        });
        let (result, took) = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{function}() on a FIFO still blocked after 5 s"));
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("pipe") && e.contains("not a regular file"),
            "{function}: {e}"
        );
        assert!(took < Duration::from_secs(1), "{function}: took {took:?}");
    }
}

#[test]
fn env_outside_allowlist_is_refused() {
    let default = Sandbox::default();
    let e = call_err(r#"env("HOME")"#, &default);
    assert!(
        e.contains(r#"env("HOME"): not allowed"#) && e.contains("PROMSHARD_*"),
        "{e}"
    );
    // Allowed but unset is (), so scripts can use `??`.
    let v = call(
        r#"env("PROMSHARD_SURELY_UNSET_42") ?? "fallback""#,
        &default,
    )
    .unwrap();
    assert_eq!(v.to_string(), "fallback");
    let path_allowed = Sandbox {
        env_allowlist: vec!["PATH".into()],
        ..Sandbox::default()
    };
    let v = call(r#"env("PATH")"#, &path_allowed).unwrap();
    assert_eq!(v.to_string(), std::env::var("PATH").unwrap());
    assert!(call(r#"env("PATHEXT")"#, &path_allowed).is_err());
    // The binary reads PROMSHARD_* by default and the allowlist from config.
    let site = Site::new(ONE_SERVICE);
    site.write(
        "scripts/web.rhai",
        r#"fn targets(ctx) { [`${env("PROMSHARD_HOST")}:9100`] }"#,
    );
    let o = site.run(
        &["plan", "--json"],
        &[("PROMSHARD_HOST", "10.7.7.7".into())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["targets"], 1);
}

// ------------------------------------------------------------------ host API

#[test]
fn http_get_returns_the_body_and_sends_headers() {
    let server = Server::start(|path| match path {
        "/hosts" => Reply::ok(r#"{"hosts": ["a", "b"]}"#),
        _ => Reply::status(404, "no"),
    });
    let url = server.url();
    let v = call(&format!(r#"http_get("{url}/hosts")"#), &Sandbox::default()).unwrap();
    assert_eq!(v.to_string(), r#"{"hosts": ["a", "b"]}"#);
    let v = call(
        &format!(
            r#"http_get_json("{url}/hosts", #{{headers: #{{"X-Token": "s3cret"}}, timeout: "2s"}}).hosts.len()"#
        ),
        &Sandbox::default(),
    )
    .unwrap();
    assert_eq!(v.as_int().unwrap(), 2);
    let token = server
        .requests()
        .iter()
        .flat_map(|r| r.headers.clone())
        .find(|(k, _)| k == "x-token");
    assert_eq!(token, Some(("x-token".into(), "s3cret".into())));
    let e = call_err(r#"http_get("file:///etc/passwd")"#, &Sandbox::default());
    assert!(e.contains("only http:// and https://"), "{e}");
    let e = call_err(
        &format!(r#"http_get("{url}/hosts", #{{retries: 3}})"#),
        &Sandbox::default(),
    );
    assert!(e.contains("unknown option \"retries\""), "{e}");
}

#[test]
fn http_get_non_2xx_is_an_error_with_the_status() {
    let server = Server::start(|path| match path {
        "/down" => Reply::status(503, "maintenance"),
        _ => Reply::status(404, ""),
    });
    let url = server.url();
    let e = call_err(&format!(r#"http_get("{url}/down")"#), &Sandbox::default());
    assert!(e.contains("HTTP 503") && e.contains("maintenance"), "{e}");
    assert!(e.contains("/down"), "{e}");
    let e = call_err(
        &format!(r#"http_get_json("{url}/nothing")"#),
        &Sandbox::default(),
    );
    assert!(e.contains("HTTP 404"), "{e}");
    // Connection refused is an error too, not an empty body.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = call_err(
        &format!(r#"http_get("http://{closed}/")"#),
        &Sandbox::default(),
    );
    assert!(e.contains(&closed.to_string()), "{e}");
}

#[test]
fn http_get_timeout() {
    let server = Server::start(|_| Reply::ok("[]").delayed(Duration::from_secs(3)));
    let url = server.url();
    let started = Instant::now();
    let e = call_err(
        &format!(r#"http_get("{url}/slow", #{{timeout: 0.3}})"#),
        &Sandbox::default(),
    );
    assert!(e.contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The call's own deadline caps the request timeout (default 10s).
    let sandbox = Sandbox {
        limits: Limits {
            timeout: Duration::from_millis(400),
            ..Limits::default()
        },
        ..Sandbox::default()
    };
    let started = Instant::now();
    let e = call_err(&format!(r#"http_get("{url}/slow")"#), &sandbox);
    assert!(e.contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn json_helpers_and_logs() {
    let s = Sandbox::default();
    assert_eq!(
        call(r#"parse_json(`{"a": [1, 2.5, "x", null, true]}`).a[1]"#, &s)
            .unwrap()
            .to_string(),
        "2.5"
    );
    let e = call_err(r#"parse_json("{nope")"#, &s);
    assert!(e.contains("parse_json") && e.contains("line 1"), "{e}");
    assert_eq!(
        call(r#"to_json(#{b: [1, "x"], a: ()})"#, &s)
            .unwrap()
            .to_string(),
        r#"{"a":null,"b":[1,"x"]}"#
    );
    assert!(call_err(r#"to_json(|x| x)"#, &s).contains("to_json"));
    assert!(
        call(
            r#"log_info("hello"); log_warn(42); print("not on stdout"); 1"#,
            &s
        )
        .is_ok()
    );
    // JSON larger than the limits is refused while parsing.
    let small = Sandbox {
        limits: Limits {
            max_array_size: 100,
            ..Limits::default()
        },
        ..Sandbox::default()
    };
    let e = call_err(
        r#"let s = ""; for i in 0..200 { s += "0,"; } parse_json("[" + s + "0]")"#,
        &small,
    );
    assert!(e.contains("max_array_size 100"), "{e}");
}

// ------------------------------------------------------------------ errors and reload

#[test]
fn syntax_error_reports_line_and_column_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.rhai");
    std::fs::write(&path, r#"fn targets(ctx) { ["10.0.0.1:9100"] }"#).unwrap();
    let cache = ScriptCache::new();
    let first = cache.get(&path).unwrap();
    std::fs::write(&path, "fn targets(ctx) {\n  let x = ;\n  []\n}\n").unwrap();
    let error = match cache.reload(&path) {
        Reload::Failed(e) => e,
        other => panic!("expected a compile failure, got {other:?}"),
    };
    assert_eq!(error.position(), Some((2, 11)), "{error}");
    let shown = error.to_string();
    assert!(shown.contains("web.rhai:2:11: syntax error"), "{shown}");
    let serving = cache.get(&path).unwrap();
    let (groups, _) = ScriptRun::new(&serving, &Sandbox::default())
        .targets(Map::new())
        .unwrap();
    assert_eq!(
        groups[0].targets,
        ["10.0.0.1:9100"],
        "the old version serves"
    );
    assert!(first.has_fn("targets", 1));
    assert!(cache.last_error(&path).is_some());
    // The CLI reports it the same way, with the service.
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", "fn targets(ctx) {\n  [\"a:1\",\n}\n");
    let o = site.run(&["check"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("web.rhai:3:1: syntax error"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("(service web)"), "{}", text(&o));
}

#[test]
fn runtime_error_keeps_previous_files() {
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", &n_targets(6));
    let o = site.run(&["once"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let before = site.files("web");
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(total_in_files(&site, "web"), 6);
    site.write(
        "scripts/web.rhai",
        "fn targets(ctx) {\n  let hosts = [];\n  hosts[3].ip\n}\n",
    );
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("web.rhai") && out.contains("line 3"), "{out}");
    assert!(out.contains("files left as they were"), "{out}");
    assert_eq!(site.files("web"), before, "files must be untouched");
}

/// Wait for an event matching `want` on `rx`; fail with what was seen.
fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ScriptEvent>,
    within: Duration,
    what: &str,
    want: impl Fn(&ScriptEvent) -> bool,
) -> ScriptEvent {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) if want(&ev) => return ev,
            Ok(ev) => seen.push(format!("{ev:?}")),
            Err(_) if Instant::now() >= deadline => {
                panic!("no {what} within {within:?}; saw {seen:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A watcher on a temp dir holding `web.rhai` (`["a:1"]`), compiled.
struct Watched {
    dir: tempfile::TempDir,
    path: PathBuf,
    key: PathBuf,
    cache: Arc<ScriptCache>,
    rx: tokio::sync::mpsc::UnboundedReceiver<ScriptEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    fn start() -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.rhai");
        std::fs::write(&path, r#"fn targets(ctx) { ["a:1"] }"#).unwrap();
        let cache = Arc::new(ScriptCache::new());
        cache.get(&path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = watch(
            vec![dir.path().to_path_buf()],
            cache.clone(),
            tx,
            cancel.clone(),
        )
        .unwrap();
        Watched {
            key: normalize(&path),
            dir,
            path,
            cache,
            rx,
            cancel,
            task,
        }
    }
}

/// Cancel a watcher and require that it stops.
async fn stop(cancel: CancellationToken, task: tokio::task::JoinHandle<()>) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("watcher stops when cancelled")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_noticed_and_recompiled_within_one_second() {
    let w = Watched::start();
    let (path, key, cache, mut rx) = (w.path.clone(), w.key.clone(), Arc::clone(&w.cache), w.rx);
    let dir = &w.dir;
    let targets = |cache: &ScriptCache| {
        let s = cache.get(&path).unwrap();
        ScriptRun::new(&s, &Sandbox::default())
            .targets(Map::new())
            .unwrap()
            .0[0]
            .targets
            .clone()
    };
    let second = Duration::from_secs(1);
    let is = |k: &'static str| {
        let key = key.clone();
        move |e: &ScriptEvent| {
            e.path() == key
                && matches!(
                    (k, e),
                    ("reloaded", ScriptEvent::Reloaded { .. })
                        | ("failed", ScriptEvent::Failed { .. })
                        | ("removed", ScriptEvent::Removed { .. })
                        | ("added", ScriptEvent::Added { .. })
                )
        }
    };

    // 1. Write in place.
    tokio::task::block_in_place(|| {
        std::fs::write(&path, r#"fn targets(ctx) { ["b:2"] }"#).unwrap();
        wait_for(
            &mut rx,
            second,
            "reload after a write in place",
            is("reloaded"),
        );
    });
    assert_eq!(targets(&cache), ["b:2"]);

    // 2. Save by rename, as editors do.
    tokio::task::block_in_place(|| {
        let tmp = dir.path().join(".web.rhai.swp");
        std::fs::write(&tmp, r#"fn targets(ctx) { ["c:3"] }"#).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        wait_for(
            &mut rx,
            second,
            "reload after save-by-rename",
            is("reloaded"),
        );
    });
    assert_eq!(targets(&cache), ["c:3"]);

    // 3. A broken save: reported with line and column, old version serves.
    tokio::task::block_in_place(|| {
        std::fs::write(&path, "fn targets(ctx) {\n  [\"d:4\"\n").unwrap();
        let ev = wait_for(&mut rx, second, "failure after a broken save", is("failed"));
        let ScriptEvent::Failed { error, .. } = ev else {
            unreachable!()
        };
        assert!(error.position().is_some_and(|(l, _)| l >= 2), "{error}");
    });
    assert_eq!(targets(&cache), ["c:3"]);

    // 4. A new file is announced; a removed one too.
    tokio::task::block_in_place(|| {
        let other = dir.path().join("db.rhai");
        std::fs::write(&other, "fn targets(ctx) { [] }").unwrap();
        let okey = normalize(&other);
        wait_for(
            &mut rx,
            second,
            "a new script",
            |e| matches!(e, ScriptEvent::Added { path } if *path == okey),
        );
        std::fs::remove_file(&other).unwrap();
        wait_for(
            &mut rx,
            second,
            "a removed script",
            |e| matches!(e, ScriptEvent::Removed { path } if *path == okey),
        );
        // Files that are not scripts are ignored.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::write(&path, r#"fn targets(ctx) { ["e:5"] }"#).unwrap();
        let ev = wait_for(&mut rx, second, "the next reload", |_| true);
        assert!(is("reloaded")(&ev), "{ev:?}");
    });
    stop(w.cancel, w.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_script_is_a_failed_reload_and_the_last_good_version_keeps_serving() {
    let w = Watched::start();
    let (path, key, cache, mut rx) = (w.path.clone(), w.key.clone(), Arc::clone(&w.cache), w.rx);
    for empty in ["", "\n  \n", "// nothing here yet\n"] {
        tokio::task::block_in_place(|| {
            std::fs::write(&path, empty).unwrap();
            let ev = wait_for(&mut rx, Duration::from_secs(1), "an event", |e| {
                e.path() == key
            });
            let ScriptEvent::Failed { error, .. } = ev else {
                panic!("{empty:?} gave {ev:?}, not a failed reload")
            };
            assert!(error.to_string().contains("defines no function"), "{error}");
        });
        let s = cache.get(&path).unwrap();
        let (groups, _) = ScriptRun::new(&s, &Sandbox::default())
            .targets(Map::new())
            .unwrap();
        assert_eq!(groups[0].targets, ["a:1"], "after {empty:?}");
    }
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", "");
    let o = site.run(&["check"], &[]);
    assert!(!o.status.success(), "check passed an empty script");
    assert!(text(&o).contains("defines no function"), "{}", text(&o));
    stop(w.cancel, w.task).await;
}

// ------------------------------------------------------------------ mass-drop guard

#[test]
fn mass_drop_guard_refuses_empty_and_sixty_percent_drop_and_force_overrides() {
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", &n_targets(10));
    let o = site.run(&["once"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ten = site.files("web");
    assert_eq!(total_in_files(&site, "web"), 10);

    // A CMDB answering 200 with an empty list.
    site.write("scripts/web.rhai", &n_targets(0));
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("refusing to drop from 10 to 0 targets"),
        "{}",
        text(&o)
    );
    assert_eq!(site.files("web"), ten);

    // 60% gone.
    site.write("scripts/web.rhai", &n_targets(4));
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("refusing to drop from 10 to 4 targets"),
        "{}",
        text(&o)
    );
    assert_eq!(site.files("web"), ten);

    // 50% is within the default ratio... but first, --force.
    let o = site.run(&["once", "--force"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(total_in_files(&site, "web"), 4);
    site.write("scripts/web.rhai", &n_targets(2));
    let o = site.run(&["once"], &[]);
    assert!(o.status.success(), "a 50% drop is allowed: {}", text(&o));
    assert_eq!(total_in_files(&site, "web"), 2);
}

// ------------------------------------------------------------------ node scripts

#[test]
fn nodes_from_fn_nodes_are_validated_like_config_nodes() {
    let config = r#"
out_dir: out
services:
  - name: web
    script: scripts/web.rhai
"#;
    let site = Site::new(config);
    site.write(
        "scripts/web.rhai",
        r#"
fn nodes(ctx) { ["10.0.0.2:9090", #{addr: "10.0.0.1:9090", weight: 3}] }
fn targets(ctx) { ctx.nodes.map(|n| `${n.split(":")[0]}:9100`) + ["10.5.0.1:9100"] }
"#,
    );
    let o = site.run(&["once", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&o);
    let nodes: Vec<&str> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["10.0.0.1:9090", "10.0.0.2:9090"]);
    assert_eq!(r["targets"], 3, "ctx.nodes had the script's nodes");

    for (bad, why) in [
        (r#"["10.0.0.1"]"#, "port"),
        (r#"["10.0.0.1:9090", "10.0.0.1:9090"]"#, "duplicate node"),
        (r#"[#{addr: "10.0.0.1:9090", weight: 0}]"#, "weight 0"),
        (r#"[]"#, "at least one node"),
        (r#""10.0.0.1:9090""#, "expected an array"),
    ] {
        site.write(
            "scripts/web.rhai",
            &format!("fn nodes(ctx) {{ {bad} }}\nfn targets(ctx) {{ [\"10.5.0.1:9100\"] }}"),
        );
        let o = site.run(&["once"], &[]);
        assert!(!o.status.success(), "{bad}: {}", text(&o));
        assert!(text(&o).contains("nodes() returned"), "{bad}: {}", text(&o));
        assert!(
            text(&o).contains(why),
            "{bad} should say {why}: {}",
            text(&o)
        );
    }

    site.write(
        "scripts/web.rhai",
        r#"fn targets(ctx) { ["10.5.0.1:9100"] }"#,
    );
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no nodes"), "{}", text(&o));
    let o = site.run(&["check"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no nodes"), "{}", text(&o));
}

#[test]
fn config_rejects_nodes_and_node_script_together() {
    let e = Config::parse(
        Path::new("/x/promshard.yaml"),
        r#"
services:
  - name: web
    script: scripts/web.rhai
    node_script: scripts/nodes.rhai
    nodes: ["10.0.0.1:9090"]
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("node_script: set nodes or node_script, not both"),
        "{e}"
    );
}

// ------------------------------------------------------------------ drop-ins

const WITH_DEFAULTS: &str = r#"
out_dir: out
defaults:
  nodes: ["10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.3:9090"]
  schedule: "@every 1m"
services:
  - name: web
    script: scripts/web.rhai
    port: 9100
"#;

#[test]
fn drop_in_with_fn_service_is_picked_up_by_once_and_check() {
    let site = Site::new(WITH_DEFAULTS);
    site.write("scripts/web.rhai", &n_targets(3));
    site.write(
        "scripts/blackbox.rhai",
        r#"
fn service() { #{ replicas: 2, port: 9115, schedule: "@every 5m" } }
fn targets(ctx) { [`10.1.0.1:${ctx.port}`, `10.1.0.2:${ctx.port}`] }
"#,
    );
    // Not drop-ins: sub-directories, hidden files, other extensions.
    site.write("scripts/examples/ignored.rhai", "fn targets(ctx) { [] }");
    site.write("scripts/.hidden.rhai", "fn targets(ctx) { [] }");
    site.write("scripts/readme.txt", "x");

    let o = site.run(&["check"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("ok: service web ("), "{out}");
    assert!(
        out.contains("ok: service blackbox (drop-in ")
            && out.contains("replicas 2, schedule @every 300s"),
        "{out}"
    );
    assert!(out.contains("2 service(s) (1 drop-in)"), "{out}");
    assert!(!out.contains("ignored") && !out.contains("hidden"), "{out}");

    let o = site.run(&["once"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let files = site.files("blackbox");
    assert_eq!(files.len(), 3, "one file per default node: {files:?}");
    assert_eq!(
        total_in_files(&site, "blackbox"),
        4,
        "2 targets × 2 replicas"
    );
    assert!(files.iter().any(|(_, b)| b.contains("10.1.0.1:9115")));
    assert_eq!(total_in_files(&site, "web"), 3);

    // `--service` selects a drop-in like any other.
    let o = site.run(&["plan", "--service", "blackbox", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["name"], "blackbox");

    // check --run calls targets() and reports counts and the first problems.
    site.write(
        "scripts/blackbox.rhai",
        r#"fn targets(ctx) { ["10.1.0.1:9115", "nope", 42, "10.1.0.1:9115"] }"#,
    );
    let o = site.run(&["check", "--run"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("targets(): 1 target(s), 2 invalid, 1 duplicate(s) merged"),
        "{out}"
    );
    assert!(out.contains("invalid: group 1: \"nope\""), "{out}");
    assert!(
        site.files("blackbox")
            .iter()
            .any(|(_, b)| b.contains("10.1.0.2")),
        "check --run wrote nothing"
    );
}

#[test]
fn bad_drop_ins_are_reported_with_the_key_and_others_still_run() {
    let site = Site::new(WITH_DEFAULTS);
    site.write("scripts/web.rhai", &n_targets(3));
    site.write(
        "scripts/bad.rhai",
        "fn service() { #{ replicas: 0, colour: \"red\" } }\nfn targets(ctx) { [] }",
    );
    site.write(
        "scripts/zero.rhai",
        "fn service() { #{ replicas: 0 } }\nfn targets(ctx) { [] }",
    );
    site.write("scripts/broken.rhai", "fn targets(ctx) {\n  [\n");
    site.write("scripts/notargets.rhai", "fn other() { 1 }");
    let o = site.run(&["check"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("drop-in service \"bad\"") && out.contains("unknown key \"colour\""),
        "{out}"
    );
    assert!(
        out.contains("drop-in service \"zero\": fn service(): replicas: replicas must be >= 1"),
        "{out}"
    );
    assert!(out.contains("broken.rhai:3:1: syntax error"), "{out}");
    assert!(
        out.contains("drop-in service \"notargets\": fn targets(ctx) is not defined"),
        "{out}"
    );
    assert!(out.contains("ok: service web"), "{out}");
    // `once` runs the good services and fails overall.
    let o = site.run(&["once"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(total_in_files(&site, "web"), 3);
}

#[test]
fn effective_services_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    let cfg = dir.path().join("promshard.yaml");
    std::fs::write(&cfg, WITH_DEFAULTS).unwrap();
    std::fs::write(dir.path().join("scripts/web.rhai"), n_targets(1)).unwrap();
    std::fs::write(
        dir.path().join("scripts/api.rhai"),
        "fn nodes(ctx) { [\"10.3.0.1:9090\"] }\nfn targets(ctx) { [] }",
    )
    .unwrap();
    let config = Config::load(&cfg).unwrap();
    let cache = ScriptCache::new();
    let (services, problems) = effective_services(&config, &cache);
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "api"]);
    let api = &services[1];
    assert!(api.drop_in && !services[0].drop_in);
    assert!(
        api.nodes.is_empty(),
        "fn nodes(ctx) wins over defaults.nodes"
    );
    assert_eq!(
        services[0].nodes.len(),
        3,
        "explicit services inherit defaults"
    );
    assert_eq!(api.script, config.scripts_dir.join("api.rhai"));
    // The event API maps paths to services.
    let ev = ScriptEvent::Reloaded {
        path: normalize(&api.script),
    };
    assert!(ev.affects(api) && !ev.affects(&services[0]));
    // No services at all is a problem to report.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "scripts_dir: nowhere\n").unwrap();
    let (s, p) = effective_services(&Config::load(&empty).unwrap(), &cache);
    assert!(s.is_empty());
    assert!(p[0].message.contains("no services"), "{p:?}");
}

// ------------------------------------------------------------------ examples

fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/examples")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn example_json_file() {
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", &example("json_file.rhai"));
    site.write(
        "scripts/hosts.json",
        r#"[{"hostname": "a", "ip": "10.0.0.11", "env": "prod", "dc": "fra1", "role": "web"},
            {"hostname": "b", "ip": "10.0.0.12", "env": "prod", "dc": "fra1", "role": "web"},
            {"hostname": "c", "env": "prod", "dc": "fra1", "role": "web"}]"#,
    );
    let o = site.run(&["once", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["targets"], 2, "{}", text(&o));
    assert!(
        text(&o).contains("has no ip"),
        "the host without ip is logged"
    );
    let all: String = site.files("web").into_iter().map(|(_, b)| b).collect();
    assert!(
        all.contains("10.0.0.11:9100") && all.contains(r#""hostname":"b""#),
        "{all}"
    );
    // The file can be named by PROMSHARD_HOSTS_FILE.
    site.write(
        "scripts/other.json",
        r#"[{"hostname": "z", "ip": "10.0.0.99", "env": "x", "dc": "y", "role": "r"}]"#,
    );
    let o = site.run(
        &["plan", "--json"],
        &[("PROMSHARD_HOSTS_FILE", "other.json".into())],
    );
    assert_eq!(report(&o)["targets"], 1, "{}", text(&o));
}

#[test]
fn example_http_cmdb() {
    let server = Server::start(|path| match path {
        "/api/hosts?service=web" => Reply::ok(
            r#"{"hosts": [
                {"name": "w1", "ip": "10.2.0.1", "env": "prod", "status": "active"},
                {"name": "w2", "ip": "10.2.0.2", "env": "prod", "status": "retired"},
                {"name": "w3", "ip": "10.2.0.3", "env": "dev", "status": "active"}]}"#,
        ),
        _ => Reply::status(404, "unknown"),
    });
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", &example("http_cmdb.rhai"));
    let env = [
        ("PROMSHARD_CMDB_URL", server.url()),
        ("PROMSHARD_CMDB_TOKEN", "t0ken".to_string()),
    ];
    let o = site.run(&["once", "--json"], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["targets"], 2);
    let all: String = site.files("web").into_iter().map(|(_, b)| b).collect();
    assert!(
        all.contains("10.2.0.3:9100") && !all.contains("10.2.0.2"),
        "{all}"
    );
    assert!(all.contains(r#""instance_name":"w1""#), "{all}");
    let auth = server.requests()[0]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .cloned();
    assert_eq!(auth.map(|(_, v)| v), Some("Bearer t0ken".into()));
    // The CMDB failing fails the pass and keeps the files.
    let before = site.files("web");
    server.set_route(|_| Reply::status(500, "db down"));
    let o = site.run(&["once"], &env);
    assert!(!o.status.success());
    assert!(text(&o).contains("HTTP 500"), "{}", text(&o));
    assert_eq!(site.files("web"), before);
}

/// One Consul instance: node, node address, service address, port, tags,
/// service meta (JSON).
type ConsulInstance<'a> = (&'a str, &'a str, &'a str, u16, &'a [&'a str], &'a str);

/// Consul's `/v1/health/service/<name>?passing` answer for `instances`.
fn consul_answer(instances: &[ConsulInstance]) -> String {
    let entries: Vec<serde_json::Value> = instances
        .iter()
        .map(|(node, node_addr, svc_addr, port, tags, meta)| {
            serde_json::json!({
                "Node": {"ID": "x", "Node": node, "Address": node_addr, "Datacenter": "dc1",
                          "TaggedAddresses": {"lan": node_addr}, "Meta": {}},
                "Service": {"ID": format!("svc-{node}"), "Service": "web", "Tags": tags,
                             "Address": svc_addr, "Meta": serde_json::from_str::<serde_json::Value>(meta).unwrap(),
                             "Port": port, "Weights": {"Passing": 1, "Warning": 1}},
                "Checks": [{"Node": node, "CheckID": "serfHealth", "Status": "passing"}]
            })
        })
        .collect();
    serde_json::to_string(&entries).unwrap()
}

#[test]
fn example_consul_targets() {
    let body = consul_answer(&[
        (
            "n1",
            "10.0.0.1",
            "10.0.1.1",
            9100,
            &["prod", "web"],
            r#"{"team": "shop"}"#,
        ),
        ("n2", "10.0.0.2", "", 9101, &[], "{}"),
    ]);
    let server = Server::start(move |path| {
        if path == "/v1/health/service/web?passing" {
            Reply::ok(body.clone())
        } else {
            Reply::status(404, "")
        }
    });
    let site = Site::new(ONE_SERVICE);
    site.write("scripts/web.rhai", &example("consul_targets.rhai"));
    let o = site.run(
        &["once", "--json"],
        &[("PROMSHARD_CONSUL_URL", server.url())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["targets"], 2);
    let all: String = site.files("web").into_iter().map(|(_, b)| b).collect();
    assert!(all.contains("10.0.1.1:9100"), "service address: {all}");
    assert!(
        all.contains("10.0.0.2:9101"),
        "node address fallback: {all}"
    );
    assert!(all.contains(r#""consul_tags":",prod,web,""#), "{all}");
    assert!(all.contains(r#""consul_meta_team":"shop""#), "{all}");
    assert!(all.contains(r#""consul_node":"n2""#), "{all}");
}

#[test]
fn example_consul_nodes() {
    let nodes = consul_answer(&[
        ("p1", "10.8.0.1", "", 9090, &[], r#"{"weight": "3"}"#),
        ("p2", "10.8.0.2", "10.8.1.2", 9090, &[], "{}"),
    ]);
    let server = Server::start(move |path| {
        if path == "/v1/health/service/prometheus?passing" {
            Reply::ok(nodes.clone())
        } else {
            Reply::status(404, "")
        }
    });
    let config = r#"
out_dir: out
services:
  - name: web
    script: scripts/web.rhai
    node_script: scripts/nodes/consul_nodes.rhai
"#;
    let site = Site::new(config);
    site.write("scripts/web.rhai", &n_targets(40));
    site.write(
        "scripts/nodes/consul_nodes.rhai",
        &example("consul_nodes.rhai"),
    );
    let o = site.run(
        &["once", "--json"],
        &[("PROMSHARD_CONSUL_URL", server.url())],
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&o);
    let nodes: Vec<(String, u64)> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(nodes[0].0, "10.8.0.1:9090");
    assert_eq!(nodes[1].0, "10.8.1.2:9090", "service address wins");
    assert!(nodes[0].1 > nodes[1].1, "weight 3 takes more: {nodes:?}");
    let o = site.run(
        &["check", "--run"],
        &[("PROMSHARD_CONSUL_URL", server.url())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("nodes(): 2 node(s): 10.8.0.1:9090, 10.8.1.2:9090"),
        "{}",
        text(&o)
    );
}

#[test]
fn example_static_list_as_a_drop_in() {
    let site = Site::new(WITH_DEFAULTS);
    site.write("scripts/web.rhai", &n_targets(1));
    site.write("scripts/blackbox.rhai", &example("static_list.rhai"));
    let o = site.run(&["once", "--service", "blackbox", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&o);
    assert_eq!(r["targets"], 5);
    assert_eq!(r["replicas"], 2);
    let all: String = site.files("blackbox").into_iter().map(|(_, b)| b).collect();
    assert!(
        all.contains("10.1.0.3:9115") && all.contains(r#""site":"edge""#),
        "{all}"
    );
}

#[test]
fn every_shipped_example_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rhai") {
            let s = CompiledScript::compile(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                s.has_fn("targets", 1) || s.has_fn("nodes", 1),
                "{}",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 5, "{n} examples");
}
