//! A client of etcd's v3 API through its JSON gateway: the HTTP+JSON face
//! (grpc-gateway) that every etcd since 3.4 serves on its client URL.
//!
//! Why not gRPC: a gRPC client (`etcd-client`) generates its code from
//! etcd's `.proto` files at build time, so building promshard needed
//! `protoc` and the protobuf include files, and pulled in the tonic/prost
//! stack. The gateway needs nothing but HTTP: each call is one `POST` of
//! JSON through `ureq` — the same HTTP and TLS (rustls) stack promshard
//! already uses for Prometheus — run with `spawn_blocking` so that the
//! runtime never blocks.
//!
//! - **Endpoints** are tried in turn, starting with the one that answered
//!   last: with one member of three down, every call still succeeds (the
//!   dead member costs one refused connection, once). A call's timeout
//!   bounds all its attempts; connecting to one endpoint may take a share
//!   of it, so an unreachable member leaves time for the next.
//! - **TLS**: the config's CA (else the built-in web roots) and client
//!   certificate.
//! - **Auth**: with a user, the client authenticates (`/v3/auth/authenticate`)
//!   once and sends the token in `Authorization`; when etcd refuses the token
//!   (expired, or the auth store changed) it authenticates again and retries.
//! - **Errors** ([`Error`]) name the endpoint and the call, and quote what
//!   etcd said with its gRPC status code.
//!
//! The gateway's campaign (`/v3/election/campaign`) blocks in etcd until it
//! is won, and revoking the lease does not end it. So [`Client::campaign`]
//! waits at most a given time: when the wait ends the HTTP connection
//! closes, etcd withdraws the candidacy, and the caller campaigns again.

pub mod api;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use api::{
    Compare, CompareOp, KeyValue, LeaderKey, Lease, LeaseTtl, Op, OpResponse, Put, Range,
    RangeResponse, Txn, TxnResponse,
};

use crate::config::ha::HaConfig;

/// gRPC status codes etcd answers with that a caller may act on.
pub mod code {
    /// The key, lease or user does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// The member cannot serve now (no leader, request timed out): another
    /// member may.
    pub const UNAVAILABLE: i32 = 14;
    /// The call took longer than etcd allows.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// The auth token is invalid or expired.
    pub const UNAUTHENTICATED: i32 = 16;
}

/// What went wrong talking to etcd; each names the endpoint and the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// etcd answered with an error.
    #[error("etcd {endpoint}{path}: {message} (code {code})")]
    Etcd {
        endpoint: String,
        path: String,
        code: i32,
        message: String,
    },
    /// No answer in time.
    #[error("etcd {endpoint}{path}: no answer within {after:?}")]
    Timeout {
        endpoint: String,
        path: String,
        after: Duration,
    },
    /// The connection failed (refused, reset, TLS handshake, ...).
    #[error("etcd {endpoint}{path}: {reason}")]
    Transport {
        endpoint: String,
        path: String,
        reason: String,
    },
    /// An answer that is not what the gateway sends.
    #[error("etcd {endpoint}{path}: unexpected answer (HTTP {status}): {detail}")]
    Protocol {
        endpoint: String,
        path: String,
        status: u16,
        detail: String,
    },
    /// etcd did not accept the user and password.
    #[error("etcd {endpoint}: authenticating as {user:?}: {message}")]
    Auth {
        endpoint: String,
        user: String,
        message: String,
    },
    /// The `tls:` files could not be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// Every endpoint failed; what each said.
    #[error("no etcd endpoint answered: {}", join(.0))]
    Unavailable(Vec<Error>),
    /// The call's task ended without an answer (a panic).
    #[error("etcd call stopped: {0}")]
    Task(String),
}

fn join(errors: &[Error]) -> String {
    let each: Vec<String> = errors.iter().map(Error::to_string).collect();
    each.join("; ")
}

