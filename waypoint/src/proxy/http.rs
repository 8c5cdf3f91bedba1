//! HTTP through the waypoint: one hyper server (HTTP/1.1 and HTTP/2 on the same stream) per
//! tunnel, and per request: authorize, route, apply the rule's filters, pick a backend and an
//! endpoint, forward (with the rule's timeouts and retries), and record the outcome.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, LOCATION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshcore::l7::service::Protocol;
use tokio::io::{AsyncRead, AsyncWrite};

use super::attempt::{self, local, pick_error, Local, Picked, Upstreamed};
use super::body::{self, Body, Metered};
use super::outcome::{CountInto, FlowFacts, Outcome};
use super::rand::next_u64 as random;
use super::upstream::{Destination, Version};
use super::{headers, Client, Proxy};
use crate::access_log::AccessEntry;
use crate::authz::{HttpAttrs, Reason, RequestAttrs, Verdict};
use crate::config::{Snapshot, Target};
use crate::metrics::{Peer, RequestLabels, RouteLabels};
use crate::route::{Backend, CompiledRule, Lookup, RequestHead};
use crate::traffic::balance;

/// Serves HTTP on one accepted tunnel until the client closes it.
pub async fn serve<S>(proxy: Arc<Proxy>, stream: S, client: Client, destination: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = proxy.settings.header_timeout;
    let conn = Arc::new((client, destination));
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
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%destination, "HTTP connection ended: {e}");
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<(Client, SocketAddr)>,
    req: Request<Incoming>,
) -> Response<Body> {
    let (client, destination) = (&conn.0, conn.1);
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
        labels: labels(&proxy, client, grpc),
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
    let result = route_and_forward(
        &proxy,
        &snapshot,
        client,
        destination,
        &mut parts,
        body,
        &mut outcome,
    )
    .await;
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

fn labels(proxy: &Proxy, client: &Client, grpc: bool) -> RequestLabels {
    let b = &client.baggage;
    RequestLabels {
        source: Peer {
            workload: b.workload_name.clone().unwrap_or_default(),
            namespace: client.identity.namespace().to_owned(),
            principal: client.identity.to_string(),
            app: b.service_name.clone().unwrap_or_default(),
            version: b.service_version.clone().unwrap_or_default(),
        },
        cluster: proxy.settings.cluster.clone(),
        request_protocol: if grpc { "grpc" } else { "http" },
        ..Default::default()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The request's host as the client addressed it (HTTP/2 `:authority`, else `Host`).
fn request_host(parts: &http::request::Parts) -> String {
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

#[allow(clippy::too_many_arguments)]
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
    let (service, port, protocol) = match &target {
        Target::Service { service, port } => (*service, port.port, port.protocol()),
        Target::Workload {
            service,
            port,
            protocol,
            ..
        } => (*service, *port, *protocol),
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

    // Request authentication (JWT), then authorization, as Envoy's jwt_authn and RBAC filters
    // run before the router.
    let auth = snapshot
        .authn
        .authenticate(
            Some((&service.key.namespace, &service.key.name)),
            parts,
            unix_now,
        )
        .map_err(|refused| {
            outcome.flow.denied = true;
            outcome.entry.policy = format!("request authentication: {}", refused.0);
            proxy.record_denial(
                &client.identity,
                destination,
                format!("{} {}", parts.method, parts.uri.path()),
                format!("request authentication: {}", refused.0),
            );
            local(StatusCode::UNAUTHORIZED, "-", refused.0)
        })?;
    let decision = snapshot.policies.decide(&RequestAttrs {
        service: Some((&service.key.namespace, &service.key.name)),
        source: Some(&client.identity),
        source_ip: client.addr.map(|a| a.ip()),
        destination_ip: destination.ip(),
        destination_port: destination.port(),
        sni: None,
        http: Some(HttpAttrs {
            method: &parts.method,
            path: parts.uri.path(),
            host: &host,
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
            &client.identity,
            destination,
            format!("{} {}", parts.method, parts.uri.path()),
            decision.describe(),
        );
        return Err(local(StatusCode::FORBIDDEN, "DENY", "RBAC: access denied"));
    }

    // Routing: only service-addressed traffic is routed (a pod's own address goes to that pod).
    let head = RequestHead {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        source_namespace: Some(client.identity.namespace()),
        authority: &host,
        grpc: outcome.labels.request_protocol == "grpc",
    };
    let lookup = if service_addressed {
        snapshot.routes.lookup(&service.key, port, &head)
    } else {
        Lookup::NoRoutes
    };
    let (rule, matched_prefix) = match lookup {
        Lookup::NoMatch => return Err(local(StatusCode::NOT_FOUND, "NR", "no route matched\n")),
        Lookup::NoRoutes => (None, None),
        Lookup::Matched(m) => (Some(m.rule), m.matched_prefix.map(str::to_owned)),
    };
    if let Some(rule) = rule {
        outcome.entry.route = rule.route.to_string();
        if rule.filters.unresolved_extension.is_some() {
            // A filter this mesh cannot apply may not be skipped (Gateway API): 500.
            return Err(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "-",
                "route filter not supported\n",
            ));
        }
        if let Some(redirect) = &rule.filters.redirect {
            let (hostname, host_port) = split_host_port(&host);
            let scheme = parts
                .headers
                .get(headers::FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("http")
                .to_owned();
            let (status, location) = redirect.location(
                &scheme,
                hostname,
                host_port.or(Some(port)),
                parts.uri.path(),
                parts.uri.query(),
                matched_prefix.as_deref(),
            );
            return Response::builder()
                .status(status)
                .header(LOCATION, location)
                .body(body::full(Bytes::new()))
                .map_err(|_| {
                    local(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "-",
                        "bad redirect location\n",
                    )
                });
        }
    }

    // The backend: the rule's weighted pick, or the addressed service itself.
    let (backend_service, backend_port, backend) = match rule {
        Some(rule) => {
            let backend = rule.pick_backend(random()).ok_or(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "NR",
                "no backend for this route\n",
            ))?;
            let unresolved = local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "NR",
                "backend not found\n",
            );
            if !backend.resolved {
                return Err(unresolved);
            }
            let svc = snapshot.service(&backend.service).ok_or(unresolved)?;
            outcome.route = Some(RouteLabels {
                route: rule.route.clone(),
                kind: rule.kind.as_str(),
                rule: rule.metric_rule.clone(),
                backend: backend.metric_name.clone(),
            });
            outcome.classes = rule.classes.clone();
            (svc, backend.port.unwrap_or(port), Some(backend))
        }
        None => (service, port, None),
    };

    // Filters: header modifiers at rule then backend level, then URL rewrite.
    if let Some(rule) = rule {
        if let Some(m) = &rule.filters.request_headers {
            m.apply(&mut parts.headers);
        }
        if let Some(m) = backend.and_then(|b| b.filters.request_headers.as_ref()) {
            m.apply(&mut parts.headers);
        }
    }
    let mut upstream_host = host.clone();
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    if let Some(rewrite) = rule.and_then(|r| r.filters.rewrite.as_ref()) {
        if let Some(path) = rewrite.path(parts.uri.path(), matched_prefix.as_deref()) {
            path_and_query = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
        }
        if let Some(h) = rewrite.hostname() {
            upstream_host = h.to_owned();
        }
    }

    // Istio fault injection: a delay, or an answer instead of the upstream's.
    if let Some(fault) = rule.and_then(|r| r.fault.as_ref()) {
        if let Some(aborted) =
            attempt::inject(fault, outcome.labels.request_protocol == "grpc").await
        {
            outcome.entry.flag = "FI";
            return Ok(aborted);
        }
    }

    // The endpoint (by the DestinationRule's subset and balancer), and how to speak to it.
    let subset = backend.and_then(|b| b.subset.as_deref());
    let mut set_cookie = None;
    let mut picked = None;
    let (endpoint, target_port, upstream_protocol) = match &target {
        Target::Workload { endpoint, port, .. } if backend.is_none() => {
            ((*endpoint).clone(), *port, protocol)
        }
        _ => {
            let svc_port = backend_service.port(backend_port).ok_or(local(
                StatusCode::SERVICE_UNAVAILABLE,
                "NR",
                "backend port not found\n",
            ))?;
            let choice = backend_service
                .pick(
                    subset,
                    backend_port,
                    &balance::Request {
                        headers: &parts.headers,
                        query: parts.uri.query(),
                        source_ip: client.addr.map(|a| a.ip()),
                        random: random(),
                    },
                    attempt::now_ms(),
                )
                .map_err(pick_error)?;
            set_cookie = choice.set_cookie;
            picked = Some(Picked {
                service: backend_service,
                subset,
                port: backend_port,
                target_port: svc_port.target_port(),
                index: choice.index,
            });
            (
                backend_service.endpoints[choice.index].clone(),
                svc_port.target_port(),
                svc_port.protocol(),
            )
        }
    };
    outcome.labels.destination = Peer {
        workload: endpoint.name.clone().unwrap_or_default(),
        namespace: endpoint.namespace.clone(),
        principal: endpoint.identity.to_string(),
        app: endpoint.labels.get("app").cloned().unwrap_or_default(),
        version: endpoint.labels.get("version").cloned().unwrap_or_default(),
    };
    outcome.labels.destination_service = backend_service.hostname.clone();
    outcome.labels.destination_service_name = backend_service.key.name.clone();
    outcome.labels.destination_service_namespace = backend_service.key.namespace.clone();
    let dest = Destination {
        target: SocketAddr::new(endpoint.address, target_port),
        hbone: endpoint.hbone,
        expected: backend_service.expected_identities(&endpoint),
    };
    outcome.entry.upstream = dest.target.to_string();
    outcome.flow.upstream = Some(dest.target);
    let version = match upstream_protocol {
        Protocol::Http2 | Protocol::Grpc => Version::Http2,
        _ if parts.version == HttpVersion::HTTP_2 => Version::Http2,
        _ => Version::Http1,
    };

    // Headers for the next hop.
    let upgrade = parts.headers.contains_key(UPGRADE) && version == Version::Http1;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded_proto(&mut parts.headers);
    match &outcome.hop {
        Some(hop) => headers::set_trace(&mut parts.headers, hop.context),
        None => {
            headers::continue_trace(&mut parts.headers);
        }
    }
    if proxy.settings.forward_client_cert {
        headers::set_client_cert(
            &mut parts.headers,
            &proxy.identity.to_string(),
            Some(&client.identity.to_string()),
        );
    }
    let uri: Uri = match version {
        Version::Http1 => path_and_query.parse(),
        Version::Http2 => format!("http://{upstream_host}{path_and_query}").parse(),
    }
    .map_err(|_| local(StatusCode::BAD_REQUEST, "-", "invalid request target\n"))?;
    match version {
        Version::Http1 => {
            if let Ok(h) = HeaderValue::from_str(&upstream_host) {
                parts.headers.insert(HOST, h);
            }
        }
        Version::Http2 => {
            parts.headers.remove(HOST);
        }
    }
    let downstream_version = parts.version;
    let downstream_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();

    if let Some(rule) = rule {
        if !rule.filters.mirrors.is_empty() {
            mirror(
                proxy,
                snapshot,
                rule,
                &parts.method,
                &uri,
                &parts.headers,
                &body,
                version,
            );
        }
    }
    let send = Upstreamed {
        proxy,
        dest,
        picked,
        version,
        method: parts.method.clone(),
        uri,
        headers: std::mem::take(&mut parts.headers),
    };
    let mut response = match rule {
        Some(rule) => {
            send.with_policy(rule, body, &mut outcome.entry.attempts)
                .await?
        }
        None => send.once(body, None, 1).await?,
    };
    // Answer in the client's HTTP version, whatever the backend spoke (an HTTP/1.0 server
    // behind an HTTP/1.1 client, HTTP/2 upstream for an HTTP/1.1 client...).
    *response.version_mut() = downstream_version;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(splice_upgraded(downstream, upstream));
        }
    } else {
        headers::strip_hop_by_hop(response.headers_mut(), false);
    }
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    if let Some(rule) = rule {
        if let Some(m) = &rule.filters.response_headers {
            m.apply(response.headers_mut());
        }
        if let Some(m) = backend.and_then(|b: &Backend| b.filters.response_headers.as_ref()) {
            m.apply(response.headers_mut());
        }
    }
    let (parts, incoming) = response.into_parts();
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

/// Sends a copy of the request to each mirror backend (per its percentage) and forgets the
/// answer. Bodies are not copied: only requests without one are mirrored. As Envoy, the copy's
/// Host / `:authority` gets `-shadow` after the host name (`reviews:9080` → `reviews-shadow:9080`),
/// so the mirror can tell copies from real traffic.
#[allow(clippy::too_many_arguments)]
fn mirror(
    proxy: &Arc<Proxy>,
    snapshot: &Snapshot,
    rule: &CompiledRule,
    method: &Method,
    uri: &Uri,
    headers: &http::HeaderMap,
    body: &Body,
    version: Version,
) {
    use http_body::Body as _;
    if !body.is_end_stream() {
        return;
    }
    for m in &rule.filters.mirrors {
        if (random() % 10_000) as f64 >= m.percent * 100.0 {
            continue;
        }
        let Some(service) = snapshot.service(&m.service) else {
            continue;
        };
        let port = m
            .port
            .and_then(|p| service.port(p))
            .or_else(|| service.ports.first());
        let (Some(port), Some(endpoint)) = (port, service.pick_endpoint()) else {
            continue;
        };
        let dest = Destination {
            target: SocketAddr::new(endpoint.address, port.target_port()),
            hbone: endpoint.hbone,
            expected: service.expected_identities(endpoint),
        };
        let mut req = Request::new(body::full(Bytes::new()));
        *req.method_mut() = method.clone();
        *req.headers_mut() = headers.clone();
        let shadow = |authority: &str| {
            let (host, port) = split_host_port(authority);
            match port {
                Some(p) => format!("{host}-shadow:{p}"),
                None => format!("{host}-shadow"),
            }
        };
        let mut shadow_uri = uri.clone();
        if let Some(authority) = uri.authority() {
            let mut parts = uri.clone().into_parts();
            parts.authority = shadow(authority.as_str()).parse().ok();
            if let Ok(u) = Uri::from_parts(parts) {
                shadow_uri = u;
            }
        }
        *req.uri_mut() = shadow_uri;
        if let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
            if let Ok(v) = http::HeaderValue::from_str(&shadow(host)) {
                req.headers_mut().insert(HOST, v);
            }
        }
        if version == Version::Http2 {
            *req.version_mut() = HttpVersion::HTTP_2;
        }
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Ok(response) = proxy.upstream.send(&dest, version, req).await {
                let _ = response.into_body().collect().await;
            }
        });
    }
}

async fn splice_upgraded(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        }
        Err(e) => tracing::debug!("upgrade failed: {e}"),
    }
}

/// `host[:port]` split; IPv6 literals keep their brackets.
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (host, None),
        Some((h, p)) => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("echo:8080"), ("echo", Some(8080)));
        assert_eq!(split_host_port("echo"), ("echo", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
