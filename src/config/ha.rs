//! The `ha:` block: which etcd to elect a leader on (or, `mode: shared`, to
//! spread the services' ownership over), and how fast a dead
//! leader is replaced (`lease_ttl`). Parsed as written ([`RawHa`]) and
//! checked once into [`HaConfig`], which the rest of the code trusts.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default lease: a dead leader is replaced within about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// etcd raises shorter leases to its minimum (1.5 × election timeout,
/// 2 s with etcd's defaults), so a shorter one would not mean what it says.
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// Longest cluster or instance name.
const MAX_NAME: usize = 100;

/// `ha:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    etcd: Option<RawEtcd>,
    /// The cluster: instances with the same name elect one leader.
    name: Option<String>,
    lease_ttl: Option<String>,
    /// This instance's name in the election (default: host name and port).
    instance: Option<String>,
    /// `leader` (default) or `shared`.
    mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    #[serde(default)]
    endpoints: Vec<String>,
    tls: Option<RawTls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// A checked `ha:` block.
#[derive(Clone, PartialEq)]
pub struct HaConfig {
    /// `http://host:port` or `https://host:port` (with `tls:`).
    pub endpoints: Vec<String>,
    pub tls: Option<Tls>,
    /// Username and password (read from `password_file`).
    pub user: Option<(String, String)>,
    pub name: String,
    pub lease_ttl: Duration,
    pub instance: String,
    pub mode: HaMode,
}

/// How the instances of a cluster divide the work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaMode {
    /// One elected leader delivers every service; the others stand by.
    #[default]
    Leader,
    /// Each service has its own owner, spread over the live instances.
    Shared,
}

impl HaMode {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            HaMode::Leader => "leader",
            HaMode::Shared => "shared",
        }
    }
}

/// PEM contents of the `tls:` files, read when the config is checked.
#[derive(Clone, PartialEq)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for HaConfig {
    // The password and key stay out of logs and `check` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaConfig")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .field("name", &self.name)
            .field("lease_ttl", &self.lease_ttl)
            .field("instance", &self.instance)
            .field("mode", &self.mode)
            .finish()
    }
}

/// One problem: the key (e.g. `ha.etcd.endpoints[1]`) and what is wrong.
pub type Problem = (String, String);

