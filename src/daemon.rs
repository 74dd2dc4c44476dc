//! `promshard run`: the long-lived service.
//!
//! Each service gets a *runner* task that waits on a [`Notify`] and runs one
//! pass per wake-up. Everything that wants a pass — the service's cron job,
//! a script reload, a config change, a membership change, `POST
//! /api/v1/services/{name}/dispatch` — calls `notify_one()`. A `Notify`
//! holds at most one permit, so triggers that arrive during a pass coalesce
//! into exactly one follow-up pass. A per-service pass lock that outlives
//! runners guarantees one pass per service at a time, even while a runner is
//! being replaced after a config change.
//!
//! A reload never waits for a pass: a script can be stuck for its whole
//! deadline (a hung source), and waiting would hold every other service's
//! change — and the next reload — behind it. A changed or removed service's
//! old runner is retired in the background: its pass in progress finishes,
//! and the replacement's first pass queues on the pass lock behind it.
//!
//! Shutdown is a [`CancellationToken`] passed to every task: the scheduler
//! stops, runners finish the pass they are in (file writes always complete;
//! deliveries in flight are cancelled and their child processes killed), the
//! HTTP server drains, and `run` returns.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Schedule, Service};
use crate::membership::{Membership, NodeStatus};
use crate::metrics::Metrics;
use crate::observe::weights::Weights;
use crate::observe::{self, ServiceObservation, TargetState};
use crate::pass::{PassError, PassInput, PassOptions, PassReport, run_pass};
use crate::script::cache::ScriptState;
use crate::script::{Sandbox, ScriptCache, ScriptEvent};

/// Result of the last pass of a service, for `/api/v1/services`.
#[derive(Debug, Clone, Serialize)]
pub struct LastPass {
    /// Unix seconds when the pass finished.
    pub finished_at: u64,
    /// `ok`, `failed` (script, plan, I/O or delivery) or `refused` (mass-drop guard).
    pub result: &'static str,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the API shows about one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub script: PathBuf,
    pub schedule: String,
    /// Next cron tick (RFC 3339), when known.
    pub next_run: Option<String>,
    pub passes: u64,
    /// The script version serving and why a newer edit is not.
    pub script_state: ScriptState,
    pub last_pass: Option<LastPass>,
    /// Unix seconds of the last successful pass.
    pub last_success: Option<u64>,
    /// The last successful pass (the plan now in effect).
    pub current: Option<PassReport>,
    /// Per-node health, when the service has `health:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<NodeStatus>>,
    /// Every node any plan of this service has had; `/sd` answers `[]`
    /// (not 404) for those no longer in the plan.
    #[serde(skip)]
    pub nodes_seen: std::collections::BTreeSet<String>,
    /// Audit counts of the last observation (`observe:`), by state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<BTreeMap<TargetState, usize>>,
    /// Unix seconds of the last observation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<u64>,
    /// Series each node really ingests from the service's targets, as last
    /// observed (next to the planned `weight` of each node in `current`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_series: Option<BTreeMap<String, u64>>,
    /// The last observation (served whole by `/api/v1/services/{name}/audit`).
    #[serde(skip)]
    pub observation: Option<Arc<ServiceObservation>>,
    /// When each node's file last changed: the audit's grace.
    #[serde(skip)]
    pub changed_at: BTreeMap<String, Instant>,
}

/// One running service.
struct Runner {
    service: Arc<Service>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    job: Option<Uuid>,
    task: JoinHandle<()>,
}

/// State shared by the runners, the watchers and the HTTP API.
pub struct Shared {
    config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    pub metrics: Metrics,
    /// Health checks and the live nodes of each service.
    pub membership: Arc<Membership>,
    runners: tokio::sync::Mutex<BTreeMap<String, Runner>>,
    status: RwLock<BTreeMap<String, ServiceStatus>>,
    pass_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Target weights learned from the servers, per service.
    weights: Mutex<HashMap<String, Weights>>,
    /// Compiled scripts; the last good version of each survives bad edits.
    cache: Arc<ScriptCache>,
    scheduler: JobScheduler,
    shutdown: CancellationToken,
    /// Runners of changed or removed services finishing their last pass;
    /// shutdown waits for them too.
    retiring: Mutex<Vec<JoinHandle<()>>>,
}

