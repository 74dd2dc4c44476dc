//! The host API scripts can call. Small on purpose: every function here is
//! documented in README, has tests for its failures, and nothing here writes
//! or spawns.
//!
//! | function | does |
//! |---|---|
//! | `http_get(url)`, `http_get(url, #{headers, timeout})` | GET, body as a string; error on non-2xx |
//! | `http_get_json(url)`, `http_get_json(url, opts)` | GET and `parse_json` |
//! | `http_request(#{method, url, headers, body, ca_file, …})` | any method, TLS files, a token file; `#{status, headers, body}` (see `http`) |
//! | `dns_srv(name)`, `dns_a(name)`, `dns_aaaa(name)` | DNS records from `dns: {servers}` or the system's (see `dns`) |
//! | `prometheus_sd(#{…})` | a Prometheus SD block with relabelling (see `sd`) |
//! | `parse_json(text)`, `to_json(value)` | JSON in and out |
//! | `read_file(path)`, `read_json(path)` | read a regular file below the script's dir or `allowed_dirs` |
//! | `env(name)` | an environment variable allowed by `env_allowlist`, or `()` if unset |
//! | `log_info(msg)`, `log_warn(msg)` | tracing logs with the script's path |
//!
//! Data coming in from outside (files, HTTP bodies, JSON) is bounded by the
//! same limits as the script's own values *before* it is allocated: a body
//! larger than `max_string_size` is cut off with an error, and JSON is
//! converted straight into Rhai values while counting array elements, map
//! entries and string bytes against the limits, so a hostile or broken
//! source cannot make the process grow. A network call cannot be
//! interrupted by `on_progress`, so its timeout is capped by what is left of
//! the call's wall-clock deadline.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::Limits;
use super::cache::normalize;

/// Default timeout of `http_get` when the script gives none.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What host functions of one script may reach.
#[derive(Clone, Debug)]
pub struct HostContext {
    /// The script, for log lines.
    pub script: PathBuf,
    /// `read_file` resolves relative paths against the first and may read
    /// below any of these.
    pub read_dirs: Vec<PathBuf>,
    /// Patterns of environment variable names `env()` may read (`*` at the
    /// end matches any suffix).
    pub env_allowlist: Vec<String>,
    /// DNS servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub limits: Limits,
    /// Deadline of the current call, shared with `on_progress`.
    pub deadline: Arc<Mutex<Instant>>,
}

impl HostContext {
    /// What is left of the current call's deadline.
    pub fn remaining(&self) -> Duration {
        let deadline = *self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        deadline.saturating_duration_since(Instant::now())
    }
}

type HostResult<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(message: String) -> HostResult<T> {
    Err(message.into())
}

