//! The observation loop of a service (`observe:`): every interval, ask
//! each node what it scrapes, audit it against the plan in effect, and
//! learn target weights from the series the servers report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Service;
use crate::observe::{self, ServiceObservation, TargetState};
use crate::shard::weights::Weights;

impl Shared {
    /// The weights a pass of `service` uses (`weights: {from: series}`):
    /// what the observer learned, starting from the state file.
    pub(super) fn learned_weights(&self, service: &Service) -> Option<Arc<BTreeMap<String, u32>>> {
        service.weights?;
        let mut all = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        let learned = all.entry(service.name.clone()).or_insert_with(|| {
            let state =
                crate::store::state::ServiceState::load(&self.config().out_dir, &service.name);
            Weights::from_applied(&state.weights)
        });
        Some(Arc::new(learned.applied()))
    }

    /// Feed an observation into `name`'s learned weights; whether a weight
    /// in use changed (then the placement should follow).
    pub(super) fn learn_weights(
        &self,
        service: &Service,
        settings: crate::config::SeriesWeights,
        observed: &ServiceObservation,
    ) -> usize {
        let seen = observed
            .nodes
            .iter()
            .filter_map(|n| n.observed.as_ref())
            .flat_map(|o| o.targets.iter())
            .filter_map(|t| Some((t.address.as_str(), t.series?)));
        // Make sure the state file's weights are the starting point.
        let _ = self.learned_weights(service);
        let mut all = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        let learned = all.entry(service.name.clone()).or_default();
        let changed = learned.observe(seen, settings.smoothing, settings.threshold);
        let assignment = &observed.assignment;
        learned.retain(|a| !assignment.nodes_of(a).is_empty());
        changed
    }

    /// Whether a pass now would end one of `service`'s handovers.
    fn handover_due(&self, service: &Service, observed: &ServiceObservation) -> bool {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        let pending = status
            .get(&service.name)
            .and_then(|s| s.current.as_ref())
            .map(|c| c.pending_handovers())
            .unwrap_or_default();
        !pending.is_empty() && {
            let timeout = crate::pass::handover::timeout(&service.handover, Some(observed));
            crate::pass::handover::due(pending, observed, timeout)
        }
    }

    /// Observe the nodes of `name`'s plan in effect every `interval` until
    /// `stop`; never blocks a pass (it only reads the plan).
    pub(super) async fn observe_loop(
        self: Arc<Self>,
        service: Arc<Service>,
        settings: crate::config::Observe,
        stop: CancellationToken,
    ) {
        let mut log = ObservationLog::default();
        loop {
            let plan = self.status(&service.name).and_then(|s| {
                let current = s.current.as_ref()?;
                Some((
                    Arc::clone(&current.assignment),
                    with_files(current),
                    s.changed_at,
                    crate::shard::audit::handing_of(current.pending_handovers()),
                ))
            });
            // Until the first pass has a plan, look again soon.
            let wait = if plan.is_some() {
                settings.interval
            } else {
                settings.interval.min(Duration::from_secs(1))
            };
            if let Some((assignment, nodes, changed_at, handing)) = plan {
                let name = &service.name;
                let planned = observe::Planned {
                    assignment,
                    nodes: &nodes,
                    changed_at: &changed_at,
                    handing: &handing,
                };
                let observed =
                    observe::observe_service(name, &settings, planned, service.replicas).await;
                self.metrics.record_observation(name, &observed);
                log.changes(name, &observed);
                self.take_observation(&service, observed).await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publish an observation, learn weights from it, and re-plan when a
    /// weight in use changed.
    async fn take_observation(&self, service: &Service, observed: ServiceObservation) {
        let name = &service.name;
        let handover_due = self.handover_due(service, &observed);
        let relearned = service
            .weights
            .map(|w| self.learn_weights(service, w, &observed))
            .unwrap_or(0);
        {
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = status.get_mut(name) {
                s.audit = Some(observed.audit.counts.clone());
                s.observed_at = Some(observed.at);
                s.observed_series = Some(
                    observed
                        .nodes
                        .iter()
                        .filter_map(|n| Some((n.node.clone(), n.series?)))
                        .collect(),
                );
                s.observation = Some(Arc::new(observed));
            }
        }
        if handover_due {
            self.trigger(name, "handover can end").await;
        }
        if relearned > 0 {
            tracing::info!(service = %name, changed = relearned, "target weights learned from observed series; re-planning");
            self.trigger(name, "weights learned").await;
        }
    }
}

/// What the observer logs: each node that stops or starts answering, and
/// the audit's counts when they change (each event once).
#[derive(Default)]
struct ObservationLog {
    failing: BTreeSet<String>,
    last_counts: Option<BTreeMap<TargetState, usize>>,
}

impl ObservationLog {
    fn changes(&mut self, name: &str, observed: &ServiceObservation) {
        for n in &observed.nodes {
            match &n.error {
                Some(e) if self.failing.insert(n.node.clone()) => {
                    tracing::warn!(service = %name, node = %n.node, error = %e, "cannot observe node; its targets are unknown");
                }
                None if self.failing.remove(&n.node) => {
                    tracing::info!(service = %name, node = %n.node, "node answers observation again");
                }
                _ => {}
            }
        }
        let counts = &observed.audit.counts;
        if self.last_counts.as_ref() == Some(counts) {
            return;
        }
        let c = |s: TargetState| counts.get(&s).copied().unwrap_or(0);
        tracing::info!(
            service = %name,
            ok = c(TargetState::Ok),
            missing = c(TargetState::Missing),
            extra = c(TargetState::Extra),
            duplicate = c(TargetState::Duplicate),
            down = c(TargetState::Down),
            unknown = c(TargetState::Unknown),
            pending = c(TargetState::Pending),
            "audit changed"
        );
        self.last_counts = Some(counts.clone());
    }
}

/// Every node a pass left a file with: the plan's, and the drained nodes
/// and old owners that keep targets while they hand them over (their
/// servers are asked too, so a target left behind there shows).
fn with_files(report: &crate::pass::PassReport) -> Vec<String> {
    let mut nodes: BTreeSet<String> = report.assignment.nodes.iter().cloned().collect();
    nodes.extend(report.nodes.iter().map(|n| n.node.clone()));
    nodes.into_iter().collect()
}
