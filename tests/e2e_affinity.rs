//! End to end: `affinity:` and `shard_label:` seen from three real
//! Prometheus servers (issue 19, placement part).
//!
//! 30 real exporters on 127.0.79.x in 7 applications of 1 to 8 targets
//! (labelled `app`), three Prometheus servers (1 s scrape interval) reading
//! the files `promshard once` delivers with `push: local`. Checked through
//! each server's `/api/v1/query`: every application is scraped by exactly
//! one server, where `sum by (app) (up)` equals the application's target
//! count — what a recording rule per application needs — and every series
//! a server ingests carries `shard="<that server>"`.
//!
//! Then `rules:` (issue 19, rules part), on the same servers: the recording
//! rule `app:up:sum = sum by (app) (up)` delivered to every server (copied
//! into its rules directory, then `POST /-/reload`) equals each
//! application's target count there; `/api/v1/rules` of every server lists
//! it; a broken edit is refused with its file and line while the servers
//! keep the previous rules; and `promshard run` delivers a fixed edit by
//! itself (hot reload of rule files) and serves it at `/rules/…`.
//!
//! Needs prometheus and promtool: `#[ignore]`d; `bash .ci/test` runs it.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use util::child::{free_port, poll};
use util::daemon::Promshard;
use util::exporters::{Exporter, fleet};
use util::prom::Prom;
use util::{Dir, config_yaml, strs};

const SERVICE: &str = "web";
/// Targets per application: 7 applications, 30 targets.
const APPS: [usize; 7] = [1, 2, 3, 4, 5, 7, 8];

/// The recording rule every server gets.
const RULES: &str = "groups:\n  - name: apps\n    interval: 1s\n    rules:\n      - record: app:up:sum\n        expr: sum by (app) (up)\n";

