//! promshard: shard Prometheus scrape targets over a pool of Prometheus
//! servers with weighted rendezvous hashing.
//!
//! The flow of one pass of one service is one-way: the daemon resolves the
//! live nodes (`membership`); `script` yields targets; the pure core
//! (`shard`: validate, place, plan, render) decides who scrapes what;
//! `pass` runs compute → guard → write (`store`) → deliver (`push`) →
//! record (`store::state`); `rules` checks rule files and delivers them to
//! every node. `observe` reads back what each server scrapes.
//! `daemon` runs passes on schedules and triggers; `cli` wires commands.
//!
//! Modules, lowest layer first (each uses only those before it):

// What this binary is (version, commit).
pub mod build;

// Pure core.
pub mod shard;

// Plumbing shared by the layers above.
pub mod shutdown;

pub mod logging;

pub mod http_client;

pub mod store;

pub mod config;

pub mod script;

pub mod push;

pub mod rules;

pub mod membership;

pub mod observe;

pub mod pass;

pub mod ha;

pub mod metrics;

pub mod daemon;

// Entry points.
pub mod sim;

pub mod cli;
