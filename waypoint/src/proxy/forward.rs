//! The part of a request's way shared by mesh and gateway traffic once routing has chosen a
//! rule (or, for the mesh, the addressed Service or pod itself): redirects, the backend by
//! weight, filters and rewrites, fault injection, the endpoint by the DestinationRule's
//! balancer, headers for the next hop, mirrors, the upstream exchange with the rule's timeouts
//! and retries, and the response filters.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, LOCATION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use meshcore::l7::service::Protocol;

use super::attempt::{self, local, pick_error, Local, Picked, Upstreamed};
use super::body::{self, Body};
use super::outcome::Outcome;
use super::rand::next_u64 as random;
use super::upstream::{Destination, Version};
use super::{headers, Client, Proxy};
use crate::config::{Snapshot, Target};
use crate::metrics::{Peer, RouteLabels};
use crate::route::{Backend, CompiledRule};
use crate::traffic::balance;

/// What routing chose for a request.
pub(super) enum Routed<'s> {
    /// A route rule, and the `PathPrefix` it matched (for `ReplacePrefixMatch`).
    Rule {
        rule: &'s CompiledRule,
        matched_prefix: Option<String>,
    },
    /// No route applies (mesh only): the addressed Service, or the addressed pod, unchanged.
    Direct(&'s Target<'s>),
}

/// Forwards a routed request and returns the response to send downstream (or the waypoint's
/// own answer). `port` is the request's port (the Service port, or the gateway listener's):
/// a backendRef or a redirect without a port uses it; `host` is the Host / `:authority` as
/// sent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    proxy: &Arc<Proxy>,
    snapshot: &Snapshot,
    client: &Client,
    routed: Routed<'_>,
    port: u16,
    host: &str,
    parts: &mut http::request::Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response<Body>, Local> {
    let (rule, matched_prefix, direct) = match routed {
        Routed::Rule {
            rule,
            matched_prefix,
        } => (Some(rule), matched_prefix, None),
        Routed::Direct(target) => (None, None, Some(target)),
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
            let (hostname, host_port) = split_host_port(host);
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
        None => match direct {
            Some(Target::Service { service, port }) => (*service, port.port, None),
            Some(Target::Workload { service, port, .. }) => (*service, *port, None),
            None => {
                return Err(local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "NR",
                    "no backend for this route\n",
                ))
            }
        },
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
    let mut upstream_host = host.to_owned();
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
    let (endpoint, target_port, upstream_protocol) = match direct {
        Some(Target::Workload {
            endpoint,
            port,
            protocol,
            ..
        }) if backend.is_none() => ((*endpoint).clone(), *port, *protocol),
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
            client.identity.as_ref().map(|i| i.to_string()).as_deref(),
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
