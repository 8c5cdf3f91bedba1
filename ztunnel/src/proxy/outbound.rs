//! Outbound: from the served workload to wherever it connects. A workload that speaks HBONE
//! is reached through a tunnel to `<its ip>:15008` with the served workload's certificate,
//! expecting the destination's service account (plus the service's subjectAltNames); anything
//! else gets plain TCP, and addresses outside the mesh's view pass through untouched. Egress
//! policies selecting the served workload decide once the destination is resolved, before
//! anything is opened ([`super::egress`]).

use std::net::SocketAddr;
use std::sync::Arc;

use meshcore::copy::copy_bidirectional_idle;
use meshcore::hbone::{Baggage, ConnectRequest, H2Stream, HboneError, TraceParent, HBONE_PORT};
use meshcore::identity::SpiffeId;
use meshcore::otel::{KeyValue, SpanKind};
use tokio::net::TcpStream;

use super::egress::{self, Target};
use super::own::DialGuard;
use super::{ConnectionGuard, Proxy, CONNECT_TIMEOUT};
use crate::metrics::{hop_failed, ConnectionLabels, ConnectionRecord, Reporter, OUTBOUND_SPAN};
use crate::state::{Destination, Protocol, WaypointHop, WaypointLookup, WorkloadEntry};

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("destination {0} is ztunnel's own listener (one of its ports on a local address); refused, not relayed into itself")]
    Loop(SocketAddr),
    /// A connection ztunnel dialled itself came back to its capture port: a NAT rule maps
    /// the destination onto ztunnel.
    #[error("destination {0} leads back to ztunnel's own capture port (a NAT rule maps it onto ztunnel, for ztunnel's own connections too); refused, not relayed into itself")]
    Looped(SocketAddr),
    #[error("service {0} has no healthy endpoint")]
    NoHealthyEndpoint(String),
    #[error("service {service} has no port {port}")]
    UnknownServicePort { service: String, port: u16 },
    #[error("workload {0} has no address")]
    NoAddress(String),
    #[error("certificate for {0}: {1}")]
    Certificate(SpiffeId, String),
    #[error("denied by the destination's authorization policy (HBONE 401)")]
    Denied,
    /// Refused at the source by an egress policy (the reason names it).
    #[error("{0}")]
    EgressDenied(meshcore::policy::egress::EgressReason),
    /// The destination requires a waypoint and none can take the connection.
    #[error("{0}")]
    NoWaypoint(String),
    #[error("{0}")]
    Hbone(HboneError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl OutboundError {
    /// Istio's `response_flags` for the failure.
    pub fn response_flag(&self) -> &'static str {
        match self {
            OutboundError::Denied | OutboundError::EgressDenied(_) => "DENY",
            OutboundError::NoHealthyEndpoint(_) | OutboundError::UnknownServicePort { .. } => "NR",
            OutboundError::NoWaypoint(_) => "UH",
            _ => "CONNECT",
        }
    }
}

