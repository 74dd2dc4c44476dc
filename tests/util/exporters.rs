//! Real exporters on loopback: each an HTTP server on its own 127.0.x.y
//! address answering `GET /metrics` with a fixed number of series, so that
//! real Prometheus servers scrape real targets. [`Exporter::stop`] closes
//! its socket: the next scrape fails and the target is `down`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// One exporter: its address and the thread serving it.
pub struct Exporter {
    pub addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Serve `series` series on `ip` (a loopback address) and a free port.
    pub fn start(ip: &str, series: usize) -> Exporter {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let body: String = (0..series)
            .map(|i| format!("fixture_series{{i=\"{i}\"}} {i}\n"))
            .collect();
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopped);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    answer(s, &body);
                }
            }
        });
        Exporter {
            addr,
            stopped,
            thread: Some(thread),
        }
    }

    /// Close the socket: scrapes fail from now on.
    pub fn stop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut s: TcpStream, body: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
}

/// `n` exporters on 127.0.`net`.1, 127.0.`net`.2, … with `series(i)` series.
pub fn fleet(net: u8, n: usize, series: impl Fn(usize) -> usize) -> Vec<Exporter> {
    (0..n)
        .map(|i| {
            let ip = format!("127.0.{net}.{}", i + 1);
            Exporter::start(&ip, series(i))
        })
        .collect()
}

/// Write `<dir>/<name>.rhai`: a target script returning the exporters'
/// addresses.
pub fn write_script(dir: &std::path::Path, name: &str, exporters: &[Exporter]) {
    let addrs: Vec<String> = exporters
        .iter()
        .map(|e| format!("\"{}\"", e.addr))
        .collect();
    std::fs::write(
        dir.join(format!("{name}.rhai")),
        format!("fn targets(ctx) {{ [{}] }}", addrs.join(", ")),
    )
    .expect("script");
}