/// Register the host API on `engine`.
pub fn register(engine: &mut Engine, ctx: HostContext) {
    let ctx = Arc::new(ctx);

    let c = Arc::clone(&ctx);
    engine.register_fn("read_file", move |path: &str| read_file(&c, path));
    let c = Arc::clone(&ctx);
    engine.register_fn("read_json", move |path: &str| -> HostResult<Dynamic> {
        let text = read_file(&c, path)?;
        parse_json_limited(&text, &c.limits).or_else(|e| fail(format!("read_json({path:?}): {e}")))
    });
    let c = Arc::clone(&ctx);
    engine.register_fn("parse_json", move |text: &str| -> HostResult<Dynamic> {
        parse_json_limited(text, &c.limits).or_else(|e| fail(format!("parse_json: {e}")))
    });
    let c = Arc::clone(&ctx);
    engine.register_fn("to_json", move |value: Dynamic| -> HostResult<String> {
        let json: serde_json::Value = rhai::serde::from_dynamic(&value).or_else(|e| {
            fail(format!(
                "to_json: cannot convert a {}: {e}",
                value.type_name()
            ))
        })?;
        let text = json.to_string();
        if text.len() > c.limits.max_string_size {
            return fail(format!(
                "to_json: result of {} bytes exceeds max_string_size {}",
                text.len(),
                c.limits.max_string_size
            ));
        }
        Ok(text)
    });
    let c = Arc::clone(&ctx);
    engine.register_fn("env", move |name: &str| env(&c, name));

    let c = Arc::clone(&ctx);
    engine.register_fn("http_get", move |url: &str| http_get(&c, url, &Map::new()));
    let c = Arc::clone(&ctx);
    engine.register_fn("http_get", move |url: &str, opts: Map| {
        http_get(&c, url, &opts)
    });
    let c = Arc::clone(&ctx);
    engine.register_fn("http_get_json", move |url: &str| -> HostResult<Dynamic> {
        let body = http_get(&c, url, &Map::new())?;
        parse_json_limited(&body, &c.limits).or_else(|e| fail(format!("http_get_json({url}): {e}")))
    });
    let c = Arc::clone(&ctx);
    engine.register_fn(
        "http_get_json",
        move |url: &str, opts: Map| -> HostResult<Dynamic> {
            let body = http_get(&c, url, &opts)?;
            parse_json_limited(&body, &c.limits)
                .or_else(|e| fail(format!("http_get_json({url}): {e}")))
        },
    );

    register_sources(engine, &ctx);
    let c = Arc::clone(&ctx);
    engine.register_fn("log_info", move |msg: Dynamic| {
        tracing::info!(target: "promshard::script", script = %c.script.display(), "{msg}")
    });
    let c = Arc::clone(&ctx);
    engine.register_fn("log_warn", move |msg: Dynamic| {
        tracing::warn!(target: "promshard::script", script = %c.script.display(), "{msg}")
    });
    super::json_targets::register(engine, &ctx);
    // `print`/`debug` must never reach stdout (`--json` output lives there).
    let c = Arc::clone(&ctx);
    engine.on_print(move |msg| {
        tracing::info!(target: "promshard::script", script = %c.script.display(), "{msg}")
    });
    let c = Arc::clone(&ctx);
    engine.on_debug(move |msg, _src, pos| {
        tracing::debug!(target: "promshard::script", script = %c.script.display(), line = pos.line().unwrap_or(0), "{msg}")
    });
}

/// A text file inside the readable directories, for the host functions
/// that read certificate, token and file_sd files.
pub(super) fn read_text(ctx: &HostContext, path: &str) -> Result<String, String> {
    read_file(ctx, path).map_err(|e| message(*e))
}

/// The message of a host function's error, without Rhai's wrapping.
fn message(e: EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(d, _) => d.to_string(),
        other => other.to_string(),
    }
}

/// `http_request`, `dns_srv`, `dns_a`, `dns_aaaa`, `prometheus_sd`.
fn register_sources(engine: &mut Engine, ctx: &Arc<HostContext>) {
    let c = Arc::clone(ctx);
    engine.register_fn("http_request", move |opts: Map| -> HostResult<Map> {
        let request = super::http::request_from_map(&opts).or_else(fail)?;
        let response = super::http::send(&c, "http_request", request).or_else(fail)?;
        Ok(response.into_map())
    });
    let c = Arc::clone(ctx);
    engine.register_fn("dns_srv", move |name: &str| -> HostResult<Array> {
        let records = super::dns::srv(&c, name).or_else(fail)?;
        Ok(records
            .into_iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("target".into(), r.target.into());
                m.insert("port".into(), (r.port as i64).into());
                m.insert("priority".into(), (r.priority as i64).into());
                m.insert("weight".into(), (r.weight as i64).into());
                Dynamic::from_map(m)
            })
            .collect())
    });
    for (function, v6) in [("dns_a", false), ("dns_aaaa", true)] {
        let c = Arc::clone(ctx);
        engine.register_fn(function, move |name: &str| -> HostResult<Array> {
            let ips = super::dns::addresses(&c, name, v6).or_else(fail)?;
            Ok(ips.into_iter().map(|ip| ip.to_string().into()).collect())
        });
    }
    let c = Arc::clone(ctx);
    engine.register_fn("prometheus_sd", move |block: Map| -> HostResult<Array> {
        let json: serde_json::Value = rhai::serde::from_dynamic(&Dynamic::from_map(block))
            .or_else(|e| fail(format!("prometheus_sd: not plain data: {e}")))?;
        let targets =
            super::sd::discover(&c, json).or_else(|e| fail(format!("prometheus_sd: {e}")))?;
        Ok(super::sd::to_groups(targets))
    });
}

