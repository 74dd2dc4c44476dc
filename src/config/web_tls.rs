//! `tls_server_config` → a rustls [`ServerConfig`], with Go's meanings.
//!
//! - TLS is on once a certificate, key, client CA or client auth type is
//!   set; a `tls_server_config` with none of them serves plain HTTP, as
//!   Prometheus does.
//! - `client_auth_type` is Go's `crypto/tls` policy: `RequestClientCert` and
//!   `RequireAnyClientCert` ask for a certificate without verifying it
//!   (only that the client holds its key); the `Verify…` ones check it
//!   against `client_ca_file`, which they need.
//! - Versions: rustls speaks TLS 1.2 and 1.3, so `min_version: TLS10` or
//!   `TLS11` means TLS 1.2; a `max_version` below TLS12 cannot be served.
//! - `cipher_suites` (Go's names) choose among the TLS 1.2 suites; as in Go,
//!   TLS 1.3's suites are always on. `curve_preferences` orders the key
//!   exchange groups; `prefer_server_cipher_suites` (default true) makes
//!   the server's order win.
//! - The API speaks HTTP/1.1, announced by ALPN.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::web::{ClientAuth, Found, RawTls, Tls};

const KEY: &str = "tls_server_config.";

/// The checked TLS settings, `None` when TLS is off or a problem was found.
pub(super) fn check(raw: RawTls, dir: &Path, found: &mut Found) -> Option<Tls> {
    raw.refuse_unsupported(found);
    let enabled = raw.cert_file.is_some()
        || raw.key_file.is_some()
        || raw.client_ca_file.is_some()
        || raw.client_auth_type.is_some();
    if !enabled {
        return None;
    }
    let client_auth = match raw.client_auth_type.as_deref() {
        None | Some("") => Some(ClientAuth::NoClientCert),
        Some(t) => ClientAuth::parse(t)
            .map_err(|e| found.push(&format!("{KEY}client_auth_type"), e))
            .ok(),
    };
    let versions = versions(&raw, found);
    let provider = Arc::new(provider(&raw, found));
    let chain = cert_and_key(&raw, dir, found);
    let verifier = client_verifier(&raw, dir, client_auth?, &provider, found);
    let (cert_file, certs, key) = chain?;
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions?)
        .map_err(|e| found.push(&format!("{KEY}min_version"), e.to_string()))
        .ok()?;
    let mut server = builder
        .with_client_cert_verifier(verifier?)
        .with_single_cert(certs, key)
        .map_err(|e| {
            let message = format!("does not go with cert_file {}: {e}", cert_file.display());
            found.push(&format!("{KEY}key_file"), message)
        })
        .ok()?;
    server.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(Tls {
        cert_file,
        client_auth: client_auth?,
        server: Arc::new(server),
    })
}

/// The protocol versions between `min_version` and `max_version`.
fn versions(
    raw: &RawTls,
    found: &mut Found,
) -> Option<Vec<&'static rustls::SupportedProtocolVersion>> {
    let parse =
        |key: &str, text: &Option<String>, default: u8, found: &mut Found| match text.as_deref() {
            None | Some("") => Some(default),
            Some("TLS10") => Some(10),
            Some("TLS11") => Some(11),
            Some("TLS12") => Some(12),
            Some("TLS13") => Some(13),
            Some(other) => {
                found.push(
                    &format!("{KEY}{key}"),
                    format!("{other:?} is not one of TLS10, TLS11, TLS12, TLS13"),
                );
                None
            }
        };
    let min = parse("min_version", &raw.min_version, 12, found);
    let max = parse("max_version", &raw.max_version, 13, found);
    let (min, max) = (min?, max?);
    let mut versions = Vec::new();
    if min <= 12 && max >= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        let why = if min > max {
            format!("min_version TLS{min} is above max_version TLS{max}")
        } else {
            format!("TLS{max}: promshard speaks TLS 1.2 and 1.3 only")
        };
        found.push(&format!("{KEY}max_version"), why);
        return None;
    }
    Some(versions)
}

