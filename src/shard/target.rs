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

use twox_hash::XxHash3_64;

/// Label set of a target: sorted by name, names unique, shared between the
/// targets of one group (cloning is a reference-count increment).
///
/// Stored packed in one allocation (`[hash][count]` then length-prefixed
/// name/value pairs) instead of a `BTreeMap<String, String>`: a B-tree leaf
/// plus one allocation per string cost ~600 bytes per target, which at a
/// million targets was most of the memory of a pass. The content hash is
/// computed once, so grouping targets by label set when rendering is one
/// table probe. It reads like a sorted map: iteration in name order, `keys()`,
/// `get()`, `labels["name"]`, `collect()` from pairs (a later duplicate name
/// wins), and serde as a map.
#[derive(Clone)]
pub struct Labels(Arc<[u8]>);

/// Bytes before the first pair: content hash (u64) and pair count (u32).
const HEADER: usize = 12;

impl Labels {
    /// The empty label set.
    pub fn new() -> Self {
        Self::encode(std::iter::empty())
    }

    /// Encode pairs that are already sorted by name with unique names.
    fn encode<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; HEADER]);
        let mut count: u32 = 0;
        for (k, v) in pairs {
            push_str(&mut buf, k);
            push_str(&mut buf, v);
            count += 1;
        }
        Self::seal(buf, count)
    }

    fn seal(mut buf: Vec<u8>, count: u32) -> Self {
        let hash = XxHash3_64::oneshot(&buf[HEADER..]);
        buf[..8].copy_from_slice(&hash.to_le_bytes());
        buf[8..HEADER].copy_from_slice(&count.to_le_bytes());
        Labels(Arc::from(buf))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        let mut n = [0; 4];
        n.copy_from_slice(&self.0[8..HEADER]);
        u32::from_le_bytes(n) as usize
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.len() == HEADER
    }

    /// Content hash (stable for equal label sets).
    pub fn content_hash(&self) -> u64 {
        let mut h = [0; 8];
        h.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(h)
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> LabelsIter<'_> {
        LabelsIter {
            rest: &self.0[HEADER..],
        }
    }

    /// Label names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// Label values in name order.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(_, v)| v)
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Whether label `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    // Label names and values are far below 4 GiB (script limits).
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Builds a [`Labels`] from pairs pushed in strictly increasing name order,
/// reusing one buffer (the native JSON path builds one set per record).
#[derive(Debug, Default)]
pub struct LabelsBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl LabelsBuilder {
    /// Start a new set (forgets what was pushed).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER]);
        self.count = 0;
    }

    /// Append a label; names must come sorted and unique.
    pub fn push(&mut self, name: &str, value: &str) {
        if self.buf.len() < HEADER {
            self.clear();
        }
        push_str(&mut self.buf, name);
        push_str(&mut self.buf, value);
        self.count += 1;
    }

    /// The set built so far; the builder can be reused after [`clear`].
    ///
    /// [`clear`]: LabelsBuilder::clear
    pub fn build(&mut self) -> Labels {
        if self.buf.len() < HEADER {
            self.clear();
        }
        let hash = XxHash3_64::oneshot(&self.buf[HEADER..]);
        self.buf[..8].copy_from_slice(&hash.to_le_bytes());
        self.buf[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        Labels(Arc::from(self.buf.as_slice()))
    }

    /// Whether `labels` holds exactly the set built so far.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.buf.len() >= HEADER && labels.0[HEADER..] == self.buf[HEADER..]
    }

    /// Content hash of the set built so far (as [`Labels::content_hash`]).
    pub fn content_hash(&self) -> u64 {
        XxHash3_64::oneshot(self.buf.get(HEADER..).unwrap_or_default())
    }
}

/// Iterator over the pairs of a [`Labels`].
#[derive(Clone)]
pub struct LabelsIter<'a> {
    rest: &'a [u8],
}

impl<'a> LabelsIter<'a> {
    fn next_str(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (s, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        // Only ever encoded from `&str`, so always valid.
        std::str::from_utf8(s).ok()
    }
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let k = self.next_str()?;
        let v = self.next_str()?;
        Some((k, v))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> LabelsIter<'a> {
        self.iter()
    }
}

impl Default for Labels {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// Like collecting into a `BTreeMap`: sorted, and a later duplicate
    /// name replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: equal names keep their input order; the last one wins.
        pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let n = pairs.len();
        let unique = pairs
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| *i + 1 == n || pairs[*i + 1].0.as_ref() != k.as_ref())
            .map(|(_, (k, v))| (k.as_ref(), v.as_ref()));
        Self::encode(unique)
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;
    /// Panics when the label is missing, like `BTreeMap`'s index.
    fn index(&self, name: &str) -> &str {
        match self.get(name) {
            Some(v) => v,
            None => panic!("no label {name:?}"),
        }
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Labels {}

impl Ord for Labels {
    /// Same order as `BTreeMap<String, String>`: pairs compared in turn.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.content_hash());
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a map so that errors and duplicate handling match the
        // `BTreeMap` this type replaces.
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Ok(Self::encode(
            map.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
    }
}

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
    pub labels: Labels,
    pub weight: u32,
    /// [`crate::shard::placement::hash_key`] of `addr`, taken while the address is hot
    /// in cache: hashing 100k scattered strings again at planning time
    /// cost ≈ 4 ms. Derived from `addr`, so it never changes the order.
    pub hash: u64,
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
    out.targets
        .reserve(groups.iter().map(|g| g.targets.len()).sum::<usize>());
    for group in groups {
        let gi = group.index;
        if let Err((value, reason)) = check_labels(&group.labels) {
            out.invalid.push(Invalid {
                group: gi,
                value,
                reason,
            });
            continue;
        }
        let labels = group.labels;
        let weight = group.weight.unwrap_or(1);
        for addr in group.targets {
            match check_address(&addr) {
                Ok(()) => out.targets.push(Target {
                    hash: crate::shard::placement::hash_key(&addr),
                    addr: addr.into_boxed_str(),
                    labels: labels.clone(),
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

/// Most labels one target may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label name, in bytes.
pub const MAX_LABEL_NAME: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 4096;

/// `__`-prefixed label names Prometheus reads from a discovered target; every
/// other `__` name is reserved. `__param_<name>` and `__meta_<name>` (for
/// relabelling) are allowed too.
const PROMETHEUS_TARGET_LABELS: [&str; 4] = [
    "__scheme__",
    "__metrics_path__",
    "__scrape_interval__",
    "__scrape_timeout__",
];

/// Check a group's labels: their number, each name (syntax, reserved
/// names) and the size of names and values. The error is the offending
/// label, quoted short, and why.
pub fn check_labels(labels: &Labels) -> Result<(), (String, String)> {
    if labels.len() > MAX_LABELS {
        return Err((
            format!("{} labels", labels.len()),
            format!("at most {MAX_LABELS} labels per target"),
        ));
    }
    for (name, value) in labels {
        let quoted = || {
            let short: String = name.chars().take(40).collect();
            let more = if short.len() < name.len() { "…" } else { "" };
            format!("label {short}{more}")
        };
        if name.len() > MAX_LABEL_NAME {
            return Err((
                quoted(),
                format!(
                    "label name is {} bytes, at most {MAX_LABEL_NAME}",
                    name.len()
                ),
            ));
        }
        check_label_name(name)
            .and_then(|()| check_reserved_label(name))
            .map_err(|reason| (quoted(), reason.to_string()))?;
        if value.len() > MAX_LABEL_VALUE {
            return Err((
                quoted(),
                format!(
                    "label value is {} bytes, at most {MAX_LABEL_VALUE}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuse label names that would change what promshard planned: `job`
/// (Prometheus would use it instead of the scrape config's job name),
/// `__address__` (the address is the target itself, what promshard shards
/// on) and `__` names Prometheus does not read from a target.
fn check_reserved_label(name: &str) -> Result<(), &'static str> {
    if name == "job" {
        Err("label job is reserved: Prometheus sets it from the scrape config's job_name")
    } else if name == "__address__" {
        Err("label __address__ is reserved: a target's address is its entry in targets")
    } else if name.starts_with("__")
        && !PROMETHEUS_TARGET_LABELS.contains(&name)
        && !name.starts_with("__param_")
        && !name.starts_with("__meta_")
    {
        Err(
            "label names starting with '__' are reserved; allowed: __scheme__, __metrics_path__, __scrape_interval__, __scrape_timeout__, __param_<name>, __meta_<name>",
        )
    } else {
        Ok(())
    }
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
    fn label_limits_and_reserved_names() {
        let ok: Labels = [
            ("instance", "web-1"),
            ("__scheme__", "https"),
            ("__metrics_path__", "/m"),
            ("__param_module", "http_2xx"),
            ("__meta_rack", "r1"),
            ("v", &"x".repeat(MAX_LABEL_VALUE)),
        ]
        .into_iter()
        .collect();
        assert_eq!(check_labels(&ok), Ok(()));
        let long_value = "x".repeat(MAX_LABEL_VALUE + 1);
        let long_name = "n".repeat(MAX_LABEL_NAME + 1);
        for (name, value, why) in [
            ("job", "x", "job is reserved"),
            ("__address__", "h:1", "__address__ is reserved"),
            ("__tmp", "x", "starting with '__' are reserved"),
            ("v", long_value.as_str(), "4097 bytes, at most 4096"),
            (long_name.as_str(), "x", "129 bytes, at most 128"),
        ] {
            let labels: Labels = [(name, value)].into_iter().collect();
            let (quoted, reason) = check_labels(&labels).unwrap_err();
            assert!(reason.contains(why), "{name}: {reason}");
            assert!(quoted.len() < 50, "{quoted}");
        }
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("l{i}"), "x".to_string()))
            .collect();
        assert_eq!(check_labels(&many).unwrap_err().0, "65 labels");
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
    fn labels_behave_like_a_sorted_map() {
        let pairs = [("role", "db"), ("env", "prod"), ("dc", "x"), ("env", "dev")];
        let labels: Labels = pairs.iter().copied().collect();
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            map.clone().into_iter().collect::<Vec<_>>()
        );
        assert_eq!(labels.len(), 3);
        assert_eq!(&labels["env"], "dev", "a later duplicate wins");
        assert_eq!(labels.get("nope"), None);
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["dc", "env", "role"]);
        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        let back: Labels = serde_json::from_str(&json).unwrap();
        assert_eq!(back, labels);
        assert_eq!(back.content_hash(), labels.content_hash());
        assert!(Labels::new().is_empty());
        assert_eq!(
            Labels::default(),
            [("a", "b")][..0].iter().copied().collect()
        );
        // Same order as BTreeMap<String, String> (what Target sorting used).
        let sets: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("a", "b")],
            vec![("a", "b"), ("c", "d")],
            vec![("a", "c")],
            vec![("ab", "")],
            vec![("b", "")],
        ];
        for x in &sets {
            for y in &sets {
                let (lx, ly): (Labels, Labels) =
                    (x.iter().copied().collect(), y.iter().copied().collect());
                let (mx, my): (BTreeMap<_, _>, BTreeMap<_, _>) =
                    (x.iter().copied().collect(), y.iter().copied().collect());
                assert_eq!(lx.cmp(&ly), mx.cmp(&my), "{x:?} vs {y:?}");
                assert_eq!(lx == ly, mx == my);
            }
        }
        let mut b = LabelsBuilder::default();
        b.push("dc", "x");
        b.push("env", "dev");
        b.push("role", "db");
        let built = b.build();
        assert_eq!(built, labels);
        assert!(b.matches(&labels));
        assert_eq!(b.content_hash(), labels.content_hash());
        b.clear();
        assert_eq!(b.build(), Labels::new());
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
