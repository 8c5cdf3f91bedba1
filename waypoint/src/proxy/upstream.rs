//! Upstream connections: HTTP/1.1 or HTTP/2 spoken inside an HBONE tunnel to the chosen
//! endpoint (`<pod ip>:15008`, authority `<pod ip>:<target port>`), presenting the waypoint's
//! identity and expecting the endpoint's; plain TCP to an endpoint outside the mesh.
//!
//! Connections are pooled per (endpoint address, protocol): one multiplexed HTTP/2 connection,
//! or a stack of idle HTTP/1.1 connections reused once their previous response has ended. The
//! pool lock is held only to take or return a sender, never across an await.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshcore::certs::CertManager;
use meshcore::hbone::{ConnectRequest, H2Stream, HboneClient, HboneError};
use meshcore::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::Body;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed once done.
const MAX_IDLE_H1: usize = 32;

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The tunnel could not be opened (Envoy: UF, upstream connect failure).
    #[error("connecting to {target}: {source}")]
    Connect {
        target: SocketAddr,
        source: HboneError,
    },
    #[error("HTTP handshake with {target}: {source}")]
    Handshake {
        target: SocketAddr,
        source: hyper::Error,
    },
    /// The connection broke before a response (Envoy: UC / reset).
    #[error("request to {target}: {source}")]
    Request {
        target: SocketAddr,
        source: hyper::Error,
    },
    /// Plain TCP to an endpoint outside the mesh failed (Envoy: UF).
    #[error("connecting to {target}: {source}")]
    Tcp {
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("the waypoint's certificate: {0}")]
    Certificate(String),
}

/// An upstream connection: an HBONE tunnel, or plain TCP.
pub enum Conn {
    Hbone(H2Stream),
    Tcp(tokio::net::TcpStream),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

/// A resolved upstream: where to tunnel to and whom to expect there.
pub struct Destination {
    /// The endpoint's application address: the CONNECT authority.
    pub target: SocketAddr,
    /// Its ztunnel's HBONE address; `None` to connect in plain TCP (a pod outside the mesh).
    pub hbone: Option<SocketAddr>,
    pub expected: Vec<SpiffeId>,
}

#[derive(Default)]
struct EndpointConnections {
    h2: Option<http2::SendRequest<Body>>,
    h1_idle: Vec<http1::SendRequest<Body>>,
}

pub struct Upstream {
    hbone: Arc<HboneClient>,
    certs: Arc<CertManager>,
    identity: SpiffeId,
    pools: Mutex<HashMap<SocketAddr, EndpointConnections>>,
}

impl Upstream {
    pub fn new(hbone: Arc<HboneClient>, certs: Arc<CertManager>, identity: SpiffeId) -> Self {
        Self {
            hbone,
            certs,
            identity,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the connection to `dest` (for opaque TCP, and under each HTTP connection): an
    /// HBONE tunnel, or plain TCP to an endpoint outside the mesh.
    pub async fn tunnel(&self, dest: &Destination) -> Result<Conn, UpstreamError> {
        let Some(hbone_addr) = dest.hbone else {
            let connect = tokio::net::TcpStream::connect(dest.target);
            let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
                .and_then(|r| r)
                .map_err(|e| UpstreamError::Tcp {
                    target: dest.target,
                    source: e,
                })?;
            let _ = tcp.set_nodelay(true);
            return Ok(Conn::Tcp(tcp));
        };
        let credentials = self
            .certs
            .credentials(&self.identity)
            .await
            .map_err(UpstreamError::Certificate)?;
        self.hbone
            .connect(&ConnectRequest {
                credentials,
                expected: dest.expected.clone(),
                hbone_addr,
                target: dest.target,
                source: None,
                bind_ip: None,
                dialer: None,
                baggage: None,
                trace: None,
            })
            .await
            .map(Conn::Hbone)
            .map_err(|source| UpstreamError::Connect {
                target: dest.target,
                source,
            })
    }

    /// Sends one request on a pooled (or new) connection to `dest`.
    pub async fn send(
        &self,
        dest: &Destination,
        version: Version,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = dest.target;
        let request_error = |source| UpstreamError::Request { target, source };
        match version {
            Version::Http2 => {
                let mut sender = match self.pooled_h2(target) {
                    Some(s) => s,
                    None => self.connect_h2(dest).await?,
                };
                sender.ready().await.map_err(request_error)?;
                sender.send_request(req).await.map_err(request_error)
            }
            Version::Http1 => {
                let mut sender = match self.pooled_h1(target) {
                    Some(s) => s,
                    None => self.connect_h1(dest).await?,
                };
                let response = sender.send_request(req).await.map_err(request_error)?;
                // Back to the pool at once: it is taken again only when ready, that is once
                // this response's body has been read to its end.
                self.return_h1(target, sender);
                Ok(response)
            }
        }
    }

    fn pooled_h2(&self, target: SocketAddr) -> Option<http2::SendRequest<Body>> {
        let mut pools = self.pools.lock().expect("pool lock");
        let conns = pools.get_mut(&target)?;
        match &conns.h2 {
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                conns.h2 = None;
                None
            }
        }
    }

    fn pooled_h1(&self, target: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut pools = self.pools.lock().expect("pool lock");
        let idle = &mut pools.get_mut(&target)?.h1_idle;
        idle.retain(|s| !s.is_closed());
        let ready = idle.iter().position(|s| s.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    fn return_h1(&self, target: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut pools = self.pools.lock().expect("pool lock");
        let idle = &mut pools.entry(target).or_default().h1_idle;
        if idle.len() < MAX_IDLE_H1 {
            idle.push(sender);
        }
    }

    async fn connect_h2(
        &self,
        dest: &Destination,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let io = TokioIo::new(self.tunnel(dest).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                target: dest.target,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream HTTP/2 connection ended: {e}");
            }
        });
        let mut pools = self.pools.lock().expect("pool lock");
        pools.entry(dest.target).or_default().h2 = Some(sender.clone());
        Ok(sender)
    }

    async fn connect_h1(
        &self,
        dest: &Destination,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = TokioIo::new(self.tunnel(dest).await?);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                target: dest.target,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream HTTP/1.1 connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Connections currently pooled, for `/config_dump`.
    pub fn pooled(&self) -> usize {
        let pools = self.pools.lock().expect("pool lock");
        pools
            .values()
            .map(|c| c.h1_idle.len() + usize::from(c.h2.is_some()))
            .sum()
    }
}

/// Bytes for an empty body, shared.
pub fn empty() -> Body {
    super::body::full(Bytes::new())
}
