//! `POST /api/v1/nodes/{node}/drain` and `undrain`: record the drain in
//! each service's state, then pass those services.

/// Drain or undrain `node` in every service that has it (in its nodes, its
/// plan, or its drained list), then pass each of them. Returns those
/// services.
pub(super) async fn drain_node(shared: &super::Shared, node: &str, drain: bool) -> Vec<String> {
    let out_dir = shared.config().out_dir.clone();
    let mut touched = Vec::new();
    for status in shared.statuses().await {
        let configured = shared
            .service(&status.name)
            .await
            .is_some_and(|s| s.nodes.iter().any(|n| n.addr == node));
        let (dir, name, n) = (out_dir.clone(), status.name.clone(), node.to_string());
        let known = configured || status.nodes_seen.contains(node) || !drain;
        if !known {
            continue;
        }
        let changed = tokio::task::spawn_blocking(move || {
            crate::pass::handover::set_drained(&dir, &name, &n, drain)
        })
        .await;
        match changed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) if drain => {}
            Ok(Ok(false)) => continue,
            Ok(Err(e)) => {
                tracing::error!(service = %status.name, node, error = %e, "cannot save the drain state");
                continue;
            }
            Err(e) => {
                tracing::error!(service = %status.name, node, error = %e, "drain task failed");
                continue;
            }
        }
        tracing::info!(service = %status.name, node, drain, "node {}", if drain { "drained" } else { "undrained" });
        shared
            .trigger(&status.name, if drain { "drain" } else { "undrain" })
            .await;
        touched.push(status.name);
    }
    touched
}
