//! Where a script was when a sandbox limit stopped it.
//!
//! Rhai raises a limit error (`max_operations`, `max_call_levels`, the size
//! limits) with the position of the node that tripped it, but then moves
//! that position to the call site at every script-function boundary, and the
//! entry call (`call_fn`) has no call site: a limit hit anywhere in
//! `targets(ctx)` or below arrives without line and column.
//!
//! The tracker is a Rhai debugger callback that steps into every node and
//! remembers, per call level, the node being run: a statement replaces the
//! entry; an expression replaces it when it is on another line or further
//! left (so `s.pad(200, "y")` is reported at `s`, not at `"y"`). A function
//! that returns drops its level; one that fails keeps it, so after an error
//! the deepest entry is where the script stopped. The entry function keeps
//! its last position when it returns: the size of what it returned is
//! checked after the call, and is reported at the value it returned.
//!
//! Stepping through every node costs time and clones the arguments of every
//! script-function call (Rhai's debugger keeps a call stack), so the tracker
//! is only installed for a second run after a limit error; see
//! `ScriptRun::locate`.

use std::sync::{Arc, Mutex, PoisonError};

use rhai::debugger::{DebuggerCommand, DebuggerEvent};
use rhai::{Engine, Position};

/// The last position seen at each call level.
#[derive(Clone, Default)]
pub struct Tracker {
    levels: Arc<Mutex<Vec<Position>>>,
}

impl Tracker {
    /// Install a tracker on `engine` (which must have no other debugger).
    #[allow(deprecated)] // `register_debugger` is marked volatile, not deprecated.
    pub fn install(engine: &mut Engine) -> Tracker {
        let tracker = Tracker::default();
        let levels = Arc::clone(&tracker.levels);
        engine.register_debugger(
            |_, debugger| debugger,
            move |ctx, event, node, _source, pos| {
                let level = ctx.call_level();
                let mut levels = levels.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    // Rhai reports the exit at the function's own level. The
                    // entry function (level 1) keeps its last position: a
                    // returned value is measured after the call.
                    DebuggerEvent::FunctionExitWithValue(_) => levels.truncate(level.max(2)),
                    DebuggerEvent::FunctionExitWithError(_) => {}
                    _ if pos.is_none() => {}
                    _ => {
                        levels.truncate(level + 1);
                        levels.resize(level + 1, Position::NONE);
                        let last = &mut levels[level];
                        if node.is_stmt() || last.line() != pos.line() || pos < *last {
                            *last = pos;
                        }
                    }
                }
                Ok(DebuggerCommand::StepInto)
            },
        );
        tracker
    }

    /// Forget what an earlier call saw.
    pub fn reset(&self) {
        self.levels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The innermost known position (line, column).
    pub fn innermost(&self) -> Option<(usize, usize)> {
        let levels = self.levels.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = levels.iter().rev().find(|p| !p.is_none())?;
        Some((pos.line()?, pos.position().unwrap_or(0)))
    }
}
