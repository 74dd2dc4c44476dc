//! Pull delivery of rule files (any push, `none` included): a node, or a
//! sidecar next to it, fetches the set in effect.
//!
//! - `GET /rules/{service}`: `{"files": [{"name", "hash"}], "hash"}`, the
//!   set and its hash (fetch the files when the hash changed).
//! - `GET /rules/{service}/{file}`: one file, its last good version.
//!
//! Both answer from the good copies the last pass kept, which are replaced
//! atomically, so a reader never sees a torn or unchecked file.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::source::{set_hash, store_dir};
use crate::daemon::Shared;
use crate::output::content_hash;

type App = State<Arc<Shared>>;

fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{message}\n")).into_response()
}

/// The store of `service`, if it is running with `rules:`.
async fn store(shared: &Shared, service: &str) -> Result<std::path::PathBuf, Response> {
    match shared.service(service).await {
        Some(s) if s.rules.is_some() => Ok(store_dir(&shared.config().out_dir, service)),
        Some(_) => Err(not_found(format!("service {service:?} has no rules"))),
        None => Err(not_found(format!("no service {service:?}"))),
    }
}

/// `GET /rules/{service}`.
pub async fn list(State(shared): App, Path(service): Path<String>) -> Response {
    let dir = match store(&shared, &service).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let files = tokio::task::spawn_blocking(move || {
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let bytes = std::fs::read(e.path()).ok()?;
                (!name.starts_with('.')).then(|| (name, content_hash(&bytes)))
            })
            .collect();
        files.sort();
        files
    })
    .await
    .unwrap_or_default();
    let body = serde_json::json!({
        "files": files.iter().map(|(n, h)| serde_json::json!({"name": n, "hash": h})).collect::<Vec<_>>(),
        "hash": set_hash(files.iter().map(|(n, h)| (n.as_str(), h.as_str()))),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /rules/{service}/{file}`.
pub async fn file(State(shared): App, Path((service, file)): Path<(String, String)>) -> Response {
    let dir = match store(&shared, &service).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    if crate::plan::check_file_name(&file).is_err() {
        return not_found(format!("no rule file {file:?}"));
    }
    let path = dir.join(&file);
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/yaml")], bytes).into_response(),
        _ => not_found(format!("service {service:?} has no rule file {file:?}")),
    }
}
