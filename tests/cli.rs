//! End-to-end tests of `promshard once`, `plan` and `check` (issue 3).
//!
//! Every test runs the real binary on its own temp directory (see
//! `tests/util/mod.rs`) and asserts on the files it wrote, its exit code and
//! its output: the invariants of placement (exactly R, every node gets a
//! file, determinism, no torn files, nothing outside `out_dir`) are checked
//! on real files, not on library values.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::{Dir, config_yaml, json_script, nodes, run_in, sd_entries, shuffled, strs};

/// `n` file_sd groups, some with several addresses, with a few label sets.
fn fleet(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let env = ["prod", "staging", "dev"][i % 3];
            let addrs: Vec<String> = if i % 10 == 0 {
                // a multi-address group
                (0..3)
                    .map(|k| format!("10.{}.{}.{}:9100", 1 + k, i / 200, i % 200))
                    .collect()
            } else {
                vec![format!("10.0.{}.{}:9100", i / 200, i % 200)]
            };
            json!({"targets": addrs, "labels": {"env": env, "dc": format!("dc{}", i % 4)}})
        })
        .collect()
}

/// Every valid address in `groups`.
fn addresses(groups: &[Value]) -> BTreeSet<String> {
    groups
        .iter()
        .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

/// A temp dir with a one-service config (`svc`) reading `data.json`.
fn one_service(node_count: usize, extra: &str, data: &[Value]) -> Dir {
    let dir = Dir::new();
    let n = nodes(node_count);
    dir.config(&config_yaml(
        &strs(&n),
        &[("svc", "scripts/svc.rhai", extra)],
    ));
    dir.write("scripts/svc.rhai", json_script("data.json"));
    dir.write("scripts/data.json", serde_json::to_vec(data).unwrap());
    dir
}

/// Address → how many files of `files` list it.
fn occurrences(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for bytes in files.values() {
        let in_file: BTreeSet<String> = sd_entries(bytes).into_iter().map(|(a, _)| a).collect();
        for a in in_file {
            *seen.entry(a).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn every_target_lands_on_exactly_min_replicas_nodes() {
    let data = fleet(240);
    let expected = addresses(&data);
    for replicas in [1usize, 2, 5] {
        let dir = one_service(3, &format!("replicas: {replicas}"), &data);
        let run = dir.run(&["once", "--json"]).success();
        let files = dir.files("out/svc");
        assert_eq!(files.len(), 3, "one file per node: {:?}", files.keys());
        let seen = occurrences(&files);
        let union: BTreeSet<String> = seen.keys().cloned().collect();
        assert_eq!(union, expected, "replicas {replicas}: union of files");
        let want = replicas.min(3);
        for (addr, n) in &seen {
            assert_eq!(*n, want, "replicas {replicas}: {addr} is in {n} files");
        }
        // The report agrees with the files.
        let report = run.json();
        let svc = &report["services"][0];
        assert_eq!(svc["targets"], expected.len(), "{report:#}");
        for node in svc["nodes"].as_array().unwrap() {
            let file = node["file"].as_str().unwrap();
            let listed = sd_entries(&files[file]).len();
            assert_eq!(node["count"], listed, "{file}: count in report");
        }
    }
}

#[test]
fn shuffled_script_output_gives_byte_identical_files() {
    let mut data = fleet(300);
    // Exact duplicates too: they must merge the same way in any order.
    data.extend(fleet(20));
    let shuffled_data: Vec<Value> = shuffled(&data, 42)
        .into_iter()
        .enumerate()
        .map(|(i, mut g)| {
            let t = g["targets"].as_array().unwrap().clone();
            g["targets"] = Value::Array(shuffled(&t, i as u64 + 7));
            g
        })
        .collect();
    assert_ne!(data, shuffled_data, "the shuffle must change the order");
    let a = one_service(3, "replicas: 2", &data);
    let b = one_service(3, "replicas: 2", &shuffled_data);
    a.run(&["once"]).success();
    b.run(&["once"]).success();
    let (fa, fb) = (a.files("out/svc"), b.files("out/svc"));
    assert_eq!(fa.len(), 3);
    assert!(
        fa.values().all(|bytes| sd_entries(bytes).len() > 50),
        "every node has targets"
    );
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "file names"
    );
    for (name, bytes) in &fa {
        assert!(bytes == &fb[name], "{name} differs between the two orders");
    }
    // Running again on the same input changes nothing.
    let again = a.run(&["once", "--json"]).success().json();
    for node in again["services"][0]["nodes"].as_array().unwrap() {
        assert_eq!(node["changed"], false, "{again:#}");
    }
    assert_eq!(a.files("out/svc"), fa);
}

#[test]
fn one_target_three_nodes_gives_two_empty_files() {
    let dir = one_service(3, "", &[json!("10.0.0.1:9100")]);
    dir.run(&["once"]).success();
    let files = dir.files("out/svc");
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    let empty: Vec<&String> = files
        .iter()
        .filter(|(_, b)| b.as_slice() == b"[]\n")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(empty.len(), 2, "files: {files:?}");
    let full: Vec<_> = files.values().filter(|b| b.as_slice() != b"[]\n").collect();
    assert_eq!(
        sd_entries(full[0]),
        [("10.0.0.1:9100".to_string(), BTreeMap::new())]
    );
    // Default naming rule: {service}_{node}.json, the node's ':' made '_'.
    for node in nodes(3) {
        let name = format!("svc_{}.json", node.replace(':', "_"));
        assert!(files.contains_key(&name), "no {name}: {:?}", files.keys());
    }
    // The counted rule, {service}_{node}_{index}_{total}_{count}.json,
    // index in sorted node order, on request; its files replace the others.
    dir.config(&config_yaml(
        &strs(&nodes(3)),
        &[("svc", "scripts/svc.rhai", "file_naming: counted")],
    ));
    dir.run(&["once"]).success();
    let files = dir.files("out/svc");
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    for (i, node) in nodes(3).iter().enumerate() {
        let count = |c: usize| format!("svc_{node}_{}_3_{c}.json", i + 1);
        assert!(
            files.contains_key(&count(0)) || files.contains_key(&count(1)),
            "no file for {node}: {:?}",
            files.keys()
        );
    }
}

#[test]
fn groups_are_split_duplicates_merged_and_invalid_addresses_reported() {
    let data = vec![
        json!({"targets": ["a.example:9100", "b.example:9100", "not an address", "10.0.0.1:70000"],
               "labels": {"env": "prod"}}),
        json!({"targets": ["a.example:9100"], "labels": {"env": "prod"}}),
        json!("c.example:9100"),
        json!("c.example:9100"),
        json!("10.0.0.300:9100"),
        json!({"targets": ["[2001:db8::1]:9100"], "labels": {"env": "dev"}}),
    ];
    let dir = one_service(2, "", &data);
    let run = dir
        .run(&["--log-format", "json", "once", "--json"])
        .success();

    // Files: one entry per valid address, with its group's labels.
    let mut entries: Vec<(String, BTreeMap<String, String>)> = dir
        .files("out/svc")
        .values()
        .flat_map(|b| sd_entries(b))
        .collect();
    entries.sort();
    let prod: BTreeMap<String, String> = [("env".into(), "prod".into())].into();
    let dev: BTreeMap<String, String> = [("env".into(), "dev".into())].into();
    assert_eq!(
        entries,
        vec![
            ("[2001:db8::1]:9100".to_string(), dev),
            ("a.example:9100".to_string(), prod.clone()),
            ("b.example:9100".to_string(), prod),
            ("c.example:9100".to_string(), BTreeMap::new()),
        ]
    );

    // Report: counts, and each invalid value with its group.
    let report = run.json();
    let svc = &report["services"][0];
    assert_eq!(svc["targets"], 4, "{report:#}");
    assert_eq!(svc["invalid"], 3, "{report:#}");
    assert_eq!(svc["duplicates"], 2, "{report:#}");
    let samples: BTreeSet<(u64, String)> = svc["invalid_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["group"].as_u64().unwrap(),
                s["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(u64, String)> = [
        (0, "not an address".to_string()),
        (0, "10.0.0.1:70000".to_string()),
        (4, "10.0.0.300:9100".to_string()),
    ]
    .into();
    assert_eq!(samples, want, "{report:#}");

    // Log: one warning per skipped address, with service, group and value.
    let logged: BTreeSet<(u64, String)> = run
        .log_records()
        .iter()
        .filter(|r| r["fields"]["message"] == "invalid target skipped")
        .map(|r| {
            assert_eq!(r["level"], "WARN", "{r}");
            assert_eq!(r["fields"]["service"], "svc", "{r}");
            (
                r["fields"]["group"].as_u64().unwrap_or(u64::MAX),
                r["fields"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(logged, want, "stderr:\n{}", run.stderr);
}

#[test]
fn file_name_escaping_the_service_dir_is_rejected() {
    for bad in ["../x.json", "sub/x.json", ".."] {
        let dir = Dir::new();
        let n = nodes(3);
        dir.config(&config_yaml(
            &strs(&n),
            &[
                (
                    "evil",
                    "scripts/evil.rhai",
                    "push: {kind: local, dest: \"prom/{node}/evil.json\"}",
                ),
                ("good", "scripts/good.rhai", ""),
            ],
        ));
        // First a good name, so there is a last good state to keep.
        let script = |name: &str| {
            format!(
                "fn targets(ctx) {{ [\"10.0.0.1:9100\", \"10.0.0.2:9100\"] }}\n\
                 fn file_name(f) {{ {name} }}\n"
            )
        };
        dir.write("scripts/evil.rhai", script("`${f.node}.json`"));
        dir.write(
            "scripts/good.rhai",
            "fn targets(ctx) { [\"10.0.0.9:9100\"] }\n",
        );
        dir.run(&["once"]).success();
        let before = dir.files("out/evil");
        let prom_before = dir.files(format!("prom/{}", n[0]));
        assert_eq!(before.len(), 3);

        dir.write("scripts/evil.rhai", script(&format!("{bad:?}")));
        dir.write(
            "scripts/good.rhai",
            "fn targets(ctx) { [\"10.0.0.8:9100\"] }\n",
        );
        let run = dir.run(&["once"]).failure();
        // Rejected as a name, before any write was tried (not an I/O error).
        // The log line is logfmt: the quotes of the name inside the
        // quoted error value are escaped.
        let quoted = format!("{bad:?}").replace('"', "\\\"");
        run.stderr_has(&["evil", &format!("file name {quoted} for node")]);
        assert!(
            !run.stderr.contains("writing files"),
            "{bad:?} got as far as a write:\n{}",
            run.stderr
        );
        // Nothing written for that service, nothing outside out_dir ...
        assert_eq!(dir.files("out/evil"), before, "bad name {bad:?}");
        assert_eq!(dir.files(format!("prom/{}", n[0])), prom_before);
        let strays: Vec<String> = dir
            .tree()
            .into_iter()
            .filter(|p| p.ends_with("x.json") || p == "out/sub" || p == "out/evil/sub")
            .collect();
        assert!(strays.is_empty(), "bad name {bad:?} wrote {strays:?}");
        // ... and the other service still got its new files.
        let good: Vec<String> = dir
            .files("out/good")
            .values()
            .flat_map(|b| sd_entries(b))
            .map(|(a, _)| a)
            .collect();
        assert_eq!(good, ["10.0.0.8:9100"], "bad name {bad:?}");
    }
}

#[test]
fn plan_writes_nothing_and_shows_movement() {
    let dir = one_service(
        3,
        "push: {kind: local, dest: \"prom/{node}/sd.json\"}",
        &fleet(90),
    );
    let before = dir.tree();
    let run = dir.run(&["plan"]).success();
    run.stdout_has(&["svc", "NODE", "TARGETS", "IN", "OUT"]);
    for n in nodes(3) {
        run.stdout_has(&[&n]);
    }
    assert!(!dir.join("out").exists(), "plan created out_dir");
    assert!(!dir.join("prom").exists(), "plan delivered");
    assert_eq!(dir.tree(), before);

    // After a pass, plan compares against the files now in out_dir.
    dir.run(&["once"]).success();
    let files = dir.files("out/svc");
    let tree = dir.tree();
    let n4 = nodes(4);
    dir.config(&config_yaml(
        &strs(&n4),
        &[(
            "svc",
            "scripts/svc.rhai",
            "push: {kind: local, dest: \"prom/{node}/sd.json\"}",
        )],
    ));
    let report = dir.run(&["plan", "--json"]).success().json();
    let svc = &report["services"][0];
    assert_eq!(svc["dry_run"], true);
    let planned = svc["nodes"].as_array().unwrap();
    assert_eq!(planned.len(), 4, "{report:#}");
    let newcomer = planned.iter().find(|n| n["node"] == n4[3]).unwrap();
    let moved_in: u64 = planned
        .iter()
        .map(|n| n["moved_in"].as_u64().unwrap())
        .sum();
    let moved_out: u64 = planned
        .iter()
        .map(|n| n["moved_out"].as_u64().unwrap())
        .sum();
    assert!(newcomer["count"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(newcomer["moved_in"], newcomer["count"], "{report:#}");
    assert_eq!(moved_in, moved_out, "replicas 1: what moves in moved out");
    assert_eq!(
        moved_in,
        newcomer["count"].as_u64().unwrap(),
        "only the newcomer gains"
    );
    assert_eq!(dir.files("out/svc"), files, "plan changed the files");
    let mut tree_now = dir.tree();
    tree_now.retain(|p| p != "promshard.yaml");
    let mut tree_then = tree;
    tree_then.retain(|p| p != "promshard.yaml");
    assert_eq!(tree_now, tree_then, "plan created or removed files");
}

#[test]
fn plan_instances_shows_the_shared_spread_of_the_services() {
    let dir = Dir::new();
    let n = nodes(2);
    let services: Vec<(String, String)> = (0..6)
        .map(|i| (format!("s{i}"), "scripts/svc.rhai".to_string()))
        .collect();
    let list: Vec<(&str, &str, &str)> = services
        .iter()
        .map(|(s, p)| (s.as_str(), p.as_str(), ""))
        .collect();
    dir.config(&config_yaml(&strs(&n), &list));
    dir.write(
        "scripts/svc.rhai",
        "fn targets(ctx) { [\"10.0.0.1:9100\", \"10.0.0.2:9100\"] }\n",
    );
    let run = dir.run(&["plan", "--instances", "3"]).success();
    run.stdout_has(&["6 services over 3 instances"]);
    let out = run.stdout.clone();
    for i in 1..=3 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("instance-{i}:")))
            .unwrap_or_else(|| panic!("no line for instance-{i}: {out}"));
        assert!(line.contains("2 services, weight 4"), "{line}");
    }
    dir.run(&["plan", "--instances", "a,b"])
        .success()
        .stdout_has(&["  a: 3 services", "  b: 3 services"]);
    dir.run(&["plan", "--instances", "0"])
        .failure()
        .stderr_has(&["--instances 0"]);
    dir.run(&["once", "--instances", "2"])
        .failure()
        .stderr_has(&["only previews a spread with `plan`"]);
}

#[test]
fn check_names_file_and_line_of_script_syntax_errors() {
    let dir = Dir::new();
    let n = nodes(2);
    dir.config(&config_yaml(
        &strs(&n),
        &[
            ("first", "scripts/first.rhai", ""),
            ("second", "scripts/second.rhai", ""),
        ],
    ));
    dir.write(
        "scripts/first.rhai",
        "// comment\nfn targets(ctx) {\n    let = 1;\n    []\n}\n",
    );
    dir.write(
        "scripts/second.rhai",
        "fn targets(ctx) {\n    []\n}\n\n\nfn file_name(f) { f.node +* 1 }\n",
    );
    let run = dir.run(&["check"]).failure();
    assert_eq!(run.code, Some(1));
    // Both errors are listed, each with file:line:column.
    run.stderr_has(&[
        "scripts/first.rhai:3:",
        "scripts/second.rhai:6:",
        "first",
        "second",
    ]);

    dir.write("scripts/first.rhai", "fn targets(ctx) { [] }\n");
    dir.write("scripts/second.rhai", "fn targets(ctx) { [] }\n");
    dir.run(&["check"])
        .success()
        .stdout_has(&["first", "second", "all scripts compile"]);
    assert!(!dir.join("out").exists(), "check wrote files");
}

#[test]
fn check_validates_ha_and_once_refuses_to_bypass_the_election() {
    let dir = Dir::new();
    dir.write(
        "scripts/svc.rhai",
        "fn targets(ctx) { [\"127.0.0.1:9100\"] }\n",
    );
    let services = config_yaml(&strs(&nodes(2)), &[("svc", "scripts/svc.rhai", "")]);
    let ha =
        "ha: {etcd: {endpoints: [\"127.0.0.1:2379\"]}, name: prod, lease_ttl: 3s, instance: a}\n";
    dir.config(&format!("{ha}{services}"));
    dir.run(&["check"]).success().stdout_has(&[
        "ok: ha cluster prod as instance a on etcd http://127.0.0.1:2379 (lease_ttl 3s",
    ]);
    dir.run(&["once"])
        .failure()
        .stderr_has(&["ha: is set", "bypass the election"]);
    assert!(!dir.join("out").exists(), "once wrote nothing");
    dir.run(&["plan"]).success();

    let bad = "ha: {etcd: {endpoints: [\"nohost\"], tls: {cert: c.pem}}, name: \"a/b\", lease_ttl: 500ms}\n";
    dir.config(&format!("{bad}{services}"));
    dir.run(&["check"]).failure().stderr_has(&[
        "ha.etcd.endpoints[0]",
        "not host:port",
        "ha.etcd.tls: set both cert and key",
        "ha.name",
        "ha.lease_ttl",
    ]);
}

#[test]
fn check_names_the_key_of_config_errors() {
    let dir = Dir::new();
    dir.write("scripts/svc.rhai", "fn targets(ctx) { [] }\n");
    let n = nodes(2);
    let good = config_yaml(&strs(&n), &[("svc", "scripts/svc.rhai", "")]);
    dir.config(&good);
    dir.run(&["check"]).success();

    dir.config(&config_yaml(
        &strs(&n),
        &[("svc", "scripts/svc.rhai", "replicas: 0")],
    ));
    let run = dir.run(&["check"]).failure();
    assert_eq!(run.code, Some(1));
    run.stderr_has(&[
        "promshard.yaml",
        "services[0] \"svc\": replicas",
        "replicas must be >= 1",
    ]);

    dir.config(&config_yaml(
        &strs(&n),
        &[("svc", "scripts/svc.rhai", "replica: 2")],
    ));
    dir.run(&["check"])
        .failure()
        .stderr_has(&["promshard.yaml", "replica", "line"]);

    // Several problems are all listed at once.
    dir.config(&config_yaml(
        &strs(&n),
        &[(
            "svc",
            "scripts/svc.rhai",
            "replicas: 0\nfile_type: xml\nschedule: \"not cron\"",
        )],
    ));
    dir.run(&["check"])
        .failure()
        .stderr_has(&["replicas", "file_type", "\"xml\"", "schedule"]);

    // once refuses a bad config too, and writes nothing.
    dir.run(&["once"]).failure().stderr_has(&["replicas"]);
    assert!(!dir.join("out").exists());
}

#[test]
fn stale_files_are_removed_and_files_outside_the_service_dir_survive() {
    let data = fleet(120);
    let dir = one_service(5, "", &data);
    let outside = [
        "out/keep.json",
        "out/svc2/svc_127.0.0.1:9095_5_5_10.json",
        "out/svc.json",
        "elsewhere/svc_127.0.0.1:9094_4_5_1.json",
    ];
    for p in outside {
        dir.write(p, format!("[] {p}"));
    }
    dir.run(&["once"]).success();
    let first = dir.files("out/svc");
    assert_eq!(first.len(), 5);

    let n3 = nodes(3);
    dir.config(&config_yaml(&strs(&n3), &[("svc", "scripts/svc.rhai", "")]));
    let report = dir.run(&["once", "--json"]).success().json();
    let files = dir.files("out/svc");
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    for node in &n3 {
        let name = format!("svc_{}.json", node.replace(':', "_"));
        assert!(files.contains_key(&name), "no {name}: {:?}", files.keys());
    }
    for old in first.keys() {
        if !files.contains_key(old) {
            assert!(!dir.join("out/svc").join(old).exists());
        }
    }
    let removed = report["services"][0]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 2, "report lists removed files: {report:#}");
    // The union is still the whole input.
    let seen = occurrences(&files);
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        addresses(&data)
    );
    for p in outside {
        assert_eq!(
            dir.read(p),
            format!("[] {p}").into_bytes(),
            "{p} was touched"
        );
    }
}

/// A fleet of `n` single-address groups whose labels depend on `generation`.
fn generation(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"targets": [format!("10.0.{}.{}:9100", i / 250, i % 250)],
                   "labels": {"generation": tag, "note": tag.repeat(20), "i": i.to_string()}})
        })
        .collect()
}

#[test]
fn files_being_rewritten_are_never_seen_torn() {
    const MAX_PASSES: usize = 16;
    const MAX_TIME: Duration = Duration::from_secs(90);
    let dir = one_service(
        3,
        "push: {kind: local, dest: \"prom/{node}/sd.json\"}",
        &generation(3000, "a"),
    );
    // Stable names so that a reader can keep reading the same paths.
    dir.write(
        "scripts/svc.rhai",
        format!(
            "{}\nfn file_name(f) {{ `${{f.node}}.json` }}\n",
            json_script("data.json")
        ),
    );
    let data_a = serde_json::to_vec(&generation(3000, "a")).unwrap();
    let data_b = serde_json::to_vec(&generation(3000, "b")).unwrap();
    let paths: Vec<PathBuf> = nodes(3)
        .iter()
        .flat_map(|n| {
            [
                dir.join(format!("out/svc/{n}.json")),
                dir.join(format!("prom/{n}/sd.json")),
            ]
        })
        .collect();
    let snapshot = |paths: &[PathBuf]| -> Vec<Vec<u8>> {
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    };
    dir.run(&["once"]).success();
    let old = snapshot(&paths);
    dir.write("scripts/data.json", &data_b);
    dir.run(&["once"]).success();
    let new = snapshot(&paths);
    for (i, p) in paths.iter().enumerate() {
        assert_ne!(old[i], new[i], "{} must change between inputs", p.display());
        assert!(new[i].len() > 10_000, "files should be big enough to tear");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, paths) = (Arc::clone(&stop), paths.clone());
        let allowed: Vec<[Vec<u8>; 2]> = old.into_iter().zip(new).map(|(o, n)| [o, n]).collect();
        std::thread::spawn(move || -> Result<(u64, BTreeSet<(usize, usize)>), String> {
            let mut reads = 0u64;
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for (i, p) in paths.iter().enumerate() {
                    let bytes = std::fs::read(p)
                        .map_err(|e| format!("read {} failed: {e}", p.display()))?;
                    serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                        format!(
                            "{} did not parse ({e}); {} bytes read",
                            p.display(),
                            bytes.len()
                        )
                    })?;
                    let which = allowed[i].iter().position(|a| *a == bytes).ok_or_else(|| {
                        format!(
                            "{} is neither the old nor the new content ({} bytes)",
                            p.display(),
                            bytes.len()
                        )
                    })?;
                    seen.insert((i, which));
                    reads += 1;
                }
            }
            Ok((reads, seen))
        })
    };

    let started = Instant::now();
    let mut passes = 0;
    while passes < MAX_PASSES && started.elapsed() < MAX_TIME && !reader.is_finished() {
        let data = if passes % 2 == 0 { &data_a } else { &data_b };
        dir.write("scripts/data.json", data);
        dir.run(&["once"]).success();
        passes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("after {passes} passes: {e}"));
    assert!(passes >= 4, "only {passes} passes ran in {MAX_TIME:?}");
    assert!(
        reads >= passes as u64 * paths.len() as u64,
        "the reader read only {reads} times during {passes} passes"
    );
    // The reader really overlapped the rewrites: it saw both contents.
    for (i, path) in paths.iter().enumerate() {
        assert!(
            seen.contains(&(i, 0)) && seen.contains(&(i, 1)),
            "{} was seen only as {:?} over {passes} passes",
            path.display(),
            seen.iter().filter(|(p, _)| *p == i).collect::<Vec<_>>()
        );
    }
}

