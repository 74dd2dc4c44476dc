//! TLS and basic auth in front of the API, from `web_config_file`
//! ([`crate::config::web`]).
//!
//! **Reload.** The web config in effect is looked at on every new
//! connection and every request, by the metadata of the files it was read
//! from (a few `stat`s, nothing read): when one has changed it is loaded
//! again at once, so the next handshake serves a replaced certificate and
//! the next request checks a replaced password. A version that does not
//! load keeps the last good one; why is logged once per version of the
//! files. A config reload brings its own freshly checked copy, which is
//! taken as it is (it may name another file).
//!
//! **TLS.** Each handshake runs in its own task, for at most
//! [`HANDSHAKE_TIMEOUT`], so a client that stalls in it holds up no one;
//! connections that complete one go to the HTTP server, the others are
//! logged (`TLS handshake failed`, with the peer and rustls's reason).
//!
//! **Basic auth** follows Prometheus: with `basic_auth_users`, every path
//! needs a user's password; an unknown user costs the same bcrypt check as a
//! known one (no user enumeration by timing); results are cached, since a
//! bcrypt check at cost 10 takes tens of milliseconds and Prometheus servers
//! refresh their http_sd every few seconds. Checks run one at a time, off
//! the runtime.
//!
//! **The bearer token** keeps its role: mutating calls (`POST`) need
//! `Authorization: Bearer <api_token>` when a token is configured, and that
//! header takes the place of basic auth for them (a request carries one
//! Authorization header). So the passwords handed to Prometheus servers to
//! read `/sd` can never drain a node or dispatch a pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Config;
use crate::config::web::{Stamps, WebConfig};

/// The longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Verified `(user, hash, password)` results kept at most; the cache is
/// emptied when full (a flood of wrong passwords only costs bcrypt time).
const CACHE_ENTRIES: usize = 1024;

/// A bcrypt hash of a password nobody has, checked for unknown users.
const DECOY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// The web config in effect and what checking it needs.
#[derive(Default)]
pub struct Web {
    state: Mutex<WebState>,
    /// Basic auth results: `(user, hash, password)` → accepted.
    cache: Mutex<HashMap<(String, String, String), bool>>,
    /// One bcrypt check at a time: each takes a core for tens of ms.
    bcrypt: Arc<Mutex<()>>,
}

#[derive(Default)]
struct WebState {
    /// The config's copy last taken (a new one means a config reload).
    adopted: Option<Arc<WebConfig>>,
    /// The version in effect: the adopted one or a reload of its file.
    current: Option<Arc<WebConfig>>,
    /// The files of the last reload that failed: tried again on a change.
    failed: Option<Stamps>,
}

impl Web {
    /// The web config in effect under `config`, reloaded first if one of
    /// its files changed; `None` without `web_config_file`.
    pub fn current(&self, config: &Config) -> Option<Arc<WebConfig>> {
        let from_config = config.web.as_ref()?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state
            .adopted
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, from_config))
        {
            state.adopted = Some(Arc::clone(from_config));
            state.current = Some(Arc::clone(from_config));
            state.failed = None;
        }
        let current = Arc::clone(state.current.as_ref()?);
        if !current.changed_on_disk() || state.failed.as_ref().is_some_and(|f| !f.changed()) {
            return Some(current);
        }
        match WebConfig::load(&current.path) {
            Ok(new) => {
                tracing::info!(file = %new.path.display(), tls = new.tls.is_some(), users = new.users.len(), "web config reloaded");
                let new = Arc::new(new);
                state.current = Some(Arc::clone(&new));
                state.failed = None;
                Some(new)
            }
            Err(e) => {
                tracing::warn!(file = %current.path.display(), error = %e, "web config not reloaded; keeping the last good one");
                state.failed = Some(e.stamps);
                Some(current)
            }
        }
    }

    /// Whether `password` is `user`'s (checked against `users`' hash).
    async fn check_password(&self, web: &WebConfig, user: &str, password: &str) -> bool {
        let known = web.users.get(user);
        let hash = known.map_or(DECOY_HASH, String::as_str).to_string();
        let key = (user.to_string(), hash.clone(), password.to_string());
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let ok = match cached {
            Some(ok) => ok,
            None => {
                let (password, lock) = (password.to_string(), Arc::clone(&self.bcrypt));
                let checked = tokio::task::spawn_blocking(move || {
                    let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, checked);
                checked
            }
        };
        ok && known.is_some()
    }
}

