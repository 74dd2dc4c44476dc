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
use crate::observe::{TargetState, WhereAnswer};

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
    problems(&mut h, services);
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
        h.push_str(
            "<table class=where><tr><th>node</th><th>assigned</th><th>health</th>\
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
                if n.assigned {
                    "yes"
                } else {
                    "<b class=bad>no</b>"
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

/// Everything that needs a person, first.
fn problems(h: &mut String, services: &[ServiceStatus]) {
    let mut list = Vec::new();
    for s in services {
        let name = esc(&s.name);
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
                    esc(n.state),
                    why.unwrap_or_default()
                )
            })
            .collect();
        list.extend(summarized(&name, "nodes not up", unhealthy));
        if let Some(o) = &s.observation {
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
            list.extend(summarized(&name, "nodes not answering observation", silent));
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
        }
    }
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
        let nodes = s.current.as_ref().map(|c| c.nodes.len()).unwrap_or(0);
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

/// One row per node: planned targets, health, observed series and audit.
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
        "<table class=nodes><tr><th>node</th><th>health</th><th class=num>targets</th>\
         <th class=num>active</th><th class=num>series</th><th class=num>missing</th>\
         <th class=num>extra</th><th class=num>down</th><th>delivery</th><th>file</th></tr>",
    );
    for n in &current.nodes {
        let health = s
            .health
            .iter()
            .flatten()
            .find(|x| x.node == n.node)
            .map(|x| x.state)
            .unwrap_or("not checked");
        let audit = observed.and_then(|o| o.audit.nodes.iter().find(|a| a.node == n.node));
        let result = observed.and_then(|o| o.nodes.iter().find(|r| r.node == n.node));
        let num = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
        let bad = |v: Option<usize>| if v.unwrap_or(0) > 0 { " bad" } else { "" };
        let missing = audit.map(|a| a.missing);
        let extra = audit.map(|a| a.extra);
        let down = audit.map(|a| a.down);
        let row_class = if result.is_some_and(|r| r.error.is_some()) || health == "down" {
            " class=bad"
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr{row_class}><td>{node}</td><td>{health}</td><td class=num>{count}</td>\
             <td class=num>{active}</td><td class=num>{series}</td>\
             <td class=\"num{mb}\">{missing}</td><td class=\"num{eb}\">{extra}</td>\
             <td class=\"num{db}\">{down}</td><td>{delivery}</td><td>{file}</td></tr>",
            node = esc(&n.node),
            health = esc(health),
            count = n.count,
            active = num(audit.and_then(|a| a.active)),
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
            delivery = esc(n.result.map(|r| r.as_str()).unwrap_or("file written")),
            file = esc(&n.file),
        );
    }
    h.push_str("</table>");
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
    use super::*;

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
