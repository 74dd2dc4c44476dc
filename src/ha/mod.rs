//! High availability: with `ha:`, several promshard instances elect one
//! leader on etcd, and only the leader writes and delivers.
//!
//! Two instances are deterministic, so both *could* deliver; but each probes
//! node health from where it runs, and during a failure or a split they
//! disagree and overwrite each other's files. So one instance leads:
//!
//! - **Election**: each instance holds an etcd lease (`lease_ttl`, renewed
//!   every third of it) and campaigns with etcd's election API under
//!   `promshard/<name>/leader`. The winner's *epoch* is its election key's
//!   creation revision: every later leader's is higher.
//! - **Leader**: runs passes that write and deliver. Right before each
//!   delivery it asks etcd whether its lease is still alive (and still holds
//!   the election key); if not, or etcd does not answer, nothing is
//!   delivered. It steps down by itself once the lease can no longer have
//!   been renewed (its own clock, from the last renewal sent), so a leader
//!   cut off from etcd stops delivering within `lease_ttl`.
//! - **Standby**: runs scripts and plans on schedule (warm: nothing to
//!   start on takeover) but writes and delivers nothing; `/sd` answers only
//!   while its plan equals the one the leader published in etcd.
//! - **Fencing** (`push::fence`): each delivery carries the epoch, and the
//!   destination refuses one older than the newest it has seen — for a
//!   leader paused between its lease check and its write.
//! - **SIGTERM** revokes the lease at once: a standby takes over without
//!   waiting out the TTL. Without etcd nobody is promoted.
//! - **Drains** (`promshard drain`) are kept in etcd under
//!   `promshard/<name>/drained/<node>`, whichever instance is asked, and
//!   every pass reads them: a drained node stays drained when another
//!   instance takes over.
//!
//! With `mode: shared` ([`shared`]) there is no leader: each service has
//! its own owner, and the services spread over the live instances.
//!
//! etcd is reached through its v3 JSON gateway ([`etcd`]): plain HTTP(S)
//! calls, so building promshard needs no protobuf compiler.

pub mod etcd;
pub mod shared;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

pub use crate::config::ha::{HaConfig, HaMode};
pub use crate::pass::Fence;
pub use shared::ServiceOwner;

use crate::pass::{PassReport, SdSnapshot};

use etcd::{Client, Compare, CompareOp, LeaderKey, Op, Put, Range, Txn};

/// How long one campaign request waits in etcd before it is sent again.
/// etcd does not end a campaign when its lease is revoked, only when the
/// request's connection closes; so this bounds how long a campaign of a
/// term that has ended (lease lost, shutdown) holds its thread.
const CAMPAIGN_WAIT: Duration = Duration::from_secs(30);
/// Pause between a campaign whose wait ended and the next: etcd withdraws
/// the old candidacy within milliseconds of its connection closing.
const RECAMPAIGN_PAUSE: Duration = Duration::from_millis(200);

/// This instance's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// What `/api/v1/services`, the status page and metrics show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaStatus {
    /// `ha.name`: the cluster.
    pub cluster: String,
    /// This instance.
    pub instance: String,
    /// `leader` or `shared`.
    pub mode: HaMode,
    /// In shared mode: leader while it owns at least one service.
    pub role: Role,
    /// The epoch this instance leads with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The leader as last seen in etcd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The last etcd error, until etcd answers again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_error: Option<String>,
    /// Shared mode: the owner of each service, as last seen in etcd.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub owners: BTreeMap<String, ServiceOwner>,
    /// Shared mode: the services owned here and their epochs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub owned: BTreeMap<String, u64>,
}

/// The leadership held: the lease and election key that prove it.
#[derive(Debug, Clone)]
struct Term {
    lease: i64,
    key: Vec<u8>,
    epoch: u64,
}

/// How the next pass of a service runs.
pub enum PassMode {
    /// Compute only (a dry run): scripts and plans stay warm.
    Standby,
    /// Write and deliver, fenced by this epoch.
    Leader(Fence),
}

