//! `web_config_file`: TLS and basic auth for the HTTP API, in the format of
//! Prometheus's `--web.config.file` (the exporter-toolkit format), so that
//! the file, its certificates and its bcrypt hashes can be shared with the
//! Prometheus servers and exporters an operator already runs.
//!
//! [`WebConfig::load`] reads the file strictly (an unknown key is an
//! error), resolves its paths against the file's directory (as Prometheus
//! does), reads and parses every certificate and key, checks that every
//! password is a bcrypt hash, and builds the TLS server configuration
//! ([`super::web_tls`]) — so `promshard check` finds every mistake that a
//! handshake would. Keys of the format that promshard does not implement
//! are refused by name rather than ignored, since a silently ignored
//! `client_allowed_sans` would let in clients its author meant to keep out.
//!
//! The loaded value remembers the metadata of every file it read
//! ([`WebConfig::changed_on_disk`]): the daemon reloads it when one of them
//! changes, and keeps the last good version when the new one is bad.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    /// User name → bcrypt hash of the password.
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<serde_yaml_ng::Value>,
}

/// `tls_server_config:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth_type: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub curve_preferences: Option<Vec<String>>,
    pub prefer_server_cipher_suites: Option<bool>,
    // In the format, not implemented: refused by name.
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    client_ca: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
}

/// `http_server_config:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility; the API speaks HTTP/1.1.
    #[serde(default)]
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Response headers the format allows, with the values allowed (`None`:
/// any): the same list as Prometheus, so that a file valid for one is valid
/// for the other.
const ALLOWED_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// The checked web config: what the API server and the CLI trust.
#[derive(Clone)]
pub struct WebConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// TLS, when `tls_server_config` sets a certificate.
    pub tls: Option<Tls>,
    /// User name → bcrypt hash; empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Every file read, with its metadata at the time.
    pub stamps: Stamps,
}

/// The TLS side of a [`WebConfig`].
#[derive(Clone)]
pub struct Tls {
    /// The certificate chain served (resolved path).
    pub cert_file: PathBuf,
    /// Who may connect.
    pub client_auth: ClientAuth,
    /// Ready for the handshakes.
    pub server: Arc<rustls::ServerConfig>,
}

/// `client_auth_type`, as Go's `crypto/tls` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// The values of `client_auth_type`, in Go's names.
    pub const NAMES: &[(&str, ClientAuth)] = &[
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        (
            "VerifyClientCertIfGiven",
            ClientAuth::VerifyClientCertIfGiven,
        ),
        (
            "RequireAndVerifyClientCert",
            ClientAuth::RequireAndVerifyClientCert,
        ),
    ];

    pub(super) fn parse(text: &str) -> Result<ClientAuth, String> {
        // Prometheus still accepts this older name.
        let text = if text == "RequireClientCert" {
            "RequireAnyClientCert"
        } else {
            text
        };
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == text)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
                format!("{text:?} is not one of {}", names.join(", "))
            })
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The files one load read, each with its metadata at the time: a version
/// of the whole set, told apart from the next without reading anything.
#[derive(Debug, Clone, Default)]
pub struct Stamps(Vec<(PathBuf, Option<Stamp>)>);

impl Stamps {
    /// Whether one of the files has changed (or appeared, or gone) since.
    pub fn changed(&self) -> bool {
        self.0.iter().any(|(p, s)| stamp(p) != *s)
    }
}

/// Every problem of a web config file; `Display` gives one line each,
/// naming the file and the key.
#[derive(Debug, Clone, thiserror::Error)]
pub struct WebConfigError {
    pub file: PathBuf,
    /// `(key, message)`, e.g. `("tls_server_config.cert_file", "cannot read …")`.
    pub problems: Vec<(String, String)>,
    /// The files this attempt read: a reload is tried again once they change.
    pub stamps: Stamps,
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, message)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {key}: {message}", self.file.display())?;
        }
        Ok(())
    }
}

/// Problems found so far in one web config file.
#[derive(Default)]
pub(super) struct Found {
    pub list: Vec<(String, String)>,
    /// The files read, each stamped just before: a change while it is
    /// read shows at the next check.
    read: Stamps,
}

impl Found {
    pub fn push(&mut self, key: &str, message: impl Into<String>) {
        self.list.push((key.to_string(), message.into()));
    }

