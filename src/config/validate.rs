//! Validation helpers: the [`Problems`] collector every check reports to,
//! and the checks of single values that more than one place needs.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigProblem;
use super::duration::parse_duration;
use crate::shard::target::check_label_name;

/// The longest service name: it becomes a directory and part of file
/// names, which a file system limits to 255 bytes.
pub const MAX_SERVICE_NAME: usize = 200;

/// Problems found so far, each under the location of its key.
///
/// A check never stops at the first mistake: it records the problem here
/// and carries on with the default, so that one run of `promshard check`
/// lists every mistake in the file.
#[derive(Debug, Default)]
pub(super) struct Problems {
    /// Put in front of every key, e.g. `services[1] "mysql": `.
    prefix: String,
    list: Vec<ConfigProblem>,
}

impl Problems {
    /// Record `message` under `key`.
    pub fn push(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            location: format!("{}{key}", self.prefix),
            message: message.into(),
        });
    }

    /// The checked value, or `default` with the problem recorded under `key`.
    pub fn take<T>(&mut self, key: &str, checked: Result<T, String>, default: T) -> T {
        checked.unwrap_or_else(|message| {
            self.push(key, message);
            default
        })
    }

    /// Record the problem of a check that yields no value, if any.
    pub fn check(&mut self, key: &str, checked: Result<(), String>) {
        self.take(key, checked, ());
    }

    /// An optional key: `default` when unset, else `check` of its value
    /// (and `default` with the problem recorded when that fails).
    pub fn setting<R, T>(
        &mut self,
        key: &str,
        value: Option<R>,
        check: impl FnOnce(R) -> Result<T, String>,
        default: T,
    ) -> T {
        match value {
            None => default,
            Some(v) => self.take(key, check(v), default),
        }
    }

    /// Run `f` with `prefix` put in front of every key it records.
    pub fn under<T>(&mut self, prefix: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let outer = self.prefix.len();
        self.prefix.push_str(prefix);
        let value = f(self);
        self.prefix.truncate(outer);
        value
    }

    /// `value` if nothing was recorded, else every problem in the order found.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<ConfigProblem>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.list)
        }
    }
}

/// `n` if it lies in `range`, else the message `why` gives for it.
pub(super) fn in_range(
    n: i64,
    range: RangeInclusive<i64>,
    why: impl FnOnce(i64) -> String,
) -> Result<i64, String> {
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(why(n))
    }
}

/// A number that must be greater than zero.
pub(super) fn positive<T: PartialOrd + Default + fmt::Display>(n: T) -> Result<T, String> {
    if n > T::default() {
        Ok(n)
    } else {
        Err(format!("{n} must be greater than 0"))
    }
}

/// A share: above 0 and at most 1.
pub(super) fn fraction(x: f64) -> Result<f64, String> {
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be above 0 and at most 1"))
    }
}

/// A duration of at least `min`.
pub(super) fn duration_at_least(text: &str, min: Duration) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d >= min => Ok(d),
        _ => Err(format!("{text:?} must be at least {min:?}")),
    }
}

/// A duration that is not zero; `why` says so when it is.
pub(super) fn duration_not_zero(text: &str, why: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(why.into()),
        d => Ok(d),
    }
}

/// Check a `shard_label:` name. `job` and `instance` identify a series and
/// `__` names are dropped after relabelling, so none of them can carry the
/// shard.
pub(super) fn check_shard_label(name: &str) -> Result<(), String> {
    let reason = check_label_name(name).err().or(match name {
        "job" | "instance" => Some("job and instance identify a series; choose another name, e.g. shard"),
        _ if name.starts_with("__") => {
            Some("names starting with '__' are dropped after relabelling; choose another name, e.g. shard")
        }
        _ => None,
    });
    match reason {
        Some(r) => Err(format!("{name:?}: {r}")),
        None => Ok(()),
    }
}

/// Check a service name: it becomes a directory and a file-name part.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "is {} characters long, at most {MAX_SERVICE_NAME} (it becomes a directory and part of file names)",
            name.len()
        ));
    }
    if name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '_', '-' and '.', and must not start with '.'"
        ));
    }
    Ok(())
}

/// Directories `out_dir` must not be: promshard creates and removes files
/// in `<out_dir>/<service>/`, and a service called `etc` must never find
/// `/etc` there.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
];

/// Refuse an `out_dir` that is `/` or a system directory, as written (with
/// `.` and `..` resolved) or once links are followed.
pub(super) fn check_out_dir(out_dir: &Path) -> Result<(), String> {
    let mut lexical = PathBuf::new();
    for c in out_dir.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let real = std::fs::canonicalize(out_dir).ok();
    match [Some(lexical), real]
        .into_iter()
        .flatten()
        .find(|p| SYSTEM_DIRS.iter().any(|d| Path::new(d) == p))
    {
        Some(system) => Err(format!(
            "{} is the system directory {}: promshard creates and removes files below out_dir; give it a directory of its own (e.g. /var/lib/promshard/sd)",
            out_dir.display(),
            system.display()
        )),
        None => Ok(()),
    }
}
