//! Scrape targets: validation and normalization of what scripts return.
//!
//! Scripts hand back loosely shaped groups (`RawGroup`). This module turns
//! them into a sorted, deduplicated `Vec<Target>`: one entry per address,
//! each carrying its group's labels. Bad addresses and label names are
//! reported (with the value and the group they came from) and skipped, never
//! dropped silently. The output order never depends on the input order.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Label set of a target; shared between the targets of one group.
pub type Labels = BTreeMap<String, String>;

/// One file_sd group as a script returned it, before validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawGroup {
    /// Position of the group in the script's result (for error messages).
    pub index: usize,
    pub targets: Vec<String>,
    pub labels: Labels,
    /// Expected load of each target of the group (e.g. series count).
    pub weight: Option<u32>,
}

/// One validated scrape target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub addr: Box<str>,
    pub labels: Arc<Labels>,
    pub weight: u32,
}

/// Why an address or group was skipped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Invalid {
    /// 0-based index of the group in the script's result.
    pub group: usize,
    /// The offending value.
    pub value: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}: {:?}: {}", self.group, self.value, self.reason)
    }
}

/// Validated targets plus everything that was skipped.
#[derive(Debug, Default)]
pub struct Normalized {
    pub targets: Vec<Target>,
    pub invalid: Vec<Invalid>,
    /// Exact duplicates merged away.
    pub duplicates: usize,
}

/// Validate, split multi-address groups, merge exact duplicates and sort.
pub fn normalize(groups: Vec<RawGroup>) -> Normalized {
    let mut out = Normalized::default();
    for group in groups {
        let gi = group.index;
        if let Some((name, reason)) = group
            .labels
            .keys()
            .find_map(|k| check_label_name(k).err().map(|e| (k.clone(), e)))
        {
            out.invalid.push(Invalid {
                group: gi,
                value: format!("label {name}"),
                reason: reason.to_string(),
            });
            continue;
        }
        let labels = Arc::new(group.labels);
        let weight = group.weight.unwrap_or(1);
        for addr in group.targets {
            match check_address(&addr) {
                Ok(()) => out.targets.push(Target {
                    addr: addr.into_boxed_str(),
                    labels: Arc::clone(&labels),
                    weight,
                }),
                Err(reason) => out.invalid.push(Invalid {
                    group: gi,
                    value: addr,
                    reason: reason.to_string(),
                }),
            }
        }
    }
    out.targets.sort_unstable();
    let before = out.targets.len();
    out.targets
        .dedup_by(|a, b| a.addr == b.addr && a.labels == b.labels);
    out.duplicates = before - out.targets.len();
    out
}

/// Check a `host:port` address: IPv4, bracketed IPv6 or DNS name, port 1–65535.
pub fn check_address(addr: &str) -> Result<(), &'static str> {
    if addr.is_empty() {
        return Err("empty address");
    }
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("address contains whitespace or control characters");
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or("bracketed IPv6 address must look like [addr]:port")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address inside brackets")?;
        (None, port)
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("missing :port (expected host:port)")?;
        if host.contains(':') {
            return Err("IPv6 addresses must be bracketed: [addr]:port");
        }
        (Some(host), port)
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) && !port.starts_with('+') => {}
        _ => return Err("port must be a number from 1 to 65535"),
    }
    if let Some(host) = host {
        check_host(host)?;
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty host");
    }
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        return host
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "invalid IPv4 address");
    }
    if host.len() > 253 {
        return Err("host name longer than 253 characters");
    }
    for label in host.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err("invalid host name (letters, digits, '-', '_' and dots only)");
        }
    }
    Ok(())
}

/// Check a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn check_label_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return Err("label names must start with a letter or '_'"),
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("label names may contain only letters, digits and '_'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(index: usize, targets: &[&str], labels: &[(&str, &str)]) -> RawGroup {
        RawGroup {
            index,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            weight: None,
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.1:9100",
            "[::1]:9090",
            "[2001:db8::1]:443",
            "web-1.example.com:80",
            "localhost:65535",
            "host_name:1",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.256:80",
            "::1:9090",
            "[::1]9090",
            "[zz]:80",
            "bad host:80",
            "-x.com:80",
            "a..b:80",
            "host:+80",
            "host:abc",
            ":80",
        ] {
            assert!(check_address(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn label_names() {
        assert!(check_label_name("env").is_ok());
        assert!(check_label_name("__metrics_path__").is_ok());
        assert!(check_label_name("1abc").is_err());
        assert!(check_label_name("a-b").is_err());
        assert!(check_label_name("").is_err());
    }

    #[test]
    fn splits_merges_reports_and_sorts() {
        let n = normalize(vec![
            group(0, &["b:1", "a:1", "bad"], &[("env", "prod")]),
            group(1, &["a:1"], &[("env", "prod")]),
            group(2, &["a:1"], &[("env", "dev")]),
            group(3, &["c:1"], &[("bad-label", "x")]),
        ]);
        let addrs: Vec<&str> = n.targets.iter().map(|t| &*t.addr).collect();
        assert_eq!(addrs, ["a:1", "a:1", "b:1"]);
        assert_eq!(n.duplicates, 1);
        assert_eq!(n.invalid.len(), 2);
        assert_eq!(n.invalid[0].group, 0);
        assert_eq!(n.invalid[0].value, "bad");
        assert_eq!(n.invalid[1].group, 3);
        assert!(n.invalid[1].value.contains("bad-label"));
    }

    #[test]
    fn order_does_not_matter() {
        let a = normalize(vec![
            group(0, &["x:1", "y:2"], &[]),
            group(1, &["z:3"], &[("a", "b")]),
        ]);
        let b = normalize(vec![
            group(0, &["z:3"], &[("a", "b")]),
            group(1, &["y:2", "x:1"], &[]),
        ]);
        assert_eq!(a.targets, b.targets);
    }
}
