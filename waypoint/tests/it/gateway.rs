//! Gateway mode: the waypoint serving an ingress Gateway's HTTP listener on its bind address,
//! clients outside the mesh connecting over plain TCP from their own loopback addresses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::support::{get_text, metrics, read, sample, Answer, Mesh};

pub const HTTP_PORT: u16 = 18080;
pub const HTTPS_PORT: u16 = 18443;

/// What varies between the tests' configurations.
#[derive(Default)]
pub struct Gw {
    /// HTTPS listeners on [`HTTPS_PORT`]: `(name, hostname, certificates)`, the certificates as
    /// YAML flow entries (see [`cert_yaml`]).
    pub https: Vec<(&'static str, &'static str, String)>,
    /// A ReferenceGrant in `other` for HTTPRoutes of `shop`.
    pub grant: bool,
    /// One more HTTP listener on this port.
    pub extra_port: Option<u16>,
}

/// A certificate entry of a listener, PEM as JSON strings (valid YAML).
pub fn cert_yaml(secret: &str, chain: &str, key: &str) -> String {
    format!(
        "{{secret: {secret}, certChain: {}, privateKey: {}}}",
        serde_json::to_string(chain).unwrap(),
        serde_json::to_string(key).unwrap()
    )
}

/// Services `shop/alpha` (endpoint at ip(11), HBONE), `shop/beta` (ip(12), HBONE) and
/// `other/api` (ip(13), outside the mesh); the Gateway `shop/edge` with an HTTP listener on
/// [`HTTP_PORT`] and the HTTPS ones of `gw`; routes by host; policies on the Gateway (DENY
/// `/admin`, ALLOW only clients in 127.77.n.200/31).
pub fn config(m: &Mesh, gw: &Gw) -> String {
    let mut listeners = format!("  - {{name: http, port: {HTTP_PORT}, protocol: HTTP}}\n");
    for (name, hostname, certs) in &gw.https {
        listeners.push_str(&format!(
            "  - {{name: {name}, port: {HTTPS_PORT}, protocol: HTTPS, hostname: {hostname}, certificates: [{certs}]}}\n"
        ));
    }
    if let Some(port) = gw.extra_port {
        listeners.push_str(&format!(
            "  - {{name: extra, port: {port}, protocol: HTTP}}\n"
        ));
    }
    let grants = if gw.grant {
        "  referenceGrants:\n  - {namespace: other, from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{group: \"\", kind: Service, name: api}]}\n"
    } else {
        ""
    };
    format!(
        r#"
services:
- name: alpha
  namespace: shop
  vips: [{vip_a}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {a}, name: alpha-1, serviceAccount: alpha}}]
- name: beta
  namespace: shop
  vips: [{vip_b}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {b}, name: beta-1, serviceAccount: beta}}]
- name: api
  namespace: other
  vips: [{vip_c}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {c}, name: api-1, protocol: TCP}}]
ingress:
  namespace: shop
  name: edge
  listeners:
{listeners}{grants}
httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: alpha, namespace: shop}}
  spec:
    parentRefs: [{{name: edge}}]
    hostnames: [a.example.com]
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /hdr}}}}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {{set: [{{name: x-gw, value: edge}}], remove: [x-drop]}}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {{add: [{{name: x-served-by, value: gateway}}]}}
      backendRefs: [{{name: alpha, port: 80}}]
    - backendRefs: [{{name: alpha, port: 80}}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: beta, namespace: shop}}
  spec:
    parentRefs: [{{name: edge}}]
    hostnames: ["*.b.example.com", b.example.com]
    rules:
    - backendRefs: [{{name: beta, port: 80}}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: to-https, namespace: shop}}
  spec:
    parentRefs: [{{name: edge, sectionName: http}}]
    hostnames: [secure.example.com]
    rules:
    - filters:
      - type: RequestRedirect
        requestRedirect: {{scheme: https, statusCode: 301}}
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: cross, namespace: shop}}
  spec:
    parentRefs: [{{name: edge, sectionName: http}}]
    hostnames: [api.example.com]
    rules:
    - backendRefs: [{{name: api, namespace: other, port: 80}}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: mesh, namespace: shop}}
  spec:
    parentRefs: [{{group: "", kind: Service, name: alpha}}]
    rules:
    - backendRefs: [{{name: beta, port: 80}}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: no-admin, namespace: shop}}
  spec:
    targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
    action: DENY
    rules:
    - to: [{{operation: {{paths: ["/admin*"]}}}}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: known-clients, namespace: shop}}
  spec:
    targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
    action: ALLOW
    rules:
    - from: [{{source: {{remoteIpBlocks: ["{allowed}/31"]}}}}]
