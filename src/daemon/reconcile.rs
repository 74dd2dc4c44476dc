//! Reloads: the config file and scripts change under a running daemon;
//! reconcile makes the running services match, never waiting for a pass.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::{Config, Service};
use crate::script::ScriptEvent;
use crate::script::dropin::{DropInProblem, effective_services};

use super::runner::Runner;

impl Shared {
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
        if self.config().ha != config.ha {
            tracing::warn!(
                "ha: changes take effect after a restart; the election runs on as started"
            );
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&config);
        let Some((mut wanted, problems)) = self.list_services(&config).await else {
            return;
        };
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
        for name in names {
            let keep = wanted
                .get(&name)
                .is_some_and(|s| !globals_changed && *s == runners[&name].service);
            if keep {
                continue;
            }
            if let Some(runner) = runners.remove(&name) {
                self.replace_or_remove(runner, wanted.contains_key(&name), &config);
            }
        }
        for (name, service) in wanted {
            if !runners.contains_key(&name) {
                self.start(&mut runners, service).await;
            }
        }
        if let Some(ha) = &self.ha {
            // Shared mode spreads (and owns) only the running services.
            ha.set_services(runners.keys().cloned());
        }
    }

    /// Every service of `config`, drop-ins included (their `fn service()`
    /// runs: blocking work), by name, and the drop-ins that failed.
    async fn list_services(
        &self,
        config: &Arc<Config>,
    ) -> Option<(BTreeMap<String, Arc<Service>>, Vec<DropInProblem>)> {
        let (config, cache) = (Arc::clone(config), Arc::clone(&self.cache));
        let listed = tokio::task::spawn_blocking(move || effective_services(&config, &cache)).await;
        let (services, problems) = match listed {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "listing services failed; running services kept");
                return None;
            }
        };
        for p in &problems {
            tracing::error!(service = %p.name, path = %p.path.display(), "{p}");
        }
        let wanted = services
            .iter()
            .map(|s| (s.name.clone(), Arc::clone(s)))
            .collect();
        Some((wanted, problems))
    }

    /// Retire the runner of a changed (`still_wanted`) or removed service.
    /// Old runners are retired, not awaited (see the module doc); a
    /// replacement queues on the service's pass lock, so passes still
    /// never overlap.
    fn replace_or_remove(self: &Arc<Self>, runner: Runner, still_wanted: bool, config: &Config) {
        let name = runner.service.name.clone();
        let busy = self.busy(&name);
        if still_wanted {
            if busy {
                tracing::info!(service = %name, "service changed; new settings apply after the pass in progress");
            } else {
                tracing::info!(service = %name, "service changed; re-planning");
            }
            self.retire(runner, |_| {});
            return;
        }
        self.membership.unwatch(&name);
        let gone = self
            .status
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        let mut nodes = gone.map(|s| s.nodes_seen).unwrap_or_default();
        // `init_service` made series for the configured nodes, passed or not.
        nodes.extend(runner.service.nodes.iter().map(|n| n.addr.clone()));
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

    /// A script was added, edited or removed: re-list services (drop-ins come
    /// and go, `fn service()` may have changed) and pass those that use it.
    pub(super) async fn script_changed(self: &Arc<Self>, event: ScriptEvent) {
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
            crate::script::dropin::check_config_scripts(&config, &cache).map(|()| config)
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

/// Watch the config file (its directory, so editors' save-by-rename is
/// seen) and send a tick on every change, debounced.
pub(super) fn watch_config(
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

/// Start the script watcher (a task shutdown waits for); its token stops
/// it.
pub(super) fn start_script_watch(
    shared: &Shared,
    config: &Config,
    tx: &tokio::sync::mpsc::UnboundedSender<ScriptEvent>,
) -> CancellationToken {
    let cancel = shared.shutdown.child_token();
    let dirs = crate::script::watch::watch_dirs(config);
    match crate::script::watch(dirs, Arc::clone(&shared.cache), tx.clone(), cancel.clone()) {
        Ok(handle) => {
            shared.shutdown.spawn(async move {
                let _ = handle.await;
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot watch scripts; edits need a restart"),
    }
    cancel
}
