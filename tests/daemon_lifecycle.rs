//! Daemon life cycle: each test starts the real `promshard run` binary as a
//! child process on a free loopback port, in its own temp directory
//! (`tests/util/fixture.rs`), and watches it from the outside — the files it
//! writes, its HTTP API, its log and its exit status: the start-up pass,
//! triggers during a pass, SIGTERM, failed deliveries, the move cap, and
//! one sd file per node while passes rename files.
//!
//! Nothing sleeps and hopes: every wait polls with a deadline and, when the
//! deadline passes, says what it saw last and shows the daemon's log. Every
//! child process is owned by a guard that kills it when the test ends, even
//! on panic.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

mod util;
use util::child::holds;
use util::fixture::*;

#[test]
fn first_pass_at_start_up_writes_the_files() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let files = wait_sharded(
        &d,
        &s.service_dir("web"),
        NODES.len(),
        &h,
        Duration::from_secs(20),
    );
    for node in NODES {
        assert!(
            node_file(&files, "web", node).is_some(),
            "no file for {node} in {:?}",
            files.keys()
        );
    }
    // The cron never fires in a test: this was the start-up pass (its
    // status is recorded just after its files are written).
    d.wait_passes("web", 1, Duration::from_secs(10));
    assert_eq!(d.passes("web"), Ok(1));
}

#[test]
fn two_triggers_during_a_long_pass_give_exactly_one_follow_up() {
    let s = Setup::new();
    let h = hosts(6);
    s.write_script("slow", &slow_script(&h, 2.0));
    s.write_config("", &[service_yaml("slow", &NODES, "")]);
    let d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    assert_eq!(d.logged(SLOW_BEGINS).len(), 1);

    // Start pass 2 and wait until its script is running.
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    d.dispatch("slow", None);
    d.dispatch("slow", None);
    // Both triggers landed during pass 2 (it has not finished yet).
    assert_eq!(
        d.passes("slow"),
        Ok(1),
        "pass 2 ended before both triggers were sent; the test proves nothing"
    );

    d.wait_passes("slow", 3, Duration::from_secs(20));
    holds(
        "exactly 3 passes (1 start-up, 1 dispatched, 1 follow-up)",
        Duration::from_secs(3),
        || {
            let p = d.passes("slow")?;
            let begun = d.logged(SLOW_BEGINS).len();
            if p == 3 && begun == 3 {
                Ok(())
            } else {
                Err(format!("passes = {p}, begun = {begun}"))
            }
        },
    )
    .unwrap_or_else(|e| d.fail(&e));
}

#[test]
fn sigterm_exits_zero_within_ten_seconds_without_temp_files() {
    let (s, h) = web_setup("", 20);
    let mut d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    d.proc.signal(libc::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        d.logged("stopped").len() == 1,
        "no clean stop logged (took {took:?})"
    );
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    // The files stay for Prometheus to keep reading.
    assert_eq!(sd_files(&s.service_dir("web")).map(|f| f.len()), Ok(3));
}

#[test]
fn sigterm_during_a_pass_exits_zero_without_temp_files() {
    let s = Setup::new();
    let h = hosts(30);
    s.write_script("slow", &slow_script(&h, 2.0));
    s.write_config("", &[service_yaml("slow", &NODES, "")]);
    let mut d = s.start();
    d.wait_passes("slow", 1, Duration::from_secs(30));
    d.dispatch("slow", None);
    d.wait_slow_begun(2, Duration::from_secs(10));
    d.proc.signal(libc::SIGTERM);
    let (status, took) = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    if d.logged("stopped").len() != 1 {
        d.fail(&format!("no clean stop logged (exit after {took:?})"));
    }
    // The pass in progress was finished, not abandoned.
    assert_eq!(d.logged("pass done").len(), 2, "pass 2 did not complete");
    assert_eq!(temp_files(&s.out()), Vec::<PathBuf>::new());
    let files = sd_files(&s.service_dir("slow")).unwrap_or_else(|e| panic!("torn file: {e}"));
    let total: usize = files.values().map(|f| addresses(f).len()).sum();
    assert_eq!((files.len(), total), (3, 30));
}

