//! The HTTP client promshard uses to talk to Prometheus servers and to
//! itself: no proxy from the environment (these are internal addresses),
//! every status returned as an answer rather than an error (callers report
//! the body), and one overall timeout.

use std::time::Duration;

/// A client for one call (or a few) that may take at most `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// TLS settings from PEM text: `ca` replaces the built-in roots (a private
/// CA such as a Kubernetes cluster's), `cert` and `key` present a client
/// certificate. Errors say which of the three is wrong.
pub fn tls_config(
    ca: Option<&[u8]>,
    cert: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let certs = |what: &str, pem: &[u8]| -> Result<Vec<Certificate<'static>>, String> {
        let mut out = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| format!("{what}: {e}"))? {
                out.push(c);
            }
        }
        if out.is_empty() {
            return Err(format!("{what}: no PEM certificate in it"));
        }
        Ok(out)
    };
    let mut builder = TlsConfig::builder();
    if let Some(pem) = ca {
        builder = builder.root_certs(RootCerts::new_with_certs(&certs("ca_file", pem)?));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert_file", cert)?;
            let key = PrivateKey::from_pem(key).map_err(|e| format!("key_file: {e}"))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => return Err("cert_file and key_file go together".into()),
    }
    Ok(builder.build())
}
