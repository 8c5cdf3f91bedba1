//! Istio traffic management through the waypoint: VirtualService routing to DestinationRule
//! subsets, weights, fault injection, timeouts, retries that move to another endpoint, outlier
//! detection, consistent hashing and the connection pool's limit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::Mesh;

/// `reviews` (v1 at .11, v2 at .12, v3 at .14), `flaky` (a live endpoint at .11 and one at .15
/// where nothing listens) and their VirtualServices and DestinationRules.
fn config(m: &Mesh) -> String {
    let ip = |h| m.ip(h);
    format!(
        r#"
services:
- name: reviews
  namespace: shop
  vips: [{vip}]
  ports: [{{port: 9080, targetPort: 8080, name: http}}]
  endpoints:
  - {{address: {v1}, name: reviews-v1, serviceAccount: reviews, labels: {{app: reviews, version: v1}}}}
  - {{address: {v2}, name: reviews-v2, serviceAccount: reviews, labels: {{app: reviews, version: v2}}}}
  - {{address: {v3}, name: reviews-v3, serviceAccount: reviews, labels: {{app: reviews, version: v3}}}}
- name: flaky
  namespace: shop
  vips: [{vip2}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints:
  - {{address: {v1}, name: reviews-v1, serviceAccount: reviews}}
  - {{address: {dead}, name: dead, serviceAccount: reviews}}
virtualServices:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata:
    name: reviews
    namespace: shop
    annotations:
      waypoint/response-classes: '{{"classified": [{{"condition": {{"status": {{"min": 404, "max": 404}}}}, "isFailure": true}}, {{"condition": {{"status": {{"min": 503, "max": 503}}}}, "isFailure": false}}]}}'
  spec:
    hosts: [reviews]
    http:
    - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
      route: [{{destination: {{host: reviews, subset: v2}}}}]
    - match: [{{uri: {{prefix: /abort}}}}]
      fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - match: [{{uri: {{prefix: /slow}}}}]
      fault: {{delay: {{fixedDelay: 300ms, percentage: {{value: 100}}}}}}
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - match: [{{uri: {{prefix: /deadline}}}}]
      timeout: 200ms
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - match: [{{uri: {{prefix: /sticky}}}}]
      route: [{{destination: {{host: reviews, subset: sticky}}}}]
    - match: [{{uri: {{prefix: /pool}}}}]
      route: [{{destination: {{host: reviews, subset: narrow}}}}]
    - match: [{{uri: {{prefix: /status}}}}]
      retries: {{attempts: 3, retryOn: 5xx}}
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - name: half-aborted
      match: [{{uri: {{prefix: /half}}}}]
      fault: {{abort: {{httpStatus: 418, percentage: {{value: 50}}}}, delay: {{fixedDelay: 1ms, percentage: {{value: 50}}}}}}
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - name: classified
      match: [{{uri: {{prefix: /classified}}}}]
      rewrite: {{uri: /status}}
      route: [{{destination: {{host: reviews, subset: v1}}}}]
    - route:
      - {{destination: {{host: reviews, subset: v1}}, weight: 90}}
      - {{destination: {{host: reviews, subset: v3}}, weight: 10}}
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {{name: flaky, namespace: shop}}
  spec:
    hosts: [flaky.shop.svc.cluster.local]
    http:
    - match: [{{uri: {{prefix: /once}}}}]
      retries: {{attempts: 0}}
      route: [{{destination: {{host: flaky}}}}]
    - retries: {{attempts: 2, retryOn: connect-failure}}
      route: [{{destination: {{host: flaky}}}}]
destinationRules:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {{name: reviews, namespace: shop}}
  spec:
    host: reviews
    subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
    - {{name: v3, labels: {{version: v3}}}}
    - name: sticky
      labels: {{app: reviews}}
      trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
    - name: narrow
      labels: {{version: v1}}
      trafficPolicy: {{connectionPool: {{http: {{http2MaxRequests: 1}}}}}}
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {{name: flaky, namespace: shop}}
  spec:
    host: flaky
    trafficPolicy:
      outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 50}}
"#,
        vip = ip(100),
        vip2 = ip(101),
        v1 = ip(11),
        v2 = ip(12),
        v3 = ip(14),
        dead = ip(15),
    )
}

