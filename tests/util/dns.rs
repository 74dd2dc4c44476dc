//! A real DNS server for tests: dnsmasq on a free loopback port, serving
//! only the records a test gives it (no upstream, no /etc/hosts), restarted
//! on the same port when the records change. It is authoritative for
//! `promshard.test`: other names there are NXDOMAIN.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::child::{ChildGuard, free_port, poll};
use super::tools::dnsmasq;

/// A running dnsmasq.
pub struct Dnsmasq {
    /// `127.0.0.1:port`, for `dns: {servers: [...]}`.
    pub addr: SocketAddr,
    conf: PathBuf,
    proc: Option<ChildGuard>,
}

impl Dnsmasq {
    /// Start dnsmasq in `dir` serving `records` (dnsmasq config lines such
    /// as `srv-host=…` and `host-record=…`); returns once it answers.
    pub fn start(dir: &Path, records: &str) -> Dnsmasq {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut d = Dnsmasq {
            addr,
            conf: dir.join("dnsmasq.conf"),
            proc: None,
        };
        d.set_records(records);
        d
    }

    /// Serve `records` from now on (dnsmasq reads `srv-host` only at start,
    /// so this restarts it on the same port).
    pub fn set_records(&mut self, records: &str) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        std::fs::write(
            &self.conf,
            format!(
                "local=/promshard.test/\nhost-record=ready.promshard.test,127.0.0.1\n{records}\n"
            ),
        )
        .expect("write dnsmasq.conf");
        let child = Command::new(dnsmasq())
            .arg("--no-daemon")
            .arg(format!("--conf-file={}", self.conf.display()))
            .arg(format!("--port={}", self.addr.port()))
            .arg("--listen-address=127.0.0.1")
            .args([
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dnsmasq");
        self.proc = Some(ChildGuard::new("dnsmasq", child));
        let addr = self.addr;
        poll("dnsmasq to answer", Duration::from_secs(10), || {
            answers(addr).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Whether `addr` answers an A query for the readiness name.
fn answers(addr: SocketAddr) -> std::io::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    // Header: id, flags (recursion desired), one question.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for part in "ready.promshard.test".split('.') {
        q.push(part.len() as u8);
        q.extend_from_slice(part.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&q, addr)?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf)?;
    if n >= 12 && buf[0..2] == [0x12, 0x34] {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("odd answer of {n} bytes")))
    }
}
