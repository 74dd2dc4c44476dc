//! One time format for everything promshard answers in JSON: RFC 3339 in
//! UTC (`2026-12-03T14:52:30Z`), the format Prometheus itself uses for
//! `lastScrape`, so a reader compares promshard's times with the servers'
//! without converting. Internally times stay Unix seconds (or
//! milliseconds); these helpers format them at the edge, as serde
//! `serialize_with` functions.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// Unix seconds as RFC 3339 UTC, to the second.
pub fn rfc3339(unix_s: u64) -> String {
    at(
        i64::try_from(unix_s).unwrap_or(i64::MAX),
        0,
        SecondsFormat::Secs,
    )
}

/// Unix milliseconds as RFC 3339 UTC, to the millisecond.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let s = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    at(
        s,
        (unix_ms % 1000) as u32 * 1_000_000,
        SecondsFormat::Millis,
    )
}

fn at(secs: i64, nanos: u32, format: SecondsFormat) -> String {
    DateTime::<Utc>::from_timestamp(secs, nanos)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .to_rfc3339_opts(format, true)
}

/// `serialize_with` for Unix seconds.
pub fn ser<S: Serializer>(unix_s: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*unix_s))
}

/// `serialize_with` for optional Unix seconds (`None` stays `null`).
pub fn ser_opt<S: Serializer>(unix_s: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match unix_s {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for Unix milliseconds.
pub fn ser_ms<S: Serializer>(unix_ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*unix_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_become_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_309_550), "2026-12-03T14:52:30Z");
        assert_eq!(rfc3339_ms(1_796_309_550_042), "2026-12-03T14:52:30.042Z");
    }
}
