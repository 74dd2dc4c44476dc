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
use std::time::Duration;

use anyhow::Context as _;
use tokio_cron_scheduler::JobScheduler;
use uuid::Uuid;

use crate::config::{Config, Service};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::rules::watch::RulesWatch;
use crate::script::ScriptCache;
use crate::shard::weights::Weights;
use crate::shutdown::Shutdown;
use tokio::sync::mpsc;

mod drain;
mod http;
mod observer;
mod reconcile;
mod runner;
mod status;
pub mod status_page;
pub mod web;

use reconcile::{start_script_watch, watch_config};
use runner::Runner;
pub use status::{LastPass, ServiceStatus};

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
    /// Every task of the daemon is spawned through it.
    shutdown: Shutdown,
    /// With `ha:` (read at start): the election; only its leader delivers.
    pub ha: Option<Arc<crate::ha::Ha>>,
    /// TLS and basic auth on the API, as `web_config_file` says now.
    pub web: web::Web,
}

impl Shared {
    /// The config in effect.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Status of every service, with fresh next-run times.
    pub async fn statuses(&self) -> Vec<ServiceStatus> {
        let (jobs, mut weights): (Vec<(String, Option<Uuid>)>, BTreeMap<String, _>) = {
            let runners = self.runners.lock().await;
            let jobs = runners.iter().map(|(n, r)| (n.clone(), r.job)).collect();
            let weights = runners
                .iter()
                .map(|(n, r)| {
                    let w: BTreeMap<String, u32> = r
                        .service
                        .nodes
                        .iter()
                        .map(|s| (s.addr.clone(), s.weight))
                        .collect();
                    (n.clone(), w)
                })
                .collect();
            (jobs, weights)
        };
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
                s.node_weights = weights.remove(&s.name).unwrap_or_default();
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

    /// The running settings of service `name`.
    pub async fn service(&self, name: &str) -> Option<Arc<Service>> {
        let runners = self.runners.lock().await;
        runners.get(name).map(|r| Arc::clone(&r.service))
    }

    /// The running settings of every service (drop-ins included).
    async fn running(&self) -> Vec<Arc<Service>> {
        let runners = self.runners.lock().await;
        runners.values().map(|r| Arc::clone(&r.service)).collect()
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
}

/// Run the daemon until `shutdown` is cancelled; returns once every task
/// it started has ended.
pub async fn run(config_path: PathBuf, shutdown: Shutdown) -> anyhow::Result<()> {
    // Before anything else: SIGHUP's default action kills the process, and
    // a reload (systemd's ExecReload) may come as soon as we are started.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Watched before the first load, so an edit made while starting is
    // applied once the daemon runs instead of being missed.
    let (config_tx, config_rx) = mpsc::unbounded_channel();
    let config_watcher = watch_config(&config_path, config_tx)
        .map_err(
            |e| tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP to reload"),
        )
        .ok();
    let config = Arc::new(Config::load(&config_path)?);
    // Start-up takes only what a reload would: there is no last good
    // version of a script yet, so a missing or broken one stops the start.
    let cache = Arc::new(ScriptCache::new());
    crate::script::dropin::check_config_scripts(&config, &cache).map_err(|problems| {
        anyhow::anyhow!(
            "{}: config rejected, not starting:\n{problems}",
            config_path.display()
        )
    })?;
    if let Some(warning) = config.exposure_warning() {
        tracing::warn!("{warning}");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            let (path, listen) = (config_path.display(), config.listen);
            format!("{path}: listen {listen}: cannot bind")
        })?;
    let (shared, membership_events) = Shared::new(&config_path, &config, cache, &shutdown).await?;
    shared.forward_membership_events(membership_events);
    shutdown.spawn(http::serve(
        listener,
        Arc::clone(&shared),
        shutdown.token().clone(),
    ));
    shared.reconcile(Arc::clone(&config)).await;
    shared
        .scheduler
        .start()
        .await
        .context("starting the cron scheduler")?;
    log_start(&config, &shared).await;
    shared.watch_until_shutdown(&mut hangup, config_rx).await;
    drop(config_watcher);
    tracing::info!("shutting down: finishing passes in progress");
    shared.stop_all().await;
    shutdown.finished().await;
    tracing::info!("stopped");
    Ok(())
}

impl Shared {
    async fn new(
        config_path: &Path,
        config: &Arc<Config>,
        cache: Arc<ScriptCache>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<(
        Arc<Shared>,
        mpsc::UnboundedReceiver<crate::membership::Event>,
    )> {
        let scheduler = JobScheduler::new()
            .await
            .context("starting the cron scheduler")?;
        let (membership, events) = Membership::new(shutdown.clone());
        let shared = Arc::new(Shared {
            config_path: config_path.to_path_buf(),
            config: RwLock::new(Arc::clone(config)),
            metrics: Metrics::new(),
            membership,
            runners: tokio::sync::Mutex::new(BTreeMap::new()),
            status: RwLock::new(BTreeMap::new()),
            pass_locks: Mutex::new(HashMap::new()),
            weights: Mutex::new(HashMap::new()),
            cache,
            scheduler,
            shutdown: shutdown.clone(),
            ha: config.ha.clone().map(crate::ha::Ha::new),
            web: web::Web::default(),
        });
        if let Some(ha) = &shared.ha {
            let weak = Arc::downgrade(&shared);
            ha.set_busy(Arc::new(move |service: &str| {
                weak.upgrade().is_some_and(|s| s.busy(service))
            }));
            shutdown.spawn(Arc::clone(ha).run(shutdown.token().clone()));
            shutdown.spawn(follow_ha(Arc::clone(ha), Arc::clone(&shared)));
        }
        Ok((shared, events))
    }

    /// Membership changes: metrics, and a pass of the service at once.
    fn forward_membership_events(
        self: &Arc<Self>,
        mut events: mpsc::UnboundedReceiver<crate::membership::Event>,
    ) {
        let shared = Arc::clone(self);
        self.shutdown.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    e = events.recv() => match e { Some(e) => e, None => break },
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
        });
    }

