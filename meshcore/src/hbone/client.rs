//! HBONE client with a connection pool.
//!
//! Connections are keyed by (source identity, expected destination identities, source IP,
//! destination address), so a connection is never shared across identities. Each carries up to
//! `max_streams_per_connection` tunnels; when all are full the pool opens another. Connections
//! with no tunnel for `idle_timeout` are closed.

use super::stream::StreamSlot;
use super::{keepalive, settings, Baggage, H2Stream, HboneError, TraceParent};
use crate::identity::SpiffeId;
use crate::tls::{client_config, peer_identity, Credentials};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Bytes h2 may buffer per stream before asking the writer to wait (h2's default is 400 KiB).
/// 256 KiB took ~1 MiB off the bench's peak RSS against 1 MiB with bulk rates within the
/// runs' noise (docs/performance.md, "HTTP/2 send buffer").
pub(crate) const SEND_BUFFER: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub max_streams_per_connection: usize,
    /// Pooled connections without a tunnel for this long are closed.
    pub idle_timeout: Duration,
    /// Time allowed for TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// Time allowed for the server to answer a CONNECT.
    pub response_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// SO_MARK for outgoing sockets, so capture rules can tell the proxy's own traffic apart
    /// (Istio uses 0x539). Needs CAP_NET_ADMIN; `None` leaves sockets unmarked.
    pub socket_mark: Option<u32>,
    /// Flow-control windows advertised to the server.
    pub windows: super::Windows,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_streams_per_connection: settings::MAX_STREAMS_PER_CONNECTION,
            idle_timeout: Duration::from_secs(5 * 60),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            keepalive_interval: super::KEEPALIVE_INTERVAL,
            keepalive_timeout: super::KEEPALIVE_TIMEOUT,
            socket_mark: None,
            windows: super::Windows::default(),
        }
    }
}

/// Opens the TCP connection under a tunnel somewhere other than the proxy's own network
/// namespace: a node-mode ztunnel dials from inside the source pod's, so the destination sees
/// the pod's own address.
pub trait Dial: Send + Sync {
    fn dial(
        &self,
        addr: SocketAddr,
        bind_ip: Option<IpAddr>,
        mark: Option<u32>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send + '_>>;

    /// Distinguishes dialers in the pool key: connections are never shared between them.
    fn id(&self) -> u64;
}

/// One tunnel to open.
#[derive(Clone)]
pub struct ConnectRequest {
    /// The source workload's credentials: presented to the server, and part of the pool key.
    pub credentials: Arc<Credentials>,
    /// Identities the server may prove (the workload's service account, plus the service's SANs).
    pub expected: Vec<SpiffeId>,
    /// Where to dial: `<pod ip>:15008` or a waypoint.
    pub hbone_addr: SocketAddr,
    /// The CONNECT authority: the real destination `ip:port`.
    pub target: SocketAddr,
    /// The original client, sent as `forwarded: for="..."`.
    pub source: Option<SocketAddr>,
    /// Local address to dial from (the source workload's IP), when it matters.
    pub bind_ip: Option<IpAddr>,
    /// Where the TCP connection is made from; the proxy's own namespace when `None`.
    pub dialer: Option<Arc<dyn Dial>>,
    pub baggage: Option<Baggage>,
    /// The trace context to send (the caller's span: the receiver's span is its child); a new
    /// unsampled one when absent.
    pub trace: Option<TraceParent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    expected: Vec<SpiffeId>,
    bind_ip: Option<IpAddr>,
    dialer: Option<u64>,
    hbone_addr: SocketAddr,
}

/// Counts for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub streams_opened: AtomicU64,
}

struct PooledConnection {
    /// The identity the server proved.
    peer: Arc<SpiffeId>,
    sender: h2::client::SendRequest<Bytes>,
    active: AtomicUsize,
    /// Milliseconds since the pool's epoch when the last tunnel ended.
    idle_since_ms: AtomicU64,
    closed: AtomicBool,
}

struct Slot {
    conn: Arc<PooledConnection>,
    pool: Weak<PoolInner>,
}

impl StreamSlot for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        // Stamp before releasing, so the reaper never sees an idle connection with an old stamp.
        if let Some(pool) = self.pool.upgrade() {
            self.conn
                .idle_since_ms
                .store(pool.now_ms(), Ordering::Relaxed);
        }
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct DialState {
    /// When the last dial for this key failed, and why.
    last_failure: Option<(Instant, String)>,
}

