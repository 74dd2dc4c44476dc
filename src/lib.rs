//! promshard: shard Prometheus scrape targets over a pool of Prometheus
//! servers with a consistent hash ring.
//!
//! The flow of one pass of one service is one-way:
//! `script` (targets) → `target` (validate, normalize) → `plan` (ring
//! assignment, file names; pure) → `output` (render, atomic write, cleanup)
//! → `push` (deliver changed files) → `state` (remember what was done).
//! `pass` drives that flow; `cli` wires it to commands.

pub mod affinity;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod observe;
pub mod output;
pub mod pass;
pub mod plan;
pub mod push;
pub mod ring;
pub mod rules;
pub mod script;
pub mod sim;
pub mod state;
pub mod status_page;
pub mod target;
pub mod template;
