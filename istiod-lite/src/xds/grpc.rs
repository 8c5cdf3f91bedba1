//! Serving istiod-lite's gRPC services (delta xDS, and the CA when bootstrap tokens are
//! configured) over TLS on one listener (15012).
//!
//! TLS handshakes run in a task per connection and bounded by a deadline, so a slow or silent
//! client never holds up accepting the next one. Each connection is then served by hyper's
//! HTTP/2 server with tonic's router, which lets us bound its age: after the maximum connection
//! age (±10% jitter, as grpc-go does, so connections made together do not all move at once)
//! the server sends GOAWAY, streams in flight get a grace period to finish, then the connection
//! is closed. Clients reconnect (a ztunnel keeps its view meanwhile and resumes with
//! `initial_resource_versions`), so after istiod-lite is scaled out the load spreads over the
//! replicas instead of staying where the clients first landed. Istio's istiod does the same
//! (`--keepaliveMaxServerConnectionAge`, 30 minutes in its chart; grace 10 s). tonic's own
//! `max_connection_age` cannot be used: with a grace set it closes without GOAWAY, and without
//! one it waits forever on ADS streams, which never end by themselves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;

use super::XdsServer;
use crate::ca::CaServer;
use meshcore::api::ca::istio_certificate_service_server::IstioCertificateServiceServer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client connection is served before it is asked to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionAge {
    /// GOAWAY after this long (jittered by ±10%); `None`: never.
    pub max: Option<Duration>,
    /// How long streams still open after GOAWAY may go on before the connection is closed.
    pub grace: Duration,
}

impl ConnectionAge {
    /// Istio's chart's 30 minutes, and Istio's 10 s grace.
    pub const DEFAULT: ConnectionAge = ConnectionAge {
        max: Some(Duration::from_secs(30 * 60)),
        grace: Duration::from_secs(10),
    };

    /// This connection's age: `max` moved by up to 10% either way.
    pub fn jittered(&self) -> Option<Duration> {
        let max = self.max?;
        let mut bytes = [0u8; 4];
        let unit =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
                Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
                Err(_) => 0.5,
            };
        Some(max.mul_f64(0.9 + 0.2 * unit))
    }
}

impl Default for ConnectionAge {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Serves until `shutdown` completes, connections aged as [`ConnectionAge::DEFAULT`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    xds: XdsServer,
    ca: Option<CaServer>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, tls, xds, ca, ConnectionAge::DEFAULT, shutdown).await
}

/// Serves until `shutdown` completes: then no new connection is accepted, the open ones get
/// GOAWAY, and this returns once they have closed (at most `age.grace` later).
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    xds: XdsServer,
    ca: Option<CaServer>,
    age: ConnectionAge,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let mut routes = Routes::new(super::ads_service::AdsService::new(xds));
    if let Some(ca) = ca {
        routes = routes.add_service(IstioCertificateServiceServer::new(ca));
    }
    let routes = routes.prepare();
    let keepalive = meshcore::control::Keepalive::default();
    // hyper's defaults otherwise; unlike tonic's server they bound a connection to 200
    // concurrent streams (a client queues more: a node's burst of certificate requests waits).
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // HTTP/2 pings find a silent peer sooner than TCP keepalive (Istio: 30 s, 10 s).
        .keep_alive_interval(Some(keepalive.h2_interval))
        .keep_alive_timeout(keepalive.h2_timeout);
    let builder = Arc::new(builder);
    // Connections hold a receiver: `true` asks them to go away; all dropped = all closed.
    let (stop, stopping) = watch::channel(false);
    let accept = async {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("gRPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A client gone without a word (a partitioned node) is found by TCP keepalive.
            if let Err(e) = keepalive.apply_tcp(&tcp) {
                tracing::debug!(%peer, "TCP keepalive: {e}");
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            let builder = builder.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        meshcore::refusals::count("grpc", "tls_handshake");
                        tracing::debug!(%peer, "control-plane TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        meshcore::refusals::count("grpc", "tls_handshake_timeout");
                        tracing::debug!(%peer, "control-plane TLS handshake timed out");
                        return;
                    }
                };
                let service = TowerToHyperService::new(routes);
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                serve_connection(conn, peer, age, stopping).await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// Drives one connection: until it ends, or until its age (or shutdown) asks it to go away,
/// then for at most the grace period.
async fn serve_connection<C>(
    conn: C,
    peer: std::net::SocketAddr,
    age: ConnectionAge,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    tokio::pin!(conn);
    let aged = async {
        match age.jittered() {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "gRPC connection ended: {e}");
            }
            return;
        }
        () = aged => tracing::debug!(%peer, "maximum connection age reached: GOAWAY"),
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().go_away();
    match tokio::time::timeout(age.grace, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "gRPC connection ended: {e}"),
        Err(_) => tracing::debug!(%peer, "streams still open after the grace period: closed"),
    }
}

/// hyper's HTTP/2 connection, behind a trait so [`serve_connection`] need not spell its type.
trait GracefulShutdown {
    fn go_away(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> GracefulShutdown for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn go_away(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_jittered_by_ten_percent() {
        let age = ConnectionAge {
            max: Some(Duration::from_secs(100)),
            grace: Duration::from_secs(1),
        };
        let ages: Vec<Duration> = (0..200).filter_map(|_| age.jittered()).collect();
        assert!(ages
            .iter()
            .all(|a| (Duration::from_secs(90)..=Duration::from_secs(110)).contains(a)));
        let (min, max) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(10), "{min:?}..{max:?}");
        let never = ConnectionAge { max: None, ..age };
        assert_eq!(never.jittered(), None);
    }
}
