//! `plan --drain`, `drain` and `undrain` without a daemon: a drained node
//! keeps its targets beside their new node until the new node confirms
//! (here never: nothing observes), across separate `once` processes; an
//! undrain takes back what never moved.

mod util;

use std::collections::{BTreeMap, BTreeSet};

use util::{Dir, config_yaml, json_script, nodes, sd_entries, strs};

const TARGETS: usize = 30;

fn lab() -> Dir {
    let dir = Dir::new();
    let n = nodes(2);
    dir.config(&config_yaml(
        &strs(&n),
        &[("svc", "scripts/svc.rhai", "handover: make_before_break")],
    ));
    let targets: Vec<String> = (1..=TARGETS).map(|i| format!("10.9.0.{i}:9100")).collect();
    dir.write("scripts/svc.rhai", json_script("data.json"));
    dir.write("scripts/data.json", serde_json::to_vec(&targets).unwrap());
    dir
}

/// File name → the addresses it lists.
fn files(dir: &Dir) -> BTreeMap<String, BTreeSet<String>> {
    dir.files("out/svc")
        .into_iter()
        .map(|(f, bytes)| (f, sd_entries(&bytes).into_iter().map(|(a, _)| a).collect()))
        .collect()
}

#[test]
fn a_drained_node_keeps_its_targets_until_confirmed_and_undrain_takes_them_back() {
    let dir = lab();
    dir.run(&["once"]).success();
    let before = files(&dir);
    let first = "svc_127.0.0.1_9091.json";
    let held = before[first].len();
    assert!(held > 0 && held < TARGETS, "{before:?}");

    // plan --drain: what a drain would move, nothing written.
    let plan = dir
        .run(&["plan", "--drain", "127.0.0.1:9091", "--json"])
        .success()
        .json();
    let h = &plan["services"][0]["handover"];
    assert_eq!(h["pending"], held, "{h}");
    assert_eq!(h["drained"][0]["state"], "draining", "{h}");
    assert_eq!(h["drained"][0]["targets_left"], held, "{h}");
    assert_eq!(files(&dir), before, "plan wrote nothing");

    // drain (no daemon answers: recorded for the next pass), then once:
    // the drained node keeps its targets beside their new node.
    dir.run(&["drain", "127.0.0.1:9091"]).success();
    dir.run(&["once"]).success();
    let during = files(&dir);
    assert_eq!(during[first], before[first], "kept until confirmed");
    assert_eq!(
        during["svc_127.0.0.1_9092.json"].len(),
        TARGETS,
        "new node has all"
    );
    let text = dir.run(&["plan"]).success();
    text.stdout_has(&["handovers pending", "drained 127.0.0.1:9091: draining"]);

    // undrain: the new node never confirmed, so it gives them back at once.
    dir.run(&["undrain", "127.0.0.1:9091"]).success();
    dir.run(&["once"]).success();
    assert_eq!(files(&dir), before);
}
