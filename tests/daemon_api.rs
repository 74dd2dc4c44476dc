//! The daemon's HTTP API from outside: `/metrics` (parsed strictly),
//! `/sd/{service}/{node}` (against the files and a real Prometheus reading
//! it), dispatch and its token, `/readyz`, and what answers never show.
//!
//! The Prometheus end-to-end test needs `prometheus`
//! (`PROMSHARD_PROMETHEUS`, else `PATH`); it is `#[ignore = "needs
//! prometheus"]` and `bash .ci/test` runs it with `--include-ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

mod util;
use util::child::free_port;
use util::exposition::{find_sample, parse_exposition};
use util::fixture::*;
use util::prom::Prom;

#[test]
fn the_exposition_parser_rejects_malformed_lines() {
    let good = "# HELP x_total Things.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"\"} 3\n# EOF\n";
    let s = parse_exposition(good).expect("good text parses");
    assert_eq!(s[0].labels["b"], "q\"");
    for bad in [
        "# TYPE x counter\nx_total{a=\"1\"}  3\n",
        "# TYPE x counter\nx_total{a=1} 3\n",
        "# TYPE x counter\nx_total{a=\"1\" 3\n",
        "# TYPE x counter\nx_total{a=\"1\"} three\n",
        "# TYPE x counter\ny_total 3\n",
        "# TYPE x counter\nx_total 1\nx_total 2\n",
        "# TYPE x counter\n# EOF\nx_total 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let before = d.metrics().unwrap_or_else(|e| d.fail(&e));
    let ok = [("service", "web"), ("result", "ok")];
    assert_eq!(
        find_sample(&before, "promshard_passes_total", &ok),
        Some(1.0)
    );
    assert_eq!(
        find_sample(&before, "promshard_targets", &[("service", "web")]),
        Some(20.0)
    );
    let per_node: f64 = NODES
        .iter()
        .map(|n| {
            find_sample(
                &before,
                "promshard_node_targets",
                &[("service", "web"), ("node", n)],
            )
            .unwrap_or(-1.0)
        })
        .sum();
    assert_eq!(per_node, 20.0, "node_targets should add up to the targets");
    assert_eq!(
        find_sample(
            &before,
            "promshard_files_written_total",
            &[("service", "web")]
        ),
        Some(3.0)
    );

    d.dispatch("web", None);
    d.wait(
        "promshard_passes_total{service=\"web\",result=\"ok\"} = 2",
        Duration::from_secs(10),
        || {
            let after = d.metrics()?;
            match find_sample(&after, "promshard_passes_total", &ok) {
                Some(2.0) => Ok(after),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let after = d.metrics().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(
        find_sample(
            &after,
            "promshard_pass_duration_seconds_count",
            &[("service", "web")]
        ),
        Some(2.0)
    );
    // Nothing changed, so nothing was rewritten.
    assert_eq!(
        find_sample(
            &after,
            "promshard_files_written_total",
            &[("service", "web")]
        ),
        Some(3.0)
    );
}

#[test]
fn http_sd_serves_exactly_what_each_node_file_holds() {
    let s = Setup::new();
    let h = hosts(20);
    s.write_script("web", &static_script(&h, "v1"));
    // One target over two nodes: one node has none. YAML files are served as JSON.
    s.write_script("tiny", &static_script(&hosts(1), "t"));
    s.write_config(
        "",
        &[
            service_yaml("web", &NODES, ""),
            service_yaml("tiny", &NODES[..2], "    file_type: yaml\n"),
        ],
    );
    let d = s.start();
    let web = wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    let tiny = wait_sharded(
        &d,
        &s.service_dir("tiny"),
        2,
        &hosts(1),
        Duration::from_secs(20),
    );
    d.wait("ready", Duration::from_secs(10), || {
        let r = d.get("/readyz")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });

    let mut empty_seen = 0;
    for (service, nodes, files) in [("web", &NODES[..], &web), ("tiny", &NODES[..2], &tiny)] {
        for node in nodes {
            let (name, content) = node_file(files, service, node)
                .unwrap_or_else(|| panic!("no file for {service}/{node}: {:?}", files.keys()));
            let r = d
                .get(&format!("/sd/{service}/{node}"))
                .unwrap_or_else(|e| d.fail(&e));
            assert_eq!(r.status, 200, "/sd/{service}/{node}: {}", r.body);
            assert!(
                r.content_type.starts_with("application/json"),
                "content type {:?}",
                r.content_type
            );
            let served: Value = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("/sd/{service}/{node} is not JSON ({e}): {}", r.body));
            assert_eq!(&served, content, "/sd/{service}/{node} differs from {name}");
            if addresses(content).is_empty() {
                assert_eq!(
                    served,
                    Value::Array(vec![]),
                    "a node without targets gets []"
                );
                empty_seen += 1;
            }
        }
    }
    assert_eq!(empty_seen, 1, "tiny should have exactly one empty node");

    for path in [
        "/sd/nope/10.9.0.1:9090",
        "/sd/web/10.9.9.9:9090",
        "/sd/tiny/10.9.0.3:9090",
    ] {
        let r = d.get(path).unwrap_or_else(|e| d.fail(&e));
        assert_eq!(r.status, 404, "{path}: {} {}", r.status, r.body);
    }
}

#[test]
fn dispatch_requires_the_bearer_token_when_one_is_set() {
    let (s, h) = web_setup("api_token: s3cret\n", 10);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    d.wait_passes("web", 1, Duration::from_secs(10));
    let path = "/api/v1/services/web/dispatch";
    for (token, want) in [(None, 401), (Some("wrong"), 401), (Some("s3cre"), 401)] {
        let r = d.post(path, token).unwrap_or_else(|e| d.fail(&e));
        assert_eq!(r.status, want, "token {token:?}: {}", r.body);
    }
    // Refused calls did nothing.
    assert_eq!(d.passes("web"), Ok(1));
    let r = d.post(path, Some("s3cret")).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 202, "{}", r.body);
    d.wait_passes("web", 2, Duration::from_secs(10));
    let r = d
        .post("/api/v1/services/nope/dispatch", Some("s3cret"))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);
    // Reads stay open.
    assert_eq!(d.get("/api/v1/services").map(|r| r.status), Ok(200));
}

#[test]
fn dispatch_is_refused_on_a_non_loopback_listener_without_a_token() {
    let s = Setup::new();
    let h = hosts(4);
    s.write_script("web", &static_script(&h, "v1"));
    let text = config_yaml(
        &format!("0.0.0.0:{}", s.port),
        "",
        &[service_yaml("web", &NODES, "")],
    );
    s.write("promshard.yaml", &text);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let r = d
        .post("/api/v1/services/web/dispatch", None)
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(d.passes("web"), Ok(1));
}

#[test]
fn readyz_is_503_until_every_service_had_a_successful_pass() {
    let s = Setup::new();
    s.write_script("quick", &static_script(&hosts(3), "q"));
    s.write_script("slow", &slow_script(&hosts(3), 2.0));
    s.write_config(
        "",
        &[
            service_yaml("quick", &NODES, ""),
            service_yaml("slow", &NODES, ""),
        ],
    );
    let d = s.start();
    d.wait_up();
    // quick is done, slow is still in its first pass: not ready.
    d.wait_passes("quick", 1, Duration::from_secs(20));
    let r = d.get("/readyz").unwrap_or_else(|e| d.fail(&e));
    let slow_passes = d.passes("slow");
    assert_eq!(
        slow_passes,
        Ok(0),
        "slow's first pass ended too early; the test proves nothing"
    );
    assert_eq!(r.status, 503, "readyz before slow's first pass: {}", r.body);
    d.wait("/readyz 200", Duration::from_secs(30), || {
        let r = d.get("/readyz")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    let all = d.services().unwrap_or_else(|e| d.fail(&e));
    for name in ["quick", "slow"] {
        let at = all[name]["last_success"].as_str().unwrap_or_default();
        assert!(at.ends_with('Z'), "{name}: RFC 3339: {}", all[name]);
    }
}

#[test]
#[ignore = "needs prometheus"]
fn prometheus_http_sd_shows_exactly_the_node_targets() {
    let (s, h) = web_setup("", 20);
    let d = s.start();
    let files = wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    // The node with the most targets makes the strongest check.
    let (node, want) = NODES
        .iter()
        .map(|n| {
            let (_, content) = node_file(&files, "web", n).expect("node file");
            (
                *n,
                addresses(content).into_iter().collect::<BTreeSet<String>>(),
            )
        })
        .max_by_key(|(_, a)| a.len())
        .expect("nodes");
    assert!(!want.is_empty());

    let sd_url = format!("http://127.0.0.1:{}/sd/web/{node}", s.port);
    let mut prom = Prom::start_with(s.dir.path(), |_| {
        format!(
            "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\nscrape_configs:\n  - job_name: web\n    http_sd_configs:\n      - url: \"{sd_url}\"\n        refresh_interval: 1s\n"
        )
    });
    let mut active = |want: &BTreeSet<String>, version: &str| -> Result<(), String> {
        if let Some(status) = prom.proc.exited() {
            return Err(format!("prometheus exited ({status}): {}", prom.log_tail()));
        }
        let v = prom.api("/api/v1/targets?state=active")?;
        let targets = v["activeTargets"].as_array().cloned().unwrap_or_default();
        let got: BTreeSet<String> = targets
            .iter()
            .filter_map(|t| {
                t["discoveredLabels"]["__address__"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let labelled = targets.iter().all(|t| t["labels"]["version"] == version);
        if &got == want && targets.len() == want.len() && labelled {
            Ok(())
        } else {
            Err(format!(
                "{} active targets {got:?} (version {version} on all: {labelled})",
                targets.len()
            ))
        }
    };
    d.wait(
        "Prometheus to show the node's targets",
        Duration::from_secs(60),
        || active(&want, "v1"),
    );

    // Prometheus follows changes: relabel the targets and re-dispatch.
    s.write_script("web", &static_script(&h, "v2"));
    d.dispatch("web", None);
    d.wait(
        "Prometheus to show the relabelled targets",
        Duration::from_secs(60),
        || active(&want, "v2"),
    );
    drop(prom);
}

/// A node taken out of a service (config edit) must get `[]` from
/// `/sd/{service}/{node}`, not 404: Prometheus keeps its last targets when an
/// http_sd refresh fails, and would go on scraping targets it lost.
#[test]
fn http_sd_answers_empty_for_a_node_that_left() {
    let s = Setup::new();
    let h = hosts(12);
    s.write_script("web", &static_script(&h, "v1"));
    s.write_config("", &[service_yaml("web", &NODES, "")]);
    let d = s.start();
    wait_sharded(&d, &s.service_dir("web"), 3, &h, Duration::from_secs(20));
    // The pass is recorded just after its files are written.
    d.wait_passes("web", 1, Duration::from_secs(10));
    let gone = NODES[2];
    // The files are written before the pass ends; /sd answers 503 until then.
    d.wait(
        "/sd of the node to answer 200",
        Duration::from_secs(10),
        || {
            let r = d.get(&format!("/sd/web/{gone}"))?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    );

    s.write_config("", &[service_yaml("web", &NODES[..2], "")]);
    wait_sharded(&d, &s.service_dir("web"), 2, &h, Duration::from_secs(20));
    d.wait(
        "the departed node to get []",
        Duration::from_secs(10),
        || {
            let r = d.get(&format!("/sd/web/{gone}"))?;
            match (r.status, serde_json::from_str::<Value>(&r.body)) {
                (200, Ok(Value::Array(a))) if a.is_empty() => Ok(()),
                _ => Err(format!("{} {}", r.status, r.body)),
            }
        },
    );
    // A node the service never had is still unknown.
    let r = d
        .get("/sd/web/10.9.9.9:9090")
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!(r.status, 404, "{}", r.body);

    // Still [] after a restart: the new process only knows from the state
    // file that the node was there.
    d.proc.signal(libc::SIGTERM);
    drop(d);
    let d = s.start();
    d.wait_passes("web", 1, Duration::from_secs(20));
    let r = d
        .get(&format!("/sd/web/{gone}"))
        .unwrap_or_else(|e| d.fail(&e));
    assert_eq!((r.status, r.body.trim()), (200, "[]"), "after restart");
}

/// `/sd` answers from the plan in memory: while passes rewrite and rename
/// the files (per-node counts change every pass, and so do the names of
/// the counted scheme), no answer is anything but 200, 404 or 503.
#[test]
fn http_sd_never_fails_while_passes_rename_files() {
    let (s, d) = churning_web("counted");
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let (_, passes) = churn(&s, &d, 2000, 50, |i| {
        let node = NODES[i % NODES.len()];
        let r = d
            .get(&format!("/sd/web/{node}"))
            .unwrap_or_else(|e| d.fail(&e));
        *answers.entry(r.status).or_default() += 1;
        if ![200, 404, 503].contains(&r.status) && bad.len() < 5 {
            bad.push(format!("{node}: {} {}", r.status, r.body));
        }
    });
    let failed: usize = answers
        .iter()
        .filter(|(s, _)| ![200, 404, 503].contains(*s))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        failed, 0,
        "answers by status {answers:?} over {passes} passes; first: {bad:?}"
    );
}

/// The API needs no token to read, so it never shows credentials: a
/// script whose `http_get` fails on a URL with a password and a token in
/// its query string has its error shown with both redacted.
#[test]
fn api_answers_never_show_url_credentials() {
    let s = Setup::new();
    let closed = free_port();
    s.write_script(
        "web",
        &format!(
            "fn targets(ctx) {{\n    http_get(\"http://bob:s3cret@127.0.0.1:{closed}/hosts?token=t0k3n\")\n}}\n"
        ),
    );
    s.write_config("", &[service_yaml("web", &NODES, "")]);
    let d = s.start();
    let shown = format!("http://***@127.0.0.1:{closed}/hosts?***");
    let body = d.wait(
        "web's failed pass in the API",
        Duration::from_secs(20),
        || {
            let r = d.get("/api/v1/services")?;
            if r.body.contains(&format!("127.0.0.1:{closed}")) {
                Ok(r.body)
            } else {
                Err(r.body)
            }
        },
    );
    for secret in ["bob", "s3cret", "t0k3n"] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    assert!(body.contains(&shown), "{body}");
}