    /// The bytes of `path`, or the problem under `key`.
    pub fn read(&mut self, key: &str, path: &Path) -> Option<Vec<u8>> {
        self.read.0.push((path.to_path_buf(), stamp(path)));
        std::fs::read(path)
            .map_err(|e| self.push(key, format!("cannot read {}: {e}", path.display())))
            .ok()
    }
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("tls", &self.tls.as_ref().map(|t| t.client_auth))
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Read and check the web config at `path`, with every file it names.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let mut found = Found::default();
        found.read.0.push((path.to_path_buf(), stamp(path)));
        let web = std::fs::read_to_string(path)
            .map_err(|e| found.push("file", format!("cannot read: {e}")))
            .and_then(|text| parse(&text).map_err(|e| found.push("file", e)))
            .map(|raw| check(raw, path.parent().unwrap_or(Path::new(".")), &mut found));
        let stamps = std::mem::take(&mut found.read);
        match web {
            Ok(web) if found.list.is_empty() => Ok(WebConfig {
                path: path.to_path_buf(),
                stamps,
                ..web
            }),
            _ => Err(WebConfigError {
                file: path.to_path_buf(),
                problems: found.list,
                stamps,
            }),
        }
    }

    /// Whether the file or one it names has changed since it was read.
    pub fn changed_on_disk(&self) -> bool {
        self.stamps.changed()
    }
}

/// An empty file is a web config with nothing set, as for Prometheus.
fn parse(text: &str) -> Result<RawWebConfig, String> {
    if text.trim().is_empty() {
        return Ok(RawWebConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

fn check(raw: RawWebConfig, dir: &Path, found: &mut Found) -> WebConfig {
    if raw.rate_limit.is_some() {
        found.push(
            "rate_limit",
            "not supported by promshard; limit the rate in front of it",
        );
    }
    let tls = raw
        .tls_server_config
        .and_then(|t| super::web_tls::check(t, dir, found));
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        check_user(user, hash, found);
    }
    let http = raw.http_server_config.unwrap_or_default();
    let headers = http
        .headers
        .iter()
        .filter_map(|(name, value)| check_header(name, value, found))
        .collect();
    WebConfig {
        path: PathBuf::new(),
        tls,
        users,
        headers,
        stamps: Stamps::default(),
    }
}

fn check_user(user: &str, hash: &str, found: &mut Found) {
    let key = format!("basic_auth_users.{user}");
    if user.is_empty() || user.contains(':') {
        found.push(&key, "a user name must be non-empty and without ':'");
    }
    if hash.parse::<bcrypt::HashParts>().is_err() {
        found.push(
            &key,
            "not a bcrypt hash (like \"$2y$10$…\"); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`",
        );
    }
}

fn check_header(name: &str, value: &str, found: &mut Found) -> Option<(HeaderName, HeaderValue)> {
    let key = format!("http_server_config.headers.{name}");
    let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
        found.push(
            &key,
            format!("cannot be configured; allowed: {}", names.join(", ")),
        );
        return None;
    };
    if let Some(values) = allowed
        && !values.contains(&value)
    {
        found.push(&key, format!("{value:?} is not one of {values:?}"));
        return None;
    }
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(n), Ok(v)) => Some((n, v)),
        _ => {
            found.push(&key, format!("{value:?} is not a valid header value"));
            None
        }
    }
}

/// `raw` unset or a problem under `key` naming what to use instead.
pub(super) fn refuse<T>(found: &mut Found, key: &str, raw: &Option<T>, instead: &str) {
    if raw.is_some() {
        found.push(key, format!("not supported by promshard; use {instead}"));
    }
}

impl RawTls {
    /// Refuse the keys of the format that promshard does not implement.
    pub(super) fn refuse_unsupported(&self, found: &mut Found) {
        refuse(found, "tls_server_config.cert", &self.cert, "cert_file");
        refuse(found, "tls_server_config.key", &self.key, "key_file");
        refuse(
            found,
            "tls_server_config.client_ca",
            &self.client_ca,
            "client_ca_file",
        );
        refuse(
            found,
            "tls_server_config.client_allowed_sans",
            &self.client_allowed_sans,
            "a client CA that signs only the allowed clients",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::WebConfig;

    fn load(text: &str) -> Result<WebConfig, Vec<(String, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, text).unwrap();
        WebConfig::load(&path).map_err(|e| e.problems)
    }

    #[test]
    fn users_and_headers_without_tls() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let web = load(&format!(
            "basic_auth_users:\n  prom: '{hash}'\nhttp_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .unwrap();
        assert!(web.tls.is_none());
        assert_eq!(web.users["prom"], hash);
        assert_eq!(web.headers[0].0.as_str(), "x-frame-options");
        // An empty file is a web config with nothing set.
        assert!(load("").unwrap().users.is_empty());
    }

    #[test]
    fn every_problem_names_its_key() {
        let problems = load(
            "rate_limit: {burst: 1}\nbasic_auth_users:\n  'a:b': plain\nhttp_server_config:\n  headers:\n    Server: x\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rate_limit",
                "basic_auth_users.a:b",
                "basic_auth_users.a:b",
                "http_server_config.headers.Server"
            ],
            "{problems:?}"
        );
        let missing = load("tls_server_config:\n  cert_file: nope.pem\n").unwrap_err();
        assert_eq!(missing[0].0, "tls_server_config.key_file", "{missing:?}");
        let unknown = load("tls_server_config:\n  certfile: x\n").unwrap_err();
        assert!(
            unknown[0].1.contains("unknown field `certfile`"),
            "{unknown:?}"
        );
    }
}
