//! DNS lookups for scripts (`dns_srv`, `dns_a`, `dns_aaaa`) and for
//! `dns_sd_configs`.
//!
//! hickory-resolver does the asking: a maintained, pure-Rust stub resolver
//! that takes its servers from `/etc/resolv.conf` or from a list (the
//! config's `dns: {servers}`, which is also how the tests point it at a DNS
//! server on loopback), speaks UDP with TCP fallback, and returns the SRV
//! fields that the C library's `getaddrinfo` cannot give. A lookup is a
//! native call that `on_progress` cannot interrupt, so it runs on a small
//! runtime of its own under the time left of the script call's deadline.
//! A name with no records (NXDOMAIN included) gives an empty list, as a
//! service with no instances does in Prometheus; a server that does not
//! answer is an error.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use super::host::HostContext;

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    /// The target host as the record has it (rooted, with its final dot).
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// Longest a single lookup waits, whatever the call has left.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

fn resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        Resolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    // Every pass asks afresh: a record changed in DNS shows in the next pass.
    opts.cache_size = 0;
    builder.build().map_err(|e| e.to_string())
}

/// The records of type `rtype` for `name`; `what` prefixes errors
/// (`dns_srv("_x._tcp.example.")`).
fn lookup(
    ctx: &HostContext,
    what: &str,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<RData>, String> {
    let remaining = ctx.remaining();
    if remaining.is_zero() {
        return Err(format!("{what}: the script's deadline has passed"));
    }
    let timeout = remaining.min(LOOKUP_TIMEOUT);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("{what}: {e}"))?;
    let servers = &ctx.dns_servers;
    let answer = runtime.block_on(async {
        let resolver = resolver(servers, timeout)?;
        match tokio::time::timeout(timeout, resolver.lookup(name, rtype)).await {
            Err(_) => Err(format!("timed out after {timeout:?}")),
            Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(found)) => Ok(found.answers().iter().map(|r| r.data.clone()).collect()),
        }
    });
    let servers = if servers.is_empty() {
        "the system's servers".to_string()
    } else {
        servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    answer.map_err(|e| format!("{what}: asking {servers}: {e}"))
}

/// SRV records of `name`, sorted.
pub fn srv(ctx: &HostContext, name: &str) -> Result<Vec<Srv>, String> {
    let what = format!("dns_srv({name:?})");
    let mut out: Vec<Srv> = lookup(ctx, &what, name, RecordType::SRV)?
        .into_iter()
        .filter_map(|d| match d {
            RData::SRV(s) => Some(Srv {
                target: s.target.to_string(),
                port: s.port,
                priority: s.priority,
                weight: s.weight,
            }),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A (`v6 = false`) or AAAA records of `name`, sorted.
pub fn addresses(ctx: &HostContext, name: &str, v6: bool) -> Result<Vec<IpAddr>, String> {
    let (function, rtype) = if v6 {
        ("dns_aaaa", RecordType::AAAA)
    } else {
        ("dns_a", RecordType::A)
    };
    let what = format!("{function}({name:?})");
    let mut out: Vec<IpAddr> = lookup(ctx, &what, name, rtype)?
        .into_iter()
        .filter_map(|d| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}
