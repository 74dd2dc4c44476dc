//! `prometheus_sd(#{…})` and `source:`: targets from a block in
//! Prometheus's service discovery syntax (see `config::source`).
//!
//! Each kind yields label sets the way Prometheus's discovery does —
//! `__address__` plus the kind's `__meta_*` labels (`__meta_filepath`,
//! `__meta_url`, `__meta_dns_name`, `__meta_dns_srv_record_target`,
//! `__meta_dns_srv_record_port`) and the group's labels —, then
//! `relabel_configs` run on each (`shard::relabel`) and what survives
//! becomes a target. Files, URLs and names are read with the same host
//! functions and limits as a script's own calls, under its deadline.

use std::path::Path;

use rhai::{Array, Dynamic, Map};

use super::dns;
use super::host::{HostContext, read_text, resolve_readable};
use super::http::{self, Request};
use crate::config::source::{DnsSd, DnsType, FileSd, HttpSd};
use crate::config::{SdBlock, parse_sd_block};
use crate::shard::names::glob_match;
use crate::shard::relabel::{self, LabelMap};

/// One file_sd / http_sd group as Prometheus reads it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    targets: Vec<String>,
    #[serde(default)]
    labels: LabelMap,
}

/// Discover, relabel and finish: `(address, labels)` of every target kept.
pub fn discover(
    ctx: &HostContext,
    block: serde_json::Value,
) -> Result<Vec<(String, LabelMap)>, String> {
    let (block, rules) = parse_sd_block(block)?;
    let found = discovered(ctx, &block)?;
    Ok(found
        .into_iter()
        .filter_map(|mut labels| {
            relabel::apply(&rules, &mut labels)
                .then(|| relabel::finish(labels))
                .flatten()
        })
        .collect())
}

/// The label sets of every kind in `block`, before relabelling.
fn discovered(ctx: &HostContext, block: &SdBlock) -> Result<Vec<LabelMap>, String> {
    let mut out = Vec::new();
    for s in &block.static_configs {
        out.extend(expand(&s.targets, &s.labels, &[]));
    }
    for (i, f) in block.file_sd_configs.iter().enumerate() {
        file_sd(ctx, f, &mut out).map_err(|e| format!("file_sd_configs[{i}]: {e}"))?;
    }
    for (i, h) in block.http_sd_configs.iter().enumerate() {
        http_sd(ctx, h, &mut out).map_err(|e| format!("http_sd_configs[{i}]: {e}"))?;
    }
    for (i, d) in block.dns_sd_configs.iter().enumerate() {
        dns_sd(ctx, d, &mut out).map_err(|e| format!("dns_sd_configs[{i}]: {e}"))?;
    }
    Ok(out)
}

/// One label set per target: the group's labels, the `meta` ones and
/// `__address__`.
fn expand(targets: &[String], labels: &LabelMap, meta: &[(&str, &str)]) -> Vec<LabelMap> {
    targets
        .iter()
        .map(|t| {
            let mut l = labels.clone();
            for (k, v) in meta {
                l.insert(k.to_string(), v.to_string());
            }
            l.insert("__address__".into(), t.clone());
            l
        })
        .collect()
}

fn parse_groups(text: &str, yaml: bool) -> Result<Vec<Group>, String> {
    if yaml {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// The files a `files:` entry names: itself, or the matches of a `*`/`?`
/// pattern in its last part, sorted.
fn matching_files(ctx: &HostContext, pattern: &str) -> Result<Vec<String>, String> {
    let (dir, name) = match pattern.rsplit_once('/') {
        Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
        None => (".", pattern),
    };
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_string()]);
    }
    let resolved = resolve_readable(&ctx.read_dirs, dir)?;
    let entries =
        std::fs::read_dir(&resolved).map_err(|e| format!("{}: {e}", resolved.display()))?;
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| glob_match(name, n))
        .map(|n| resolved.join(n).display().to_string())
        .collect();
    out.sort();
    Ok(out)
}

fn file_sd(ctx: &HostContext, f: &FileSd, out: &mut Vec<LabelMap>) -> Result<(), String> {
    for pattern in &f.files {
        for file in matching_files(ctx, pattern)? {
            let ext = Path::new(&file).extension().and_then(|e| e.to_str());
            let yaml = match ext {
                Some("json") => false,
                Some("yml" | "yaml") => true,
                _ => return Err(format!("{file}: only .json, .yml and .yaml files")),
            };
            let path = resolve_readable(&ctx.read_dirs, &file)?;
            let text = read_text(ctx, &file)?;
            let groups = parse_groups(&text, yaml).map_err(|e| format!("{file}: {e}"))?;
            let meta = path.display().to_string();
            for g in groups {
                out.extend(expand(&g.targets, &g.labels, &[("__meta_filepath", &meta)]));
            }
        }
    }
    Ok(())
}

