//! Child processes and waiting, shared by the tests that run the daemon and
//! real Prometheus servers: a guard that kills and reaps its child when the
//! test ends (also on panic), free loopback ports, and polling with a
//! deadline instead of sleeping and hoping.

use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A child process that is killed and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Send `sig`; panics if the process is gone.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
            if !std::thread::panicking() {
                eprintln!(
                    "{} (pid {}) killed at end of test",
                    self.name,
                    self.child.id()
                );
            }
        }
    }
}

/// Poll `check` every `every` until it returns `Ok` or `within` passes; on
/// timeout the error names what was awaited and what was seen last. Returns
/// the value and how long it took.
pub fn poll_every<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) if start.elapsed() >= within => {
                return Err(format!(
                    "timed out after {within:?} waiting for {what}; last seen: {last}"
                ));
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// [`poll_every`] 25 ms, without the time taken.
pub fn poll<T>(
    what: &str,
    within: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    poll_every(what, within, Duration::from_millis(25), check).map(|(v, _)| v)
}

/// Check `check` repeatedly for `during`; the first violation is returned.
pub fn holds(
    what: &str,
    during: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let end = Instant::now() + during;
    while Instant::now() < end {
        check().map_err(|seen| format!("{what} stopped holding: {seen}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    check().map_err(|seen| format!("{what} stopped holding: {seen}"))
}
