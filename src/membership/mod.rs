//! Live membership: which of a service's Prometheus nodes are in the ring.
//!
//! A service with `health:` has its nodes probed over HTTP (`GET
//! http://<node><path>`, 2xx = healthy). Each node's results go through a
//! hysteresis ([`NodeHealth`]): it leaves the ring after `fall` consecutive
//! failures and returns after `rise` consecutive successes, so one lost probe
//! does not re-shard anything and a flapping node does not churn the files.
//!
//! **Start-up.** Every node is assumed up until probes say otherwise, so a
//! promshard restart (or a second HA instance starting) re-plans onto the
//! same nodes as before and never empties shards because it has not probed
//! yet. A node that really is down leaves after `fall` probes.
//!
//! **Settling.** A service's [`View`] publishes a change only when none of
//! its other nodes is half-way through its own hysteresis (failing but not
//! yet `fall` times, or succeeding but not yet `rise` times). Correlated
//! failures — a rack, a network split, an operator restarting all servers —
//! then become one change instead of a cascade of re-plans, and when all
//! nodes die together the service sees "all down" at once and keeps its
//! files instead of first piling every target onto the last survivors. The
//! delay this adds is at most `fall - 1` (or `rise - 1`) probe intervals.
//!
//! **Sharing.** Probing is shared: one prober task per (node, path, timeout,
//! interval) however many services use it, and its results feed only the
//! views of the services with exactly those settings — a node is never
//! dropped from a service because of another service's probe.
//!
//! This module is runtime-agnostic in its core ([`NodeHealth`], [`View`] are
//! pure and unit-tested); [`Membership`] owns the prober tasks and reports
//! every change as an [`Event`] that the daemon turns into metrics and an
//! immediate pass of the affected service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Health;
use crate::shard::placement::NodeSpec;

/// Result of one probe: `Err` carries a short reason (`connection refused`,
/// `HTTP 503`, `timed out after 2s`).
pub type ProbeResult = Result<(), String>;

// ------------------------------------------------------------ hysteresis

/// The hysteresis of one node: pure, no clock, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// The hysteresis' verdict (not yet necessarily published, see [`View`]).
    pub up: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Reason of the last failed probe.
    pub last_error: Option<String>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self::assumed_up()
    }
}

impl NodeHealth {
    /// A node not probed yet: up (see the module doc for why).
    pub fn assumed_up() -> Self {
        NodeHealth {
            up: true,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_error: None,
        }
    }

    /// Feed one probe result; true when the verdict flipped.
    pub fn observe(&mut self, result: &ProbeResult, fall: u32, rise: u32) -> bool {
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if !self.up && self.consecutive_successes >= rise.max(1) {
                    self.up = true;
                    return true;
                }
            }
            Err(e) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(e.clone());
                if self.up && self.consecutive_failures >= fall.max(1) {
                    self.up = false;
                    return true;
                }
            }
        }
        false
    }

    /// Half-way through the hysteresis: the verdict may flip soon.
    pub fn in_transition(&self) -> bool {
        (self.up && self.consecutive_failures > 0) || (!self.up && self.consecutive_successes > 0)
    }
}

// ------------------------------------------------------------------ view

/// One published membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub node: String,
    /// In the ring after the change.
    pub up: bool,
    /// Why, e.g. `3 consecutive failures: connection refused`.
    pub reason: String,
}

/// What the API shows about one node of a health-checked service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// `up`, `down`, `failing` (in the ring, failing probes) or
    /// `recovering` (out of the ring, passing probes).
    pub state: &'static str,
    /// In the ring: the node gets targets.
    pub in_ring: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// The last membership change (Unix seconds; RFC 3339 in JSON; none
    /// since start: null): for a node out of the ring, when it went down.
    #[serde(serialize_with = "crate::shard::time::ser_opt")]
    pub last_change: Option<u64>,
    /// The first failed probe of the failures going on now (`None` while
    /// probes pass).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::shard::time::ser_opt"
    )]
    pub failing_since: Option<u64>,
    pub last_change_reason: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct ViewNode {
    health: NodeHealth,
    in_ring: bool,
    last_change: Option<u64>,
    reason: Option<String>,
    /// The first failed probe of the current run of failures.
    failing_since: Option<u64>,
}

