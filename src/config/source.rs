//! `source:`: a service's targets from a block in Prometheus's own service
//! discovery syntax, for users who already have one.
//!
//! The same block is what a script passes to `prometheus_sd(#{…})`, so it
//! is parsed here, once, for both: `check` refuses a bad block with the key
//! and the value, and a script gets the same message at run time. Field
//! names and defaults are Prometheus's (`dns_sd_configs` `type` SRV, a
//! `port` for A and AAAA, `refresh_interval` accepted; promshard's own
//! `schedule:` decides when sources are read).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::parse_duration;
use crate::shard::relabel::{self, RawRule, Rule};

/// The SD kinds promshard reads, in the order messages list them.
pub const SUPPORTED: [&str; 4] = [
    "static_configs",
    "file_sd_configs",
    "http_sd_configs",
    "dns_sd_configs",
];

/// A checked `source:` block.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SdBlock {
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub file_sd_configs: Vec<FileSd>,
    #[serde(default)]
    pub http_sd_configs: Vec<HttpSd>,
    #[serde(default)]
    pub dns_sd_configs: Vec<DnsSd>,
    #[serde(default)]
    pub relabel_configs: Vec<RawRule>,
}

/// `static_configs` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `file_sd_configs` entry: files or `dir/*.json` patterns (`*` in the last
/// part only, as in Prometheus), JSON or YAML by extension.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSd {
    pub files: Vec<String>,
    #[serde(default)]
    pub refresh_interval: Option<String>,
}

/// `http_sd_configs` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSd {
    pub url: String,
    #[serde(default)]
    pub refresh_interval: Option<String>,
    #[serde(default)]
    pub authorization: Option<Authorization>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub tls_config: Option<TlsConfig>,
    #[serde(default)]
    pub follow_redirects: Option<bool>,
}

/// `authorization:` of an HTTP client (type defaults to `Bearer`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub credentials: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<String>,
}

/// `basic_auth:` of an HTTP client.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
}

/// `tls_config:` of an HTTP client.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
}

/// `dns_sd_configs` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSd {
    pub names: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub refresh_interval: Option<String>,
}

/// A DNS record type `dns_sd_configs` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsType {
    Srv,
    A,
    Aaaa,
}

impl DnsSd {
    /// The record type (default SRV).
    pub fn record_type(&self) -> Result<DnsType, String> {
        match self
            .kind
            .as_deref()
            .unwrap_or("SRV")
            .to_ascii_uppercase()
            .as_str()
        {
            "SRV" => Ok(DnsType::Srv),
            "A" => Ok(DnsType::A),
            "AAAA" => Ok(DnsType::Aaaa),
            other => Err(format!(
                "type {other:?} is not supported (expected SRV, A or AAAA)"
            )),
        }
    }
}

/// Parse and check a block (the `source:` value, or a script's map as
/// JSON); the relabel rules come back compiled.
pub fn parse_sd_block(value: serde_json::Value) -> Result<(SdBlock, Vec<Rule>), String> {
    let serde_json::Value::Object(map) = &value else {
        return Err(format!(
            "expected a map of {}, got {value}",
            SUPPORTED.join(", ")
        ));
    };
    for key in map.keys() {
        if !SUPPORTED.contains(&key.as_str()) && key != "relabel_configs" {
            let kind = if key.ends_with("_configs") {
                "is not a supported kind of service discovery"
            } else {
                "is not a key of a source"
            };
            return Err(format!(
                "{key} {kind}; supported: {} (and relabel_configs)",
                SUPPORTED.join(", ")
            ));
        }
    }
    let block: SdBlock = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if block.static_configs.is_empty()
        && block.file_sd_configs.is_empty()
        && block.http_sd_configs.is_empty()
        && block.dns_sd_configs.is_empty()
    {
        return Err(format!(
            "names no targets: give one of {}",
            SUPPORTED.join(", ")
        ));
    }
    check_block(&block)?;
    let rules = relabel::compile(&block.relabel_configs).map_err(|e| e.to_string())?;
    Ok((block, rules))
}

fn check_block(block: &SdBlock) -> Result<(), String> {
    let interval = |at: String, v: &Option<String>| match v {
        Some(text) => parse_duration(text)
            .map(drop)
            .map_err(|e| format!("{at}.refresh_interval: {e}")),
        None => Ok(()),
    };
    for (i, f) in block.file_sd_configs.iter().enumerate() {
        interval(format!("file_sd_configs[{i}]"), &f.refresh_interval)?;
        if f.files.is_empty() {
            return Err(format!("file_sd_configs[{i}].files: empty"));
        }
    }
    for (i, h) in block.http_sd_configs.iter().enumerate() {
        interval(format!("http_sd_configs[{i}]"), &h.refresh_interval)?;
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err(format!(
                "http_sd_configs[{i}].url: {:?} is not an http:// or https:// URL",
                h.url
            ));
        }
    }
    for (i, d) in block.dns_sd_configs.iter().enumerate() {
        interval(format!("dns_sd_configs[{i}]"), &d.refresh_interval)?;
        let kind = d
            .record_type()
            .map_err(|e| format!("dns_sd_configs[{i}]: {e}"))?;
        if kind != DnsType::Srv && d.port.is_none() {
            return Err(format!(
                "dns_sd_configs[{i}]: a port is required for type {}",
                d.kind.as_deref().unwrap_or_default()
            ));
        }
        if d.names.is_empty() {
            return Err(format!("dns_sd_configs[{i}].names: empty"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<(SdBlock, Vec<Rule>), String> {
        parse_sd_block(serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn unsupported_kinds_list_the_supported_ones() {
        let e = parse("{kubernetes_sd_configs: [{role: node}]}").unwrap_err();
        assert!(
            e.contains("kubernetes_sd_configs is not a supported kind"),
            "{e}"
        );
        assert!(e.contains("static_configs, file_sd_configs, http_sd_configs, dns_sd_configs"));
    }

    #[test]
    fn dns_defaults_and_checks() {
        let (b, _) = parse("{dns_sd_configs: [{names: [_x._tcp.example.]}]}").unwrap();
        assert_eq!(b.dns_sd_configs[0].record_type(), Ok(DnsType::Srv));
        let e = parse("{dns_sd_configs: [{names: [a.example.], type: A}]}").unwrap_err();
        assert!(e.contains("port is required"), "{e}");
        let e = parse("{dns_sd_configs: [{names: [a.], type: MX, port: 1}]}").unwrap_err();
        assert!(e.contains("\"MX\""), "{e}");
        let e = parse("{dns_sd_configs: [{names: [a.], refresh_interval: soon}]}").unwrap_err();
        assert!(e.contains("dns_sd_configs[0].refresh_interval"), "{e}");
    }

    #[test]
    fn relabel_errors_name_the_rule() {
        let e = parse(
            "{static_configs: [{targets: [a:1]}], relabel_configs: [{action: hashmod, target_label: s, modulus: 2}]}",
        )
        .unwrap_err();
        assert!(e.starts_with("relabel_configs[0]: action hashmod"), "{e}");
    }
}
