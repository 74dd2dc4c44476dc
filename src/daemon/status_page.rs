//! The status page at `GET /`: one server-rendered HTML page an operator
//! opens first. No JavaScript and no external assets (it works on an
//! air-gapped host and in a terminal browser); it refreshes itself every
//! 10 seconds.
//!
//! Problems come first (failed passes, script errors, nodes down or not
//! answering, audit states other than ok), then one table per service with
//! a row per node. Every value that came from a config or a script is
//! HTML-escaped ([`esc`]). Tables wrap long values instead of scrolling, so
//! 100 nodes fit a 1280-pixel-wide window.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::daemon::ServiceStatus;
use crate::membership::NodeStatus;
use crate::observe::{ServiceObservation, TargetState, WhereAnswer};
use crate::shard::time::rfc3339;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font:13px/1.35 system-ui,sans-serif;margin:12px;color:#111;max-width:100%}\
h1{font-size:18px;margin:0 0 6px}h2{font-size:15px;margin:18px 0 4px}\
table{border-collapse:collapse;width:100%;table-layout:fixed;margin:4px 0}\
th,td{border:1px solid #ccc;padding:2px 5px;text-align:left;overflow-wrap:anywhere;vertical-align:top}\
th{background:#f2f2f2}.bad{background:#fde2e2}.warn{background:#fff4d6}.ok{color:#1a7f37}\
.num{text-align:right}.muted{color:#666}ul.problems li{margin:2px 0}\
form{margin:8px 0}input[type=text]{width:22em}";

/// How long ago `at` (unix seconds) was, for people.
fn ago(at: Option<u64>, now: u64) -> String {
    match at {
        None => "never".into(),
        Some(t) => {
            let s = now.saturating_sub(t);
            match s {
                0..60 => format!("{s} s ago"),
                60..3600 => format!("{} min ago", s / 60),
                _ => format!("{} h ago", s / 3600),
            }
        }
    }
}

/// The whole page for `services` at `now` (unix seconds), with the answer
/// to a `where` search on top when there was one.
pub fn render(
    services: &[ServiceStatus],
    ha: Option<&crate::ha::HaStatus>,
    found: Option<(&str, Vec<WhereAnswer>)>,
    now: u64,
) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content=10><title>promshard</title>\
         <style>{STYLE}</style></head><body><h1>promshard {}</h1>",
        env!("CARGO_PKG_VERSION")
    );
    let _ = write!(
        h,
        "<form action=/ method=get><label>Where is \
         <input type=text name=target placeholder=host:port value=\"{}\" required></label> \
         <button type=submit>find</button></form>",
        esc(found.as_ref().map(|f| f.0).unwrap_or(""))
    );
    if let Some(ha) = ha {
        ha_line(&mut h, ha);
    }
    if let Some((target, answers)) = &found {
        where_section(&mut h, target, answers, now);
    }
    problems(&mut h, services, now);
    overview(&mut h, services, now);
    for s in services {
        service_nodes(&mut h, s, now);
    }
    h.push_str(
        "<p class=muted>JSON: <a href=/api/v1/services>/api/v1/services</a> · \
         <a href=/metrics>/metrics</a> · <a href=/readyz>/readyz</a> · \
         per service: <code>/api/v1/services/NAME/plan</code>, \
         <code>/api/v1/services/NAME/audit</code></p></body></html>",
    );
    h
}

/// `ha:`: this instance's role, so nobody mistakes a standby's plan for
/// what was delivered.
fn ha_line(h: &mut String, ha: &crate::ha::HaStatus) {
    if ha.mode == crate::ha::HaMode::Shared {
        return shared_line(h, ha);
    }
    let role = match ha.epoch {
        Some(e) => format!("<b>leader</b> (epoch {e}): writes and delivers"),
        None => format!(
            "<b>standby</b>: plans, delivers nothing; leader: {}",
            esc(ha.leader.as_deref().unwrap_or("none known"))
        ),
    };
    let _ = write!(
        h,
        "<p id=ha>HA cluster {} · instance {} · {role}{}</p>",
        esc(&ha.cluster),
        esc(&ha.instance),
        ha.etcd_error
            .as_deref()
            .map(|e| format!(" · <span class=bad>etcd: {}</span>", esc(e)))
            .unwrap_or_default()
    );
}

/// `ha.mode: shared`: how many services this instance owns, and the owner
/// and epoch of every service as last seen in etcd.
fn shared_line(h: &mut String, ha: &crate::ha::HaStatus) {
    let _ = write!(
        h,
        "<p id=ha>HA cluster {} · instance {} · <b>shared</b>: owns and delivers {} of {} services{}</p>",
        esc(&ha.cluster),
        esc(&ha.instance),
        ha.owned.len(),
        ha.owners.len(),
        ha.etcd_error
            .as_deref()
            .map(|e| format!(" · <span class=bad>etcd: {}</span>", esc(e)))
            .unwrap_or_default()
    );
    if ha.owners.is_empty() {
        return;
    }
    h.push_str("<table id=owners><tr><th>service</th><th>owner</th><th class=num>epoch</th></tr>");
    for (service, o) in &ha.owners {
        let here = if o.instance == ha.instance {
            " (this instance)"
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}{here}</td><td class=num>{}</td></tr>",
            esc(service),
            esc(&o.instance),
            o.epoch
        );
    }
    h.push_str("</table>");
}

