//! End to end: the API over TLS with client certificates and basic auth,
//! from a Prometheus-format `web_config_file`.
//!
//! Two CAs made with `openssl`: the daemon's certificate and the good
//! client certificate come from the first, a rogue client certificate from
//! the second. A real Prometheus pulls `/sd` with `http_sd_configs`,
//! `tls_config` and `basic_auth` and shows the targets; its job with the
//! rogue certificate gets nothing (its discovery logs the failure, ours the
//! handshake). Direct clients: wrong password 401, rogue or no client
//! certificate refused, POST needs the bearer token. The CLI's `where` and
//! `drain` reach the daemon with the environment's CA, certificate and
//! password. Reload: a replaced password, a replaced server certificate
//! (from the other CA) and a broken file, each seen by the next request.
//!
//! Needs prometheus and openssl: `#[ignore]`d; `bash .ci/test` runs it.

mod util;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use util::Dir;
use util::certs::{Ca, Issued, Usage};
use util::child::{free_port, poll};
use util::daemon::Promshard;
use util::http::{Reply, read_reply};
use util::prom::Prom;

const NODE: &str = "127.0.0.1:9";
const TOKEN: &str = "admin-token";
const TARGETS: [&str; 2] = ["127.0.0.1:1001", "127.0.0.1:1002"];

/// The web config: TLS with verified client certificates, one user.
fn web_yml(password_hash: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\n  \
         min_version: TLS12\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  prom: '{password_hash}'\n"
    )
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// A rustls client (through promshard's own agent) trusting `ca`,
/// presenting `client` if given.
fn client(ca: &Path, client: Option<&Issued>) -> ureq::Agent {
    let pem = fs::read(ca).expect("ca");
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let mut tls =
        ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)));
    if let Some(c) = client {
        let chain = ureq::tls::Certificate::from_pem(&fs::read(&c.cert).unwrap()).unwrap();
        let key = ureq::tls::PrivateKey::from_pem(&fs::read(&c.key).unwrap()).unwrap();
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[chain], key)));
    }
    promshard::http_client::agent_with_tls(Duration::from_secs(5), tls.build())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn get(agent: &ureq::Agent, url: &str, authorization: Option<&str>) -> Result<Reply, String> {
    let mut request = agent.get(url);
    if let Some(a) = authorization {
        request = request.header("Authorization", a);
    }
    read_reply(request.call())
}

struct Lab {
    dir: Dir,
    ca: Ca,
    good: Issued,
    rogue: Issued,
    other_ca: Ca,
    port: u16,
}

