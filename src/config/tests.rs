use std::path::Path;
use std::time::Duration;

use super::*;
use crate::shard::affinity::Affinity;
use crate::shard::names::FileType;
use crate::shard::placement::NodeSpec;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/promshard/promshard.yaml"), text)
}

const GOOD: &str = r#"
out_dir: out
services:
  - name: node_exporter
    script: scripts/node.rhai
    nodes: ["10.0.0.2:9090", {addr: "10.0.0.1:9090", weight: 2}]
    port: 9100
    push: {kind: local, dest: "/srv/{node}/node.json"}
"#;

#[test]
fn name_and_script_are_required_of_services_and_refused_elsewhere() {
    let text = "defaults: {name: x, script: y.rhai}\nservices:\n  - nodes: [\"10.0.0.1:9090\"]\n";
    let e = parse(text).unwrap_err().to_string();
    for want in [
        "defaults.name: not allowed in defaults",
        "defaults.script: not allowed in defaults",
        "services[0] \"\": name: required",
        "services[0] \"\": script: required",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let c = parse(GOOD).unwrap();
    let named = serde_json::json!({"name": "other", "replicas": 2});
    let e = c
        .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(named), false)
        .unwrap_err();
    assert_eq!(e[0].location, "fn service(): name", "{e:?}");
    let ok = serde_json::json!({"replicas": 2, "nodes": ["10.0.0.1:9090"]});
    let s = c
        .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(ok), false)
        .unwrap();
    assert_eq!((s.name.as_str(), s.replicas), ("extra", 2));
}

#[test]
fn good_config_resolves_paths_and_sorts_nodes() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.out_dir, Path::new("/etc/promshard/out"));
    let s = &c.services[0];
    assert_eq!(s.script, Path::new("/etc/promshard/scripts/node.rhai"));
    assert_eq!(
        s.nodes[0],
        NodeSpec {
            addr: "10.0.0.1:9090".into(),
            weight: 2
        }
    );
    assert_eq!(s.replicas, 1);
    assert_eq!(s.file_type, FileType::Json);
    assert_eq!(s.schedule, Schedule::Cron(DEFAULT_SCHEDULE.into()));
}

#[test]
fn affinity_and_shard_label_are_checked_and_inherited() {
    let text = GOOD.replace(
        "port: 9100",
        "port: 9100\n    affinity: \"{labels.app\"\n    shard_label: instance",
    );
    let e = parse(&text).unwrap_err().to_string();
    for want in [
        "promshard.yaml: services[0] \"node_exporter\": affinity: template \"{labels.app\": unclosed",
        "services[0] \"node_exporter\": shard_label: \"instance\": job and instance identify a series",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    affinity: \"{app}\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("affinity: template \"{app}\": unknown placeholder {app}: use {labels.<name>}, {host} or {address}"), "{e}");
    let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    shard_label: \"1x\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shard_label: \"1x\": label names must start"),
        "{e}"
    );
    let inherited =
        format!("defaults: {{affinity: \"{{labels.app}}\", shard_label: shard}}\n{GOOD}");
    let c = parse(&inherited).unwrap();
    let s = &c.services[0];
    assert_eq!(
        s.affinity.as_ref().map(Affinity::as_str),
        Some("{labels.app}")
    );
    assert_eq!(s.shard_label.as_deref(), Some("shard"));
    assert_eq!(parse(GOOD).unwrap().services[0].affinity, None);
    let bad = serde_json::json!({"affinity": "{labels.app}-{dc}"});
    let e = c
        .drop_in_service("extra", Path::new("scripts/extra.rhai"), Some(bad), false)
        .unwrap_err();
    assert_eq!(e[0].location, "fn service(): affinity", "{e:?}");
    assert!(e[0].message.contains("unknown placeholder {dc}"), "{e:?}");
}

#[test]
fn errors_name_file_service_and_key() {
    let text = GOOD.replace("port: 9100", "port: 9100\n    replicas: 0");
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains(
            "promshard.yaml: services[0] \"node_exporter\": replicas: replicas must be >= 1"
        ),
        "{e}"
    );
}

