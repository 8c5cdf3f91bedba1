//! Inbound: HBONE tunnels on 15008 (peer identity proven by mutual TLS) and captured plaintext
//! on 15006 (no identity) both end in [`authorize_and_connect`]: the L4 policy engine decides,
//! denials name the deciding policy, then ztunnel connects to the application.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use meshcore::copy::{copy_bidirectional_idle, Transferred};
use meshcore::hbone::InboundConnect;
use meshcore::identity::SpiffeId;
use meshcore::otel::SpanKind;
use meshcore::policy::{Connection, Reason};
use tokio::net::TcpStream;

use super::revalidate::{Admitted, Registration};
use super::{ConnectionGuard, Proxy, CONNECT_TIMEOUT};
use crate::metrics::{hop_failed, ConnectionLabels, ConnectionRecord, Reporter, INBOUND_SPAN};

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("the served workload {0} is not in the config")]
    NotServed(String),
    #[error("destination {dst} is not an address of the served workload {workload}")]
    WrongDestination { dst: SocketAddr, workload: String },
    #[error("destination {0} is one of ztunnel's own listeners")]
    Loop(SocketAddr),
    #[error("{0}")]
    Denied(Reason),
    #[error("connecting to the application at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl InboundError {
    /// Istio's response flag for it, as in the connection's metrics.
    fn flag(&self) -> &'static str {
        match self {
            InboundError::Denied(_) => "DENY",
            InboundError::Connect { .. } => "CONNECT",
            _ => "NR",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::Denied(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Decides the connection and, if allowed, connects to the application at `dst` and registers
/// the connection to be decided again on config changes. `client` is the original client's
/// address when known (HBONE `forwarded` header).
pub async fn authorize_and_connect(
    proxy: &Proxy,
    source_ip: IpAddr,
    client: Option<SocketAddr>,
    peer: Option<&SpiffeId>,
    dst: SocketAddr,
) -> Result<(Admitted, ConnectionRecord), InboundError> {
    // IPv4 peers of a dual-stack socket appear as ::ffff:a.b.c.d; policies are written in IPv4.
    let source_ip = source_ip.to_canonical();
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let snap = proxy.state.load();
    let workload_key = || format!("{}/{}", proxy.workload.namespace, proxy.workload.name);
    let served = proxy
        .served(&snap)
        .ok_or_else(|| InboundError::NotServed(workload_key()))?;
    if proxy.is_own_listener(dst, Some(&served)) {
        meshcore::refusals::count("inbound", "own_listener");
        return Err(InboundError::Loop(dst));
    }
    // The `forwarded` client names the source workload only if that workload is who the peer
    // proved to be; otherwise the peer's own address does.
    let source = client
        .and_then(|c| snap.workload_by_ip("", c.ip().to_canonical()))
        .filter(|w| peer.is_none_or(|p| *p == w.identity))
        .or_else(|| snap.workload_by_ip("", source_ip));
    let principal = peer.map(SpiffeId::principal);
    let service = snap.service_for_endpoint(&served, dst.port());
    let labels = || ConnectionLabels {
        reporter: Reporter::Destination,
        cluster: &proxy.cluster_id,
        source: source.map(|s| s.as_ref()),
        source_principal: peer.map(ToString::to_string),
        destination: Some(&served),
        destination_service: service.map(|s| s.as_ref()),
        destination_principal: Some(served.identity.to_string()),
        mutual_tls: peer.is_some(),
        source_addr: Some(client.unwrap_or(SocketAddr::new(source_ip, 0))),
        destination_addr: Some(dst),
    };
    if !served.workload.workload_ips.contains(&dst.ip()) {
        proxy
            .metrics
            .failed(labels(), "NR", "not an address of the served workload");
        return Err(InboundError::WrongDestination {
            dst,
            workload: workload_key(),
        });
    }
    let conn = Connection {
        source_ip,
        destination: dst,
        identity: peer,
        principal: principal.as_deref(),
    };
    let decision = snap.policies_for(&served).decide(&conn);
    if let Some((verdict, reason)) = &decision.dry_run {
        tracing::info!(connection = %conn, dry_run_verdict = ?verdict, "dry-run policy: {reason} (not enforced)");
    }
    if !decision.allowed() {
        proxy.metrics.failed(labels(), "DENY", &decision.reason);
        tracing::info!(connection = %conn, "connection denied: {}", decision.reason);
        proxy
            .denials
            .record(conn.to_string(), decision.reason.to_string());
        return Err(InboundError::Denied(decision.reason));
    }
    // Marked like every ztunnel socket, so a pod's own capture rules do not redirect it.
    let connect = proxy.connect_app(dst, source_ip);
    let app = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => {
            proxy.metrics.failed(labels(), "CONNECT", &source);
            return Err(InboundError::Connect { addr: dst, source });
        }
        Err(_) => {
            proxy.metrics.failed(
                labels(),
                "CONNECT",
                "the application did not accept in time",
            );
            return Err(InboundError::Connect {
                addr: dst,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
    };
    let admitted = proxy.inbound.register(source_ip, dst, peer, app);
    // A config swap between the decision and the registration is not missed.
    if proxy.state.load().version != snap.version {
        proxy.inbound.revalidate(proxy);
    }
    Ok((admitted, proxy.metrics.opened(labels())))
}

/// One CONNECT stream on 15008.
pub async fn handle_hbone(proxy: Arc<Proxy>, req: InboundConnect, _guard: ConnectionGuard) {
    let peer = req.peer.clone();
    let client = req.forwarded_for();
    let dst = req.destination;
    // The sender's context continues here: this hop is a child of its outbound span.
    let hop = proxy.metrics.tracing.hop_from(&req.headers);
    match authorize_and_connect(&proxy, req.peer_addr.ip(), client, Some(&peer), dst).await {
        Ok((mut admitted, record)) => {
            let record = record.with_span(hop, INBOUND_SPAN, SpanKind::Server);
            let Ok(tunnel) = req.accept() else {
                record.closed(0, 0);
                return;
            };
            // a = the application socket: a_to_b is what the destination sent back.
            let (t, result) = until_cut(
                tunnel.relay_idle(&mut admitted.app, proxy.relay_idle),
                &admitted.registration,
            )
            .await;
            drop(admitted);
            if let Err(e) = result {
                tracing::debug!(%dst, "inbound tunnel ended with error: {e}");
            }
            record.closed(t.b_to_a, t.a_to_b);
        }
        Err(e) => {
            hop_failed(hop, INBOUND_SPAN, SpanKind::Server, e.flag(), e.to_string());
            if !matches!(e, InboundError::Denied(_)) {
                tracing::warn!(peer = %peer, %dst, "inbound tunnel refused: {e}");
            }
            req.reject(e.status());
        }
    }
}

/// One captured plaintext connection on 15006: no identity, so only policies that allow
/// unauthenticated sources let it through (STRICT PeerAuthentication refuses it).
pub async fn handle_plaintext(
    proxy: Arc<Proxy>,
    mut tcp: TcpStream,
    client: SocketAddr,
    _guard: ConnectionGuard,
) {
    let dst = match super::original_dst::destination(&tcp) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(%client, "plaintext inbound without an original destination (not captured?): {e}");
            return;
        }
    };
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let hop = proxy.metrics.tracing.hop(None);
    match authorize_and_connect(&proxy, client.ip(), Some(client), None, dst).await {
        Ok((mut admitted, record)) => {
            let record = record.with_span(hop, INBOUND_SPAN, SpanKind::Server);
            let (t, _) = until_cut(
                copy_bidirectional_idle(&mut tcp, &mut admitted.app, proxy.relay_idle),
                &admitted.registration,
            )
            .await;
            drop(admitted);
            record.closed(t.a_to_b, t.b_to_a);
        }
        Err(e) => {
            hop_failed(hop, INBOUND_SPAN, SpanKind::Server, e.flag(), e.to_string());
            if !matches!(e, InboundError::Denied(_)) {
                tracing::warn!(%client, %dst, "plaintext inbound refused: {e}");
            }
        }
    }
}

/// Runs a relay until it ends, or until a grace period after a config change cut it (the cut
/// shuts the application socket down, so the relay normally ends by itself, counts intact).
async fn until_cut(
    relay: impl std::future::Future<Output = (Transferred, std::io::Result<()>)>,
    registration: &Registration,
) -> (Transferred, std::io::Result<()>) {
    tokio::select! {
        done = relay => done,
        _ = registration.cut() => (
            Transferred::default(),
            Err(std::io::Error::other("closed: the config no longer allows it")),
        ),
    }
}
