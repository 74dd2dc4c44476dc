//! The memory backstop (`script_limits.max_memory_mb`) stops a call close
//! to its limit, even when each step of the script allocates a lot. Its own
//! test binary (one test) so that the peak RSS in /proc/self/status is this
//! test's alone.

use std::time::Duration;

use promshard::script::{CompiledScript, Sandbox, ScriptRun};

mod util;
use util::peak_rss_mib;

#[test]
fn a_call_is_stopped_near_max_memory_even_when_each_step_allocates_a_megabyte() {
    let limit_mib = 128;
    let mut sandbox = Sandbox::default();
    sandbox.limits.timeout = Duration::from_secs(10);
    sandbox.limits.max_memory = limit_mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.rhai");
    // Index assignment into a map is not measured by Rhai's size limits:
    // only the backstop sees this map grow by a fresh 1 MiB string a step.
    std::fs::write(
        &path,
        r#"fn targets(ctx) {
    let s = "x";
    s.pad(1048576, "x");
    let m = #{};
    let i = 0;
    loop { m[`k${i}`] = s + i; i += 1; }
}"#,
    )
    .unwrap();
    let script = CompiledScript::compile(&path).unwrap();
    let before = peak_rss_mib();
    let started = std::time::Instant::now();
    let err = ScriptRun::new(&script, &sandbox)
        .call("targets", (rhai::Map::new(),))
        .unwrap_err()
        .to_string();
    let peak = peak_rss_mib();
    eprintln!(
        "stopped after {:?}: {err}; peak RSS {peak} MiB (from {before} MiB, limit {limit_mib} MiB)",
        started.elapsed()
    );
    assert!(err.contains("more than 128 MiB"), "{err}");
    assert!(
        peak <= before + limit_mib + 32,
        "overshoot: grew to {peak} MiB from {before} MiB with a {limit_mib} MiB limit"
    );
}
