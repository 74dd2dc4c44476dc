//! Certificate authorities and certificates for the TLS tests, made with
//! the real `openssl` command in the test's own directory: P-256 keys
//! (fast), valid for two days, servers for `127.0.0.1` and `localhost`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools::openssl;

/// A CA: its certificate and key.
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

/// A certificate (PEM) and its key (PEM, PKCS#8).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Clone, Copy)]
pub enum Usage {
    Server,
    Client,
    /// Both: etcd's gateway dials etcd with its server certificate.
    ServerAndClient,
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(openssl())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn new_key(dir: &Path, name: &str) -> String {
    let key = format!("{name}.key");
    run(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    key
}

impl Ca {
    /// A self-signed CA `name` in `dir` (`<name>.pem`, `<name>.key`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        fs::create_dir_all(dir).expect("certs dir");
        let key = new_key(dir, name);
        let cert = format!("{name}.pem");
        let subject = format!("/CN={name}");
        run(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            cert: dir.join(cert),
            key: dir.join(key),
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate `name` signed by this CA (`<name>.pem`, `<name>.key`).
    pub fn issue(&self, name: &str, usage: Usage) -> Issued {
        let dir = &self.dir;
        let key = new_key(dir, name);
        let csr = format!("{name}.csr");
        let subject = format!("/CN={name}");
        run(
            dir,
            &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
        );
        let ext = format!("{name}.ext");
        let usage = match usage {
            Usage::Server => {
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            }
            Usage::Client => "extendedKeyUsage=clientAuth\n",
            Usage::ServerAndClient => {
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            }
        };
        fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{usage}"),
        )
        .expect("extensions file");
        let cert = format!("{name}.pem");
        let (ca_cert, ca_key) = (
            self.cert.display().to_string(),
            self.key.display().to_string(),
        );
        let serial = format!("{}", std::process::id() as u64 * 1000 + name.len() as u64);
        run(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        Issued {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }
}

/// The usual set in `dir`: a CA (`ca.pem`, `ca.key`), a server certificate
/// for 127.0.0.1 that may also act as a client (`server.pem`, `server.key`)
/// and a client certificate (`client.pem`, `client.key`).
pub fn pki(dir: &Path) -> (Ca, Issued, Issued) {
    let ca = Ca::new(dir, "ca");
    let server = ca.issue("server", Usage::ServerAndClient);
    let client = ca.issue("client", Usage::Client);
    (ca, server, client)
}