/// One service's view of its nodes: a hysteresis per node plus the settling
/// rule of the module doc. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct View {
    fall: u32,
    rise: u32,
    nodes: BTreeMap<String, ViewNode>,
}

impl View {
    /// An empty view with the service's thresholds.
    pub fn new(fall: u32, rise: u32) -> Self {
        View {
            fall,
            rise,
            nodes: BTreeMap::new(),
        }
    }

    /// Make the node set `nodes`: new nodes are assumed up, gone ones are
    /// forgotten (their probe history with them). Returns the removed ones.
    pub fn set_nodes<'a>(&mut self, nodes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let wanted: BTreeSet<&str> = nodes.into_iter().collect();
        let removed: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for n in &removed {
            self.nodes.remove(n);
        }
        for n in wanted {
            self.nodes.entry(n.to_string()).or_insert_with(|| ViewNode {
                health: NodeHealth::assumed_up(),
                in_ring: true,
                last_change: None,
                reason: None,
                failing_since: None,
            });
        }
        removed
    }

    /// Node addresses in the view.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Feed a probe result of `node`; returns the changes published by it
    /// (possibly of other nodes whose change was held while this one was
    /// in transition). Unknown nodes are ignored.
    pub fn observe(&mut self, node: &str, result: &ProbeResult, now: u64) -> Vec<Change> {
        let Some(n) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        n.health.observe(result, self.fall, self.rise);
        n.failing_since = match result {
            Ok(()) => None,
            Err(_) => n.failing_since.or(Some(now)),
        };
        if self.nodes.values().any(|n| n.health.in_transition()) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        for (addr, n) in self.nodes.iter_mut() {
            if n.health.up == n.in_ring {
                continue;
            }
            let reason = if n.health.up {
                format!("{} consecutive successes", n.health.consecutive_successes)
            } else {
                format!(
                    "{} consecutive failures: {}",
                    n.health.consecutive_failures,
                    n.health.last_error.as_deref().unwrap_or("unknown error")
                )
            };
            n.in_ring = n.health.up;
            n.last_change = Some(now);
            n.reason = Some(reason.clone());
            changes.push(Change {
                node: addr.clone(),
                up: n.in_ring,
                reason,
            });
        }
        changes
    }

    /// Whether `node` is in the ring (nodes the view does not know are).
    pub fn in_ring(&self, node: &str) -> bool {
        self.nodes.get(node).is_none_or(|n| n.in_ring)
    }

    /// The nodes of `all` that are in the ring, in the same order.
    pub fn live(&self, all: &[NodeSpec]) -> Vec<NodeSpec> {
        all.iter()
            .filter(|n| self.in_ring(&n.addr))
            .cloned()
            .collect()
    }

    /// `(node, in ring)` for every node.
    pub fn flags(&self) -> Vec<(String, bool)> {
        self.nodes
            .iter()
            .map(|(a, n)| (a.clone(), n.in_ring))
            .collect()
    }

    /// Per-node status for the API.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|(addr, n)| NodeStatus {
                node: addr.clone(),
                state: match (n.in_ring, n.health.in_transition()) {
                    (true, false) => "up",
                    (true, true) => "failing",
                    (false, false) => "down",
                    (false, true) => "recovering",
                },
                in_ring: n.in_ring,
                consecutive_failures: n.health.consecutive_failures,
                consecutive_successes: n.health.consecutive_successes,
                last_change: n.last_change,
                failing_since: n.failing_since,
                last_change_reason: n.reason.clone(),
                last_error: n.health.last_error.clone(),
            })
            .collect()
    }
}

// ----------------------------------------------------------------- probe