/// The answer to "which server scrapes this target?".
fn where_section(h: &mut String, target: &str, answers: &[WhereAnswer], now: u64) {
    let _ = write!(h, "<h2 id=where>Where is {}</h2>", esc(target));
    if answers.is_empty() {
        h.push_str("<p class=bad>Not assigned by any service and not seen active on any node.</p>");
        return;
    }
    for a in answers {
        let state = a.state.map(|s| s.as_str()).unwrap_or("not observed");
        let _ = write!(
            h,
            "<p>service <b>{}</b>: assigned to {} ({}){}; state <b>{}</b>{}</p>",
            esc(&a.service),
            esc(&a.assigned.join(", ")),
            esc(&a.files.join(", ")),
            a.group
                .as_deref()
                .map(|g| format!(", affinity group <b>{}</b>", esc(g)))
                .unwrap_or_default(),
            esc(state),
            a.observed_at
                .map(|t| format!(", observed {}", ago(Some(t), now)))
                .unwrap_or_default()
        );
        for m in &a.handover {
            let _ = write!(
                h,
                "<p class=warn>{} (since {})</p>",
                esc(&crate::observe::handover_text(
                    &m.from,
                    m.from_state,
                    &m.to,
                    m.to_state
                )),
                crate::shard::time::rfc3339_ms(m.since)
            );
        }
        h.push_str(
            "<table class=where><tr><th>node</th><th>part</th><th>health</th>\
             <th>last scrape</th><th class=num>series</th><th>last error</th><th>labels</th></tr>",
        );
        for n in &a.nodes {
            let t = n.observed.as_ref();
            let labels: Vec<String> = t
                .map(|t| {
                    t.labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{v}\""))
                        .collect()
                })
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&n.node),
                match n.role {
                    crate::observe::Role::NotAssigned => "<b class=bad>NOT ASSIGNED</b>",
                    role => role.as_str(),
                },
                esc(match (t, &n.error, a.observed_at) {
                    (Some(t), _, _) => t.health.as_str(),
                    (None, Some(_), _) => "unknown",
                    (None, None, Some(_)) => "not active",
                    (None, None, None) => "not observed",
                }),
                esc(t.and_then(|t| t.last_scrape.as_deref()).unwrap_or("–")),
                t.and_then(|t| t.series)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "–".into()),
                esc(t
                    .map(|t| t.last_error.as_str())
                    .or(n.error.as_deref())
                    .unwrap_or("")),
                esc(&labels.join(", ")),
            );
        }
        h.push_str("</table>");
    }
}

/// A service's observed series are out of balance when the most loaded
/// node carries more than this many times the mean (per unit of node
/// weight): placement keeps max/mean near 1.02 once weights are learned,
/// so 1.5 means something placement does not see (an exporter that grew
/// between observations, a hand edit, targets placed by count alone).
pub const IMBALANCE_LIMIT: f64 = 1.5;