use crate::state::unix_now;

impl Shared {
    /// The config in effect.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Status of every service, with fresh next-run times.
    pub async fn statuses(&self) -> Vec<ServiceStatus> {
        let jobs: Vec<(String, Option<Uuid>)> = self
            .runners
            .lock()
            .await
            .iter()
            .map(|(n, r)| (n.clone(), r.job))
            .collect();
        let mut next = BTreeMap::new();
        for (name, job) in jobs {
            if let Some(id) = job {
                let mut sched = self.scheduler.clone();
                if let Ok(Some(t)) = sched.next_tick_for_job(id).await {
                    next.insert(name, t.to_rfc3339());
                }
            }
        }
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        status
            .values()
            .cloned()
            .map(|mut s| {
                s.next_run = next.remove(&s.name);
                s.health = self.membership.status(&s.name);
                s.script_state = self.cache.state(&s.script);
                s
            })
            .collect()
    }

    /// Status of one service.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        let mut s = self
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()?;
        s.health = self.membership.status(name);
        Some(s)
    }

    /// The weights a pass of `service` uses (`weights: {from: series}`):
    /// what the observer learned, starting from the state file.
    fn learned_weights(&self, service: &Service) -> Option<Arc<BTreeMap<String, u32>>> {
        service.weights?;
        let mut all = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        let learned = all.entry(service.name.clone()).or_insert_with(|| {
            let state = crate::state::ServiceState::load(&self.config().out_dir, &service.name);
            Weights::from_applied(&state.weights)
        });
        Some(Arc::new(learned.applied()))
    }

    /// Feed an observation into `name`'s learned weights; whether a weight
    /// in use changed (then the placement should follow).
    fn learn_weights(
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

    /// The running settings of every service (drop-ins included).
    async fn running(&self) -> Vec<Arc<Service>> {
        let runners = self.runners.lock().await;
        runners.values().map(|r| Arc::clone(&r.service)).collect()
    }

    /// The running settings of service `name`.
    pub async fn service(&self, name: &str) -> Option<Arc<Service>> {
        let runners = self.runners.lock().await;
        runners.get(name).map(|r| Arc::clone(&r.service))
    }

    /// Whether every service has had a successful pass and has a live node.
    pub fn ready(&self) -> bool {
        self.unready().is_none()
    }

    /// Why the daemon is not ready, if it is not.
    pub fn unready(&self) -> Option<String> {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        if status.is_empty() {
            return Some("no services".into());
        }
        let waiting: Vec<&str> = status
            .values()
            .filter(|s| s.last_success.is_none())
            .map(|s| s.name.as_str())
            .collect();
        if !waiting.is_empty() {
            return Some(format!("no successful pass yet: {}", waiting.join(", ")));
        }
        let dead: Vec<&str> = status
            .keys()
            .filter(|name| {
                self.membership
                    .status(name)
                    .is_some_and(|n| !n.is_empty() && n.iter().all(|n| !n.in_ring))
            })
            .map(String::as_str)
            .collect();
        if !dead.is_empty() {
            return Some(format!(
                "every node is down (last files kept): {}",
                dead.join(", ")
            ));
        }
        None
    }

    /// Ask for a pass of `name`; false if there is no such service.
    pub async fn trigger(&self, name: &str, why: &str) -> bool {
        match self.runners.lock().await.get(name) {
            Some(r) => {
                tracing::debug!(service = name, trigger = why, "pass requested");
                r.wake.notify_one();
                true
            }
            None => false,
        }
    }

    fn pass_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.pass_locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(name.to_string()).or_default())
    }

    fn sandbox(&self) -> Sandbox {
        Sandbox::for_config(&self.config())
    }

    /// Run one pass of `service` and record its outcome. Returns when the
    /// next step of a rebalance held back by `max_move_ratio` is due: after
    /// the observation interval (so the audit sees each step), or 2 s
    /// without observation.
    async fn pass(&self, service: &Service) -> Option<Duration> {
        let lock = self.pass_lock(&service.name);
        let _one_at_a_time = lock.lock().await;
        let started = Instant::now();
        let config = self.config();
        let sandbox = self.sandbox();
        let nodes = self.membership.live(&service.name, &service.nodes);
        let result = if nodes.is_empty() && !service.nodes.is_empty() {
            // Re-planning onto nobody: refuse, loudly, and leave every file
            // and delivery as the last pass left them.
            Err(PassError::AllNodesDown {
                nodes: service.nodes.len(),
            })
        } else {
            let node_script = service
                .node_script
                .as_ref()
                .map(|p| self.cache.get(p))
                .transpose();
            match self
                .cache
                .get(&service.script)
                .and_then(|s| Ok((s, node_script?)))
            {
                Err(e) => Err(PassError::Script(e)),
                Ok((script, node_script)) => {
                    let input = PassInput {
                        config: &config,
                        service,
                        script: &script,
                        nodes: &nodes,
                        sandbox: &sandbox,
                        node_filter: self.script_node_filter(service),
                        node_script,
                        learned_weights: self.learned_weights(service),
                        previous: service
                            .max_move_ratio
                            .and_then(|_| self.status(&service.name)?.current)
                            .map(|c| c.assignment),
                    };
                    run_pass(input, PassOptions::default(), &self.shutdown).await
                }
            }
        };
        if matches!(result, Err(PassError::AllNodesDown { .. })) {
            forget_deliveries(&config, service);
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_pass(&service.name, seconds, &result);
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        let s = status.get_mut(&service.name)?;
        s.passes += 1;
        let (outcome, error) = crate::metrics::pass_outcome(&result);
        match (&result, &error) {
            (Ok(_), Some(e)) => {
                tracing::error!(service = %service.name, error = %e, "pass wrote its files but deliveries failed; they are retried next pass");
            }
            (Err(err), Some(e)) => {
                let files = if err.files_kept() {
                    "; last good files kept"
                } else {
                    " after changing files"
                };
                tracing::error!(service = %service.name, error = %e, "pass {outcome}{files}");
            }
            _ => {}
        }
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
            s.nodes_seen
                .extend(report.nodes.iter().map(|n| n.node.clone()));
            let now = Instant::now();
            for n in report.nodes.iter().filter(|n| n.changed) {
                s.changed_at.insert(n.node.clone(), now);
            }
            s.current = Some(report);
        }
        next_step
    }

    /// Observe the nodes of `name`'s plan in effect every `interval` until
    /// `stop`; never blocks a pass (it only reads the plan).
    async fn observe_loop(
        self: Arc<Self>,
        service: Arc<Service>,
        settings: crate::config::Observe,
        stop: CancellationToken,
    ) {
        let (name, replicas) = (service.name.clone(), service.replicas);
        let mut last_counts = None;
        let mut failing = std::collections::BTreeSet::new();
        loop {
            let plan = self.status(&name).and_then(|s| {
                let a = Arc::clone(&s.current.as_ref()?.assignment);
                Some((a, s.changed_at))
            });
            // Until the first pass has a plan, look again soon.
            let wait = if plan.is_some() {
                settings.interval
            } else {
                settings.interval.min(Duration::from_secs(1))
            };
            if let Some((assignment, changed_at)) = plan {
                let observed =
                    observe::observe_service(&name, &settings, assignment, &changed_at, replicas)
                        .await;
                self.metrics.record_observation(&name, &observed);
                for n in &observed.nodes {
                    match &n.error {
                        Some(e) if failing.insert(n.node.clone()) => {
                            tracing::warn!(service = %name, node = %n.node, error = %e, "cannot observe node; its targets are unknown");
                        }
                        None if failing.remove(&n.node) => {
                            tracing::info!(service = %name, node = %n.node, "node answers observation again");
                        }
                        _ => {}
                    }
                }
                let counts = observed.audit.counts.clone();
                if last_counts.as_ref() != Some(&counts) {
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
                    last_counts = Some(counts.clone());
                }
                let relearned = service
                    .weights
                    .map(|w| self.learn_weights(&service, w, &observed))
                    .unwrap_or(0);
                {
                    let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(s) = status.get_mut(&name) {
                        s.audit = Some(counts);
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
                if relearned > 0 {
                    tracing::info!(service = %name, changed = relearned, "target weights learned from observed series; re-planning");
                    self.trigger(&name, "weights learned").await;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// For a health-checked service whose script supplies the nodes: watch
    /// the nodes it returns and keep the live ones.
    fn script_node_filter(&self, service: &Service) -> Option<crate::pass::NodeFilter> {
        let health = service.health.clone()?;
        let membership = Arc::clone(&self.membership);
        let name = service.name.clone();
        Some(Arc::new(move |nodes: &[crate::ring::NodeSpec]| {
            membership.watch(&name, Some(&health), nodes);
            membership.live(&name, nodes)
        }))
    }

    /// Start a runner for `service` (its first pass runs at once).
    async fn start(
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
        {
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            let entry = status
                .entry(service.name.clone())
                .or_insert_with(|| ServiceStatus {
                    name: service.name.clone(),
                    script: service.script.clone(),
                    schedule: service.schedule.to_string(),
                    next_run: None,
                    passes: 0,
                    script_state: ScriptState::default(),
                    last_pass: None,
                    last_success: None,
                    current: None,
                    health: None,
                    nodes_seen: Default::default(),
                    audit: None,
                    observed_at: None,
                    observed_series: None,
                    observation: None,
                    changed_at: BTreeMap::new(),
                });
            entry.script = service.script.clone();
            entry.schedule = service.schedule.to_string();
        }
        let task = {
            let shared = Arc::clone(self);
            let (service, wake, stop) = (Arc::clone(&service), Arc::clone(&wake), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = wake.notified() => {}
                    }
                    if let Some(wait) = shared.pass(&service).await {
                        // The rebalance's next step, unless a trigger comes first.
                        let (wake, stop) = (Arc::clone(&wake), stop.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = tokio::time::sleep(wait) => wake.notify_one(),
                            }
                        });
                    }
                }
            })
        };
        if let Some(settings) = service.observe.clone() {
            let shared = Arc::clone(self);
            let (service, stop) = (Arc::clone(&service), stop.clone());
            tokio::spawn(async move { shared.observe_loop(service, settings, stop).await });
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

    async fn add_job(&self, service: &Service, wake: &Arc<Notify>) -> anyhow::Result<Uuid> {
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
    async fn stop(&self, runner: Runner) {
        runner.stop.cancel();
        if let Some(id) = runner.job {
            let _ = self.scheduler.remove(&id).await;
        }
        let _ = runner.task.await;
    }

    /// Stop a runner without waiting for its pass in progress; `then` runs
    /// once that pass is over.
    fn retire(self: &Arc<Self>, runner: Runner, then: impl FnOnce(&Shared) + Send + 'static) {
        runner.stop.cancel();
        let shared = Arc::clone(self);
        let task = tokio::spawn(async move {
            shared.stop(runner).await;
            then(&shared);
        });
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        retiring.retain(|t| !t.is_finished());
        retiring.push(task);
    }

    /// Whether a pass of `name` is running now.
    fn busy(&self, name: &str) -> bool {
        self.pass_lock(name).try_lock().is_err()
    }

    /// Make the running services match `config`: start new ones, restart
    /// changed ones, stop removed ones (their files stay in place).
    pub async fn reconcile(self: &Arc<Self>, config: Arc<Config>) {
        let globals_changed = {
            let old = self.config();
            old.out_dir != config.out_dir || old.allowed_dirs != config.allowed_dirs
        };
        if self.config().listen != config.listen {
            tracing::warn!(old = %self.config().listen, new = %config.listen, "listen address changes take effect after a restart");
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&config);
        // Drop-ins run their `fn service()`: blocking work.
        let services = {
            let (config, cache) = (Arc::clone(&config), Arc::clone(&self.cache));
            tokio::task::spawn_blocking(move || crate::config::effective_services(&config, &cache))
                .await
        };
        let (services, problems) = match services {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "listing services failed; running services kept");
                return;
            }
        };
        for p in &problems {
            tracing::error!(service = %p.name, path = %p.path.display(), "{p}");
        }
        let mut wanted: BTreeMap<String, Arc<Service>> = services
            .iter()
            .map(|s| (s.name.clone(), Arc::clone(s)))
            .collect();
        let mut runners = self.runners.lock().await;
        // A running drop-in whose file is still there but whose edit broke
        // it (e.g. `fn service()` returns `replicas: 0`) keeps its last good
        // settings, as a running service does when a config edit is
        // rejected. Removing the file is what stops it.
        for p in &problems {
            if let Some(r) = runners.get(&p.name)
                && r.service.drop_in
                && !wanted.contains_key(&p.name)
            {
                tracing::warn!(service = %p.name, path = %p.path.display(), "drop-in service keeps running with its last good settings");
                wanted.insert(p.name.clone(), Arc::clone(&r.service));
            }
        }
        let names: Vec<String> = runners.keys().cloned().collect();
        // Old runners are retired, not awaited (see the module doc). A
        // replacement queues on the service's pass lock, so passes still
        // never overlap.
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|s| !globals_changed && *s == runners[&name].service);
            if keep {
                continue;
            }
            let Some(runner) = runners.remove(&name) else {
                continue;
            };
            let busy = self.busy(&name);
            if wanted.contains_key(&name) {
                if busy {
                    tracing::info!(service = %name, "service changed; new settings apply after the pass in progress");
                } else {
                    tracing::info!(service = %name, "service changed; re-planning");
                }
                self.retire(runner, |_| {});
                continue;
            }
            self.membership.unwatch(&name);
            let gone = self
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let nodes = gone.map(|s| s.nodes_seen).unwrap_or_default();
            tracing::warn!(
                service = %name,
                dir = %config.out_dir.join(&name).display(),
                finishing_pass = busy,
                "service removed; its files are left in place"
            );
            // Its metrics go once its last pass can no longer record any,
            // unless it was added back meanwhile.
            self.retire(runner, move |shared| {
                let back = shared
                    .status
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&name);
                if !back {
                    shared.metrics.forget_service(&name, &nodes)
                }
            });
        }
        for (name, service) in wanted {
            if !runners.contains_key(&name) {
                self.start(&mut runners, service).await;
            }
        }
    }

    /// A script was added, edited or removed: re-list services (drop-ins come
    /// and go, `fn service()` may have changed) and pass those that use it.
    async fn script_changed(self: &Arc<Self>, event: ScriptEvent) {
        // A rejected edit is logged here, with its position; the watcher
        // logs the others.
        match &event {
            ScriptEvent::Failed { path, error } => {
                self.metrics.script_reload("failed");
                let (line, column) = error.position().unwrap_or((0, 0));
                tracing::error!(script = %path.display(), line, column, kept_previous = self.cache.has_good(path), error = %error, "script rejected; the last good version keeps running");
                return;
            }
            ScriptEvent::Reloaded { .. } | ScriptEvent::Added { .. } => {
                self.metrics.script_reload("ok");
            }
            ScriptEvent::Removed { .. } => {}
        }
        let before: HashMap<String, Arc<Service>> = self
            .runners
            .lock()
            .await
            .iter()
            .map(|(name, r)| (name.clone(), Arc::clone(&r.service)))
            .collect();
        self.reconcile(self.config()).await;
        // Runners that reconcile just started or replaced run their first
        // pass anyway; waking them again would run the script twice.
        let affected: Vec<String> = self
            .runners
            .lock()
            .await
            .values()
            .filter(|r| event.affects(&r.service))
            .filter(|r| {
                before
                    .get(&r.service.name)
                    .is_some_and(|old| Arc::ptr_eq(old, &r.service))
            })
            .map(|r| r.service.name.clone())
            .collect();
        for name in affected {
            self.trigger(&name, "script change").await;
        }
    }

    /// Re-read the config file; on error keep the running config. A new
    /// config must pass what `check` checks: the file, and the scripts of
    /// every service in it. (Drop-in scripts are checked as they change;
    /// a broken one never blocks the config.)
    pub async fn reload_config(self: &Arc<Self>, why: &str) {
        let (path, cache) = (self.config_path.clone(), Arc::clone(&self.cache));
        let checked = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(|e| e.to_string())?;
            let problems: Vec<String> = config
                .services
                .iter()
                .filter_map(|s| {
                    crate::config::check_service_scripts(s, &cache)
                        .err()
                        .map(|e| format!("{e} (service {})", s.name))
                })
                .collect();
            if problems.is_empty() {
                Ok(config)
            } else {
                Err(problems.join("\n"))
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("checking the config failed: {e}")));
        match checked {
            Ok(config) => {
                self.metrics.config_reload("ok");
                tracing::info!(trigger = why, path = %self.config_path.display(), "config reloaded");
                self.reconcile(Arc::new(config)).await;
            }
            Err(e) => {
                self.metrics.config_reload("failed");
                for line in e.lines() {
                    tracing::error!(
                        trigger = why,
                        "config rejected, running config kept: {line}"
                    );
                }
            }
        }
    }
}