/// The HA side of a running daemon; shared behind an `Arc`.
pub struct Ha {
    cfg: HaConfig,
    status: watch::Sender<HaStatus>,
    term: Mutex<Option<Term>>,
    client: Mutex<Option<Client>>,
    /// Plan hash per service, as the leader published it (last seen).
    published: Mutex<HashMap<String, String>>,
    /// Per service, the epoch of its last pass as leader.
    passed: Mutex<HashMap<String, u64>>,
    /// Per service, the last plan computed here that the leader delivered:
    /// its hash and `/sd` answer.
    kept: Mutex<HashMap<String, (String, Arc<SdSnapshot>)>>,
    /// Shared mode: the services owned here and what decides them.
    shared: Mutex<shared::State>,
}

type Campaign = Pin<Box<dyn Future<Output = Result<Option<LeaderKey>, etcd::Error>> + Send>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ha {
    /// The election of this instance; [`Ha::run`] campaigns.
    pub fn new(cfg: HaConfig) -> Arc<Ha> {
        let (status, _) = watch::channel(HaStatus {
            cluster: cfg.name.clone(),
            instance: cfg.instance.clone(),
            mode: cfg.mode,
            role: Role::Standby,
            epoch: None,
            leader: None,
            etcd_error: None,
            owners: BTreeMap::new(),
            owned: BTreeMap::new(),
        });
        Arc::new(Ha {
            cfg,
            status,
            term: Mutex::new(None),
            client: Mutex::new(None),
            published: Mutex::new(HashMap::new()),
            passed: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            shared: Mutex::new(shared::State::default()),
        })
    }

    /// `ha.mode`.
    pub fn ha_mode(&self) -> HaMode {
        self.cfg.mode
    }

    pub fn status(&self) -> HaStatus {
        self.status.borrow().clone()
    }

    /// Changes of [`HaStatus`], e.g. to pass every service on promotion.
    pub fn subscribe(&self) -> watch::Receiver<HaStatus> {
        self.status.subscribe()
    }

    /// How a pass of `service` started now runs.
    pub fn mode(self: &Arc<Self>, service: &str) -> PassMode {
        if self.cfg.mode == HaMode::Shared {
            let Some(epoch) = self.owned_epoch(service) else {
                return PassMode::Standby;
            };
            let (ha, name) = (Arc::clone(self), service.to_string());
            return PassMode::Leader(Fence {
                epoch,
                // Ok when etcd shows the owner key still ours at `epoch`.
                confirm: Arc::new(move || {
                    let (ha, name) = (Arc::clone(&ha), name.clone());
                    Box::pin(async move { ha.confirm_owned(&name, epoch).await })
                }),
            });
        }
        match &*lock(&self.term) {
            Some(t) => {
                let (ha, epoch) = (Arc::clone(self), t.epoch);
                PassMode::Leader(Fence {
                    epoch,
                    // Ok when etcd confirms the lease alive and holding the
                    // election key.
                    confirm: Arc::new(move || {
                        let ha = Arc::clone(&ha);
                        Box::pin(async move { ha.confirm(epoch).await })
                    }),
                })
            }
            None => PassMode::Standby,
        }
    }

    /// True on `service`'s first pass under `epoch`: what an earlier leader
    /// delivered is unknown, so every node gets its file again.
    pub fn first_pass_of_term(&self, service: &str, epoch: u64) -> bool {
        lock(&self.passed).insert(service.to_string(), epoch) != Some(epoch)
    }

    /// What `/sd` answers for `service` given its last pass `current`: the
    /// plan the leader delivered, never a different assignment. The leader
    /// answers from its own delivered plan; anyone else from the last plan
    /// it computed that equals the one the leader published (kept, so that
    /// it still answers while etcd or the leader is away).
    pub fn sd_answer(
        &self,
        service: &str,
        current: &PassReport,
    ) -> Result<Arc<SdSnapshot>, String> {
        self.keep(service, current);
        let published = lock(&self.published).get(service).cloned();
        let kept = lock(&self.kept).get(service).cloned();
        let shared = self.cfg.mode == HaMode::Shared;
        match (published, kept) {
            (Some(p), Some((h, sd))) if p == h => Ok(sd),
            (Some(_), _) if shared => Err(format!(
                "this instance has not planned what the owner of {service:?} delivered; ask its owner"
            )),
            (None, _) if shared => {
                Err(format!("no owner has published a plan for {service:?} yet"))
            }
            (Some(_), _) => Err(format!(
                "this instance is a standby and has not planned what the leader delivered for {service:?}; ask the leader"
            )),
            (None, _) => Err(format!(
                "this instance is a standby and no leader has published a plan for {service:?} yet"
            )),
        }
    }

    /// Whether this instance delivers `service` now (leads, or owns it).
    pub fn delivers(&self, service: &str) -> bool {
        match self.cfg.mode {
            HaMode::Leader => self.status.borrow().role == Role::Leader,
            HaMode::Shared => self.owned_epoch(service).is_some(),
        }
    }

    /// Remember `report`'s plan if it is the one the leader delivered.
    pub fn keep(&self, service: &str, report: &PassReport) {
        self.planned(service);
        let Some(sd) = &report.sd else { return };
        let delivered_here = !report.dry_run && self.delivers(service);
        let published = lock(&self.published).get(service) == Some(&report.plan_hash);
        if delivered_here || published {
            lock(&self.kept).insert(
                service.to_string(),
                (report.plan_hash.clone(), Arc::clone(sd)),
            );
        }
    }

    /// Record in etcd the plan the leader (or owner) just delivered, of
    /// `targets` targets (only while it still holds `epoch`).
    pub async fn publish(&self, service: &str, epoch: u64, plan_hash: &str, targets: usize) {
        if self.cfg.mode == HaMode::Shared {
            lock(&self.published).insert(service.to_string(), plan_hash.to_string());
            if let Ok(client) = self.etcd() {
                self.publish_owned(&client, service, epoch, plan_hash, targets)
                    .await;
            }
            return;
        }
        let Some(term) = lock(&self.term).clone().filter(|t| t.epoch == epoch) else {
            return;
        };
        lock(&self.published).insert(service.to_string(), plan_hash.to_string());
        let Some(client) = lock(&self.client).clone() else {
            return;
        };
        let txn = Txn {
            compare: vec![Compare::CreateRevision(
                term.key,
                CompareOp::Equal,
                epoch as i64,
            )],
            success: vec![Op::Put(Put {
                key: self.plan_key(service).into_bytes(),
                value: plan_hash.as_bytes().to_vec(),
                lease: 0,
            })],
            failure: vec![],
        };
        match client.txn(txn).await {
            Ok(r) if r.succeeded => {}
            Ok(_) => tracing::warn!(service, epoch, "plan not published: no longer the leader"),
            Err(e) => tracing::warn!(service, error = %e, "plan not published to etcd"),
        }
    }

    /// Record in etcd that `node` is drained (or no longer is). Any
    /// instance may: the leader reads the set before each pass.
    pub async fn set_drained(&self, node: &str, drain: bool) -> Result<(), String> {
        let client = self.etcd()?;
        let key = format!("{}{node}", self.drain_prefix());
        let done = if drain {
            client.put(key, "", 0).await.map(drop)
        } else {
            client.delete(Range::key(key)).await.map(drop)
        };
        done.map_err(|e| e.to_string())
    }

    /// The drained nodes recorded in etcd.
    pub async fn drained(&self) -> Result<std::collections::BTreeSet<String>, String> {
        let client = self.etcd()?;
        let prefix = self.drain_prefix();
        let kvs = client
            .get_prefix(prefix.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect())
    }

    fn etcd(&self) -> Result<Client, String> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| "not connected to etcd".to_string())
    }

    fn drain_prefix(&self) -> String {
        format!("promshard/{}/drained/", self.cfg.name)
    }

    fn election(&self) -> String {
        format!("promshard/{}/leader", self.cfg.name)
    }

    fn plan_prefix(&self) -> String {
        format!("promshard/{}/plan/", self.cfg.name)
    }

    fn plan_key(&self, service: &str) -> String {
        format!("{}{service}", self.plan_prefix())
    }

    /// How long one etcd request may take: a third of the lease, so that
    /// a few failures still fit in it.
    fn rpc_timeout(&self) -> Duration {
        (self.cfg.lease_ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    async fn confirm(&self, epoch: u64) -> Result<(), String> {
        let term = lock(&self.term).clone();
        let Some(term) = term.filter(|t| t.epoch == epoch) else {
            return Err(format!("fenced: epoch {epoch} is no longer the leader's"));
        };
        let Some(client) = lock(&self.client).clone() else {
            return Err("fenced: no etcd client".into());
        };
        match client.lease_time_to_live(term.lease, true).await {
            Ok(r) if r.ttl > 0 && r.keys.contains(&term.key) => Ok(()),
            Ok(_) => Err(format!(
                "fenced: lease {:x} of epoch {epoch} has expired; leadership lost",
                term.lease
            )),
            Err(e) => Err(format!("fenced: etcd could not confirm the lease: {e}")),
        }
    }

    /// Campaign, lead, and campaign again after each lost term, until
    /// `shutdown` (then resign).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let retry = self.rpc_timeout();
        while !shutdown.is_cancelled() {
            match self.term(&shutdown).await {
                Ok(()) => break,
                Err(why) => {
                    tracing::error!(cluster = %self.cfg.name, error = %why, "etcd: lease lost or unreachable; delivering nothing until it is back");
                    self.update(|s| s.etcd_error = Some(why));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep(retry) => {}
            }
        }
    }

    /// One lease: grant it, campaign, hold it; give it back at the end so a
    /// standby need not wait out the TTL.
    async fn term(&self, shutdown: &CancellationToken) -> Result<(), String> {
        let client = Client::new(&self.cfg, self.rpc_timeout()).map_err(|e| e.to_string())?;
        *lock(&self.client) = Some(client.clone());
        let ttl = self.cfg.lease_ttl;
        let sent = Instant::now();
        let lease = client
            .lease_grant(ttl)
            .await
            .map_err(|e| format!("granting a lease: {e}"))?
            .id;
        self.update(|s| s.etcd_error = None);
        let held = match self.cfg.mode {
            HaMode::Shared => match self.register(&client, lease).await {
                Ok(()) => self.hold(&client, lease, sent + ttl, shutdown).await,
                Err(e) => Err(e),
            },
            HaMode::Leader => self.hold(&client, lease, sent + ttl, shutdown).await,
        };
        self.set_term(None);
        self.end_owned();
        let revoked = client
            .with_timeout(Duration::from_secs(1))
            .lease_revoke(lease)
            .await;
        if shutdown.is_cancelled() {
            match revoked {
                Ok(()) => tracing::info!(cluster = %self.cfg.name, "resigned: lease revoked"),
                Err(e) => {
                    tracing::warn!(cluster = %self.cfg.name, error = %e, "could not revoke the lease; a standby takes over when it expires")
                }
            }
        }
        held
    }

    async fn hold(
        &self,
        client: &Client,
        lease: i64,
        mut valid_until: Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let shared = self.cfg.mode == HaMode::Shared;
        let mut campaign = (!shared).then(|| self.campaign(client, lease, Duration::ZERO));
        let mut tick = tokio::time::interval(self.cfg.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = sleep_until(valid_until) => {
                    return Err(format!("lease {lease:x} not renewed within {:?}", self.cfg.lease_ttl));
                }
                won = async { campaign.as_mut().expect("guarded").await }, if campaign.is_some() => {
                    campaign = None;
                    let won = match won {
                        Ok(Some(key)) => self.holds(client, lease, &key).await.map(|held| held.then_some(key)),
                        Ok(None) => {
                            // The wait ended: campaign on once etcd has
                            // withdrawn the candidacy it closed.
                            campaign = Some(self.campaign(client, lease, RECAMPAIGN_PAUSE));
                            continue;
                        }
                        Err(e) => Err(e),
                    };
                    match won {
                        Ok(Some(key)) => self.set_term(Some(Term { lease, key: key.key, epoch: key.rev as u64 })),
                        Ok(None) => tracing::warn!(cluster = %self.cfg.name, "etcd: campaign won with a key that is gone; campaigning again"),
                        Err(e) => tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: campaign interrupted; campaigning again"),
                    }
                    if lock(&self.term).is_none() {
                        campaign = Some(self.campaign(client, lease, self.rpc_timeout()));
                    }
                }
                _ = tick.tick() => {
                    let sent = Instant::now();
                    match client.lease_keep_alive(lease).await {
                        Ok(ttl) if ttl > 0 => {
                            valid_until = sent + Duration::from_secs(ttl as u64);
                            self.update(|s| s.etcd_error = None);
                        }
                        Ok(_) => return Err(format!("lease {lease:x} expired in etcd")),
                        Err(e) => {
                            tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: lease renewal failed");
                            self.update(|s| s.etcd_error = Some(e.to_string()));
                        }
                    }
                    if shared {
                        self.shared_tick(client, lease).await;
                    } else {
                        self.refresh(client).await;
                    }
                }
            }
        }
    }

    /// Campaign in the background (after `delay`) for leadership.
    fn campaign(&self, client: &Client, lease: i64, delay: Duration) -> Campaign {
        let (client, name, value) = (client.clone(), self.election(), self.cfg.instance.clone());
        Box::pin(async move {
            sleep(delay).await;
            client.campaign(name, value, lease, CAMPAIGN_WAIT).await
        })
    }

    /// Whether a won campaign's `key` still exists, created at its revision
    /// and held by `lease`. A campaign sent again right after the previous
    /// wait ended can find the previous candidacy's key, which etcd then
    /// withdraws: such a win holds nothing.
    async fn holds(
        &self,
        client: &Client,
        lease: i64,
        key: &LeaderKey,
    ) -> Result<bool, etcd::Error> {
        let r = client.range(Range::key(key.key.clone())).await?;
        Ok(r.kvs
            .first()
            .is_some_and(|kv| kv.create_revision == key.rev && kv.lease == lease))
    }

    /// Who leads, and the plans the leader published.
    async fn refresh(&self, client: &Client) {
        if let Ok(leader) = client.leader(self.election()).await {
            let leader = leader.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            self.update(|s| s.leader = leader);
        }
        let prefix = self.plan_prefix();
        if let Ok(kvs) = client.get_prefix(prefix.clone()).await {
            let mut published = lock(&self.published);
            for kv in kvs {
                let service = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                published.insert(service, shared::parse_plan(&kv.value).hash);
            }
        }
    }

    fn set_term(&self, term: Option<Term>) {
        let epoch = term.as_ref().map(|t| t.epoch);
        let was = std::mem::replace(&mut *lock(&self.term), term);
        match (was.map(|t| t.epoch), epoch) {
            (None, Some(e)) => {
                tracing::info!(cluster = %self.cfg.name, instance = %self.cfg.instance, epoch = e, "elected leader")
            }
            (Some(e), None) => {
                // Why (resigned, lease lost) is logged where it happened.
                tracing::info!(cluster = %self.cfg.name, instance = %self.cfg.instance, epoch = e, "leadership ended; delivering nothing")
            }
            _ => {}
        }
        let instance = self.cfg.instance.clone();
        self.update(|s| {
            s.role = if epoch.is_some() {
                Role::Leader
            } else {
                Role::Standby
            };
            s.epoch = epoch;
            if epoch.is_some() {
                s.leader = Some(instance);
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut HaStatus)) {
        self.status.send_if_modified(|s| {
            let before = s.clone();
            change(s);
            *s != before
        });
    }
}
