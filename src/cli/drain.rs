//! `promshard drain|undrain NODE`.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// `promshard drain|undrain <node>`: ask the running daemon (it passes the
/// services at once); when none answers, record it in the state of every
/// configured service that has the node, for the next pass.
pub(super) fn drain_command(config: &Path, node: &str, drain: bool) -> anyhow::Result<bool> {
    let config = Config::load(config)?;
    let verb = if drain { "drain" } else { "undrain" };
    let api = super::api::DaemonApi::new(&config, Duration::from_secs(10))?;
    let path = format!(
        "/api/v1/nodes/{}/{verb}",
        crate::observe::prom::encode(node)
    );
    let (url, addr) = (format!("{}{path}", api.base), api.base.clone());
    let request = api.post(&path);
    match request.send_empty() {
        Ok(mut resp) => {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            if resp.status().is_success() {
                println!("{verb}: {body}");
                return Ok(true);
            }
            anyhow::bail!("{url}: {}: {body}", resp.status());
        }
        Err(e) if config.ha.is_some() => anyhow::bail!(
            "no daemon answered at {addr} ({e}); with ha: a running instance records the {verb} in etcd, so that every instance keeps it"
        ),
        Err(e) => eprintln!(
            "promshard: no daemon answered at {addr} ({e}); recording the {verb} for the next pass"
        ),
    }
    let mut touched = Vec::new();
    for s in &config.services {
        let known = s.nodes.iter().any(|n| n.addr == node)
            || crate::store::state::ServiceState::load(&config.out_dir, &s.name)
                .nodes
                .contains_key(node);
        if (known || !drain)
            && crate::pass::handover::set_drained(&config.out_dir, &s.name, node, drain)?
        {
            touched.push(s.name.as_str());
        }
    }
    println!("{verb} {node}: services {}", touched.join(", "));
    Ok(!touched.is_empty() || !drain)
}
