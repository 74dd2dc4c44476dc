//! Runners: one task per service that runs one pass per wake-up, its cron
//! job, and how a runner is started, stopped and retired.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::Job;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use super::status::{LastPass, ServiceStatus};
use crate::config::{Config, Schedule, Service};
use crate::pass::{Fence, PassError, PassInput, PassOptions, PassReport, run_pass};
use crate::script::Sandbox;
use crate::shard::placement::NodeSpec;
use crate::store::state::{LastResult, unix_now};

/// One running service.
pub(super) struct Runner {
    pub(super) service: Arc<Service>,
    pub(super) wake: Arc<Notify>,
    pub(super) stop: CancellationToken,
    pub(super) job: Option<Uuid>,
    pub(super) task: JoinHandle<()>,
}

impl Shared {
    pub(super) fn pass_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.pass_locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(name.to_string()).or_default())
    }

    pub(super) fn sandbox(&self) -> Sandbox {
        Sandbox::for_config(&self.config())
    }

    /// Run one pass of `service` and record its outcome. Returns when the
    /// next step of a rebalance held back by `max_move_ratio` is due: after
    /// the observation interval (so the audit sees each step), or 2 s
    /// without observation.
    pub(super) async fn pass(&self, service: &Service) -> Option<Duration> {
        let lock = self.pass_lock(&service.name);
        let _one_at_a_time = lock.lock().await;
        let started = Instant::now();
        let config = self.config();
        let nodes = self.membership.live(&service.name, &service.nodes);
        let result = if nodes.is_empty() && !service.nodes.is_empty() {
            // Re-planning onto nobody: refuse, loudly, and leave every file
            // and delivery as the last pass left them.
            Err(PassError::AllNodesDown {
                nodes: service.nodes.len(),
            })
        } else {
            self.run_service_pass(&config, service, nodes).await
        };
        let standby = self
            .ha
            .as_ref()
            .is_some_and(|ha| !ha.delivers(&service.name));
        if matches!(result, Err(PassError::AllNodesDown { .. })) && !standby {
            forget_deliveries(&config, service, LastResult::NodeDown);
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_pass(&service.name, seconds, &result);
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        let s = status.get_mut(&service.name)?;
        s.passes += 1;
        let (outcome, error) = crate::metrics::pass_outcome(&result);
        log_failure(&service.name, &result, outcome, error.as_deref());
        s.last_pass = Some(LastPass {
            finished_at: unix_now(),
            result: outcome,
            duration_ms: (seconds * 1000.0) as u64,
            error,
        });
        let mut next_step = None;
        if let Ok(report) = result {
            if report.deferred_moves > 0 {
                next_step = Some(
                    service
                        .observe
                        .as_ref()
                        .map_or(Duration::from_secs(2), |o| o.interval),
                );
            }
            if let Some(old) = &s.current {
                for gone in old
                    .nodes
                    .iter()
                    .filter(|o| !report.nodes.iter().any(|n| n.node == o.node))
                {
                    self.metrics.forget_node(&service.name, &gone.node);
                }
            }
            if outcome == "ok" {
                s.last_success = Some(unix_now());
            }
            if let Some(h) = &report.handover {
                let before = s.current.as_ref().and_then(|c| c.handover.as_ref());
                self.metrics.handover.record(&service.name, before, h);
            }
            s.nodes_seen
                .extend(report.nodes.iter().map(|n| n.node.clone()));
            let now = Instant::now();
            for n in report.nodes.iter().filter(|n| n.changed) {
                s.changed_at.insert(n.node.clone(), now);
            }
            for n in &report.nodes {
                if let Some(t) = n.delivered_at {
                    s.delivered_at.insert(n.node.clone(), t);
                }
            }
            s.current = Some(report);
        }
        next_step
    }

    /// A pass of `service` on its live nodes: `static_live` (the live
    /// ones of its configured `nodes:`), unless its script supplies the
    /// nodes; then those, and with `health:` the live ones of them.
    pub(super) async fn run_service_pass(
        &self,
        config: &Config,
        service: &Service,
        static_live: Vec<NodeSpec>,
    ) -> Result<PassReport, PassError> {
        let script = self.cache.for_service(service)?;
        let node_script = service
            .node_script
            .as_ref()
            .map(|p| self.cache.get(p))
            .transpose()?;
        let sandbox = self.sandbox();
        let nodes =
            match crate::pass::resolve_nodes(service, &script, node_script, &sandbox).await? {
                None => static_live,
                Some(all) => match &service.health {
                    None => all,
                    Some(health) => {
                        self.membership.watch(&service.name, Some(health), &all);
                        let up = self.membership.live(&service.name, &all);
                        if up.is_empty() && !all.is_empty() {
                            return Err(PassError::AllNodesDown { nodes: all.len() });
                        }
                        up
                    }
                },
            };
        self.sync_drains(config, service, &nodes).await;
        let (options, fence) = self.ha_mode(config, service);
        let epoch = fence.as_ref().map(|f| f.epoch);
        let input = PassInput {
            config,
            service,
            script: &script,
            nodes: &nodes,
            sandbox: &sandbox,
            learned_weights: self.learned_weights(service),
            previous: service
                .max_move_ratio
                .and_then(|_| self.status(&service.name)?.current)
                .map(|c| c.assignment),
            observation: self.status(&service.name).and_then(|s| s.observation),
            preview_drained: Vec::new(),
            fence,
            placement_notes: self
                .status(&service.name)
                .and_then(|s| s.current)
                .map(|c| c.placement_notes),
        };
        let result = run_pass(input, options, self.shutdown.token()).await;
        if let (Some(ha), Ok(r)) = (&self.ha, &result) {
            if let Some(epoch) = epoch {
                ha.publish(&service.name, epoch, &r.plan_hash, r.targets)
                    .await;
            }
            ha.keep(&service.name, r);
        }
        result
    }

    /// With `ha:`: make the service's drained nodes the set in etcd, so a
    /// drain made through any instance holds on whichever one leads.
    async fn sync_drains(&self, config: &Config, service: &Service, nodes: &[NodeSpec]) {
        let Some(ha) = &self.ha else { return };
        let drained = match ha.drained().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(service = %service.name, error = %e, "cannot read the drained nodes from etcd; keeping the last known");
                return;
            }
        };
        let known: BTreeSet<String> = nodes.iter().map(|n| n.addr.clone()).collect();
        let (out_dir, name) = (config.out_dir.clone(), service.name.clone());
        let synced = tokio::task::spawn_blocking(move || {
            crate::pass::handover::sync_drained(&out_dir, &name, &drained, &known)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        match synced {
            Ok(true) => tracing::info!(service = %service.name, "drained nodes updated from etcd"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(service = %service.name, error = %e, "cannot save the drained nodes from etcd")
            }
        }
    }

    /// With `ha:`, how this pass runs: a standby computes only (dry run);
    /// a leader (or the service's owner) delivers, fenced, and resends
    /// every file on its first pass of a term (what an earlier leader
    /// delivered is unknown).
    fn ha_mode(&self, config: &Config, service: &Service) -> (PassOptions, Option<Fence>) {
        let Some(ha) = &self.ha else {
            return (PassOptions::default(), None);
        };
        match ha.mode(&service.name) {
            crate::ha::PassMode::Standby => (
                PassOptions {
                    dry_run: true,
                    ..PassOptions::default()
                },
                None,
            ),
            crate::ha::PassMode::Leader(fence) => {
                if ha.first_pass_of_term(&service.name, fence.epoch) {
                    forget_deliveries(config, service, LastResult::NewLeader);
                }
                (PassOptions::default(), Some(fence))
            }
        }
    }

    /// Start a runner for `service` (its first pass runs at once).
    pub(super) async fn start(
        self: &Arc<Self>,
        runners: &mut BTreeMap<String, Runner>,
        service: Arc<Service>,
    ) {
        let wake = Arc::new(Notify::new());
        let stop = self.shutdown.child_token();
        self.membership
            .watch(&service.name, service.health.as_ref(), &service.nodes);
        let job = match self.add_job(&service, &wake).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(service = %service.name, error = %e, "cannot schedule; only triggers will run it");
                None
            }
        };
        self.publish_service(&service);
        self.metrics.init_service(&service);
        let task = self.spawn_runner(Arc::clone(&service), Arc::clone(&wake), stop.clone());
        if let Some(settings) = service.observe.clone() {
            let shared = Arc::clone(self);
            let (service, stop) = (Arc::clone(&service), stop.clone());
            self.shutdown
                .spawn(async move { shared.observe_loop(service, settings, stop).await });
        }
        wake.notify_one();
        tracing::info!(service = %service.name, schedule = %service.schedule, nodes = service.nodes.len(), "service started");
        runners.insert(
            service.name.clone(),
            Runner {
                service,
                wake,
                stop,
                job,
                task,
            },
        );
    }

    /// The runner task: one pass per wake-up until `stop`.
    fn spawn_runner(
        self: &Arc<Self>,
        service: Arc<Service>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let shared = Arc::clone(self);
        self.shutdown.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = wake.notified() => {}
                }
                if let Some(wait) = shared.pass(&service).await {
                    // The rebalance's next step, unless a trigger comes first.
                    let (wake, stop) = (Arc::clone(&wake), stop.clone());
                    shared.shutdown.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(wait) => wake.notify_one(),
                        }
                    });
                }
            }
        })
    }

    /// Show `service` in the API (a new entry, or new settings on the
    /// entry it had).
    fn publish_service(&self, service: &Service) {
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        let entry = status
            .entry(service.name.clone())
            .or_insert_with(|| ServiceStatus::new(service));
        entry.script = service.script.clone();
        entry.schedule = service.schedule.to_string();
    }

    pub(super) async fn add_job(
        &self,
        service: &Service,
        wake: &Arc<Notify>,
    ) -> anyhow::Result<Uuid> {
        let tick = {
            let wake = Arc::clone(wake);
            move |_id, _sched| {
                wake.notify_one();
                Box::pin(async {})
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }
        };
        let job = match &service.schedule {
            Schedule::Cron(expr) => Job::new_async(expr.as_str(), tick)?,
            Schedule::Every(d) => Job::new_repeated_async(*d, tick)?,
        };
        Ok(self.scheduler.add(job).await?)
    }

    /// Stop a runner; its current pass (if any) completes first.
    pub(super) async fn stop(&self, runner: Runner) {
        runner.stop.cancel();
        if let Some(id) = runner.job {
            let _ = self.scheduler.remove(&id).await;
        }
        let _ = runner.task.await;
    }

    /// Stop a runner without waiting for its pass in progress; `then` runs
    /// once that pass is over.
    pub(super) fn retire(
        self: &Arc<Self>,
        runner: Runner,
        then: impl FnOnce(&Shared) + Send + 'static,
    ) {
        runner.stop.cancel();
        let shared = Arc::clone(self);
        self.shutdown.spawn(async move {
            shared.stop(runner).await;
            then(&shared);
        });
    }

    /// Whether a pass of `name` is running now.
    pub(super) fn busy(&self, name: &str) -> bool {
        self.pass_lock(name).try_lock().is_err()
    }
}

