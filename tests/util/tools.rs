//! The external tools end-to-end tests run, found the normal way: a
//! `PROMSHARD_*` variable naming the program if set, else `PATH`.
//!
//! A missing tool fails the test with one line naming the tool, the variable
//! and the command that installs it, instead of a spawn error deep inside
//! the test. `bash .ci/test` installs every tool and puts it on `PATH`.

use std::env;
use std::path::{Path, PathBuf};

/// What the test command does for a missing tool, quoted in every failure.
const INSTALL_HINT: &str = "`bash .ci/test` installs it and runs every test";

/// `prometheus`: `PROMSHARD_PROMETHEUS`, else `PATH`.
pub fn prometheus() -> PathBuf {
    find(
        "prometheus",
        "PROMSHARD_PROMETHEUS",
        "apt-get install prometheus",
    )
}

/// `promtool`: `PROMSHARD_PROMTOOL`, else `PATH` (promshard finds it the
/// same way to check rule files).
pub fn promtool() -> PathBuf {
    find(
        "promtool",
        "PROMSHARD_PROMTOOL",
        "apt-get install prometheus",
    )
}

/// `ansible-playbook`: `PROMSHARD_ANSIBLE_PLAYBOOK`, else `PATH`.
pub fn ansible_playbook() -> PathBuf {
    find(
        "ansible-playbook",
        "PROMSHARD_ANSIBLE_PLAYBOOK",
        "python3 -m venv v && v/bin/pip install ansible-core",
    )
}

/// `etcd`: `PROMSHARD_ETCD`, else `PATH`.
pub fn etcd() -> PathBuf {
    find("etcd", "PROMSHARD_ETCD", "apt-get install etcd-server")
}

/// `openssl`: `PROMSHARD_OPENSSL`, else `PATH`; the TLS tests make their
/// CAs and certificates with it (and serve TLS with `s_server`).
pub fn openssl() -> PathBuf {
    find("openssl", "PROMSHARD_OPENSSL", "apt-get install openssl")
}

/// `chromium`: `PROMSHARD_CHROMIUM`, else `PATH`.
pub fn chromium() -> PathBuf {
    find("chromium", "PROMSHARD_CHROMIUM", "apt-get install chromium")
}

/// `dnsmasq` (the DNS server of the DNS source tests): `PROMSHARD_DNSMASQ`,
/// else `PATH`.
pub fn dnsmasq() -> PathBuf {
    find(
        "dnsmasq",
        "PROMSHARD_DNSMASQ",
        "apt-get install dnsmasq-base",
    )
}

/// The Python interpreter that runs `ansible-playbook`'s modules.
pub fn ansible_python() -> PathBuf {
    let playbook = ansible_playbook();
    python_for(&playbook).unwrap_or_else(|| {
        panic!(
            "cannot tell which python runs {}: set ANSIBLE_PYTHON_INTERPRETER ({INSTALL_HINT})",
            playbook.display()
        )
    })
}

/// `ANSIBLE_PYTHON_INTERPRETER` if set, else the `python` beside
/// `playbook` (a venv), else the interpreter its `#!` line names.
pub fn python_for(playbook: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("ANSIBLE_PYTHON_INTERPRETER") {
        return Some(PathBuf::from(p));
    }
    let real = playbook.canonicalize().unwrap_or(playbook.to_path_buf());
    [playbook.parent(), real.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join("python"))
        .find(|p| p.is_file())
        .or_else(|| shebang_interpreter(&real))
}

fn find(name: &str, var: &str, install: &str) -> PathBuf {
    locate(name, var).unwrap_or_else(|| {
        panic!(
            "{name} not found: not on PATH and {var} is not set; install it ({install}) or run {INSTALL_HINT}"
        )
    })
}

/// `var` if set (it must name an executable), else `name` on `PATH`.
pub fn locate(name: &str, var: &str) -> Option<PathBuf> {
    if let Some(p) = env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "{var}={} is not an executable file; unset it or point it at {name}",
            p.display()
        );
        return Some(p);
    }
    on_path(name)
}

/// The first executable `name` in `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `#!/usr/bin/python3 -E` → `/usr/bin/python3` (a venv-less install).
fn shebang_interpreter(script: &Path) -> Option<PathBuf> {
    let text = std::fs::read(script).ok()?;
    let first = text.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?;
    let mut words = line.split_whitespace();
    let interp = words.next()?;
    if interp.ends_with("/env") {
        return words.next().and_then(on_path);
    }
    Some(PathBuf::from(interp))
}
