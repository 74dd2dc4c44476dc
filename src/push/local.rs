//! `push: local`: copy each node's file atomically to a path template,
//! e.g. `/srv/prom/{node}/sd/node.json`. Used when the Prometheus servers
//! read a shared or local filesystem, and by the end-to-end tests. Under
//! `ha:` each copy is fenced by the leader's epoch (`push::fence`).

use std::path::{Component, Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::fence::{FenceError, write_fenced};
use super::{Delivery, DeliveryResult, NodeDelivery};
use crate::config::Service;
use crate::store::files::write_atomic;

/// Fill `{node}` and `{service}` into a destination template. The values are
/// validated names (no `/`), and the result must not contain `..`.
pub fn expand_template(template: &str, node: &str, service: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(crate::shard::template::for_node(template, service, node));
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("destination {} contains '..'", path.display()));
    }
    if path.file_name().is_none() {
        return Err(format!("destination {} has no file name", path.display()));
    }
    Ok(path)
}

pub(super) async fn deliver(
    dest: &str,
    service: &Service,
    batch: Vec<Delivery>,
    cancel: &CancellationToken,
) -> Vec<NodeDelivery> {
    let mut out = Vec::with_capacity(batch.len());
    for d in batch {
        if cancel.is_cancelled() {
            out.push(NodeDelivery {
                node: d.node,
                result: DeliveryResult::Failed,
                attempts: 0,
                error: Some("cancelled by shutdown".into()),
            });
            continue;
        }
        let target = expand_template(dest, &d.node, &service.name);
        let (file, epoch) = (d.file.clone(), d.epoch);
        let result = match target {
            Err(e) => Err(FenceError::Io(e)),
            Ok(target) => tokio::task::spawn_blocking(move || match epoch {
                None => copy_atomic(&file, &target).map_err(FenceError::Io),
                Some(epoch) => write_fenced(&target, epoch, || copy_atomic(&file, &target)),
            })
            .await
            .unwrap_or_else(|e| Err(FenceError::Io(format!("copy task failed: {e}")))),
        };
        out.push(match result {
            Err(e @ FenceError::Fenced { .. }) => NodeDelivery {
                node: d.node,
                result: DeliveryResult::Fenced,
                attempts: 1,
                error: Some(e.to_string()),
            },
            Ok(changed) => NodeDelivery {
                node: d.node,
                result: if changed {
                    DeliveryResult::Changed
                } else {
                    DeliveryResult::Ok
                },
                attempts: 1,
                error: None,
            },
            Err(e) => NodeDelivery {
                node: d.node,
                result: DeliveryResult::Failed,
                attempts: 1,
                error: Some(e.to_string()),
            },
        });
    }
    out
}

/// Copy `src` to `dest` atomically; returns whether `dest` changed.
fn copy_atomic(src: &Path, dest: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if std::fs::read(dest).ok().as_deref() == Some(bytes.as_slice()) {
        return Ok(false);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name", dest.display()))?;
    write_atomic(dir, name, &bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_expansion() {
        let p = expand_template("/srv/{node}/sd/{service}.json", "10.0.0.1:9090", "node").unwrap();
        assert_eq!(p, PathBuf::from("/srv/10.0.0.1:9090/sd/node.json"));
        assert!(expand_template("/srv/../{node}.json", "a:1", "s").is_err());
    }
}
