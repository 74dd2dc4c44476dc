//! Real etcd members for the `ha:` tests: a cluster of one or three on free
//! loopback ports (client and peer), each with its data in the test's
//! directory, killed and reaped by a guard when the test ends. A member can
//! serve its client URL over TLS with certificates made by [`Certs`].

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::{ChildGuard, free_port, poll};
use super::http::{get, http_get};
use super::tools::etcd;

/// One member.
pub struct Member {
    pub name: String,
    /// `127.0.0.1:port` of its client URL.
    pub client: String,
    pub proc: ChildGuard,
}

/// A cluster of members started together.
pub struct Etcd {
    pub members: Vec<Member>,
    /// `https` when the members were started with [`Certs`], else `http`.
    pub scheme: &'static str,
}

impl Etcd {
    /// Start `n` members under `root/etcd-<i>` and wait until the cluster
    /// answers its health check.
    pub fn start(root: &Path, n: usize) -> Etcd {
        Etcd::start_with(root, n, None)
    }

    /// Start `n` members; with `tls`, their client URLs are https with the
    /// server certificate of `tls`, and a client must present a
    /// certificate signed by its CA.
    pub fn start_with(root: &Path, n: usize, tls: Option<&Certs>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tls_args: Vec<String> = tls.map_or_else(Vec::new, |c| {
            vec![
                format!("--cert-file={}", c.dir.join("server.pem").display()),
                format!("--key-file={}", c.dir.join("server.key").display()),
                format!("--trusted-ca-file={}", c.dir.join("ca.pem").display()),
                "--client-cert-auth".into(),
            ]
        });
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("promshard-test-{}", std::process::id());
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let dir = root.join(format!("etcd-{i}"));
                fs::create_dir_all(&dir).expect("etcd dir");
                let log = fs::File::create(dir.join("etcd.log")).expect("etcd.log");
                let client_url = format!("{scheme}://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let child = Command::new(etcd())
                    .args(["--name", &format!("m{i}")])
                    .arg(format!("--data-dir={}", dir.join("data").display()))
                    .arg(format!("--listen-client-urls={client_url}"))
                    .arg(format!("--advertise-client-urls={client_url}"))
                    .arg(format!("--listen-peer-urls={peer_url}"))
                    .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                    .arg(format!("--initial-cluster={}", initial.join(",")))
                    .arg(format!("--initial-cluster-token={token}"))
                    .args([
                        "--initial-cluster-state=new",
                        "--logger=zap",
                        "--log-level=warn",
                    ])
                    .args(&tls_args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting etcd");
                Member {
                    name: format!("m{i}"),
                    client: format!("127.0.0.1:{client}"),
                    proc: ChildGuard::new(format!("etcd m{i}"), child),
                }
            })
            .collect();
        let e = Etcd { members, scheme };
        let agent = tls.map(Certs::agent);
        for m in &e.members {
            let url = format!("{scheme}://{}/health", m.client);
            poll(
                &format!("etcd {} healthy", m.name),
                Duration::from_secs(30),
                || {
                    let body = match &agent {
                        Some(a) => http_get(a, &url)?.body,
                        None => get(&url)?,
                    };
                    if body.contains("\"health\":\"true\"") {
                        Ok(())
                    } else {
                        Err(body)
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        e
    }

    /// The `endpoints:` list of an `ha:` block, as YAML.
    pub fn endpoints_yaml(&self) -> String {
        let quoted: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"{}\"", m.client))
            .collect();
        format!("[{}]", quoted.join(", "))
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with `openssl` in `dir` (`ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`).
pub struct Certs {
    pub dir: std::path::PathBuf,
}

impl Certs {
    /// Make the CA and both certificates ([`super::certs::pki`]).
    pub fn make(dir: &Path) -> Certs {
        super::certs::pki(dir);
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    /// The contents of `file` in the directory.
    pub fn pem(&self, file: &str) -> Vec<u8> {
        fs::read(self.dir.join(file)).expect("reading a PEM file")
    }

    /// An HTTP client that trusts the CA and presents the client certificate.
    pub fn agent(&self) -> ureq::Agent {
        let (cert, key) = (self.pem("client.pem"), self.pem("client.key"));
        let tls = promshard::http_client::tls(Some(&self.pem("ca.pem")), Some((&cert, &key)))
            .expect("test certificates");
        promshard::http_client::config(Duration::from_secs(3))
            .tls_config(tls)
            .build()
            .into()
    }
}
