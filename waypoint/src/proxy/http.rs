//! HTTP through the waypoint: one hyper server (HTTP/1.1 and HTTP/2 on the same stream) per
//! tunnel (or gateway listener connection), and per request: authenticate and authorize, route,
//! then [`super::forward`] (filters, backend and endpoint, the upstream exchange with the rule's
//! timeouts and retries), and record the outcome.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::attempt::{local, Local};
use super::body::{self, Body, Metered};
use super::forward::{forward, Routed};
use super::outcome::{CountInto, FlowFacts, Outcome};
use super::{gateway, headers, Client, Proxy};
use crate::access_log::AccessEntry;
use crate::authz::{HttpAttrs, Reason, RequestAttrs, Verdict};
use crate::config::{Snapshot, Target};
use crate::metrics::{Peer, Reporter, RequestLabels};
use crate::route::{Lookup, RequestHead};

/// One downstream connection: who, to where, and through which door.
pub(super) struct Conn {
    pub(super) client: Client,
    /// The address the client dialled: the CONNECT authority (mesh), or the listener's socket
    /// address (gateway).
    pub(super) destination: SocketAddr,
    /// `None` for mesh traffic (HBONE); the listener for gateway traffic.
    pub(super) gateway: Option<gateway::Listener>,
}

/// Serves HTTP on one accepted tunnel until the client closes it.
pub async fn serve<S>(proxy: Arc<Proxy>, stream: S, client: Client, destination: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        client,
        destination,
        gateway: None,
    };
    serve_conn(proxy, stream, conn, None).await
}