#[test]
fn once_json_report_shape_and_failing_service() {
    let dir = Dir::new();
    let n = nodes(3);
    dir.config(&config_yaml(
        &strs(&n),
        &[
            ("good", "scripts/good.rhai", "replicas: 2"),
            ("broken", "scripts/broken.rhai", ""),
        ],
    ));
    dir.write("scripts/good.rhai", json_script("data.json"));
    dir.write("scripts/data.json", serde_json::to_vec(&fleet(60)).unwrap());
    dir.write(
        "scripts/broken.rhai",
        "fn targets(ctx) {\n    throw \"cmdb unreachable\";\n}\n",
    );
    let run = dir.run(&["once", "--json"]).failure();
    assert_eq!(run.code, Some(1));
    run.stderr_has(&["broken", "cmdb unreachable"]);
    let report = run.json();
    let services = report["services"].as_array().expect("services array");
    assert_eq!(services.len(), 2, "{report:#}");

    let good = &services[0];
    assert_eq!(good["name"], "good");
    assert_eq!(good["targets"], addresses(&fleet(60)).len());
    assert_eq!(good["invalid"], 0);
    let files = dir.files("out/good");
    let report_nodes = good["nodes"].as_array().expect("nodes array");
    assert_eq!(report_nodes.len(), 3);
    let mut total = 0;
    for (node, want) in report_nodes.iter().zip(&n) {
        assert_eq!(node["node"], want.as_str(), "sorted node order");
        let file = node["file"].as_str().expect("file");
        let count = node["count"].as_u64().expect("count") as usize;
        assert_eq!(node["changed"], true);
        assert_eq!(sd_entries(&files[file]).len(), count, "{file}");
        total += count;
    }
    assert_eq!(total, 2 * good["targets"].as_u64().unwrap() as usize);

    let broken = &services[1];
    assert_eq!(broken["name"], "broken");
    assert!(
        broken["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cmdb unreachable"),
        "{report:#}"
    );
    assert!(!dir.join("out/broken").exists());

    // The healthy service alone succeeds; unchanged files are not rewritten.
    let again = dir
        .run(&["once", "--json", "--service", "good"])
        .success()
        .json();
    let only = again["services"].as_array().unwrap();
    assert_eq!(only.len(), 1);
    assert!(
        only[0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["changed"] == false)
    );
    dir.run(&["once", "--service", "nope"])
        .failure()
        .stderr_has(&["nope", "good", "broken"]);
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_config_checks_and_plans() {
    run_in(repo(), &["check"])
        .success()
        .stdout_has(&["node_exporter", "all scripts compile"]);
    let report = run_in(repo(), &["plan", "--json"]).success().json();
    let svc = &report["services"][0];
    assert_eq!(svc["name"], "node_exporter", "{report:#}");
    assert_eq!(svc["dry_run"], true);
    assert_eq!(svc["invalid"], 0, "{report:#}");
    let targets = svc["targets"].as_u64().unwrap();
    assert!(targets >= 100, "shipped example has {targets} targets");
    let nodes = svc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let sum: u64 = nodes.iter().map(|n| n["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, targets, "replicas 1");
    assert!(nodes.iter().all(|n| n["count"].as_u64().unwrap() > 0));
    run_in(repo(), &["plan"])
        .success()
        .stdout_has(&["node_exporter"]);
}

#[test]
fn shipped_config_runs_once_in_a_copy() {
    let dir = Dir::new();
    for f in [
        "promshard.yaml",
        "scripts/node_exporter.rhai",
        "examples/targets.json",
    ] {
        dir.write(f, std::fs::read(repo().join(f)).unwrap());
    }
    dir.run(&["once"])
        .success()
        .stderr_has(&["pass done", "node_exporter"]);
    let files = dir.files("var/sd/node_exporter");
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    let delivered: Vec<Vec<u8>> = nodes(3)
        .iter()
        .map(|n| dir.read(format!("var/prom/{n}/sd/node_exporter.json")))
        .collect();
    let mut written: Vec<Vec<u8>> = files.into_values().collect();
    let mut delivered_sorted = delivered.clone();
    written.sort();
    delivered_sorted.sort();
    assert_eq!(
        written, delivered_sorted,
        "local push copies each node's file"
    );
    let total: usize = delivered.iter().map(|b| sd_entries(b).len()).sum();
    assert!(total >= 100, "{total} targets delivered");
}

#[test]
fn help_is_available_everywhere() {
    let cwd = std::env::temp_dir();
    for args in [
        &["--help"][..],
        &["once", "--help"],
        &["plan", "--help"],
        &["check", "--help"],
    ] {
        run_in(&cwd, args).success().stdout_has(&["Usage"]);
    }
    let bad = run_in(&cwd, &["frobnicate"]);
    assert_eq!(bad.code, Some(2), "usage errors exit 2: {}", bad.stderr);
}

/// With no state file (a lost `.promshard/`, or files another tool left),
/// promshard cannot tell its own files from anyone else's: the pass is
/// refused and names them, so neither an empty CMDB answer nor cleanup can
/// empty the shards, `--force` included.
#[test]
fn a_lost_state_refuses_the_pass_and_keeps_the_files() {
    let targets: Vec<serde_json::Value> = (1..=20)
        .map(|i| json!(format!("10.0.0.{i}:9100")))
        .collect();
    let dir = one_service(3, "", &targets);
    dir.run(&["once"]).success();
    let before = dir.files("out/svc");
    std::fs::remove_dir_all(dir.join("out/.promshard")).unwrap();
    dir.write("scripts/data.json", "[]");
    for args in [&["once"][..], &["once", "--force"]] {
        dir.run(args).failure().stderr_has(&[
            "holds 3 file(s) promshard did not write",
            "svc_127.0.0.1_9091.json",
        ]);
        assert_eq!(dir.files("out/svc"), before, "files must be kept");
    }
}

/// Cleanup deletes only what promshard wrote. A service directory holding
/// other files (a service called `etc` in a fake root) is refused, with
/// the names, and nothing in it is deleted: before the service's first
/// pass, and after, when a file appears among its own. Directories in it
/// are left alone and do not count.
#[test]
fn a_service_dir_with_foreign_files_is_refused_and_never_emptied() {
    let dir = Dir::new();
    dir.config(&config_yaml(
        &strs(&nodes(2)),
        &[("etc", "scripts/svc.rhai", "")],
    ));
    dir.write("scripts/svc.rhai", json_script("data.json"));
    dir.write("scripts/data.json", serde_json::to_vec(&fleet(10)).unwrap());
    let system = ["passwd", "shadow", "hosts", "resolv.conf", ".hidden"];
    for f in system {
        dir.write(format!("out/etc/{f}"), f);
    }
    dir.write("out/etc/ssh/sshd_config", "x");
    let refused = |dir: &Dir| {
        dir.run(&["once"]).failure().stderr_has(&[
            "did not write",
            "passwd",
            "refusing to write or clean up there",
        ]);
        for f in system {
            assert_eq!(
                dir.read(format!("out/etc/{f}")),
                f.as_bytes(),
                "{f} touched"
            );
        }
        dir.run(&["check"]).failure().stderr_has(&["did not write"]);
    };
    refused(&dir);
    assert_eq!(dir.files("out/etc").len(), 4, "no sd file may be written");

    for f in system {
        std::fs::remove_file(dir.join(format!("out/etc/{f}"))).unwrap();
    }
    dir.run(&["once"]).success();
    let ours = dir.files("out/etc");
    assert_eq!(ours.len(), 2, "{:?}", ours.keys());
    for f in system {
        dir.write(format!("out/etc/{f}"), f);
    }
    dir.write("scripts/data.json", serde_json::to_vec(&fleet(9)).unwrap());
    refused(&dir);
    for (name, bytes) in &ours {
        assert_eq!(
            &dir.read(format!("out/etc/{name}")),
            bytes,
            "{name} changed"
        );
    }
    assert_eq!(dir.read("out/etc/ssh/sshd_config"), b"x");
}

/// `out_dir` is never `/` or a system directory, however it is written.
#[test]
fn check_refuses_an_out_dir_that_is_a_system_directory() {
    let dir = one_service(2, "", &fleet(3));
    std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
    let yaml = std::fs::read_to_string(dir.join("promshard.yaml")).unwrap();
    for out in [
        "/",
        "/etc",
        "/usr/",
        "/var/lib/../../home",
        "etc-link",
        "../../../../../../..",
    ] {
        dir.config(&yaml.replace("out_dir: out", &format!("out_dir: \"{out}\"")));
        dir.run(&["check"])
            .failure()
            .stderr_has(&["out_dir", "system directory"]);
        dir.run(&["once"]).failure().stderr_has(&["out_dir"]);
    }
    dir.config(&yaml.replace("out_dir: out", "out_dir: /etc/prometheus/sd"));
    dir.run(&["check"]).success();
}

/// `check` catches what the first pass would hit on names derived from the
/// config: a service name too long to be a file name, and a default file
/// name (service and node together) too long.
#[test]
fn check_refuses_names_too_long_for_the_file_system() {
    let long = "s".repeat(250);
    let dir = Dir::new();
    dir.config(&config_yaml(
        &strs(&nodes(2)),
        &[(&long, "scripts/svc.rhai", "")],
    ));
    dir.write("scripts/svc.rhai", json_script("data.json"));
    dir.write("scripts/data.json", serde_json::to_vec(&fleet(3)).unwrap());
    dir.run(&["check"])
        .failure()
        .stderr_has(&["name: is 250 characters long, at most 200"]);

    let name = "s".repeat(200);
    let node = format!("{}.example:9090", "n".repeat(60));
    dir.config(&config_yaml(&[&node], &[(&name, "scripts/svc.rhai", "")]));
    dir.run(&["check"])
        .failure()
        .stderr_has(&["for node", "is too long"]);
    dir.run(&["once"]).failure().stderr_has(&["is too long"]);
    // Nodes from `fn nodes(ctx)` are known to `check --run` only.
    dir.config(&format!(
        "out_dir: out\nservices:\n  - name: {name}\n    script: scripts/svc.rhai\n"
    ));
    let nodes_fn = format!("fn nodes(ctx) {{ [\"{node}\"] }}\n");
    dir.write(
        "scripts/svc.rhai",
        format!("{}{nodes_fn}", json_script("data.json")),
    );
    dir.run(&["check"]).success();
    dir.run(&["check", "--run"])
        .failure()
        .stderr_has(&["for node", "is too long"]);
    // The same long names are fine with a script's own short file names.
    dir.write(
        "scripts/svc.rhai",
        format!(
            "{}{nodes_fn}fn file_name(f) {{ \"n.json\" }}\n",
            json_script("data.json")
        ),
    );
    dir.run(&["check", "--run"]).success();
    dir.run(&["once"]).success();
}

/// A state that cannot be saved after the files were written is reported
/// as what happened: the files changed, the state did not.
#[test]
fn a_failed_state_save_says_the_files_were_written() {
    let dir = one_service(2, "", &fleet(10));
    dir.run(&["once"]).success();
    dir.write("scripts/data.json", serde_json::to_vec(&fleet(12)).unwrap());
    // The state's temp file name taken by a directory: its save fails.
    std::fs::create_dir(dir.join("out/.promshard/.svc.state.tmp")).unwrap();
    let run = dir.run(&["once"]).failure();
    run.stderr_has(&[
        "files written and delivered, but saving the state",
        "pass failed after changing files",
    ]);
    assert!(
        !run.stderr.contains("files left as they were"),
        "{}",
        run.stderr
    );
    let seen = occurrences(&dir.files("out/svc"));
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        addresses(&fleet(12)),
        "the new files are in place"
    );
}

/// A pass holds a per-service lock across processes: a second `once` while
/// the lock is taken waits instead of writing the same files at once.
#[test]
fn a_pass_waits_for_the_service_lock() {
    let dir = one_service(2, "", &[json!("10.0.0.1:9100")]);
    dir.run(&["once"]).success();
    let lock = promshard::store::state::ServiceState::lock(&dir.join("out"), "svc").unwrap();
    let cwd = dir.path().to_path_buf();
    let started = std::time::Instant::now();
    let child = std::thread::spawn(move || run_in(&cwd, &["once"]));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !child.is_finished(),
        "once must wait while the lock is held"
    );
    drop(lock);
    child.join().unwrap().success();
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
}

/// Labels are limited in size and reserved names are refused: such a
/// target is reported and skipped like any invalid one, the rest is
/// written. `instance` and the `__` names Prometheus reads from a target
/// pass.
#[test]
fn oversized_labels_and_reserved_names_are_invalid_targets() {
    let data = vec![
        json!({"targets": ["10.0.0.1:9100"], "labels": {"big": "x".repeat(60_000)}}),
        json!({"targets": ["10.0.0.2:9100"], "labels": {"job": "other"}}),
        json!({"targets": ["10.0.0.3:9100"], "labels": {"__address__": "10.6.6.6:1"}}),
        json!({"targets": ["10.0.0.4:9100"], "labels": {"__hidden": "x"}}),
        json!({"targets": ["10.0.0.5:9100"], "labels": {"instance": "web-5", "__scheme__": "https",
               "__metrics_path__": "/m", "__param_module": "m", "__meta_rack": "r1"}}),
    ];
    let dir = one_service(2, "", &data);
    let report = dir.run(&["once", "--json"]).success().json();
    let svc = &report["services"][0];
    assert_eq!(svc["targets"], 1, "{report:#}");
    assert_eq!(svc["invalid"], 4, "{report:#}");
    let reasons: Vec<String> = svc["invalid_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["value"], i["reason"]))
        .collect();
    for want in [
        "label value is 60000 bytes, at most 4096",
        "label job is reserved",
        "label __address__ is reserved",
        "starting with '__' are reserved",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:#?}"
        );
    }
    assert!(reasons.iter().all(|r| r.len() < 400), "{reasons:#?}");
    let entries: Vec<_> = dir
        .files("out/svc")
        .values()
        .flat_map(|b| sd_entries(b))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0, "10.0.0.5:9100");
    assert_eq!(entries[0].1["__scheme__"], "https");
}

