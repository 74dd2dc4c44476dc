//! End to end: promshard observes what three real Prometheus servers
//! really scrape and audits it against its plan.
//!
//! 31 real exporters on 127.0.77.x, three Prometheus servers (1 s scrape
//! interval) reading the files promshard delivers with `push: local`, and
//! `observe: {interval: 1s}`. One scenario, in order, because each step
//! needs the servers settled: steady state all `ok`; `where` (API and CLI)
//! names the server that scrapes a target and its last scrape; the status
//! page in a real headless Chromium; a stale file by hand (`extra`); a
//! file emptied by hand (`missing`); an exporter stopped (`down`, not
//! `missing`); a server frozen with SIGSTOP (`unknown` for its targets
//! only, `/healthz` fast throughout).
//!
//! Needs prometheus and chromium: `#[ignore]`d; `bash .ci/test` runs it.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::browser::{dump_dom, png_summary, screenshot};
use util::daemon::{Promshard, write_lab_config};
use util::exporters::{Exporter, fleet};
use util::prom::Prom;

const SERVICE: &str = "web";
const TARGETS: usize = 31;
/// The label value that must reach the status page escaped.
const HOSTILE: &str = "<script>alert(1)</script>";

struct Lab {
    root: tempfile::TempDir,
    proms: Vec<Prom>,
    exporters: Vec<Exporter>,
    d: Promshard,
}

impl Lab {
    fn start() -> Lab {
        let root = tempfile::tempdir().expect("temp dir");
        let exporters = fleet(77, TARGETS, |i| 3 + i % 4);
        let proms: Vec<Prom> = (0..3)
            .map(|_| Prom::start(root.path(), SERVICE, "1s"))
            .collect();
        let addrs: Vec<String> = exporters
            .iter()
            .map(|e| format!("\"{}\"", e.addr))
            .collect();
        let (plain, hostile) = addrs.split_at(TARGETS - 1);
        fs::write(
            root.path().join("web.rhai"),
            format!(
                "fn targets(ctx) {{ [#{{targets: [{}], labels: #{{team: \"web\"}}}}, \
                 #{{targets: [{}], labels: #{{note: \"{HOSTILE}\"}}}}] }}",
                plain.join(", "),
                hostile.join(", ")
            ),
        )
        .expect("script");
        let port = write_lab_config(
            root.path(),
            SERVICE,
            &proms,
            "    observe: {interval: 1s, timeout: 900ms}\n",
        );
        let d = Promshard::start(root.path(), port);
        Lab {
            root,
            proms,
            exporters,
            d,
        }
    }

    fn audit(&self) -> Result<Value, String> {
        self.d.json(&format!("/api/v1/services/{SERVICE}/audit"))
    }

    /// Wait until the audit counts are exactly `want` (other states 0).
    fn wait_counts(&self, what: &str, want: &[(&str, usize)], within: Duration) -> Duration {
        let started = Instant::now();
        self.d.wait(what, within, || {
            let a = self.audit()?;
            let counts: BTreeMap<String, u64> =
                serde_json::from_value(a["audit"]["counts"].clone()).map_err(|e| e.to_string())?;
            let nonzero: BTreeMap<&str, u64> = counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.as_str(), *n))
                .collect();
            let wanted: BTreeMap<&str, u64> = want.iter().map(|(s, n)| (*s, *n as u64)).collect();
            if nonzero == wanted {
                Ok(())
            } else {
                Err(format!("{nonzero:?}; samples {}", a["audit"]["samples"]))
            }
        });
        started.elapsed()
    }

    /// Addresses in the file promshard delivered to server `i`.
    fn delivered(&self, i: usize) -> Vec<String> {
        let text = fs::read_to_string(self.proms[i].sd_dir().join("web.json")).expect("sd file");
        let groups: Vec<Value> = serde_json::from_str(&text).expect("sd json");
        groups
            .iter()
            .flat_map(|g| g["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(String::from))
            .collect()
    }

    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.d.base)
    }
}