/// Everything that needs a person, first.
fn problems(h: &mut String, services: &[ServiceStatus], now: u64) {
    let list: Vec<String> = services
        .iter()
        .flat_map(|s| service_problems(s, now))
        .collect();
    if list.is_empty() {
        h.push_str("<p class=ok id=problems>No problems.</p>");
    } else {
        h.push_str("<h2>Problems</h2><ul class=problems id=problems>");
        for p in list {
            let _ = write!(h, "<li class=bad>{p}</li>");
        }
        h.push_str("</ul>");
    }
}

/// The problems of one service, as HTML list items: failed pass, script
/// edit not in use, nodes not up, nodes not answering, audit states,
/// series out of balance, oversized targets.
fn service_problems(s: &ServiceStatus, now: u64) -> Vec<String> {
    let name = esc(&s.name);
    let mut list = Vec::new();
    if let Some(p) = s.last_pass.as_ref().filter(|p| p.result != "ok") {
        list.push(format!(
            "<b>{name}</b>: last pass {}: {}",
            esc(p.result),
            esc(p.error.as_deref().unwrap_or(""))
        ));
    }
    if let Some(e) = &s.script_state.error {
        list.push(format!("<b>{name}</b>: script edit not in use: {}", esc(e)));
    }
    let unhealthy: Vec<String> = s
        .health
        .iter()
        .flatten()
        .filter(|n| n.state != "up")
        .map(|n| {
            let why = n.last_error.as_deref().map(|e| format!(" ({})", esc(e)));
            format!(
                "node {} is {}{}",
                esc(&n.node),
                esc(&health_state(n, now)),
                why.unwrap_or_default()
            )
        })
        .collect();
    list.extend(summarized(&name, "nodes not up", unhealthy));
    if let Some(o) = &s.observation {
        list.extend(observation_problems(&name, o));
        list.extend(imbalance(s, o).map(|i| format!("<b>{name}</b>: {}", i.describe())));
    }
    if let Some(c) = s.current.as_ref().filter(|c| c.oversized_count > 0) {
        list.push(format!(
            "<b>{name}</b>: {}",
            oversized_line(c, s.observation.as_deref())
        ));
    }
    list
}

/// Nodes that did not answer, and every audit state but ok and pending.
fn observation_problems(name: &str, o: &ServiceObservation) -> Vec<String> {
    let silent: Vec<String> = o
        .nodes
        .iter()
        .filter_map(|n| {
            Some(format!(
                "cannot observe {}: {}",
                esc(&n.node),
                esc(n.error.as_deref()?)
            ))
        })
        .collect();
    let mut list = summarized(name, "nodes not answering observation", silent);
    for (state, samples) in &o.audit.samples {
        if matches!(state, TargetState::Pending) {
            continue;
        }
        let n = o.audit.counts.get(state).copied().unwrap_or(0);
        let first: Vec<String> = samples.iter().take(3).map(|x| esc(&x.target)).collect();
        list.push(format!(
            "<b>{name}</b>: {n} target(s) {}: {}{}",
            state.as_str(),
            first.join(", "),
            if n > first.len() { ", …" } else { "" }
        ));
    }
    list
}

/// How far the observed series of a service's nodes are from even.
#[derive(Debug, Clone, PartialEq)]
pub struct Imbalance {
    /// Most loaded node's series per unit of weight over the mean.
    pub ratio: f64,
    pub node: String,
    pub series: u64,
    /// Mean series per node (per unit of weight).
    pub mean: f64,
}

impl Imbalance {
    fn describe(&self) -> String {
        format!(
            "series out of balance: max/mean {:.2} above {IMBALANCE_LIMIT} ({} has {} series, the mean is {:.0})",
            self.ratio,
            esc(&self.node),
            self.series,
            self.mean
        )
    }
}

