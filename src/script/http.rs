//! HTTP requests of scripts: `http_get` (GET, a non-2xx answer is an
//! error), `http_request` (any method, a body, a private CA, a client
//! certificate, a bearer token file; the status is an answer) and the
//! requests of `http_sd_configs`, all through [`send`].
//!
//! Certificate, key and token files are read like `read_file`: only inside
//! the script's directory or `allowed_dirs`. A body is bounded by
//! `max_string_size` while it is read, and the timeout by what is left of
//! the call's deadline (a native call cannot be stopped by `on_progress`).

use std::time::{Duration, Instant};

use rhai::{Dynamic, Map};

use super::host::{DEFAULT_HTTP_TIMEOUT, HostContext, read_text};

/// One request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// PEM files, read inside the allowed directories.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Sent as `Authorization: Bearer <content>` (trimmed).
    pub bearer_token_file: Option<String>,
    pub timeout: Option<Duration>,
    /// Redirects followed (default 5).
    pub max_redirects: Option<u32>,
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case; repeated headers joined with `, `.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The answer as a Rhai map `#{status, headers, body}`.
    pub fn into_map(self) -> Map {
        let mut headers = Map::new();
        for (k, v) in self.headers {
            headers.insert(k.into(), v.into());
        }
        let mut m = Map::new();
        m.insert("status".into(), (self.status as i64).into());
        m.insert("headers".into(), headers.into());
        m.insert("body".into(), self.body.into());
        m
    }
}

/// Parse a timeout given as seconds or as a duration text (`"500ms"`).
pub fn parse_timeout(what: &str, value: &Dynamic) -> Result<Duration, String> {
    let d = if let Ok(secs) = value.as_int() {
        (secs > 0).then(|| Duration::from_secs(secs as u64))
    } else if let Ok(secs) = value.as_float() {
        (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
    } else if let Some(text) = value.read_lock::<rhai::ImmutableString>() {
        crate::config::parse_duration(&text).ok()
    } else {
        None
    };
    d.filter(|d| !d.is_zero()).ok_or_else(|| {
        format!("{what}: timeout {value} must be seconds (a number) or a duration like \"5s\"")
    })
}

fn string_field(what: &str, key: &str, value: &Dynamic) -> Result<String, String> {
    value
        .read_lock::<rhai::ImmutableString>()
        .map(|s| s.to_string())
        .ok_or_else(|| {
            format!(
                "{what}: {key} must be a string, not a {}",
                value.type_name()
            )
        })
}

/// The options map of `http_request(#{…})`.
pub fn request_from_map(opts: &Map) -> Result<Request, String> {
    let url = match opts.get("url") {
        Some(u) => string_field("http_request", "url", u)?,
        None => return Err("http_request: url is required".into()),
    };
    let what = format!("http_request({url})");
    let mut req = Request {
        method: "GET".into(),
        url: url.clone(),
        ..Request::default()
    };
    for (key, value) in opts {
        let text = || string_field(&what, key, value);
        match key.as_str() {
            "url" => {}
            "method" => req.method = text()?.to_ascii_uppercase(),
            "body" => req.body = Some(text()?),
            "ca_file" => req.ca_file = Some(text()?),
            "cert_file" => req.cert_file = Some(text()?),
            "key_file" => req.key_file = Some(text()?),
            "bearer_token_file" => req.bearer_token_file = Some(text()?),
            "timeout" => req.timeout = Some(parse_timeout(&what, value)?),
            "headers" => {
                let map = value
                    .read_lock::<Map>()
                    .ok_or_else(|| format!("{what}: headers must be a map"))?;
                req.headers = map
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            other => {
                return Err(format!(
                    "{what}: unknown option {other:?} (expected method, url, headers, body, ca_file, cert_file, key_file, bearer_token_file, timeout)"
                ));
            }
        }
    }
    Ok(req)
}

/// The agent of one request: its timeout, redirects and TLS files.
fn agent(
    ctx: &HostContext,
    what: &str,
    req: &Request,
    timeout: Duration,
) -> Result<ureq::Agent, String> {
    let read = |key: &str, path: &Option<String>| -> Result<Option<String>, String> {
        path.as_deref()
            .map(|p| read_text(ctx, p).map_err(|e| format!("{what}: {key}: {e}")))
            .transpose()
    };
    let (ca, cert, key) = (
        read("ca_file", &req.ca_file)?,
        read("cert_file", &req.cert_file)?,
        read("key_file", &req.key_file)?,
    );
    let identity = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_bytes(), k.as_bytes())),
        (None, None) => None,
        _ => return Err(format!("{what}: cert_file and key_file go together")),
    };
    let tls = crate::http_client::tls(ca.as_deref().map(str::as_bytes), identity)
        .map_err(|e| format!("{what}: {}_file: {}", e.file, e.reason))?;
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(req.max_redirects.unwrap_or(5))
        .tls_config(tls)
        .build()
        .into())
}

