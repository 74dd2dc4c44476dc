//! A script asking for a 100M-element array is refused by the sandbox
//! limits before the memory is taken. Its own test binary (one test) so
//! that the peak RSS measured in /proc/self/status is this test's alone.

use std::time::Duration;

use promshard::script::{CompiledScript, Sandbox, ScriptRun};

mod util;
use util::peak_rss_mib;

#[test]
fn hundred_million_element_arrays_are_refused_within_memory_bound() {
    let before = peak_rss_mib();
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_secs(3);
    // Every way a script can grow an array: pad, push in a loop, map into
    // nested arrays, concatenation, and a JSON document built as a string.
    let attempts = [
        ("pad", "let a = []; a.pad(100_000_000, 0); a.len()"),
        (
            "push",
            "let a = []; for i in 0..100_000_000 { a.push(i); } a.len()",
        ),
        (
            "map",
            "let a = []; a.pad(1_000_000, 0); let b = a.map(|x| [x, x, x, x]); b.len()",
        ),
        ("concat", "let a = [0]; while true { a += a; } a.len()"),
        (
            "nested",
            "let a = []; for i in 0..100_000_000 { a.push([i, i, i, i]); } a.len()",
        ),
        (
            "json",
            r#"let s = "0,"; while s.len() < 30_000_000 { s += s; } parse_json("[" + s + "0]").len()"#,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in attempts {
        let path = dir.path().join(format!("{name}.rhai"));
        std::fs::write(&path, format!("fn targets(ctx) {{ {body} }}")).unwrap();
        let script = CompiledScript::compile(&path).unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let result = ScriptRun::new(&script, &sandbox).call("targets", (rhai::Map::new(),));
        let err = match result {
            Ok(v) => panic!("{name}: a huge value was built: {v}"),
            Err(e) => e.to_string(),
        };
        // Growing an array one element at a time costs O(n) per step in
        // Rhai's size checks, so those loops hit the deadline before the
        // size limit; either way nothing beyond the limits is allocated.
        let lower = err.to_lowercase();
        assert!(
            lower.contains("too large")
                || lower.contains("max_array_size")
                || lower.contains("max_string_size")
                || lower.contains("did not finish within"),
            "{name}: refused for another reason: {err}"
        );
        let peak = peak_rss_mib();
        eprintln!(
            "{name}: refused in {:?} ({err}); peak RSS {peak} MiB (started at {before} MiB)",
            started.elapsed()
        );
        assert!(
            peak < before + 300,
            "{name}: process grew to {peak} MiB (from {before} MiB)"
        );
    }
}

#[test]
fn a_map_filled_key_by_key_is_stopped_by_the_memory_backstop() {
    // Index assignment is not measured by Rhai's size checks; the resident
    // memory backstop stops it instead.
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_secs(60);
    sandbox.limits.max_memory = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.rhai");
    std::fs::write(
        &path,
        "fn targets(ctx) { let m = #{}; let i = 0; loop { m[`key-${i}`] = [i, i]; i += 1; } }",
    )
    .unwrap();
    let script = CompiledScript::compile(&path).unwrap();
    let before = peak_rss_mib();
    let err = ScriptRun::new(&script, &sandbox)
        .call("targets", (rhai::Map::new(),))
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 64 MiB"), "{err}");
    let peak = peak_rss_mib();
    assert!(peak < before + 300, "grew to {peak} MiB from {before} MiB");
}
