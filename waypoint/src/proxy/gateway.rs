//! Gateway mode's request path: HTTP on a connection accepted by a gateway listener
//! (`crate::gateway::listeners`, TLS already terminated for HTTPS), per request the Gateway's
//! request authentication and authorization (the client has no mesh identity: only its
//! address), the virtual host by Host and its rules (`RouteTable::lookup_gateway`), then the
//! same forwarding as mesh routes ([`super::forward`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderValue, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::attempt::{local, Local};
use super::body::Body;
use super::forward::{forward, Routed};
use super::http::{authorize, request_host, serve_conn, Conn};
use super::outcome::Outcome;
use super::{headers, Client, Proxy};
use crate::config::Snapshot;
use crate::route::{Lookup, RequestHead};

const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The gateway listener a connection came in on.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    pub port: u16,
    /// TLS terminated here: `x-forwarded-proto: https`, redirects default to https.
    pub https: bool,
}

/// A gateway listener connection: who connected, on which socket, with which TLS name.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub listener: Listener,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub sni: Option<String>,
}

/// Serves HTTP/1.1 and HTTP/2 on an accepted gateway connection until the client closes it, or
/// gracefully once `drain` turns true.
pub async fn serve<S>(
    proxy: Arc<Proxy>,
    stream: S,
    accepted: Accepted,
    drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        client: Client {
            identity: None,
            addr: Some(accepted.peer),
            sni: accepted.sni,
            baggage: Default::default(),
        },
        destination: accepted.local,
        gateway: Some(accepted.listener),
    };
    serve_conn(proxy, stream, conn, Some(drain)).await
}

/// One request at a gateway listener.
#[allow(clippy::too_many_arguments)]
pub(super) async fn route_and_forward(
    proxy: &Arc<Proxy>,
    snapshot: &Snapshot,
    client: &Client,
    listener: &Listener,
    destination: SocketAddr,
    parts: &mut http::request::Parts,
    body: Body,
    outcome: &mut Outcome,
) -> Result<Response<Body>, Local> {
    // The edge says how the client came in, and from where (Envoy with use_remote_address).
    parts.headers.insert(
        headers::FORWARDED_PROTO,
        HeaderValue::from_static(if listener.https { "https" } else { "http" }),
    );
    if let Some(addr) = client.addr {
        append_forwarded_for(&mut parts.headers, addr.ip());
    }
    if proxy.flows.enabled() {
        if let Some(ingress) = &snapshot.ingress {
            outcome.flow.service_name = format!("{}/{}", ingress.namespace, ingress.name);
        }
        outcome.flow.service_port = listener.port;
    }
    let host = request_host(parts);
    authorize(
        proxy,
        snapshot,
        client,
        destination,
        None,
        &host,
        parts,
        outcome,
    )?;
    let head = RequestHead {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        source_namespace: None,
        authority: &host,
        grpc: outcome.labels.request_protocol == "grpc",
    };
    let routed = match snapshot.routes.lookup_gateway(listener.port, &host, &head) {
        Lookup::Matched(m) => Routed::Rule {
            rule: m.rule,
            matched_prefix: m.matched_prefix.map(str::to_owned),
        },
        Lookup::NoMatch | Lookup::NoRoutes => {
            return Err(local(StatusCode::NOT_FOUND, "NR", "no route matched\n"))
        }
    };
    forward(
        proxy,
        snapshot,
        client,
        routed,
        listener.port,
        &host,
        parts,
        body,
        outcome,
    )
    .await
}

/// `x-forwarded-for` with the client's address appended to what it sent.
fn append_forwarded_for(headers: &mut http::HeaderMap, ip: std::net::IpAddr) {
    let ip = ip.to_canonical();
    let sent: Vec<&str> = headers
        .get_all(&FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if sent.is_empty() {
        ip.to_string()
    } else {
        format!("{}, {ip}", sent.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = http::HeaderMap::new();
        append_forwarded_for(&mut h, [10, 0, 0, 1].into());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        h.append(FORWARDED_FOR, HeaderValue::from_static("192.0.2.7"));
        append_forwarded_for(&mut h, [10, 0, 0, 2].into());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7, 10.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}