#[test]
#[ignore = "needs prometheus and chromium"]
fn the_audit_sees_what_each_prometheus_really_scrapes() {
    let mut lab = Lab::start();
    let took = lab.wait_counts(
        "steady state: all ok",
        &[("ok", TARGETS)],
        Duration::from_secs(40),
    );
    eprintln!("all {TARGETS} targets ok {took:?} after start");
    let per_node: Vec<Vec<String>> = (0..3).map(|i| lab.delivered(i)).collect();
    assert_eq!(per_node.iter().map(Vec::len).sum::<usize>(), TARGETS);
    for (i, files) in per_node.iter().enumerate() {
        assert!(!files.is_empty(), "server {i} got no targets: {per_node:?}");
    }

    // where: the server that really scrapes it, with its last scrape.
    let target = &per_node[0][0];
    let w = lab.d.wait("where: scraped", Duration::from_secs(20), || {
        let w = lab.d.json(&format!("/api/v1/where?target={target}"))?;
        match w["services"][0]["nodes"][0]["observed"]["health"].as_str() {
            Some("up") => Ok(w),
            _ => Err(w.to_string()),
        }
    });
    let answer = &w["services"][0];
    assert_eq!(
        answer["assigned"],
        serde_json::json!([lab.proms[0].addr]),
        "{w}"
    );
    assert_eq!(answer["state"], "ok", "{w}");
    let node = &answer["nodes"][0];
    assert_eq!(node["node"], lab.proms[0].addr.as_str(), "{w}");
    assert_eq!(node["observed"]["health"], "up", "{w}");
    assert!(node["observed"]["last_scrape"].as_str().is_some(), "{w}");
    let cli = util::run_in(lab.root.path(), &["where", target]).success();
    assert!(
        cli.stdout.contains(&lab.proms[0].addr) && cli.stdout.contains("up, last scrape 20"),
        "{}",
        cli.stdout
    );

    // The status page in a real browser.
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    screenshot(&lab.page("/"), &png, 1280, 800);
    let (w, h, colours) = png_summary(&png);
    assert_eq!((w, h), (1280, 800));
    assert!(colours > 8, "the screenshot looks blank: {colours} colours");
    let dom = dump_dom(&lab.page("/"));
    for p in &lab.proms {
        assert!(dom.contains(&p.addr), "node {} not on the page", p.addr);
    }
    assert!(
        dom.contains(&format!("ok {TARGETS}")),
        "audit counts not on the page"
    );
    let hostile_target = lab.exporters[TARGETS - 1].addr.to_string();
    let dom = dump_dom(&lab.page(&format!("/?target={hostile_target}")));
    assert!(
        dom.contains("note=\"&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "the label value is shown, escaped"
    );
    assert!(
        !dom.contains(HOSTILE),
        "a script label reached the DOM as markup"
    );

    // A stale file put by hand on server 1 makes it scrape server 0's
    // targets too: extra.
    let stale = lab.proms[1].sd_dir().join("stale.json");
    fs::copy(lab.proms[0].sd_dir().join("web.json"), &stale).expect("copy stale file");
    let took = lab.wait_counts(
        "stale file: server 0's targets extra",
        &[
            ("extra", per_node[0].len()),
            ("ok", TARGETS - per_node[0].len()),
        ],
        Duration::from_secs(30),
    );
    eprintln!("stale file seen as extra after {took:?}");
    fs::remove_file(&stale).expect("remove stale file");
    lab.wait_counts(
        "stale file gone",
        &[("ok", TARGETS)],
        Duration::from_secs(30),
    );

    // Server 2's file emptied by hand: its targets are missing.
    let file = lab.proms[2].sd_dir().join("web.json");
    let original = fs::read(&file).expect("sd file");
    fs::write(&file, "[]").expect("empty the file");
    let took = lab.wait_counts(
        "emptied file: server 2's targets missing",
        &[
            ("missing", per_node[2].len()),
            ("ok", TARGETS - per_node[2].len()),
        ],
        Duration::from_secs(30),
    );
    eprintln!("emptied file seen as missing after {took:?}");
    fs::write(&file, original).expect("restore the file");
    lab.wait_counts("file restored", &[("ok", TARGETS)], Duration::from_secs(30));

    // An exporter stopped: down, not missing.
    let victim = per_node[0]
        .iter()
        .find(|a| **a != hostile_target)
        .expect("a plain target on server 0")
        .clone();
    lab.exporters
        .iter_mut()
        .find(|e| e.addr.to_string() == victim)
        .expect("its exporter")
        .stop();
    lab.wait_counts(
        "stopped exporter: down",
        &[("down", 1), ("ok", TARGETS - 1)],
        Duration::from_secs(20),
    );
    let w = lab
        .d
        .json(&format!("/api/v1/where?target={victim}"))
        .unwrap_or_else(|e| lab.d.fail(&e));
    assert_eq!(w["services"][0]["state"], "down", "{w}");

    // Server 1 frozen: its targets unknown, the others as they were, and the
    // API stays fast.
    lab.proms[1].proc.signal(libc::SIGSTOP);
    let mut slowest = Duration::ZERO;
    let took = lab.wait_counts(
        "frozen server: its targets unknown",
        &[
            ("unknown", per_node[1].len()),
            ("down", 1),
            ("ok", TARGETS - 1 - per_node[1].len()),
        ],
        Duration::from_secs(20),
    );
    for _ in 0..10 {
        let t = Instant::now();
        lab.d.body("/healthz").unwrap_or_else(|e| lab.d.fail(&e));
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.proms[1].proc.signal(libc::SIGCONT);
    eprintln!("frozen server seen as unknown after {took:?}; slowest /healthz {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?}"
    );
    lab.wait_counts(
        "thawed server answers again",
        &[("down", 1), ("ok", TARGETS - 1)],
        Duration::from_secs(20),
    );
}