fn read_file(ctx: &HostContext, path: &str) -> HostResult<String> {
    let file = open_readable(ctx, "read_file", path)?;
    let (resolved, size) = (&file.path, file.size);
    if size > ctx.limits.max_string_size as u64 {
        return fail(format!(
            "read_file({path:?}): {} is {size} bytes, more than max_string_size {}",
            resolved.display(),
            ctx.limits.max_string_size
        ));
    }
    let mut text = String::with_capacity(size as usize);
    // A file that grows while it is read is cut at the limit, not read on.
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file.reader(ctx), ctx.limits.max_string_size as u64 + 1),
        &mut text,
    )
    .or_else(|e| fail(format!("read_file({path:?}): {}: {e}", resolved.display())))?;
    if text.len() > ctx.limits.max_string_size {
        return fail(format!(
            "read_file({path:?}): {} grew past max_string_size {} while being read",
            resolved.display(),
            ctx.limits.max_string_size
        ));
    }
    Ok(text)
}

/// A regular file a script may read, opened.
pub struct Readable {
    pub path: PathBuf,
    pub file: std::fs::File,
    /// Size when opened.
    pub size: u64,
}

impl Readable {
    /// A reader that fails once the call's deadline has passed: a native
    /// read is not interrupted by `on_progress`.
    pub fn reader<'a>(&'a self, ctx: &'a HostContext) -> impl std::io::Read + 'a {
        DeadlineReader {
            inner: &self.file,
            ctx,
        }
    }
}

struct DeadlineReader<'a> {
    inner: &'a std::fs::File,
    ctx: &'a HostContext,
}

impl std::io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ctx.remaining().is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the script's deadline passed while reading",
            ));
        }
        std::io::Read::read(&mut self.inner, buf)
    }
}

