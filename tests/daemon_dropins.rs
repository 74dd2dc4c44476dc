//! Drop-in services: a `.rhai` file with a `fn service()` dropped into
//! `scripts/` starts a service on its own schedule; removed, it stops and
//! leaves its files; broken, it is reported and the others keep running.
//!
//! Every wait polls with a deadline and shows the daemon's log on timeout.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

mod util;
use util::child::holds;
use util::daemon::Promshard;
use util::fixture::*;

/// Start the `web` + drop-in setup, wait for `web`'s first pass and the
/// watcher, then drop in `extra` (on two nodes, every second, `hosts(8)`)
/// and wait for its files. Returns the setup, the daemon, and extra's
/// targets.
fn start_and_drop_in_extra() -> (Setup, Promshard, Vec<String>) {
    let (s, h) = Setup::with_dropin_dir(10);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.wait_watching();
    let listed = d.services().unwrap_or_else(|e| d.fail(&e));
    assert!(!listed.contains_key("extra"), "{:?}", listed.keys());
    assert!(!s.service_dir("extra").exists());

    let he = hosts(8);
    let settings = format!("schedule: \"@every 1s\", {}", rhai_nodes(&NODES[..2]));
    s.drop_in("extra", &dropin_script(&settings, &he, "e1"));
    let dropped = Instant::now();
    wait_sharded(&d, &s.service_dir("extra"), 2, &he, Duration::from_secs(5));
    eprintln!(
        "drop-in files written {:?} after the drop",
        dropped.elapsed()
    );
    (s, d, he)
}

#[test]
fn a_dropped_in_script_starts_its_service_which_follows_its_own_schedule() {
    let (_s, d, _) = start_and_drop_in_extra();
    let all = d.wait_listed("extra", true, Duration::from_secs(5));
    let extra = &all["extra"];
    assert_eq!(extra["schedule"], "@every 1s", "{extra}");
    let script = extra["script"].as_str().unwrap_or_default();
    assert!(
        Path::new(script).ends_with(format!("{DROPINS}/extra.rhai")),
        "script {script:?}"
    );
    assert!(
        d.logged("service started")
            .iter()
            .any(|l| l["fields"]["service"] == "extra")
    );

    // Its own schedule: passes keep coming with no trigger from the test.
    let first = d.wait_passes("extra", 1, Duration::from_secs(5));
    let later = d.wait_passes("extra", first + 2, Duration::from_secs(5));
    let last = &d.services().unwrap_or_else(|e| d.fail(&e))["extra"]["last_pass"];
    assert_eq!(last["result"], "ok", "{last}");
    eprintln!("extra: {first} -> {later} passes");

    // The explicit service was neither restarted nor re-passed.
    assert_eq!(d.passes("web"), Ok(1));
    assert_eq!(
        d.logged("service started")
            .iter()
            .filter(|l| l["fields"]["service"] == "web")
            .count(),
        1
    );
    assert!(
        d.errors_about("extra").is_empty(),
        "{:?}",
        d.errors_about("extra")
    );
}

