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
    let roles = ["web", "api", "db", "cache", "queue", "batch"];
    let dcs = ["fra1", "ams1", "lon1", "par1"];
    let out = std::io::stdout();
    let mut w = BufWriter::new(out.lock());
    // A fixed LCG so the fleet looks irregular but is reproducible.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    writeln!(w, "[")?;
    for i in 0..count {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let role = roles[(state >> 33) as usize % roles.len()];
        let dc = dcs[(state >> 41) as usize % dcs.len()];
        let env = if (state >> 50).is_multiple_of(5) {
            "staging"
        } else {
            "prod"
        };
        let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let sep = if i + 1 < count { "," } else { "" };
        writeln!(
            w,
            r#" {{"hostname":"{role}-{dc}-{i:07}","ip":"{ip}","env":"{env}","dc":"{dc}","role":"{role}"}}{sep}"#
        )?;
    }
    writeln!(w, "]")?;
    w.flush()
}
