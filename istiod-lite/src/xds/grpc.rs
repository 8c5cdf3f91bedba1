//! Serving istiod-lite's gRPC services (delta xDS, and the CA when bootstrap tokens are
//! configured) over TLS on one listener (15012).
//!
//! TLS handshakes run in a task per connection and bounded by a deadline, so a slow or silent
//! client never holds up accepting the next one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::XdsServer;
use crate::ca::CaServer;
use meshcore::api::ca::istio_certificate_service_server::IstioCertificateServiceServer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    xds: XdsServer,
    ca: Option<CaServer>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let acceptor = TlsAcceptor::from(tls);
    let (tx, rx) = mpsc::channel(64);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // A client gone without a word (a partitioned node) is found by TCP keepalive.
            if let Err(e) = meshcore::control::Keepalive::default().apply_tcp(&tcp) {
                tracing::debug!(%peer, "TCP keepalive: {e}");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "control-plane TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "control-plane TLS handshake timed out"),
                }
            });
        }
    });
    let incoming =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let keepalive = meshcore::control::Keepalive::default();
    let result = tonic::transport::Server::builder()
        // HTTP/2 pings find a silent peer sooner than TCP keepalive (Istio: 30 s, 10 s).
        .http2_keepalive_interval(Some(keepalive.h2_interval))
        .http2_keepalive_timeout(Some(keepalive.h2_timeout))
        .add_service(super::ads_service::AdsService::new(xds))
        .add_optional_service(ca.map(IstioCertificateServiceServer::new))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accept.abort();
    result
}