#[test]
fn unknown_key_is_an_error_with_position() {
    let e = parse(&GOOD.replace("port: 9100", "prot: 9100"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prot") && e.contains("line"), "{e}");
}

#[test]
fn duplicates_and_empty_nodes_are_errors() {
    let dup = GOOD.replace("\"10.0.0.2:9090\"", "\"10.0.0.1:9090\"");
    assert!(
        parse(&dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate node")
    );
    let twice = format!("{GOOD}{}", &GOOD[GOOD.find("  - name").unwrap()..]);
    assert!(
        parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("duplicate service name")
    );
    let empty = GOOD.replace(
        "nodes: [\"10.0.0.2:9090\", {addr: \"10.0.0.1:9090\", weight: 2}]",
        "nodes: []",
    );
    assert!(
        parse(&empty)
            .unwrap_err()
            .to_string()
            .contains("nodes: at least one node")
    );
}

#[test]
fn bad_node_and_schedule_are_reported_together() {
    let text = GOOD
        .replace("10.0.0.2:9090", "10.0.0.2")
        .replace("port: 9100", "port: 9100\n    schedule: \"nope\"");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
}

#[test]
fn schedules() {
    assert!(parse_schedule("*/5 * * * * *").is_ok());
    assert_eq!(
        parse_schedule("* * * * *").unwrap(),
        Schedule::Cron("0 * * * * *".into())
    );
    assert_eq!(
        parse_schedule("@every 30s").unwrap(),
        Schedule::Every(Duration::from_secs(30))
    );
    assert_eq!(
        parse_schedule("@every 5m").unwrap(),
        Schedule::Every(Duration::from_secs(300))
    );
    assert!(parse_schedule("@every 0s").is_err());
    assert!(parse_schedule("61 * * * * *").is_err());
}

#[test]
fn health_defaults_and_overrides() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.services[0].health, None, "no health: no probes");
    let c = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {}")).unwrap();
    assert_eq!(c.services[0].health, Some(Health::default()));
    let text = GOOD.replace(
        "port: 9100",
        "port: 9100\n    health: {path: /ready, interval: 500ms, timeout: 200ms, fall: 2, rise: 1}",
    );
    let h = parse(&text).unwrap().services[0].health.clone().unwrap();
    assert_eq!(
        h,
        Health {
            path: "/ready".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            fall: 2,
            rise: 1
        }
    );
    // Inherited from `defaults:`.
    let text = format!("defaults:\n  health: {{fall: 5}}\n{GOOD}");
    let h = parse(&text).unwrap().services[0].health.clone().unwrap();
    assert_eq!(h.fall, 5);
}

#[test]
fn health_errors_name_the_key() {
    let text = GOOD.replace(
        "port: 9100",
        "port: 9100\n    health: {path: healthy, interval: 1s, timeout: 2s, fall: 0, rise: 101}",
    );
    let e = parse(&text).unwrap_err().to_string();
    let keys = ["health.path", "health.timeout", "health.fall"];
    for key in keys.into_iter().chain(["health.rise"]) {
        assert!(
            e.contains(&format!("services[0] \"node_exporter\": {key}: ")),
            "{key} missing in:\n{e}"
        );
    }
    let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {interval: soon}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("health.interval"), "{e}");
    let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {intervall: 1s}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("intervall"), "{e}");
}

#[test]
fn a_type_error_names_the_service_and_keeps_the_position() {
    let text = GOOD.replace(
        "    port: 9100\n",
        "    port: 9100\n  - name: mysql\n    script: scripts/mysql.rhai\n    replicas: two\n",
    );
    let e = parse(&text).unwrap_err().to_string();
    assert_eq!(
        e,
        "/etc/promshard/promshard.yaml: services[1] \"mysql\": replicas: expected an integer, got \"two\" (line 10 column 15)"
    );
    let e = parse(&GOOD.replace("port: 9100", "port: 9100\n    health: {fall: three}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services[0] \"node_exporter\": health.fall: expected an integer, got \"three\" (line 8 column"),
        "{e}"
    );
}