"#,
        vip_a = m.ip(101),
        vip_b = m.ip(102),
        vip_c = m.ip(103),
        a = m.ip(11),
        b = m.ip(12),
        c = m.ip(13),
        allowed = m.ip(200),
    )
}

/// Endpoints and the waypoint in gateway mode.
pub async fn setup(gw: &Gw) -> (Mesh, waypoint::Waypoint) {
    let m = Mesh::new();
    m.endpoint(11, "shop", "alpha", "alpha-1").await;
    m.endpoint(12, "shop", "beta", "beta-1").await;
    m.plain_endpoint(13, "api-1").await;
    let w = m.waypoint("shop", &config(&m, gw)).await;
    (m, w)
}

/// Replaces the configuration file whole (written aside, then renamed).
pub fn rewrite(m: &Mesh, config: &str) {
    let aside = m.config_path().with_extension("new");
    std::fs::write(&aside, config).unwrap();
    std::fs::rename(&aside, m.config_path()).unwrap();
}

/// A TCP connection from `ip(from)` to the waypoint's `port`.
pub async fn connect(m: &Mesh, from: u8, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(m.ip(from), 0)).unwrap();
    socket
        .connect(SocketAddr::new(m.ip(1), port))
        .await
        .expect("the gateway listener accepts")
}

/// HTTP/1.1 over `io`.
pub async fn http1<I>(io: I) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.unwrap();
    let response = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("response");
    read(response).await
}

/// One request on a new connection from `ip(200)` to the HTTP listener.
async fn get(m: &Mesh, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut c = http1(connect(m, 200, HTTP_PORT).await).await;
    send(&mut c, host, path, headers).await
}

#[tokio::test]
async fn routes_by_host_with_filters_and_forwarding_headers() {
    let (m, w) = setup(&Gw::default()).await;
    let mut c = http1(connect(&m, 200, HTTP_PORT).await).await;

    let a = send(&mut c, "a.example.com", "/", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.echo("Hostname"), Some("alpha-1"));
    assert_eq!(a.request_header("x-forwarded-proto"), Some("http"));
    let client = m.ip(200).to_string();
    assert_eq!(a.request_header("x-forwarded-for"), Some(client.as_str()));
    assert!(a.request_header("x-request-id").is_some());

    // Same connection, another host (port and case ignored), a wildcard hostname.
    let a = send(&mut c, "B.Example.com:18080", "/", &[]).await;
    assert_eq!(a.echo("Hostname"), Some("beta-1"), "{a:?}");
    let a = send(&mut c, "x.b.example.com", "/", &[("x-request-id", "abc")]).await;
    assert_eq!(a.echo("Hostname"), Some("beta-1"), "{a:?}");
    assert_eq!(a.request_header("x-request-id"), Some("abc"));

    // Header modifiers; x-forwarded-for appended to what the client sent.
    let a = send(
        &mut c,
        "a.example.com",
        "/hdr",
        &[("x-drop", "1"), ("x-forwarded-for", "192.0.2.9")],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.request_header("x-gw"), Some("edge"));
    assert_eq!(a.request_header("x-drop"), None);
    assert_eq!(a.headers["x-served-by"], "gateway");
    let forwarded = format!("192.0.2.9, {client}");
    assert_eq!(
        a.request_header("x-forwarded-for"),
        Some(forwarded.as_str())
    );

    // No virtual host for this name: 404.
    let a = send(&mut c, "unknown.example.com", "/", &[]).await;
    assert_eq!(a.status, 404, "{a:?}");

    // HTTP to HTTPS.
    let a = send(&mut c, "secure.example.com", "/login?next=%2F", &[]).await;
    assert_eq!(a.status, 301, "{a:?}");
    assert_eq!(
        a.headers["location"],
        "https://secure.example.com/login?next=%2F"
    );

    let text = metrics(&w).await;
    // The gateway reports as the source (Istio's gateways do): its own workload and identity.
    let labels = [
        ("reporter", "source"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/waypoint",
        ),
        ("source_workload", "waypoint"),
        ("destination_service_name", "alpha"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/alpha",
        ),
        ("connection_security_policy", "unknown"),
        ("response_code", "200"),
    ];
    assert_eq!(
        sample(&text, "istio_requests_total", &labels),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("response_code", "404"),
                ("response_flags", "NR")
            ]
        ),
        Some(1.0)
    );

    // The HBONE listener still serves mesh callers, with the mesh routes.
    let mut mesh = m
        .http1("shop", "frontend", SocketAddr::new(m.ip(101), 80))
        .await;
    let a = mesh.get("/").await;
    assert_eq!(a.echo("Hostname"), Some("beta-1"), "mesh route on alpha");
    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("destination_service_name", "beta")
            ]
        ),
        Some(1.0),
        "{text}"
    );

    // The request record's source is the client: its address, no identity.
    let flows = get_text(w.addresses.admin, "/flows?limit=50").await;
    let record = flows
        .lines()
        .find(|l| l.contains("alpha") && l.contains(&format!("\"{client}:")))
        .unwrap_or_else(|| panic!("a record from {client}: {flows}"));
    let record: serde_json::Value = serde_json::from_str(record).unwrap();
    let principal = record["source"]["principal"].as_str().unwrap_or_default();
    assert_eq!(principal, "", "{record}");
    assert_eq!(record["mtls"], false, "{record}");

    let dump = get_text(w.addresses.admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["gateway"]["gateway"], "shop/edge");
    assert_eq!(dump["gateway"]["listeners"][0]["port"], HTTP_PORT);
    assert_eq!(dump["gateway"]["sockets"]["bound"][0]["port"], HTTP_PORT);
    assert_eq!(
        w.gateway.addresses(),
        [(HTTP_PORT, SocketAddr::new(m.ip(1), HTTP_PORT))]
    );
    assert!(dump["routeTable"]["gatewayListeners"][0]["virtualHosts"].is_array());
    w.shutdown().await;
}

