//! The HTTP API (axum): `/metrics`, `/healthz`, `/readyz`,
//! `/api/v1/services[/{name}/plan|audit]`, `/api/v1/where`,
//! `POST /api/v1/services/{name}/dispatch`, `/sd/{service}/{node}` for
//! Prometheus `http_sd_configs`, `/rules/{service}[/{file}]` (rule files
//! for nodes that pull them), and the status page at `/`.
//!
//! Reads only: every handler looks at [`Shared`] (`/sd` at the plan of the
//! last successful pass, kept in memory); the one mutating call only wakes a
//! runner. Mutating calls need
//! `Authorization: Bearer <api_token>` when a token is configured, and are
//! refused outright on a non-loopback listener without one. TLS, basic
//! auth and extra headers come from `web_config_file` ([`super::web`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use super::web::{Incoming, Peer};
use crate::daemon::{ServiceStatus, Shared};
use crate::observe;
use crate::rules::source::{read_stored, store_dir, stored_set};

type App = State<Arc<Shared>>;

/// Serve the API until `shutdown` is cancelled, over TLS and behind basic
/// auth when the web config says so ([`super::web`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let incoming = match Incoming::start(listener, Arc::clone(&shared), shutdown.clone()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(listen = ?local, error = %e, "HTTP server failed");
            return;
        }
    };
    let guard = axum::middleware::from_fn_with_state(Arc::clone(&shared), super::web::guard);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}/plan", get(plan))
        .route("/api/v1/services/{name}/dispatch", post(dispatch))
        .route("/api/v1/services/{name}/audit", get(audit))
        .route("/api/v1/where", get(where_is))
        .route("/api/v1/nodes/{node}/drain", post(drain))
        .route("/api/v1/nodes/{node}/undrain", post(undrain))
        .route("/", get(status_page))
        .route("/sd/{service}/{node}", get(http_sd))
        .route("/rules/{service}", get(rules_list))
        .route("/rules/{service}/{file}", get(rules_file))
        .layer(guard)
        .with_state(shared);
    let served = axum::serve(incoming, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(e) = served.await {
        tracing::error!(listen = ?local, error = %e, "HTTP server failed");
    }
}

/// A JSON answer, every URL in it redacted ([`redact_urls`]): these
/// answers need no token, and error messages quote the URLs scripts fetched.
fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let mut value = serde_json::to_value(value).unwrap_or_default();
    redact_strings(&mut value);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&value).unwrap_or_default(),
    )
        .into_response()
}

fn redact_strings(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains("://") => *s = redact_urls(s),
        Value::Array(items) => items.iter_mut().for_each(redact_strings),
        Value::Object(map) => map.values_mut().for_each(redact_strings),
        _ => {}
    }
}

/// `text` with the credentials of every URL in it replaced by `***`: the
/// user and password (`https://***@host/`) and the query string
/// (`/api?***`), where tokens usually travel.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let url_len = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(rest.len() - at);
        // Punctuation right after a URL in a message is not part of it.
        let url = rest[scheme_start..at + url_len].trim_end_matches([')', ']', ',', ';', ':', '.']);
        out.push_str(&rest[..scheme_start]);
        let (head, after) = url.split_at(url.find("://").map_or(0, |i| i + 3));
        let authority_len = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, path) = after.split_at(authority_len);
        out.push_str(head);
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("***");
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        match path.split_once('?') {
            Some((p, query)) => {
                out.push_str(p);
                out.push_str("?***");
                if let Some(i) = query.find('#') {
                    out.push_str(&query[i..]);
                }
            }
            None => out.push_str(path),
        }
        rest = &rest[scheme_start + url.len()..];
    }
    out.push_str(rest);
    out
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// `/metrics` in the format the `Accept` header asks for (see
/// [`Format::negotiate`](crate::metrics::Format::negotiate)).
async fn metrics(State(shared): App, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        shared.metrics.encode(format),
    )
        .into_response()
}