#[test]
fn an_unknown_key_suggests_the_closest_one_wherever_it_is() {
    let cases = [
        (
            GOOD.replace("port: 9100", "port: 9100\n    replica: 2"),
            "services[0] \"node_exporter\": unknown key \"replica\" (line 8), did you mean \"replicas\"?",
        ),
        (
            format!("out_dri: x\n{GOOD}"),
            "promshard.yaml: unknown key \"out_dri\" (line 1), did you mean \"out_dir\"?",
        ),
        (
            GOOD.replace("dest: ", "dset: "),
            "services[0] \"node_exporter\": push: unknown key \"dset\" (line 8), did you mean \"dest\"?",
        ),
        (
            GOOD.replace("kind: local", "kind: locl"),
            "did you mean \"local\"?",
        ),
        (
            GOOD.replace("port: 9100", "port: 9100\n    health: {intervall: 5s}"),
            "services[0] \"node_exporter\": health: unknown key \"intervall\" (line 8), did you mean \"interval\"?",
        ),
        (
            format!("defaults: {{shedule: \"@every 1m\"}}\n{GOOD}"),
            "defaults: unknown key \"shedule\" (line 1), did you mean \"schedule\"?",
        ),
        (
            format!("ha: {{name: a, lease_tll: 5s}}\n{GOOD}"),
            "ha: unknown key \"lease_tll\" (line 1), did you mean \"lease_ttl\"?",
        ),
        (
            format!("{GOOD}    rules: {{files: [a.yml], dri: x}}\n"),
            "unknown key \"dri\" (line 9), did you mean \"dir\"?",
        ),
        (
            GOOD.replace(
                "{addr: \"10.0.0.1:9090\", weight: 2}",
                "{addr: \"10.0.0.1:9090\", wieght: 2}",
            ),
            "services[0] \"node_exporter\": nodes: expected \"host:port\" or {addr: \"host:port\", weight: N}",
        ),
        (
            GOOD.replace("kind: local, dest", "kind: local, forks: 2, dest"),
            "services[0] \"node_exporter\": push.forks: not a key of kind local",
        ),
        (
            format!("scrape_configs: []\n{GOOD}"),
            "unknown key \"scrape_configs\" (line 1); expected one of out_dir, listen",
        ),
    ];
    for (text, want) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(want), "want {want}\ngot  {e}");
    }
}

#[test]
fn a_drop_in_settings_error_names_its_key() {
    let c = parse(GOOD).unwrap();
    let script = Path::new("scripts/extra.rhai");
    for (settings, want) in [
        (
            serde_json::json!({"replica": 2}),
            "unknown key \"replica\", did you mean \"replicas\"?",
        ),
        (
            serde_json::json!({"replicas": "two"}),
            "expected an integer, got \"two\"",
        ),
    ] {
        let e = c
            .drop_in_service("extra", script, Some(settings), false)
            .unwrap_err();
        assert!(e[0].location.starts_with("fn service()"), "{e:?}");
        assert!(e[0].message.contains(want), "want {want}: {e:?}");
    }
    let e = c
        .drop_in_service(
            "extra",
            script,
            Some(serde_json::json!({"replicas": "two"})),
            false,
        )
        .unwrap_err();
    assert_eq!(e[0].location, "fn service(): replicas", "{e:?}");
}

#[test]
fn a_schedule_s_longest_interval_is_its_widest_gap() {
    use crate::config::duration::parse_schedule;
    let every = parse_schedule("@every 30s").unwrap();
    assert_eq!(every.longest_interval(), Duration::from_secs(30));
    let minutely = parse_schedule("0 * * * * *").unwrap();
    assert_eq!(minutely.longest_interval(), Duration::from_secs(60));
    let weekdays = parse_schedule("0 0 9 * * Mon-Fri").unwrap();
    assert_eq!(weekdays.longest_interval(), Duration::from_secs(3 * 86400));
}

#[test]
fn two_services_with_one_rules_dir_on_a_shared_node_are_refused_naming_both() {
    let svc = |name: &str, node: &str, files: &str, dir: &str| {
        format!(
            "  - name: {name}\n    script: scripts/node.rhai\n    nodes: [\"{node}\"]\n    \
             push: {{kind: local, dest: \"/srv/{{node}}/{name}.json\"}}\n    \
             rules: {{files: [{files}], dir: \"{dir}\"}}\n"
        )
    };
    let ha = "ha: {etcd: {endpoints: ['e:1']}, name: n, mode: shared}\n";
    let text = |top: &str, a: (&str, &str, &str), b: (&str, &str, &str)| {
        format!(
            "out_dir: out\n{top}services:\n{}{}",
            svc("one", a.0, a.1, a.2),
            svc("two", b.0, b.1, b.2)
        )
    };
    let (n1, n2, d) = ("10.0.0.1:9090", "10.0.0.2:9090", "/srv/{node}/rules");
    // Different files on a node both have: each would remove the other's.
    let e = parse(&text("", (n1, "a.yml", d), (n1, "b.yml", d)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services[1] \"two\": rules.dir")
            && e.contains("\"/srv/{node}/rules\" is also service \"one\"'s")
            && e.contains("differ"),
        "{e}"
    );
    // The same files: fine with a leader, not with two owners' epochs.
    parse(&text("", (n1, "a.yml", d), (n1, "a.yml", d))).unwrap();
    let e = parse(&text(ha, (n1, "a.yml", d), (n1, "a.yml", d)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fence each other"), "{e}");
    // No node in common, or {service} in the path: their own directories.
    parse(&text(ha, (n1, "a.yml", d), (n2, "b.yml", d))).unwrap();
    let per = "/srv/{node}/rules/{service}";
    parse(&text(ha, (n1, "a.yml", per), (n1, "b.yml", per))).unwrap();
}