impl Lab {
    fn new() -> Lab {
        let dir = Dir::new();
        let web = dir.join("web");
        let ca = Ca::new(&web, "ca");
        let server = ca.issue("server", Usage::Server);
        assert!(server.cert.ends_with("web/server.pem"));
        let good = ca.issue("prometheus", Usage::Client);
        let other_ca = Ca::new(&dir.join("rogue"), "other-ca");
        let rogue = other_ca.issue("rogue", Usage::Client);
        dir.write("web/web.yml", web_yml(&hash("secret")));
        dir.write(
            "web.rhai",
            format!(
                "fn targets(ctx) {{ [\"{}\", \"{}\"] }}\n",
                TARGETS[0], TARGETS[1]
            ),
        );
        let port = free_port();
        dir.config(&format!(
            "out_dir: out\nlisten: 127.0.0.1:{port}\napi_token: {TOKEN}\n\
             web_config_file: web/web.yml\nservices:\n  - name: web\n    script: web.rhai\n    \
             schedule: \"0 0 0 1 1 *\"\n    nodes: [\"{NODE}\"]\n    push: {{kind: none}}\n"
        ));
        Lab {
            dir,
            ca,
            good,
            rogue,
            other_ca,
            port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn start(&self) -> Promshard {
        let d = Promshard::spawn(self.dir.path(), Path::new("promshard.yaml"), self.port)
            .asked_with(
                self.url(""),
                client(&self.ca.cert, Some(&self.good)),
                Some(basic("prom", "secret")),
            );
        d.wait_up();
        d.wait_passes("web", 1, Duration::from_secs(20));
        d
    }

    /// A Prometheus with one http_sd job per client certificate.
    fn prometheus(&self) -> Prom {
        let sd = |job: &str, cert: &Issued| {
            format!(
                "  - job_name: {job}\n    http_sd_configs:\n      - url: {url}\n        \
                 refresh_interval: 1s\n        tls_config: {{ca_file: {ca}, cert_file: {cert}, key_file: {key}}}\n        \
                 basic_auth: {{username: prom, password: secret}}\n",
                url = self.url(&format!("/sd/web/{NODE}")),
                ca = self.ca.cert.display(),
                cert = cert.cert.display(),
                key = cert.key.display(),
            )
        };
        let jobs = format!(
            "{}{}",
            sd("sd_tls", &self.good),
            sd("sd_rogue", &self.rogue)
        );
        Prom::start_with(&self.dir.join("prom"), |_| {
            format!("global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n{jobs}")
        })
    }
}

/// `__address__` of the active targets of `job`.
fn active(prom: &Prom, job: &str) -> Result<Vec<String>, String> {
    let v = prom.api("/api/v1/targets?state=active")?;
    let mut found: Vec<String> = v["activeTargets"]
        .as_array()
        .ok_or_else(|| format!("no activeTargets: {v}"))?
        .iter()
        .filter(|t| t["scrapePool"] == job)
        .map(|t| {
            t["discoveredLabels"]["__address__"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    found.sort();
    Ok(found)
}

#[test]
#[ignore = "needs prometheus and openssl"]
fn prometheus_pulls_http_sd_over_tls_with_a_client_certificate_and_basic_auth() {
    let lab = Lab::new();
    let d = lab.start();
    let prom = lab.prometheus();
    let want: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    d.wait(
        "Prometheus to discover the targets over https",
        Duration::from_secs(30),
        || {
            let seen = active(&prom, "sd_tls")?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("sd_tls: {seen:?}; {}", prom.log_tail()))
            }
        },
    );
    // The rogue certificate's job gets nothing, and both sides say why.
    d.wait(
        "the rogue job's refresh to fail",
        Duration::from_secs(30),
        || {
            let log = fs::read_to_string(prom.dir.join("prometheus.log")).unwrap_or_default();
            let failed = log
                .lines()
                .any(|l| l.contains("sd_rogue") && l.contains("Unable to refresh target groups"));
            if failed && !d.logged("TLS handshake failed").is_empty() {
                Ok(())
            } else {
                Err(format!("prometheus log: {}", prom.log_tail()))
            }
        },
    );
    assert_eq!(active(&prom, "sd_rogue").unwrap(), Vec::<String>::new());
    let handshake = &d.logged("TLS handshake failed")[0];
    assert!(
        handshake["fields"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{handshake}"
    );
}

#[test]
#[ignore = "needs openssl"]
fn wrong_passwords_and_certificates_are_refused_and_post_needs_the_token() {
    let lab = Lab::new();
    let d = lab.start();
    let sd = lab.url(&format!("/sd/web/{NODE}"));
    let good = client(&lab.ca.cert, Some(&lab.good));
    let ok = get(&good, &sd, Some(&basic("prom", "secret"))).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let groups: Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(groups[0]["targets"], serde_json::json!(TARGETS), "{groups}");
    let wrong = get(&good, &sd, Some(&basic("prom", "guess"))).unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(
        get(&good, &sd, Some(&basic("nobody", "secret")))
            .unwrap()
            .status,
        401
    );
    assert_eq!(get(&good, &sd, None).unwrap().status, 401);
    let refused = d.logged("basic auth refused");
    assert!(
        refused
            .iter()
            .any(|l| l["fields"]["user"] == "Some(\"prom\")"),
        "{refused:?}"
    );

    // Certificates: one from the other CA, and none at all.
    let rogue = get(
        &client(&lab.ca.cert, Some(&lab.rogue)),
        &sd,
        Some(&basic("prom", "secret")),
    );
    assert!(
        rogue.is_err(),
        "rogue certificate let in: {:?}",
        rogue.map(|r| r.status)
    );
    let none = get(
        &client(&lab.ca.cert, None),
        &sd,
        Some(&basic("prom", "secret")),
    );
    assert!(
        none.is_err(),
        "no certificate let in: {:?}",
        none.map(|r| r.status)
    );
    let plain = get(
        &good,
        &format!("http://127.0.0.1:{}/healthz", lab.port),
        None,
    );
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status)
    );
    d.wait("handshake failures logged", Duration::from_secs(5), || {
        let n = d.logged("TLS handshake failed").len();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} logged"))
        }
    });

