//! Target sources users already have: DNS (`dns_srv`, `dns_sd_configs`),
//! HTTP with a private CA and client certificates (`http_request`),
//! Prometheus SD blocks with relabelling (`source:`, `prometheus_sd`), and
//! the shipped examples for them.
//!
//! The servers are real: dnsmasq serving SRV and A records on loopback, a
//! real Prometheus computing the same relabelling we compare with,
//! `openssl s_server` with a CA made by `openssl` in the test, and the
//! small HTTP server of `http_fixture` for recorded API answers.

mod http_fixture;
mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use http_fixture::{Reply, Server};
use promshard::script::{CompiledScript, Sandbox, ScriptRun};
use serde_json::{Value, json};
use util::child::{ChildGuard, free_port, poll};
use util::dns::Dnsmasq;
use util::prom::Prom;
use util::tools::openssl;
use util::{Dir, sd_entries};

type LabelSet = BTreeMap<String, String>;

/// Run `fn targets(ctx)` of `src`, written as `dir/t.rhai`, and return the
/// groups as JSON.
fn targets_of(dir: &Path, src: &str, sandbox: &Sandbox) -> Result<Vec<Value>, String> {
    let path = dir.join("t.rhai");
    std::fs::write(&path, src).unwrap();
    let s = CompiledScript::compile(&path).map_err(|e| e.to_string())?;
    let v = ScriptRun::new(&s, sandbox)
        .call("targets", (rhai::Map::new(),))
        .map_err(|e| e.to_string())?;
    rhai::serde::from_dynamic(&v).map_err(|e| e.to_string())
}

