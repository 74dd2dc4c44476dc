//! Daemon reloads: config edits (file watcher and SIGHUP), script edits,
//! scripts that stop compiling or cannot be read, and reloads while a pass
//! is running or stuck — the running daemon as an operator sees it
//! (files, API, log), with the last good state kept on every bad edit.
//!
//! Every wait polls with a deadline and shows the daemon's log on timeout.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::child::holds;
use util::fixture::*;

#[test]
fn editing_a_script_changes_the_files_within_one_second() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let dir = s.service_dir("web");
    wait_sharded(&d, &dir, NODES.len(), &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    s.write_script("web", &static_script(&h, "v2"));
    let edited = Instant::now();
    wait_version(&d, &dir, NODES.len(), "v2", Duration::from_secs(1));
    eprintln!("files changed {:?} after the edit", edited.elapsed());
}

#[test]
fn adding_a_service_starts_it_and_an_invalid_config_is_rejected() {
    let s = Setup::new();
    let (ha, hb) = (hosts(12), hosts(7));
    s.write_script("alpha", &static_script(&ha, "a"));
    s.write_script("beta", &static_script(&hb, "b"));
    let alpha = service_yaml("alpha", &NODES, "");
    let beta = service_yaml("beta", &NODES[..2], "");
    s.write_config("", std::slice::from_ref(&alpha));
    let d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));

    // Add beta: the watcher reloads the file and beta's first pass runs.
    s.write_config("", &[alpha.clone(), beta.clone()]);
    wait_sharded(&d, &s.service_dir("beta"), 2, &hb, Duration::from_secs(10));
    d.wait_passes("beta", 1, Duration::from_secs(10));
    assert!(d.metric("promshard_config_reloads_total", &[("result", "ok")]) >= 1.0);

    // An invalid edit (replicas: 0, beta dropped) is rejected as a whole.
    let failed_before = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
    let bad_alpha = alpha.replace("    schedule:", "    replicas: 0\n    schedule:");
    assert_ne!(bad_alpha, alpha);
    s.write_config("", &[bad_alpha]);
    d.wait("the rejection in the log", Duration::from_secs(10), || {
        let lines = d.log_lines();
        let rejected = lines.iter().find(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("config rejected") && m.contains("replicas"))
        });
        rejected
            .map(|_| ())
            .ok_or_else(|| format!("{} log lines, none rejecting", lines.len()))
    });
    d.wait(
        "config_reloads_total{result=\"failed\"} to move",
        Duration::from_secs(5),
        || {
            let v = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
            if v > failed_before {
                Ok(())
            } else {
                Err(format!("{v} (before: {failed_before})"))
            }
        },
    );

    // The running config stays: both services listed, alpha still passes.
    let listed = d.services().unwrap_or_else(|e| d.fail(&e));
    assert!(
        listed.contains_key("alpha") && listed.contains_key("beta"),
        "{:?}",
        listed.keys()
    );
    let before = d.passes("alpha").unwrap_or_else(|e| d.fail(&e));
    d.dispatch("alpha", None);
    d.wait_passes("alpha", before + 1, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["alpha"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
}

#[test]
fn sighup_reloads_the_config() {
    let s = Setup::new();
    let (ha, hb) = (hosts(9), hosts(5));
    s.write_script("alpha", &static_script(&ha, "a"));
    s.write_script("beta", &static_script(&hb, "b"));
    let alpha = service_yaml("alpha", &NODES, "");
    let beta = service_yaml("beta", &NODES, "");
    // The config is a link to a file in another directory (as with a
    // ConfigMap), so the file watcher does not see the edit: only SIGHUP can.
    fs::create_dir_all(s.path("real")).expect("mkdir real");
    let listen = format!("127.0.0.1:{}", s.port);
    s.write(
        "real/promshard.yaml",
        &config_yaml(&listen, "", std::slice::from_ref(&alpha)),
    );
    std::os::unix::fs::symlink("real/promshard.yaml", s.config_path()).expect("symlink");
    let mut d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));

    s.write(
        "real/promshard.yaml",
        &config_yaml(&listen, "", &[alpha, beta]),
    );
    d.proc.signal(libc::SIGHUP);
    wait_sharded(&d, &s.service_dir("beta"), 3, &hb, Duration::from_secs(10));
    let reloads = d.logged("config reloaded");
    assert!(
        reloads.iter().any(|l| l["fields"]["trigger"] == "SIGHUP"),
        "no SIGHUP reload logged: {reloads:?}"
    );
    assert!(d.proc.exited().is_none(), "SIGHUP killed the daemon");
}