/// The ring provider with the cipher suites and groups the file chose.
fn provider(raw: &RawTls, found: &mut Found) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &raw.cipher_suites {
        let is_tls13 = |s: &rustls::SupportedCipherSuite| s.version() == &rustls::version::TLS13;
        let tls12: Vec<String> = provider
            .cipher_suites
            .iter()
            .filter(|s| !is_tls13(s))
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        // Go's names of the TLS 1.3 suites, accepted and without effect.
        let tls13 = [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        ];
        for n in names {
            if !tls12.contains(n) && !tls13.contains(&n.as_str()) {
                let message = format!("unknown cipher suite {n:?}; known: {}", tls12.join(", "));
                found.push(&format!("{KEY}cipher_suites"), message);
            }
        }
        provider
            .cipher_suites
            .retain(|s| is_tls13(s) || names.contains(&format!("{:?}", s.suite())));
    }
    if let Some(names) = &raw.curve_preferences {
        let all = provider.kx_groups.clone();
        let by_go_name = |n: &str| {
            let ours = match n {
                "X25519" => rustls::NamedGroup::X25519,
                "CurveP256" => rustls::NamedGroup::secp256r1,
                "CurveP384" => rustls::NamedGroup::secp384r1,
                _ => return None,
            };
            all.iter().find(|g| g.name() == ours).copied()
        };
        provider.kx_groups = names
            .iter()
            .filter_map(|n| {
                let group = by_go_name(n);
                if group.is_none() {
                    let message = format!("{n:?} is not one of X25519, CurveP256, CurveP384");
                    found.push(&format!("{KEY}curve_preferences"), message);
                }
                group
            })
            .collect();
    }
    provider
}

/// The certificate chain (with its resolved path) and the private key.
fn cert_and_key(
    raw: &RawTls,
    dir: &Path,
    found: &mut Found,
) -> Option<(
    std::path::PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let (Some(cert_file), Some(key_file)) = (&raw.cert_file, &raw.key_file) else {
        let missing = if raw.cert_file.is_none() {
            "cert_file"
        } else {
            "key_file"
        };
        found.push(
            &format!("{KEY}{missing}"),
            "required for TLS: set cert_file and key_file",
        );
        return None;
    };
    let cert_file = dir.join(cert_file);
    let key_file = dir.join(key_file);
    let certs = read_certs(&format!("{KEY}cert_file"), &cert_file, found);
    let key_key = format!("{KEY}key_file");
    let key = found.read(&key_key, &key_file).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| {
                let message = format!("no private key in {}: {e}", key_file.display());
                found.push(&key_key, message)
            })
            .ok()
    });
    Some((cert_file, certs?, key?))
}

/// Every certificate of the PEM file `path`; at least one.
fn read_certs(key: &str, path: &Path, found: &mut Found) -> Option<Vec<CertificateDer<'static>>> {
    let pem = found.read(key, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            found.push(key, format!("no certificate in {}", path.display()));
            None
        }
        Err(e) => {
            found.push(key, format!("{}: {e}", path.display()));
            None
        }
    }
}

/// The check of client certificates that `client_auth_type` asks for.
fn client_verifier(
    raw: &RawTls,
    dir: &Path,
    auth: ClientAuth,
    provider: &Arc<CryptoProvider>,
    found: &mut Found,
) -> Option<Arc<dyn ClientCertVerifier>> {
    let ca_key = format!("{KEY}client_ca_file");
    let roots = match &raw.client_ca_file {
        None => None,
        Some(f) => Some(client_roots(&ca_key, &dir.join(f), found)?),
    };
    let verify = |roots: Option<RootCertStore>, found: &mut Found, if_given: bool| {
        let Some(roots) = roots else {
            found.push(&ca_key, format!("required by client_auth_type {auth:?}"));
            return None;
        };
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
        let builder = if if_given {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| found.push(&ca_key, e.to_string()))
            .ok()
    };
    let any = |mandatory| -> Option<Arc<dyn ClientCertVerifier>> {
        Some(Arc::new(AnyClientCert {
            mandatory,
            algorithms: provider.signature_verification_algorithms,
        }))
    };
    match auth {
        ClientAuth::NoClientCert if roots.is_some() => {
            let message = "set, but client_auth_type is NoClientCert (or unset); set client_auth_type, e.g. RequireAndVerifyClientCert";
            found.push(&ca_key, message);
            None
        }
        ClientAuth::NoClientCert => Some(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => any(false),
        ClientAuth::RequireAnyClientCert => any(true),
        ClientAuth::VerifyClientCertIfGiven => verify(roots, found, true),
        ClientAuth::RequireAndVerifyClientCert => verify(roots, found, false),
    }
}

fn client_roots(key: &str, path: &Path, found: &mut Found) -> Option<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(key, path, found)? {
        if let Err(e) = roots.add(cert) {
            found.push(key, format!("{}: {e}", path.display()));
            return None;
        }
    }
    Some(roots)
}

/// Go's `RequestClientCert` / `RequireAnyClientCert`: any certificate, as
/// long as the client proves it holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
