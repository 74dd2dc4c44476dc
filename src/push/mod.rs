//! Delivery of written sd files to their Prometheus nodes.
//!
//! A pass writes every node's file under `out_dir`, then hands the nodes
//! whose file needs delivery to the service's [`Pusher`] as one batch. A
//! pusher reports a result per node; one node failing never stops the
//! others. Which nodes need delivery (changed, failed last time, rejoined,
//! resync due) is decided by the pass, not here, so every pusher gets the
//! same change detection.
//!
//! Pushers: `none` (Prometheus reads `out_dir` or pulls `/sd/…`), `local`
//! (atomic copy to a path template), `ansible` (one batched
//! `ansible-playbook` run per pass).

pub mod ansible;
pub mod fence;
mod local;

use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{AnsiblePush, Push, Service};
use crate::store::state::LastResult;

pub use local::expand_template;

/// One node's file to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub node: String,
    /// Absolute path of the node's file under `out_dir`.
    pub file: PathBuf,
    /// File name (without directory).
    pub file_name: String,
    /// With `ha:`, the leader's epoch: the destination refuses it when a
    /// newer leader has delivered there (see `push::fence`).
    pub epoch: Option<u64>,
}

/// Outcome of delivering to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryResult {
    /// Delivered; the destination already had this content.
    Ok,
    /// Delivered; the destination changed.
    Changed,
    Failed,
    Unreachable,
    /// Not attempted: nothing changed since the last successful delivery.
    SkippedUnchanged,
    /// Refused under `ha:`: this instance is no longer the leader, or a
    /// newer leader's epoch is at the destination. Never retried.
    Fenced,
}

impl DeliveryResult {
    /// Every result, e.g. to forget a node's series.
    pub const ALL: [Self; 6] = [
        Self::Ok,
        Self::Changed,
        Self::Failed,
        Self::Unreachable,
        Self::SkippedUnchanged,
        Self::Fenced,
    ];

    /// Whether the node now has its file.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Ok | Self::Changed | Self::SkippedUnchanged)
    }

    /// Label value for metrics and state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Changed => "changed",
            Self::Failed => "failed",
            Self::Unreachable => "unreachable",
            Self::SkippedUnchanged => "skipped-unchanged",
            Self::Fenced => "fenced",
        }
    }
}

impl From<DeliveryResult> for LastResult {
    fn from(r: DeliveryResult) -> Self {
        match r {
            DeliveryResult::Ok | DeliveryResult::SkippedUnchanged => LastResult::Ok,
            DeliveryResult::Changed => LastResult::Changed,
            DeliveryResult::Failed => LastResult::Failed,
            DeliveryResult::Unreachable => LastResult::Unreachable,
            DeliveryResult::Fenced => LastResult::Fenced,
        }
    }
}

/// Per-node delivery report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeDelivery {
    pub node: String,
    pub result: DeliveryResult,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a batch delivery did.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// One report per delivery, in batch order.
    pub nodes: Vec<NodeDelivery>,
    /// Duration of each external run (e.g. `ansible-playbook`), in seconds.
    pub run_seconds: Vec<f64>,
}

/// The configured delivery mechanism of a service.
#[derive(Debug, Clone)]
pub enum Pusher {
    None,
    Local { dest: String },
    Ansible(AnsiblePush),
}

impl Delivered {
    /// Every delivery of `batch` refused for `why` (not attempted).
    pub fn fenced(batch: &[Delivery], why: &str) -> Self {
        Delivered {
            nodes: batch
                .iter()
                .map(|d| NodeDelivery {
                    node: d.node.clone(),
                    result: DeliveryResult::Fenced,
                    attempts: 0,
                    error: Some(why.to_string()),
                })
                .collect(),
            run_seconds: Vec::new(),
        }
    }
}

impl Pusher {
    /// Build the pusher a service's config asks for.
    pub fn for_service(service: &Service) -> Self {
        match &service.push {
            Push::None => Pusher::None,
            Push::Local { dest } => Pusher::Local { dest: dest.clone() },
            Push::Ansible(a) => Pusher::Ansible(a.clone()),
        }
    }

    /// Whether this pusher delivers anything (`none` does not).
    pub fn delivers(&self) -> bool {
        !matches!(self, Pusher::None)
    }

    /// Deliver a batch; one report per delivery, in batch order.
    /// `retry: false` makes one attempt only (nodes that left the ring may
    /// well be down; retrying them would hold up every pass).
    pub async fn deliver(
        &self,
        service: &Service,
        batch: Vec<Delivery>,
        cancel: &CancellationToken,
        retry: bool,
    ) -> Delivered {
        let delivered = match self {
            Pusher::None => Delivered::default(),
            Pusher::Local { dest } => Delivered {
                nodes: local::deliver(dest, service, batch, cancel).await,
                run_seconds: Vec::new(),
            },
            Pusher::Ansible(a) => ansible::deliver(a, service, batch, cancel, retry).await,
        };
        // The one place a failed delivery is logged, with its reason.
        for r in delivered.nodes.iter().filter(|r| !r.result.is_success()) {
            tracing::warn!(
                service = %service.name,
                node = %r.node,
                result = %r.result.as_str(),
                attempts = r.attempts,
                error = r.error.as_deref().unwrap_or(""),
                "delivery failed"
            );
        }
        delivered
    }
}