#[tokio::test]
async fn cross_namespace_backends_need_a_reference_grant() {
    let (m, w) = setup(&Gw::default()).await;
    let a = get(&m, "api.example.com", "/", &[]).await;
    assert_eq!(a.status, 500, "no ReferenceGrant: {a:?}");
    let dump = get_text(w.addresses.admin, "/config_dump").await;
    assert!(dump.contains("RefNotPermitted"), "{dump}");

    let granted = Gw {
        grant: true,
        ..Gw::default()
    };
    rewrite(&m, &config(&m, &granted));
    let mut last = 0;
    for _ in 0..100 {
        let a = get(&m, "api.example.com", "/", &[]).await;
        last = a.status;
        if last == 200 {
            assert_eq!(a.echo("Hostname"), Some("api-1"), "plain TCP upstream");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 200, "the grant applies once the file is reloaded");
    w.shutdown().await;
}

#[tokio::test]
async fn authorization_policies_target_the_gateway() {
    let (m, w) = setup(&Gw::default()).await;
    let a = get(&m, "a.example.com", "/admin/users", &[]).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.body, "RBAC: access denied");
    let a = get(&m, "a.example.com", "/public", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    // Outside the allowed client block (127.77.n.200/31).
    let mut c = http1(connect(&m, 202, HTTP_PORT).await).await;
    let a = send(&mut c, "a.example.com", "/public", &[]).await;
    assert_eq!(a.status, 403, "{a:?}");
    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[("reporter", "source"), ("response_flags", "DENY")]
        ),
        Some(2.0),
        "{text}"
    );
    let dump = get_text(w.addresses.admin, "/config_dump").await;
    assert!(dump.contains("denied by shop/no-admin rule 0"), "{dump}");
    w.shutdown().await;
}

#[tokio::test]
async fn listener_ports_follow_the_configuration_and_bind_failures_unready() {
    let (m, w) = setup(&Gw::default()).await;
    let ready = |w: &waypoint::Waypoint| get_text(w.addresses.readiness, "/healthz/ready");
    assert_eq!(ready(&w).await, "ready\n");

    // A port someone else holds: logged, reported, not ready; the other port keeps serving.
    let squatter = tokio::net::TcpListener::bind((m.ip(1), 18081))
        .await
        .unwrap();
    let with_extra = Gw {
        extra_port: Some(18081),
        ..Gw::default()
    };
    rewrite(&m, &config(&m, &with_extra));
    let mut unready = false;
    for _ in 0..100 {
        if ready(&w).await == "not ready\n" {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        unready,
        "a configured port that failed to bind makes it unready"
    );
    let dump = get_text(w.addresses.admin, "/config_dump").await;
    assert!(dump.contains("\"failed\""), "{dump}");
    assert_eq!(
        get(&m, "a.example.com", "/", &[]).await.status,
        200,
        "the other port still serves"
    );

    // The port freed: bound on the next retry, ready again.
    drop(squatter);
    let mut bound = false;
    for _ in 0..200 {
        if ready(&w).await == "ready\n" {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bound, "retried and bound once free");
    let mut c = http1(connect(&m, 200, 18081).await).await;
    assert_eq!(send(&mut c, "a.example.com", "/", &[]).await.status, 200);

    // Removed from the configuration: no longer accepting.
    rewrite(&m, &config(&m, &Gw::default()));
    let mut closed = false;
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if socket
            .connect(SocketAddr::new(m.ip(1), 18081))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "a port no longer configured stops accepting");
    // The connection opened before goes on.
    assert_eq!(send(&mut c, "a.example.com", "/", &[]).await.status, 404);
    w.shutdown().await;
}