/// The imbalance of `s`'s last observation over the nodes of its plan
/// (drained and old owners left out), when above [`IMBALANCE_LIMIT`].
fn imbalance(s: &ServiceStatus, o: &ServiceObservation) -> Option<Imbalance> {
    let loads: Vec<(&str, u64, u32)> = o
        .nodes
        .iter()
        .filter(|n| o.assignment.node_index(&n.node).is_some())
        .filter_map(|n| {
            let weight = s.node_weights.get(&n.node).copied().unwrap_or(1).max(1);
            Some((n.node.as_str(), n.series?, weight))
        })
        .collect();
    series_imbalance(&loads).filter(|i| i.ratio > IMBALANCE_LIMIT)
}

/// Max/mean of `(node, series, weight)` in series per unit of weight;
/// `None` for fewer than two nodes or no series at all.
pub fn series_imbalance(loads: &[(&str, u64, u32)]) -> Option<Imbalance> {
    if loads.len() < 2 {
        return None;
    }
    let per = |series: u64, weight: u32| series as f64 / f64::from(weight.max(1));
    let mean = loads.iter().map(|&(_, s, w)| per(s, w)).sum::<f64>() / loads.len() as f64;
    let &(node, series, weight) = loads
        .iter()
        .max_by(|a, b| per(a.1, a.2).total_cmp(&per(b.1, b.2)))?;
    (mean > 0.0).then(|| Imbalance {
        ratio: per(series, weight) / mean,
        node: node.to_string(),
        series,
        mean,
    })
}

