//! Requests through the waypoint: routing, filters, weights, authorization, protocols, errors,
//! metrics and reloads.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{metrics, sample, Mesh};

/// Three Services in `shop` (echo with both versions behind it, echo-v1, echo-v2), a route on
/// echo, and an AuthorizationPolicy on `secure`.
fn config(m: &Mesh) -> String {
    let ip = |h| m.ip(h);
    format!(
        r#"
services:
- name: echo
  namespace: shop
  vips: [{vip}]
  ports:
  - {{port: 80, targetPort: 8080, name: http}}
  - {{port: 9000, name: tcp-echo}}
  - {{port: 7070, targetPort: 8080, appProtocol: grpc}}
  - {{port: 81, targetPort: 8080}}
  endpoints:
  - {{address: {v1}, name: echo-v1-a, serviceAccount: echo, labels: {{app: echo, version: v1}}}}
  - {{address: {v2}, name: echo-v2-a, serviceAccount: echo, labels: {{app: echo, version: v2}}}}
- name: echo-v1
  namespace: shop
  vips: [{vip1}]
  ports: [{{port: 80, targetPort: 8080, name: http}}, {{port: 7070, targetPort: 8080, appProtocol: grpc}}]
  endpoints: [{{address: {v1}, name: echo-v1-a, serviceAccount: echo}}]
- name: echo-v2
  namespace: shop
  vips: [{vip2}]
  ports: [{{port: 80, targetPort: 8080, name: http}}, {{port: 7070, targetPort: 8080, appProtocol: grpc}}]
  endpoints: [{{address: {v2}, name: echo-v2-a, serviceAccount: echo}}]
- name: secure
  namespace: shop
  vips: [{vip3}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {v1}, name: echo-v1-a, serviceAccount: echo}}]
- name: down
  namespace: shop
  vips: [{vip4}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {v1}, name: echo-v1-a, serviceAccount: echo, healthy: false}}]
- name: legacy
  namespace: shop
  vips: [{vip5}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {plain}, name: legacy-1, protocol: TCP}}]
httpRoutes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: echo-routes, namespace: shop}}
  spec:
    parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
    rules:
    - matches: [{{headers: [{{name: version, value: v2}}]}}]
      backendRefs: [{{name: echo-v2, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters:
      - type: RequestRedirect
        requestRedirect: {{hostname: new.example.com, statusCode: 301}}
    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {{set: [{{name: x-route, value: v1}}], remove: [x-drop]}}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {{add: [{{name: x-served-by, value: waypoint}}]}}
      - type: URLRewrite
        urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}
      backendRefs: [{{name: echo-v1, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
      backendRefs:
      - {{name: echo-v1, port: 80, weight: 70}}
      - {{name: echo-v2, port: 80, weight: 30}}
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: items-from-frontend, namespace: shop}}
  spec:
    targetRefs: [{{group: "", kind: Service, name: secure}}]
    action: ALLOW
    rules:
    - from: [{{source: {{principals: [cluster.local/ns/shop/sa/frontend]}}}}]
      to: [{{operation: {{methods: [GET], paths: ["/items*"]}}}}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: block-flagged, namespace: shop}}
  spec:
    targetRefs: [{{group: "", kind: Service, name: secure}}]
    action: DENY
    rules:
    - when: [{{key: "request.headers[x-block]", values: ["yes"]}}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: no-quarantine, namespace: shop}}
  spec:
    targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]
    action: DENY
    rules:
    - from: [{{source: {{namespaces: [quarantine]}}}}]
"#,
        vip = ip(100),
        vip1 = ip(101),
        vip2 = ip(102),
        vip3 = ip(103),
        vip4 = ip(104),
        vip5 = ip(105),
        plain = ip(13),
        v1 = ip(11),
        v2 = ip(12),
    )
}

async fn setup() -> (Mesh, waypoint::Waypoint) {
    let m = Mesh::new();
    m.endpoint(11, "shop", "echo", "echo-v1-a").await;
    m.endpoint(12, "shop", "echo", "echo-v2-a").await;
    m.plain_endpoint(13, "legacy-1").await;
    let w = m.waypoint("shop", &config(&m)).await;
    (m, w)
}

fn vip(m: &Mesh, host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(m.ip(host), port)
}

