//! Real etcd members for the `ha:` tests: a cluster of one or three on free
//! loopback ports (client and peer), each with its data in the test's
//! directory, killed and reaped by a guard when the test ends.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::{ChildGuard, free_port, poll};
use super::http::get;
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
}

impl Etcd {
    /// Start `n` members under `root/etcd-<i>` and wait until the cluster
    /// answers its health check.
    pub fn start(root: &Path, n: usize) -> Etcd {
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
                let client_url = format!("http://127.0.0.1:{client}");
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
        let e = Etcd { members };
        for m in &e.members {
            let url = format!("http://{}/health", m.client);
            poll(
                &format!("etcd {} healthy", m.name),
                Duration::from_secs(30),
                || {
                    let body = get(&url)?;
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
