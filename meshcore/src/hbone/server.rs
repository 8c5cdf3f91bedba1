//! HBONE server: accept TCP, complete mutual TLS, speak HTTP/2, and hand every CONNECT stream to
//! the application with the verified peer identity. A connection that fails the handshake (plain
//! text, no or untrusted client certificate) is closed and counted; others are not disturbed.

use super::{keepalive, settings, H2Stream, HboneError};
use crate::identity::SpiffeId;
use crate::tls::peer_identity;
use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Time allowed for the TLS handshake; a silent client is dropped after it.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Streams one client connection may hold open at once (advertised in SETTINGS; h2 refuses
    /// more). With the per-stream send buffer this bounds what a peer that stops reading can
    /// make the server hold: 100 × 1 MiB.
    pub max_concurrent_streams: u32,
    /// Connections served at once; more are closed on accept and counted, established ones
    /// are not disturbed.
    pub max_connections: usize,
    /// A connection with no open stream for this long is sent GOAWAY (its peer reconnects when
    /// it needs to): a peer cannot park connections forever.
    pub idle_timeout: Duration,
    /// Flow-control windows advertised to clients.
    pub windows: super::Windows,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: super::KEEPALIVE_INTERVAL,
            keepalive_timeout: super::KEEPALIVE_TIMEOUT,
            // Istio's waypoint's and ztunnel's order of magnitude.
            max_concurrent_streams: 100,
            max_connections: 16_384,
            idle_timeout: Duration::from_secs(600),
            windows: super::Windows::default(),
        }
    }
}

/// What the server has seen, for metrics and tests.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub connections_accepted: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub streams: AtomicU64,
    pub bad_requests: AtomicU64,
    /// Connections closed on accept because `max_connections` were being served.
    pub connections_refused: AtomicU64,
    /// Connections sent GOAWAY after `idle_timeout` without a stream.
    pub idle_closed: AtomicU64,
}

/// HBONE handshakes refused in this process, over all its servers: what ztunnel exports as
/// `ztunnel_hbone_handshake_failures_total` (each server's own count is in [`ServerCounters`]).
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Handshakes refused by every HBONE server of this process so far.
pub fn handshake_failures_total() -> u64 {
    HANDSHAKE_FAILURES.load(Ordering::Relaxed)
}

/// Counts a stream as open until its handler ends.
struct OpenStream(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One CONNECT stream awaiting the application's decision. Dropping it unanswered answers 503.
pub struct InboundConnect {
    /// The identity the client proved in the TLS handshake (shared by the connection's streams).
    pub peer: Arc<SpiffeId>,
    /// The TCP address the connection came from (a node's or waypoint's address, not the client's).
    pub peer_addr: SocketAddr,
    /// The CONNECT authority: the real destination `ip:port`.
    pub destination: SocketAddr,
    pub headers: HeaderMap,
    respond: Option<SendResponse<Bytes>>,
    recv: Option<h2::RecvStream>,
}

impl InboundConnect {
    /// The original client address from the `forwarded` header, if present.
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        self.headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_forwarded_for)
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let mut respond = self.respond.take().expect("answered once");
        let recv = self.recv.take().expect("answered once");
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("static response");
        let send = respond
            .send_response(response, false)
            .map_err(|source| HboneError::Http2 {
                addr: self.peer_addr,
                source,
            })?;
        Ok(H2Stream::new(self.peer.clone(), send, recv, None))
    }

    /// Refuses the tunnel: 401 for a policy denial, 503 when the destination is unreachable.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(respond) = self.respond.take() {
            answer(respond, status);
        }
    }
}

