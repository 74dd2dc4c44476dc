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
//! Shutdown is a [`CancellationToken`] passed to every task: the scheduler
//! stops, runners finish the pass they are in (file writes always complete;
//! deliveries in flight are cancelled and their child processes killed), the
//! HTTP server drains, and `run` returns.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Schedule, Service};
use crate::metrics::Metrics;
use crate::pass::{PassError, PassInput, PassOptions, PassReport, run_pass};
use crate::script::{CompiledScript, Sandbox};

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
    pub last_pass: Option<LastPass>,
    /// Unix seconds of the last successful pass.
    pub last_success: Option<u64>,
    /// The last successful pass (the plan now in effect).
    pub current: Option<PassReport>,
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
    runners: tokio::sync::Mutex<BTreeMap<String, Runner>>,
    status: RwLock<BTreeMap<String, ServiceStatus>>,
    pass_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    scheduler: JobScheduler,
    shutdown: CancellationToken,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
                s
            })
            .collect()
    }

    /// Status of one service.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Whether every service has had a successful pass.
    pub fn ready(&self) -> bool {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        !status.is_empty() && status.values().all(|s| s.last_success.is_some())
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
        crate::cli::sandbox_for(&self.config())
    }

    /// Run one pass of `service` and record its outcome.
    async fn pass(&self, service: &Service) {
        let lock = self.pass_lock(&service.name);
        let _one_at_a_time = lock.lock().await;
        let started = Instant::now();
        let config = self.config();
        let sandbox = self.sandbox();
        let result = match CompiledScript::compile(&service.script) {
            Err(e) => Err(PassError::Script(e)),
            Ok(script) => {
                let input = PassInput {
                    config: &config,
                    service,
                    script: &script,
                    nodes: &service.nodes,
                    sandbox: &sandbox,
                };
                run_pass(input, PassOptions::default(), &self.shutdown).await
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_pass(&service.name, seconds, &result);
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        let Some(s) = status.get_mut(&service.name) else {
            return;
        };
        s.passes += 1;
        let (outcome, error) = match &result {
            Ok(r) if r.failed_deliveries() == 0 => ("ok", None),
            Ok(r) => (
                "failed",
                Some(format!("{} deliveries failed", r.failed_deliveries())),
            ),
            Err(e @ PassError::MassDrop { .. }) => ("refused", Some(e.to_string())),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Some(e) = &error {
            tracing::error!(service = %service.name, error = %e, "pass {outcome}; last good files kept");
        }
        s.last_pass = Some(LastPass {
            finished_at: unix_now(),
            result: outcome,
            duration_ms: (seconds * 1000.0) as u64,
            error,
        });
        if let Ok(report) = result {
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
            s.current = Some(report);
        }
    }

    /// Start a runner for `service` (its first pass runs at once).
    async fn start(
        self: &Arc<Self>,
        runners: &mut BTreeMap<String, Runner>,
        service: Arc<Service>,
    ) {
        let wake = Arc::new(Notify::new());
        let stop = self.shutdown.child_token();
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
                    last_pass: None,
                    last_success: None,
                    current: None,
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
                    shared.pass(&service).await;
                }
            })
        };
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
        let wanted: BTreeMap<String, Arc<Service>> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::clone(s)))
            .collect();
        let mut runners = self.runners.lock().await;
        let names: Vec<String> = runners.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|s| !globals_changed && *s == runners[&name].service);
            if keep {
                continue;
            }
            if let Some(r) = runners.remove(&name) {
                self.stop(r).await;
            }
            if !wanted.contains_key(&name) {
                self.status
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
                tracing::warn!(
                    service = %name,
                    dir = %config.out_dir.join(&name).display(),
                    "service removed; its files are left in place"
                );
            } else {
                tracing::info!(service = %name, "service changed; re-planning");
            }
        }
        for (name, service) in wanted {
            if !runners.contains_key(&name) {
                self.start(&mut runners, service).await;
            }
        }
    }

    /// Re-read the config file; on error keep the running config.
    pub async fn reload_config(self: &Arc<Self>, why: &str) {
        match Config::load(&self.config_path) {
            Ok(config) => {
                self.metrics.config_reload("ok");
                tracing::info!(trigger = why, path = %self.config_path.display(), "config reloaded");
                self.reconcile(Arc::new(config)).await;
            }
            Err(e) => {
                self.metrics.config_reload("failed");
                for line in e.to_string().lines() {
                    tracing::error!(
                        trigger = why,
                        "config rejected, running config kept: {line}"
                    );
                }
            }
        }
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

/// Run the daemon until `shutdown` is cancelled.
pub async fn run(config_path: PathBuf, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(Config::load(&config_path)?);
    let scheduler = JobScheduler::new()
        .await
        .context("starting the cron scheduler")?;
    let shared = Arc::new(Shared {
        config_path: config_path.clone(),
        config: RwLock::new(Arc::clone(&config)),
        metrics: Metrics::new(),
        runners: tokio::sync::Mutex::new(BTreeMap::new()),
        status: RwLock::new(BTreeMap::new()),
        pass_locks: Mutex::new(HashMap::new()),
        scheduler: scheduler.clone(),
        shutdown: shutdown.clone(),
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
    let http = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    {
        let mut runners = shared.runners.lock().await;
        for service in &config.services {
            shared.start(&mut runners, Arc::clone(service)).await;
        }
    }
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
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tracing::info!(listen = %config.listen, services = config.services.len(), "promshard running");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => shared.reload_config("SIGHUP").await,
            Some(()) = config_rx.recv() => {
                // Debounce: editors write a file in several steps.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while config_rx.try_recv().is_ok() {}
                shared.reload_config("file change").await;
            }
        }
    }

    tracing::info!("shutting down: finishing passes in progress");
    let mut sched = scheduler.clone();
    let _ = sched.shutdown().await;
    let runners = std::mem::take(&mut *shared.runners.lock().await);
    for (_, r) in runners {
        shared.stop(r).await;
    }
    let _ = http.await;
    tracing::info!("stopped");
    Ok(())
}