    /// Apply SIGHUP, config file edits, script and rule file edits until
    /// shutdown.
    async fn watch_until_shutdown(
        self: &Arc<Self>,
        hangup: &mut tokio::signal::unix::Signal,
        mut config_rx: mpsc::UnboundedReceiver<()>,
    ) {
        let (script_tx, mut script_rx) = mpsc::unbounded_channel();
        let mut script_watch = start_script_watch(self, &self.config(), &script_tx);
        // Rule files: a change wakes the services that deliver them.
        let (rules_tx, mut rules_rx) = mpsc::unbounded_channel();
        let mut rules_watch =
            RulesWatch::start(&self.running().await, rules_tx.clone(), &self.shutdown);
        loop {
            let watched = crate::script::watch::watch_dirs(&self.config());
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = hangup.recv() => self.reload_config("SIGHUP").await,
                Some(()) = config_rx.recv() => {
                    // Debounce: editors write a file in several steps.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while config_rx.try_recv().is_ok() {}
                    self.reload_config("file change").await;
                }
                Some(event) = script_rx.recv() => self.script_changed(event).await,
                Some(name) = rules_rx.recv() => {
                    self.trigger(&name, "rule file change").await;
                }
            }
            // A reload may have changed the services' rule files.
            rules_watch.refresh(&self.running().await, rules_tx.clone(), &self.shutdown);
            // A reload may have moved scripts_dir or added script directories.
            let config = self.config();
            if crate::script::watch::watch_dirs(&config) != watched {
                script_watch.cancel();
                script_watch = start_script_watch(self, &config, &script_tx);
            }
        }
        script_watch.cancel();
    }

    /// Stop every runner (each finishes its pass in progress), then the
    /// scheduler: removing a job from a scheduler already shut down logs
    /// errors.
    async fn stop_all(&self) {
        let runners = std::mem::take(&mut *self.runners.lock().await);
        for (_, r) in runners {
            self.stop(r).await;
        }
        let mut sched = self.scheduler.clone();
        let _ = sched.shutdown().await;
    }
}

/// Follow the election: metrics, and a pass of every service on a change
/// of role (a new leader delivers at once; a standby plans at once). In
/// shared mode, a pass of each service whose ownership here changed.
async fn follow_ha(ha: Arc<crate::ha::Ha>, shared: Arc<Shared>) {
    let mut changes = ha.subscribe();
    let mut role = None;
    let mut owned = BTreeMap::new();
    loop {
        let status = changes.borrow_and_update().clone();
        shared.metrics.ha(&status);
        let names: Vec<String> = if ha.ha_mode() == crate::ha::HaMode::Shared {
            let changed = status
                .owned
                .iter()
                .filter(|(s, e)| owned.get(*s) != Some(*e))
                .chain(owned.iter().filter(|(s, _)| !status.owned.contains_key(*s)))
                .map(|(s, _)| s.clone())
                .collect();
            owned.clone_from(&status.owned);
            changed
        } else if role.replace(status.role) != Some(status.role) {
            shared.runners.lock().await.keys().cloned().collect()
        } else {
            Vec::new()
        };
        for name in names {
            shared.trigger(&name, "ha role change").await;
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
}

/// The start-up lines: drop-ins picked up, then what is listening and how.
async fn log_start(config: &Config, shared: &Shared) {
    let runners = shared.runners.lock().await;
    let services: Vec<_> = runners.values().map(|r| Arc::clone(&r.service)).collect();
    if let Some(line) = crate::script::dropin::describe_drop_ins(config, &services) {
        tracing::info!(scripts_dir = %config.scripts_dir.display(), "{line}");
    }
    let tls = config.web.as_ref().and_then(|w| w.tls.as_ref());
    let basic_auth = config.web.as_ref().is_some_and(|w| !w.users.is_empty());
    tracing::info!(listen = %config.listen, tls = tls.is_some(), client_auth = ?tls.map(|t| t.client_auth), basic_auth, services = runners.len(), "promshard running");
}
