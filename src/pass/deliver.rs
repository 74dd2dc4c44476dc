//! The delivery step of a pass: push each node's file when it changed,
//! failed last time or is due for a resync, and an empty file to nodes
//! that left.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Fence;
use super::report::PassReport;
use crate::config::Service;
use crate::push::{Delivered, Delivery, DeliveryResult, NodeDelivery, Pusher};
use crate::shard::names::FileType;
use crate::shard::render::render;
use crate::store::files;
use crate::store::state::{NodeState, ServiceState};

/// Whether a node's file must be (re)delivered.
pub(super) fn needs_delivery(
    prev: Option<&NodeState>,
    hash: &str,
    resync: Duration,
    now: u64,
) -> bool {
    let Some(prev) = prev else { return true };
    prev.delivered_hash.as_deref() != Some(hash)
        || !prev.last_result.is_some_and(|r| r.succeeded())
        || prev
            .delivered_at
            .is_none_or(|t| now.saturating_sub(t) >= resync.as_secs())
}

/// Path of the shared empty file sent to nodes that left.
fn empty_file(out_dir: &Path, file_type: FileType) -> PathBuf {
    out_dir
        .join(".promshard")
        .join(format!("empty.{}", file_type.ext()))
}

/// Deliver the pass's files and fill in each node's result; nodes that
/// left (in `state`, not in the plan) get an empty file.
pub(super) async fn deliver(
    service: &Service,
    out_dir: &Path,
    state: &ServiceState,
    report: &mut PassReport,
    fence: Option<&Fence>,
    cancel: &CancellationToken,
    now: u64,
) {
    report.epoch = fence.map(|f| f.epoch);
    let pusher = Pusher::for_service(service);
    if !pusher.delivers() {
        return;
    }
    // ha: deliver only while etcd confirms the lease; carry the epoch.
    let fenced = match fence {
        Some(f) => Some((f.confirm)().await.map(|()| f.epoch)),
        None => None,
    };
    let epoch = fenced.as_ref().and_then(|f| f.as_ref().ok().copied());
    let pusher = Fenced {
        pusher,
        refused: fenced.and_then(Result::err),
    };
    let dir = out_dir.join(&service.name);
    let batch: Vec<Delivery> = report
        .nodes
        .iter()
        .filter(|n| {
            needs_delivery(
                state.nodes.get(&n.node),
                &n.hash,
                service.resync_interval,
                now,
            )
        })
        .map(|n| Delivery {
            node: n.node.clone(),
            file: dir.join(&n.file),
            file_name: n.file.clone(),
            epoch,
        })
        .collect();
    let delivered = pusher.deliver(service, batch, cancel, true).await;
    report.delivery_runs_s = delivered.run_seconds;
    let mut results: HashMap<String, NodeDelivery> = delivered
        .nodes
        .into_iter()
        .map(|r| (r.node.clone(), r))
        .collect();
    for n in &mut report.nodes {
        match results.remove(&n.node) {
            Some(r) => {
                n.delivered = true;
                n.result = Some(r.result);
                n.attempts = r.attempts;
                n.error = r.error;
            }
            None => n.result = Some(DeliveryResult::SkippedUnchanged),
        }
    }
    let planned: BTreeSet<&str> = report.nodes.iter().map(|n| n.node.as_str()).collect();
    let departed: Vec<String> = state
        .nodes
        .keys()
        .filter(|n| !planned.contains(n.as_str()))
        .cloned()
        .collect();
    if !departed.is_empty() {
        deliver_empty(service, out_dir, &pusher, departed, epoch, report, cancel).await;
    }
}

/// Send nodes that left an empty file, so they stop scraping.
async fn deliver_empty(
    service: &Service,
    out_dir: &Path,
    pusher: &Fenced,
    departed: Vec<String>,
    epoch: Option<u64>,
    report: &mut PassReport,
    cancel: &CancellationToken,
) {
    let empty = empty_file(out_dir, service.file_type);
    let name = format!("empty.{}", service.file_type.ext());
    let body = render(&[], &[], service.file_type, None);
    let written = empty
        .parent()
        .map(|d| std::fs::create_dir_all(d).and_then(|_| files::write_atomic(d, &name, &body)))
        .unwrap_or(Ok(()));
    if let Err(e) = written {
        tracing::warn!(service = %service.name, error = %e, "cannot write the empty file for departed nodes");
        return;
    }
    let batch = departed
        .into_iter()
        .map(|node| Delivery {
            node,
            file: empty.clone(),
            file_name: name.clone(),
            epoch,
        })
        .collect();
    let delivered = pusher.deliver(service, batch, cancel, false).await;
    report.delivery_runs_s.extend(delivered.run_seconds);
    report.departed = delivered.nodes;
}

/// The service's pusher, or (`ha:`, lease not confirmed) a refusal of
/// every delivery with the reason: per node `fenced`, not retried.
struct Fenced {
    pusher: Pusher,
    refused: Option<String>,
}

impl Fenced {
    async fn deliver(
        &self,
        service: &Service,
        batch: Vec<Delivery>,
        cancel: &CancellationToken,
        retry: bool,
    ) -> Delivered {
        match &self.refused {
            Some(why) => Delivered::fenced(&batch, why),
            None => self.pusher.deliver(service, batch, cancel, retry).await,
        }
    }
}
