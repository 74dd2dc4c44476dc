//! Hot reload of rule files: watch the directories the `rules.files`
//! patterns name and, once a directory has been quiet for
//! [`crate::script::watch::DEBOUNCE`] (editors save in several steps), send
//! the name of every service a touched file belongs to. The daemon then
//! runs their passes, which check the new files and deliver them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use notify::Watcher as _;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use super::source::matches;
use crate::config::Service;
use crate::script::watch::DEBOUNCE;
use crate::shutdown::Shutdown;

/// `(pattern, service)` of every rule pattern of `services`.
fn patterns(services: &[Arc<Service>]) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = services
        .iter()
        .filter_map(|s| Some((s.rules.as_ref()?, &s.name)))
        .flat_map(|(r, name)| r.files.iter().map(move |p| (p.clone(), name.clone())))
        .collect();
    out.sort();
    out
}

/// The services whose rule patterns name one of `paths`.
pub fn affected(watched: &[(PathBuf, String)], paths: &BTreeSet<PathBuf>) -> BTreeSet<String> {
    watched
        .iter()
        .filter(|(pattern, _)| paths.iter().any(|p| matches(pattern, p)))
        .map(|(_, name)| name.clone())
        .collect()
}

/// A running watcher of the rule files of a set of services.
pub struct RulesWatch {
    watched: Vec<(PathBuf, String)>,
    stop: CancellationToken,
}

impl RulesWatch {
    /// Watch the rule files of `services` in a task spawned through
    /// `shutdown`; names of services whose files changed go to `tx`.
    pub fn start(
        services: &[Arc<Service>],
        tx: UnboundedSender<String>,
        shutdown: &Shutdown,
    ) -> RulesWatch {
        let watched = patterns(services);
        let stop = shutdown.child_token();
        let dirs: BTreeSet<PathBuf> = watched
            .iter()
            .filter_map(|(p, _)| p.parent().map(PathBuf::from))
            .collect();
        if !dirs.is_empty() {
            spawn(dirs, watched.clone(), tx, stop.clone(), shutdown);
        }
        RulesWatch { watched, stop }
    }

    /// Restart when the services' rule patterns changed.
    pub fn refresh(
        &mut self,
        services: &[Arc<Service>],
        tx: UnboundedSender<String>,
        shutdown: &Shutdown,
    ) {
        if patterns(services) != self.watched {
            self.stop.cancel();
            *self = RulesWatch::start(services, tx, shutdown);
        }
    }
}

impl Drop for RulesWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The watcher, and its task (which owns it) collecting touched paths
/// until the directory is quiet.
fn spawn(
    dirs: BTreeSet<PathBuf>,
    watched: Vec<(PathBuf, String)>,
    tx: UnboundedSender<String>,
    stop: CancellationToken,
    shutdown: &Shutdown,
) {
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            for p in ev.paths {
                let _ = raw_tx.send(p);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch rule files; edits apply at the next scheduled pass");
            return;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this rule directory; its edits apply at the next scheduled pass");
        }
    }
    shutdown.spawn(async move {
        let _watcher = watcher;
        while let Some(touched) = quiet_batch(&mut raw_rx, &stop).await {
            for name in affected(&watched, &touched) {
                tracing::info!(service = %name, "rule file changed");
                let _ = tx.send(name);
            }
        }
    });
}

/// The next paths touched, collected until none came for [`DEBOUNCE`];
/// `None` once stopped.
async fn quiet_batch(
    rx: &mut UnboundedReceiver<PathBuf>,
    stop: &CancellationToken,
) -> Option<BTreeSet<PathBuf>> {
    let first = tokio::select! {
        _ = stop.cancelled() => return None,
        p = rx.recv() => p?,
    };
    let mut touched = BTreeSet::from([first]);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            p = tokio::time::timeout(DEBOUNCE, rx.recv()) => match p {
                Ok(Some(p)) => { touched.insert(p); }
                Ok(None) => return None,
                Err(_) => return Some(touched),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touched_file_wakes_the_services_whose_patterns_name_it() {
        let watched = vec![
            (PathBuf::from("/r/*.yml"), "a".to_string()),
            (PathBuf::from("/r/b.yml"), "b".to_string()),
            (PathBuf::from("/s/*.yml"), "c".to_string()),
        ];
        let paths = BTreeSet::from([PathBuf::from("/r/b.yml"), PathBuf::from("/r/.b.yml.swp")]);
        assert_eq!(
            affected(&watched, &paths),
            BTreeSet::from(["a".into(), "b".into()])
        );
        let other = BTreeSet::from([PathBuf::from("/r/x.txt")]);
        assert!(affected(&watched, &other).is_empty());
    }
}
