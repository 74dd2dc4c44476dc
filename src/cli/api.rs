//! How `where` and `drain` reach the daemon that runs the same config.
//!
//! The address is `listen` (an unspecified one means this host), over
//! `https://` when the config's `web_config_file` turns TLS on. The daemon's
//! certificate is checked against the certificates of that web config's
//! `cert_file` — enough for a self-signed certificate, or a chain file that
//! carries its CA — or against `PROMSHARD_API_CA_FILE`. The web config holds
//! only password hashes and the server's side of TLS, so what the CLI
//! presents comes from the environment:
//!
//! | variable | what |
//! |---|---|
//! | `PROMSHARD_API_URL` | base URL instead of `listen`, e.g. `https://promshard.example.com:9310` (the name the certificate is for) |
//! | `PROMSHARD_API_CA_FILE` | PEM CA certificates to trust for the daemon's certificate |
//! | `PROMSHARD_API_CERT_FILE`, `PROMSHARD_API_KEY_FILE` | client certificate (PEM chain) and key, when the daemon asks for one |
//! | `PROMSHARD_API_USER`, `PROMSHARD_API_PASSWORD` | basic auth, when the web config has `basic_auth_users` |
//!
//! Mutating calls send the config's `api_token` as a bearer token when it
//! is set (it replaces basic auth for them), else the basic credentials.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};

use crate::config::Config;

/// A client for the daemon's API, set up from the config and environment.
pub(super) struct DaemonApi {
    /// `http[s]://host:port`, no trailing `/`.
    pub base: String,
    agent: ureq::Agent,
    /// `Authorization` value for GET calls.
    basic: Option<String>,
    token: Option<String>,
}

impl DaemonApi {
    /// The API of the daemon running `config`; calls take at most `timeout`.
    pub fn new(config: &Config, timeout: Duration) -> anyhow::Result<DaemonApi> {
        let tls = config.web.as_ref().and_then(|w| w.tls.as_ref());
        let base = match std::env::var("PROMSHARD_API_URL") {
            Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_string(),
            _ => {
                let mut addr = config.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            }
        };
        let trusted = match env_path("PROMSHARD_API_CA_FILE") {
            Some(ca) => Some(certificates(&ca, "PROMSHARD_API_CA_FILE")?),
            None => match tls {
                Some(t) => Some(certificates(&t.cert_file, "the web config's cert_file")?),
                None => None,
            },
        };
        let mut builder = TlsConfig::builder().client_cert(client_cert()?);
        if let Some(roots) = trusted {
            builder = builder.root_certs(RootCerts::Specific(Arc::new(roots)));
        }
        let agent = crate::http_client::agent_with_tls(timeout, builder.build());
        Ok(DaemonApi {
            base,
            agent,
            basic: basic_auth()?,
            token: config.api_token.clone(),
        })
    }

    /// `GET base + path`.
    pub fn get(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let request = self.agent.get(format!("{}{path}", self.base));
        match &self.basic {
            Some(b) => request.header("Authorization", b),
            None => request,
        }
    }

    /// `POST base + path`, with the bearer token if configured.
    pub fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self.agent.post(format!("{}{path}", self.base));
        let authorization = match (&self.token, &self.basic) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
        };
        match authorization {
            Some(a) => request.header("Authorization", &a),
            None => request,
        }
    }
}

/// A set, non-empty variable as a path.
fn env_path(var: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// Every certificate in the PEM file `path` (what: where it was named).
fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("{what}: {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) =
            item.with_context(|| format!("{what}: {}", path.display()))?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        bail!("{what}: {}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// `PROMSHARD_API_CERT_FILE` and `PROMSHARD_API_KEY_FILE`, both or neither.
fn client_cert() -> anyhow::Result<Option<ClientCert>> {
    let (cert, key) = match (
        env_path("PROMSHARD_API_CERT_FILE"),
        env_path("PROMSHARD_API_KEY_FILE"),
    ) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => bail!("set both PROMSHARD_API_CERT_FILE and PROMSHARD_API_KEY_FILE, or neither"),
    };
    let chain = certificates(&cert, "PROMSHARD_API_CERT_FILE")?;
    let pem = std::fs::read(&key)
        .with_context(|| format!("PROMSHARD_API_KEY_FILE: {}", key.display()))?;
    let key = ureq::tls::PrivateKey::from_pem(&pem)
        .with_context(|| format!("PROMSHARD_API_KEY_FILE: {}: no private key", key.display()))?;
    Ok(Some(ClientCert::new_with_certs(&chain, key)))
}

/// `Basic …` from `PROMSHARD_API_USER` and `PROMSHARD_API_PASSWORD`.
fn basic_auth() -> anyhow::Result<Option<String>> {
    let user = std::env::var("PROMSHARD_API_USER")
        .ok()
        .filter(|u| !u.is_empty());
    let password = std::env::var("PROMSHARD_API_PASSWORD").ok();
    match (user, password) {
        (None, None) => Ok(None),
        (Some(u), Some(p)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            Ok(Some(format!("Basic {encoded}")))
        }
        _ => bail!("set both PROMSHARD_API_USER and PROMSHARD_API_PASSWORD, or neither"),
    }
}