impl Drop for InboundConnect {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            answer(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

/// Completes once the server is draining. (The watch guard must not live across an await.)
async fn drained(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|draining| *draining).await;
}

fn answer(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder()
        .status(status)
        .body(())
        .expect("static response");
    let _ = respond.send_response(response, true);
}

/// Accepts HBONE connections and dispatches their CONNECT streams.
pub struct HboneServer {
    acceptor: TlsAcceptor,
    settings: ServerSettings,
    counters: Arc<ServerCounters>,
    /// Set once by [`Self::drain`]; every connection task watches it.
    draining: tokio::sync::watch::Sender<bool>,
    /// Connection tasks still running (their TLS and HTTP/2 state included), for
    /// [`Self::connections_closed`].
    live: tokio::sync::watch::Sender<usize>,
}

/// Counts one connection task in [`HboneServer::live`] while it lives.
struct Live<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> Live<'a> {
    fn new(live: &'a tokio::sync::watch::Sender<usize>) -> Self {
        live.send_modify(|n| *n += 1);
        Self(live)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl HboneServer {
    pub fn new(tls: Arc<rustls::ServerConfig>, settings: ServerSettings) -> Arc<Self> {
        Arc::new(Self {
            acceptor: TlsAcceptor::from(tls),
            settings,
            counters: Arc::default(),
            draining: tokio::sync::watch::Sender::new(false),
            live: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Completes once no connection task is left. A tunnel's handler returns as soon as it has
    /// handed its last bytes to HTTP/2; they reach the peer only when the connection task has
    /// written them and closed after GOAWAY. A process that stops must wait for this too, or it
    /// cuts the end of every tunnel that finished during its drain.
    pub async fn connections_closed(&self) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Starts a graceful drain: the accept loop stops, and every connection sends GOAWAY, so
    /// clients open new tunnels elsewhere while tunnels already open run to their end.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn counters(&self) -> &Arc<ServerCounters> {
        &self.counters
    }

    /// Accepts connections until `shutdown` completes or [`Self::drain`] is called; each
    /// connection runs in its own task and outlives the accept loop.
    pub async fn serve<H, F>(
        self: Arc<Self>,
        listener: TcpListener,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) where
        H: Fn(InboundConnect) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::pin!(shutdown);
        let mut draining = self.draining.subscribe();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.settings.max_connections));
        let mut refused_logged: Option<tokio::time::Instant> = None;
        let mut errors = crate::accept::AcceptErrors::new("hbone");
        loop {
            tokio::select! {
                _ = drained(&mut draining) => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        errors.accepted();
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            // At the cap: close it now (the peer sees EOF in its handshake).
                            drop(tcp);
                            self.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                refused_logged = Some(tokio::time::Instant::now());
                                tracing::warn!(%peer, limit = self.settings.max_connections, "hbone: connection limit reached, refusing new connections (counted in connections_refused)");
                            }
                            continue;
                        };
                        let server = self.clone();
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let _slot = slot;
                            if let Err(e) = server.serve_connection(tcp, handler).await {
                                tracing::debug!("hbone connection ended: {e}");
                            }
                        });
                    }
                    // Out of file descriptors and the like: shed, back off, log once a while.
                    Err(e) => errors.failed(&listener, e).await,
                },
                _ = &mut shutdown => return,
            }
        }
    }

    /// Runs one connection to its end.
    pub async fn serve_connection<H, F>(&self, tcp: TcpStream, handler: H) -> Result<(), HboneError>
    where
        H: Fn(InboundConnect) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let _live = Live::new(&self.live);
        let peer_addr = tcp.peer_addr().map_err(|source| HboneError::Connect {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let _ = crate::control::Keepalive::DATA_PATH.apply_tcp(&tcp);
        self.counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);

        // One deadline covers the TLS and the HTTP/2 handshakes: a peer that goes quiet in
        // either holds nothing for long.
        let deadline = tokio::time::Instant::now() + self.settings.handshake_timeout;
        let handshake = tokio::time::timeout_at(deadline, self.acceptor.accept(tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(source)) => {
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer_addr, "hbone: TLS handshake refused: {}", super::describe_tls_error(&source));
                return Err(HboneError::Handshake {
                    addr: peer_addr,
                    source,
                });
            }
            Err(_) => {
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                return Err(HboneError::Timeout {
                    what: "TLS handshake",
                    after: self.settings.handshake_timeout,
                });
            }
        };
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            self.counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
            return Err(HboneError::NoAlpn(peer_addr));
        }
        let peer = Arc::new(
            peer_identity(session).expect("the client verifier admits only SPIFFE identities"),
        );

        let h2_err = |source| HboneError::Http2 {
            addr: peer_addr,
            source,
        };
        let h2_handshake = h2::server::Builder::new()
            .initial_window_size(self.settings.windows.stream)
            .initial_connection_window_size(self.settings.windows.connection)
            .max_frame_size(settings::MAX_FRAME_SIZE)
            .max_header_list_size(settings::SERVER_MAX_HEADER_LIST)
            .max_concurrent_streams(self.settings.max_concurrent_streams)
            .max_send_buffer_size(super::client::SEND_BUFFER)
            .handshake::<_, Bytes>(tls);
        let mut conn = tokio::time::timeout_at(deadline, h2_handshake)
            .await
            .map_err(|_| HboneError::Timeout {
                what: "HTTP/2 handshake",
                after: self.settings.handshake_timeout,
            })?
            .map_err(h2_err)?;
        let ping_pong = conn.ping_pong().expect("first call");
        let alive = keepalive(
            ping_pong,
            self.settings.keepalive_interval,
            self.settings.keepalive_timeout,
        );
        tokio::pin!(alive);
        let mut draining = self.draining.subscribe();
        let mut goaway_sent = false;
        let open_streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let idle = tokio::time::sleep(self.settings.idle_timeout);
        tokio::pin!(idle);

        loop {
            let next = tokio::select! {
                next = conn.accept() => next,
                _ = drained(&mut draining), if !goaway_sent => {
                    conn.graceful_shutdown();
                    goaway_sent = true;
                    continue;
                }
                _ = &mut idle, if !goaway_sent => {
                    if open_streams.load(Ordering::Relaxed) == 0 {
                        // Streams still open would finish anyway: GOAWAY only stops new ones.
                        conn.graceful_shutdown();
                        goaway_sent = true;
                        self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer_addr, "hbone: idle connection closed");
                    } else {
                        idle.as_mut().reset(tokio::time::Instant::now() + self.settings.idle_timeout);
                    }
                    continue;
                }
                _ = &mut alive => {
                    // Send GOAWAY if the peer is still there to read it, but do not wait long.
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    let closing = std::future::poll_fn(|cx| conn.poll_closed(cx));
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                    return Ok(());
                }
            };
            let Some(next) = next else {
                // No more streams will arrive; let those in flight finish before returning.
                return std::future::poll_fn(|cx| conn.poll_closed(cx))
                    .await
                    .map_err(h2_err);
            };
            let (request, mut respond) = next.map_err(h2_err)?;
            let (parts, body) = request.into_parts();
            if parts.method != Method::CONNECT {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer_addr, method = %parts.method, "hbone: not a CONNECT, answering 400");
                answer(respond, StatusCode::BAD_REQUEST);
                continue;
            }
            let destination = parts
                .uri
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
            let Some(destination) = destination else {
                self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer_addr, uri = %parts.uri, "hbone: CONNECT authority is not ip:port, answering 400");
                answer(respond, StatusCode::BAD_REQUEST);
                continue;
            };
            // A client that already reset the stream gets nothing.
            if respond
                .poll_reset(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                .is_ready()
            {
                continue;
            }
            self.counters.streams.fetch_add(1, Ordering::Relaxed);
            open_streams.fetch_add(1, Ordering::Relaxed);
            let open = OpenStream(open_streams.clone());
            idle.as_mut()
                .reset(tokio::time::Instant::now() + self.settings.idle_timeout);
            let inbound = InboundConnect {
                peer: peer.clone(),
                peer_addr,
                destination,
                headers: parts.headers,
                respond: Some(respond),
                recv: Some(body),
            };
            let handled = handler(inbound);
            tokio::spawn(async move {
                let _open = open;
                handled.await
            });
        }
    }
}