async fn readyz(State(shared): App) -> Response {
    match shared.unready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn services(State(shared): App) -> Response {
    let list = shared.statuses().await;
    #[derive(serde::Serialize)]
    struct Out {
        /// With `ha:`: this instance's role, epoch and the leader.
        #[serde(skip_serializing_if = "Option::is_none")]
        ha: Option<crate::ha::HaStatus>,
        services: Vec<crate::daemon::ServiceStatus>,
    }
    // The full plan is at /plan; keep this listing small.
    let services = list
        .into_iter()
        .map(|mut s| {
            if let Some(c) = &mut s.current {
                c.invalid_samples.clear();
            }
            s
        })
        .collect();
    let ha = shared.ha.as_ref().map(|h| h.status());
    json(StatusCode::OK, &Out { ha, services })
}

async fn plan(State(shared): App, Path(name): Path<String>) -> Response {
    match shared.status(&name) {
        None => error(StatusCode::NOT_FOUND, format!("no service {name:?}")),
        Some(s) => match s.current {
            None => error(
                StatusCode::NOT_FOUND,
                format!("service {name:?} has no successful pass yet"),
            ),
            Some(report) => json(StatusCode::OK, &report),
        },
    }
}

/// `?target=host:port[&service=S]`.
#[derive(serde::Deserialize)]
struct WhereQuery {
    target: String,
    service: Option<String>,
}

/// `target` in every service of `statuses` (or only `only`) that has it
/// assigned or active somewhere.
fn where_answers(
    statuses: &[ServiceStatus],
    target: &str,
    only: Option<&str>,
) -> Vec<observe::WhereAnswer> {
    statuses
        .iter()
        .filter(|s| only.is_none_or(|n| n == s.name))
        .filter_map(|s| {
            let current = s.current.as_ref()?;
            // An observation only counts if it audited this very plan.
            let observation = s
                .observation
                .as_deref()
                .filter(|o| Arc::ptr_eq(&o.assignment, &current.assignment));
            let input = observe::WhereInput {
                service: &s.name,
                assignment: &current.assignment,
                pending: current.pending_handovers(),
                observation,
            };
            observe::locate(&input, target)
        })
        .collect()
}

/// Which nodes a target is assigned to, per service, and what each node
/// reported of it in the last observation.
async fn where_is(State(shared): App, Query(q): Query<WhereQuery>) -> Response {
    let target = q.target.trim();
    let statuses = shared.statuses().await;
    if let Some(name) = &q.service
        && !statuses.iter().any(|s| &s.name == name)
    {
        return error(StatusCode::NOT_FOUND, format!("no service {name:?}"));
    }
    let services = where_answers(&statuses, target, q.service.as_deref());
    let status = if services.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    // Shared mode: each answer names the instance that delivers it.
    let owners = (shared.ha.as_ref())
        .map(|h| h.status().owners)
        .filter(|o| !o.is_empty());
    let Some(owners) = owners else {
        return json(
            status,
            &serde_json::json!({ "target": target, "services": services }),
        );
    };
    let services: Vec<serde_json::Value> = services
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            if let Some(o) = owners.get(&a.service) {
                v["owner"] = serde_json::json!(o.instance);
            }
            v
        })
        .collect();
    json(
        status,
        &serde_json::json!({ "target": target, "services": services }),
    )
}

/// The last observation of a service: audit counts, per-node figures and
/// the first targets of each non-ok state.
async fn audit(State(shared): App, Path(name): Path<String>) -> Response {
    let Some(s) = shared.status(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no service {name:?}"));
    };
    let observed = shared
        .service(&name)
        .await
        .is_some_and(|svc| svc.observe.is_some());
    match s.observation {
        Some(o) => json(StatusCode::OK, &*o),
        None if observed => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {name:?} has not been observed yet"),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            format!("service {name:?} has no observe: settings"),
        ),
    }
}

/// `/?target=host:port` adds a `where` answer on top of the page.
#[derive(serde::Deserialize)]
struct PageQuery {
    target: Option<String>,
}

async fn status_page(State(shared): App, Query(q): Query<PageQuery>) -> Response {
    let statuses = shared.statuses().await;
    let target = q.target.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let found = target.map(|t| (t, where_answers(&statuses, t, None)));
    let ha = shared.ha.as_ref().map(|h| h.status());
    let page = super::status_page::render(
        &statuses,
        ha.as_ref(),
        found,
        crate::store::state::unix_now(),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

/// Compare secrets in time independent of where they differ.
fn same_secret(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let config = shared.config();
    match &config.api_token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim());
            if given.is_some_and(|g| same_secret(g, token)) {
                Ok(())
            } else {
                Err(Box::new(error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token",
                )))
            }
        }
        None if config.listen.ip().is_loopback() => Ok(()),
        None => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "mutating calls are disabled on a non-loopback listener without api_token",
        ))),
    }
}

async fn dispatch(State(shared): App, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return *denied;
    }
    if shared.trigger(&name, "api").await {
        json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "service": name, "dispatched": true }),
        )
    } else {
        error(StatusCode::NOT_FOUND, format!("no service {name:?}"))
    }
}

async fn drain(state: App, Path(node): Path<String>, headers: HeaderMap) -> Response {
    set_drain(state, node, headers, true).await
}