/// `GET http://<node><path>` over HTTP/1.0 within `timeout`; 2xx is healthy.
/// A bare request on a fresh connection keeps the probe independent of any
/// client's pooling or proxy settings.
pub async fn probe(node: &str, path: &str, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, probe_once(node, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

fn io_reason(what: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => format!("{what}: connection refused"),
        ConnectionReset => format!("{what}: connection reset"),
        _ => format!("{what}: {e}"),
    }
}

async fn probe_once(node: &str, path: &str) -> ProbeResult {
    let mut stream = tokio::net::TcpStream::connect(node)
        .await
        .map_err(|e| io_reason("connect", &e))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {node}\r\nUser-Agent: promshard/{}\r\nAccept: */*\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason("send", &e))?;
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_reason("read", &e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let code = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match code {
        Some(200..=299) => Ok(()),
        Some(c) => Err(format!("HTTP {c} from {path}")),
        None if head.is_empty() => Err("connection closed without a response".into()),
        None => Err(format!("not an HTTP response: {:?}", line.trim())),
    }
}

// ------------------------------------------------------------- registry

/// A membership change of a service (or a new node set), for the daemon.
#[derive(Debug, Clone)]
pub struct Event {
    pub service: String,
    /// Published changes; empty when only the node set changed.
    pub changes: Vec<Change>,
    /// Every node and whether it is in the ring, after the change.
    pub nodes: Vec<(String, bool)>,
    /// Nodes no longer watched (their series can go).
    pub removed: Vec<String>,
}

impl Event {
    /// Nodes in the ring.
    pub fn live(&self) -> usize {
        self.nodes.iter().filter(|(_, up)| *up).count()
    }
}

/// What one prober probes; services with equal keys share its results.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    node: String,
    path: String,
    timeout: Duration,
    interval: Duration,
}

impl ProbeKey {
    fn new(node: &str, h: &Health) -> Self {
        ProbeKey {
            node: node.to_string(),
            path: h.path.clone(),
            timeout: h.timeout,
            interval: h.interval,
        }
    }
}

struct Watched {
    health: Health,
    view: View,
}

#[derive(Default)]
struct Inner {
    services: BTreeMap<String, Watched>,
    probers: HashMap<ProbeKey, CancellationToken>,
}

/// The live membership of every health-checked service, and the probers.
pub struct Membership {
    inner: Mutex<Inner>,
    events: mpsc::UnboundedSender<Event>,
    shutdown: Shutdown,
}

use crate::shutdown::Shutdown;
use crate::store::state::unix_now;

impl Membership {
    /// A registry whose probers stop on `shutdown`; changes arrive on the
    /// returned receiver.
    pub fn new(shutdown: Shutdown) -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let m = Arc::new(Membership {
            inner: Mutex::new(Inner::default()),
            events,
            shutdown,
        });
        (m, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `service`'s `nodes` with `health` (None: stop watching; every
    /// node counts as up). Keeps the nodes' probe history when the settings
    /// are unchanged, so a config reload does not reset membership. Must be
    /// called inside a tokio runtime (it starts probers).
    pub fn watch(self: &Arc<Self>, service: &str, health: Option<&Health>, nodes: &[NodeSpec]) {
        let Some(health) = health else {
            self.unwatch(service);
            return;
        };
        let mut inner = self.lock();
        let fresh = inner
            .services
            .get(service)
            .is_none_or(|w| w.health != *health);
        let mut removed = Vec::new();
        if fresh {
            if let Some(old) = inner.services.remove(service) {
                removed.extend(old.view.nodes().map(str::to_string));
            }
            inner.services.insert(
                service.to_string(),
                Watched {
                    health: health.clone(),
                    view: View::new(health.fall, health.rise),
                },
            );
        }
        let Some(w) = inner.services.get_mut(service) else {
            return;
        };
        let before: BTreeSet<String> = w.view.nodes().map(str::to_string).collect();
        removed.extend(w.view.set_nodes(nodes.iter().map(|n| n.addr.as_str())));
        let after: BTreeSet<String> = w.view.nodes().map(str::to_string).collect();
        removed.retain(|n| !after.contains(n));
        let flags = w.view.flags();
        self.reconcile_probers(&mut inner);
        drop(inner);
        if fresh || before != after {
            tracing::info!(
                service,
                nodes = after.len(),
                path = %health.path,
                interval_ms = health.interval.as_millis() as u64,
                fall = health.fall,
                rise = health.rise,
                "health checks watching nodes"
            );
            let _ = self.events.send(Event {
                service: service.to_string(),
                changes: Vec::new(),
                nodes: flags,
                removed,
            });
        }
    }

    /// Stop watching `service` (removed, or no `health:` any more).
    pub fn unwatch(self: &Arc<Self>, service: &str) {
        let mut inner = self.lock();
        let Some(old) = inner.services.remove(service) else {
            return;
        };
        self.reconcile_probers(&mut inner);
        drop(inner);
        let _ = self.events.send(Event {
            service: service.to_string(),
            changes: Vec::new(),
            nodes: Vec::new(),
            removed: old.view.nodes().map(str::to_string).collect(),
        });
    }

    /// Whether `service` is health-checked.
    pub fn watches(&self, service: &str) -> bool {
        self.lock().services.contains_key(service)
    }

    /// The nodes of `all` in `service`'s ring (all of them when the service
    /// is not health-checked).
    pub fn live(&self, service: &str, all: &[NodeSpec]) -> Vec<NodeSpec> {
        match self.lock().services.get(service) {
            Some(w) => w.view.live(all),
            None => all.to_vec(),
        }
    }

    /// Per-node health of `service`, if it is health-checked.
    pub fn status(&self, service: &str) -> Option<Vec<NodeStatus>> {
        self.lock().services.get(service).map(|w| w.view.status())
    }

    /// Start the probers that some service needs and stop the others.
    fn reconcile_probers(self: &Arc<Self>, inner: &mut Inner) {
        let wanted: BTreeSet<(String, String, Duration, Duration)> = inner
            .services
            .values()
            .flat_map(|w| {
                w.view.nodes().map(|n| {
                    let k = ProbeKey::new(n, &w.health);
                    (k.node, k.path, k.timeout, k.interval)
                })
            })
            .collect();
        inner.probers.retain(|k, stop| {
            let keep = wanted.contains(&(k.node.clone(), k.path.clone(), k.timeout, k.interval));
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (node, path, timeout, interval) in wanted {
            let key = ProbeKey {
                node,
                path,
                timeout,
                interval,
            };
            if inner.probers.contains_key(&key) {
                continue;
            }
            let stop = self.shutdown.child_token();
            inner.probers.insert(key.clone(), stop.clone());
            self.shutdown
                .spawn(run_prober(Arc::downgrade(self), key, stop));
        }
    }

    /// Feed a probe result to every service probing with `key`.
    fn observe(&self, key: &ProbeKey, result: &ProbeResult) {
        let now = unix_now();
        let mut events = Vec::new();
        {
            let mut inner = self.lock();
            for (name, w) in inner.services.iter_mut() {
                if ProbeKey::new(&key.node, &w.health) != *key {
                    continue;
                }
                let changes = w.view.observe(&key.node, result, now);
                if changes.is_empty() {
                    continue;
                }
                let flags = w.view.flags();
                let live = flags.iter().filter(|(_, up)| *up).count();
                for c in &changes {
                    if c.up {
                        tracing::info!(service = %name, node = %c.node, reason = %c.reason, live, total = flags.len(), "node back in the ring");
                    } else {
                        tracing::warn!(service = %name, node = %c.node, reason = %c.reason, live, total = flags.len(), "node out of the ring");
                    }
                }
                events.push(Event {
                    service: name.clone(),
                    changes,
                    nodes: flags,
                    removed: Vec::new(),
                });
            }
        }
        for e in events {
            let _ = self.events.send(e);
        }
    }
}

/// Probe `key.node` every `key.interval` until stopped.
async fn run_prober(membership: Weak<Membership>, key: ProbeKey, stop: CancellationToken) {
    let mut tick = tokio::time::interval(key.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::debug!(node = %key.node, path = %key.path, "prober started");
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = probe(&key.node, &key.path, key.timeout) => r,
        };
        let Some(m) = membership.upgrade() else { break };
        if let Err(e) = &result {
            tracing::debug!(node = %key.node, error = %e, "probe failed");
        }
        m.observe(&key, &result);
    }
    tracing::debug!(node = %key.node, path = %key.path, "prober stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: fn() -> ProbeResult = || Err("connection refused".into());

    fn spec(addr: &str) -> NodeSpec {
        NodeSpec {
            addr: addr.into(),
            weight: 1,
        }
    }

    #[test]
    fn hysteresis_needs_fall_failures_and_rise_successes() {
        let mut h = NodeHealth::assumed_up();
        assert!(h.up);
        assert!(!h.observe(&FAIL(), 3, 2));
        assert!(!h.observe(&FAIL(), 3, 2));
        assert!(h.in_transition());
        assert!(h.observe(&FAIL(), 3, 2), "third failure takes it down");
        assert!(!h.up && !h.in_transition());
        assert!(!h.observe(&FAIL(), 3, 2), "already down");
        assert!(!h.observe(&Ok(()), 3, 2));
        assert!(h.in_transition());
        assert!(h.observe(&Ok(()), 3, 2), "second success brings it back");
        assert!(h.up && h.consecutive_failures == 0);
    }

    #[test]
    fn hysteresis_does_not_flap() {
        let mut h = NodeHealth::assumed_up();
        // Alternating results never reach fall=2 or rise=2.
        for i in 0..20 {
            let r = if i % 2 == 0 { FAIL() } else { Ok(()) };
            assert!(!h.observe(&r, 2, 2), "flipped at probe {i}");
        }
        assert!(h.up);
        h.observe(&FAIL(), 2, 2);
        h.observe(&FAIL(), 2, 2);
        assert!(!h.up);
        for i in 0..20 {
            let r = if i % 2 == 0 { Ok(()) } else { FAIL() };
            assert!(!h.observe(&r, 2, 2), "flipped back at probe {i}");
        }
        assert!(!h.up);
    }

    #[test]
    fn fall_one_is_immediate() {
        let mut h = NodeHealth::assumed_up();
        assert!(h.observe(&FAIL(), 1, 1));
        assert!(h.observe(&Ok(()), 1, 1));
    }

    fn view(nodes: &[&str]) -> View {
        let mut v = View::new(2, 2);
        v.set_nodes(nodes.iter().copied());
        v
    }

    #[test]
    fn view_starts_up_and_reports_reason() {
        let mut v = view(&["a:1", "b:1"]);
        let all = [spec("a:1"), spec("b:1")];
        assert_eq!(v.live(&all), all.to_vec(), "assumed up at start");
        assert!(v.observe("a:1", &FAIL(), 10).is_empty());
        let c = v.observe("a:1", &FAIL(), 11);
        assert_eq!(
            c,
            vec![Change {
                node: "a:1".into(),
                up: false,
                reason: "2 consecutive failures: connection refused".into()
            }]
        );
        assert_eq!(v.live(&all), vec![spec("b:1")]);
        let st = v.status();
        assert_eq!(st[0].state, "down");
        assert_eq!(st[0].last_change, Some(11));
        assert_eq!(st[0].failing_since, Some(10), "since the first failure");
        assert_eq!(st[1].state, "up");
        assert_eq!(st[1].failing_since, None);
        assert!(v.observe("a:1", &Ok(()), 12).is_empty());
        assert_eq!(v.status()[0].failing_since, None, "a passing probe ends it");
        assert_eq!(v.status()[0].state, "recovering");
        let c = v.observe("a:1", &Ok(()), 13);
        assert_eq!(c[0].reason, "2 consecutive successes");
        assert!(c[0].up);
        assert_eq!(v.live(&all), all.to_vec());
    }

    #[test]
    fn correlated_failures_are_published_together() {
        // All three start failing in the same probe round: a reaches `fall`
        // first but is held until b and c are decided, so the service sees
        // one change with every node down (and keeps its files).
        let mut v = view(&["a:1", "b:1", "c:1"]);
        v.observe("a:1", &FAIL(), 1);
        v.observe("b:1", &FAIL(), 1);
        v.observe("c:1", &FAIL(), 1);
        assert!(
            v.observe("a:1", &FAIL(), 2).is_empty(),
            "b and c still failing"
        );
        assert!(v.observe("b:1", &FAIL(), 2).is_empty(), "c still failing");
        let c = v.observe("c:1", &FAIL(), 2);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(v.live(&[spec("a:1"), spec("b:1"), spec("c:1")]).is_empty());
    }

    #[test]
    fn a_lone_failure_is_published_at_once() {
        let mut v = view(&["a:1", "b:1"]);
        v.observe("a:1", &FAIL(), 1);
        v.observe("b:1", &Ok(()), 1);
        let c = v.observe("a:1", &FAIL(), 2);
        assert_eq!(c.len(), 1);
        assert!(!c[0].up);
    }

    #[test]
    fn a_held_change_is_published_when_the_other_node_recovers() {
        let mut v = view(&["a:1", "b:1"]);
        v.observe("a:1", &FAIL(), 1);
        v.observe("b:1", &FAIL(), 1);
        assert!(
            v.observe("a:1", &FAIL(), 2).is_empty(),
            "held while b fails"
        );
        let c = v.observe("b:1", &Ok(()), 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].node, "a:1");
        assert!(v.in_ring("b:1"));
    }

    #[test]
    fn set_nodes_adds_assumed_up_and_forgets_removed() {
        let mut v = view(&["a:1", "b:1"]);
        v.observe("a:1", &FAIL(), 1);
        v.observe("a:1", &FAIL(), 1);
        assert!(!v.in_ring("a:1"));
        let removed = v.set_nodes(["b:1", "c:1"]);
        assert_eq!(removed, vec!["a:1".to_string()]);
        assert!(v.in_ring("c:1"));
        assert!(
            v.in_ring("unknown:1"),
            "nodes the view does not know count as up"
        );
        assert!(v.observe("a:1", &FAIL(), 1).is_empty(), "ignored");
        // Re-adding a node starts it fresh (assumed up).
        v.set_nodes(["a:1", "b:1", "c:1"]);
        assert!(v.in_ring("a:1"));
    }

    /// An HTTP server on loopback answering `status`, or 503 on `/sick`.
    async fn server(status: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let status = if buf[..n].starts_with(b"GET /sick ") {
                    "503 Service Unavailable"
                } else {
                    status
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_reads_the_status_line() {
        let ok = server("200 OK").await;
        assert_eq!(
            probe(&ok, "/-/healthy", Duration::from_secs(2)).await,
            Ok(())
        );
        let bad = server("503 Service Unavailable").await;
        let e = probe(&bad, "/-/healthy", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e, "HTTP 503 from /-/healthy");
    }

    #[tokio::test]
    async fn probe_reports_refused_and_timeout() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = probe(&closed, "/", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e, "connect: connection refused");
        // Accepts (backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let e = probe(&addr, "/", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.starts_with("timed out after"), "{e}");
    }

    #[tokio::test]
    async fn services_share_probers_but_not_verdicts() {
        let shutdown = Shutdown::new();
        let (m, mut rx) = Membership::new(shutdown.clone());
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let alive = server("200 OK").await;
        let fast = Health {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(20),
            fall: 2,
            rise: 2,
            ..Health::default()
        };
        // Service c probes the live node on a path where it is sick: c
        // drops it, a and b (other path) must not.
        let other_path = Health {
            path: "/sick".into(),
            ..fast.clone()
        };
        let nodes = [spec(&alive), spec(&dead)];
        m.watch("a", Some(&fast), &nodes);
        m.watch("b", Some(&fast), &nodes);
        m.watch("c", Some(&other_path), &[spec(&alive)]);
        assert_eq!(m.lock().probers.len(), 3, "a and b share their probers");
        let mut down = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while down.len() < 3 {
            let e = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("no membership change within 5s")
                .unwrap();
            for c in &e.changes {
                let want = if e.service == "c" {
                    (alive.as_str(), "HTTP 503 from /sick")
                } else {
                    (dead.as_str(), "connection refused")
                };
                assert_eq!(c.node, want.0, "{e:?}");
                assert!(!c.up && c.reason.ends_with(want.1), "{c:?}");
                down.insert(e.service.clone());
            }
        }
        assert_eq!(m.live("a", &nodes), vec![spec(&alive)]);
        assert_eq!(m.live("b", &nodes), vec![spec(&alive)]);
        assert!(m.live("c", &[spec(&alive)]).is_empty());
        assert_eq!(m.live("unwatched", &nodes), nodes.to_vec());
        m.unwatch("a");
        m.unwatch("b");
        assert_eq!(m.lock().probers.len(), 1);
        shutdown.cancel();
    }
}
