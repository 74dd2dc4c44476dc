//! `ha.mode: shared`: every service has its own owner, and the services
//! spread over the live instances, so the work and a failure's blast
//! radius are divided instead of carried by one leader.
//!
//! Keys under `promshard/<name>/`, all but the plans attached to the
//! writer's lease (the one lease each instance grants and keeps alive):
//!
//! - `instances/<instance>`: the instance is alive.
//! - `owner/<service>` = the owning instance. Only acquisition and transfer
//!   write it, so its `mod_revision` is the service's **epoch**: every new
//!   owner's is a higher etcd revision than the last, and the destination
//!   markers fence older ones as in leader mode.
//! - `ready/<service>` = an instance that has planned the service and asks
//!   for it.
//! - `plan/<service>` = `{"hash": …, "targets": n}`, published by the owner
//!   after each pass (fenced on the owner key): what `/sd` answers
//!   everywhere, and the service's weight in the spread.
//!
//! Every lease tick each instance reads the whole prefix once and computes
//! the desired owner of every service ([`crate::shard::spread`]) from it,
//! so all agree. Then, per service of its config:
//!
//! - **unowned**: the desired owner acquires at once (create-if-absent);
//!   any instance does once it has seen the service unowned for two ticks
//!   (instances with different configs still cover everything).
//! - **owned elsewhere, desired here**: once this instance has planned it
//!   (a dry pass), holds no other `ready` key, and every service it
//!   acquired has had its first pass as owner, it puts `ready/<service>`:
//!   one move at a time per instance.
//! - **owned here, desired elsewhere, and that instance is ready**: one txn
//!   (owner key still at my epoch, ready key names it) makes it the owner
//!   under its own lease and deletes the ready key. There is no moment
//!   without an owner, and none with two: this instance's term ends with
//!   the txn, and it does not transfer while a pass of the service runs.
//!
//! Before each delivery the owner confirms (one range) that the owner key
//! still names it, with its lease, at its epoch. Losing the lease (its own
//! clock, as in leader mode) ends every term at once; SIGTERM revokes it,
//! so the others acquire within a tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::etcd::{Client, Compare, CompareOp, KeyValue, Op, Put, Range, Txn};
use super::{Ha, Role, lock};

/// Whether a pass of a service is running now (the daemon's pass lock).
pub type Busy = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Who owns a service, as last seen in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceOwner {
    /// The owning instance (`ha.instance`).
    pub instance: String,
    /// The owner key's revision: the owner's epoch for the service.
    pub epoch: u64,
}

/// What this instance knows and holds in shared mode.
#[derive(Default)]
pub(super) struct State {
    /// The lease this instance is registered with.
    lease: Option<i64>,
    /// Services owned here, with their epochs.
    pub(super) owned: BTreeMap<String, u64>,
    /// The services of this instance's config.
    services: BTreeSet<String>,
    /// Services passed here at least once (a dry pass plans them).
    planned: BTreeSet<String>,
    /// Per service, the epoch whose first pass as owner has finished.
    first_done: BTreeMap<String, u64>,
    /// Per service, for how many ticks in a row it was seen unowned.
    unowned: BTreeMap<String, u32>,
    busy: Option<Busy>,
}

/// A plan as the owner published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Published {
    pub(super) hash: String,
    pub(super) targets: Option<u64>,
}

/// `{"hash": …, "targets": n}`, or leader mode's plain hash.
pub(super) fn parse_plan(value: &[u8]) -> Published {
    #[derive(serde::Deserialize)]
    struct Json {
        hash: String,
        targets: Option<u64>,
    }
    match serde_json::from_slice::<Json>(value) {
        Ok(j) => Published {
            hash: j.hash,
            targets: j.targets,
        },
        Err(_) => Published {
            hash: String::from_utf8_lossy(value).into_owned(),
            targets: None,
        },
    }
}

/// One read of the cluster's keys.
#[derive(Debug, Default)]
struct Snapshot {
    /// Live instances and their leases.
    instances: BTreeMap<String, i64>,
    /// Per service: owner, epoch, the owner key's lease.
    owners: BTreeMap<String, (ServiceOwner, i64)>,
    /// Per service: the instance asking for it.
    ready: BTreeMap<String, String>,
    plans: BTreeMap<String, Published>,
}