#[test]
fn removing_a_dropped_in_script_stops_its_service_and_leaves_its_files() {
    let (s, d, he) = start_and_drop_in_extra();
    d.wait_passes("extra", 1, Duration::from_secs(5));
    let dir = s.service_dir("extra");
    let about_extra = |d: &Promshard| -> Result<Vec<String>, String> {
        Ok(d.metrics()?
            .into_iter()
            .filter(|m| m.labels.get("service").is_some_and(|v| v == "extra"))
            .map(|m| m.name)
            .collect())
    };
    let before = about_extra(&d).unwrap_or_else(|e| d.fail(&e));
    assert!(
        before
            .iter()
            .any(|n| n == "promshard_last_success_timestamp_seconds"),
        "{before:?}"
    );

    fs::remove_file(s.dropin_path("extra")).expect("removing the drop-in");
    d.wait_listed("extra", false, Duration::from_secs(5));
    // Its series go (a stale last-success gauge would page someone).
    d.wait(
        "extra's metrics to go",
        Duration::from_secs(5),
        || match about_extra(&d)? {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still exported: {left:?}")),
        },
    );
    let warned = d.wait("the removal warning", Duration::from_secs(5), || {
        let lines = d.log_lines();
        lines
            .iter()
            .find(|l| {
                l["level"] == "WARN"
                    && l["fields"]["service"] == "extra"
                    && l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("files are left in place"))
            })
            .cloned()
            .ok_or_else(|| format!("{} log lines, no warning about extra", lines.len()))
    });
    let named = warned["fields"]["dir"].as_str().unwrap_or_default();
    assert!(Path::new(named).ends_with("out/extra"), "{warned}");

    // The files stay as they were, and nothing runs the service any more
    // (it was due every second).
    let kept = wait_sharded(&d, &dir, 2, &he, Duration::from_secs(1));
    holds(
        "extra stopped, its files unchanged",
        Duration::from_secs(3),
        || {
            let now = sd_files(&dir)?;
            if now != kept {
                return Err(format!("files changed: {:?}", now.keys()));
            }
            let all = d.services()?;
            if all.contains_key("extra") {
                return Err("extra listed again".into());
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    let r = d
        .get(&format!("/sd/extra/{}", NODES[0]))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);

    // The other service is unaffected.
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
}

#[test]
fn a_drop_in_with_a_broken_service_fn_is_reported_and_others_keep_running() {
    let (s, d, _) = start_and_drop_in_extra();
    let before = d.wait_passes("extra", 1, Duration::from_secs(5));

    s.drop_in(
        "zero",
        &dropin_script(
            &format!("replicas: 0, {}", rhai_nodes(&NODES)),
            &hosts(3),
            "z",
        ),
    );
    let reported = d.wait(
        "the problem with zero logged",
        Duration::from_secs(5),
        || {
            d.errors_about("zero")
                .into_iter()
                .next()
                .ok_or_else(|| "no error naming zero".to_string())
        },
    );
    let message = reported["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("zero.rhai") && message.contains("fn service(): replicas"),
        "the error should name the file and the key: {reported}"
    );

    // zero is not a service; the others go on: extra on its schedule, web
    // on demand.
    holds("zero not started", Duration::from_secs(1), || {
        match d.services()?.contains_key("zero") {
            false => Ok(()),
            true => Err("zero listed".into()),
        }
    })
    .unwrap_or_else(|e| d.fail(&e));
    assert!(!s.service_dir("zero").exists());
    d.wait_passes("extra", before + 2, Duration::from_secs(5));
    d.dispatch("web", None);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    for name in ["web", "extra"] {
        assert_eq!(
            all[name]["last_pass"]["result"], "ok",
            "{name}: {}",
            all[name]
        );
    }

    // Fixing the file starts it.
    s.drop_in(
        "zero",
        &dropin_script(
            &format!("replicas: 1, {}", rhai_nodes(&NODES)),
            &hosts(3),
            "z",
        ),
    );
    wait_sharded(
        &d,
        &s.service_dir("zero"),
        3,
        &hosts(3),
        Duration::from_secs(5),
    );
    d.wait_listed("zero", true, Duration::from_secs(5));
}

#[test]
fn a_running_drop_in_edited_into_a_broken_service_fn_keeps_running() {
    let (s, d, he) = start_and_drop_in_extra();
    d.wait_passes("extra", 1, Duration::from_secs(5));
    let errors_before = d.errors_about("extra").len();

    // The script still compiles; its settings are invalid.
    let settings = format!(
        "schedule: \"@every 1s\", replicas: 0, {}",
        rhai_nodes(&NODES[..2])
    );
    s.drop_in("extra", &dropin_script(&settings, &he, "e1"));
    let reported = d.wait(
        "the problem with extra logged",
        Duration::from_secs(5),
        || {
            d.errors_about("extra")
                .into_iter()
                .nth(errors_before)
                .ok_or_else(|| "no new error naming extra".to_string())
        },
    );
    let message = reported["fields"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fn service(): replicas"), "{reported}");

    // Like an invalid config edit: the running service stays, with its
    // last good settings, on its schedule.
    let now = d.passes("extra").unwrap_or_else(|e| d.fail(&e));
    d.wait_passes("extra", now + 2, Duration::from_secs(5));
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(all["extra"]["schedule"], "@every 1s", "{}", all["extra"]);
    let removed: Vec<Value> = d
        .log_lines()
        .into_iter()
        .filter(|l| {
            l["fields"]["service"] == "extra"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("service removed") || m.contains("service changed"))
        })
        .collect();
    assert!(
        removed.is_empty(),
        "extra was stopped or restarted: {removed:?}"
    );
    assert!(
        d.logged("drop-in service keeps running with its last good settings")
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["service"] == "extra"),
        "no warning that extra keeps its last good settings"
    );
    wait_sharded(&d, &s.service_dir("extra"), 2, &he, Duration::from_secs(1));
}

/// Any `.rhai` file in `scripts_dir` is a live service: the daemon says
/// which ones it picked up, once, at start-up.
#[test]
fn run_logs_the_drop_in_services_it_picked_up_at_start_up() {
    let (s, _h) = Setup::with_dropin_dir(4);
    let settings = format!("schedule: \"@every 1h\", {}", rhai_nodes(&NODES[..2]));
    s.drop_in("extra", &dropin_script(&settings, &hosts(3), "e1"));
    let d = s.start();
    d.wait_watching();
    let line = format!("drop-in services from {DROPINS}/: extra ({DROPINS}/extra.rhai)");
    let logged = d.logged(&line);
    assert_eq!(logged.len(), 1, "want once: {line}\n{}", d.log_text());
}