fn example(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/examples")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every file of a service's directory, all entries, sorted.
fn all_entries(dir: &Dir, service: &str) -> Vec<(String, LabelSet)> {
    let mut out: Vec<_> = dir
        .files(format!("out/{service}"))
        .values()
        .flat_map(|b| sd_entries(b))
        .collect();
    out.sort();
    out
}

// ------------------------------------------------------------------ config

#[test]
fn check_refuses_unsupported_sd_kinds_and_hashmod_naming_the_service() {
    let dir = Dir::new();
    dir.config(
        "out_dir: out\nservices:\n  - name: k8s\n    nodes: [\"127.0.0.1:9091\"]\n    source:\n      kubernetes_sd_configs: [{role: node}]\n  - name: hm\n    nodes: [\"127.0.0.1:9091\"]\n    source:\n      static_configs: [{targets: [\"a:1\"]}]\n      relabel_configs: [{source_labels: [__address__], modulus: 3, target_label: s, action: hashmod}]\n  - name: both\n    script: x.rhai\n    nodes: [\"127.0.0.1:9091\"]\n    source: {static_configs: [{targets: [\"a:1\"]}]}\n",
    );
    let r = dir.run(&["check"]).failure();
    r.stderr_has(&[
        "services[0] \"k8s\": source: kubernetes_sd_configs is not a supported kind of service discovery; supported: static_configs, file_sd_configs, http_sd_configs, dns_sd_configs",
        "services[1] \"hm\": source: relabel_configs[0]: action hashmod is not supported: promshard shards the targets itself",
        "services[2] \"both\": source: give script: or source:, not both",
    ]);
}

#[test]
fn a_source_service_reads_static_and_file_sd_with_relabelling() {
    let dir = Dir::new();
    dir.write(
        "sd/a.json",
        r#"[{"targets": ["10.0.0.1:9100", "10.0.0.2:9100"], "labels": {"env": "prod", "team": "shop"}}]"#,
    );
    dir.write(
        "sd/b.yml",
        "- targets: [\"10.0.0.3:9100\"]\n  labels: {env: dev, team: data}\n",
    );
    dir.config(
        "out_dir: out\nservices:\n  - name: web\n    nodes: [\"127.0.0.1:9091\", \"127.0.0.1:9092\"]\n    source:\n      static_configs: [{targets: [\"10.0.0.9:9100\"], labels: {env: prod}}]\n      file_sd_configs: [{files: [\"sd/*.json\", \"sd/*.yml\"], refresh_interval: 1m}]\n      relabel_configs:\n        - {source_labels: [env], regex: dev, action: drop}\n        - {source_labels: [__meta_filepath], regex: '.*/([^/]+)', target_label: sd_file}\n        - {source_labels: [__address__], regex: '(.+):\\d+', target_label: host}\n",
    );
    dir.run(&["check"]).success();
    dir.run(&["once"]).success();
    let entries = all_entries(&dir, "web");
    let file = |f: &str| (!f.is_empty()).then(|| f.to_string());
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let got: Vec<Row> = entries
        .iter()
        .map(|(a, l)| {
            (
                a.clone(),
                l.get("sd_file").cloned(),
                l.get("host").cloned(),
                l.get("team").cloned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "10.0.0.1:9100".into(),
                file("a.json"),
                file("10.0.0.1"),
                file("shop")
            ),
            (
                "10.0.0.2:9100".into(),
                file("a.json"),
                file("10.0.0.2"),
                file("shop")
            ),
            ("10.0.0.9:9100".into(), None, file("10.0.0.9"), None),
        ],
        "dev dropped, __meta_filepath as Prometheus sets it, no __meta_ label left: {entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|(_, l)| l.keys().all(|k| !k.starts_with("__")))
    );
}

#[test]
fn a_file_sd_file_outside_the_allowed_dirs_fails_the_pass_naming_the_config() {
    let dir = Dir::new();
    dir.config(
        "out_dir: out\nservices:\n  - name: web\n    nodes: [\"127.0.0.1:9091\"]\n    source:\n      file_sd_configs: [{files: [\"/etc/passwd.json\"]}]\n",
    );
    let r = dir.run(&["once"]).failure();
    r.stderr_has(&[
        "promshard.yaml",
        "file_sd_configs[0]",
        "outside the allowed directories",
    ]);
    assert!(
        !r.stderr.contains("line 1"),
        "no position in a script nobody wrote: {}",
        r.stderr
    );
}

// ------------------------------------------------------------------ DNS

const LAB_SRV: &str = "_node._tcp.lab.promshard.test";

fn lab_records(hosts: &[(&str, &str, u16)]) -> String {
    let mut out = String::new();
    for (i, (host, ip, port)) in hosts.iter().enumerate() {
        out.push_str(&format!(
            "srv-host={LAB_SRV},{host}.lab.promshard.test,{port},{i},10\nhost-record={host}.lab.promshard.test,{ip}\n"
        ));
    }
    out
}

#[test]
#[ignore = "needs dnsmasq"]
fn dns_host_functions_read_srv_and_a_records_from_the_configured_server() {
    let dir = Dir::new();
    let dns = Dnsmasq::start(
        dir.path(),
        &(lab_records(&[("h1", "127.0.0.11", 9100), ("h2", "127.0.0.12", 9101)])
            + "host-record=v6.lab.promshard.test,::1\n"),
    );
    let sandbox = Sandbox {
        dns_servers: vec![dns.addr],
        ..Sandbox::default()
    };
    let v = targets_of(
        dir.path(),
        &format!(
            "fn targets(ctx) {{ [#{{ srv: dns_srv(\"{LAB_SRV}\"), a: dns_a(\"h2.lab.promshard.test\"), aaaa: dns_aaaa(\"v6.lab.promshard.test\"), none: dns_srv(\"_no._tcp.lab.promshard.test\") }}] }}"
        ),
        &sandbox,
    )
    .unwrap();
    assert_eq!(
        v[0]["srv"],
        json!([
            {"target": "h1.lab.promshard.test.", "port": 9100, "priority": 0, "weight": 10},
            {"target": "h2.lab.promshard.test.", "port": 9101, "priority": 1, "weight": 10},
        ])
    );
    assert_eq!(v[0]["a"], json!(["127.0.0.12"]));
    assert_eq!(v[0]["aaaa"], json!(["::1"]));
    assert_eq!(
        v[0]["none"],
        json!([]),
        "a name without records has no targets"
    );
    // A server that does not answer is an error within the call's deadline.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sandbox = Sandbox {
        dns_servers: vec![silent.local_addr().unwrap()],
        ..Sandbox::default()
    };
    sandbox.limits.timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let e = targets_of(
        dir.path(),
        &format!("fn targets(ctx) {{ dns_srv(\"{LAB_SRV}\") }}"),
        &sandbox,
    )
    .unwrap_err();
    assert!(e.contains(&format!("dns_srv(\"{LAB_SRV}\")")), "{e}");
    assert!(e.contains(&silent.local_addr().unwrap().to_string()), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs dnsmasq"]
fn dns_sd_configs_and_a_dns_srv_script_give_the_same_files_and_follow_record_changes() {
    let dir = Dir::new();
    let mut dns = Dnsmasq::start(
        dir.path(),
        &lab_records(&[("h1", "127.0.0.11", 9100), ("h2", "127.0.0.12", 9100)]),
    );
    dir.write("scripts/dns.rhai", example("dns_srv.rhai"));
    let nodes = "[\"127.0.0.1:9091\", \"127.0.0.1:9092\"]";
    dir.config(&format!(
        "out_dir: out\ndns: {{servers: [\"{addr}\"]}}\nservices:\n  - name: from_source\n    nodes: {nodes}\n    source:\n      dns_sd_configs: [{{names: [\"{LAB_SRV}\"], refresh_interval: 30s}}]\n      relabel_configs:\n        - {{source_labels: [__meta_dns_srv_record_target], target_label: srv_target}}\n  - name: from_script\n    script: scripts/dns.rhai\n    nodes: {nodes}\n    max_drop_ratio: 1.0\n  - name: a_records\n    nodes: {nodes}\n    source:\n      dns_sd_configs: [{{names: [h1.lab.promshard.test, h2.lab.promshard.test], type: A, port: 9200}}]\n      relabel_configs: [{{regex: '__meta_dns_(.+)', action: labelmap}}]\n",
        addr = dns.addr,
    ));
    let env = [("PROMSHARD_SRV_NAME", LAB_SRV)];
    let once = |dir: &Dir| {
        let out = Command::new(util::BIN)
            .args(["--config", "promshard.yaml", "once", "--force"])
            .current_dir(dir.path())
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let same = |dir: &Dir| {
        let a = all_entries(dir, "from_source");
        assert_eq!(
            a,
            all_entries(dir, "from_script"),
            "same targets and labels"
        );
        let files =
            |s: &str| -> Vec<Vec<u8>> { dir.files(format!("out/{s}")).into_values().collect() };
        assert_eq!(
            files("from_source"),
            files("from_script"),
            "byte-identical files"
        );
        a
    };
    once(&dir);
    let first = same(&dir);
    assert_eq!(
        first.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["h1.lab.promshard.test:9100", "h2.lab.promshard.test:9100"]
    );
    assert_eq!(first[0].1["srv_target"], "h1.lab.promshard.test.");
    let a = all_entries(&dir, "a_records");
    assert_eq!(
        a.iter()
            .map(|(a, l)| (a.as_str(), l["name"].as_str()))
            .collect::<Vec<_>>(),
        [
            ("127.0.0.11:9200", "h1.lab.promshard.test"),
            ("127.0.0.12:9200", "h2.lab.promshard.test")
        ]
    );
    // h2 leaves, h3 comes: the next pass follows DNS.
    dns.set_records(&lab_records(&[
        ("h1", "127.0.0.11", 9100),
        ("h3", "127.0.0.13", 9102),
    ]));
    once(&dir);
    let second = same(&dir);
    assert_eq!(
        second.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["h1.lab.promshard.test:9100", "h3.lab.promshard.test:9102"]
    );
}

// ------------------------------------------------------------------ relabelling against Prometheus

/// The targets both Prometheus and promshard discover through file_sd.
const RELABEL_INPUT: &str = r#"[
  {"targets": ["web-1.example:9100", "web-2.example:9100"],
   "labels": {"env": "Prod", "team": "shop", "__meta_rack": "r1", "dc": "fra1", "copy": "x"}},
  {"targets": ["db-1.example:9104"],
   "labels": {"env": "dev", "team": "data", "__meta_rack": "r2", "dc": "ams1", "copy": "dev"}},
  {"targets": ["10.0.0.7:9100"],
   "labels": {"env": "Prod", "dc": "FRA1", "copy": "Prod"}}
]"#;

/// `(job, relabel_configs)`: every action promshard supports, with the
/// defaults (separator, regex, replacement) and the corner cases.
const RELABEL_CASES: &[(&str, &str)] = &[
    (
        "replace_default",
        "[{source_labels: [env, dc], target_label: where}]",
    ),
    (
        "replace_groups",
        r"[{source_labels: [__address__], regex: '([^:]+):(\d+)', replacement: '${1}', target_label: host}, {source_labels: [env, team], separator: '-', target_label: owner, replacement: 'o-$1'}]",
    ),
    (
        "replace_no_match_and_empty",
        "[{source_labels: [team], regex: 'sh', target_label: env, replacement: gone}, {source_labels: [missing], target_label: team}]",
    ),
    (
        "replace_templated_target",
        "[{source_labels: [env], regex: '(.*)', target_label: 'is_${1}', replacement: 'yes'}]",
    ),
    (
        "replace_address",
        r"[{source_labels: [__address__], regex: '(.+):\d+', replacement: '${1}:9999', target_label: __address__}]",
    ),
    (
        "keep",
        "[{source_labels: [env], regex: Prod, action: keep}]",
    ),
    (
        "keep_anchored",
        "[{source_labels: [team], regex: 'sho', action: keep}]",
    ),
    (
        "drop",
        "[{source_labels: [team], regex: 'sh.*', action: drop}]",
    ),
    ("labelmap", "[{regex: '__meta_(.+)', action: labelmap}]"),
    (
        "labelmap_replacement",
        "[{regex: '(e.*)', replacement: 'x_$1', action: labelmap}]",
    ),
    ("labeldrop", "[{regex: 'team|dc', action: labeldrop}]"),
    ("labelkeep", "[{regex: '__.*|env', action: labelkeep}]"),
    (
        "case",
        "[{source_labels: [env], target_label: env_lc, action: lowercase}, {source_labels: [dc], target_label: dc, action: uppercase}]",
    ),
    (
        "keepequal",
        "[{source_labels: [env], target_label: copy, action: keepequal}]",
    ),
    (
        "dropequal",
        "[{source_labels: [env], target_label: copy, action: dropequal}]",
    ),
    (
        "chain",
        "[{source_labels: [__meta_rack], target_label: rack}, {source_labels: [rack], regex: 'r2', action: drop}, {source_labels: [__meta_filepath], regex: '.*/(.*)', target_label: file}]",
    ),
];

/// Kept targets' labels as they end up scraped (`instance` from the
/// address when unset, no `__` labels, no `job`), and how many were dropped.
type Outcome = (Vec<LabelSet>, usize);

fn ours(dir: &Path, input: &Path, rules: &str) -> Outcome {
    let rules: Value = serde_yaml_ng::from_str(rules).unwrap();
    let block = json!({"file_sd_configs": [{"files": [input]}], "relabel_configs": rules});
    std::fs::write(dir.join("block.json"), block.to_string()).unwrap();
    let groups = targets_of(
        dir,
        "fn targets(ctx) { prometheus_sd(parse_json(read_file(\"block.json\"))) }",
        &Sandbox::default(),
    )
    .unwrap();
    let mut kept: Vec<LabelSet> = groups
        .iter()
        .map(|g| {
            let addr = g["targets"][0].as_str().unwrap().to_string();
            let mut l: LabelSet = serde_json::from_value(g["labels"].clone()).unwrap();
            l.retain(|k, _| !k.starts_with("__"));
            l.entry("instance".into()).or_insert(addr);
            l
        })
        .collect();
    kept.sort();
    let dropped = 4 - kept.len();
    (kept, dropped)
}

/// What the Prometheus of the test computed, once it has discovered every
/// target of every case. Active targets are told apart by `scrapePool`:
/// Prometheus 2.42 shows some active targets' `discoveredLabels` already
/// relabelled (`job` gone), so those cannot be trusted to name the job,
/// and its dropped targets have no pool; a case drops what it did not keep.
fn theirs(prom: &Prom) -> Result<BTreeMap<String, Outcome>, String> {
    let v = prom.api("/api/v1/targets?state=any")?;
    let mut kept: BTreeMap<String, Vec<LabelSet>> = BTreeMap::new();
    let active = v["activeTargets"].as_array().ok_or("no activeTargets")?;
    for t in active {
        let mut l: LabelSet =
            serde_json::from_value(t["labels"].clone()).map_err(|e| e.to_string())?;
        l.remove("job");
        let pool = t["scrapePool"].as_str().unwrap_or_default().to_string();
        kept.entry(pool).or_default().push(l);
    }
    let dropped = v["droppedTargets"]
        .as_array()
        .ok_or("no droppedTargets")?
        .len();
    let all = 4 * RELABEL_CASES.len();
    if active.len() + dropped != all {
        return Err(format!(
            "{} active and {dropped} dropped of {all}: {kept:?}",
            active.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (name, _) in RELABEL_CASES {
        let mut k = kept.remove(*name).unwrap_or_default();
        k.sort();
        let d = 4 - k.len();
        out.insert(name.to_string(), (k, d));
    }
    Ok(out)
}

#[test]
#[ignore = "needs prometheus"]
fn relabelling_gives_what_a_real_prometheus_computes() {
    let dir = Dir::new();
    let input = dir.write("input/targets.json", RELABEL_INPUT);
    let prom = Prom::start_with(dir.path(), |_| {
        let mut y =
            String::from("global: {scrape_interval: 1h, scrape_timeout: 10s}\nscrape_configs:\n");
        for (job, rules) in RELABEL_CASES {
            y.push_str(&format!(
                "  - job_name: {job}\n    file_sd_configs: [{{files: [\"{}\"]}}]\n    relabel_configs: {rules}\n",
                input.display()
            ));
        }
        y
    });
    let theirs = poll(
        "Prometheus to discover every case",
        Duration::from_secs(60),
        || theirs(&prom),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail()));
    let mut wrong = Vec::new();
    for (job, rules) in RELABEL_CASES {
        let ours = ours(dir.path(), &input, rules);
        let expected = theirs.get(*job).cloned().unwrap_or_default();
        if ours != expected {
            wrong.push(format!(
                "{job}: {rules}\n  prometheus: {expected:?}\n  promshard:  {ours:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ------------------------------------------------------------------ TLS

/// A CA, a server certificate for 127.0.0.1 and a client certificate
/// (`util::certs::pki`), under the names a Kubernetes service account
/// uses for its CA: `ca.crt`, `server.crt`/`.key`, `client.crt`/`.key`.
fn make_pki(dir: &Path) {
    util::certs::pki(dir);
    for who in ["ca", "server", "client"] {
        std::fs::copy(
            dir.join(format!("{who}.pem")),
            dir.join(format!("{who}.crt")),
        )
        .expect("copy a certificate");
    }
}

/// `openssl s_server` serving the files below `www` over HTTPS on a free
/// port; with `client_cert`, it requires a client certificate signed by
/// the test CA.
fn tls_server(pki: &Path, www: &Path, client_cert: bool) -> (ChildGuard, u16) {
    let port = free_port();
    let mut cmd = Command::new(openssl());
    cmd.args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(pki.join("server.crt"))
        .arg("-key")
        .arg(pki.join("server.key"));
    if client_cert {
        cmd.arg("-CAfile")
            .arg(pki.join("ca.crt"))
            .args(["-Verify", "1"]);
    }
    let child = cmd
        .current_dir(www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_server");
    let guard = ChildGuard::new("openssl s_server", child);
    poll("s_server to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .unwrap();
    (guard, port)
}

const K8S_NODES: &str = r#"{"kind": "NodeList", "items": [
  {"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "zone": "a"}},
   "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.1.0.1"}],
              "conditions": [{"type": "Ready", "status": "True"}]}},
  {"metadata": {"name": "n2"},
   "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.2"}],
              "conditions": [{"type": "Ready", "status": "False"}]}}
]}"#;

#[test]
#[ignore = "needs openssl"]
fn http_request_checks_the_private_ca_and_presents_a_client_certificate() {
    let dir = Dir::new();
    let pki = dir.join("scripts/pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    dir.write("www/api/v1/nodes", K8S_NODES);
    let (_server, port) = tls_server(&pki, &dir.join("www"), true);
    let url = format!("https://127.0.0.1:{port}/api/v1/nodes");
    let call = |opts: &str| {
        targets_of(
            &dir.join("scripts"),
            &format!("fn targets(ctx) {{ [http_request(#{{ url: \"{url}\", {opts} }})] }}"),
            &Sandbox::default(),
        )
    };
    let ok =
        call(r#"ca_file: "pki/ca.crt", cert_file: "pki/client.crt", key_file: "pki/client.key""#)
            .unwrap();
    assert_eq!(ok[0]["status"], 200, "{ok:?}");
    assert!(ok[0]["body"].as_str().unwrap().contains("NodeList"));
    let e = call(r#"cert_file: "pki/client.crt", key_file: "pki/client.key""#).unwrap_err();
    assert!(
        e.contains(&format!("http_request({url})")),
        "without the CA the server is not trusted: {e}"
    );
    let e = call(r#"ca_file: "pki/ca.crt""#).unwrap_err();
    assert!(
        e.contains("http_request"),
        "without a client certificate the server refuses: {e}"
    );
    let e = call(r#"ca_file: "../../etc/ssl/ca.crt""#).unwrap_err();
    assert!(
        e.contains("ca_file") && e.contains("outside the allowed directories"),
        "{e}"
    );
}

#[test]
#[ignore = "needs openssl"]
fn example_kubernetes_nodes_over_tls_with_the_cluster_ca() {
    let dir = Dir::new();
    let secrets = dir.join("scripts/sa");
    std::fs::create_dir_all(&secrets).unwrap();
    make_pki(&secrets);
    std::fs::write(secrets.join("token"), "sa-token\n").unwrap();
    dir.write("www/api/v1/nodes", K8S_NODES);
    // The example authenticates with the token; s_server cannot check one,
    // so it asks for no client certificate here.
    let (_server, port) = tls_server(&secrets, &dir.join("www"), false);
    dir.write("scripts/k8s.rhai", example("kubernetes_nodes.rhai"));
    dir.config("out_dir: out\nservices:\n  - name: kubelet\n    script: scripts/k8s.rhai\n    nodes: [\"127.0.0.1:9091\"]\n    port: 10250\n");
    let out = Command::new(util::BIN)
        .args(["--config", "promshard.yaml", "once"])
        .current_dir(dir.path())
        .env("PROMSHARD_K8S_API", format!("https://127.0.0.1:{port}"))
        .env("PROMSHARD_K8S_SECRETS", "sa")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = all_entries(&dir, "kubelet");
    assert_eq!(entries.len(), 1, "only the Ready node: {entries:?}");
    assert_eq!(entries[0].0, "10.1.0.1:10250");
    assert_eq!(entries[0].1["node"], "n1");
    assert_eq!(entries[0].1["node_label_kubernetes_io_hostname"], "n1");
}

// ------------------------------------------------------------------ recorded APIs

#[test]
fn example_http_sd_keeps_prod_and_staging_with_a_bearer_token_file() {
    let server = Server::start(|path| match path {
        "/targets" => Reply::ok(
            r#"[{"targets": ["10.3.0.1:9100", "10.3.0.2:9100"], "labels": {"env": "prod"}},
                {"targets": ["10.3.0.3:9100"], "labels": {"env": "dev"}},
                {"targets": ["10.3.0.4:9100"], "labels": {"env": "staging", "__meta_x": "y"}}]"#,
        ),
        _ => Reply::status(404, "no"),
    });
    let dir = Dir::new();
    dir.write("scripts/sd.rhai", example("http_sd.rhai"));
    dir.write("scripts/sd.token", "s3cret\n");
    dir.config("out_dir: out\nservices:\n  - name: web\n    script: scripts/sd.rhai\n    nodes: [\"127.0.0.1:9091\"]\n");
    let url = format!("{}/targets", server.url());
    let out = Command::new(util::BIN)
        .args(["--config", "promshard.yaml", "once"])
        .current_dir(dir.path())
        .env("PROMSHARD_HTTP_SD_URL", &url)
        .env("PROMSHARD_HTTP_SD_TOKEN_FILE", "sd.token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = all_entries(&dir, "web");
    let addrs: Vec<&str> = entries.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(addrs, ["10.3.0.1:9100", "10.3.0.2:9100", "10.3.0.4:9100"]);
    assert_eq!(
        entries[0].1["sd_url"], url,
        "__meta_url as Prometheus sets it"
    );
    assert_eq!(entries[0].1["sd_source"], "http_sd");
    assert!(!entries[2].1.contains_key("__meta_x"));
    let auth = server.requests()[0]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .cloned();
    assert_eq!(auth.map(|(_, v)| v), Some("Bearer s3cret".into()));
}

#[test]
fn example_netbox_follows_pages_with_the_token_header() {
    let base = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let b = base.clone();
    let server = Server::start(move |path| {
        let base = b.lock().unwrap().clone();
        match path {
            "/api/dcim/devices/?status=active&role=switch_exporter&limit=100" => {
                Reply::ok(format!(
                    r#"{{"count": 3, "next": "{base}/api/dcim/devices/?limit=100&offset=100&role=switch_exporter&status=active",
                    "results": [{{"name": "sw1", "primary_ip4": {{"address": "10.4.0.1/24"}}, "site": {{"slug": "fra1"}}, "rack": {{"name": "r1"}}, "tags": [{{"slug": "core"}}, {{"slug": "lab"}}]}},
                                {{"name": "sw2", "primary_ip4": null, "site": {{"slug": "fra1"}}, "rack": null, "tags": []}}]}}"#
                ))
            }
            "/api/dcim/devices/?limit=100&offset=100&role=switch_exporter&status=active" => {
                Reply::ok(
                    r#"{"count": 3, "next": null,
                    "results": [{"name": "sw3", "primary_ip4": {"address": "10.4.0.3/24"}, "site": {"slug": "ams1"}, "rack": null, "tags": []}]}"#,
                )
            }
            _ => Reply::status(404, "not found"),
        }
    });
    *base.lock().unwrap() = server.url();
    let dir = Dir::new();
    dir.write("scripts/netbox.rhai", example("netbox.rhai"));
    dir.write("scripts/netbox.token", "0123abcd\n");
    dir.config("out_dir: out\nservices:\n  - name: switch_exporter\n    script: scripts/netbox.rhai\n    nodes: [\"127.0.0.1:9091\"]\n    port: 9116\n");
    let out = Command::new(util::BIN)
        .args(["--config", "promshard.yaml", "once"])
        .current_dir(dir.path())
        .env("PROMSHARD_NETBOX_URL", server.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = all_entries(&dir, "switch_exporter");
    let addrs: Vec<&str> = entries.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        addrs,
        ["10.4.0.1:9116", "10.4.0.3:9116"],
        "both pages, sw2 has no address"
    );
    assert_eq!(entries[0].1["netbox_tags"], ",core,lab,");
    assert_eq!(entries[0].1["rack"], "r1");
    assert_eq!(entries[1].1["site"], "ams1");
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| {
        s.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Token 0123abcd")
    }));
}

#[test]
fn http_request_posts_a_body_and_returns_any_status() {
    let server = Server::start(|path| match path {
        "/graphql/" => Reply::status(418, r#"{"data": null}"#),
        _ => Reply::status(404, ""),
    });
    let dir = Dir::new();
    let v = targets_of(
        dir.path(),
        &format!(
            "fn targets(ctx) {{ [http_request(#{{ method: \"post\", url: \"{}/graphql/\", body: to_json(#{{query: \"{{ devices {{ name }} }}\"}}), headers: #{{ \"Content-Type\": \"application/json\" }} }})] }}",
            server.url()
        ),
        &Sandbox::default(),
    )
    .unwrap();
    assert_eq!(v[0]["status"], 418, "a non-2xx answer is an answer: {v:?}");
    assert_eq!(v[0]["body"], r#"{"data": null}"#);
    assert!(v[0]["headers"].is_object());
    let e = targets_of(
        dir.path(),
        "fn targets(ctx) { [http_request(#{ url: \"http://127.0.0.1:1/\", retries: 3 })] }",
        &Sandbox::default(),
    )
    .unwrap_err();
    assert!(e.contains("unknown option \"retries\""), "{e}");
    assert!(e.contains("t.rhai"), "errors name the script: {e}");
}
