//! promshard seen as a Prometheus component: `/metrics` that `promtool
//! check metrics` accepts silently, counters at 0 before their first event,
//! the exposition format the `Accept` header asks for, and text logs that
//! a strict logfmt parser reads line by line.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::Dir;
use util::daemon::Promshard;
use util::fixture::web_setup;
use util::http::{Reply, agent, read_reply};

/// GET `/metrics` with `accept` (no header when `None`).
fn scrape(d: &Promshard, accept: Option<&str>) -> Reply {
    let mut req = agent(Duration::from_secs(10)).get(format!("{}/metrics", d.base));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    read_reply(req.call()).unwrap_or_else(|e| d.fail(&format!("GET /metrics: {e}")))
}

const TEXT: &str = "text/plain;version=0.0.4";

/// A daemon with the one-service fixture whose first pass has finished.
fn after_a_pass() -> (util::fixture::Setup, Promshard) {
    let (s, _) = web_setup("", 12);
    let d = s.start();
    d.wait_watching();
    d.wait("a first pass ok", Duration::from_secs(30), || {
        let body = scrape(&d, Some(TEXT)).body;
        let ok = "promshard_passes_total{service=\"web\",result=\"ok\"} 1";
        if body.contains(ok) {
            Ok(())
        } else {
            Err(body
                .lines()
                .filter(|l| l.contains("passes"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    });
    (s, d)
}

#[test]
#[ignore = "needs promtool (bash .ci/test installs it)"]
fn promtool_check_metrics_accepts_metrics_silently() {
    let (_s, d) = after_a_pass();
    let body = scrape(&d, Some(TEXT)).body;
    util::prom::check_metrics(&body).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn counters_and_service_series_are_there_before_their_first_event() {
    let (s, _) = web_setup("", 3);
    let d = s.start();
    d.wait_watching();
    let body = scrape(&d, Some(TEXT)).body;
    for line in [
        "promshard_script_errors_total{service=\"web\",kind=\"runtime\"} 0",
        "promshard_script_errors_total{service=\"web\",kind=\"timeout\"} 0",
        "promshard_mass_drop_refusals_total{service=\"web\"} 0",
        "promshard_passes_total{service=\"web\",result=\"refused\"} 0",
        "promshard_passes_total{service=\"web\",result=\"all_nodes_down\"} 0",
        "promshard_handover_timeouts_total{service=\"web\"} 0",
        "promshard_config_reloads_total{result=\"failed\"} 0",
        "promshard_script_reloads_total{result=\"failed\"} 0",
        "promshard_deliveries_total{service=\"web\",node=\"10.9.0.1:9090\",result=\"failed\"} 0",
    ] {
        assert!(
            body.contains(line),
            "{line} missing from the first scrape:\n{body}"
        );
    }
    // The fixture's schedule fires once a year: the widest gap is a year.
    let interval = body
        .lines()
        .find_map(|l| l.strip_prefix("promshard_schedule_interval_seconds{service=\"web\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| d.fail(&format!("no schedule interval:\n{body}")));
    assert!(
        (365.0 * 86400.0..=366.0 * 86400.0).contains(&interval),
        "{interval}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        body.contains(&format!(
            "promshard_build_info{{version=\"{version}\",commit=\""
        )),
        "{body}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}:\n{body}"
        );
    }
}

#[test]
fn the_exposition_format_follows_the_accept_header() {
    let (s, _) = web_setup("", 3);
    let d = s.start();
    d.wait_watching();
    let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let text = "text/plain; version=0.0.4; charset=utf-8";
    // What Prometheus 2.42 sends when it scrapes.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, want) in [
        (None, openmetrics),
        (Some(prometheus), openmetrics),
        (Some("*/*"), openmetrics),
        (Some(TEXT), text),
        (Some("text/plain"), text),
        (
            Some("text/plain;version=0.0.4, application/openmetrics-text;q=0"),
            text,
        ),
    ] {
        let r = scrape(&d, accept);
        assert_eq!(r.status, 200, "{accept:?}: {}", r.body);
        assert_eq!(r.content_type, want, "Accept: {accept:?}");
        let eof = r.body.trim_end().ends_with("# EOF");
        assert_eq!(
            eof,
            want == openmetrics,
            "{accept:?}: # EOF only in OpenMetrics"
        );
        let help = if want == text {
            "# HELP promshard_passes_total "
        } else {
            "# HELP promshard_passes "
        };
        assert!(r.body.contains(help), "{accept:?}: {}", r.body);
    }
}

/// A fleet whose log values hold spaces, `=` and quotes: a label value
/// and a script log line with them, an invalid target with a space, three
/// nodes (a `per_node` list), and one node whose delivery fails with an OS
/// error message.
fn awkward_fleet() -> Dir {
    let dir = Dir::new();
    dir.write("blocked", "a file where a directory should be");
    dir.write(
        "t.rhai",
        r#"fn targets(ctx) {
    log_info("fetched = \"4 hosts\" from C:\\inventory");
    [#{ targets: ["10.1.0.1:9100", "10.1.0.2:9100", "10.1.0.3:9100", "10.1.0.4:9100"],
        labels: #{ team: "site reliability", note: "a=\"b\"" } },
     "bad host:1"]
}"#,
    );
    dir.config(
        "out_dir: out\nservices:\n  - name: web\n    script: t.rhai\n    \
         nodes: [\"127.0.0.1:9091\", \"127.0.0.1:9092\", \"127.0.0.1:9093\"]\n    \
         push: {kind: local, dest: \"blocked/{node}/web.json\"}\n",
    );
    dir
}

#[test]
fn every_text_log_line_is_logfmt() {
    let dir = awkward_fleet();
    let run = dir.run(&["once"]);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let mut seen = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let pairs = util::logfmt::parse(line)
            .unwrap_or_else(|e| panic!("line {}: {e}\n--- stderr ---\n{}", n + 1, run.stderr));
        let keys: Vec<&str> = pairs.iter().take(4).map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["ts", "level", "target", "msg"],
            "line {}: {line}",
            n + 1
        );
        seen.push(pairs);
    }
    let find = |msg: &str| {
        seen.iter()
            .find(|p| p[3].1 == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{}", run.stderr))
    };
    let value = |pairs: &Vec<(String, String)>, key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let done = find("pass done");
    let per_node = value(done, "per_node");
    assert!(
        per_node.starts_with("127.0.0.1:9091=") && per_node.split(' ').count() == 3,
        "per_node={per_node:?}"
    );
    let invalid = find("invalid target skipped");
    assert_eq!(value(invalid, "value"), "bad host:1");
    let failed = find("delivery failed");
    assert!(
        value(failed, "error").contains("Not a directory"),
        "{failed:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p[3].1 == "fetched = \"4 hosts\" from C:\\inventory"),
        "the script's own line, unescaped: {}",
        run.stderr
    );
}

