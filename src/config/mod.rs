//! The configuration file (`promshard.yaml`), read in two levels.
//!
//! - **Low level, [`raw`]:** serde types that mirror the file as written.
//!   Parsing is strict (an unknown key is an error with its line and
//!   column) and every key is optional, so "unset" is still visible when a
//!   service inherits from `defaults:`.
//! - **High level, [`checked`]:** the types the rest of promshard trusts
//!   ([`Config`], [`Service`], [`Health`], [`Observe`], [`Schedule`],
//!   [`Limits`] …): values in range, defaults filled in, relative paths
//!   resolved against the directory of the config file (not the working
//!   directory).
//!
//! [`Config::parse`] goes from one to the other in three steps:
//!
//! 1. [`text`]: the text's size and nesting are checked before the YAML
//!    parser sees it, then it is parsed into [`raw`] types. These steps stop
//!    at the first problem, which [`serde_error`] words like every other
//!    (`services[1] "mysql": replicas: expected an integer, got "two"`,
//!    or `unknown key "replica" (line 7), did you mean "replicas"?`).
//! 2. [`top`] checks the top-level keys, the `defaults:` block and each
//!    service (through [`service`], which a drop-in's `fn service()` map
//!    also goes through). Here problems are *collected*: each check records
//!    its problem in a [`validate::Problems`] under the key's location
//!    (`services[1] "mysql": replicas`) and carries on with the default,
//!    so that `promshard check` lists every mistake at once.
//! 3. No problems: the [`Config`]. Otherwise a [`ConfigError`] whose
//!    `Display` names the file, the location and the reason, one line each.
//!
//! Durations and schedules are parsed in [`duration`]; the API's TLS and
//! basic auth file (`web_config_file`) in [`web`]; `source:` blocks
//! (Prometheus service discovery syntax) in [`source`].

pub mod checked;
pub mod duration;
pub mod ha;
pub mod handover;
pub mod raw;
pub mod rules;
mod serde_error;
pub mod service;
pub mod source;
#[cfg(test)]
mod tests;
pub mod text;
pub mod top;
pub mod validate;
pub mod web;
mod web_tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use checked::{
    AnsiblePush, Config, Health, Limits, Observe, Push, RESERVED_VARS, Schedule, SeriesWeights,
    Service,
};
pub use duration::{DEFAULT_SCHEDULE, parse_duration, parse_schedule};
pub use rules::Rules;
pub use service::{check_node_addr, nodes_from_json};
pub use source::{SdBlock, parse_sd_block};
pub use text::{MAX_CONFIG_BYTES, MAX_CONFIG_NESTING};
pub use validate::{MAX_SERVICE_NAME, check_service_name};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// Where: e.g. `services[1] "mysql": replicas`, or `line 3 column 5`;
    /// empty for the top level of the file.
    pub location: String,
    pub message: String,
}

/// Every problem found in a config file; `Display` gives one line each.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.location.as_str() {
                // A key at the top level of the file.
                "" => write!(f, "{}: {}", self.file.display(), p.message)?,
                at => write!(f, "{}: {at}: {}", self.file.display(), p.message)?,
            }
        }
        Ok(())
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = text::read(path).map_err(|p| error(path, vec![p]))?;
        Self::parse(path, &text)
    }

    /// Validate config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = text::parse_yaml(text).map_err(|p| error(path, vec![p]))?;
        top::check_config(path, raw).map_err(|problems| error(path, problems))
    }

    /// Why the HTTP API is open to more than this host, if it is: a
    /// non-loopback `listen` without `api_token` or basic auth users.
    pub fn exposure_warning(&self) -> Option<String> {
        let basic_auth = self.web.as_ref().is_some_and(|w| !w.users.is_empty());
        if self.listen.ip().is_loopback() || self.api_token.is_some() || basic_auth {
            return None;
        }
        Some(format!(
            "{}: listen {} is not a loopback address and no api_token is set: anyone who reaches it can read the services, their status and every sd file, and POST calls are refused; set api_token_file (and basic_auth_users in a web_config_file), or listen on 127.0.0.1",
            self.path.display(),
            self.listen
        ))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn error(path: &Path, problems: Vec<ConfigProblem>) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        problems,
    }
}