/// Serves HTTP on one connection until the client closes it; when `drain` turns true, the
/// connection is shut down gracefully (HTTP/2 GOAWAY; HTTP/1 closes once idle).
pub(super) async fn serve_conn<S>(
    proxy: Arc<Proxy>,
    stream: S,
    conn: Conn,
    drain: Option<watch::Receiver<bool>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = proxy.settings.header_timeout;
    let destination = conn.destination;
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handle(proxy, conn, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that opens a request and trickles its headers does not hold the connection
    // forever (hyper enforces the timeout only with a timer).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let result = match drain {
        None => connection.await,
        Some(mut drain) => {
            tokio::pin!(connection);
            tokio::select! {
                r = connection.as_mut() => r,
                _ = async { drop(drain.wait_for(|d| *d).await) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%destination, "HTTP connection ended: {e}");
    }
}

async fn handle(proxy: Arc<Proxy>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let (client, destination) = (&conn.client, conn.destination);
    let start = Instant::now();
    let snapshot = proxy.store.load();
    let (mut parts, incoming) = req.into_parts();
    let request_bytes = Arc::new(AtomicU64::new(0));
    let body = body::boxed(Metered::new(incoming, CountInto(request_bytes.clone())));
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut outcome = Outcome {
        entry: AccessEntry::start(client, destination, &parts, grpc),
        labels: labels(&proxy, client, grpc, conn.gateway.is_some()),
        route: None,
        classes: None,
        proxy: proxy.clone(),
        start,
        request_bytes,
        flow: FlowFacts::default(),
        // The client's context (if any) continues here; this span's goes upstream.
        hop: proxy.tracing.hop_from(&parts.headers),
    };
    outcome.entry.request_id = headers::ensure_request_id(&mut parts.headers);
    let result = match &conn.gateway {
        None => {
            route_and_forward(
                &proxy,
                &snapshot,
                client,
                destination,
                &mut parts,
                body,
                &mut outcome,
            )
            .await
        }
        Some(listener) => {
            gateway::route_and_forward(
                &proxy,
                &snapshot,
                client,
                listener,
                destination,
                &mut parts,
                body,
                &mut outcome,
            )
            .await
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(l) => {
            outcome.entry.flag = l.flag;
            outcome.flow.local_error = l.status.is_server_error();
            local_reply(&l, grpc)
        }
    };
    outcome.entry.status = response.status().as_u16();
    if grpc {
        outcome.entry.grpc_status = body::grpc_status(response.headers());
    }
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, Metered::new(inner, outcome).boxed())
}

/// The waypoint's own answer. A gRPC client gets it as gRPC does errors (HTTP 200, trailers-only,
/// `grpc-status` mapped from the HTTP status as Envoy maps it, the text in `grpc-message`).
fn local_reply(l: &Local, grpc: bool) -> Response<Body> {
    if !grpc {
        let mut response = Response::builder()
            .status(l.status)
            .header(http::header::CONTENT_TYPE, "text/plain");
        if l.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: the client's bearer token was refused.
            response = response.header(
                http::header::WWW_AUTHENTICATE,
                "Bearer error=\"invalid_token\"",
            );
        }
        return response.body(body::full(l.body)).expect("static response");
    }
    let code = match l.status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", l.body.trim_end())
        .body(body::full(Bytes::new()))
        .expect("static response")
}

/// A request's metric labels. Mesh traffic: the client is the source (its identity, its
/// `baggage`). A gateway listener reports as the source itself (`reporter="source"`, as
/// Istio's gateways): the source labels name the gateway's workload and identity; the client
/// outside the mesh appears only in the access log and flow records.
fn labels(proxy: &Proxy, client: &Client, grpc: bool, gateway: bool) -> RequestLabels {
    let b = &client.baggage;
    let id = client.identity.as_deref();
    let source = if gateway {
        Peer {
            workload: proxy.settings.workload.clone(),
            namespace: proxy.identity.namespace().to_owned(),
            principal: proxy.identity.to_string(),
            ..Default::default()
        }
    } else {
        Peer {
            workload: b.workload_name.clone().unwrap_or_default(),
            namespace: id.map(|i| i.namespace().to_owned()).unwrap_or_default(),
            principal: id.map(|i| i.to_string()).unwrap_or_default(),
            app: b.service_name.clone().unwrap_or_default(),
            version: b.service_version.clone().unwrap_or_default(),
        }
    };
    RequestLabels {
        source,
        cluster: proxy.settings.cluster.clone(),
        request_protocol: if grpc { "grpc" } else { "http" },
        // Istio's gateways report as the source of the request, over plain connections.
        reporter: if gateway {
            Reporter::Gateway
        } else {
            Reporter::Waypoint
        },
        ..Default::default()
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The request's host as the client addressed it (HTTP/2 `:authority`, else `Host`).
pub(super) fn request_host(parts: &http::request::Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Mesh traffic: the addressed Service (or pod), its policies, its routes.
async fn route_and_forward(
    proxy: &Arc<Proxy>,
    snapshot: &Snapshot,
    client: &Client,
    destination: SocketAddr,
    parts: &mut http::request::Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response<Body>, Local> {
    const NO_TARGET: Local = local(
        StatusCode::SERVICE_UNAVAILABLE,
        "NR",
        "no such destination\n",
    );
    let target = snapshot.resolve(destination).ok_or(NO_TARGET)?;
    let (service, port) = match &target {
        Target::Service { service, port } => (*service, port.port),
        Target::Workload { service, port, .. } => (*service, *port),
    };
    let service_addressed = matches!(target, Target::Service { .. });
    outcome.labels.destination_service = service.hostname.clone();
    outcome.labels.destination_service_name = service.key.name.clone();
    outcome.labels.destination_service_namespace = service.key.namespace.clone();
    if proxy.flows.enabled() {
        outcome.flow.service = service.hostname.clone();
        outcome.flow.service_name = format!("{}/{}", service.key.namespace, service.key.name);
        outcome.flow.service_port = port;
    }
    let host = request_host(parts);
    authorize(
        proxy,
        snapshot,
        client,
        destination,
        Some((&service.key.namespace, &service.key.name)),
        &host,
        parts,
        outcome,
    )?;

    // Routing: only service-addressed traffic is routed (a pod's own address goes to that pod).
    let head = RequestHead {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        source_namespace: client.identity.as_deref().map(|i| i.namespace()),
        authority: &host,
        grpc: outcome.labels.request_protocol == "grpc",
    };
    let lookup = if service_addressed {
        snapshot.routes.lookup(&service.key, port, &head)
    } else {
        Lookup::NoRoutes
    };
    let routed = match lookup {
        Lookup::NoMatch => return Err(local(StatusCode::NOT_FOUND, "NR", "no route matched\n")),
        Lookup::NoRoutes => Routed::Direct(&target),
        Lookup::Matched(m) => Routed::Rule {
            rule: m.rule,
            matched_prefix: m.matched_prefix.map(str::to_owned),
        },
    };
    forward(
        proxy, snapshot, client, routed, port, &host, parts, body, outcome,
    )
    .await
}

/// Request authentication (JWT), then authorization, as Envoy's jwt_authn and RBAC filters run
/// before the router. `service` is the addressed Service (mesh), `None` at a gateway listener
/// (only the policies attached to the Gateway apply).
#[allow(clippy::too_many_arguments)]
pub(super) fn authorize(
    proxy: &Proxy,
    snapshot: &Snapshot,
    client: &Client,
    destination: SocketAddr,
    service: Option<(&str, &str)>,
    host: &str,
    parts: &mut http::request::Parts,
    outcome: &mut Outcome,
) -> Result<(), Local> {
    let source = client.identity.as_deref();
    let auth = snapshot
        .authn
        .authenticate(service, parts, unix_now)
        .map_err(|refused| {
            outcome.flow.denied = true;
            outcome.entry.policy = format!("request authentication: {}", refused.0);
            proxy.record_denial(
                source,
                destination,
                format!("{} {}", parts.method, parts.uri.path()),
                format!("request authentication: {}", refused.0),
            );
            local(StatusCode::UNAUTHORIZED, "-", refused.0)
        })?;
    let decision = snapshot.policies.decide(&RequestAttrs {
        service,
        source,
        source_ip: client.addr.map(|a| a.ip()),
        destination_ip: destination.ip(),
        destination_port: destination.port(),
        sni: client.sni.as_deref(),
        http: Some(HttpAttrs {
            method: &parts.method,
            path: parts.uri.path(),
            host,
            headers: &parts.headers,
            auth: auth.as_ref(),
        }),
    });
    outcome.entry.policy = decision.describe();
    outcome.flow.policy = match &decision.reason {
        Reason::DeniedBy { policy, rule } | Reason::AllowedBy { policy, rule } => {
            Some((policy.clone(), Some(*rule)))
        }
        Reason::FailClosed { policy } => Some((policy.clone(), None)),
        Reason::NoAllowPolicies | Reason::NoAllowMatched { .. } => None,
    };
    if matches!(decision.verdict, Verdict::Deny) {
        outcome.flow.denied = true;
        proxy.record_denial(
            source,
            destination,
            format!("{} {}", parts.method, parts.uri.path()),
            decision.describe(),
        );
        return Err(local(StatusCode::FORBIDDEN, "DENY", "RBAC: access denied"));
    }
    Ok(())
}