/// The peer of a connection, for the handlers and the log.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Middleware: basic auth when the web config has users, and its headers
/// on every answer.
pub async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let config = shared.config();
    let Some(web) = shared.web.current(&config) else {
        return next.run(request).await;
    };
    let asked = Asked::of(&request, config.api_token.is_some());
    let mut response = match admit(&shared.web, &web, asked).await {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    };
    for (name, value) in &web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// What [`admit`] looks at in a request (a request's body is not `Sync`,
/// so the request itself cannot wait for bcrypt).
struct Asked {
    authorization: Option<String>,
    /// A `POST` with a bearer token while `api_token` is set.
    bearer_for_token: bool,
    path: String,
    peer: Option<SocketAddr>,
}

impl Asked {
    fn of(request: &Request, token_configured: bool) -> Asked {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bearer = authorization
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        Asked {
            authorization,
            bearer_for_token: bearer && token_configured && request.method() == Method::POST,
            path: request.uri().path().to_string(),
            peer: request
                .extensions()
                .get::<axum::extract::ConnectInfo<Peer>>()
                .map(|c| c.0.0),
        }
    }
}

/// Whether the request may go on to its handler.
async fn admit(web: &Web, config: &WebConfig, asked: Asked) -> Result<(), Box<Response>> {
    // The handler checks the token; basic auth would need the header.
    if config.users.is_empty() || asked.bearer_for_token {
        return Ok(());
    }
    let credentials = asked
        .authorization
        .as_deref()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, c)| basic_credentials(c));
    let user = match credentials {
        Some((user, password)) if web.check_password(config, &user, &password).await => {
            return Ok(());
        }
        Some((user, _)) => Some(user),
        None => None,
    };
    tracing::info!(peer = ?asked.peer, user = ?user, path = %asked.path, "basic auth refused");
    Err(Box::new(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"promshard\"")],
            "401 Unauthorized: a user and password of basic_auth_users are required\n",
        )
            .into_response(),
    ))
}

/// `user:password` from the base64 of a Basic Authorization header.
fn basic_credentials(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A connection: plain TCP or TLS, as the web config says when it is
/// accepted.
pub type Connection = Either<TcpStream, TlsStream<TcpStream>>;

/// The connections for the HTTP server: accepted, and through their TLS
/// handshake when TLS is on.
pub struct Incoming {
    ready: mpsc::Receiver<(Connection, SocketAddr)>,
    local: SocketAddr,
}

impl Incoming {
    /// Accept on `listener` until `shutdown`.
    pub fn start(
        listener: TcpListener,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Incoming> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tasks = shared.shutdown.clone();
        tasks.spawn(accept_loop(listener, shared, tx, shutdown));
        Ok(Incoming { ready, local })
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // Shutting down: the server stops asking.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    ready: mpsc::Sender<(Connection, SocketAddr)>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tls = shared
            .web
            .current(&shared.config())
            .and_then(|w| w.tls.as_ref().map(|t| Arc::clone(&t.server)));
        match tls {
            None => {
                if ready.send((Either::Left(tcp), peer)).await.is_err() {
                    break;
                }
            }
            Some(server) => {
                let (ready, shutdown) = (ready.clone(), shutdown.clone());
                shared
                    .shutdown
                    .spawn(handshake(tcp, peer, server, ready, shutdown));
            }
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    server: Arc<rustls::ServerConfig>,
    ready: mpsc::Sender<(Connection, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(tcp);
    let done = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept) => r,
    };
    match done {
        Ok(Ok(tls)) => {
            let _ = ready.send((Either::Right(tls), peer)).await;
        }
        Ok(Err(e)) => tracing::warn!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            tracing::warn!(peer = %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::basic_credentials;

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        // "prom:pa:ss"
        assert_eq!(
            basic_credentials("cHJvbTpwYTpzcw=="),
            Some(("prom".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("not base64!"), None);
        // "nocolon"
        assert_eq!(basic_credentials("bm9jb2xvbg=="), None);
    }
}
