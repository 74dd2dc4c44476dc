//! Durations (`500ms`, `30s`, `5m`, `1h`, `2d`) and schedules (cron with
//! seconds, or `@every 30s`), as written in the config and in scripts.

use std::time::Duration;

use super::Schedule;

/// Default cron schedule: every minute, at second 0.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";

/// Parse a schedule: cron with seconds (5-field cron gets second 0), or `@every 30s`.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("@every") {
        let d = parse_duration(rest.trim())?;
        if d < Duration::from_secs(1) {
            return Err(format!("{text:?}: interval must be at least 1s"));
        }
        return Ok(Schedule::Every(d));
    }
    let fields = text.split_whitespace().count();
    let cron = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&cron)
        .map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))?;
    Ok(Schedule::Cron(cron))
}

/// Parse `500ms`, `30s`, `5m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 5m, 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs_f64(secs))
}
