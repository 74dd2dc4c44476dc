//! Make-before-break handover: move a target without a gap in its series.
//!
//! Rewriting both files at once leaves each node to act on its file at its
//! own discovery refresh: whenever the old owner refreshes first, nobody
//! scrapes the target for a while (a node added to four real servers
//! pulling `/sd` every 10 s gave every moved target a gap, median 6 s). So a
//! move from A to B is made in steps: B's file gains the target while A's
//! keeps it; once B reports it active and healthy with a scrape after that
//! moment (the observation loop, `observe:`), A's file drops it. A timeout
//! ends a handover B never confirms (a target B cannot reach must not pin A
//! for ever); it is counted.
//!
//! Pure: the files as they are, the new plan, the live nodes, the pending
//! handovers and what each node last reported go in; what every file must
//! hold now and what became of each handover come out. Time is passed in.
//! Every step keeps, for each target of the plan:
//!
//! - at least `min(replicas, nodes in the plan)` live nodes that scrape it
//!   (a node counts once it held the target before, or confirmed it);
//! - at most one node more than the plan gives it (`replicas + 1`);
//! - nothing on a node that is not live: a dead node's targets go to their
//!   new owners at once, there is nothing to overlap with.
//!
//! A drained node is simply left out of the plan: it keeps what it holds
//! until each target's new owner confirms, then holds nothing. A new plan
//! in the middle of a handover starts from the files as they are: a new
//! owner no longer wanted is dropped (it never took over), an old owner
//! wanted again stays.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Node → the target addresses its file holds (or must hold).
pub type Files = BTreeMap<String, BTreeSet<String>>;

/// Node → target address → Unix milliseconds of its last scrape, for the
/// targets a node reported active and healthy.
pub type Seen = BTreeMap<String, BTreeMap<String, u64>>;

/// One target moving from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Handover {
    /// The target's address.
    pub target: String,
    /// The node that keeps it until `to` confirms; `None` when `to` was
    /// added to restore coverage (its old owner died or there was none):
    /// tracked only so that it counts as scraping once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The node taking it over.
    pub to: String,
    /// Unix milliseconds when `to` was given the target: a scrape after
    /// this confirms it.
    pub started_ms: u64,
}

/// How a service moves targets between nodes (`handover:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Both nodes scrape a moving target until the new one confirms.
    MakeBeforeBreak,
    /// Both files change at once (a gap is possible).
    Immediate,
}

/// Inputs of [`step`].
pub struct Step<'a> {
    /// What each node's file holds now.
    pub files: &'a Files,
    /// The new plan: what each node of the ring should hold (live nodes
    /// that are not drained).
    pub plan: &'a Files,
    /// Live nodes, drained ones included.
    pub live: &'a BTreeSet<String>,
    /// Handovers not finished yet.
    pub pending: &'a [Handover],
    /// The last observation.
    pub seen: &'a Seen,
    pub now_ms: u64,
    pub timeout_ms: u64,
}

/// A finished handover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub handover: Handover,
    /// How long both nodes held the target, in milliseconds.
    pub overlap_ms: u64,
    /// Ended by the timeout, not by a confirmation.
    pub timed_out: bool,
}

/// What [`step`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// What each file must hold now: every node of the plan and every live
    /// node that holds something (a drained node, while it hands over).
    pub files: Files,
    /// Handovers still waiting for their new owner, sorted.
    pub pending: Vec<Handover>,
    /// Handovers that ended in this step, sorted.
    pub finished: Vec<Finished>,
}

impl Outcome {
    /// The handovers that ended by the timeout.
    pub fn timed_out(&self) -> impl Iterator<Item = &Finished> {
        self.finished.iter().filter(|f| f.timed_out)
    }
}

/// Per target: the nodes holding it and the nodes planned for it.
struct Holders<'a> {
    held: Vec<&'a str>,
    wanted: Vec<&'a str>,
    pending: Vec<&'a Handover>,
}