#[test]
#[ignore = "needs prometheus and promtool"]
fn each_app_on_one_server_every_series_names_its_shard_and_delivered_rules_sum_each_app() {
    util::tools::promtool();
    let dir = Dir::new();
    let total: usize = APPS.iter().sum();
    let exporters: Vec<Exporter> = fleet(79, total, |_| 3);
    let proms: Vec<Prom> = (0..3)
        .map(|_| Prom::start(dir.path(), SERVICE, "1s"))
        .collect();
    // app-N → its exporters' addresses.
    let mut apps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut next = exporters.iter();
    for (a, &size) in APPS.iter().enumerate() {
        let addrs = next.by_ref().take(size).map(|e| e.addr.to_string());
        apps.insert(format!("app-{a}"), addrs.collect());
    }
    let groups: Vec<String> = apps
        .iter()
        .map(|(app, addrs)| {
            let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "#{{targets: [{}], labels: #{{app: \"{app}\"}}}}",
                quoted.join(", ")
            )
        })
        .collect();
    dir.write(
        "web.rhai",
        format!("fn targets(ctx) {{ [{}] }}\n", groups.join(", ")),
    );
    let nodes: Vec<String> = proms.iter().map(|p| p.addr.clone()).collect();
    dir.write("rules/apps.yml", RULES);
    let extra = format!(
        "affinity: \"{{labels.app}}\"\nshard_label: shard\npush: {{kind: local, dest: \"{root}/{{node}}/sd/web.json\"}}\n\
         rules: {{files: [\"rules/*.yml\"], dir: \"{root}/{{node}}/rules\", reload_url: \"http://{{node}}/-/reload\"}}",
        root = dir.path().display()
    );
    let port = free_port();
    dir.config(
        &config_yaml(&strs(&nodes), &[(SERVICE, "web.rhai", &extra)])
            .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")),
    );
    let report = dir.run(&["once", "--json"]).success().json();
    assert_eq!(report["services"][0]["affinity"]["groups"], APPS.len());
    let rules = &report["services"][0]["rules"];
    assert_eq!(rules["validated_with"], "promtool", "{rules}");
    assert_eq!(
        rules["deliveries"].as_array().map(Vec::len),
        Some(3),
        "{rules}"
    );
    for p in &proms {
        assert!(
            fs::metadata(p.sd_dir().join("web.json")).is_ok(),
            "{} got no file",
            p.addr
        );
    }

    // Every server has scraped every target of its file: app → (server, up count).
    let placed = poll("every target scraped once", Duration::from_secs(40), || {
        let mut placed: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for p in &proms {
            for v in p.query("sum by (app) (up)")? {
                let app = v["metric"]["app"].as_str().unwrap_or_default().to_string();
                let up: u64 = v["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .map_or(0, |f| f as u64);
                if let Some((other, _)) = placed.insert(app.clone(), (p.addr.clone(), up)) {
                    return Err(format!("{app} on {other} and {}", p.addr));
                }
            }
        }
        let want: BTreeMap<String, u64> = apps
            .iter()
            .map(|(a, addrs)| (a.clone(), addrs.len() as u64))
            .collect();
        let got: BTreeMap<String, u64> = placed.iter().map(|(a, (_, n))| (a.clone(), *n)).collect();
        if got == want {
            Ok(placed)
        } else {
            Err(format!("sum by (app) (up): {got:?}, want {want:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        placed
            .values()
            .map(|(s, _)| s)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "applications spread over more than one server: {placed:?}"
    );

    for p in &proms {
        let own = p
            .query(&format!(
                "count({{__name__=~\".+\", shard=\"{}\"}})",
                p.addr
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        let count = |v: &[serde_json::Value]| -> u64 {
            v.first()
                .and_then(|x| x["value"][1].as_str())
                .and_then(|s| s.parse::<f64>().ok())
                .map_or(0, |f| f as u64)
        };
        let on_server = placed.values().filter(|(s, _)| *s == p.addr).count();
        assert!(
            count(&own) > 0 || on_server == 0,
            "{}: no series with its shard label",
            p.addr
        );
        // `shard!=` also matches series without the label. Recorded series
        // (`level:metric:op` names) aggregate the label away.
        let others = p
            .query(&format!(
                "count({{__name__=~\".+\", __name__!~\".*:.*\", shard!=\"{}\"}})",
                p.addr
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            count(&others),
            0,
            "{}: series without its shard: {others:?}",
            p.addr
        );
    }
    rules_phase(&dir, &proms, &apps, &placed, port);
}

/// `(group, rule)` pairs every server must list.
fn loaded(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ("apps".to_string(), n.to_string()))
        .collect()
}

/// The rules part: see the module doc.
fn rules_phase(
    dir: &util::Dir,
    proms: &[Prom],
    apps: &BTreeMap<String, Vec<String>>,
    placed: &BTreeMap<String, (String, u64)>,
    port: u16,
) {
    // Every server evaluates the delivered rule over its own applications.
    poll(
        "app:up:sum on every server",
        Duration::from_secs(40),
        || {
            for p in proms {
                let mut got = BTreeMap::new();
                for v in p.query("app:up:sum")? {
                    let app = v["metric"]["app"].as_str().unwrap_or_default().to_string();
                    let n = v["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
                    got.insert(app, n.map_or(0, |f| f as u64));
                }
                let want: BTreeMap<String, u64> = placed
                    .iter()
                    .filter(|(_, (server, _))| *server == p.addr)
                    .map(|(app, _)| (app.clone(), apps[app].len() as u64))
                    .collect();
                if got != want {
                    return Err(format!("{}: app:up:sum {got:?}, want {want:?}", p.addr));
                }
                if p.rules()? != loaded(&["app:up:sum"]) {
                    return Err(format!("{}: /api/v1/rules lists {:?}", p.addr, p.rules()?));
                }
            }
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // A broken edit (an unclosed parenthesis on line 8) is refused with
    // file and line; every server keeps the rules it had.
    let broken = format!("{RULES}      - record: app:up:count\n        expr: count by (app) (up\n");
    dir.write("rules/apps.yml", &broken);
    let run = dir.run(&["once", "--json"]);
    assert_eq!(
        run.code,
        Some(1),
        "a refused rule file fails once: {}",
        run.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("once --json");
    let problem = &report["services"][0]["rules"]["problems"][0];
    assert_eq!(
        problem["file"],
        dir.join("rules/apps.yml").to_string_lossy().as_ref(),
        "{problem}"
    );
    assert_eq!(problem["line"], 8, "{problem}");
    assert!(run.stderr.contains("rule file refused"), "{}", run.stderr);
    for p in proms {
        assert_eq!(
            fs::read_to_string(p.rules_dir().join("apps.yml")).unwrap(),
            RULES
        );
        assert_eq!(p.rules(), Ok(loaded(&["app:up:sum"])), "{}", p.addr);
    }

    // `run` picks up the fixed edit by itself, delivers and reloads.
    let daemon = Promshard::start(dir.path(), port);
    let fixed = broken.replace("(up\n", "(up)\n");
    dir.write("rules/apps.yml", &fixed);
    daemon.wait(
        "the fixed rule loaded everywhere",
        Duration::from_secs(30),
        || {
            for p in proms {
                let have = p.rules()?;
                if have != loaded(&["app:up:count", "app:up:sum"]) {
                    return Err(format!("{}: {have:?}", p.addr));
                }
            }
            Ok(())
        },
    );
    let served = daemon
        .body("/rules/web/apps.yml")
        .unwrap_or_else(|e| daemon.fail(&e));
    assert_eq!(served, fixed);
    let status = daemon
        .json("/api/v1/services")
        .unwrap_or_else(|e| daemon.fail(&e));
    let files = &status["services"][0]["current"]["rules"]["files"];
    assert_eq!(files[0]["name"], "apps.yml", "{status}");
    let changed = daemon.metric(
        "promshard_rule_deliveries_total",
        &[("service", "web"), ("result", "changed")],
    );
    assert_eq!(changed, 3.0);
}
