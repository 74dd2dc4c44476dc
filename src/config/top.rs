//! The whole file, raw → checked: the top-level keys, the `defaults:`
//! block and every service, with every problem collected before the
//! answer is given (a [`Config`] only when there are none).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::raw::{RawConfig, RawLimits, RawService};
use super::rules::inherit;
use super::service::check_service;
use super::validate::{Problems, check_out_dir, duration_not_zero, positive};
use super::{Config, ConfigProblem, Limits, Service};

/// Check a parsed file read from `path`: every problem, or the config.
pub(super) fn check_config(path: &Path, mut raw: RawConfig) -> Result<Config, Vec<ConfigProblem>> {
    let base_dir = config_dir(path);
    // Top-level rules go to every service, drop-ins too, like `defaults:`.
    raw.defaults.rules = inherit(raw.defaults.rules.take(), &raw.rules);
    let mut p = Problems::default();
    let listen = p.take(
        "listen",
        raw.listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("{:?} is not an ip:port socket address", raw.listen)),
        SocketAddr::from(([127, 0, 0, 1], 9310)),
    );
    let api_token = check_api_token(&raw, &base_dir, &mut p);
    let web = raw.web_config_file.as_ref().and_then(|f| {
        super::web::WebConfig::load(&base_dir.join(f))
            .map_err(|e| {
                for (key, message) in &e.problems {
                    let file = e.file.display();
                    p.push("web_config_file", format!("{file}: {key}: {message}"));
                }
            })
            .ok()
            .map(Arc::new)
    });
    let script_limits = p.under("script_limits.", |p| check_limits(&raw.script_limits, p));
    let env_allowlist = check_env_allowlist(raw.env_allowlist.clone(), &mut p);
    check_defaults(&raw.defaults, &base_dir, &mut p);
    let mut services = check_services(raw.services, &raw.defaults, &base_dir, &mut p);
    // A `source:` service's errors name the file its block is written in.
    // Absolute: its directory is where the block's files are read.
    let config_file = base_dir.join(path.file_name().unwrap_or_default());
    for s in services.iter_mut().filter(|s| s.source.is_some()) {
        Arc::make_mut(s).script.clone_from(&config_file);
    }
    let ha = raw.ha.clone().and_then(|h| {
        super::ha::check(h, &base_dir, listen)
            .map_err(|problems| problems.into_iter().for_each(|(k, m)| p.push(&k, m)))
            .ok()
    });
    let shared = ha
        .as_ref()
        .is_some_and(|h| h.mode == super::ha::HaMode::Shared);
    check_rules_dirs(&services, shared, &mut p);
    let dns_servers = check_dns(raw.dns.as_ref(), &mut p);
    let out_dir = base_dir.join(&raw.out_dir);
    p.check("out_dir", check_out_dir(&out_dir));
    p.finish(Config {
        path: path.to_path_buf(),
        out_dir,
        allowed_dirs: raw.allowed_dirs.iter().map(|d| base_dir.join(d)).collect(),
        api_token,
        web,
        scripts_dir: base_dir.join(raw.scripts_dir),
        script_limits,
        env_allowlist,
        defaults: raw.defaults,
        base_dir,
        listen,
        services,
        ha,
        dns_servers,
    })
}

/// `dns: {servers}`: each an `ip:port`, or an `ip` for port 53.
fn check_dns(dns: Option<&super::raw::RawDns>, p: &mut Problems) -> Vec<SocketAddr> {
    let Some(dns) = dns else { return Vec::new() };
    let mut out = Vec::new();
    for (i, s) in dns.servers.iter().enumerate() {
        let parsed = s.parse::<SocketAddr>().or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => out.push(a),
            Err(_) => p.push(
                &format!("dns.servers[{i}]"),
                format!("{s:?} is not an ip or ip:port (a name would need DNS itself)"),
            ),
        }
    }
    out
}

/// The directory relative paths in the config at `path` resolve against:
/// absolute and free of `..` (a config named `../x/promshard.yaml` must not
/// turn every destination into a path with `..`, which delivery refuses).
fn config_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// `api_token` or the trimmed content of `api_token_file`, never both,
/// never empty.
fn check_api_token(raw: &RawConfig, base_dir: &Path, p: &mut Problems) -> Option<String> {
    let token = match (&raw.api_token, &raw.api_token_file) {
        (Some(_), Some(_)) => Err("set api_token or api_token_file, not both".to_string()),
        (Some(t), None) => Ok(Some(t.trim().to_string())),
        (None, Some(f)) => std::fs::read_to_string(base_dir.join(f))
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("cannot read {}: {e}", base_dir.join(f).display())),
        (None, None) => Ok(None),
    };
    let token = p.take("api_token_file", token, None);
    if token.as_deref() == Some("") {
        p.push("api_token", "must not be empty");
    }
    token
}

