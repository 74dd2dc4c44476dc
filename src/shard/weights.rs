//! Target weights learned from the servers: the series each target costs.
//!
//! A Prometheus server's memory and CPU follow its series, not its target
//! count, and one kube-state-metrics can cost as much as fifty
//! node_exporters. With `weights: {from: series}` every observation feeds
//! each target's `scrape_samples_post_metric_relabeling` into a smoothed
//! estimate (an exponential moving average), and the weight the placement
//! uses changes only when the estimate moves more than `threshold` away from
//! it. Scrape-to-scrape noise (a few percent) therefore never moves a
//! target, while a real change (an exporter that doubled) does, once.
//! Pure: the caller passes the observations; the applied weights are
//! persisted in the service state so a restart places exactly as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One target's estimate and the weight in use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// Smoothed series count.
    pub estimate: f64,
    /// The weight placement uses (series); changes only past the threshold.
    pub applied: u32,
}

/// Learned weights of one service, by target address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    by_addr: BTreeMap<String, Learned>,
}

impl Weights {
    /// Weights as persisted (the applied ones), the estimates starting there.
    pub fn from_applied(applied: &BTreeMap<String, u32>) -> Weights {
        let by_addr = applied
            .iter()
            .map(|(a, &w)| {
                let l = Learned {
                    estimate: f64::from(w),
                    applied: w,
                };
                (a.clone(), l)
            })
            .collect();
        Weights { by_addr }
    }

    /// The applied weights, for the state file and the next pass.
    pub fn applied(&self) -> BTreeMap<String, u32> {
        self.by_addr
            .iter()
            .map(|(a, l)| (a.clone(), l.applied))
            .collect()
    }

    /// Feed one observation: `(address, series)` of every target seen.
    /// `smoothing` is the weight of the new sample (0 < s ≤ 1); an applied
    /// weight changes when the estimate is more than `threshold` (relative)
    /// away from it. Returns how many applied weights changed.
    pub fn observe<'a>(
        &mut self,
        seen: impl IntoIterator<Item = (&'a str, u64)>,
        smoothing: f64,
        threshold: f64,
    ) -> usize {
        let mut changed = 0;
        for (addr, series) in seen {
            let sample = series.max(1) as f64;
            match self.by_addr.get_mut(addr) {
                None => {
                    let w = sample.round().min(f64::from(u32::MAX)) as u32;
                    self.by_addr.insert(
                        addr.to_string(),
                        Learned {
                            estimate: sample,
                            applied: w,
                        },
                    );
                    changed += 1;
                }
                Some(l) => {
                    l.estimate += smoothing * (sample - l.estimate);
                    let applied = f64::from(l.applied.max(1));
                    if (l.estimate - applied).abs() > threshold * applied {
                        l.applied = l.estimate.round().clamp(1.0, f64::from(u32::MAX)) as u32;
                        changed += 1;
                    }
                }
            }
        }
        changed
    }

    /// Forget targets not in `keep` (gone from the inventory).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_addr.retain(|a, _| keep(a));
    }

    /// The applied weight of `addr`, if it was ever observed.
    pub fn get(&self, addr: &str) -> Option<u32> {
        self.by_addr.get(addr).map(|l| l.applied)
    }

    /// Whether nothing has been learned.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

/// The weight of every target of a pass: its learned weight, or for one
/// never observed the median of the known ones among `addrs` (1 when none
/// is known), so a new target counts as a typical one.
pub fn weights_for(addrs: &[&str], learned: &BTreeMap<String, u32>) -> Vec<u32> {
    let mut known: Vec<u32> = addrs
        .iter()
        .filter_map(|a| learned.get(*a).copied())
        .collect();
    let median = if known.is_empty() {
        1
    } else {
        let mid = known.len() / 2;
        *known.select_nth_unstable(mid).1
    };
    addrs
        .iter()
        .map(|a| learned.get(*a).copied().unwrap_or(median).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_within_the_threshold_never_changes_a_weight() {
        let mut w = Weights::default();
        assert_eq!(w.observe([("a:1", 1000), ("b:1", 50)], 0.5, 0.2), 2);
        // ±10% at random for 200 cycles: the applied weights stay.
        let mut x: u64 = 42;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jitter = |base: u64, r: u64| base * (90 + r % 21) / 100;
            let changed = w.observe(
                [("a:1", jitter(1000, x)), ("b:1", jitter(50, x >> 8))],
                0.5,
                0.2,
            );
            assert_eq!(changed, 0);
        }
        assert_eq!((w.get("a:1"), w.get("b:1")), (Some(1000), Some(50)));
    }

    #[test]
    fn a_real_change_is_applied_once() {
        let mut w = Weights::default();
        w.observe([("a:1", 1000)], 0.5, 0.2);
        let changes: Vec<usize> = (0..6)
            .map(|_| w.observe([("a:1", 3000)], 0.5, 0.2))
            .collect();
        assert!(changes.iter().sum::<usize>() >= 1, "{changes:?}");
        assert!(w.get("a:1").unwrap() > 2400, "{:?}", w.get("a:1"));
        let settled = w.observe([("a:1", 3000)], 0.5, 0.2);
        assert_eq!(
            settled, 0,
            "no change once the estimate is within the threshold"
        );
    }

    #[test]
    fn unknown_targets_weigh_the_median_and_restarts_keep_weights() {
        let learned = BTreeMap::from([
            ("a:1".to_string(), 10),
            ("b:1".to_string(), 30),
            ("c:1".to_string(), 20),
        ]);
        assert_eq!(
            weights_for(&["a:1", "new:1", "c:1"], &learned),
            vec![10, 20, 20]
        );
        assert_eq!(weights_for(&["x:1"], &BTreeMap::new()), vec![1]);
        let w = Weights::from_applied(&learned);
        assert_eq!(w.applied(), learned);
    }
}