impl Error {
    /// etcd's gRPC status code, when etcd answered with an error.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Etcd { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether another member may serve the call. A timeout is not, for a
    /// call that waits in etcd (a campaign): there it is the answer.
    fn elsewhere(&self, waits: bool) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Timeout { .. } => !waits,
            Error::Etcd { code, .. } => {
                matches!(*code, code::UNAVAILABLE | code::DEADLINE_EXCEEDED)
            }
            Error::Protocol { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether etcd refused the auth token (authenticating again may help).
    fn token_refused(&self) -> bool {
        matches!(self, Error::Etcd { code, message, .. }
            if *code == code::UNAUTHENTICATED || message.contains("revision of auth store is old"))
    }
}

/// A client of one etcd cluster; cheap to clone (clones share connections
/// and the auth token).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// How long one call may take, over every endpoint it tries.
    timeout: Duration,
}

struct Shared {
    /// `http(s)://host:port`, without a trailing slash.
    endpoints: Vec<String>,
    agent: ureq::Agent,
    user: Option<(String, String)>,
    token: Mutex<Option<String>>,
    /// Index of the endpoint that answered last.
    preferred: AtomicUsize,
}

/// How long one attempt on one endpoint may take.
#[derive(Clone, Copy)]
struct Limit {
    connect: Duration,
    total: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client of `cfg`'s endpoints (TLS and user as configured) whose
    /// calls each take at most `timeout`. Connects lazily: no call is made.
    pub fn new(cfg: &HaConfig, timeout: Duration) -> Result<Client, Error> {
        let mut config = crate::http_client::config(timeout);
        if let Some(tls) = &cfg.tls {
            let identity = tls.identity.as_ref().map(|(c, k)| (&c[..], &k[..]));
            let tls = crate::http_client::tls(tls.ca.as_deref(), identity)
                .map_err(|e| Error::Tls(e.to_string()))?;
            config = config.tls_config(tls);
        }
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints: cfg
                    .endpoints
                    .iter()
                    .map(|e| e.trim_end_matches('/').to_string())
                    .collect(),
                agent: config.build().into(),
                user: cfg.user.clone(),
                token: Mutex::new(None),
                preferred: AtomicUsize::new(0),
            }),
            timeout,
        })
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            timeout,
        }
    }

    /// The keys of `range`.
    pub async fn range(&self, range: Range) -> Result<RangeResponse, Error> {
        self.call("/v3/kv/range", &range, None).await
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Vec<KeyValue>, Error> {
        Ok(self.range(Range::prefix(prefix)).await?.kvs)
    }

    /// Put `value` under `key`, attached to `lease` when not 0; the
    /// revision of the change.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<i64, Error> {
        let put = Put {
            key: key.into(),
            value: value.into(),
            lease,
        };
        let r: api::HeaderOnly = self.call("/v3/kv/put", &put, None).await?;
        Ok(r.header.revision)
    }

    /// Delete the keys of `range`; how many there were.
    pub async fn delete(&self, range: Range) -> Result<i64, Error> {
        let r: api::DeleteResponse = self.call("/v3/kv/deleterange", &range, None).await?;
        Ok(r.deleted)
    }

    /// Apply `txn` atomically.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.call("/v3/kv/txn", &txn, None).await
    }

    /// A new lease of `ttl` (whole seconds; etcd may raise it to its minimum).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let lease: Lease = self
            .call("/v3/lease/grant", &api::LeaseGrant { ttl }, None)
            .await?;
        if lease.error.is_empty() && lease.id != 0 {
            Ok(lease)
        } else {
            Err(self.refusal("/v3/lease/grant", &lease.error))
        }
    }

    /// Renew `lease` once; its TTL in seconds afterwards, 0 when it is gone.
    pub async fn lease_keep_alive(&self, lease: i64) -> Result<i64, Error> {
        let path = "/v3/lease/keepalive";
        let r: api::KeepAliveStream = self.call(path, &api::LeaseId { id: lease }, None).await?;
        match (r.result, r.error) {
            (_, Some(e)) => Err(Error::Etcd {
                endpoint: self.last_endpoint(),
                path: path.into(),
                code: e.code,
                message: e.text().to_string(),
            }),
            (Some(l), None) => Ok(l.ttl.max(0)),
            (None, None) => Err(self.refusal(path, "neither result nor error")),
        }
    }

    /// `lease`'s remaining TTL (below 1 when gone), and its keys if asked.
    pub async fn lease_time_to_live(&self, lease: i64, keys: bool) -> Result<LeaseTtl, Error> {
        let ask = api::LeaseTimeToLive { id: lease, keys };
        self.call("/v3/lease/timetolive", &ask, None).await
    }

    /// End `lease` now: its keys are deleted.
    pub async fn lease_revoke(&self, lease: i64) -> Result<(), Error> {
        let _: api::HeaderOnly = self
            .call("/v3/lease/revoke", &api::LeaseId { id: lease }, None)
            .await?;
        Ok(())
    }

    /// Campaign in election `name` with `lease`, proclaiming `value`, and
    /// wait up to `wait` to win: the leader key when won, `None` when the
    /// wait ended first (etcd then withdraws the candidacy; campaign again).
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
        wait: Duration,
    ) -> Result<Option<LeaderKey>, Error> {
        let ask = api::Campaign {
            name: name.into(),
            value: value.into(),
            lease,
        };
        match self
            .call::<_, api::CampaignResponse>("/v3/election/campaign", &ask, Some(wait))
            .await
        {
            Ok(won) => Ok(Some(won.leader)),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The leader of election `name` (its key, and the value it
    /// proclaimed), `None` when nobody leads.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let ask = api::ElectionName { name: name.into() };
        match self
            .call::<_, api::LeaderResponse>("/v3/election/leader", &ask, None)
            .await
        {
            Ok(r) => Ok(r.kv),
            Err(Error::Etcd { message, .. }) if message == "election: no leader" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POST `request` to `path` (on another thread: ureq blocks), within
    /// the client's timeout, or `wait` for a call that waits in etcd.
    async fn call<Q, A>(
        &self,
        path: &'static str,
        request: &Q,
        wait: Option<Duration>,
    ) -> Result<A, Error>
    where
        Q: Serialize,
        A: DeserializeOwned + Send + 'static,
    {
        let body = serde_json::to_vec(request).map_err(|e| Error::Task(e.to_string()))?;
        let client = self.clone();
        tokio::task::spawn_blocking(move || client.call_blocking(path, &body, wait))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Each endpoint in turn, from the one that answered last, until one
    /// answers or the time is up.
    fn call_blocking<A: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        wait: Option<Duration>,
    ) -> Result<A, Error> {
        let s = &self.shared;
        let n = s.endpoints.len().max(1);
        let first = s.preferred.load(Ordering::Relaxed);
        let deadline = Instant::now() + wait.unwrap_or(self.timeout);
        let mut failed = Vec::new();
        for i in 0..n {
            let at = (first + i) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let limit = Limit {
                connect: (self.timeout / n as u32).min(left),
                total: left,
            };
            match self.attempt(at, path, body, limit) {
                Ok(text) => {
                    s.preferred.store(at, Ordering::Relaxed);
                    return decode(&s.endpoints[at], path, &text);
                }
                Err(e) if e.elsewhere(wait.is_some()) => failed.push(e),
                Err(e) => return Err(e),
            }
        }
        match failed.len() {
            1 => Err(failed.remove(0)),
            _ => Err(Error::Unavailable(failed)),
        }
    }

    /// One endpoint, authenticating first (and again when the token is
    /// refused) when the client has a user.
    fn attempt(&self, at: usize, path: &str, body: &[u8], limit: Limit) -> Result<String, Error> {
        let token = self.token(at, limit)?;
        match self.send(at, path, body, token.as_deref(), limit) {
            Err(e) if token.is_some() && e.token_refused() => {
                tracing::debug!(endpoint = %self.shared.endpoints[at], error = %e, "etcd refused the auth token; authenticating again");
                *lock(&self.shared.token) = None;
                let token = self.token(at, limit)?;
                self.send(at, path, body, token.as_deref(), limit)
            }
            other => other,
        }
    }

    /// The auth token (made now if there is none yet), `None` without a user.
    fn token(&self, at: usize, limit: Limit) -> Result<Option<String>, Error> {
        let Some((user, password)) = &self.shared.user else {
            return Ok(None);
        };
        if let Some(t) = lock(&self.shared.token).clone() {
            return Ok(Some(t));
        }
        let ask = serde_json::to_vec(&api::Authenticate {
            name: user,
            password,
        })
        .map_err(|e| Error::Task(e.to_string()))?;
        let path = "/v3/auth/authenticate";
        let endpoint = &self.shared.endpoints[at];
        let token: api::Token = match self.send(at, path, &ask, None, limit) {
            Ok(text) => decode(endpoint, path, &text)?,
            Err(Error::Etcd { code, message, .. })
                if !matches!(code, code::UNAVAILABLE | code::DEADLINE_EXCEEDED) =>
            {
                return Err(Error::Auth {
                    endpoint: endpoint.clone(),
                    user: user.clone(),
                    message: format!("{message} (code {code})"),
                });
            }
            Err(e) => return Err(e),
        };
        *lock(&self.shared.token) = Some(token.token.clone());
        Ok(Some(token.token))
    }

    /// One POST; the body of a 200 answer, else etcd's error.
    fn send(
        &self,
        at: usize,
        path: &str,
        body: &[u8],
        token: Option<&str>,
        limit: Limit,
    ) -> Result<String, Error> {
        let endpoint = &self.shared.endpoints[at];
        let mut request = self
            .shared
            .agent
            .post(format!("{endpoint}{path}"))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            request = request.header("Authorization", t);
        }
        let answer = request
            .config()
            .timeout_global(Some(limit.total))
            .timeout_connect(Some(limit.connect))
            .build()
            .send(body);
        let mut answer = answer.map_err(|e| transport(endpoint, path, e, limit))?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .read_to_string()
            .map_err(|e| transport(endpoint, path, e, limit))?;
        if status == 200 {
            return Ok(text);
        }
        match serde_json::from_str::<api::ErrorBody>(&text) {
            Ok(e) if !e.text().is_empty() => Err(Error::Etcd {
                endpoint: endpoint.clone(),
                path: path.into(),
                code: e.code,
                message: e.text().to_string(),
            }),
            _ => Err(Error::Protocol {
                endpoint: endpoint.clone(),
                path: path.into(),
                status,
                detail: excerpt(&text),
            }),
        }
    }

    fn last_endpoint(&self) -> String {
        let s = &self.shared;
        s.endpoints
            .get(s.preferred.load(Ordering::Relaxed))
            .cloned()
            .unwrap_or_default()
    }

    /// A 200 answer that says it failed.
    fn refusal(&self, path: &str, why: &str) -> Error {
        Error::Protocol {
            endpoint: self.last_endpoint(),
            path: path.into(),
            status: 200,
            detail: why.to_string(),
        }
    }
}

/// The answer of a 200, as `A`.
fn decode<A: DeserializeOwned>(endpoint: &str, path: &str, text: &str) -> Result<A, Error> {
    // A stream (keep-alive) answers one JSON object per message: the first
    // is the answer to the one request sent.
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<A>();
    match stream.next() {
        Some(Ok(a)) => Ok(a),
        Some(Err(e)) => Err(Error::Protocol {
            endpoint: endpoint.into(),
            path: path.into(),
            status: 200,
            detail: format!("{e} in {}", excerpt(text)),
        }),
        None => Err(Error::Protocol {
            endpoint: endpoint.into(),
            path: path.into(),
            status: 200,
            detail: "empty body".into(),
        }),
    }
}

/// The start of a body, for a message.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn transport(endpoint: &str, path: &str, e: ureq::Error, limit: Limit) -> Error {
    let (endpoint, path) = (endpoint.to_string(), path.to_string());
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => Error::Transport {
            endpoint,
            path,
            reason: format!("could not connect within {:?}", limit.connect),
        },
        ureq::Error::Timeout(_) => Error::Timeout {
            endpoint,
            path,
            after: limit.total,
        },
        e => Error::Transport {
            endpoint,
            path,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_error(code: i32, message: &str) -> Error {
        Error::Etcd {
            endpoint: "http://127.0.0.1:2379".into(),
            path: "/v3/kv/range".into(),
            code,
            message: message.into(),
        }
    }

    #[test]
    fn errors_name_the_endpoint_the_call_and_what_etcd_said() {
        let e = etcd_error(5, "etcdserver: requested lease not found");
        assert_eq!(
            e.to_string(),
            "etcd http://127.0.0.1:2379/v3/kv/range: etcdserver: requested lease not found (code 5)"
        );
        assert_eq!(e.code(), Some(code::NOT_FOUND));
        let all = Error::Unavailable(vec![
            Error::Transport {
                endpoint: "http://127.0.0.1:1".into(),
                path: "/v3/kv/put".into(),
                reason: "io: Connection refused (os error 111)".into(),
            },
            Error::Timeout {
                endpoint: "http://127.0.0.2:1".into(),
                path: "/v3/kv/put".into(),
                after: Duration::from_millis(500),
            },
        ]);
        assert_eq!(
            all.to_string(),
            "no etcd endpoint answered: etcd http://127.0.0.1:1/v3/kv/put: io: Connection refused (os error 111); \
             etcd http://127.0.0.2:1/v3/kv/put: no answer within 500ms"
        );
    }

    #[test]
    fn another_member_is_tried_only_when_it_may_help() {
        assert!(etcd_error(code::UNAVAILABLE, "etcdserver: no leader").elsewhere(false));
        assert!(etcd_error(code::DEADLINE_EXCEEDED, "x").elsewhere(false));
        assert!(!etcd_error(code::NOT_FOUND, "x").elsewhere(false));
        let timeout = Error::Timeout {
            endpoint: "e".into(),
            path: "p".into(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.elsewhere(false), "a member that hangs");
        assert!(!timeout.elsewhere(true), "a campaign still waiting");
        let bad_json = Error::Protocol {
            endpoint: "e".into(),
            path: "p".into(),
            status: 200,
            detail: "x".into(),
        };
        assert!(!bad_json.elsewhere(false));
    }

    #[test]
    fn a_refused_token_is_told_from_other_errors() {
        assert!(etcd_error(16, "etcdserver: invalid auth token").token_refused());
        assert!(etcd_error(3, "etcdserver: revision of auth store is old").token_refused());
        assert!(
            !etcd_error(
                3,
                "etcdserver: authentication failed, invalid user ID or password"
            )
            .token_refused()
        );
        assert!(!etcd_error(5, "etcdserver: requested lease not found").token_refused());
    }

    #[test]
    fn answers_decode_the_first_message_and_bad_ones_say_where() {
        let lease: api::KeepAliveStream = decode(
            "e",
            "/v3/lease/keepalive",
            "{\"result\":{\"ID\":\"1\",\"TTL\":\"5\"}}\n",
        )
        .unwrap();
        assert_eq!(lease.result.unwrap().ttl, 5);
        let e = decode::<api::RangeResponse>("http://e:1", "/v3/kv/range", "<html>").unwrap_err();
        assert!(
            matches!(&e, Error::Protocol { status: 200, detail, .. } if detail.contains("<html>")),
            "{e}"
        );
        let e = decode::<api::RangeResponse>("http://e:1", "/v3/kv/range", "").unwrap_err();
        assert!(e.to_string().ends_with("empty body"), "{e}");
        assert_eq!(excerpt(&"x".repeat(300)).chars().count(), 201);
    }
}