fn http_sd(ctx: &HostContext, h: &HttpSd, out: &mut Vec<LabelMap>) -> Result<(), String> {
    let mut req = Request {
        method: "GET".into(),
        url: h.url.clone(),
        max_redirects: Some(if h.follow_redirects == Some(false) {
            0
        } else {
            5
        }),
        ..Request::default()
    };
    if let Some(a) = &h.authorization {
        let kind = a.kind.as_deref().unwrap_or("Bearer");
        let credentials = match (&a.credentials, &a.credentials_file) {
            (Some(c), None) => c.clone(),
            (None, Some(file)) => read_text(ctx, file)?.trim().to_string(),
            _ => return Err("authorization: give credentials or credentials_file".into()),
        };
        req.headers
            .push(("Authorization".into(), format!("{kind} {credentials}")));
    }
    if let Some(tls) = &h.tls_config {
        req.ca_file.clone_from(&tls.ca_file);
        req.cert_file.clone_from(&tls.cert_file);
        req.key_file.clone_from(&tls.key_file);
    }
    let response = http::send(ctx, "http_sd", req)?;
    let what = format!("http_sd({})", h.url);
    if response.status != 200 {
        return Err(http::status_error(&what, &response));
    }
    let groups = parse_groups(&response.body, false).map_err(|e| format!("{what}: {e}"))?;
    for g in groups {
        out.extend(expand(&g.targets, &g.labels, &[("__meta_url", &h.url)]));
    }
    Ok(())
}

fn dns_sd(ctx: &HostContext, d: &DnsSd, out: &mut Vec<LabelMap>) -> Result<(), String> {
    let kind = d.record_type()?;
    for name in &d.names {
        let meta = [("__meta_dns_name", name.as_str())];
        match kind {
            DnsType::Srv => {
                for r in dns::srv(ctx, name)? {
                    let host = r.target.trim_end_matches('.');
                    let port = r.port.to_string();
                    out.extend(expand(
                        &[join_host_port(host, &port)],
                        &LabelMap::new(),
                        &[
                            meta[0],
                            ("__meta_dns_srv_record_target", &r.target),
                            ("__meta_dns_srv_record_port", &port),
                        ],
                    ));
                }
            }
            DnsType::A | DnsType::Aaaa => {
                let port = d.port.unwrap_or_default().to_string();
                let ips = dns::addresses(ctx, name, kind == DnsType::Aaaa)?;
                let targets: Vec<String> = ips
                    .iter()
                    .map(|ip| join_host_port(&ip.to_string(), &port))
                    .collect();
                out.extend(expand(&targets, &LabelMap::new(), &meta));
            }
        }
    }
    Ok(())
}

/// `host:port`, with an IPv6 address in brackets (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The targets as the script sees them: one `#{targets: [addr], labels}`
/// group per target.
pub fn to_groups(targets: Vec<(String, LabelMap)>) -> Array {
    targets
        .into_iter()
        .map(|(addr, labels)| {
            let mut l = Map::new();
            for (k, v) in labels {
                l.insert(k.into(), v.into());
            }
            let mut g = Map::new();
            g.insert("targets".into(), Dynamic::from_array(vec![addr.into()]));
            g.insert("labels".into(), l.into());
            Dynamic::from_map(g)
        })
        .collect()
}

/// The script a `source:` service runs: `prometheus_sd` on its block.
pub fn source_script(block: &SdBlock) -> String {
    let json = serde_json::to_string(block).unwrap_or_default();
    let literal = json.replace('\\', "\\\\").replace('"', "\\\"");
    format!("fn targets(ctx) {{ prometheus_sd(parse_json(\"{literal}\")) }}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.json", "a.json"));
        assert!(glob_match("t?.yml", "t1.yml"));
        assert!(!glob_match("*.json", "a.yml"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn addresses_are_joined_like_go() {
        assert_eq!(join_host_port("::1", "80"), "[::1]:80");
        assert_eq!(join_host_port("h.example", "80"), "h.example:80");
    }
}