pub enum Upstream {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// An established outbound connection, ready to relay.
pub struct Opened {
    pub upstream: Upstream,
    pub record: ConnectionRecord,
    /// Where it went, for the access log.
    pub route: String,
    /// The relay's idle timeout (`RELAY_IDLE_TIMEOUT`).
    pub relay_idle: std::time::Duration,
    /// A plain connection's local address, known to `Proxy::own_dials` while it lives.
    pub dial: Option<DialGuard>,
}

/// Resolves `dst` and opens the upstream side for a connection from `client`; with tracing
/// on, the connection is a span whose context the HBONE CONNECT carries to the next hop.
pub async fn open(
    proxy: &Proxy,
    client: SocketAddr,
    dst: SocketAddr,
) -> Result<Opened, OutboundError> {
    let Some(mut hop) = proxy.metrics.tracing.hop(None) else {
        return resolve_and_open(proxy, client, dst, None).await;
    };
    hop.add(|| KeyValue::new("client.address", client.to_string()));
    hop.add(|| KeyValue::new("server.address", dst.to_string()));
    match resolve_and_open(proxy, client, dst, Some(hop.context)).await {
        Ok(opened) => Ok(Opened {
            record: opened
                .record
                .with_span(Some(hop), OUTBOUND_SPAN, SpanKind::Client),
            ..opened
        }),
        Err(e) => {
            let flag = e.response_flag();
            hop_failed(
                Some(hop),
                OUTBOUND_SPAN,
                SpanKind::Client,
                flag,
                e.to_string(),
            );
            Err(e)
        }
    }
}

async fn resolve_and_open(
    proxy: &Proxy,
    client: SocketAddr,
    dst: SocketAddr,
    trace: Option<TraceParent>,
) -> Result<Opened, OutboundError> {
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    let snap = proxy.state.load();
    let source = proxy.served(&snap);
    if proxy.is_own_listener(dst, source.as_deref()) {
        return Err(fail(
            proxy,
            (client, dst),
            source.as_deref(),
            None,
            OutboundError::Loop(dst),
        ));
    }
    match snap.waypoint_for(dst, source.as_deref()) {
        WaypointLookup::Direct => {}
        WaypointLookup::Via(hop) => {
            let service = snap.service_by_vip("", dst.ip());
            // Decided on the original destination: the Service (and its port mapping), or
            // the workload dialled.
            let decided = egress::check(proxy, &snap, source.as_deref(), client, || {
                let workload = snap.workload_by_ip("", dst.ip()).map(|w| w.as_ref());
                Target {
                    dialled: dst,
                    service: service.map(|s| s.as_ref()),
                    endpoint: workload,
                    endpoint_ip: workload.map(|_| dst.ip()),
                    target_port: match service {
                        Some(s) => s.service.ports.get(&dst.port()).map(|&t| match t {
                            0 => dst.port(),
                            t => t,
                        }),
                        None => Some(dst.port()),
                    },
                }
            });
            if let Err(d) = decided {
                let labels = ConnectionLabels {
                    reporter: Reporter::Source,
                    cluster: &proxy.cluster_id,
                    source: source.as_deref(),
                    source_principal: Some(proxy.identity.to_string()),
                    destination: None,
                    destination_service: service.map(|s| s.as_ref()),
                    destination_principal: None,
                    mutual_tls: false,
                    source_addr: Some(client),
                    destination_addr: Some(dst),
                };
                let e = OutboundError::EgressDenied(d.reason);
                proxy.metrics.failed(labels, e.response_flag(), &e);
                return Err(e);
            }
            return via_waypoint(
                proxy,
                source.as_deref(),
                service.map(|s| s.as_ref()),
                (client, dst),
                hop,
                trace,
            )
            .await;
        }
        WaypointLookup::Unavailable(why) => {
            return Err(fail(
                proxy,
                (client, dst),
                source.as_deref(),
                None,
                OutboundError::NoWaypoint(why),
            ));
        }
    }
    let (workload, service, port) = match snap.resolve(dst) {
        Destination::Service {
            service,
            workload,
            port,
        } => (Some(workload), Some(service), port),
        Destination::Workload { workload, port } => (Some(workload), None, port),
        Destination::Unknown => (None, None, dst.port()),
        Destination::NoHealthyEndpoint { service } => {
            return Err(fail(
                proxy,
                (client, dst),
                source.as_deref(),
                None,
                OutboundError::NoHealthyEndpoint(service.service.key()),
            ));
        }
        Destination::UnknownServicePort { service, port } => {
            return Err(fail(
                proxy,
                (client, dst),
                source.as_deref(),
                None,
                OutboundError::UnknownServicePort {
                    service: service.service.key(),
                    port,
                },
            ));
        }
    };
    let labels = |mtls: bool| ConnectionLabels {
        reporter: Reporter::Source,
        cluster: &proxy.cluster_id,
        source: source.as_deref(),
        source_principal: Some(proxy.identity.to_string()),
        destination: workload.map(|w| w.as_ref()),
        destination_service: service.map(|s| s.as_ref()),
        destination_principal: workload
            .filter(|w| w.workload.protocol == Protocol::HBONE)
            .map(|w| w.identity.to_string()),
        mutual_tls: mtls,
        source_addr: Some(client),
        destination_addr: Some(dst),
    };
    let decided = egress::check(proxy, &snap, source.as_deref(), client, || match workload {
        Some(w) => Target {
            dialled: dst,
            service: service.map(|s| s.as_ref()),
            endpoint: Some(w),
            endpoint_ip: workload_ip(w, dst).ok(),
            target_port: Some(port),
        },
        None => Target::passthrough(dst),
    });
    if let Err(d) = decided {
        let e = OutboundError::EgressDenied(d.reason);
        proxy.metrics.failed(labels(false), e.response_flag(), &e);
        return Err(e);
    }
    let result = match workload {
        Some(w) if w.workload.protocol == Protocol::HBONE => {
            let expected = expected_identities(w, service.map(|s| &s.service.subject_alt_names));
            let target = SocketAddr::new(workload_ip(w, dst)?, port);
            if proxy.is_own_listener(target, source.as_deref()) {
                return Err(fail(
                    proxy,
                    (client, dst),
                    source.as_deref(),
                    Some(w),
                    OutboundError::Loop(target),
                ));
            }
            let hbone = SocketAddr::new(target.ip(), HBONE_PORT);
            tunnel(
                proxy,
                source.as_deref(),
                client,
                target,
                hbone,
                expected,
                trace,
            )
            .await
            .map(|s| {
                (
                    Upstream::Hbone(s),
                    None,
                    format!("{target} via HBONE as {}", w.identity),
                )
            })
        }
        Some(w) => {
            let target = SocketAddr::new(workload_ip(w, dst)?, port);
            if proxy.is_own_listener(target, source.as_deref()) {
                return Err(fail(
                    proxy,
                    (client, dst),
                    source.as_deref(),
                    Some(w),
                    OutboundError::Loop(target),
                ));
            }
            plain(proxy, target)
                .await
                .map(|(t, d)| (Upstream::Tcp(t), d, format!("{target} plain TCP")))
        }
        None => plain(proxy, dst)
            .await
            .map(|(t, d)| (Upstream::Tcp(t), d, format!("{dst} passthrough"))),
    };
    match result {
        Ok((upstream, dial, route)) => {
            let mtls = matches!(upstream, Upstream::Hbone(_));
            Ok(Opened {
                upstream,
                record: proxy.metrics.opened(labels(mtls)),
                route,
                relay_idle: proxy.relay_idle,
                dial,
            })
        }
        Err(e) => {
            proxy.metrics.failed(labels(false), e.response_flag(), &e);
            Err(e)
        }
    }
}

/// Opens a tunnel to the destination's waypoint, with the original destination (Service VIP or
/// pod address, untranslated) as the CONNECT authority, expecting the waypoint's identity.
async fn via_waypoint(
    proxy: &Proxy,
    source: Option<&WorkloadEntry>,
    service: Option<&crate::state::ServiceEntry>,
    (client, dst): (SocketAddr, SocketAddr),
    hop: WaypointHop,
    trace: Option<TraceParent>,
) -> Result<Opened, OutboundError> {
    let principal = hop.expected.first().map(|id| id.to_string());
    let labels = |mtls: bool| ConnectionLabels {
        reporter: Reporter::Source,
        cluster: &proxy.cluster_id,
        source,
        source_principal: Some(proxy.identity.to_string()),
        destination: None,
        destination_service: service,
        destination_principal: principal.clone(),
        mutual_tls: mtls,
        source_addr: Some(client),
        destination_addr: Some(dst),
    };
    match tunnel(proxy, source, client, dst, hop.hbone, hop.expected, trace).await {
        Ok(stream) => Ok(Opened {
            upstream: Upstream::Hbone(stream),
            record: proxy.metrics.opened(labels(true)),
            route: format!("{dst} via waypoint {} at {}", hop.name, hop.hbone),
            relay_idle: proxy.relay_idle,
            dial: None,
        }),
        Err(e) => {
            proxy.metrics.failed(labels(false), e.response_flag(), &e);
            Err(e)
        }
    }
}

fn fail(
    proxy: &Proxy,
    (client, dst_addr): (SocketAddr, SocketAddr),
    source: Option<&WorkloadEntry>,
    dst: Option<&WorkloadEntry>,
    e: OutboundError,
) -> OutboundError {
    proxy.metrics.failed(
        ConnectionLabels {
            reporter: Reporter::Source,
            cluster: &proxy.cluster_id,
            source,
            source_principal: Some(proxy.identity.to_string()),
            destination: dst,
            destination_service: None,
            destination_principal: None,
            mutual_tls: false,
            source_addr: Some(client),
            destination_addr: Some(dst_addr),
        },
        e.response_flag(),
        &e,
    );
    e
}

/// The destination's service account, plus the service's subjectAltNames.
fn expected_identities(w: &WorkloadEntry, sans: Option<&Vec<String>>) -> Vec<SpiffeId> {
    let mut ids = vec![w.identity.clone()];
    for san in sans.into_iter().flatten() {
        let body = san.strip_prefix("spiffe://").unwrap_or(san);
        if let Ok(id) = SpiffeId::from_principal(body) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// The workload's address in the family the client used, else its first.
fn workload_ip(w: &WorkloadEntry, dst: SocketAddr) -> Result<std::net::IpAddr, OutboundError> {
    let ips = &w.workload.workload_ips;
    ips.iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .or(ips.first())
        .copied()
        .ok_or_else(|| OutboundError::NoAddress(w.workload.uid.clone()))
}

async fn tunnel(
    proxy: &Proxy,
    source: Option<&WorkloadEntry>,
    client: SocketAddr,
    target: SocketAddr,
    hbone_addr: SocketAddr,
    expected: Vec<SpiffeId>,
    trace: Option<TraceParent>,
) -> Result<H2Stream, OutboundError> {
    let credentials = proxy
        .certs
        .credentials(&proxy.identity)
        .await
        .map_err(|e| OutboundError::Certificate(proxy.identity.clone(), e))?;
    let baggage = source.map(|s| Baggage {
        cluster: Some(if s.workload.cluster_id.is_empty() {
            proxy.cluster_id.clone()
        } else {
            s.workload.cluster_id.clone()
        }),
        namespace: Some(s.workload.namespace.clone()),
        workload_kind: (!s.workload.workload_type.is_empty())
            .then(|| s.workload.workload_type.clone()),
        workload_name: Some(s.workload.metrics_name().to_owned()),
        service_name: Some(s.workload.canonical_service().to_owned()),
        service_version: (!s.workload.canonical_revision.is_empty())
            .then(|| s.workload.canonical_revision.clone()),
    });
    let req = ConnectRequest {
        credentials,
        expected,
        hbone_addr,
        target,
        source: Some(client),
        bind_ip: proxy.bind_ip,
        dialer: proxy
            .netns
            .clone()
            .map(|n| n as Arc<dyn meshcore::hbone::client::Dial>),
        baggage,
        trace,
    };
    proxy.hbone.connect(&req).await.map_err(|e| match e {
        HboneError::Refused { status, .. } if status == http::StatusCode::UNAUTHORIZED => {
            OutboundError::Denied
        }
        e => OutboundError::Hbone(e),
    })
}

/// A plain TCP connection; in ztunnel's own namespace (dedicated mode) one that
/// `Proxy::own_dials` knows, so that NAT bringing it back to 15001 is noticed.
async fn plain(
    proxy: &Proxy,
    addr: SocketAddr,
) -> Result<(TcpStream, Option<DialGuard>), OutboundError> {
    let bind = proxy.bind_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4());
    let connect = async {
        match proxy.netns {
            Some(_) => proxy.connect_tcp(addr, bind).await.map(|t| (t, None)),
            None => proxy
                .own_dials
                .connect(addr, bind, proxy.socket_mark)
                .await
                .map(|(t, d)| (t, Some(d))),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(source)) => Err(OutboundError::Connect { addr, source }),
        Err(_) => Err(OutboundError::Connect {
            addr,
            source: std::io::ErrorKind::TimedOut.into(),
        }),
    }
}

/// Copies between the client and the opened upstream until both sides close, then records
/// the bytes.
pub async fn relay(mut downstream: TcpStream, opened: Opened) {
    let (t, result) = match opened.upstream {
        Upstream::Hbone(s) => s.relay_idle(&mut downstream, opened.relay_idle).await,
        Upstream::Tcp(mut t) => {
            copy_bidirectional_idle(&mut downstream, &mut t, opened.relay_idle).await
        }
    };
    match result {
        Ok(()) => {
            tracing::debug!(route = %opened.route, sent = t.a_to_b, received = t.b_to_a, "outbound connection closed")
        }
        Err(e) => {
            tracing::debug!(route = %opened.route, "outbound connection ended with error: {e}")
        }
    }
    opened.record.closed(t.a_to_b, t.b_to_a);
}

/// The 15001 listener's handler: a captured connection, addressed to its original destination.
pub async fn handle_captured(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    client: SocketAddr,
    _guard: ConnectionGuard,
) {
    let dst = match super::original_dst::destination(&tcp) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(%client, "outbound connection without an original destination (not captured?): {e}");
            return;
        }
    };
    if proxy.own_dials.is_own(client) {
        let snap = proxy.state.load();
        let e = fail(
            &proxy,
            (client, dst),
            proxy.served(&snap).as_deref(),
            None,
            OutboundError::Looped(dst),
        );
        tracing::warn!(%client, %dst, flag = e.response_flag(), "outbound connection refused: {e}");
        return;
    }
    match open(&proxy, client, dst).await {
        Ok(opened) => relay(tcp, opened).await,
        Err(OutboundError::EgressDenied(_)) => {
            // Already logged with the policy. Reset, not a clean close: the application
            // sees "connection reset" at once, not an empty reply.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
        }
        Err(e) => {
            tracing::info!(%client, %dst, flag = e.response_flag(), "outbound connection failed: {e}")
        }
    }
}