/// Oversized targets with their weight and, when observed, their series.
fn oversized_line(c: &crate::pass::PassReport, o: Option<&ServiceObservation>) -> String {
    let ring = c.assignment.nodes.len().max(1) as u64;
    let weighted = c.nodes.iter().any(|n| n.weight.is_some());
    let total: u64 = c
        .nodes
        .iter()
        .map(|n| n.weight.unwrap_or(n.count as u64))
        .sum();
    let fair = total * c.replicas.min(c.assignment.nodes.len()) as u64 / ring;
    let unit = if weighted { "series" } else { "targets" };
    let first: Vec<String> = c
        .oversized
        .iter()
        .take(5)
        .map(|t| {
            let series = o.and_then(|o| {
                o.nodes
                    .iter()
                    .find_map(|n| n.observed.as_ref()?.target(t)?.series)
            });
            match series {
                Some(v) => format!("{} ({v} series)", esc(t)),
                None => esc(t),
            }
        })
        .collect();
    format!(
        "{} target(s) heavier than a node's fair share of {fair} {unit}, each placed whole: {}{}",
        c.oversized_count,
        first.join(", "),
        if c.oversized_count > first.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// One problem line per item, or, for many, one line with how many and the
/// first few: a rack down must not push everything else off the page.
fn summarized(service: &str, many: &str, items: Vec<String>) -> Vec<String> {
    const FIRST: usize = 5;
    if items.len() <= FIRST {
        return items
            .into_iter()
            .map(|i| format!("<b>{service}</b>: {i}"))
            .collect();
    }
    vec![format!(
        "<b>{service}</b>: {} {many}: {}; …",
        items.len(),
        items[..FIRST].join("; ")
    )]
}

/// `failing since <t>`, `down since <t>`: a health-checked node's state
/// with the moment it began.
fn health_state(n: &NodeStatus, now: u64) -> String {
    let since = |t: Option<u64>| {
        t.map(|t| format!(" since {} ({})", rfc3339(t), ago(Some(t), now)))
            .unwrap_or_default()
    };
    match n.state {
        "failing" => format!("failing{}", since(n.failing_since)),
        "down" => format!("down{}", since(n.last_change.or(n.failing_since))),
        "recovering" => format!("recovering, down{}", since(n.last_change)),
        other => other.to_string(),
    }
}

fn audit_cell(counts: Option<&BTreeMap<TargetState, usize>>) -> String {
    let Some(counts) = counts else {
        return "<span class=muted>not observed</span>".into();
    };
    let parts: Vec<String> = TargetState::ALL
        .iter()
        .filter_map(|s| {
            let n = counts.get(s).copied().unwrap_or(0);
            (n > 0 || *s == TargetState::Ok).then(|| format!("{} {n}", s.as_str()))
        })
        .collect();
    parts.join(", ")
}

fn overview(h: &mut String, services: &[ServiceStatus], now: u64) {
    h.push_str(
        "<h2>Services</h2><table id=services><tr><th>service</th><th>last pass</th>\
         <th>next run</th><th>script</th><th class=num>targets</th><th class=num>nodes</th>\
         <th>audit</th></tr>",
    );
    for s in services {
        let (pass, class) = match &s.last_pass {
            None => ("not yet".to_string(), ""),
            Some(p) => (
                format!(
                    "{} {} ({} ms)",
                    esc(p.result),
                    ago(Some(p.finished_at), now),
                    p.duration_ms
                ),
                if p.result == "ok" { "" } else { " class=bad" },
            ),
        };
        let script = match (&s.script_state.version, &s.script_state.error) {
            (_, Some(_)) => "<span class=bad>edit does not compile</span>".to_string(),
            (Some(v), None) => format!("version {}", esc(&v[..8.min(v.len())])),
            (None, None) => "not compiled".into(),
        };
        let targets = s.current.as_ref().map(|c| c.targets).unwrap_or(0);
        let nodes = node_rows(s, now);
        let live = s.current.as_ref().map_or(0, |c| c.assignment.nodes.len());
        let nodes = format!("{live}/{}", nodes.len());
        let _ = write!(
            h,
            "<tr><td><a href=\"#svc-{id}\">{name}</a></td><td{class}>{pass}</td><td>{next}</td>\
             <td>{script}</td><td class=num>{targets}</td><td class=num>{nodes}</td><td>{audit}</td></tr>",
            id = esc(&s.name),
            name = esc(&s.name),
            next = esc(s.next_run.as_deref().unwrap_or("on triggers only")),
            audit = audit_cell(s.audit.as_ref()),
        );
    }
    h.push_str("</table>");
}

/// One row of a service's node table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow<'a> {
    pub node: &'a str,
    /// `up`, `failing since <t>`, `down since <t>`, `drained`, …
    pub state: String,
    /// Down, failing, or not answering observation.
    pub bad: bool,
    /// Its part in the plan in effect (`None`: out of it, e.g. down).
    pub plan: Option<&'a crate::pass::NodeReport>,
    /// When it last had its file delivered.
    pub delivered_at: Option<u64>,
}

/// Every node of `s`, in the plan or not (a down node stays listed), with
/// its state.
pub fn node_rows(s: &ServiceStatus, now: u64) -> Vec<NodeRow<'_>> {
    let current = s.current.as_ref();
    let mut names: std::collections::BTreeSet<&str> = current
        .iter()
        .flat_map(|c| c.nodes.iter().map(|n| n.node.as_str()))
        .collect();
    names.extend(s.health.iter().flatten().map(|n| n.node.as_str()));
    let drained = current
        .and_then(|c| c.handover.as_ref())
        .map(|h| &h.drained);
    let observed = s.observation.as_deref();
    names
        .into_iter()
        .map(|node| {
            let health = s.health.iter().flatten().find(|x| x.node == node);
            let drain = drained.into_iter().flatten().find(|d| d.node == node);
            let silent = observed
                .and_then(|o| o.nodes.iter().find(|r| r.node == node))
                .is_some_and(|r| r.error.is_some());
            let mut state = match drain {
                Some(d) if d.targets_left > 0 => format!("draining, {} left", d.targets_left),
                Some(_) => "drained".to_string(),
                None => health.map_or_else(|| "not checked".into(), |h| health_state(h, now)),
            };
            if let (Some(_), Some(h)) = (drain, health.filter(|h| h.state != "up")) {
                state = format!("{state}; {}", health_state(h, now));
            }
            let plan = current.and_then(|c| c.nodes.iter().find(|n| n.node == node));
            NodeRow {
                node,
                bad: silent || health.is_some_and(|h| h.state != "up"),
                state,
                plan,
                delivered_at: plan
                    .and_then(|p| p.delivered_at)
                    .or_else(|| s.delivered_at.get(node).copied()),
            }
        })
        .collect()
}