#[test]
fn a_changed_ha_block_is_reported_as_needing_a_restart() {
    let s = Setup::new();
    s.write_script("web", &static_script(&hosts(3), "v1"));
    let web = service_yaml("web", &NODES, "");
    // No etcd answers: the instance stays a standby, which is enough here.
    let ha = |ttl: u32| {
        format!(
            "ha: {{etcd: {{endpoints: [\"127.0.0.1:1\"]}}, name: lab, lease_ttl: {ttl}s, instance: i0}}\n"
        )
    };
    s.write_config(&ha(2), std::slice::from_ref(&web));
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(10));
    let warning = "ha: changes take effect after a restart; the election runs on as started";
    assert!(d.logged(warning).is_empty(), "warned before any change");
    s.write_config(&ha(3), &[web]);
    d.wait("the restart warning", Duration::from_secs(10), || {
        match d.logged(warning).len() {
            0 => Err("not yet".to_string()),
            _ => Ok(()),
        }
    });
}

#[test]
fn the_api_answers_while_a_reload_waits_for_a_long_pass() {
    let s = Setup::new();
    s.write_script("quick", &static_script(&hosts(3), "q"));
    s.write_script("slow", &slow_script(&hosts(3), 3.0));
    let quick = service_yaml("quick", &NODES, "");
    s.write_config("", &[quick.clone(), service_yaml("slow", &NODES, "")]);
    let d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    // Change slow: its runner is replaced once its pass ends.
    s.write_config("", &[quick, service_yaml("slow", &NODES[..2], "")]);
    d.wait("the reload to start", Duration::from_secs(5), || {
        let n = d.logged("config reloaded").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    for (what, path) in [
        ("GET", "/api/v1/services"),
        ("POST", "/api/v1/services/quick/dispatch"),
    ] {
        let started = Instant::now();
        let r = if what == "GET" {
            d.get(path)
        } else {
            d.post(path, None)
        };
        let took = started.elapsed();
        let r = r.unwrap_or_else(|e| d.fail(&e));
        assert!(r.status < 300, "{what} {path}: {} {}", r.status, r.body);
        assert!(
            took < Duration::from_secs(1),
            "{what} {path} took {took:?} during the reload"
        );
    }
    assert_eq!(
        d.passes("slow"),
        Ok(1),
        "slow pass 2 ended before the calls; the test proves nothing"
    );
    d.wait_passes("slow", 3, Duration::from_secs(20));
}

#[test]
fn a_script_that_stops_compiling_keeps_serving_until_it_is_fixed() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let dir = s.service_dir("web");
    let good = wait_sharded(&d, &dir, 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let failed = [("result", "failed")];
    let failed_before = d.metric("promshard_script_reloads_total", &failed);

    // A syntax error on line 2.
    s.write_script("web", "fn targets(ctx) {\n    [\"10.1.0.1:9100\",, ]\n}\n");
    let counted = d.wait(
        "script_reloads_total{result=\"failed\"} to move",
        Duration::from_secs(5),
        || {
            let v = d.metric("promshard_script_reloads_total", &failed);
            if v > failed_before {
                Ok(v)
            } else {
                Err(format!("{v} (before: {failed_before})"))
            }
        },
    );
    assert_eq!(counted, failed_before + 1.0);
    let reported = d
        .log_lines()
        .into_iter()
        .find(|l| {
            l["level"] == "ERROR"
                && l["fields"]["line"].as_u64() == Some(2)
                && l["fields"]["script"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("web.rhai"))
        })
        .unwrap_or_else(|| d.fail("no compile error naming web.rhai line 2"));
    assert!(
        reported["fields"]["column"].as_u64().is_some_and(|c| c > 0),
        "{reported}"
    );
    // Reported once, not by the watcher and again by the daemon.
    let errors: Vec<Value> = d
        .log_lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line per failed compile: {errors:?}"
    );

    // The API tells which version serves and why the edit does not.
    let state = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["script_state"];
    let error = state["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("web.rhai:2:") && error.contains("syntax error"),
        "script_state.error names file:line:column: {state}"
    );
    assert!(
        state["error_since"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339: {state}"
    );
    assert!(
        state["version"].as_str().is_some_and(|v| v.len() == 16),
        "the serving version: {state}"
    );
    let serving = state["version"].clone();

    // The last good version keeps serving: a pass runs it and the files
    // stay as they were.
    assert_eq!(
        d.passes("web"),
        Ok(1),
        "a failed compile must not trigger a pass"
    );
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    assert_eq!(
        sd_files(&dir),
        Ok(good.clone()),
        "files changed under a broken script"
    );

    // The fix takes effect within a second.
    let ok_before = d.metric("promshard_script_reloads_total", &[("result", "ok")]);
    s.write_script("web", &static_script(&h, "v2"));
    let fixed = Instant::now();
    wait_version(&d, &dir, 3, "v2", Duration::from_secs(1));
    eprintln!("files changed {:?} after the fix", fixed.elapsed());
    assert!(d.metric("promshard_script_reloads_total", &[("result", "ok")]) > ok_before);
    assert_eq!(
        d.metric("promshard_script_reloads_total", &failed),
        counted,
        "the fix counted as a failure"
    );
    let state = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["script_state"];
    assert!(
        state["error"].is_null(),
        "error cleared by the fix: {state}"
    );
    assert_ne!(
        state["version"], serving,
        "the fixed version serves: {state}"
    );
}

/// Name of the file whose presence holds a [`gated_script`] pass.
const GATE: &str = "hold";

/// A script that logs [`SLOW_BEGINS`] and then does not return while
/// `svc/hold` exists (checking it in a loop, within its deadline), the
/// way a script waiting on a hung source never returns on its own.
fn gated_script(hosts: &[String]) -> String {
    format!(
        "fn targets(ctx) {{\n    log_info(\"{SLOW_BEGINS}\");\n    loop {{ try {{ read_file(\"{GATE}\"); }} catch {{ break; }} }}\n    [{}]\n}}\n",
        quoted(hosts)
    )
}

#[test]
fn a_reload_applies_at_once_to_idle_services_while_another_pass_is_stuck() {
    let s = Setup::new();
    let (hs, hb) = (hosts(6), hosts(4));
    s.write(&format!("{SCRIPTS}/{GATE}"), "");
    s.write_script("stuck", &gated_script(&hs));
    s.write_script("beta", &static_script(&hb, "b"));
    s.write_config("", &[service_yaml("stuck", &NODES, "")]);
    let d = s.start();
    d.wait_slow_begun(1, Duration::from_secs(20));
    d.wait_watching();

    // Change the stuck service: it keeps its pass, and says when the new
    // settings apply.
    s.write_config("", &[service_yaml("stuck", &NODES[..2], "")]);
    d.wait(
        "the deferred change in the log",
        Duration::from_secs(5),
        || {
            let lines = d.logged("service changed; new settings apply after the pass in progress");
            if lines.iter().any(|l| l["fields"]["service"] == "stuck") {
                Ok(())
            } else {
                Err(format!("{} such lines", lines.len()))
            }
        },
    );

    // Another edit adds beta: it starts at once, not after stuck's pass.
    s.write_config(
        "",
        &[
            service_yaml("stuck", &NODES[..2], ""),
            service_yaml("beta", &NODES, ""),
        ],
    );
    let edited = Instant::now();
    wait_sharded(&d, &s.service_dir("beta"), 3, &hb, Duration::from_secs(2));
    eprintln!("beta's files written {:?} after the edit", edited.elapsed());
    assert!(!s.service_dir("stuck").exists(), "stuck's pass ended early");

    // Released, stuck finishes and re-plans with its new settings.
    fs::remove_file(s.path(&format!("{SCRIPTS}/{GATE}"))).expect("removing the gate");
    wait_sharded(&d, &s.service_dir("stuck"), 2, &hs, Duration::from_secs(10));
}

/// `promshard check` on this setup's config: whether it passes, and its
/// stderr.
fn check(s: &Setup) -> (bool, String) {
    let run = util::run_in(s.dir.path(), &["-c", "promshard.yaml", "check"]);
    (run.code == Some(0), run.stderr)
}

#[test]
fn a_config_that_check_rejects_is_never_applied_by_the_running_daemon() {
    let s = Setup::new();
    let ha = hosts(6);
    s.write_script("alpha", &static_script(&ha, "a"));
    let alpha = service_yaml("alpha", &NODES, "");
    s.write_config("", std::slice::from_ref(&alpha));
    let d = s.start();
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(20));
    d.wait_passes("alpha", 1, Duration::from_secs(10));
    d.wait_watching();

    let extra = |script: &str| {
        format!(
            "  - name: beta\n    script: {script}\n    schedule: \"{NEVER}\"\n    nodes: [\"{}\"]\n",
            NODES[0]
        )
    };
    let bad = [
        ("an empty file", String::new(), "empty"),
        (
            "a missing script",
            config_yaml(
                &format!("127.0.0.1:{}", s.port),
                "",
                &[alpha.clone(), extra("svc/nope.rhai")],
            ),
            "nope.rhai",
        ),
        (
            "script: /etc/passwd",
            config_yaml(
                &format!("127.0.0.1:{}", s.port),
                "",
                &[alpha.clone(), extra("/etc/passwd")],
            ),
            "/etc/passwd",
        ),
    ];
    for (what, text, named) in bad {
        let failed = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
        s.write("promshard.yaml", &text);
        let (ok, stderr) = check(&s);
        assert!(!ok, "check passed {what}");
        assert!(stderr.contains(named), "check on {what}: {stderr}");
        d.wait(
            &format!("{what} to be rejected"),
            Duration::from_secs(10),
            || {
                let now = d.metric("promshard_config_reloads_total", &[("result", "failed")]);
                if now > failed {
                    Ok(())
                } else {
                    Err(format!("config_reloads_total{{result=\"failed\"}} = {now}"))
                }
            },
        );
        let rejected = d.log_lines().into_iter().any(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("config rejected") && m.contains(named))
        });
        assert!(rejected, "no rejection naming {named:?} for {what}");
        let listed = d.services().unwrap_or_else(|e| d.fail(&e));
        assert_eq!(listed.keys().collect::<Vec<_>>(), ["alpha"], "after {what}");
    }
    // The running config is intact: alpha passes into the same out_dir.
    let before = d.passes("alpha").unwrap_or_else(|e| d.fail(&e));
    d.dispatch("alpha", None);
    d.wait_passes("alpha", before + 1, Duration::from_secs(10));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["alpha"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    wait_sharded(&d, &s.service_dir("alpha"), 3, &ha, Duration::from_secs(5));
}