#[test]
fn a_failed_delivery_is_logged_with_its_reason_and_not_as_a_failed_pass() {
    let s = Setup::new();
    let h = hosts(12);
    s.write_script("web", &static_script(&h, "v1"));
    // A regular file where the destination directory should be.
    s.write("blocker", "not a directory");
    let dest = format!(
        "    push: {{kind: local, dest: \"{}/{{node}}/sd.json\"}}\n",
        s.path("blocker").display()
    );
    s.write_config("", &[service_yaml("web", &NODES, &dest)]);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let failed = d.wait(
        "three delivery failures logged",
        Duration::from_secs(5),
        || {
            let lines = d.logged("delivery failed");
            if lines.len() == NODES.len() {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        },
    );
    for line in &failed {
        let f = &line["fields"];
        assert_eq!(f["result"], "failed", "{line}");
        assert!(
            NODES.contains(&f["node"].as_str().unwrap_or_default()),
            "{line}"
        );
        assert!(
            f["error"]
                .as_str()
                .is_some_and(|e| e.contains("blocker") && e.contains("Not a directory")),
            "the reason, with the path: {line}"
        );
    }
    let summary = d
        .logged("pass done")
        .pop()
        .unwrap_or_else(|| d.fail("no pass summary"));
    let f = &summary["fields"];
    assert_eq!(
        (&f["deliveries"], &f["delivered"], &f["delivery_failed"]),
        (&json!(3), &json!(0), &json!(3)),
        "attempted vs succeeded: {summary}"
    );
    assert!(
        d.log_text()
            .contains("pass wrote its files but deliveries failed"),
        "the files were written: say so"
    );
    assert!(
        !d.log_text().contains("last good files kept"),
        "files were written, not kept"
    );
    assert_eq!(
        sd_files(&s.service_dir("web")).map(|f| f.len()),
        Ok(NODES.len()),
        "the files were written"
    );
}

/// Each node has exactly one sd file at every instant, whatever the pass
/// is doing: with the default (stable) names, and with counted names, whose
/// old file is renamed to the new name before it is rewritten.
#[test]
fn every_node_has_exactly_one_sd_file_at_every_sample() {
    for naming in ["stable", "counted"] {
        let (s, d) = churning_web(naming);
        let dir = s.service_dir("web");
        let mut samples = 0;
        let (_, passes) = churn(&s, &d, 1000, 100, |_| {
            let names: Vec<String> = fs::read_dir(&dir)
                .expect("listing the service dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            for node in NODES {
                let mine: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        n.starts_with(&format!("web_{node}_"))
                            || n.starts_with(&format!("web_{}.", node.replace(':', "_")))
                    })
                    .collect();
                if mine.len() != 1 {
                    d.fail(&format!(
                        "{naming}: sample {samples}: {node} has {} files: {names:?}",
                        mine.len()
                    ));
                }
            }
            samples += 1;
        });
        eprintln!("{naming}: {samples} samples over {passes} passes, one file per node in each");
    }
}

/// `max_move_ratio: 0.1`: a node added to the config moves about a quarter
/// of the targets, a tenth per pass; the daemon runs the next step by itself
/// until the plan is the uncapped one (what `promshard plan` computes).
#[test]
fn a_move_cap_spreads_a_node_addition_over_several_passes() {
    let s = Setup::new();
    let h = hosts(250);
    s.write_script("web", &static_script(&h, "v1"));
    let cap = "    max_move_ratio: 0.1\n";
    s.write_config("", &[service_yaml("web", &NODES[..2], cap)]);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 2, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let four = [NODES[0], NODES[1], NODES[2], "10.9.0.4:9090"];
    s.write_config("", &[service_yaml("web", &four, cap)]);
    // The uncapped plan of the new config.
    let goal = util::run_in(s.dir.path(), &["plan", "--json"])
        .success()
        .json();
    let want: BTreeMap<String, u64> = goal["services"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("").to_string(),
                n["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    d.wait(
        "the capped rebalance to reach the plan",
        Duration::from_secs(30),
        || {
            let current = &d.services()?["web"]["current"];
            let have: BTreeMap<String, u64> = current["nodes"]
                .as_array()
                .ok_or("no plan")?
                .iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or("").to_string(),
                        n["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}, want {want:?}"))
            }
        },
    );
    let held = d.logged("moves held back by max_move_ratio; a later pass continues the rebalance");
    assert!(
        held.len() >= 2,
        "a 50% move at 10% per pass holds moves back more than once: {held:?}"
    );
}