/// One row per node: state, planned targets, observed series and audit,
/// last delivery.
fn service_nodes(h: &mut String, s: &ServiceStatus, now: u64) {
    let _ = write!(
        h,
        "<h2 id=\"svc-{id}\">{name}</h2>",
        id = esc(&s.name),
        name = esc(&s.name)
    );
    let Some(current) = &s.current else {
        h.push_str("<p class=muted>No successful pass yet.</p>");
        return;
    };
    let observed = s.observation.as_deref();
    if let Some(o) = observed {
        let _ = write!(
            h,
            "<p class=muted>observed {} (job {}, {} ms)</p>",
            ago(Some(o.at), now),
            esc(&o.job),
            o.duration_ms
        );
    }
    if let Some(line) = current.handover.as_ref().and_then(handover_line) {
        let _ = write!(h, "<p>{}</p>", esc(&line));
    }
    h.push_str(
        "<table class=nodes><tr><th>node</th><th>state</th><th class=num>targets</th>\
         <th class=num>active</th><th class=num>series</th><th class=num>missing</th>\
         <th class=num>extra</th><th class=num>down</th><th>delivery</th>\
         <th>last delivered</th><th>file</th></tr>",
    );
    for row in node_rows(s, now) {
        node_row(h, &row, observed, now);
    }
    h.push_str("</table>");
}

fn node_row(h: &mut String, row: &NodeRow<'_>, observed: Option<&ServiceObservation>, now: u64) {
    let audit = observed.and_then(|o| o.audit.nodes.iter().find(|a| a.node == row.node));
    let result = observed.and_then(|o| o.nodes.iter().find(|r| r.node == row.node));
    let num = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
    let bad = |v: Option<usize>| if v.unwrap_or(0) > 0 { " bad" } else { "" };
    let (missing, extra, down) = (
        audit.map(|a| a.missing),
        audit.map(|a| a.extra),
        audit.map(|a| a.down),
    );
    let active = audit
        .and_then(|a| a.active)
        .or_else(|| Some(result?.observed.as_ref()?.targets.len()));
    let delivery = match row.plan {
        Some(n) => n.result.map(|r| r.as_str()).unwrap_or("file written"),
        None => "not in the plan",
    };
    let _ = write!(
        h,
        "<tr{row_class}><td>{node}</td><td>{state}</td><td class=num>{count}</td>\
         <td class=num>{active}</td><td class=num>{series}</td>\
         <td class=\"num{mb}\">{missing}</td><td class=\"num{eb}\">{extra}</td>\
         <td class=\"num{db}\">{down}</td><td>{delivery}</td><td>{delivered}</td><td>{file}</td></tr>",
        row_class = if row.bad { " class=bad" } else { "" },
        node = esc(row.node),
        state = esc(&row.state),
        count = num(row.plan.map(|n| n.count)),
        active = num(active),
        series = result
            .and_then(|r| r.series)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "–".into()),
        mb = bad(missing),
        missing = num(missing),
        eb = bad(extra),
        extra = num(extra),
        db = bad(down),
        down = num(down),
        delivery = esc(delivery),
        delivered = row
            .delivered_at
            .map(|t| format!("{} ({})", rfc3339(t), ago(Some(t), now)))
            .unwrap_or_else(|| "never".into()),
        file = esc(row.plan.map(|n| n.file.as_str()).unwrap_or("–")),
    );
}