#[test]
fn a_script_deleted_or_unreadable_keeps_its_last_good_version_running() {
    let (s, h) = web_setup("", 9);
    let d = s.start();
    let dir = s.service_dir("web");
    wait_sharded(&d, &dir, 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let script = s.path(&format!("{SCRIPTS}/web.rhai"));
    let pass_ok = |why: &str| {
        let before = d.passes("web").unwrap_or_else(|e| d.fail(&e));
        d.dispatch("web", None);
        d.wait_passes("web", before + 1, Duration::from_secs(10));
        let last = &d.services().unwrap_or_else(|e| d.fail(&e))["web"]["last_pass"];
        if last["result"] != "ok" {
            d.fail(&format!("pass {why}: {last}"));
        }
    };

    // Deleted (a deploy that removes, then writes back).
    fs::remove_file(&script).expect("removing the script");
    d.wait("the removal in the log", Duration::from_secs(5), || {
        let n = d.logged("script removed").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    pass_ok("while the script is deleted");

    // Unreadable: mode 000 (root reads through that, so there the path
    // becomes a directory, which no one can read as a script).
    s.write_script("web", &static_script(&h, "v1"));
    d.wait("the script to come back", Duration::from_secs(5), || {
        let n = d.logged("script added").len() + d.logged("script reloaded").len();
        if n >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let make_unreadable = || {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = fs::remove_file(&script);
            fs::create_dir_all(&script).expect("a directory in the script's place");
        } else {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o000)).expect("chmod 000");
        }
    };
    make_unreadable();
    let read_errors = || {
        d.logged("script rejected; the last good version keeps running")
            .into_iter()
            .filter(|l| {
                l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot read script"))
            })
            .count()
    };
    d.wait(
        "the read error in the log",
        Duration::from_secs(5),
        || match read_errors() {
            0 => Err("not yet".into()),
            _ => Ok(()),
        },
    );
    pass_ok("while the script is unreadable");
    // Touched again, still unreadable: not reported again.
    make_unreadable();
    pass_ok("after another touch");
    holds(
        "the read error reported once",
        Duration::from_millis(500),
        || match read_errors() {
            1 => Ok(()),
            n => Err(format!("reported {n} times")),
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
    wait_sharded(&d, &dir, 3, &h, Duration::from_secs(1));
}
