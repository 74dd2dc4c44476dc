//! Generate a synthetic CMDB export like `examples/targets.json`, for
//! benchmarks at scale:
//!
//! ```sh
//! cargo run --release --example gen_targets -- 100000 > /tmp/targets-100k.json
//! ```
//!
//! Deterministic: the same count always gives the same file.

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let out = std::io::stdout();
    let mut w = BufWriter::new(out.lock());
    writeln!(w, "[")?;
    for (i, h) in promshard::sim::synthetic_inventory(count).enumerate() {
        let sep = if i + 1 < count { "," } else { "" };
        writeln!(
            w,
            r#" {{"hostname":"{}","ip":"{}","env":"{}","dc":"{}","role":"{}"}}{sep}"#,
            h.hostname, h.ip, h.env, h.dc, h.role
        )?;
    }
    writeln!(w, "]")?;
    w.flush()
}