    // The headers of the web config are on every answer.
    let r = good
        .get(&sd)
        .header("Authorization", &basic("prom", "secret"))
        .call()
        .unwrap();
    assert_eq!(
        r.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );

    // POST: basic auth alone is not enough, the bearer token is.
    let dispatch = lab.url("/api/v1/services/web/dispatch");
    let with_basic = good
        .post(&dispatch)
        .header("Authorization", &basic("prom", "secret"));
    let r = read_reply(with_basic.send_empty()).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("bearer token"), "{}", r.body);
    let with_token = good
        .post(&dispatch)
        .header("Authorization", &format!("Bearer {TOKEN}"));
    assert_eq!(read_reply(with_token.send_empty()).unwrap().status, 202);
}

#[test]
#[ignore = "needs openssl"]
fn the_cli_reaches_a_tls_daemon_with_the_environments_certificate_and_password() {
    let lab = Lab::new();
    let _d = lab.start();
    let cli = |args: &[&str], env: bool| {
        let mut c = std::process::Command::new(util::BIN);
        c.args(["-c", "promshard.yaml"])
            .args(args)
            .current_dir(lab.dir.path());
        if env {
            c.env("PROMSHARD_API_CA_FILE", &lab.ca.cert)
                .env("PROMSHARD_API_CERT_FILE", &lab.good.cert)
                .env("PROMSHARD_API_KEY_FILE", &lab.good.key)
                .env("PROMSHARD_API_USER", "prom")
                .env("PROMSHARD_API_PASSWORD", "secret");
        }
        let out = c.output().expect("running promshard");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, stdout, stderr) = cli(&["where", "--json", TARGETS[0]], true);
    assert!(
        ok && !stderr.contains("no daemon answered"),
        "{stdout}\n{stderr}"
    );
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["services"][0]["assigned"][0], NODE, "{answer}");
    // Without the environment, the daemon's certificate is checked against
    // its cert_file alone, which does not carry the CA: `where` says so
    // and computes the assignment itself.
    let (_, _, stderr) = cli(&["where", TARGETS[0]], false);
    assert!(
        stderr.contains("no daemon answered at https://127.0.0.1:")
            && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // drain goes with the token from the config.
    let (ok, stdout, stderr) = cli(&["drain", NODE], true);
    assert!(ok && stdout.contains("drain: "), "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = cli(&["undrain", NODE], true);
    assert!(ok && stdout.contains("undrain: "), "{stdout}\n{stderr}");
}

#[test]
#[ignore = "needs openssl"]
fn a_replaced_password_or_certificate_is_seen_by_the_next_request_and_a_bad_file_keeps_the_last_good_one()
 {
    let lab = Lab::new();
    let d = lab.start();
    let sd = lab.url(&format!("/sd/web/{NODE}"));
    let good = client(&lab.ca.cert, Some(&lab.good));
    let status = |agent: &ureq::Agent, password: &str| {
        get(agent, &sd, Some(&basic("prom", password))).map(|r| r.status)
    };
    assert_eq!(status(&good, "secret"), Ok(200));

    lab.dir.write("web/web.yml", web_yml(&hash("rotated")));
    assert_eq!(status(&good, "rotated"), Ok(200), "new password refused");
    assert_eq!(
        status(&good, "secret"),
        Ok(401),
        "old password still accepted"
    );
    assert_eq!(d.logged("web config reloaded").len(), 1);

    // A broken file: served as before, the reason logged once.
    lab.dir.write(
        "web/web.yml",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
    );
    for _ in 0..3 {
        assert_eq!(status(&good, "rotated"), Ok(200), "last good config lost");
    }
    let kept = d.logged("web config not reloaded; keeping the last good one");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let why = kept[0]["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("web.yml: tls_server_config.cert_file: cannot read")
            && why.contains("missing.pem"),
        "{why}"
    );
    lab.dir.write("web/web.yml", web_yml(&hash("rotated")));

    // A server certificate from the other CA, written over the files: the
    // next connection serves it.
    let replaced = lab.other_ca.issue("server2", Usage::Server);
    fs::copy(&replaced.key, lab.dir.join("web/server.key")).unwrap();
    fs::copy(&replaced.cert, lab.dir.join("web/server.pem")).unwrap();
    let trusting_other = client(&lab.other_ca.cert, Some(&lab.good));
    let seen = poll("the new certificate served", Duration::from_secs(5), || {
        status(&trusting_other, "rotated").map_err(|e| e.to_string())
    });
    assert_eq!(seen, Ok(200));
    let old_trust = client(&lab.ca.cert, Some(&lab.good));
    assert!(
        status(&old_trust, "rotated").is_err(),
        "old certificate still served"
    );
}

#[test]
#[ignore = "needs openssl"]
fn check_names_the_web_config_file_and_the_key_of_every_problem() {
    let lab = Lab::new();
    let check = |web: &str| {
        lab.dir.write("web/web.yml", web);
        lab.dir.run(&["check"]).failure().stderr
    };
    let stderr = check(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         client_auth_type: Sometimes\n  min_version: TLS9\n  cipher_suites: [TLS_NOPE]\n  \
         client_allowed_sans: [a.example]\n\
         http_server_config:\n  headers:\n    X-Powered-By: me\n    X-Frame-Options: allow\n\
         basic_auth_users:\n  prom: plaintext\n",
    );
    let file = lab.dir.join("web/web.yml").display().to_string();
    for (key, says) in [
        (
            "tls_server_config.client_auth_type",
            "\"Sometimes\" is not one of NoClientCert",
        ),
        (
            "tls_server_config.min_version",
            "\"TLS9\" is not one of TLS10",
        ),
        (
            "tls_server_config.cipher_suites",
            "unknown cipher suite \"TLS_NOPE\"",
        ),
        (
            "tls_server_config.client_allowed_sans",
            "not supported by promshard",
        ),
        (
            "http_server_config.headers.X-Powered-By",
            "cannot be configured",
        ),
        (
            "http_server_config.headers.X-Frame-Options",
            "\"allow\" is not one of",
        ),
        ("basic_auth_users.prom", "not a bcrypt hash"),
    ] {
        let line = format!("web_config_file: {file}: {key}: {says}");
        assert!(stderr.contains(&line), "no {line:?} in:\n{stderr}");
    }
    // A key of another certificate, a CA file that is no certificate, a
    // misspelt key.
    let other = lab.other_ca.issue("stray", Usage::Server);
    let stray_key = other.key.display().to_string();
    let stderr = check(&format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: {stray_key}\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.key\n"
    ));
    assert!(
        stderr.contains(&format!("{file}: tls_server_config.client_ca_file: ")),
        "{stderr}"
    );
    let stderr = check(&format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: {stray_key}\n"
    ));
    assert!(
        stderr.contains(&format!(
            "{file}: tls_server_config.key_file: does not go with cert_file"
        )),
        "{stderr}"
    );
    let stderr = check("tls_server_config:\n  cert_fil: server.pem\n");
    assert!(
        stderr.contains(&format!(
            "{file}: file: tls_server_config: unknown field `cert_fil`"
        )),
        "{stderr}"
    );
    // And a good one passes.
    lab.dir.write("web/web.yml", web_yml(&hash("secret")));
    lab.dir.run(&["check"]).success();
}
