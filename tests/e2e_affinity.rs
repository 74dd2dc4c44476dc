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
//! Needs prometheus: `#[ignore]`d; `bash .ci/test` runs it.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use util::child::poll;
use util::exporters::{Exporter, fleet};
use util::prom::Prom;
use util::{Dir, config_yaml, strs};

const SERVICE: &str = "web";
/// Targets per application: 7 applications, 30 targets.
const APPS: [usize; 7] = [1, 2, 3, 4, 5, 7, 8];

#[test]
#[ignore = "needs prometheus"]
fn each_app_on_one_server_and_every_series_names_its_shard() {
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
    let extra = format!(
        "affinity: \"{{labels.app}}\"\nshard_label: shard\npush: {{kind: local, dest: \"{}/{{node}}/sd/web.json\"}}",
        dir.path().display()
    );
    dir.config(&config_yaml(
        &strs(&nodes),
        &[(SERVICE, "web.rhai", &extra)],
    ));
    let report = dir.run(&["once", "--json"]).success().json();
    assert_eq!(report["services"][0]["affinity"]["groups"], APPS.len());
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
        // `shard!=` also matches series without the label.
        let others = p
            .query(&format!(
                "count({{__name__=~\".+\", shard!=\"{}\"}})",
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
}