/// Errors after which a pooled connection cannot carry new streams.
fn connection_unusable(e: &h2::Error) -> bool {
    e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

struct PoolInner {
    settings: ClientSettings,
    epoch: Instant,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<PooledConnection>>>>,
    /// Serialises connection setup per key so a burst of tunnels shares one new connection.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<DialState>>>>,
    stats: PoolStats,
    reaper_started: AtomicBool,
}

impl PoolInner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a stream slot on an open connection of `key` with room, if there is one.
    fn checkout(&self, key: &PoolKey) -> Option<Arc<PooledConnection>> {
        let mut conns = self.conns.lock().expect("pool lock");
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Acquire));
        list.iter()
            .find(|c| {
                // Respect a server that allows fewer concurrent streams than we would use.
                let max = self
                    .settings
                    .max_streams_per_connection
                    .min(c.sender.current_max_send_streams());
                c.active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok()
            })
            .cloned()
    }

    fn reap_idle(&self) {
        let now = self.now_ms();
        let idle_ms = self.settings.idle_timeout.as_millis() as u64;
        let mut conns = self.conns.lock().expect("pool lock");
        conns.retain(|_, list| {
            list.retain(|c| {
                let idle = c.active.load(Ordering::Acquire) == 0
                    && now.saturating_sub(c.idle_since_ms.load(Ordering::Relaxed)) >= idle_ms;
                // Dropping the last SendRequest lets h2 close the connection gracefully.
                !(idle || c.closed.load(Ordering::Acquire))
            });
            !list.is_empty()
        });
        // Forget dial gates of keys that have no connection and nobody dialling.
        let mut dialing = self.dialing.lock().expect("pool lock");
        dialing.retain(|key, gate| conns.contains_key(key) || Arc::strong_count(gate) > 1);
    }
}

/// Opens HBONE tunnels over pooled HTTP/2 connections. Cheap to clone.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<PoolInner>,
}

