//! The HTTP client promshard uses to talk to Prometheus servers, etcd and
//! itself: no proxy from the environment (these are internal addresses),
//! every status returned as an answer rather than an error (callers report
//! the body), and one overall timeout. TLS is rustls, with roots and a
//! client certificate from PEM files when a caller has them ([`tls`]).

use std::time::Duration;

use ureq::config::ConfigBuilder;
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig, parse_pem};
use ureq::typestate::AgentScope;

/// A client for one call (or a few) that may take at most `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    config(timeout).build().into()
}

/// [`agent`] with its own TLS settings (trusted roots, client certificate).
pub fn agent_with_tls(timeout: Duration, tls: TlsConfig) -> ureq::Agent {
    config(timeout).tls_config(tls).build().into()
}

/// The settings of [`agent`], for a caller that adds its own (TLS).
pub fn config(timeout: Duration) -> ConfigBuilder<AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
}

/// A PEM file that holds no usable certificate or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct PemError {
    /// Which file: `ca`, `cert` or `key`.
    pub file: &'static str,
    pub reason: String,
}

/// TLS settings from PEM contents: `ca` as the only trusted roots when
/// given (else the built-in web roots), and a client certificate chain
/// with its private key.
pub fn tls(ca: Option<&[u8]>, identity: Option<(&[u8], &[u8])>) -> Result<TlsConfig, PemError> {
    let mut b = TlsConfig::builder();
    if let Some(ca) = ca {
        b = b.root_certs(RootCerts::new_with_certs(&certificates(ca, "ca")?));
    }
    if let Some((cert, key)) = identity {
        let chain = certificates(cert, "cert")?;
        let mut keys = Vec::new();
        for item in parse_pem(key) {
            if let PemItem::PrivateKey(k) = item.map_err(|e| bad_pem("key", e))? {
                keys.push(k);
            }
        }
        let key = keys.pop().ok_or(PemError {
            file: "key",
            reason: "no PEM private key (PKCS#8, RSA or EC) in it".into(),
        })?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

fn certificates(pem: &[u8], file: &'static str) -> Result<Vec<Certificate<'static>>, PemError> {
    let mut out = Vec::new();
    for item in parse_pem(pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| bad_pem(file, e))? {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(PemError {
            file,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(out)
}

fn bad_pem(file: &'static str, e: ureq::Error) -> PemError {
    PemError {
        file,
        reason: format!("not valid PEM: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_or_key_is_refused_naming_the_file() {
        let e = tls(Some(b"not a certificate"), None).unwrap_err();
        assert_eq!(e.to_string(), "ca: no PEM certificate in it");
        let cert = b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        let e = tls(None, Some((cert, cert))).unwrap_err();
        assert_eq!(e.file, "key", "{e}");
    }
}
