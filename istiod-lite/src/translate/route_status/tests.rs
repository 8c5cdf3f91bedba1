//! Route status from manifests: which parents are ours, and the reasons of each condition.

use crate::cluster::Cluster;
use crate::manifests;
use crate::translate::route_status::{Cond, RouteStatus};
use crate::translate::waypoints::{waypoints, View};
use crate::translate::ClusterInfo;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: example.com/other
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ok, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: many, namespace: shop, generation: 4}
spec:
  hostnames: [cart.example]
  parentRefs:
  - {group: "", kind: Service, name: legacy}
  - {group: "", kind: Service, name: missing}
  - {name: wp}
  - {name: ingress}
  - {group: "", kind: Service, name: cart, sectionName: nope}
  - {group: "", kind: Service, name: cart, port: 53}
  - {group: "", kind: Service, name: cart, port: 80, sectionName: http}
  rules:
  - backendRefs: [{group: example.com, kind: Bucket, name: b}, {name: missing, port: 80}]
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: cart, port: 9999}}}]
    backendRefs: [{name: cart}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, namespace: shop}, {name: wp, namespace: shop}]
  rules: [{backendRefs: [{name: cart, namespace: shop, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: not-ours, namespace: shop}
spec:
  parentRefs: [{name: ingress}, {name: nowhere}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: was-ours, namespace: shop}
spec:
  parentRefs: [{name: ingress}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
status:
  parents:
  - {parentRef: {group: "", kind: Service, name: cart}, controllerName: istio.io/gateway-controller, conditions: []}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart}]
  rules: [{backendRefs: [{name: cart, port: 7070}]}]
"#;

fn statuses() -> Vec<RouteStatus> {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(MESH, "mesh.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    waypoints(&View::from_cluster(&cluster), &ClusterInfo::default()).routes
}

fn find<'a>(all: &'a [RouteStatus], object: &str) -> &'a RouteStatus {
    all.iter()
        .find(|r| r.object() == object)
        .unwrap_or_else(|| panic!("no status for {object}"))
}

/// `(parent, accepted, reason)` per parent.
fn accepted(r: &RouteStatus) -> Vec<(String, bool, String)> {
    r.parents
        .iter()
        .map(|p| {
            let mut label = format!("{}/{}", p.parent_ref.kind, p.parent_ref.name);
            if let Some(port) = p.parent_ref.port {
                label.push_str(&format!(":{port}"));
            }
            if let Some(section) = &p.parent_ref.section_name {
                label.push_str(&format!("#{section}"));
            }
            (label, p.accepted.status, p.accepted.reason.clone())
        })
        .collect()
}

fn owned(v: &[(&str, bool, &str)]) -> Vec<(String, bool, String)> {
    v.iter()
        .map(|(p, a, r)| (p.to_string(), *a, r.to_string()))
        .collect()
}

#[test]
fn only_routes_with_parents_of_ours_or_entries_of_ours() {
    let all = statuses();
    let objects: Vec<String> = all.iter().map(RouteStatus::object).collect();
    assert_eq!(
        objects,
        [
            "GRPCRoute shop/grpc",
            "HTTPRoute other/consumer",
            "HTTPRoute shop/many",
            "HTTPRoute shop/ok",
            "HTTPRoute shop/was-ours",
        ]
    );
    let stale = find(&all, "HTTPRoute shop/was-ours");
    assert!(stale.parents.is_empty() && stale.has_ours, "{stale:?}");
}

#[test]
fn an_attached_route_with_resolved_backends() {
    let all = statuses();
    let ok = find(&all, "HTTPRoute shop/ok");
    assert_eq!(
        accepted(ok),
        owned(&[("Service/cart:80", true, "Accepted")])
    );
    assert_eq!(
        ok.parents[0].accepted.message,
        "attached to port 80 of Service shop/cart (producer route), served by waypoint shop/wp"
    );
    assert_eq!(
        ok.parents[0].resolved_refs,
        Cond {
            status: true,
            reason: "ResolvedRefs".into(),
            message: "all references resolved".into()
        }
    );
    assert!(!ok.has_ours);
}

#[test]
fn parents_that_match_nothing_and_unresolved_backends() {
    let all = statuses();
    let many = find(&all, "HTTPRoute shop/many");
    assert_eq!(many.generation, Some(4));
    assert_eq!(
        accepted(many),
        owned(&[
            ("Service/legacy", false, "NoMatchingParent"),
            ("Service/missing", false, "NoMatchingParent"),
            ("Gateway/wp", true, "Accepted"),
            ("Service/cart#nope", false, "NoMatchingParent"),
            ("Service/cart:53", false, "NoMatchingParent"),
            ("Service/cart:80#http", true, "Accepted"),
        ])
    );
    let message = |i: usize| many.parents[i].accepted.message.clone();
    assert!(
        message(0).starts_with("Service shop/legacy uses no waypoint"),
        "{}",
        message(0)
    );
    assert!(message(1).starts_with("Service shop/missing does not exist"));
    assert!(message(3).starts_with("Service shop/cart has no port named \"nope\""));
    assert!(
        message(4).starts_with("Service shop/cart has no port 53"),
        "UDP ports do not count"
    );
    assert!(
        message(5).ends_with(
            "; hostnames are ignored: mesh routes match the Service a request is addressed to"
        ),
        "{}",
        message(5)
    );
    let refs = &many.parents[0].resolved_refs;
    assert_eq!((refs.status, refs.reason.as_str()), (false, "InvalidKind"));
    assert_eq!(
        refs.message,
        "rules[0].backendRefs[0]: Bucket shop/b is not a core Service (group \"example.com\", kind Bucket); \
         rules[0].backendRefs[1]: Service shop/missing does not exist; \
         rules[1].filters[0]: mirror: Service shop/cart has no port 9999; mirror dropped"
    );
    assert!(many.parents.iter().all(|p| p.resolved_refs == *refs));
}

#[test]
fn consumer_routes_and_the_waypoint_gateway_from_elsewhere() {
    let all = statuses();
    let consumer = find(&all, "HTTPRoute other/consumer");
    assert_eq!(
        accepted(consumer),
        owned(&[
            ("Service/cart", true, "Accepted"),
            ("Gateway/wp", false, "NotAllowedByListeners"),
        ])
    );
    assert_eq!(
        consumer.parents[0].accepted.message,
        "attached to every port of Service shop/cart as a consumer route: applies to clients in \
         namespace other, served by waypoint shop/wp"
    );
    assert!(consumer.parents[0].resolved_refs.status);
}

#[test]
fn grpc_routes_too() {
    let all = statuses();
    let grpc = find(&all, "GRPCRoute shop/grpc");
    assert_eq!(accepted(grpc), owned(&[("Service/cart", true, "Accepted")]));
    let refs = &grpc.parents[0].resolved_refs;
    assert_eq!(
        (refs.status, refs.reason.as_str()),
        (false, "BackendNotFound")
    );
    assert_eq!(
        refs.message,
        "rules[0].backendRefs[0]: Service shop/cart has no port 7070"
    );
}