#[test]
fn check_rejects_configs_nested_too_deep_or_too_large_within_a_second() {
    let dir = Dir::new();
    for (what, text, named) in [
        (
            "100k nested sequences",
            format!("services: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            "line 1 column 43: nested more than 32 levels deep",
        ),
        (
            "100k nested maps",
            format!(
                "services: {}1{}\n",
                "{a: ".repeat(100_000),
                "}".repeat(100_000)
            ),
            "nested more than 32 levels deep",
        ),
        (
            "a 2 MiB file",
            format!("services: []\n# {}\n", "x".repeat(2 << 20)),
            "larger than 1 MiB",
        ),
    ] {
        dir.config(&text);
        let started = Instant::now();
        let run = dir.run(&["check"]).failure();
        run.stderr_has(&["promshard.yaml", named]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
    }
    // Brackets in quotes and comments do not count.
    let node = nodes(1);
    let ok = config_yaml(&strs(&node), &[("svc", "scripts/svc.rhai", "")]);
    dir.config(&format!(
        "{ok}# {}\nallowed_dirs: [\"{}\", '{}']\n",
        "[".repeat(100),
        "[".repeat(100),
        "{".repeat(100)
    ));
    dir.write("scripts/svc.rhai", json_script("data.json"));
    dir.run(&["check"]).success();
}

#[test]
fn check_warns_about_a_non_loopback_listener_without_a_token() {
    let dir = Dir::new();
    let node = nodes(1);
    let ok = config_yaml(&strs(&node), &[("svc", "scripts/svc.rhai", "")]);
    dir.write("scripts/svc.rhai", json_script("data.json"));
    let open = ok.replace("listen: 127.0.0.1:0", "listen: 0.0.0.0:9310");
    assert_ne!(open, ok);
    dir.config(&open);
    let run = dir.run(&["check"]).success();
    run.stderr_has(&["warning:", "0.0.0.0:9310", "api_token"]);
    dir.config(&format!("{open}api_token: s3cret\n"));
    let run = dir.run(&["check"]).success();
    assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
    dir.config(&ok);
    let run = dir.run(&["check"]).success();
    assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
}

/// `affinity:` and `shard_label:` through `once`, `plan` and `where`: every
/// target of an `app` is in the same file(s), a target without the label
/// is placed on its own and counted, and every target in a node's file
/// carries `shard="<node>"`, replacing a label of that name it had.
#[test]
fn affinity_keeps_each_app_in_one_file_and_shard_label_names_the_node() {
    let mut data: Vec<Value> = (0..60)
        .map(|g| {
            let addrs: Vec<String> = (0..1 + g % 8)
                .map(|i| format!("10.{}.{g}.{i}:9100", g % 5))
                .collect();
            json!({"targets": addrs, "labels": {"app": format!("app-{g}"), "env": "prod"}})
        })
        .collect();
    data.push(
        json!({"targets": ["10.9.0.1:9100", "10.9.0.2:9100", "10.9.0.3:9100"],
                     "labels": {"shard": "stale"}}),
    );
    for replicas in [1usize, 2] {
        let extra =
            format!("replicas: {replicas}\naffinity: \"{{labels.app}}\"\nshard_label: shard");
        let dir = one_service(3, &extra, &data);
        let report = dir.run(&["once", "--json"]).success().json();
        let svc = &report["services"][0];
        let files = dir.files("out/svc");
        let node_of: BTreeMap<&str, &str> = svc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["file"].as_str().unwrap(), n["node"].as_str().unwrap()))
            .collect();
        // app → the files holding its targets; each target's files.
        let mut files_of_app: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        let mut files_of_target: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (file, bytes) in &files {
            for (addr, labels) in sd_entries(bytes) {
                assert_eq!(
                    labels.get("shard").map(String::as_str),
                    Some(node_of[file.as_str()]),
                    "{addr} in {file}: {labels:?}"
                );
                let app = labels.get("app").cloned().unwrap_or_else(|| addr.clone());
                files_of_app.entry(app).or_default().insert(file);
                files_of_target.entry(addr).or_default().insert(file);
            }
        }
        let expected = addresses(&data);
        assert_eq!(files_of_target.len(), expected.len(), "every target placed");
        for (app, in_files) in &files_of_app {
            assert_eq!(
                in_files.len(),
                replicas,
                "replicas {replicas}: {app} in {in_files:?}"
            );
        }
        for (addr, in_files) in &files_of_target {
            assert_eq!(in_files.len(), replicas, "{addr}");
        }
        let a = &svc["affinity"];
        assert_eq!(
            (a["groups"].as_u64(), a["ungrouped"].as_u64()),
            (Some(63), Some(3)),
            "{a}"
        );
        let placed: u64 = svc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["groups"].as_u64().unwrap())
            .sum();
        assert_eq!(placed, 63 * replicas as u64);
    }
    let dir = one_service(3, "affinity: \"{labels.app}\"", &data);
    dir.run(&["plan"]).success().stdout_has(&[
        "GROUPS",
        "affinity \"{labels.app}\": 63 groups, 3 target(s) lacking",
    ]);
    let answer = dir
        .run(&["where", "10.2.7.3:9100", "--json"])
        .success()
        .json();
    assert_eq!(answer["services"][0]["group"], "app-7", "{answer:#}");
}

