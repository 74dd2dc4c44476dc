//! promshard: shard Prometheus scrape targets over a pool of Prometheus
//! servers with a consistent hash ring.
//!
//! The flow of one pass of one service is one-way:
//! `script` (targets) → `target` (validate, normalize) → `plan` (ring
//! assignment, file names; pure) → `output` (render, atomic write, cleanup)
//! → `push` (deliver changed files) → `state` (remember what was done).
//! `pass` drives that flow; `cli` wires it to commands.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod membership;
pub mod metrics;
pub mod observe;
pub mod pass;
pub mod push;
pub mod script;
pub mod shard;
pub mod shutdown;
pub mod sim;
pub mod store;
