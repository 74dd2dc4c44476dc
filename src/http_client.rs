//! The HTTP client promshard uses to talk to Prometheus servers and to
//! itself: no proxy from the environment (these are internal addresses),
//! every status returned as an answer rather than an error (callers report
//! the body), and one overall timeout.

use std::time::Duration;

/// A client for one call (or a few) that may take at most `timeout`.
pub fn agent(timeout: Duration) -> ureq::Agent {
    agent_with_tls(timeout, ureq::tls::TlsConfig::default())
}

/// [`agent`] with its own TLS settings (trusted roots, client certificate).
pub fn agent_with_tls(timeout: Duration, tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .build()
        .into()
}