/// One step of every handover: see the module doc.
pub fn step(input: &Step<'_>) -> Outcome {
    let mut by_target: BTreeMap<&str, Holders<'_>> = BTreeMap::new();
    for (node, targets) in input.files {
        if !input.live.contains(node) {
            continue;
        }
        for t in targets {
            holders(&mut by_target, t).held.push(node);
        }
    }
    for (node, targets) in input.plan {
        for t in targets {
            holders(&mut by_target, t).wanted.push(node);
        }
    }
    for h in input.pending {
        if let Some(x) = by_target.get_mut(h.target.as_str()) {
            x.pending.push(h);
        }
    }
    let mut out = Outcome::default();
    for node in input.plan.keys() {
        out.files.entry(node.clone()).or_default();
    }
    for (node, targets) in input.files {
        if input.live.contains(node) && !targets.is_empty() {
            out.files.entry(node.clone()).or_default();
        }
    }
    for (target, h) in by_target {
        let now = settle(target, h, input, &mut out);
        for node in now {
            out.files
                .entry(node.to_string())
                .or_default()
                .insert(target.to_string());
        }
    }
    out.pending.sort();
    out.finished.sort_by(|a, b| a.handover.cmp(&b.handover));
    out
}

fn holders<'a, 'm>(
    map: &'m mut BTreeMap<&'a str, Holders<'a>>,
    target: &'a str,
) -> &'m mut Holders<'a> {
    map.entry(target).or_insert_with(|| Holders {
        held: Vec::new(),
        wanted: Vec::new(),
        pending: Vec::new(),
    })
}

/// The nodes that hold `target` after this step; records finished and new
/// handovers in `out`.
///
/// Counting, not pairing, decides who goes: a node that has scraped the
/// target (it held it before, or confirmed it) is *established*; a node
/// given it and not confirmed yet is not. A node the plan no longer wants
/// goes only while the established nodes left are at least as many as the
/// plan's — unconfirmed ones first, since they may not scrape yet.
fn settle<'a>(target: &str, h: Holders<'a>, input: &Step<'_>, out: &mut Outcome) -> Vec<&'a str> {
    let Holders {
        mut held,
        wanted,
        pending,
    } = h;
    if wanted.is_empty() {
        return Vec::new(); // no longer a target: nothing to hand over
    }
    let goal = wanted.len();
    let is_wanted = |n: &str| wanted.contains(&n);
    let mut waiting = still_waiting(target, &held, &pending, input, out);
    let mut established = held.iter().filter(|n| !fresh(&waiting, n)).count();
    let mut leaving: Vec<&str> = held.iter().copied().filter(|n| !is_wanted(n)).collect();
    leaving.sort_by_key(|n| !fresh(&waiting, n));
    for n in leaving {
        let scrapes = usize::from(!fresh(&waiting, n));
        if established - scrapes < goal {
            continue;
        }
        established -= scrapes;
        held.retain(|m| *m != n);
        waiting.retain(|w| w.to != n);
    }
    // New owners: at once as many as coverage lacks, then one at a time
    // beside an old owner that waits for it (one node over the plan).
    let mut adding = wanted.iter().copied().filter(|n| !held.contains(n));
    let mut now = held.clone();
    let mut free: Vec<&str> = held
        .iter()
        .copied()
        .filter(|n| !is_wanted(n) && !fresh(&waiting, n))
        .filter(|n| !waiting.iter().any(|w| w.from.as_deref() == Some(*n)))
        .collect();
    // A new owner whose old owner went adopts one that is leaving.
    for w in waiting.iter_mut() {
        let orphan = w.from.as_deref().is_none_or(|f| !held.contains(&f));
        if orphan && is_wanted(&w.to) && !free.is_empty() {
            w.from = Some(free.remove(0).to_string());
        }
    }
    let at_once = goal.saturating_sub(held.len());
    // Tracked only beside another holder: a new target (or one whose
    // holders all died) has nothing to protect, and 100k new targets must
    // not mean 100k records.
    let track = !held.is_empty();
    for to in adding.by_ref().take(at_once) {
        now.push(to);
        if track {
            waiting.push(new_handover(target, None, to, input.now_ms));
        }
    }
    while now.len() <= goal && !free.is_empty() {
        let Some(to) = adding.next() else { break };
        let from = free.remove(0);
        now.push(to);
        waiting.push(new_handover(target, Some(from), to, input.now_ms));
    }
    out.pending.extend(waiting);
    now
}

