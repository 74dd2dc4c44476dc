//! Plain HTTP for the tests: one way to build a client (loopback only, so no
//! proxy; statuses are answers, not errors) and one way to read an answer.

use std::time::Duration;

/// A client that gives up after `timeout` and returns every status as a
/// [`Reply`]: the one promshard itself uses.
pub use promshard::http_client::agent;

/// Status, content type and body of a response.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Read a response (any status) or say why there is none.
pub fn read_reply(
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok(Reply {
        status: r.status().as_u16(),
        content_type,
        body,
    })
}

/// GET `url` with `agent`, any status.
pub fn http_get(agent: &ureq::Agent, url: &str) -> Result<Reply, String> {
    read_reply(agent.get(url).call()).map_err(|e| format!("GET {url}: {e}"))
}

/// GET `url` (3 s limit); the body of a 2xx answer.
pub fn get(url: &str) -> Result<String, String> {
    let r = http_get(&agent(Duration::from_secs(3)), url)?;
    if (200..300).contains(&r.status) {
        Ok(r.body)
    } else {
        Err(format!("{url}: {}: {}", r.status, r.body))
    }
}
