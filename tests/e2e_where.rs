//! End to end: `where` (API, CLI) and the status page during a real
//! make-before-break handover say what is happening: the target is moving
//! from its old server, which still scrapes it, to its new one, which does
//! not yet — never `extra` on the old one and `NOT ASSIGNED`.
//!
//! Two Prometheus servers (1 s scrape interval) and eight real exporters
//! on 127.0.93.x. The daemon starts with server A alone; then B joins.
//! B's own config drops every target it discovers, so it can never
//! confirm a move: the handovers stay pending for as long as the test
//! looks at them (`handover_timeout: 120s`). Then B scrapes again (its
//! config restored and reloaded) and the handovers end.
//!
//! Needs prometheus and chromium: `#[ignore]`d; `bash .ci/test` runs it.

mod util;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use util::browser::dump_dom;
use util::daemon::{Promshard, write_lab_config};
use util::exporters::{fleet, write_script};
use util::prom::Prom;

const SERVICE: &str = "web";
const TARGETS: usize = 8;

/// A server's `prometheus.yml`, as `Prom::start` writes it, dropping every
/// discovered target when `drop_all`.
fn prometheus_yml(dir: &Path, drop_all: bool) -> String {
    let drop = if drop_all {
        "    relabel_configs:\n      - action: drop\n        source_labels: [__address__]\n        regex: \".+\"\n"
    } else {
        ""
    };
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n  - job_name: {SERVICE}\n    file_sd_configs:\n      - files: [\"{}/sd/*.json\"]\n{drop}",
        dir.display()
    )
}

#[test]
#[ignore = "needs prometheus and chromium"]
fn where_shows_a_pending_handover_with_both_servers() {
    let root = tempfile::tempdir().expect("temp dir");
    let _exporters = {
        let e = fleet(93, TARGETS, |_| 3);
        write_script(root.path(), SERVICE, &e);
        e
    };
    let a = Prom::start(root.path(), SERVICE, "1s");
    let b = Prom::start_with(root.path(), |dir| prometheus_yml(dir, true));
    let extra = "    observe: {interval: 1s, timeout: 900ms}\n    handover: make_before_break\n    handover_timeout: 120s\n";
    let port = write_lab_config(root.path(), SERVICE, std::slice::from_ref(&a), extra);
    let d = Promshard::start(root.path(), port);
    d.wait("all targets ok on A", Duration::from_secs(40), || {
        let s = &d.json("/api/v1/services")?["services"][0];
        match s["audit"]["ok"].as_u64() {
            Some(n) if n == TARGETS as u64 => Ok(()),
            _ => Err(s.to_string()),
        }
    });

    // B joins: some targets move to it, and B never scrapes them.
    let config = fs::read_to_string(root.path().join("promshard.yaml")).expect("config");
    let both = config.replace(
        &format!("nodes: [\"{}\"]", a.addr),
        &format!("nodes: [\"{}\", \"{}\"]", a.addr, b.addr),
    );
    assert_ne!(both, config, "the node list was rewritten");
    fs::write(root.path().join("promshard.yaml"), both).expect("config");
    let target = d.wait("a handover pending", Duration::from_secs(30), || {
        let s = &d.json("/api/v1/services")?["services"][0];
        let first = &s["current"]["handover"]["pending_samples"][0];
        match (first["target"].as_str(), first["started"].as_str()) {
            (Some(t), Some(started)) if started.ends_with('Z') => Ok(t.to_string()),
            _ => Err(s["current"]["handover"].to_string()),
        }
    });

    // where, once the observation of this plan is in: handover pending from
    // A (still scraping) to B (not yet active), in the audit's own state.
    let w = d.wait(
        "where: the pending handover",
        Duration::from_secs(20),
        || {
            let w = d.json(&format!("/api/v1/where?target={target}"))?;
            let answer = w["services"][0].clone();
            let audit = d.json(&format!("/api/v1/services/{SERVICE}/audit"))?;
            let audited = audit_state(&audit, &target);
            let h = &answer["handover"][0];
            let shown = h["from_state"] == "still scraping" && h["to_state"] == "not yet active";
            if shown && answer["observed_at"].is_string() && answer["state"] == audited {
                Ok(answer)
            } else {
                Err(format!("where {answer}; audit says {audited}"))
            }
        },
    );
    assert_eq!(w["handover"][0]["from"], a.addr.as_str(), "{w}");
    assert_eq!(w["handover"][0]["to"], b.addr.as_str(), "{w}");
    assert_eq!(w["assigned"], serde_json::json!([b.addr]), "{w}");
    let state = w["state"].as_str().unwrap_or_default();
    assert!(
        ["pending", "missing"].contains(&state),
        "a target B does not scrape is pending, then missing, never {state}: {w}"
    );
    let role = |node: &str| {
        w["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .map(|n| n["role"].clone())
    };
    assert_eq!(role(&a.addr), Some("handing_over".into()), "{w}");
    assert_eq!(role(&b.addr), Some("assigned".into()), "{w}");
    let observed_at = w["observed_at"].as_str().unwrap_or_default();
    assert!(
        chrono_like(observed_at),
        "observed_at is RFC 3339: {observed_at}"
    );

    let cli = util::run_in(root.path(), &["where", &target]).success();
    let line = format!(
        "handover pending: {} (still scraping) → {} (not yet active)",
        a.addr, b.addr
    );
    assert!(cli.stdout.contains(&line), "{}", cli.stdout);
    assert!(!cli.stdout.contains("NOT ASSIGNED"), "{}", cli.stdout);
    assert!(
        cli.stdout.contains(&format!("{}  handing over", a.addr)),
        "{}",
        cli.stdout
    );

    // The status page in a real browser: the same words, and both nodes.
    let dom = dump_dom(&format!("{}/?target={target}", d.base));
    assert!(dom.contains(&line), "{dom}");
    assert!(!dom.contains("NOT ASSIGNED"), "{dom}");
    let dom = dump_dom(&format!("{}/", d.base));
    assert!(
        dom.contains("<td class=\"num\">2/2</td>"),
        "live/total nodes: {dom}"
    );
    assert!(dom.contains("last delivered"), "{dom}");

    // B scrapes again: the handovers end, the target is ok on B alone.
    fs::write(b.dir.join("prometheus.yml"), prometheus_yml(&b.dir, false)).expect("config");
    let agent = util::http::agent(Duration::from_secs(5));
    let reload = format!("http://{}/-/reload", b.addr);
    let reply = util::http::read_reply(agent.post(&reload).send_empty()).expect("reload");
    assert_eq!(reply.status, 200, "{}", reply.body);
    d.wait("the handover ended", Duration::from_secs(40), || {
        let w = d.json(&format!("/api/v1/where?target={target}"))?;
        let answer = &w["services"][0];
        let on: Vec<&Value> = answer["nodes"].as_array().into_iter().flatten().collect();
        let only_b = on.len() == 1 && on[0]["node"] == b.addr.as_str();
        if answer["state"] == "ok" && answer["handover"].is_null() && only_b {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    });
}

/// The state the audit gives `target`: the state it is listed under, or
/// `ok` when it is listed under none.
fn audit_state(audit: &Value, target: &str) -> String {
    let samples = audit["audit"]["samples"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    samples
        .iter()
        .find(|(_, list)| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|s| s["target"] == target)
        })
        .map_or("ok".into(), |(state, _)| state.clone())
}

/// `2026-12-03T14:52:30Z`: a date, a `T`, a time, UTC.
fn chrono_like(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() >= 20 && b[4] == b'-' && b[10] == b'T' && s.ends_with('Z')
}