impl HboneClient {
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                settings,
                epoch: Instant::now(),
                conns: Mutex::default(),
                dialing: Mutex::default(),
                stats: PoolStats::default(),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }

    /// Connections currently in the pool (open, whether busy or idle).
    pub fn pooled_connections(&self) -> usize {
        let conns = self.inner.conns.lock().expect("pool lock");
        conns
            .values()
            .flatten()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .count()
    }

    /// Opens a tunnel to `req.target` through `req.hbone_addr`.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        if req.expected.is_empty() {
            return Err(HboneError::Invalid(
                "no expected server identity given".into(),
            ));
        }
        let key = PoolKey {
            source: req.credentials.identity(),
            expected: req.expected.clone(),
            bind_ip: req.bind_ip,
            dialer: req.dialer.as_ref().map(|d| d.id()),
            hbone_addr: req.hbone_addr,
        };
        loop {
            // Only a connection that sat in the pool may have gone stale; a fresh one that fails
            // is a real failure, and is not retried.
            let (conn, pooled) = match self.inner.checkout(&key) {
                Some(conn) => (conn, true),
                None => (self.dial_or_wait(&key, req).await?, false),
            };
            let slot = Slot {
                conn: conn.clone(),
                pool: Arc::downgrade(&self.inner),
            };
            match self.open_stream(&conn, slot, req).await {
                // The server is draining (GOAWAY) or the connection broke while other tunnels
                // keep it alive: stop handing it out and try again (another pooled connection
                // or a fresh one).
                Err(HboneError::Http2 { source, .. }) if pooled && connection_unusable(&source) => {
                    conn.closed.store(true, Ordering::Release);
                }
                result => return result,
            }
        }
    }

    async fn dial_or_wait(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Result<Arc<PooledConnection>, HboneError> {
        let gate = {
            let mut dialing = self.inner.dialing.lock().expect("pool lock");
            dialing.entry(key.clone()).or_default().clone()
        };
        let waiting_since = Instant::now();
        let mut turn = gate.lock().await;
        // Someone else may have dialled while we waited.
        if let Some(conn) = self.inner.checkout(key) {
            return Ok(conn);
        }
        // Or failed while we waited: share that answer instead of queueing another attempt.
        if let Some((at, reason)) = &turn.last_failure {
            if *at >= waiting_since {
                return Err(HboneError::DialFailed(reason.clone()));
            }
        }
        let conn = match self.dial(req).await {
            Ok(conn) => conn,
            Err(e) => {
                turn.last_failure = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        conn.active.store(1, Ordering::Release);
        self.inner
            .conns
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        self.start_reaper();
        Ok(conn)
    }

    async fn dial(&self, req: &ConnectRequest) -> Result<Arc<PooledConnection>, HboneError> {
        let addr = req.hbone_addr;
        let settings = &self.inner.settings;
        let setup = async {
            let mark = self.inner.settings.socket_mark;
            let tcp = match &req.dialer {
                Some(d) => d.dial(addr, req.bind_ip, mark).await,
                None => connect_tcp(addr, req.bind_ip, mark).await,
            }
            .map_err(|source| HboneError::Connect { addr, source })?;
            let tls_config = client_config(req.credentials.clone(), req.expected.clone());
            let tls = TlsConnector::from(tls_config)
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|source| HboneError::Handshake { addr, source })?;
            let session = tls.get_ref().1;
            if session.alpn_protocol() != Some(crate::tls::ALPN_H2) {
                return Err(HboneError::NoAlpn(addr));
            }
            let peer =
                peer_identity(session).expect("the server verifier admits only SPIFFE identities");
            let (sender, connection) = h2::client::Builder::new()
                .initial_window_size(self.inner.settings.windows.stream)
                .initial_connection_window_size(self.inner.settings.windows.connection)
                .max_frame_size(settings::MAX_FRAME_SIZE)
                .max_header_list_size(settings::CLIENT_MAX_HEADER_LIST)
                .enable_push(false)
                .max_send_buffer_size(SEND_BUFFER)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| HboneError::Http2 { addr, source })?;
            Ok((peer, sender, connection))
        };
        let (peer, sender, mut connection) = tokio::time::timeout(settings.connect_timeout, setup)
            .await
            .map_err(|_| HboneError::Timeout {
                what: "HBONE connection setup",
                after: settings.connect_timeout,
            })??;

        let conn = Arc::new(PooledConnection {
            peer: Arc::new(peer),
            sender,
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.inner.now_ms()),
            closed: AtomicBool::new(false),
        });
        self.inner
            .stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);

        let ping_pong = connection.ping_pong().expect("first call");
        let alive = keepalive(
            ping_pong,
            settings.keepalive_interval,
            settings.keepalive_timeout,
        );
        let watched = Arc::downgrade(&conn);
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%addr, "hbone client connection ended: {e}");
                    }
                }
                _ = alive => {}
            }
            if let Some(conn) = watched.upgrade() {
                conn.closed.store(true, Ordering::Release);
            }
            if let Some(pool) = pool.upgrade() {
                pool.stats
                    .connections_closed
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(conn)
    }

    async fn open_stream(
        &self,
        conn: &PooledConnection,
        slot: Slot,
        req: &ConnectRequest,
    ) -> Result<H2Stream, HboneError> {
        let addr = req.hbone_addr;
        let h2_err = |source| HboneError::Http2 { addr, source };
        let request = build_connect(req)?;
        let mut sender = conn.sender.clone().ready().await.map_err(h2_err)?;
        let (response, send) = sender.send_request(request, false).map_err(h2_err)?;
        let timeout = self.inner.settings.response_timeout;
        let response = tokio::time::timeout(timeout, response)
            .await
            .map_err(|_| HboneError::Timeout {
                what: "CONNECT response",
                after: timeout,
            })?
            .map_err(h2_err)?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                target: req.target,
                status: response.status(),
            });
        }
        self.inner
            .stats
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(H2Stream::new(
            conn.peer.clone(),
            send,
            response.into_body(),
            Some(Box::new(slot)),
        ))
    }

    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        let period = (self.inner.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap_idle();
            }
        });
    }
}

fn build_connect(req: &ConnectRequest) -> Result<Request<()>, HboneError> {
    let trace = req.trace.unwrap_or_else(TraceParent::random);
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(req.target.to_string())
        .header("traceparent", trace.encode());
    if let Some(source) = req.source {
        builder = builder.header("forwarded", super::forwarded_for(source));
    }
    if let Some(baggage) = &req.baggage {
        builder = builder.header("baggage", baggage.encode());
    }
    builder
        .body(())
        .map_err(|e| HboneError::Invalid(format!("CONNECT request: {e}")))
}

/// Opens a TCP connection from `bind_ip` (any local address if `None`), carrying `mark`.
pub async fn connect_tcp(
    addr: SocketAddr,
    bind_ip: Option<IpAddr>,
    mark: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    if let Some(ip) = bind_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    crate::control::Keepalive::DATA_PATH.apply_tcp(&socket)?;
    socket.connect(addr).await
}
