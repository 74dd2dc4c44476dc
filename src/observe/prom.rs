//! A small client of the Prometheus HTTP API: what one server scrapes for
//! one job, and what it costs.
//!
//! Three requests per node and observation: `/api/v1/targets?state=active`
//! (filtered to the job's scrape pool), the instant query
//! `scrape_samples_post_metric_relabeling{job="…"}` (series per target) and
//! `/api/v1/status/tsdb` (the head's series, which needs no self-scrape).
//! Blocking (`ureq`), bounded by one timeout for the whole observation: the
//! daemon runs one per node on the blocking pool, all nodes at once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use crate::shard::observation::{ActiveTarget, NodeObservation};

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct TargetsData {
    #[serde(rename = "activeTargets", default)]
    active: Vec<RawTarget>,
}

#[derive(Deserialize)]
struct RawTarget {
    #[serde(rename = "discoveredLabels", default)]
    discovered: HashMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "scrapePool", default)]
    scrape_pool: String,
    #[serde(default)]
    health: String,
    #[serde(rename = "lastScrape", default)]
    last_scrape: Option<String>,
    #[serde(rename = "lastError", default)]
    last_error: String,
    #[serde(rename = "scrapeInterval", default)]
    scrape_interval: String,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(default)]
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: HashMap<String, String>,
    value: (f64, String),
}

#[derive(Deserialize)]
struct TsdbData {
    #[serde(rename = "headStats")]
    head: Option<HeadStats>,
}

#[derive(Deserialize)]
struct HeadStats {
    #[serde(rename = "numSeries")]
    series: u64,
}

/// `api` is the server's base URL (`http://10.0.0.1:9090`), `job` the
/// scrape job (scrape pool) whose targets promshard manages.
pub fn observe(api: &str, job: &str, timeout: Duration) -> Result<NodeObservation, String> {
    let deadline = Instant::now() + timeout;
    let targets: TargetsData = get(api, "/api/v1/targets?state=active", deadline)?;
    let query = format!(
        "scrape_samples_post_metric_relabeling{{job=\"{}\"}}",
        job.replace('"', "\\\"")
    );
    let samples: QueryData = get(
        api,
        &format!("/api/v1/query?query={}", encode(&query)),
        deadline,
    )?;
    // The head's series are a nice-to-have: an old server without the
    // endpoint still gives a full target picture.
    let head = get::<TsdbData>(api, "/api/v1/status/tsdb", deadline)
        .ok()
        .and_then(|d| d.head.map(|h| h.series));
    let series: HashMap<&str, u64> = samples
        .result
        .iter()
        .filter_map(|s| {
            let n = s.value.1.parse::<f64>().ok()?;
            Some((s.metric.get("instance")?.as_str(), n as u64))
        })
        .collect();
    let mut out = NodeObservation {
        head_series: head,
        ..NodeObservation::default()
    };
    for t in targets.active.into_iter().filter(|t| t.scrape_pool == job) {
        let Some(address) = t.discovered.get("__address__") else {
            continue;
        };
        let interval = parse_interval(&t.scrape_interval);
        out.scrape_interval = out.scrape_interval.max(interval);
        out.targets.push(ActiveTarget {
            address: address.clone(),
            series: t
                .labels
                .get("instance")
                .and_then(|i| series.get(i.as_str()).copied()),
            labels: t.labels,
            health: t.health,
            last_scrape: t.last_scrape.filter(|s| !s.starts_with("0001-")),
            last_error: t.last_error,
            scrape_interval: t.scrape_interval,
        });
    }
    out.targets.sort_by(|a, b| a.address.cmp(&b.address));
    out.targets.dedup_by(|a, b| a.address == b.address);
    Ok(out)
}

fn get<T: for<'de> Deserialize<'de>>(
    api: &str,
    path: &str,
    deadline: Instant,
) -> Result<T, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!("timed out before GET {path}"));
    }
    let agent = crate::http_client::agent(left);
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    let envelope: Envelope<T> = serde_json::from_str(&body)
        .map_err(|e| format!("GET {url}: HTTP {status}: not a Prometheus API answer: {e}"))?;
    match (envelope.status.as_str(), envelope.data) {
        ("success", Some(data)) => Ok(data),
        _ => Err(format!(
            "GET {url}: HTTP {status}: {}",
            envelope.error.unwrap_or_else(|| "no data".into())
        )),
    }
}

/// Percent-encode a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prometheus durations as the targets API prints them: `15s`, `1m`,
/// `1m30s`, `500ms`.
fn parse_interval(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
        rest = &rest[unit..];
    }
    (!total.is_zero()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_encoding() {
        assert_eq!(parse_interval("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_interval("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_interval("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_interval(""), None);
        assert_eq!(parse_interval("5x"), None);
        assert_eq!(encode("a{job=\"x\"}"), "a%7Bjob%3D%22x%22%7D");
    }
}