/// `rules:` at the top level: `check` validates every rule file and names a
/// broken one by file and line; `plan` lists what every node would get and
/// what is refused, and writes nothing.
#[test]
fn check_and_plan_show_rule_files_and_name_a_broken_one_by_file_and_line() {
    let dir = one_service(2, "", &fleet(10));
    let config = String::from_utf8(dir.read("promshard.yaml")).unwrap();
    dir.config(&format!("rules: [\"rules/*.yml\"]\n{config}"));
    dir.write(
        "rules/a.yml",
        "groups:\n  - name: a\n    rules:\n      - record: x:up:sum\n        expr: sum(up)\n",
    );
    dir.write("rules/b.yml", "groups:\n  - name: b\n   rules: []\n");
    let check = dir.run(&["check"]).failure();
    check.stderr_has(&[&format!("{}:3: ", dir.join("rules/b.yml").display())]);
    let plan = dir.run(&["plan"]).failure();
    plan.stdout_has(&["rules: 1 file(s) for every node", "a.yml", "REFUSED"]);
    assert!(
        !dir.join("out/.promshard/rules").exists(),
        "plan kept no copies"
    );
    dir.write("rules/b.yml", "groups: []\n");
    dir.run(&["check"])
        .success()
        .stdout_has(&["ok: rules of service svc: 2 file(s) valid"]);
}
