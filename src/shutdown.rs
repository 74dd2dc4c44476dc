//! Shutdown as one object that every task holds.
//!
//! A [`Shutdown`] is a cancellation token (stop now) and a task tracker
//! (who is still running). Every long-lived task — runners, observers,
//! health probers, watchers, the HTTP server — is spawned through it, so
//! that [`Shutdown::finished`] returns only once every one of them has
//! ended. Cloning shares both.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every task to stop.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The token a task selects on (or passes to work it cancels).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A token cancelled with this one, or on its own (one runner).
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Resolves once shutdown is asked for.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Spawn a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Wait until every task spawned through this object has ended (no new
    /// ones are accepted from then on).
    pub async fn finished(&self) {
        self.tasks.close();
        self.tasks.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_waits_for_every_task() {
        let shutdown = Shutdown::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let (s, done) = (shutdown.clone(), done.clone());
            shutdown.spawn(async move {
                s.cancelled().await;
                tokio::task::yield_now().await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        shutdown.cancel();
        shutdown.finished().await;
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
