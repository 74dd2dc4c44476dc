//! Build script: records the git commit the binary is built from, for
//! `promshard --version` and `promshard::build::COMMIT`.
//!
//! The commit comes from `git rev-parse --short HEAD` when the crate is the
//! top of a git checkout, else from `PROMSHARD_GIT_COMMIT` (a source tarball
//! or a packager's build), else it is `unknown`. Cargo reruns this only
//! when HEAD or the branch it points to moves, or that variable changes,
//! not on every source edit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The longest value taken from `PROMSHARD_GIT_COMMIT` (a full SHA-256 id).
const MAX_COMMIT_LEN: usize = 64;

fn main() {
    println!("cargo:rerun-if-env-changed=PROMSHARD_GIT_COMMIT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = match git_commit(&manifest_dir) {
        Some(commit) => commit,
        None => from_env().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=PROMSHARD_BUILD_COMMIT={commit}");
}

/// `git` with arguments, run in `dir`; its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// The short commit of the checkout whose top is `dir`, watching the files
/// that change when it moves. `None` outside a checkout, or when `dir` is
/// only a directory inside someone else's (a crate unpacked in another
/// project's tree must not take that project's commit).
fn git_commit(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let absolute = |p: String| dir.join(p);
    let git_dir = absolute(git(dir, &["rev-parse", "--git-dir"])?);
    let common_dir = absolute(git(dir, &["rev-parse", "--git-common-dir"])?);
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(branch));
    }
    // A path that does not exist would make cargo rerun this every build.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(commit)
}

/// `PROMSHARD_GIT_COMMIT`, when set to something that can be printed and
/// used as a label value as it is.
fn from_env() -> Option<String> {
    let value = std::env::var("PROMSHARD_GIT_COMMIT").ok()?;
    let value = value.trim();
    let printable = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if value.is_empty() || value.len() > MAX_COMMIT_LEN || !printable {
        println!(
            "cargo:warning=PROMSHARD_GIT_COMMIT={value:?} ignored: want 1 to {MAX_COMMIT_LEN} letters, digits, '.', '_', '-' or '+'"
        );
        return None;
    }
    Some(value.to_string())
}