#[test]
fn json_logs_hold_per_node_as_an_object() {
    let dir = awkward_fleet();
    let run = dir.run(&["--log-format", "json", "once"]);
    let done: Value = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "pass done")
        .unwrap_or_else(|| panic!("no pass done line:\n{}", run.stderr));
    let per_node = done["fields"]["per_node"]
        .as_object()
        .unwrap_or_else(|| panic!("per_node is not an object: {done}"));
    let nodes: Vec<&String> = per_node.keys().collect();
    assert_eq!(
        nodes,
        ["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093"]
    );
    let total: u64 = per_node.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 4, "{done}");
    assert_eq!(done["level"], "INFO");
    assert!(
        done["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("promshard::pass")),
        "{done}"
    );
    assert_eq!(done["fields"]["service"], "web");
}

#[test]
fn the_logfmt_parser_is_strict() {
    assert_eq!(
        util::logfmt::parse(r#"a=1 b="x y" c="q\"=\\""#).unwrap(),
        vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "x y".to_string()),
            ("c".to_string(), "q\"=\\".to_string())
        ]
    );
    for bad in [
        "a=1 2",
        "reason=2 consecutive failures",
        "per_node=n:1=3",
        "a=",
        "a=\"open",
        "a=1  b=2",
        "INFO promshard: pass done",
    ] {
        assert!(util::logfmt::parse(bad).is_err(), "{bad}");
    }
}