/// Forget what was delivered to `service`'s nodes (not the files), so that
/// each node is sent its file and its rule files again, even if unchanged:
/// every node was down (`why` = `NodeDown`; a returning server may have
/// lost its disk), or a new `ha:` leader cannot know what was delivered.
pub(super) fn forget_deliveries(config: &Config, service: &Service, why: LastResult) {
    let mut state = crate::store::state::ServiceState::load(&config.out_dir, &service.name);
    if state.nodes.values().all(|n| n.delivered_hash.is_none())
        && state.rules.values().all(|r| r.hash.is_none())
    {
        return;
    }
    for n in state.nodes.values_mut() {
        n.delivered_hash = None;
        n.last_result = Some(why);
    }
    for r in state.rules.values_mut() {
        r.hash = None;
        r.last_result = Some(why);
    }
    if let Err(e) = state.save(&config.out_dir, &service.name) {
        tracing::warn!(service = %service.name, error = %e, "cannot save the state; returning nodes may not be sent unchanged files");
    }
}

/// Log a pass that failed or whose deliveries failed, once.
fn log_failure(
    service: &str,
    result: &Result<PassReport, PassError>,
    outcome: &str,
    error: Option<&str>,
) {
    match (result, error) {
        (Ok(_), Some(e)) => {
            tracing::error!(service = %service, error = %e, "pass wrote its files but deliveries failed; they are retried next pass");
        }
        (Err(err), Some(e)) => {
            let files = if err.files_kept() {
                "; last good files kept"
            } else {
                " after changing files"
            };
            tracing::error!(service = %service, error = %e, "pass {outcome}{files}");
        }
        _ => {}
    }
}