async fn undrain(state: App, Path(node): Path<String>, headers: HeaderMap) -> Response {
    set_drain(state, node, headers, false).await
}

/// Drain or undrain a node in every service that has it; 404 when none does.
async fn set_drain(State(shared): App, node: String, headers: HeaderMap, drain: bool) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return *denied;
    }
    let services = match super::drain::drain_node(&shared, &node, drain).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if services.is_empty() && drain {
        return error(
            StatusCode::NOT_FOUND,
            format!("no service has node {node:?}"),
        );
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "node": node, "drained": drain, "services": services }),
    )
}

/// The node's targets in the plan in effect, in http_sd format. Served
/// from the last successful pass in memory, never from the files, which the
/// next pass may be replacing at this very moment.
async fn http_sd(State(shared): App, Path((service, node)): Path<(String, String)>) -> Response {
    let Some(status) = shared.status(&service) else {
        return error(StatusCode::NOT_FOUND, format!("no service {service:?}"));
    };
    let Some(current) = status.current else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {service:?} has no successful pass yet"),
        );
    };
    // ha: only ever the plan the leader delivered.
    let snapshot = match (&shared.ha, current.sd.clone()) {
        (Some(ha), _) => match ha.sd_answer(&service, &current) {
            Ok(sd) => sd,
            Err(why) => return error(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (None, Some(sd)) => sd,
        (None, None) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service {service:?} has no successful pass yet"),
            );
        }
    };
    let config = shared.config();
    let seen = status.nodes_seen.contains(&node)
        || config
            .service(&service)
            .is_some_and(|s| s.nodes.iter().any(|n| n.addr == node));
    let (out_dir, service_name, node_name) =
        (config.out_dir.clone(), service.clone(), node.clone());
    // Rendering a big node and reading the state are blocking work.
    let answer = tokio::task::spawn_blocking(move || match snapshot.render(&node_name) {
        Some(body) => Some(body),
        // A node out of the ring (down, or lost its targets) gets an empty
        // list, not an error: Prometheus keeps its last targets when a
        // refresh fails, and would scrape them twice.
        None if seen
            || crate::store::state::ServiceState::load(&out_dir, &service_name)
                .nodes
                .contains_key(&node_name) =>
        {
            Some(b"[]".to_vec())
        }
        None => None,
    })
    .await;
    match answer {
        Ok(Some(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("service {service:?} has no node {node:?}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The good copies of `service`'s rule files, if it runs with `rules:`.
async fn rules_store(shared: &Shared, service: &str) -> Result<std::path::PathBuf, Response> {
    match shared.service(service).await {
        Some(s) if s.rules.is_some() => Ok(store_dir(&shared.config().out_dir, service)),
        Some(_) => Err(error(
            StatusCode::NOT_FOUND,
            format!("service {service:?} has no rules"),
        )),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no service {service:?}"),
        )),
    }
}

/// `GET /rules/{service}`: `{"files": [{"name", "hash"}], "hash"}`, the
/// set in effect (a puller fetches the files when the hash changed).
/// Answered from the good copies, which passes replace atomically.
async fn rules_list(State(shared): App, Path(service): Path<String>) -> Response {
    let dir = match rules_store(&shared, &service).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || stored_set(&dir)).await {
        Ok((files, hash)) => {
            let files: Vec<_> = files
                .iter()
                .map(|(name, hash)| serde_json::json!({"name": name, "hash": hash}))
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"files": files, "hash": hash}),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /rules/{service}/{file}`: one rule file, its last good version.
async fn rules_file(State(shared): App, Path((service, file)): Path<(String, String)>) -> Response {
    let dir = match rules_store(&shared, &service).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let name = file.clone();
    match tokio::task::spawn_blocking(move || read_stored(&dir, &name)).await {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/yaml")], bytes).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("service {service:?} has no rule file {file:?}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn urls_lose_credentials_and_query_strings() {
        assert_eq!(
            redact_urls(
                "http_get(https://bob:s3cret@cmdb.internal:8443/api/hosts?app=web&token=t0k): HTTP 503: down"
            ),
            "http_get(https://***@cmdb.internal:8443/api/hosts?***): HTTP 503: down"
        );
        assert_eq!(
            redact_urls(
                "GET http://10.0.0.1:9090/-/healthy: connection refused; see http://x/y?a=1#frag."
            ),
            "GET http://10.0.0.1:9090/-/healthy: connection refused; see http://x/y?***#frag."
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(
            redact_urls("\"h://u@x\" and ://odd"),
            "\"h://***@x\" and ://odd"
        );
    }
}