/// Resolve `path` inside the readable directories and open it, for the host
/// function `function`. Only regular files: opening a FIFO waits for a
/// writer and reading a device may never end, and neither can be stopped
/// by the script's deadline. The file is opened non-blocking and checked
/// after opening, so a FIFO swapped in after a check cannot hang the call.
pub fn open_readable(ctx: &HostContext, function: &str, path: &str) -> HostResult<Readable> {
    use std::os::unix::fs::OpenOptionsExt;
    let resolved = resolve_readable(&ctx.read_dirs, path).or_else(fail)?;
    let at = |e: &dyn fmt::Display| format!("{function}({path:?}): {}: {e}", resolved.display());
    if ctx.remaining().is_zero() {
        return fail(at(&"the script's deadline has passed"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&resolved)
        .map_err(|e| at(&e))?;
    let meta = file.metadata().map_err(|e| at(&e))?;
    if !meta.is_file() {
        return fail(at(&format!(
            "not a regular file (a {}); only regular files can be read",
            file_kind(&meta.file_type())
        )));
    }
    Ok(Readable {
        path: resolved,
        file,
        size: meta.len(),
    })
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

/// Whether `name` matches one of the allowlist patterns.
pub fn env_allowed(allowlist: &[String], name: &str) -> bool {
    allowlist
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        })
}

fn env(ctx: &HostContext, name: &str) -> HostResult<Dynamic> {
    if !env_allowed(&ctx.env_allowlist, name) {
        return fail(format!(
            "env({name:?}): not allowed; env_allowlist is [{}]",
            ctx.env_allowlist.join(", ")
        ));
    }
    Ok(match std::env::var(name) {
        Ok(v) => v.into(),
        Err(_) => Dynamic::UNIT,
    })
}

/// Options of `http_get`.
#[derive(Debug, Default)]
struct HttpOptions {
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
}

fn http_options(url: &str, opts: &Map) -> Result<HttpOptions, String> {
    let mut out = HttpOptions::default();
    for (key, value) in opts {
        match key.as_str() {
            "headers" => {
                let map = value
                    .read_lock::<Map>()
                    .ok_or_else(|| format!("http_get({url}): headers must be a map"))?;
                for (k, v) in map.iter() {
                    out.headers.push((k.to_string(), v.to_string()));
                }
            }
            "timeout" => {
                out.timeout = Some(super::http::parse_timeout(
                    &format!("http_get({url})"),
                    value,
                )?);
            }
            other => {
                return Err(format!(
                    "http_get({url}): unknown option {other:?} (expected headers, timeout)"
                ));
            }
        }
    }
    Ok(out)
}

fn http_get(ctx: &HostContext, url: &str, opts: &Map) -> HostResult<String> {
    let opts = http_options(url, opts).or_else(fail)?;
    let request = super::http::Request {
        method: "GET".into(),
        url: url.to_string(),
        headers: opts.headers,
        timeout: opts.timeout,
        ..Default::default()
    };
    let response = super::http::send(ctx, "http_get", request).or_else(fail)?;
    if !(200..300).contains(&response.status) {
        return fail(super::http::status_error(
            &format!("http_get({url})"),
            &response,
        ));
    }
    Ok(response.body)
}

// ------------------------------------------------------------------ JSON

/// Size totals, counted the way Rhai counts them (recursively).
#[derive(Default)]
struct Budget {
    arrays: usize,
    maps: usize,
    strings: usize,
}

struct Limited<'a> {
    limits: &'a Limits,
    used: &'a std::cell::RefCell<Budget>,
}