/// Send `req`; `function` names the caller in errors (`http_get`,
/// `http_request`, `http_sd_configs[0]`). Any status is an answer; a
/// refused connection, a timeout or a body over the limit is an error.
pub fn send(ctx: &HostContext, function: &str, mut req: Request) -> Result<Response, String> {
    let url = req.url.clone();
    let what = format!("{function}({url})");
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{what}: only http:// and https:// URLs"));
    }
    let remaining = ctx.remaining();
    if remaining.is_zero() {
        return Err(format!("{what}: the script's deadline has passed"));
    }
    let timeout = req.timeout.unwrap_or(DEFAULT_HTTP_TIMEOUT).min(remaining);
    if let Some(path) = &req.bearer_token_file {
        let token = read_text(ctx, path).map_err(|e| format!("{what}: bearer_token_file: {e}"))?;
        req.headers
            .push(("Authorization".into(), format!("Bearer {}", token.trim())));
    }
    let agent = agent(ctx, &what, &req, timeout)?;
    let started = Instant::now();
    let (method, body) = (req.method.clone(), req.body.take());
    let has_body = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
    if !has_body && !matches!(method.as_str(), "GET" | "HEAD" | "DELETE") {
        return Err(format!(
            "{what}: method {method:?} is not supported (GET, HEAD, DELETE, POST, PUT, PATCH)"
        ));
    }
    if !has_body && body.is_some() {
        return Err(format!("{what}: a {method} request takes no body"));
    }
    // ureq panics on a client certificate rustls cannot use (a v1
    // certificate, say) instead of returning an error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if has_body {
            let mut r = match method.as_str() {
                "POST" => agent.post(&url),
                "PUT" => agent.put(&url),
                _ => agent.patch(&url),
            };
            for (k, v) in &req.headers {
                r = r.header(k.as_str(), v.as_str());
            }
            r.send(body.unwrap_or_default())
        } else {
            let mut r = match method.as_str() {
                "GET" => agent.get(&url),
                "HEAD" => agent.head(&url),
                _ => agent.delete(&url),
            };
            for (k, v) in &req.headers {
                r = r.header(k.as_str(), v.as_str());
            }
            r.call()
        }
    }))
    .map_err(|_| {
        format!("{what}: the TLS client certificate (cert_file, key_file) cannot be used")
    })?;
    let response = result.map_err(|e| match e {
        ureq::Error::Timeout(_) => format!("{what}: timed out after {timeout:?}"),
        other => format!("{what}: {other}"),
    })?;
    let answer = read_response(ctx, &what, timeout, response)?;
    tracing::debug!(target: "promshard::script", script = %ctx.script.display(), function, url, status = answer.status, bytes = answer.body.len(), ms = started.elapsed().as_millis() as u64, "http request");
    Ok(answer)
}

/// Status, headers and the body (bounded by `max_string_size`).
fn read_response(
    ctx: &HostContext,
    what: &str,
    timeout: Duration,
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<Response, String> {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.iter_mut().find(|(n, _)| n == name.as_str()) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => headers.push((name.as_str().to_string(), value)),
        }
    }
    let limit = ctx.limits.max_string_size as u64;
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_string()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => {
                format!("{what}: timed out after {timeout:?} reading the body")
            }
            ureq::Error::BodyExceedsLimit(_) => {
                format!("{what}: body larger than max_string_size {limit}")
            }
            other => format!("{what}: reading the body: {other}"),
        })?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The error of a non-2xx answer, with the start of its body.
pub fn status_error(what: &str, response: &Response) -> String {
    let snippet: String = response.body.chars().take(200).collect();
    format!(
        "{what}: HTTP {}{}",
        response.status,
        if snippet.is_empty() {
            String::new()
        } else {
            format!(": {snippet}")
        }
    )
}