async fn setup() -> (Mesh, waypoint::Waypoint) {
    let m = Mesh::new();
    m.endpoint(11, "shop", "reviews", "reviews-v1").await;
    m.endpoint(12, "shop", "reviews", "reviews-v2").await;
    m.endpoint(14, "shop", "reviews", "reviews-v3").await;
    let w = m.waypoint("shop", &config(&m)).await;
    (m, w)
}

fn vip(m: &Mesh, host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(m.ip(host), port)
}

#[tokio::test]
async fn virtual_service_routes_to_subsets_by_header_and_weight() {
    let (m, _w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    for _ in 0..5 {
        let a = c.send("GET", "/", &[("end-user", "jason")], "").await;
        assert_eq!(a.echo("Hostname"), Some("reviews-v2"), "{a:?}");
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..200 {
        let a = c.get("/").await;
        assert_eq!(a.status, 200, "{a:?}");
        *seen
            .entry(a.echo("Hostname").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let (v1, v3) = (
        seen.get("reviews-v1").copied().unwrap_or(0),
        seen.get("reviews-v3").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v3, 200, "{seen:?}");
    // 90/10 within a wide binomial bound (sd = 4.2 requests).
    assert!((160..=195).contains(&v1), "{seen:?}");
}

#[tokio::test]
async fn faults_and_timeouts() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let a = c.get("/abort").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (418, "fault filter abort"),
        "{a:?}"
    );
    let start = Instant::now();
    let a = c.get("/slow").await;
    assert_eq!(a.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let a = c.get("/deadline?delay=2s").await;
    assert_eq!(a.status, 504, "{a:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // Per-route golden metrics: the rule, its backend, success or failure.
    let text = crate::support::metrics(&w).await;
    let count = |classification: &str| {
        crate::support::sample(
            &text,
            "waypoint_route_requests_total",
            &[
                ("route", "shop/reviews"),
                ("route_kind", "VirtualService"),
                ("rule", "http[3]"),
                ("backend", "shop/reviews#v1"),
                ("classification", classification),
            ],
        )
    };
    assert_eq!(count("failure"), Some(1.0), "{text}");
    assert_eq!(count("success"), None);
    assert!(
        text.contains("waypoint_route_request_duration_milliseconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn retries_move_to_another_endpoint_and_outlier_detection_sets_the_dead_one_aside() {
    let (m, _w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 101, 80)).await;
    // Round robin puts every other first try on the dead endpoint; the retry goes elsewhere.
    for i in 0..10 {
        let a = c.get("/").await;
        assert_eq!((i, a.status), (i, 200), "{a:?}");
    }
    // Without retries: the dead endpoint was ejected after its first failure, so nothing fails.
    for i in 0..10 {
        let a = c.get("/once").await;
        assert_eq!((i, a.status), (i, 200), "{a:?}");
    }
}

#[tokio::test]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let (m, _w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let mut homes = std::collections::BTreeSet::new();
    for user in ["ann", "bob", "cid", "dee", "eve", "fay"] {
        let first = c.send("GET", "/sticky", &[("x-user", user)], "").await;
        let home = first.echo("Hostname").unwrap().to_owned();
        for _ in 0..5 {
            let again = c.send("GET", "/sticky", &[("x-user", user)], "").await;
            assert_eq!(again.echo("Hostname"), Some(home.as_str()), "{user}");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "users spread over endpoints: {homes:?}");
}

#[tokio::test]
async fn the_connection_pool_limit_answers_503_uo() {
    let (m, w) = setup().await;
    let mut slow = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let mut fast = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let first = tokio::spawn(async move { slow.get("/pool?delay=600ms").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = fast.get("/pool").await;
    assert_eq!(second.status, 503, "{second:?}");
    assert!(second.body.contains("overflow"), "{second:?}");
    assert_eq!(first.await.unwrap().status, 200);
    let metrics = crate::support::metrics(&w).await;
    assert!(
        metrics.contains("response_flags=\"UO\""),
        "the flag is counted"
    );
}

/// Every answer is a 503 and each request may be retried three times: the budget (20% of the
/// requests, no per-second minimum here) keeps the requests sent upstream under 1.2× those
/// received. The retries' `x-envoy-attempt-count` tells how many tries each request got.
#[tokio::test]
async fn the_retry_budget_caps_retries_to_a_failing_service() {
    let m = Mesh::new();
    m.endpoint(11, "shop", "reviews", "reviews-v1").await;
    let _w = m
        .waypoint_with("shop", &config(&m), |s| {
            s.retry_budget_min_per_second = 0;
            s.retry_budget_ratio = 0.2;
        })
        .await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let (n, mut upstream) = (100u32, 0u32);
    for _ in 0..n {
        let a = c.get("/status/503").await;
        assert_eq!(a.status, 503, "{a:?}");
        upstream += a
            .request_header("x-envoy-attempt-count")
            .map_or(1, |v| v.parse::<u32>().unwrap());
    }
    let ratio = f64::from(upstream) / f64::from(n);
    assert!(ratio > 1.1 && ratio <= 1.21, "upstream/received = {ratio}");
}

/// Response classes (Linkerd's ServiceProfile shape, through the VirtualService annotation):
/// a 404 counted as a failure, a 503 as a success, in the per-route metrics.
#[tokio::test]
async fn response_classes_decide_the_route_metrics_classification() {
    let (m, w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    assert_eq!(c.get("/classified/404").await.status, 404);
    assert_eq!(c.get("/classified/503").await.status, 503);
    assert_eq!(c.get("/classified/200").await.status, 200);
    let text = crate::support::metrics(&w).await;
    let count = |classification: &str| {
        crate::support::sample(
            &text,
            "waypoint_route_requests_total",
            &[
                ("route", "shop/reviews"),
                ("rule", "classified"),
                ("classification", classification),
            ],
        )
    };
    assert_eq!(count("failure"), Some(1.0), "{text}");
    assert_eq!(count("success"), Some(2.0), "{text}");
}

/// `mirror` sends a copy to another Service (its Host marked `-shadow`, as Envoy marks it)
/// while the caller sees only the primary's answer.
#[tokio::test]
async fn mirror_sends_a_copy_and_the_caller_sees_the_primary() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Mesh::new();
    m.endpoint(11, "shop", "reviews", "reviews-v1").await;
    // The mirror: a pod outside the mesh that records each request head it gets.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let listener = tokio::net::TcpListener::bind((m.ip(16), 8080))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nshadow")
                            .await;
                    }
                }
            });
        }
    });
    let config = format!(
        r#"
services:
- name: reviews
  namespace: shop
  vips: [{vip}]
  ports: [{{port: 9080, targetPort: 8080, name: http}}]
  endpoints: [{{address: {v1}, name: reviews-v1, serviceAccount: reviews}}]
- name: shadow
  namespace: shop
  vips: [{vip2}]
  ports: [{{port: 80, targetPort: 8080, name: http}}]
  endpoints: [{{address: {mirror}, name: shadow-1, protocol: TCP}}]
virtualServices:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata: {{name: reviews, namespace: shop}}
  spec:
    hosts: [reviews]
    http:
    - route: [{{destination: {{host: reviews}}}}]
      mirror: {{host: shadow}}
      mirrorPercentage: {{value: 100}}
"#,
        vip = m.ip(100),
        vip2 = m.ip(102),
        v1 = m.ip(11),
        mirror = m.ip(16),
    );
    let _w = m.waypoint("shop", &config).await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let a = c.get("/ratings/1").await;
    assert_eq!(
        (a.status, a.echo("Hostname")),
        (200, Some("reviews-v1")),
        "{a:?}"
    );
    let head = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("the mirror got a copy")
        .unwrap();
    assert!(head.starts_with("GET /ratings/1 "), "{head}");
    let host = format!("host: {}-shadow:9080", m.ip(100));
    assert!(head.to_ascii_lowercase().contains(&host), "{head}");
}

/// Faults at their configured percentage: abort 50 % of requests (binomial bound over 200).
#[tokio::test]
async fn faults_apply_at_their_percentage() {
    let (m, _w) = setup().await;
    let mut c = m.http1("shop", "productpage", vip(&m, 100, 9080)).await;
    let mut aborted = 0;
    for _ in 0..200 {
        match c.get("/half").await.status {
            418 => aborted += 1,
            200 => {}
            other => panic!("HTTP {other}"),
        }
    }
    // Mean 100, sd 7.1: ±30 is over 4 sd.
    assert!((70..=130).contains(&aborted), "{aborted} of 200 aborted");
}