#[tokio::test]
async fn routes_by_header_and_path_with_filters() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "frontend", vip(&m, 100, 80)).await;

    let a = c.send("GET", "/anything", &[("version", "v2")], "").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.echo("Hostname"), Some("echo-v2-a"));
    assert!(
        a.request_header("x-request-id").is_some(),
        "a request id is made"
    );
    assert!(
        a.request_header("traceparent").is_some(),
        "a trace is started"
    );
    assert_eq!(a.request_header("x-forwarded-proto"), Some("http"));

    let a = c.send("GET", "/v1/items?x=1", &[("x-drop", "1")], "").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.echo("Hostname"), Some("echo-v1-a"));
    assert_eq!(
        a.echo("URL"),
        Some("/items?x=1"),
        "prefix /v1 rewritten to /"
    );
    assert_eq!(a.request_header("x-route"), Some("v1"));
    assert_eq!(a.request_header("x-drop"), None);
    assert_eq!(a.headers["x-served-by"], "waypoint");

    let a = c.get("/old/page").await;
    assert_eq!(a.status, 301);
    assert_eq!(a.headers["location"], "http://new.example.com/old/page");

    let a = c.get("/nowhere").await;
    assert_eq!(a.status, 404, "no rule matches: no route");

    let text = metrics(&w).await;
    let labels = [
        ("reporter", "waypoint"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/frontend",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/echo",
        ),
        ("destination_service_name", "echo-v2"),
        ("response_code", "200"),
    ];
    assert_eq!(
        sample(&text, "istio_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[("response_code", "404"), ("response_flags", "NR")]
        ),
        Some(1.0)
    );
    assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    w.shutdown().await;
}

