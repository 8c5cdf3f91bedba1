//! HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS, port 15008.
//!
//! [`client::HboneClient`] opens tunnels from a pool of HTTP/2 connections keyed by identities and
//! address; [`server`] accepts connections, verifies the peer and hands each CONNECT stream to the
//! application, which decides (policy) before answering 200 / 401 / 503.

pub mod client;
mod headers;
mod relay;
pub mod server;
mod stream;

pub use client::{ClientSettings, ConnectRequest, HboneClient, PoolStats};
pub use headers::{forwarded_for, parse_forwarded_for, Baggage, TraceParent};
pub use server::{InboundConnect, ServerCounters, ServerSettings};
pub use stream::H2Stream;

use std::time::Duration;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 flow-control windows of HBONE connections: how much one tunnel (stream) and one
/// connection may have in flight unread. Istio's 4 MiB / 16 MiB by default; smaller windows
/// bound what a receiver holds for a slow application at some cost to bulk throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub stream: u32,
    pub connection: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stream: settings::STREAM_WINDOW,
            connection: settings::CONNECTION_WINDOW,
        }
    }
}

/// HTTP/2 settings Istio uses for HBONE.
pub mod settings {
    /// Per-stream flow-control window.
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// Connection flow-control window.
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Largest DATA frame we accept.
    pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
    /// Header list limits.
    pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
    pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;
    /// Streams a pooled client connection carries before the pool opens another.
    pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
}

/// Default interval between HTTP/2 keepalive pings, and how long a pong may take.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {}", describe_tls_error(source))]
    Handshake {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {0} did not negotiate ALPN h2")]
    NoAlpn(std::net::SocketAddr),
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 {
        addr: std::net::SocketAddr,
        source: h2::Error,
    },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The server answered the CONNECT with something other than 200.
    #[error("tunnel to {target} refused with HTTP {status}{}", reason(*status))]
    Refused {
        target: std::net::SocketAddr,
        status: http::StatusCode,
    },
    /// Another caller's attempt to reach the same destination just failed.
    #[error("connecting failed: {0}")]
    DialFailed(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// rustls wraps our verifiers' messages in debug formatting; dig them out for humans.
pub(crate) fn describe_tls_error(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Other(other))) => {
            format!("peer certificate refused: {}", other.0)
        }
        Some(Error::InvalidCertificate(reason)) => format!("peer certificate refused: {reason:?}"),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

fn reason(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 => " (bad request)",
        401 => " (denied by policy)",
        503 => " (destination unreachable)",
        _ => "",
    }
}

/// Keeps an HTTP/2 connection's liveness checked; returns when a ping goes unanswered.
pub(crate) async fn keepalive(mut ping_pong: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("keepalive ping failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!("keepalive: no pong within {timeout:?}, closing connection");
                return;
            }
        }
    }
}