/// `script_limits:`; every key unset keeps its default.
fn check_limits(raw: &RawLimits, p: &mut Problems) -> Limits {
    let d = Limits::default();
    let timeout = |t: &str| duration_not_zero(t, "must be greater than 0");
    Limits {
        // Checked first: its problem is listed before the sizes.
        timeout: p.setting("timeout", raw.timeout.as_deref(), timeout, d.timeout),
        max_operations: p.setting(
            "max_operations",
            raw.max_operations,
            positive,
            d.max_operations,
        ),
        max_call_levels: p.setting(
            "max_call_levels",
            raw.max_call_levels,
            positive,
            d.max_call_levels,
        ),
        max_string_size: p.setting(
            "max_string_size",
            raw.max_string_size,
            positive,
            d.max_string_size,
        ),
        max_array_size: p.setting(
            "max_array_size",
            raw.max_array_size,
            positive,
            d.max_array_size,
        ),
        max_map_size: p.setting("max_map_size", raw.max_map_size, positive, d.max_map_size),
        max_memory: p.setting(
            "max_memory_mb",
            raw.max_memory_mb,
            positive,
            d.max_memory >> 20,
        ) << 20,
    }
}

/// `env_allowlist:`: names or prefixes ending in one `*`.
fn check_env_allowlist(list: Option<Vec<String>>, p: &mut Problems) -> Vec<String> {
    let list = list.unwrap_or_else(|| vec!["PROMSHARD_*".to_string()]);
    if let Some(bad) = list
        .iter()
        .find(|p| p.is_empty() || p.trim_end_matches('*').contains('*'))
    {
        let message = format!("{bad:?}: use a name or a prefix ending in one '*'");
        p.push("env_allowlist", message);
    }
    list
}

/// The defaults are checked once on their own, so that a mistake in them
/// is reported even when only drop-in services use them.
fn check_defaults(defaults: &RawService, base_dir: &Path, p: &mut Problems) {
    p.under("defaults.", |p| {
        if defaults.name.is_some() {
            p.push("name", "not allowed in defaults: each service sets its own");
        }
        if defaults.source.is_some() {
            p.push(
                "source",
                "not allowed in defaults: each service sets its own",
            );
        }
        if defaults.script.is_some() {
            p.push(
                "script",
                "not allowed in defaults: each service sets its own",
            );
        }
        let as_service = RawService {
            name: Some("defaults".into()),
            script: Some(PathBuf::new()),
            source: None,
            ..defaults.clone()
        };
        check_service(as_service, base_dir, p);
    });
}

/// Every service of `services:`, with the defaults applied; names unique.
fn check_services(
    raw: Vec<RawService>,
    defaults: &RawService,
    base_dir: &Path,
    p: &mut Problems,
) -> Vec<Arc<Service>> {
    let mut services = Vec::new();
    let mut names = BTreeSet::new();
    for (i, rs) in raw.into_iter().enumerate() {
        let name = rs.name.clone().unwrap_or_default();
        let location = format!("services[{i}] {name:?}");
        if rs.name.is_some() && !names.insert(name.clone()) {
            p.push(&location, format!("duplicate service name {name:?}"));
        }
        let rs = rs.with_defaults(defaults);
        let service = p.under(&format!("{location}: "), |p| check_service(rs, base_dir, p));
        services.push(Arc::new(service));
    }
    services
}

/// No two services deliver different rule files to one directory of a
/// node they share: each keeps its manifest (the files that are its own,
/// to remove those it dropped) there, so each would remove the other's
/// files. Under `ha.mode: shared` not even the same files: the epoch marker
/// there is per directory and the two owners' epochs come from different
/// owner keys, so they would fence each other. Nodes from a script are not
/// known here and not compared.
fn check_rules_dirs(services: &[Arc<Service>], shared: bool, p: &mut Problems) {
    fn dir_of(s: &Service) -> Option<(&str, &super::Rules)> {
        let r = s.rules.as_ref()?;
        r.dir
            .as_deref()
            .filter(|d| !d.contains("{service}"))
            .map(|d| (d, r))
    }
    for (i, b) in services.iter().enumerate() {
        let Some((dir, rb)) = dir_of(b) else { continue };
        let clash = services[..i].iter().find(|a| {
            dir_of(a).is_some_and(|(d, ra)| {
                let same_place = !d.contains("{node}")
                    || a.nodes
                        .iter()
                        .any(|n| b.nodes.iter().any(|m| m.addr == n.addr));
                d == dir && same_place && (shared || ra.files != rb.files)
            })
        });
        if let Some(a) = clash {
            let why = if shared {
                "under ha.mode: shared their owners' epochs would fence each other's deliveries"
            } else {
                "their rule files differ, so each would remove the other's"
            };
            p.push(
                &format!("services[{i}] {:?}: rules.dir", b.name),
                format!(
                    "{dir:?} is also service {:?}'s rules directory on a node both have; {why}: put {{service}} in it",
                    a.name
                ),
            );
        }
    }
}