#[tokio::test]
async fn weights_split_traffic() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "frontend", vip(&m, 100, 80)).await;
    let mut v1 = 0;
    let n = 400;
    for _ in 0..n {
        let a = c.get("/split").await;
        assert_eq!(a.status, 200);
        if a.echo("Hostname") == Some("echo-v1-a") {
            v1 += 1;
        }
    }
    let share = v1 as f64 / n as f64;
    assert!(
        (0.62..=0.78).contains(&share),
        "70/30 split gave {share:.2} to v1"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn authorization_allows_and_denies_with_envoy_text() {
    let (m, w) = setup().await;
    let mut frontend = m.http1("shop", "frontend", vip(&m, 103, 80)).await;
    let a = frontend.get("/items/1").await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = frontend.send("POST", "/items", &[], "x").await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body, "RBAC: access denied");
    let a = frontend
        .send("GET", "/items/1", &[("x-block", "yes")], "")
        .await;
    assert_eq!(a.status, 403, "DENY wins over ALLOW");

    let mut other = m.http1("shop", "reports", vip(&m, 103, 80)).await;
    assert_eq!(
        other.get("/items/1").await.status,
        403,
        "not the allowed principal"
    );
    // Service-targeted policies do not reach other Services.
    let mut c = m.http1("shop", "reports", vip(&m, 101, 80)).await;
    assert_eq!(c.get("/items/1").await.status, 200);
    // A Gateway-targeted policy covers every Service of the waypoint.
    let mut q = m.http1("quarantine", "app", vip(&m, 101, 80)).await;
    assert_eq!(q.get("/").await.status, 403);

    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[("response_code", "403"), ("response_flags", "DENY")]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[
                ("source_workload_namespace", "quarantine"),
                ("response_code", "403")
            ]
        ),
        Some(1.0)
    );
    let dump = crate::support::get_text(w.addresses.admin, "/config_dump").await;
    assert!(
        dump.contains("denied by shop/block-flagged"),
        "denials name the policy: {dump}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn http2_and_grpc_pass_through_with_trailers() {
    let (m, w) = setup().await;
    let mut c = m.http2("shop", "frontend", vip(&m, 101, 80)).await;
    let a = c.send("GET", "/h2", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.echo("Proto"),
        Some("HTTP/2.0"),
        "HTTP/2 downstream stays HTTP/2 upstream"
    );

    let mut g = m.http2("shop", "frontend", vip(&m, 101, 7070)).await;
    let a = g
        .send(
            "POST",
            "/echo.Echo/Call",
            &[("content-type", "application/grpc"), ("te", "trailers")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let trailers = a.trailers.expect("gRPC trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "0")]
        ),
        Some(1.0),
        "{text}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn unknown_protocol_is_detected_and_tcp_is_relayed() {
    let (m, w) = setup().await;
    // Port 81 has no protocol: HTTP is recognised from its request line.
    let mut c = m.http1("shop", "frontend", vip(&m, 100, 81)).await;
    assert_eq!(c.get("/detected").await.status, 200);

    // Port 9000 is TCP: bytes go to an endpoint and come back.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = m.client("shop", "frontend", vip(&m, 100, 9000)).await;
    t.write_all(b"\x00\x01binary").await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"\x00\x01binary");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_tcp_connections_opened_total",
            &[("reporter", "waypoint")]
        ),
        Some(1.0),
        "{text}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn no_healthy_endpoint_is_503_and_a_bad_file_keeps_the_last_good_config() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "frontend", vip(&m, 104, 80)).await;
    let a = c.get("/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body, "no healthy upstream");

    std::fs::write(m.config_path(), "services: [{name: broken, bogus: 1}]").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dump = crate::support::get_text(w.addresses.admin, "/config_dump").await;
    assert!(
        dump.contains("bogus"),
        "the refusal names the field: {dump}"
    );
    let mut c = m.http1("shop", "frontend", vip(&m, 101, 80)).await;
    assert_eq!(
        c.get("/still").await.status,
        200,
        "the last good config stays"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn grpc_clients_get_errors_as_grpc_status() {
    let (m, w) = setup().await;
    // No healthy endpoint behind `down`: a gRPC caller sees UNAVAILABLE in a trailers-only answer.
    let mut g = m.http2("shop", "frontend", vip(&m, 104, 80)).await;
    let a = g
        .send(
            "POST",
            "/echo.Echo/Call",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.headers["grpc-status"], "14");
    assert_eq!(a.headers["grpc-message"], "no healthy upstream");
    let text = metrics(&w).await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[("grpc_response_status", "14"), ("response_flags", "UH")]
        ),
        Some(1.0),
        "{text}"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn endpoints_outside_the_mesh_are_reached_in_plain_tcp() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "frontend", vip(&m, 105, 80)).await;
    let a = c.get("/legacy").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.echo("Hostname"), Some("legacy-1"));
    assert!(
        a.request_header("x-request-id").is_some(),
        "through the waypoint"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Mesh::new();
    m.endpoint(11, "shop", "echo", "echo-v1-a").await;
    let w = m
        .waypoint_with("shop", &config(&m), |s| {
            s.request_header_timeout = Duration::from_millis(300)
        })
        .await;
    let mut t = m.client("shop", "frontend", vip(&m, 101, 80)).await;
    t.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open 5 s after a 300 ms header timeout");
    w.shutdown().await;
}

/// With tracing on, each request is a server span continuing the client's `traceparent`, whose
/// own context is what the application receives; spans reach an OTLP receiver.
#[tokio::test]
async fn requests_are_spans_continuing_the_callers_trace() {
    let m = Mesh::new();
    m.endpoint(11, "shop", "echo", "echo-v1-a").await;
    m.endpoint(12, "shop", "echo", "echo-v2-a").await;
    m.plain_endpoint(13, "legacy-1").await;
    let (collector, grpc, _) = meshctl::otlp::start(Some("127.0.0.1:0".parse().unwrap()), None)
        .await
        .unwrap();
    let w = m
        .waypoint_with("shop", &config(&m), |s| {
            s.tracing.endpoint = Some(format!("http://{}", grpc.unwrap()));
            s.tracing.sampling = 1.0;
        })
        .await;
    let mut c = m.http1("shop", "frontend", vip(&m, 100, 80)).await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = c
        .send(
            "GET",
            "/anything",
            &[("version", "v2"), ("traceparent", caller)],
            "",
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let sent_on = a
        .request_header("traceparent")
        .expect("traceparent")
        .to_owned();
    let parts: Vec<&str> = sent_on.split('-').collect();
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace: {sent_on}"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "a new span: {sent_on}");
    assert_eq!(parts[3], "01", "still sampled: {sent_on}");
    // A request that starts no trace of its own gets one (sampling 1) whose flag says so.
    let b = c.send("POST", "/denied-or-not", &[], "x").await;
    let fresh = b.request_header("traceparent").map(str::to_owned);

    let span = collector
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().find(|s| s.span_id == parts[2]).cloned()
        })
        .await
        .unwrap();
    assert_eq!(
        (span.name.as_str(), span.kind, span.service.as_str()),
        ("waypoint request", "server", "waypoint")
    );
    assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/anything"),
        ("http.response.status_code", "200"),
        (
            "istio.source_principal",
            "spiffe://cluster.local/ns/shop/sa/frontend",
        ),
        (
            "istio.destination_service",
            "echo-v2.shop.svc.cluster.local",
        ),
        ("http.route", "shop/echo-routes"),
    ] {
        assert_eq!(span.attribute(key), Some(want), "{key}: {}", span.line());
    }
    if let Some(fresh) = fresh {
        assert!(fresh.ends_with("-01"), "{fresh}");
        let id = fresh.split('-').nth(2).unwrap().to_owned();
        let other = collector
            .wait_for(Duration::from_secs(10), |s| {
                s.iter().find(|s| s.span_id == id).cloned()
            })
            .await
            .unwrap();
        assert_eq!(other.parent_span_id, "", "a new trace: {}", other.line());
    }
    drop(w);
}
