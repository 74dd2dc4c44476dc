//! `POST /api/v1/nodes/{node}/drain` and `undrain`: record the drain in
//! each service's state (and, with `ha:`, in etcd, so that whichever
//! instance leads keeps it), then pass those services.

/// Drain or undrain `node` in every service that has it (in its nodes, its
/// plan, or its drained list), then pass each of them. Returns those
/// services; `Err` when `ha:`'s etcd could not record it (nothing changed).
pub(super) async fn drain_node(
    shared: &super::Shared,
    node: &str,
    drain: bool,
) -> Result<Vec<String>, String> {
    let mut services = Vec::new();
    for status in shared.statuses().await {
        let configured = shared
            .service(&status.name)
            .await
            .is_some_and(|s| s.nodes.iter().any(|n| n.addr == node));
        if configured || status.nodes_seen.contains(node) || !drain {
            services.push(status.name);
        }
    }
    if services.is_empty() {
        return Ok(services);
    }
    if let Some(ha) = &shared.ha {
        ha.set_drained(node, drain)
            .await
            .map_err(|e| format!("cannot record the drain of {node} in etcd: {e}"))?;
    }
    let out_dir = shared.config().out_dir.clone();
    let mut touched = Vec::new();
    for name in services {
        let (dir, service, n) = (out_dir.clone(), name.clone(), node.to_string());
        let changed = tokio::task::spawn_blocking(move || {
            crate::pass::handover::set_drained(&dir, &service, &n, drain)
        })
        .await;
        match changed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) if drain => {}
            Ok(Ok(false)) => continue,
            Ok(Err(e)) => {
                tracing::error!(service = %name, node, error = %e, "cannot save the drain state");
                continue;
            }
            Err(e) => {
                tracing::error!(service = %name, node, error = %e, "drain task failed");
                continue;
            }
        }
        tracing::info!(service = %name, node, drain, "node {}", if drain { "drained" } else { "undrained" });
        shared
            .trigger(&name, if drain { "drain" } else { "undrain" })
            .await;
        touched.push(name);
    }
    Ok(touched)
}