/// Pending handovers and drained nodes of a service, when there are any:
/// `2 handovers pending (timeout 18 s) · drained: a:1 (draining, 3 left)`.
fn handover_line(r: &crate::pass::handover::HandoverReport) -> Option<String> {
    let mut parts = Vec::new();
    if r.pending > 0 {
        parts.push(format!(
            "{} handover{} pending (timeout {} s)",
            r.pending,
            if r.pending == 1 { "" } else { "s" },
            r.timeout_s
        ));
    }
    if !r.drained.is_empty() {
        let nodes: Vec<String> = r
            .drained
            .iter()
            .map(|d| match d.targets_left {
                0 => format!("{} ({})", d.node, d.state),
                n => format!("{} ({}, {n} left)", d.node, d.state),
            })
            .collect();
        parts.push(format!("drained: {}", nodes.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::observe::Assignment;

    #[test]
    fn handovers_and_drains_show_in_one_line() {
        use crate::pass::handover::{DrainState, HandoverReport};
        let mut r = HandoverReport {
            mode: crate::shard::handover::Mode::MakeBeforeBreak,
            timeout_s: 18.0,
            pending: 0,
            pending_samples: Vec::new(),
            ended: Vec::new(),
            drained: Vec::new(),
            records: Vec::new(),
        };
        assert_eq!(handover_line(&r), None);
        r.pending = 2;
        r.drained = vec![
            DrainState {
                node: "a:1".into(),
                state: "draining",
                targets_left: 3,
                live: true,
            },
            DrainState {
                node: "b:1".into(),
                state: "drained",
                targets_left: 0,
                live: true,
            },
        ];
        assert_eq!(
            handover_line(&r).as_deref(),
            Some(
                "2 handovers pending (timeout 18 s) · drained: a:1 (draining, 3 left), b:1 (drained)"
            )
        );
    }

    /// The plan of [`three_nodes`]: a:1 with two targets, b:1 draining.
    fn plan_of(assignment: Arc<Assignment>) -> crate::pass::PassReport {
        use crate::pass::handover::{DrainState, HandoverReport};
        let node = |n: &str, count| crate::pass::NodeReport {
            node: n.into(),
            file: format!("web_{n}.json"),
            hash: String::new(),
            count,
            changed: false,
            moved_in: 0,
            moved_out: 0,
            weight: None,
            groups: None,
            delivered: true,
            result: None,
            attempts: 1,
            error: None,
            delivered_at: Some(100),
        };
        let handover = HandoverReport {
            mode: crate::shard::handover::Mode::MakeBeforeBreak,
            timeout_s: 18.0,
            pending: 1,
            pending_samples: Vec::new(),
            ended: Vec::new(),
            drained: vec![DrainState {
                node: "b:1".into(),
                state: "draining",
                targets_left: 1,
                live: true,
            }],
            records: Vec::new(),
        };
        crate::pass::PassReport {
            name: "web".into(),
            targets: 2,
            invalid: 0,
            invalid_samples: Vec::new(),
            duplicates: 0,
            replicas: 1,
            nodes: vec![node("a:1", 2), node("b:1", 1)],
            departed: Vec::new(),
            removed: Vec::new(),
            dry_run: false,
            duration_ms: 1,
            phases_ms: Default::default(),
            delivery_runs_s: Vec::new(),
            oversized: vec!["t:1".into()],
            oversized_count: 1,
            deferred_moves: 0,
            affinity: None,
            rules: None,
            assignment,
            sd: None,
            handover: Some(handover),
            plan_hash: String::new(),
            epoch: None,
            placement_notes: Default::default(),
        }
    }

    /// A service of three nodes (c:1 weighs 2) whose plan has a:1 and b:1
    /// (c:1 is down), b:1 drained and still holding one target, and an
    /// observation of `series` on a:1 and c:1.
    fn three_nodes(series: &[(&str, u64)]) -> ServiceStatus {
        use crate::membership::NodeStatus;
        let config = crate::config::Config::parse(
            std::path::Path::new("/etc/promshard/promshard.yaml"),
            "services:\n  - name: web\n    script: web.rhai\n    nodes: [\"a:1\", \"b:1\", {addr: \"c:1\", weight: 2}]\n",
        )
        .expect("config");
        let mut s = ServiceStatus::new(&config.services[0]);
        s.node_weights = [("a:1".into(), 1), ("b:1".into(), 1), ("c:1".into(), 2)].into();
        let assignment = Arc::new(Assignment::from_lists(&[("a:1", &["t:1", "u:1"])]));
        s.current = Some(plan_of(Arc::clone(&assignment)));
        let status = |n: &str, state, since: Option<u64>| NodeStatus {
            node: n.into(),
            state,
            in_ring: state != "down",
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_change: since,
            failing_since: since,
            last_change_reason: None,
            last_error: None,
        };
        s.health = Some(vec![
            status("a:1", "up", None),
            status("b:1", "up", None),
            status("c:1", "down", Some(0)),
        ]);
        let nodes = series
            .iter()
            .map(|&(n, v)| crate::observe::NodeResult {
                node: n.into(),
                at: 0,
                observed: Some(Default::default()),
                series: Some(v),
                head_series: None,
                in_grace: false,
                error: None,
            })
            .collect();
        s.observation = Some(Arc::new(ServiceObservation {
            at: 0,
            duration_ms: 0,
            job: "web".into(),
            nodes,
            replicas: 1,
            audit: Default::default(),
            assignment,
        }));
        s
    }

    #[test]
    fn down_and_drained_nodes_stay_listed_with_their_state() {
        let s = three_nodes(&[]);
        let rows: Vec<(&str, String, bool)> = node_rows(&s, 60)
            .into_iter()
            .map(|r| (r.node, r.state, r.bad))
            .collect();
        assert_eq!(
            rows,
            [
                ("a:1", "up".to_string(), false),
                ("b:1", "draining, 1 left".to_string(), false),
                (
                    "c:1",
                    "down since 1970-01-01T00:00:00Z (1 min ago)".to_string(),
                    true
                ),
            ]
        );
        let page = render(&[s], None, None, 60);
        assert!(
            page.contains("<td class=num>1/3</td>"),
            "live/total: {page}"
        );
        assert!(
            page.contains("1970-01-01T00:01:40Z"),
            "last delivery: {page}"
        );
        assert!(
            page.contains("node c:1 is down since 1970-01-01T00:00:00Z"),
            "{page}"
        );
    }

    #[test]
    fn uneven_series_and_oversized_targets_are_problems() {
        // One node of the plan: nothing to compare.
        assert_eq!(series_imbalance(&[("a", 5000, 1)]), None);
        let i =
            series_imbalance(&[("a", 5000, 1), ("b", 120, 1), ("c", 2530, 1)]).expect("3 nodes");
        assert_eq!((i.node.as_str(), i.series), ("a", 5000));
        assert!((i.ratio - 5000.0 / 2550.0).abs() < 1e-9, "{i:?}");
        assert_eq!(
            i.describe(),
            "series out of balance: max/mean 1.96 above 1.5 (a has 5000 series, the mean is 2550)"
        );
        // A node of weight 2 carrying twice the series is even.
        let even = series_imbalance(&[("a", 1000, 1), ("c", 2000, 2)]).expect("2 nodes");
        assert!((even.ratio - 1.0).abs() < 1e-9, "{even:?}");
        // Only the nodes of the plan count (b:1 is drained, c:1 down).
        let s = three_nodes(&[("a:1", 5000), ("b:1", 0)]);
        let problems = service_problems(&s, 60);
        assert!(
            !problems.iter().any(|p| p.contains("out of balance")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains(
                "1 target(s) heavier than a node's fair share of 3 targets, each placed whole: t:1"
            )),
            "{problems:?}"
        );
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn where_names_the_affinity_group_escaped() {
        let answer = WhereAnswer {
            service: "web".into(),
            target: "10.0.0.1:9100".into(),
            assigned: vec!["p1:9090".into()],
            files: vec!["web_p1_9090.json".into()],
            group: Some("<b>billing</b>".into()),
            state: None,
            handover: Vec::new(),
            observed_at: None,
            nodes: Vec::new(),
        };
        let page = render(&[], None, Some(("10.0.0.1:9100", vec![answer])), 0);
        assert!(
            page.contains("affinity group <b>&lt;b&gt;billing&lt;/b&gt;</b>"),
            "{page}"
        );
    }

    #[test]
    fn an_empty_daemon_renders_a_page() {
        let page = render(&[], None, None, 0);
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("No problems."));
        assert!(page.ends_with("</html>"));
    }
}
