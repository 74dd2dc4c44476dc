//! The standard `process_*` metrics, read from `/proc/self` on each scrape.
//!
//! prometheus-client has no process collector, and the crates that add one
//! either pull in a second metrics stack (`prometheus`'s `procfs` feature)
//! or are unmaintained; the six values are four small files of procfs,
//! read here as the Go client reads them, with the same names and help.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::help::help;

/// One reading of the process's vital signs; `None` where `/proc` had no
/// answer (not Linux, or a field missing).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Fields of `/proc/self/stat` after the `(comm)`, whose name may hold
/// spaces and parentheses: split after its last `)`.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// The soft "Max open files" limit of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `sysconf(name)`, `None` when the system does not say.
fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

impl Reading {
    /// Read `/proc/self` now.
    pub fn now() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let stat = read("/proc/self/stat").unwrap_or_default();
        let fields = stat_fields(&stat);
        // Field numbers of proc(5) minus 3 (pid and comm are cut, 1-based).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = sysconf(libc::_SC_CLK_TCK);
        let page = sysconf(libc::_SC_PAGESIZE);
        let boot = read("/proc/stat").as_deref().and_then(boot_time);
        Reading {
            cpu_seconds: ticks.and_then(|t| Some((field(14)? + field(15)?) / t)),
            virtual_bytes: field(23),
            resident_bytes: page.and_then(|p| Some(field(24)? * p)),
            start_time_seconds: ticks.and_then(|t| Some(boot? + field(22)? / t)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: read("/proc/self/limits")
                .as_deref()
                .and_then(max_open_files),
        }
    }
}

/// Registers as a collector: a fresh [`Reading`] per scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = Reading::now();
        let gauges = [
            ("process_resident_memory_bytes", r.resident_bytes),
            ("process_virtual_memory_bytes", r.virtual_bytes),
            ("process_start_time_seconds", r.start_time_seconds),
            ("process_open_fds", r.open_fds),
            ("process_max_fds", r.max_fds),
        ];
        if let Some(cpu) = r.cpu_seconds {
            let c = ConstCounter::new(cpu);
            let name = "process_cpu_seconds";
            let help = format!("{}.", help(name));
            c.encode(encoder.encode_descriptor(name, &help, None, c.metric_type())?)?;
        }
        for (name, value) in gauges {
            let Some(v) = value else { continue };
            let g = ConstGauge::new(v);
            let help = format!("{}.", help(name));
            g.encode(encoder.encode_descriptor(name, &help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 500 1000 25";
        let f = stat_fields(stat);
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "7");
        assert_eq!(f[24 - 3], "25");
    }

    #[test]
    fn the_soft_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_has_every_reading() {
        let r = Reading::now();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = r.start_time_seconds.expect("start time");
        assert!(start <= now + 1.0 && start > now - 86400.0 * 365.0, "{r:?}");
        assert!(r.resident_bytes.expect("rss") > 1e5, "{r:?}");
        assert!(r.virtual_bytes.expect("vsize") >= r.resident_bytes.unwrap());
        assert!(r.open_fds.expect("fds") >= 3.0, "{r:?}");
        assert!(r.max_fds.expect("max fds") >= r.open_fds.unwrap());
        assert!(r.cpu_seconds.expect("cpu") >= 0.0);
    }
}