/// Check `raw`; relative file names resolve against `base_dir`. Every
/// problem is returned, each naming its key.
pub fn check(raw: RawHa, base_dir: &Path, listen: SocketAddr) -> Result<HaConfig, Vec<Problem>> {
    let mut p: Vec<Problem> = Vec::new();
    let mut problem = |key: &str, msg: String| p.push((format!("ha.{key}"), msg));
    let etcd = raw.etcd.unwrap_or_default();
    if etcd.endpoints.is_empty() {
        problem(
            "etcd.endpoints",
            "list at least one etcd client URL, e.g. [\"https://10.0.0.1:2379\"]; three members are recommended".into(),
        );
    }
    let scheme = if etcd.tls.is_some() { "https" } else { "http" };
    let mut endpoints = Vec::new();
    for (i, e) in etcd.endpoints.iter().enumerate() {
        match endpoint(e, scheme) {
            Ok(url) => endpoints.push(url),
            Err(msg) => problem(&format!("etcd.endpoints[{i}]"), msg),
        }
    }
    let read = |key: &str, path: &Path| -> Result<Vec<u8>, Problem> {
        let path = base_dir.join(path);
        std::fs::read(&path).map_err(|e| {
            (
                format!("ha.{key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let tls = etcd
        .tls
        .and_then(|t| check_tls(t, &read).map_err(|e| p.push(e)).ok());
    let user = check_user(etcd.username, etcd.password_file, &read, &mut p);
    let name = raw.name.unwrap_or_default();
    if let Err(msg) = check_name(&name) {
        p.push((
            "ha.name".into(),
            format!("{msg} (the cluster name: instances with the same name elect one leader)"),
        ));
    }
    let instance = raw.instance.unwrap_or_else(|| default_instance(listen));
    if let Err(msg) = check_name(&instance) {
        p.push(("ha.instance".into(), msg));
    }
    let lease_ttl = match raw.lease_ttl.as_deref().map(super::parse_duration) {
        None => DEFAULT_LEASE_TTL,
        Some(Err(msg)) => {
            p.push(("ha.lease_ttl".into(), msg));
            DEFAULT_LEASE_TTL
        }
        Some(Ok(d)) if d < MIN_LEASE_TTL || d > MAX_LEASE_TTL || d.subsec_nanos() != 0 => {
            p.push((
                "ha.lease_ttl".into(),
                format!(
                    "{d:?}: use whole seconds from {}s to {}s (etcd leases count in seconds)",
                    MIN_LEASE_TTL.as_secs(),
                    MAX_LEASE_TTL.as_secs()
                ),
            ));
            DEFAULT_LEASE_TTL
        }
        Some(Ok(d)) => d,
    };
    let mode = check_mode(raw.mode.as_deref(), &mut p);
    if !p.is_empty() {
        return Err(p);
    }
    Ok(HaConfig {
        endpoints,
        tls,
        user,
        name,
        lease_ttl,
        instance,
        mode,
    })
}

/// `ha.mode`: `leader` (the default) or `shared`.
fn check_mode(mode: Option<&str>, p: &mut Vec<Problem>) -> HaMode {
    match mode {
        None | Some("leader") => HaMode::Leader,
        Some("shared") => HaMode::Shared,
        Some(other) => {
            p.push((
                "ha.mode".into(),
                format!("{other:?}: use leader (one instance delivers every service) or shared (services spread over the instances)"),
            ));
            HaMode::Leader
        }
    }
}

/// `host:port` or `scheme://host:port` as a URL with the scheme `tls:`
/// implies; a scheme that contradicts it is an error.
fn endpoint(text: &str, scheme: &str) -> Result<String, String> {
    let t = text.trim();
    let rest = match t.split_once("://") {
        Some((s, rest)) if s == scheme => rest,
        Some((s, _)) if s == "http" || s == "https" => {
            return Err(format!(
                "{t:?}: {s}:// does not match the tls: setting (use {scheme}://)"
            ));
        }
        Some(_) => return Err(format!("{t:?}: use http://host:port or https://host:port")),
        None => t,
    };
    let rest = rest.trim_end_matches('/');
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok || rest.contains('/') {
        return Err(format!("{t:?} is not host:port (e.g. 10.0.0.1:2379)"));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Names that go into etcd keys and logs: letters, digits, `.`, `_`, `-`, `:`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "{name:?}: give a name of 1 to {MAX_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "{name:?}: {c:?} is not allowed (letters, digits, '.', '_', '-', ':')"
        ));
    }
    Ok(())
}

/// `<host name>:<listen port>`: unique per machine and port.
fn default_instance(listen: SocketAddr) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(MAX_NAME - 6)
        .collect();
    format!("{host}:{}", listen.port())
}

type Read<'a> = dyn Fn(&str, &Path) -> Result<Vec<u8>, Problem> + 'a;

/// The `tls:` files, read, and checked to hold a certificate (`ca`,
/// `cert`) or a private key (`key`) in PEM.
fn check_tls(t: RawTls, read: &Read<'_>) -> Result<Tls, Problem> {
    let ca = t.ca.as_ref().map(|f| read("etcd.tls.ca", f)).transpose()?;
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((read("etcd.tls.cert", c)?, read("etcd.tls.key", k)?)),
        (None, None) => None,
        _ => {
            return Err((
                "ha.etcd.tls".into(),
                "set both cert and key (a client certificate), or neither".into(),
            ));
        }
    };
    let pems = identity.as_ref().map(|(c, k)| (&c[..], &k[..]));
    if let Err(e) = crate::http_client::tls(ca.as_deref(), pems) {
        let file = match e.file {
            "ca" => &t.ca,
            "cert" => &t.cert,
            _ => &t.key,
        };
        let file = file.as_deref().unwrap_or(Path::new("?"));
        return Err((
            format!("ha.etcd.tls.{}", e.file),
            format!("{}: {}", file.display(), e.reason),
        ));
    }
    Ok(Tls { ca, identity })
}

/// `username` and the password in `password_file`, together or neither.
fn check_user(
    username: Option<String>,
    password_file: Option<PathBuf>,
    read: &Read<'_>,
    p: &mut Vec<Problem>,
) -> Option<(String, String)> {
    match (username, password_file) {
        (Some(u), Some(f)) => match read("etcd.password_file", &f) {
            Ok(pw) => {
                let pw = String::from_utf8_lossy(&pw).trim().to_string();
                if pw.is_empty() || u.trim().is_empty() {
                    p.push((
                        "ha.etcd.username".into(),
                        "username and the password in password_file must not be empty".into(),
                    ));
                }
                Some((u, pw))
            }
            Err(e) => {
                p.push(e);
                None
            }
        },
        (None, None) => None,
        _ => {
            p.push((
                "ha.etcd.username".into(),
                "set username and password_file together".into(),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawHa {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    fn listen() -> SocketAddr {
        "127.0.0.1:9310".parse().unwrap()
    }

    #[test]
    fn a_minimal_block_gets_defaults() {
        let c = check(
            raw("{etcd: {endpoints: ['127.0.0.1:2379', 'http://127.0.0.2:2379/']}, name: prod}"),
            Path::new("/"),
            listen(),
        )
        .unwrap();
        assert_eq!(
            c.endpoints,
            ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert!(c.instance.ends_with(":9310"), "{}", c.instance);
        assert!(c.tls.is_none() && c.user.is_none());
        assert_eq!(c.mode, HaMode::Leader);
    }

    #[test]
    fn mode_is_leader_or_shared_and_anything_else_names_the_key() {
        let with = |mode: &str| {
            check(
                raw(&format!(
                    "{{etcd: {{endpoints: ['e:1']}}, name: n, mode: {mode}}}"
                )),
                Path::new("/"),
                listen(),
            )
        };
        assert_eq!(with("shared").unwrap().mode, HaMode::Shared);
        assert_eq!(with("leader").unwrap().mode, HaMode::Leader);
        let e = with("spread").unwrap_err();
        assert_eq!(e[0].0, "ha.mode", "{e:?}");
        assert!(
            e[0].1.contains("\"spread\"") && e[0].1.contains("leader") && e[0].1.contains("shared"),
            "{e:?}"
        );
    }

    #[test]
    fn every_problem_names_its_key() {
        let e = check(
            raw("{etcd: {endpoints: ['https://a:1', 'nohost', 'a:0'], username: u}, name: 'a b', lease_ttl: 1s}"),
            Path::new("/"),
            listen(),
        )
        .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ha.etcd.endpoints[0]",
                "ha.etcd.endpoints[1]",
                "ha.etcd.endpoints[2]",
                "ha.etcd.username",
                "ha.name",
                "ha.lease_ttl"
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("tls"), "{e:?}");
    }

    #[test]
    fn tls_files_are_read_and_the_password_stays_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
        std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
        let c = check(
            raw("{etcd: {endpoints: [e:2379], tls: {ca: ca.pem}, username: root, password_file: pw}, name: n, lease_ttl: 3s}"),
            dir.path(),
            listen(),
        )
        .unwrap();
        assert_eq!(c.endpoints, ["https://e:2379"]);
        assert_eq!(c.tls.as_ref().unwrap().ca.as_deref(), Some(pem.as_bytes()));
        assert_eq!(c.user, Some(("root".into(), "secret".into())));
        assert!(!format!("{c:?}").contains("secret"));
        let e = check(
            raw("{etcd: {endpoints: [e:1], tls: {cert: c.pem}}, name: n}"),
            dir.path(),
            listen(),
        )
        .unwrap_err();
        assert_eq!(e[0].0, "ha.etcd.tls");
    }

    #[test]
    fn a_tls_file_without_pem_is_refused_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let e = check(
            raw("{etcd: {endpoints: [e:2379], tls: {ca: ca.pem}}, name: n}"),
            dir.path(),
            listen(),
        )
        .unwrap_err();
        assert_eq!(e[0].0, "ha.etcd.tls.ca");
        assert_eq!(e[0].1, "ca.pem: no PEM certificate in it");
    }
}