/// Every node of `service` is down: forget what was delivered (not the
/// files). A returning server may have lost its disk, so each node is sent
/// its file again when it is back, even if the content is unchanged.
fn forget_deliveries(config: &Config, service: &Service) {
    let mut state = crate::state::ServiceState::load(&config.out_dir, &service.name);
    if state.nodes.values().all(|n| n.delivered_hash.is_none()) {
        return;
    }
    for n in state.nodes.values_mut() {
        n.delivered_hash = None;
        n.last_result = Some("node_down".into());
    }
    if let Err(e) = state.save(&config.out_dir, &service.name) {
        tracing::warn!(service = %service.name, error = %e, "cannot save the state; returning nodes may not be sent unchanged files");
    }
}

/// Watch the config file (its directory, so editors' save-by-rename is
/// seen) and send a tick on every change, debounced.
fn watch_config(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let name = path.file_name().map(|n| n.to_os_string());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev.kind.is_modify() | ev.kind.is_create()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Start the script watcher; its token stops it.
fn start_script_watch(
    shared: &Shared,
    config: &Config,
    tx: &tokio::sync::mpsc::UnboundedSender<ScriptEvent>,
) -> (CancellationToken, Option<JoinHandle<()>>) {
    let cancel = shared.shutdown.child_token();
    let dirs = crate::script::watch::watch_dirs(config);
    let handle = crate::script::watch(dirs, Arc::clone(&shared.cache), tx.clone(), cancel.clone())
        .map_err(|e| tracing::error!(error = %e, "cannot watch scripts; edits need a restart"))
        .ok();
    (cancel, handle)
}

/// Run the daemon until `shutdown` is cancelled.
pub async fn run(config_path: PathBuf, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before anything else: SIGHUP's default action kills the process, and
    // a reload (systemd's ExecReload) may come as soon as we are started.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let config = Arc::new(Config::load(&config_path)?);
    if let Some(warning) = config.exposure_warning() {
        tracing::warn!("{warning}");
    }
    let scheduler = JobScheduler::new()
        .await
        .context("starting the cron scheduler")?;
    let (membership, mut membership_events) = Membership::new(shutdown.clone());
    let shared = Arc::new(Shared {
        config_path: config_path.clone(),
        config: RwLock::new(Arc::clone(&config)),
        metrics: Metrics::new(),
        membership,
        runners: tokio::sync::Mutex::new(BTreeMap::new()),
        status: RwLock::new(BTreeMap::new()),
        pass_locks: Mutex::new(HashMap::new()),
        weights: Mutex::new(HashMap::new()),
        cache: Arc::new(ScriptCache::new()),
        scheduler: scheduler.clone(),
        shutdown: shutdown.clone(),
        retiring: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "{}: listen {}: cannot bind",
                config_path.display(),
                config.listen
            )
        })?;
    // Membership changes: metrics, and a pass of the service at once.
    let membership_task = {
        let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = membership_events.recv() => match e { Some(e) => e, None => break },
                };
                shared.metrics.membership(&event);
                if event.changes.is_empty() {
                    continue;
                }
                if event.live() == 0 {
                    tracing::error!(service = %event.service, nodes = event.nodes.len(), "every node of the service is down; keeping the last files and deliveries");
                }
                shared.trigger(&event.service, "membership").await;
            }
        })
    };
    let http = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    shared.reconcile(Arc::clone(&config)).await;
    let (script_tx, mut script_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut script_watch = start_script_watch(&shared, &config, &script_tx);
    // Rule files: a change wakes the services that deliver them.
    let (rules_tx, mut rules_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut rules_watch = crate::rules::watch::RulesWatch::start(
        &shared.running().await,
        rules_tx.clone(),
        &shutdown,
    );
    scheduler
        .start()
        .await
        .context("starting the cron scheduler")?;

    let (config_tx, mut config_rx) = tokio::sync::mpsc::unbounded_channel();
    let _config_watcher = watch_config(&config_path, config_tx.clone())
        .map_err(
            |e| tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP to reload"),
        )
        .ok();
    tracing::info!(listen = %config.listen, services = shared.runners.lock().await.len(), "promshard running");
    loop {
        let watched = crate::script::watch::watch_dirs(&shared.config());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => shared.reload_config("SIGHUP").await,
            Some(()) = config_rx.recv() => {
                // Debounce: editors write a file in several steps.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while config_rx.try_recv().is_ok() {}
                shared.reload_config("file change").await;
            }
            Some(event) = script_rx.recv() => shared.script_changed(event).await,
            Some(name) = rules_rx.recv() => {
                shared.trigger(&name, "rule file change").await;
            }
        }
        rules_watch.refresh(&shared.running().await, rules_tx.clone(), &shutdown);
        // A reload may have moved scripts_dir or added script directories.
        let config = shared.config();
        if crate::script::watch::watch_dirs(&config) != watched {
            script_watch.0.cancel();
            script_watch = start_script_watch(&shared, &config, &script_tx);
        }
    }
    script_watch.0.cancel();

    tracing::info!("shutting down: finishing passes in progress");
    // Runners first (each removes its job), then the scheduler: removing a
    // job from a scheduler already shut down logs errors.
    let runners = std::mem::take(&mut *shared.runners.lock().await);
    for (_, r) in runners {
        shared.stop(r).await;
    }
    let retiring = std::mem::take(&mut *shared.retiring.lock().unwrap_or_else(|p| p.into_inner()));
    for task in retiring {
        let _ = task.await;
    }
    let mut sched = scheduler.clone();
    let _ = sched.shutdown().await;
    let _ = http.await;
    let _ = membership_task.await;
    tracing::info!("stopped");
    Ok(())
}