/// The records of nodes that still hold `target` and have not confirmed
/// it; the others ended (confirmed, or timed out) and go to `out`.
fn still_waiting(
    target: &str,
    held: &[&str],
    pending: &[&Handover],
    input: &Step<'_>,
    out: &mut Outcome,
) -> Vec<Handover> {
    let mut waiting: Vec<Handover> = Vec::new();
    for &p in pending {
        if !held.contains(&p.to.as_str()) || waiting.iter().any(|w| w.to == p.to) {
            continue; // it no longer holds the target (died, or dropped)
        }
        let scraped = input
            .seen
            .get(&p.to)
            .and_then(|s| s.get(target))
            .is_some_and(|&at| at > p.started_ms);
        if scraped || input.now_ms >= p.started_ms.saturating_add(input.timeout_ms) {
            if p.from.is_some() {
                out.finished.push(Finished {
                    handover: p.clone(),
                    overlap_ms: input.now_ms.saturating_sub(p.started_ms),
                    timed_out: !scraped,
                });
            }
        } else {
            waiting.push(p.clone());
        }
    }
    waiting
}

/// Whether `node` holds the target without having confirmed it yet.
fn fresh(waiting: &[Handover], node: &str) -> bool {
    waiting.iter().any(|w| w.to == node)
}

fn new_handover(target: &str, from: Option<&str>, to: &str, now_ms: u64) -> Handover {
    Handover {
        target: target.to_string(),
        from: from.map(str::to_string),
        to: to.to_string(),
        started_ms: now_ms,
    }
}

/// Whether any of `pending` can end now (confirmed or timed out): then a
/// pass should follow, so that the old owners drop their targets.
pub fn any_due(pending: &[Handover], seen: &Seen, now_ms: u64, timeout_ms: u64) -> bool {
    pending.iter().any(|p| {
        now_ms >= p.started_ms.saturating_add(timeout_ms)
            || seen
                .get(&p.to)
                .and_then(|s| s.get(&p.target))
                .is_some_and(|&at| at > p.started_ms)
    })
}

