//! `handover:` and `handover_timeout:` of a service (see
//! `shard::handover` and `pass::handover`).

use std::time::Duration;

use super::validate::Problems;
use crate::shard::handover::Mode;

/// The checked `handover:` settings of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// `handover_timeout`; `None`: three scrape intervals (as observed) and
    /// 15 s.
    pub timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Immediate,
            timeout: None,
        }
    }
}

/// Check `handover:` and `handover_timeout:`. The mode defaults to
/// `make_before_break` when the service is observed (the only way to know
/// that a new owner scrapes), else `immediate`. Returns whether the mode
/// needs `observe:` switched on (it was asked for without it).
pub(super) fn check_settings(
    mode: Option<&str>,
    timeout: Option<&str>,
    observed: bool,
    problems: &mut Problems,
) -> (Settings, bool) {
    let mode = match mode {
        None if observed => Mode::MakeBeforeBreak,
        None => Mode::Immediate,
        Some("make_before_break") => Mode::MakeBeforeBreak,
        Some("immediate") => Mode::Immediate,
        Some(other) => {
            problems.push(
                "handover",
                format!("{other:?} is not one of make_before_break, immediate"),
            );
            Mode::Immediate
        }
    };
    let timeout = timeout.and_then(|t| match super::duration::parse_duration(t) {
        Ok(d) if d >= Duration::from_secs(1) => Some(d),
        Ok(_) => {
            problems.push("handover_timeout", format!("{t:?} must be at least 1s"));
            None
        }
        Err(e) => {
            problems.push("handover_timeout", e);
            None
        }
    });
    let needs_observe = mode == Mode::MakeBeforeBreak && !observed;
    (Settings { mode, timeout }, needs_observe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        mode: Option<&str>,
        timeout: Option<&str>,
        observed: bool,
    ) -> (Settings, bool, Vec<String>) {
        let mut p = Problems::default();
        let (s, needs) = check_settings(mode, timeout, observed, &mut p);
        let problems = p.finish(()).err().unwrap_or_default();
        (
            s,
            needs,
            problems
                .into_iter()
                .map(|c| format!("{}: {}", c.location, c.message))
                .collect(),
        )
    }

    #[test]
    fn the_mode_defaults_to_make_before_break_only_when_observed() {
        assert_eq!(check(None, None, true).0.mode, Mode::MakeBeforeBreak);
        assert_eq!(check(None, None, false).0.mode, Mode::Immediate);
        let (s, needs, p) = check(Some("make_before_break"), Some("45s"), false);
        assert_eq!(
            (s.mode, s.timeout, needs),
            (Mode::MakeBeforeBreak, Some(Duration::from_secs(45)), true)
        );
        assert!(p.is_empty(), "{p:?}");
        let (_, _, p) = check(Some("sometimes"), Some("soon"), true);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("handover: ") && p[0].contains("make_before_break, immediate"),
            "{p:?}"
        );
        assert!(p[1].starts_with("handover_timeout: "), "{p:?}");
    }
}