impl Limited<'_> {
    fn charge<E: serde::de::Error>(
        &self,
        arrays: usize,
        maps: usize,
        strings: usize,
    ) -> Result<(), E> {
        let mut b = self.used.borrow_mut();
        b.arrays += arrays;
        b.maps += maps;
        b.strings += strings;
        let l = self.limits;
        if b.arrays > l.max_array_size {
            return Err(E::custom(format!(
                "more than max_array_size {} array elements",
                l.max_array_size
            )));
        }
        if b.maps > l.max_map_size {
            return Err(E::custom(format!(
                "more than max_map_size {} map entries",
                l.max_map_size
            )));
        }
        if b.strings > l.max_string_size {
            return Err(E::custom(format!(
                "more than max_string_size {} bytes of strings",
                l.max_string_size
            )));
        }
        Ok(())
    }

    fn again(&self) -> Limited<'_> {
        Limited {
            limits: self.limits,
            used: self.used,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Limited<'_> {
    type Value = Dynamic;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Limited<'_> {
    type Value = Dynamic;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::UNIT)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Dynamic, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Dynamic, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Dynamic, E> {
        Ok(i64::try_from(v)
            .map(Dynamic::from)
            .unwrap_or_else(|_| Dynamic::from(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Dynamic, E> {
        Ok(v.into())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dynamic, E> {
        self.charge(0, 0, v.len())?;
        Ok(v.into())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        let mut out = Array::new();
        while let Some(v) = seq.next_element_seed(self.again())? {
            self.charge::<A::Error>(1, 0, 0)?;
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dynamic, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self.again())?;
            self.charge::<A::Error>(0, 1, 0)?;
            out.insert(k.into(), v);
        }
        Ok(out.into())
    }
}

/// Parse JSON into Rhai values, refusing documents whose totals exceed the
/// limits while parsing (nothing beyond the limit is ever allocated).
pub fn parse_json_limited(text: &str, limits: &Limits) -> Result<Dynamic, String> {
    let used = std::cell::RefCell::new(Budget::default());
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Limited {
        limits,
        used: &used,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

// ------------------------------------------------------------------ files

/// Resolve `path` (relative to the first dir) and refuse anything that
/// leaves every allowed directory, lexically and after following links.
pub fn resolve_readable(dirs: &[PathBuf], path: &str) -> Result<PathBuf, String> {
    let base = dirs.first().ok_or("read_file: no readable directory")?;
    let joined = normalize(&base.join(path));
    let real = joined.canonicalize().unwrap_or_else(|_| joined.clone());
    let allowed = dirs.iter().any(|d| {
        let d_lex = normalize(d);
        let d_real = d.canonicalize().unwrap_or_else(|_| d_lex.clone());
        joined.starts_with(&d_lex) && real.starts_with(&d_real)
    });
    if allowed {
        Ok(joined)
    } else {
        Err(format!(
            "read_file({path:?}): outside the allowed directories ({})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().join("scripts")];
        std::fs::create_dir_all(&dirs[0]).unwrap();
        assert!(resolve_readable(&dirs, "../../etc/passwd").is_err());
        assert!(resolve_readable(&dirs, "/etc/passwd").is_err());
        assert!(resolve_readable(&dirs, "data/x.json").is_ok());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", dirs[0].join("link")).unwrap();
            assert!(resolve_readable(&dirs, "link/passwd").is_err());
        }
    }

    #[test]
    fn env_patterns() {
        let list = vec!["PROMSHARD_*".to_string(), "HOSTNAME".to_string()];
        assert!(env_allowed(&list, "PROMSHARD_CMDB"));
        assert!(env_allowed(&list, "HOSTNAME"));
        assert!(!env_allowed(&list, "HOSTNAMES"));
        assert!(!env_allowed(&list, "HOME"));
        assert!(!env_allowed(&[], "PROMSHARD_X"));
    }

    #[test]
    fn json_is_bounded_while_parsing() {
        let limits = Limits {
            max_array_size: 10,
            max_map_size: 3,
            max_string_size: 20,
            ..Limits::default()
        };
        assert!(parse_json_limited("[1,2,3]", &limits).is_ok());
        let e = parse_json_limited(&format!("[{}0]", "0,".repeat(10)), &limits).unwrap_err();
        assert!(e.contains("max_array_size 10"), "{e}");
        // Nested arrays count towards the same total, as in Rhai.
        assert!(parse_json_limited("[[1,2,3,4,5],[1,2,3,4,5]]", &limits).is_err());
        let e = parse_json_limited(r#"{"a":1,"b":2,"c":3,"d":4}"#, &limits).unwrap_err();
        assert!(e.contains("max_map_size 3"), "{e}");
        let e = parse_json_limited(r#"["0123456789","0123456789x"]"#, &limits).unwrap_err();
        assert!(e.contains("max_string_size 20"), "{e}");
        assert!(parse_json_limited("[1,", &limits).is_err());
        assert!(parse_json_limited("[1] x", &limits).is_err());
        let v = parse_json_limited(r#"{"a":[1,"x",true,null,1.5]}"#, &Limits::default()).unwrap();
        assert_eq!(v.to_string(), r#"#{"a": [1, "x", true, (), 1.5]}"#);
    }

    #[test]
    fn http_options_are_checked() {
        let mut m = Map::new();
        m.insert("timeout".into(), "250ms".into());
        assert_eq!(
            http_options("u", &m).unwrap().timeout,
            Some(Duration::from_millis(250))
        );
        m.insert("timeout".into(), Dynamic::from(2_i64));
        assert_eq!(
            http_options("u", &m).unwrap().timeout,
            Some(Duration::from_secs(2))
        );
        m.insert("timeout".into(), Dynamic::from(0_i64));
        assert!(http_options("u", &m).is_err());
        let mut m = Map::new();
        m.insert("retries".into(), Dynamic::from(2_i64));
        assert!(
            http_options("u", &m)
                .unwrap_err()
                .contains("unknown option")
        );
    }
}