/// The default `handover_timeout`: three scrape intervals and 15 s (the
/// new owner's discovery refresh, its first scrape, and an observation).
pub fn default_timeout(scrape_interval: std::time::Duration) -> std::time::Duration {
    scrape_interval * 3 + std::time::Duration::from_secs(15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn files(entries: &[(&str, &[&str])]) -> Files {
        entries
            .iter()
            .map(|(n, ts)| (n.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    fn seen(entries: &[(&str, &str, u64)]) -> Seen {
        let mut s = Seen::new();
        for (n, t, at) in entries {
            s.entry(n.to_string())
                .or_default()
                .insert(t.to_string(), *at);
        }
        s
    }

    struct Case {
        files: Files,
        plan: Files,
        live: BTreeSet<String>,
        pending: Vec<Handover>,
        seen: Seen,
        now_ms: u64,
    }

    impl Case {
        fn step(&self) -> Outcome {
            step(&Step {
                files: &self.files,
                plan: &self.plan,
                live: &self.live,
                pending: &self.pending,
                seen: &self.seen,
                now_ms: self.now_ms,
                timeout_ms: 10_000,
            })
        }

        /// Apply an outcome: the next step starts from its files.
        fn advance(&mut self, out: &Outcome, ms: u64) {
            self.files = out.files.clone();
            self.pending = out.pending.clone();
            self.now_ms += ms;
        }
    }

    fn moving_t_from_a_to_b() -> Case {
        Case {
            files: files(&[("a", &["t"])]),
            plan: files(&[("a", &[]), ("b", &["t"])]),
            live: set(&["a", "b"]),
            pending: Vec::new(),
            seen: Seen::new(),
            now_ms: 1000,
        }
    }

    #[test]
    fn the_old_owner_keeps_a_target_until_the_new_one_has_scraped_it() {
        let mut c = moving_t_from_a_to_b();
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &["t"]), ("b", &["t"])]));
        assert_eq!(out.pending.len(), 1);
        assert_eq!(
            (out.pending[0].from.as_deref(), &*out.pending[0].to),
            (Some("a"), "b")
        );
        c.advance(&out, 2000);
        // A scrape from before the handover started confirms nothing.
        c.seen = seen(&[("b", "t", 1000)]);
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &["t"]), ("b", &["t"])]));
        assert!(out.finished.is_empty());
        c.advance(&out, 1000);
        c.seen = seen(&[("b", "t", 2500)]);
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &[]), ("b", &["t"])]));
        assert!(out.pending.is_empty());
        assert_eq!(out.finished.len(), 1);
        assert_eq!(out.finished[0].overlap_ms, 3000);
        assert!(!out.finished[0].timed_out);
    }

    #[test]
    fn a_handover_never_confirmed_ends_by_timeout_and_the_new_owner_keeps_the_target() {
        let mut c = moving_t_from_a_to_b();
        let out = c.step();
        c.advance(&out, 9999);
        let out = c.step();
        assert_eq!(out.pending.len(), 1, "not yet");
        c.advance(&out, 1);
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &[]), ("b", &["t"])]));
        assert_eq!(out.timed_out().count(), 1);
        assert!(any_due(&c.pending, &Seen::new(), c.now_ms, 10_000));
    }

    #[test]
    fn a_dead_node_gets_no_overlap_its_targets_move_at_once() {
        let mut c = moving_t_from_a_to_b();
        c.live = set(&["b"]);
        c.plan = files(&[("b", &["t"])]);
        let out = c.step();
        assert_eq!(out.files, files(&[("b", &["t"])]));
        assert!(out.pending.is_empty() && out.finished.is_empty());
    }

    #[test]
    fn a_new_owner_that_dies_mid_handover_is_replaced_and_the_old_owner_waits_on() {
        let mut c = moving_t_from_a_to_b();
        let out = c.step();
        c.advance(&out, 1000);
        c.live = set(&["a", "c"]);
        c.plan = files(&[("a", &[]), ("c", &["t"])]);
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &["t"]), ("c", &["t"])]));
        assert_eq!(out.pending.len(), 1);
        assert_eq!(
            (&*out.pending[0].to, out.pending[0].started_ms),
            ("c", 2000)
        );
    }

    #[test]
    fn a_new_pass_during_a_handover_replans_from_the_current_files() {
        let mut c = moving_t_from_a_to_b();
        let out = c.step();
        c.advance(&out, 1000);
        // The plan goes back to a: b never took over, it drops t at once.
        c.plan = files(&[("a", &["t"]), ("b", &[])]);
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &["t"]), ("b", &[])]));
        assert!(out.pending.is_empty() && out.finished.is_empty());
        // The plan moves it to c instead: b drops it, a waits for c.
        let mut c = moving_t_from_a_to_b();
        let out = c.step();
        c.advance(&out, 1000);
        c.live = set(&["a", "b", "c"]);
        c.plan = files(&[("a", &[]), ("b", &[]), ("c", &["t"])]);
        let out = c.step();
        assert_eq!(
            out.files,
            files(&[("a", &["t"]), ("b", &[]), ("c", &["t"])])
        );
        assert_eq!(&*out.pending[0].to, "c");
    }

    #[test]
    fn a_drained_node_keeps_its_targets_until_confirmed_then_holds_nothing() {
        let mut c = Case {
            files: files(&[("a", &["t1", "t2"]), ("b", &["t3"])]),
            plan: files(&[("b", &["t1", "t2", "t3"])]),
            live: set(&["a", "b"]),
            pending: Vec::new(),
            seen: Seen::new(),
            now_ms: 0,
        };
        let out = c.step();
        assert_eq!(out.files["a"].len(), 2, "a keeps both");
        assert_eq!(out.files["b"].len(), 3);
        c.advance(&out, 1000);
        c.seen = seen(&[("b", "t1", 500)]);
        let out = c.step();
        assert_eq!(out.files["a"], set(&["t2"]));
        c.advance(&out, 1000);
        c.seen = seen(&[("b", "t1", 1500), ("b", "t2", 1500)]);
        let out = c.step();
        assert_eq!(out.files["a"], set(&[]), "drained: an empty file");
        assert!(out.pending.is_empty());
    }

    #[test]
    fn new_and_removed_targets_need_no_handover() {
        let c = Case {
            files: files(&[("a", &["old"])]),
            plan: files(&[("a", &[]), ("b", &["new"])]),
            live: set(&["a", "b"]),
            pending: Vec::new(),
            seen: Seen::new(),
            now_ms: 0,
        };
        let out = c.step();
        assert_eq!(out.files, files(&[("a", &[]), ("b", &["new"])]));
        assert!(out.pending.is_empty());
    }

    #[test]
    fn with_two_replicas_both_moving_one_node_is_added_at_a_time() {
        let mut c = Case {
            files: files(&[("a", &["t"]), ("b", &["t"])]),
            plan: files(&[("c", &["t"]), ("d", &["t"])]),
            live: set(&["a", "b", "c", "d"]),
            pending: Vec::new(),
            seen: Seen::new(),
            now_ms: 0,
        };
        let mut steps = 0;
        while holders_of(&c.files, "t") != ["c", "d"].into() {
            let out = c.step();
            let holders = out.files.values().filter(|t| t.contains("t")).count();
            assert!((2..=3).contains(&holders), "{:?}", out.files);
            c.advance(&out, 1000);
            c.seen = seen(&[("c", "t", c.now_ms - 1), ("d", "t", c.now_ms - 1)]);
            steps += 1;
            assert!(steps < 6, "not converging: {:?}", c.files);
        }
    }

    /// One random world for the property test.
    #[derive(Debug, Clone)]
    struct World {
        /// Per step: live mask, drained mask, per-target node picks,
        /// healthy mask, milliseconds to advance.
        steps: Vec<(u8, u8, Vec<u8>, u8, u64)>,
        replicas: usize,
    }

    const NODES: usize = 5;
    const TARGETS: usize = 8;

    fn world() -> impl Strategy<Value = World> {
        let one = (
            1u8..32,
            0u8..32,
            proptest::collection::vec(any::<u8>(), TARGETS),
            0u8..32,
            0u64..4000,
        );
        (proptest::collection::vec(one, 1..12), 1usize..=2)
            .prop_map(|(steps, replicas)| World { steps, replicas })
    }

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    /// A plan: each target on `replicas` distinct ring nodes chosen by `pick`.
    fn plan_of(ring: &[String], picks: &[u8], replicas: usize) -> Files {
        let mut plan: Files = ring.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for (t, &pick) in picks.iter().enumerate() {
            let r = replicas.min(ring.len());
            for k in 0..r {
                let node = &ring[(pick as usize + k) % ring.len()];
                plan.get_mut(node).unwrap().insert(format!("t{t}"));
            }
        }
        plan
    }

    fn holders_of<'a>(f: &'a Files, t: &str) -> BTreeSet<&'a str> {
        f.iter()
            .filter(|(_, ts)| ts.contains(t))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Check one step's outcome against the invariants of the module doc.
    fn check(before: &Case, out: &Outcome) -> Result<(), TestCaseError> {
        let unconfirmed_before: BTreeSet<(&str, &str)> = before
            .pending
            .iter()
            .map(|p| (p.target.as_str(), p.to.as_str()))
            .collect();
        // Confirmed (or timed out) new owners count as scraping.
        let finished: BTreeSet<(&str, &str)> = before
            .pending
            .iter()
            .filter(|p| {
                let at = before.seen.get(&p.to).and_then(|s| s.get(&p.target));
                at.is_some_and(|&at| at > p.started_ms) || before.now_ms >= p.started_ms + 10_000
            })
            .map(|p| (p.target.as_str(), p.to.as_str()))
            .collect();
        for t in (0..TARGETS).map(|t| format!("t{t}")) {
            let wanted = holders_of(&before.plan, &t);
            let now = holders_of(&out.files, &t);
            let had: BTreeSet<&str> = holders_of(&before.files, &t)
                .into_iter()
                .filter(|n| before.live.contains(*n))
                .collect();
            prop_assert!(now.iter().all(|n| before.live.contains(*n)), "dead holder");
            prop_assert!(now.len() >= wanted.len(), "{t}: {now:?} < plan {wanted:?}");
            prop_assert!(
                now.len() <= wanted.len() + 1 || now.is_subset(&had),
                "{t}: {now:?} grew past plan {wanted:?} + 1"
            );
            // Established scrapers are never dropped below the plan's count.
            let established = |n: &str| {
                !unconfirmed_before.contains(&(t.as_str(), n))
                    || finished.contains(&(t.as_str(), n))
            };
            let before_est = had.iter().filter(|n| established(n)).count();
            let after_est = now
                .iter()
                .filter(|n| had.contains(**n) && established(n))
                .count();
            prop_assert!(
                after_est >= before_est.min(wanted.len()),
                "{t}: established {after_est} < min({before_est}, {})",
                wanted.len()
            );
        }
        for p in &out.pending {
            prop_assert!(out.files[&p.to].contains(&p.target), "{p:?}");
        }
        for (node, ts) in &out.files {
            if !before.plan.contains_key(node) {
                let old = before.files.get(node).cloned().unwrap_or_default();
                prop_assert!(ts.is_subset(&old), "{node} gained outside the plan");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any sequence of plans, node deaths, drains and partial
        /// confirmations keeps the invariants at every step, and once the
        /// world holds still every handover ends with the files equal to
        /// the plan.
        #[test]
        fn handovers_keep_coverage_and_converge(w in world()) {
            let mut c = Case {
                files: Files::new(),
                plan: Files::new(),
                live: BTreeSet::new(),
                pending: Vec::new(),
                seen: Seen::new(),
                now_ms: 1,
            };
            let mut last = None;
            for (live_mask, drained_mask, picks, healthy, ms) in &w.steps {
                let live: Vec<String> = (0..NODES).filter(|i| live_mask & (1 << i) != 0).map(name).collect();
                let mut ring: Vec<String> = live.iter().filter(|n| {
                    let i: usize = n[1..].parse().unwrap();
                    drained_mask & (1 << i) == 0
                }).cloned().collect();
                if ring.is_empty() {
                    ring = live.clone();
                }
                c.live = live.into_iter().collect();
                c.plan = plan_of(&ring, picks, w.replicas);
                c.seen = Seen::new();
                for (n, ts) in &c.files {
                    let i: usize = n[1..].parse().unwrap();
                    if healthy & (1 << i) != 0 {
                        let scraped = ts.iter().map(|t| (t.clone(), c.now_ms.saturating_sub(1))).collect();
                        c.seen.insert(n.clone(), scraped);
                    }
                }
                let out = c.step();
                check(&c, &out)?;
                c.advance(&out, *ms);
                last = Some(ring);
            }
            // Hold still, every node healthy: it converges to the plan.
            let ring = last.unwrap();
            for _ in 0..=2 * w.replicas + 1 {
                c.now_ms += 1000;
                c.seen = c.files.iter().map(|(n, ts)| {
                    (n.clone(), ts.iter().map(|t| (t.clone(), c.now_ms - 1)).collect())
                }).collect();
                let out = c.step();
                check(&c, &out)?;
                c.advance(&out, 0);
            }
            prop_assert!(c.pending.is_empty(), "still pending: {:?}", c.pending);
            for (n, ts) in &c.files {
                let want = c.plan.get(n).cloned().unwrap_or_default();
                prop_assert_eq!(ts, &want, "{} on ring {:?}", n, ring);
            }
        }
    }
}
