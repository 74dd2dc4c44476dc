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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions, TlsOptions, Txn, TxnOp,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

pub use crate::config::ha::HaConfig;
pub use crate::pass::Fence;

use crate::pass::{PassReport, SdSnapshot};

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
}

type Campaign =
    Pin<Box<dyn Future<Output = Result<etcd_client::CampaignResponse, etcd_client::Error>> + Send>>;
type KeepAlive = (LeaseKeeper, LeaseKeepAliveStream);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ha {
    /// The election of this instance; [`Ha::run`] campaigns.
    pub fn new(cfg: HaConfig) -> Arc<Ha> {
        let (status, _) = watch::channel(HaStatus {
            cluster: cfg.name.clone(),
            instance: cfg.instance.clone(),
            role: Role::Standby,
            epoch: None,
            leader: None,
            etcd_error: None,
        });
        Arc::new(Ha {
            cfg,
            status,
            term: Mutex::new(None),
            client: Mutex::new(None),
            published: Mutex::new(HashMap::new()),
            passed: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
        })
    }

    pub fn status(&self) -> HaStatus {
        self.status.borrow().clone()
    }

    /// Changes of [`HaStatus`], e.g. to pass every service on promotion.
    pub fn subscribe(&self) -> watch::Receiver<HaStatus> {
        self.status.subscribe()
    }

    /// How a pass started now runs.
    pub fn mode(self: &Arc<Self>) -> PassMode {
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
        match (published, kept) {
            (Some(p), Some((h, sd))) if p == h => Ok(sd),
            (Some(_), _) => Err(format!(
                "this instance is a standby and has not planned what the leader delivered for {service:?}; ask the leader"
            )),
            (None, _) => Err(format!(
                "this instance is a standby and no leader has published a plan for {service:?} yet"
            )),
        }
    }

    /// Remember `report`'s plan if it is the one the leader delivered.
    pub fn keep(&self, service: &str, report: &PassReport) {
        let Some(sd) = &report.sd else { return };
        let delivered_here = !report.dry_run && self.status.borrow().role == Role::Leader;
        let published = lock(&self.published).get(service) == Some(&report.plan_hash);
        if delivered_here || published {
            lock(&self.kept).insert(
                service.to_string(),
                (report.plan_hash.clone(), Arc::clone(sd)),
            );
        }
    }

    /// Record in etcd the plan the leader just delivered (only while it
    /// still holds the election key with `epoch`).
    pub async fn publish(&self, service: &str, epoch: u64, plan_hash: &str) {
        let Some(term) = lock(&self.term).clone().filter(|t| t.epoch == epoch) else {
            return;
        };
        lock(&self.published).insert(service.to_string(), plan_hash.to_string());
        let Some(mut client) = lock(&self.client).clone() else {
            return;
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                term.key,
                CompareOp::Equal,
                epoch as i64,
            )])
            .and_then([TxnOp::put(self.plan_key(service), plan_hash, None)]);
        match timeout(self.rpc_timeout(), client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => {}
            Ok(Ok(_)) => tracing::warn!(service, epoch, "plan not published: no longer the leader"),
            Ok(Err(e)) => tracing::warn!(service, error = %e, "plan not published to etcd"),
            Err(_) => tracing::warn!(service, "plan not published: etcd did not answer in time"),
        }
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
        let Some(mut client) = lock(&self.client).clone() else {
            return Err("fenced: no etcd client".into());
        };
        let ask =
            client.lease_time_to_live(term.lease, Some(LeaseTimeToLiveOptions::new().with_keys()));
        match timeout(self.rpc_timeout(), ask).await {
            Ok(Ok(r)) if r.ttl() > 0 && r.keys().contains(&term.key) => Ok(()),
            Ok(Ok(_)) => Err(format!(
                "fenced: lease {:x} of epoch {epoch} has expired; leadership lost",
                term.lease
            )),
            Ok(Err(e)) => Err(format!("fenced: etcd could not confirm the lease: {e}")),
            Err(_) => Err(format!(
                "fenced: etcd did not confirm the lease within {:?}",
                self.rpc_timeout()
            )),
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
        let mut client = connect(&self.cfg, self.rpc_timeout())
            .await
            .map_err(|e| format!("connecting to etcd: {e}"))?;
        *lock(&self.client) = Some(client.clone());
        let ttl = self.cfg.lease_ttl;
        let sent = Instant::now();
        let lease = match timeout(
            self.rpc_timeout(),
            client.lease_grant(ttl.as_secs() as i64, None),
        )
        .await
        {
            Ok(Ok(r)) => r.id(),
            Ok(Err(e)) => return Err(format!("granting a lease: {e}")),
            Err(_) => return Err("granting a lease: etcd did not answer in time".into()),
        };
        self.update(|s| s.etcd_error = None);
        let held = self.hold(&mut client, lease, sent + ttl, shutdown).await;
        self.set_term(None);
        let revoked = timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        if shutdown.is_cancelled() {
            match revoked {
                Ok(Ok(_)) => tracing::info!(cluster = %self.cfg.name, "resigned: lease revoked"),
                _ => {
                    tracing::warn!(cluster = %self.cfg.name, "could not revoke the lease; a standby takes over when it expires")
                }
            }
        }
        held
    }

    async fn hold(
        &self,
        client: &mut Client,
        lease: i64,
        mut valid_until: Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut campaign = Some(self.campaign(client, lease, Duration::ZERO));
        let mut keep: Option<KeepAlive> = None;
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
                    match won.map(|r| r.leader().map(|k| (k.key().to_vec(), k.rev()))) {
                        Ok(Some((key, rev))) => self.set_term(Some(Term { lease, key, epoch: rev as u64 })),
                        Ok(None) => campaign = Some(self.campaign(client, lease, self.rpc_timeout())),
                        Err(e) => {
                            tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: campaign interrupted; campaigning again");
                            campaign = Some(self.campaign(client, lease, self.rpc_timeout()));
                        }
                    }
                }
                _ = tick.tick() => {
                    let sent = Instant::now();
                    match self.renew(client, lease, &mut keep).await {
                        Ok(ttl) if ttl > 0 => {
                            valid_until = sent + Duration::from_secs(ttl as u64);
                            self.update(|s| s.etcd_error = None);
                        }
                        Ok(_) => return Err(format!("lease {lease:x} expired in etcd")),
                        Err(e) => {
                            keep = None;
                            tracing::warn!(cluster = %self.cfg.name, error = %e, "etcd: lease renewal failed");
                            self.update(|s| s.etcd_error = Some(e));
                        }
                    }
                    self.refresh(client).await;
                }
            }
        }
    }

    /// Campaign in the background (after `delay`) for leadership.
    fn campaign(&self, client: &Client, lease: i64, delay: Duration) -> Campaign {
        let (mut client, name, value) =
            (client.clone(), self.election(), self.cfg.instance.clone());
        Box::pin(async move {
            sleep(delay).await;
            client.campaign(name, value, lease).await
        })
    }

    /// One keep-alive round trip; the lease's remaining TTL in seconds.
    async fn renew(
        &self,
        client: &mut Client,
        lease: i64,
        keep: &mut Option<KeepAlive>,
    ) -> Result<i64, String> {
        let round = async {
            if keep.is_none() {
                *keep = Some(client.lease_keep_alive(lease).await?);
            }
            let (keeper, stream) = keep.as_mut().expect("set above");
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.map_or(0, |r| r.ttl()))
        };
        match timeout(self.rpc_timeout(), round).await {
            Ok(Ok(ttl)) => Ok(ttl),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.rpc_timeout())),
        }
    }

    /// Who leads, and the plans the leader published.
    async fn refresh(&self, client: &mut Client) {
        let rpc = self.rpc_timeout();
        if let Ok(answer) = timeout(rpc, client.leader(self.election())).await {
            let leader = answer.ok().and_then(|r| {
                r.kv()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            });
            self.update(|s| s.leader = leader);
        }
        let prefix = self.plan_prefix();
        let get = client.get(prefix.clone(), Some(GetOptions::new().with_prefix()));
        if let Ok(Ok(r)) = timeout(rpc, get).await {
            let mut published = lock(&self.published);
            for kv in r.kvs() {
                let service = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                published.insert(service, String::from_utf8_lossy(kv.value()).into_owned());
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

async fn connect(cfg: &HaConfig, rpc: Duration) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(rpc)
        .with_keep_alive(rpc, rpc)
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(t);
    }
    if let Some((user, password)) = &cfg.user {
        options = options.with_user(user, password);
    }
    match timeout(rpc * 2, Client::connect(&cfg.endpoints, Some(options))).await {
        Ok(c) => c,
        Err(_) => Err(etcd_client::Error::InvalidArgs(format!(
            "no answer from {} within {:?}",
            cfg.endpoints.join(", "),
            rpc * 2
        ))),
    }
}