impl Snapshot {
    fn parse(prefix: &str, kvs: &[KeyValue]) -> Snapshot {
        let mut s = Snapshot::default();
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let rest = String::from_utf8_lossy(rest);
            let Some((kind, name)) = rest.split_once('/') else {
                continue;
            };
            let (name, value) = (name.to_string(), String::from_utf8_lossy(&kv.value));
            match kind {
                "instances" => {
                    s.instances.insert(name, kv.lease);
                }
                "owner" => {
                    let owner = ServiceOwner {
                        instance: value.into_owned(),
                        epoch: kv.mod_revision as u64,
                    };
                    s.owners.insert(name, (owner, kv.lease));
                }
                "ready" => {
                    s.ready.insert(name, value.into_owned());
                }
                "plan" => {
                    s.plans.insert(name, parse_plan(&kv.value));
                }
                _ => {}
            }
        }
        s
    }
}

impl Ha {
    fn cluster_prefix(&self) -> String {
        format!("promshard/{}/", self.cfg.name)
    }

    fn shared_key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.cluster_prefix())
    }

    /// The services of the running config (shared mode spreads these).
    pub fn set_services(&self, services: impl IntoIterator<Item = String>) {
        lock(&self.shared).services = services.into_iter().collect();
    }

    /// How to tell whether a pass of a service is running: a service is
    /// not handed over in the middle of one.
    pub fn set_busy(&self, busy: Busy) {
        lock(&self.shared).busy = Some(busy);
    }

    /// The epoch `service` is owned here with, if it is.
    pub(super) fn owned_epoch(&self, service: &str) -> Option<u64> {
        lock(&self.shared).owned.get(service).copied()
    }

    /// A pass of `service` was computed here (dry or not).
    pub(super) fn planned(&self, service: &str) {
        lock(&self.shared).planned.insert(service.to_string());
    }

    /// Publish the plan of `service` delivered under `epoch`, fenced on the
    /// owner key; it also tells a joiner that the first pass is done.
    pub(super) async fn publish_owned(
        &self,
        client: &Client,
        service: &str,
        epoch: u64,
        hash: &str,
        targets: usize,
    ) {
        if self.owned_epoch(service) != Some(epoch) {
            return;
        }
        let value = serde_json::json!({"hash": hash, "targets": targets}).to_string();
        let txn = Txn {
            compare: vec![Compare::ModRevision(
                self.shared_key("owner", service).into_bytes(),
                CompareOp::Equal,
                epoch as i64,
            )],
            success: vec![Op::Put(Put {
                key: self.plan_key(service).into_bytes(),
                value: value.into_bytes(),
                lease: 0,
            })],
            failure: vec![],
        };
        match client.txn(txn).await {
            Ok(r) if r.succeeded => {
                lock(&self.shared)
                    .first_done
                    .insert(service.to_string(), epoch);
            }
            Ok(_) => tracing::warn!(service, epoch, "plan not published: no longer the owner"),
            Err(e) => tracing::warn!(service, error = %e, "plan not published to etcd"),
        }
    }

    /// Ok when etcd shows `service` still owned here at `epoch`.
    pub(super) async fn confirm_owned(&self, service: &str, epoch: u64) -> Result<(), String> {
        let lease = {
            let s = lock(&self.shared);
            match (s.lease, s.owned.get(service)) {
                (Some(l), Some(&e)) if e == epoch => l,
                _ => return Err(format!("fenced: epoch {epoch} no longer owns {service:?}")),
            }
        };
        let client = self.etcd().map_err(|e| format!("fenced: {e}"))?;
        let key = self.shared_key("owner", service);
        match client.range(Range::key(key)).await {
            Ok(r) => match r.kvs.first() {
                Some(kv)
                    if kv.value == self.cfg.instance.as_bytes()
                        && kv.lease == lease
                        && kv.mod_revision as u64 == epoch =>
                {
                    Ok(())
                }
                Some(kv) => Err(format!(
                    "fenced: {service:?} is now owned by {} at epoch {}, not epoch {epoch}",
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision
                )),
                None => Err(format!(
                    "fenced: {service:?} has no owner in etcd; epoch {epoch} ended"
                )),
            },
            Err(e) => Err(format!("fenced: etcd could not confirm the owner: {e}")),
        }
    }

    /// Register this instance under `lease`.
    pub(super) async fn register(&self, client: &Client, lease: i64) -> Result<(), String> {
        let key = self.shared_key("instances", &self.cfg.instance);
        client
            .put(key, self.cfg.instance.clone(), lease)
            .await
            .map_err(|e| format!("registering the instance: {e}"))?;
        lock(&self.shared).lease = Some(lease);
        Ok(())
    }

    /// The lease is gone or given back: every term here ends.
    pub(super) fn end_owned(&self) {
        let ended = {
            let mut s = lock(&self.shared);
            s.lease = None;
            std::mem::take(&mut s.owned)
        };
        if !ended.is_empty() {
            tracing::info!(cluster = %self.cfg.name, instance = %self.cfg.instance, services = ended.len(), "ownership of every service ended; delivering nothing");
        }
        self.update(|st| {
            st.owned.clear();
            st.role = Role::Standby;
        });
    }

    /// One lease tick: read the cluster, then acquire, ask for, hand over
    /// or release services as the spread wants.
    pub(super) async fn shared_tick(&self, client: &Client, lease: i64) {
        let prefix = self.cluster_prefix();
        let kvs = match client.get_prefix(prefix.clone()).await {
            Ok(kvs) => kvs,
            Err(e) => {
                tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: cannot read the cluster's keys");
                return;
            }
        };
        let mut snap = Snapshot::parse(&prefix, &kvs);
        {
            let mut published = lock(&self.published);
            for (service, p) in &snap.plans {
                published.insert(service.clone(), p.hash.clone());
            }
        }
        if !snap.instances.contains_key(&self.cfg.instance) {
            // Registered with an earlier lease, or the key was removed.
            if let Err(e) = self.register(client, lease).await {
                tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: cannot register");
            }
            return;
        }
        self.adopt(&snap, lease);
        let desired = self.desired(&snap);
        let services: Vec<String> = lock(&self.shared).services.iter().cloned().collect();
        for service in &services {
            self.act(client, lease, &mut snap, &desired, service).await;
        }
        self.release_removed(client, &mut snap).await;
        self.show(&snap);
    }

    /// Take the owned services from the snapshot: what etcd says is owned
    /// here under this lease (a transfer to here shows up this way).
    fn adopt(&self, snap: &Snapshot, lease: i64) {
        let now: BTreeMap<String, u64> = snap
            .owners
            .iter()
            .filter(|(_, (o, l))| o.instance == self.cfg.instance && *l == lease)
            .map(|(s, (o, _))| (s.clone(), o.epoch))
            .collect();
        let mut s = lock(&self.shared);
        for (service, epoch) in &now {
            if s.owned.get(service) != Some(epoch) {
                tracing::info!(service, epoch, instance = %self.cfg.instance, "service owned here");
            }
        }
        for (service, epoch) in &s.owned {
            if now.get(service) != Some(epoch) {
                tracing::info!(service, epoch, instance = %self.cfg.instance, "ownership of the service ended");
            }
        }
        s.owned = now;
    }

    /// The desired owner of every service of this config.
    fn desired(&self, snap: &Snapshot) -> BTreeMap<String, String> {
        let instances: Vec<&str> = snap.instances.keys().map(String::as_str).collect();
        let s = lock(&self.shared);
        let services: Vec<(&str, Option<u64>)> = s
            .services
            .iter()
            .map(|n| (n.as_str(), snap.plans.get(n).and_then(|p| p.targets)))
            .collect();
        crate::shard::spread::spread(&instances, &services).unwrap_or_default()
    }

    /// What this instance does about `service` this tick.
    async fn act(
        &self,
        client: &Client,
        lease: i64,
        snap: &mut Snapshot,
        desired: &BTreeMap<String, String>,
        service: &str,
    ) {
        let me = self.cfg.instance.as_str();
        let wanted_here = desired.get(service).map(String::as_str) == Some(me);
        let owner = snap.owners.get(service).map(|(o, _)| o.instance.clone());
        let mine_ready = snap.ready.get(service).map(String::as_str) == Some(me);
        if mine_ready && (owner.as_deref() == Some(me) || !wanted_here) {
            self.withdraw(client, snap, service).await;
        }
        match owner {
            None => {
                let ticks = {
                    let mut s = lock(&self.shared);
                    let t = s.unowned.entry(service.to_string()).or_default();
                    *t += 1;
                    *t
                };
                if wanted_here || ticks > 2 {
                    self.acquire(client, lease, snap, service).await;
                }
            }
            Some(o) if o == me => {
                lock(&self.shared).unowned.remove(service);
                let to = desired.get(service).filter(|d| d.as_str() != me);
                if let Some(to) = to
                    && snap.ready.get(service) == Some(to)
                {
                    self.transfer(client, snap, service, to).await;
                }
            }
            Some(_) => {
                lock(&self.shared).unowned.remove(service);
                if wanted_here && !mine_ready && self.may_ask(snap, service) {
                    self.ask(client, lease, snap, service).await;
                }
            }
        }
    }

    /// Whether to ask for `service` now: planned here, no other ask
    /// pending, and every service owned here past its first pass.
    fn may_ask(&self, snap: &Snapshot, service: &str) -> bool {
        let me = self.cfg.instance.as_str();
        let s = lock(&self.shared);
        s.planned.contains(service)
            && !snap.ready.values().any(|r| r == me)
            && s.owned
                .iter()
                .all(|(svc, e)| s.first_done.get(svc) == Some(e))
    }

    /// Put `key` = this instance under `lease` unless the key exists; the
    /// revision of the put when it was made.
    async fn put_if_absent(
        &self,
        client: &Client,
        key: String,
        lease: i64,
    ) -> Result<Option<u64>, super::etcd::Error> {
        let key = key.into_bytes();
        let txn = Txn {
            compare: vec![Compare::CreateRevision(key.clone(), CompareOp::Equal, 0)],
            success: vec![Op::Put(Put {
                key,
                value: self.cfg.instance.clone().into_bytes(),
                lease,
            })],
            failure: vec![],
        };
        let r = client.txn(txn).await?;
        Ok(r.succeeded.then_some(r.header.revision as u64))
    }

    async fn acquire(&self, client: &Client, lease: i64, snap: &mut Snapshot, service: &str) {
        match self
            .put_if_absent(client, self.shared_key("owner", service), lease)
            .await
        {
            Ok(Some(epoch)) => {
                tracing::info!(service, epoch, instance = %self.cfg.instance, "service acquired");
                let owner = ServiceOwner {
                    instance: self.cfg.instance.clone(),
                    epoch,
                };
                snap.owners.insert(service.to_string(), (owner, lease));
                let mut s = lock(&self.shared);
                s.owned.insert(service.to_string(), epoch);
                s.unowned.remove(service);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(service, error = %e, "etcd: cannot acquire the service"),
        }
    }

    async fn ask(&self, client: &Client, lease: i64, snap: &mut Snapshot, service: &str) {
        match self
            .put_if_absent(client, self.shared_key("ready", service), lease)
            .await
        {
            Ok(Some(_)) => {
                tracing::info!(service, instance = %self.cfg.instance, "ready to take the service over");
                snap.ready
                    .insert(service.to_string(), self.cfg.instance.clone());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(service, error = %e, "etcd: cannot ask for the service"),
        }
    }

    /// Delete this instance's ask for `service` (owned now, or no longer
    /// desired here).
    async fn withdraw(&self, client: &Client, snap: &mut Snapshot, service: &str) {
        let key = self.shared_key("ready", service).into_bytes();
        let txn = Txn {
            compare: vec![Compare::Value(
                key.clone(),
                CompareOp::Equal,
                self.cfg.instance.clone().into_bytes(),
            )],
            success: vec![Op::Delete(Range::key(key))],
            failure: vec![],
        };
        match client.txn(txn).await {
            Ok(_) => {
                snap.ready.remove(service);
            }
            Err(e) => tracing::warn!(service, error = %e, "etcd: cannot withdraw the ask"),
        }
    }

    /// Hand `service` to `to` (ready for it): one txn, never while a pass
    /// of it runs here.
    async fn transfer(&self, client: &Client, snap: &mut Snapshot, service: &str, to: &str) {
        let (epoch, busy) = {
            let s = lock(&self.shared);
            (s.owned.get(service).copied(), s.busy.clone())
        };
        let (Some(epoch), Some(&to_lease)) = (epoch, snap.instances.get(to)) else {
            return;
        };
        if busy.is_some_and(|b| b(service)) {
            return;
        }
        // The term ends before the txn: a pass starting now finds nothing
        // to deliver with, and one the txn outlives is fenced by etcd.
        lock(&self.shared).owned.remove(service);
        let (owner, ready) = (
            self.shared_key("owner", service).into_bytes(),
            self.shared_key("ready", service).into_bytes(),
        );
        let txn = Txn {
            compare: vec![
                Compare::ModRevision(owner.clone(), CompareOp::Equal, epoch as i64),
                Compare::Value(ready.clone(), CompareOp::Equal, to.as_bytes().to_vec()),
            ],
            success: vec![
                Op::Put(Put {
                    key: owner,
                    value: to.as_bytes().to_vec(),
                    lease: to_lease,
                }),
                Op::Delete(Range::key(ready)),
            ],
            failure: vec![],
        };
        match client.txn(txn).await {
            Ok(r) if r.succeeded => {
                let new_epoch = r.header.revision as u64;
                tracing::info!(service, epoch, to, new_epoch, "service handed over");
                let owner = ServiceOwner {
                    instance: to.to_string(),
                    epoch: new_epoch,
                };
                snap.owners.insert(service.to_string(), (owner, to_lease));
                snap.ready.remove(service);
            }
            Ok(_) => {
                // Not handed over: keep it if etcd still says so (next tick).
                tracing::info!(
                    service,
                    to,
                    "handover not applied; ownership re-read next tick"
                );
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "etcd: handover failed; ownership re-read next tick")
            }
        }
    }

    /// Give back services owned here that the config no longer has.
    async fn release_removed(&self, client: &Client, snap: &mut Snapshot) {
        let gone: Vec<(String, u64)> = {
            let s = lock(&self.shared);
            s.owned
                .iter()
                .filter(|(svc, _)| !s.services.contains(*svc))
                .map(|(svc, e)| (svc.clone(), *e))
                .collect()
        };
        for (service, epoch) in gone {
            lock(&self.shared).owned.remove(&service);
            let key = self.shared_key("owner", &service).into_bytes();
            let txn = Txn {
                compare: vec![Compare::ModRevision(
                    key.clone(),
                    CompareOp::Equal,
                    epoch as i64,
                )],
                success: vec![Op::Delete(Range::key(key))],
                failure: vec![],
            };
            match client.txn(txn).await {
                Ok(_) => {
                    tracing::info!(
                        service,
                        epoch,
                        "service no longer configured here; released"
                    );
                    snap.owners.remove(&service);
                }
                Err(e) => tracing::warn!(service, error = %e, "etcd: cannot release the service"),
            }
        }
    }

    /// Publish what the tick saw and holds in the status.
    fn show(&self, snap: &Snapshot) {
        let owners: BTreeMap<String, ServiceOwner> = snap
            .owners
            .iter()
            .map(|(s, (o, _))| (s.clone(), o.clone()))
            .collect();
        let owned = lock(&self.shared).owned.clone();
        self.update(|st| {
            st.role = if owned.is_empty() {
                Role::Standby
            } else {
                Role::Leader
            };
            st.owners = owners;
            st.owned = owned;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_in_both_forms() {
        assert_eq!(
            parse_plan(br#"{"hash":"ab12","targets":40}"#),
            Published {
                hash: "ab12".into(),
                targets: Some(40)
            }
        );
        assert_eq!(
            parse_plan(b"ab12"),
            Published {
                hash: "ab12".into(),
                targets: None
            }
        );
    }

    #[test]
    fn a_snapshot_sorts_the_keys_by_kind() {
        let kv = |k: &str, v: &str, rev: i64, lease: i64| KeyValue {
            key: format!("promshard/c/{k}").into_bytes(),
            value: v.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease,
        };
        let s = Snapshot::parse(
            "promshard/c/",
            &[
                kv("instances/a", "a", 2, 7),
                kv("owner/svc", "a", 9, 7),
                kv("ready/svc", "b", 10, 8),
                kv("plan/svc", r#"{"hash":"h","targets":3}"#, 11, 0),
                kv("drained/n1", "", 12, 0),
                kv("leader/x", "a", 13, 7),
            ],
        );
        assert_eq!(s.instances, BTreeMap::from([("a".to_string(), 7)]));
        assert_eq!(s.owners["svc"].0.epoch, 9);
        assert_eq!(s.ready["svc"], "b");
        assert_eq!(s.plans["svc"].targets, Some(3));
    }
}
