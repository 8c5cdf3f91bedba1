//! VirtualServices in the route table: first match wins, Istio's match kinds, weighted subsets,
//! rewrites, redirects, faults and retries; an HTTPRoute on the same Service wins.

use std::time::Duration;

use meshcore::l7::networking::VirtualService;

use super::*;

fn vs_table(vs: &str, http: &str) -> (RouteTable, Vec<RouteStatus>) {
    let vss: Vec<VirtualService> = docs(vs);
    let http: Vec<HttpRoute> = if http.trim().is_empty() {
        Vec::new()
    } else {
        docs(http)
    };
    RouteTable::compile_with_virtual_services(&http, &[], &vss, &services(), &waypoint())
}

const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: mesh}
spec:
  hosts: [echo]
  http:
  - name: jason
    match:
    - headers: {end-user: {exact: jason}}
    - queryParams: {user: {prefix: jas}}
    route:
    - destination: {host: echo, subset: v2}
  - name: api
    match:
    - uri: {prefix: /api}
      method: {exact: POST}
    rewrite: {uri: /v2/api}
    route:
    - destination: {host: echo-v1.mesh.svc.cluster.local, port: {number: 8080}}
  - name: old
    match:
    - uri: {regex: "/old/[0-9]+"}
    redirect: {uri: /new, redirectCode: 302}
  - name: only-8080
    match:
    - port: 8080
      withoutHeaders: {x-skip: {}}
    route:
    - destination: {host: echo-v2}
  - name: canary
    route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v3}, weight: 10}
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,reset,unavailable,409"}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 50}}
      abort: {httpStatus: 418, percentage: {value: 5}}
    mirror: {host: other-thing}
"#;

#[test]
fn entries_are_tried_in_order_with_istios_match_kinds() {
    let (t, statuses) = vs_table(REVIEWS, "");
    assert!(
        statuses
            .iter()
            .any(|s| s.kind == RouteKind::VirtualService && s.accepted),
        "{statuses:?}"
    );
    assert_eq!(
        hit(&t, "echo", 80, &req("/").header("end-user", "jason")),
        "jason"
    );
    assert_eq!(hit(&t, "echo", 80, &req("/?user=jasmine")), "jason");
    // A string prefix: /apix matches /api (Istio), unlike a Gateway API PathPrefix.
    assert_eq!(hit(&t, "echo", 80, &req("/apix").method("POST")), "api");
    assert_eq!(
        hit(&t, "echo", 80, &req("/api")),
        "canary",
        "GET is not POST"
    );
    assert_eq!(hit(&t, "echo", 80, &req("/old/12")), "old");
    assert_eq!(hit(&t, "echo", 80, &req("/old/x")), "canary");
    // port 8080 only, and only without x-skip.
    assert_eq!(hit(&t, "echo", 8080, &req("/")), "only-8080");
    assert_eq!(
        hit(&t, "echo", 8080, &req("/").header("x-skip", "1")),
        "canary"
    );
    assert_eq!(hit(&t, "echo", 80, &req("/")), "canary");
    // A Service no VirtualService names keeps its own routing.
    assert_eq!(hit(&t, "echo-v1", 80, &req("/")), "no routes");
}

#[test]
fn destinations_filters_timeouts_retries_and_faults() {
    let (t, statuses) = vs_table(REVIEWS, "");
    let jason = matched(&t, "echo", 80, &req("/").header("end-user", "jason")).rule;
    assert_eq!(jason.backends[0].subset.as_deref(), Some("v2"));
    assert_eq!(
        jason.backends[0].weight, 100,
        "a single destination takes everything"
    );
    let api = matched(&t, "echo", 80, &req("/api/items").method("POST"));
    let b = &api.rule.backends[0];
    assert_eq!((b.service.name.as_str(), b.port), ("echo-v1", Some(8080)));
    let rewrite = api.rule.filters.rewrite.as_ref().unwrap();
    assert_eq!(
        rewrite.path("/api/items", api.matched_prefix).as_deref(),
        Some("/v2/api/items")
    );
    let old = matched(&t, "echo", 80, &req("/old/1")).rule;
    assert_eq!(old.filters.redirect.as_ref().unwrap().status.as_u16(), 302);
    let canary = matched(&t, "echo", 80, &req("/")).rule;
    let picks: Vec<_> = (0..100)
        .map(|i| canary.pick_backend(i).unwrap().subset.clone())
        .collect();
    assert_eq!(
        picks.iter().filter(|s| s.as_deref() == Some("v1")).count(),
        90
    );
    assert_eq!(canary.timeouts.request, Some(Duration::from_secs(3)));
    assert_eq!(
        canary.timeouts.backend_request,
        Some(Duration::from_secs(1))
    );
    let retry = canary.retry.as_ref().unwrap();
    let on = retry.on.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert!(on.five_xx && on.reset && !on.gateway_error);
    assert_eq!(on.grpc, vec![14]);
    assert_eq!(retry.codes, vec![409]);
    assert!(on.status(500, None) && on.status(200, Some(14)) && !on.status(404, None));
    let fault = canary.fault.as_ref().unwrap();
    assert_eq!(fault.delay, Some((Duration::from_millis(100), 50.0)));
    assert_eq!(fault.abort, Some((FaultAbort::Http(418), 5.0)));
    // The unknown mirror host is reported, not fatal.
    let vs = statuses
        .iter()
        .find(|s| s.kind == RouteKind::VirtualService)
        .unwrap();
    assert!(
        vs.partially_invalid && vs.message.contains("other-thing"),
        "{vs:?}"
    );
    // Without `retries`, Istio's default applies, to bodyless requests only.
    let jason_retry = jason.retry.as_ref().unwrap();
    assert_eq!(
        (jason_retry.attempts, jason_retry.codes.clone()),
        (2, vec![503])
    );
    assert!(jason_retry.on.as_ref().unwrap().bodyless_only);
}

#[test]
fn an_httproute_on_the_same_service_wins_and_the_older_virtualservice_too() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{name: gw, backendRefs: [{name: echo-v1, port: 80}]}]
"#;
    let (t, statuses) = vs_table(REVIEWS, route);
    assert_eq!(
        hit(&t, "echo", 80, &req("/").header("end-user", "jason")),
        "gw"
    );
    let vs = statuses
        .iter()
        .find(|s| s.kind == RouteKind::VirtualService)
        .unwrap();
    assert!(
        !vs.accepted && vs.reason == "Conflicted" && vs.message.contains("wins"),
        "{vs:?}"
    );

    let two = r#"
metadata: {name: b-newer, namespace: mesh, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {hosts: [echo.mesh], http: [{name: newer, route: [{destination: {host: echo-v2}}]}]}
---
metadata: {name: a-older, namespace: mesh, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [echo], http: [{name: older, route: [{destination: {host: echo-v1}}]}]}
---
metadata: {name: ingress, namespace: mesh}
spec: {hosts: [echo-v1], gateways: [istio-system/ingress], http: [{route: [{destination: {host: echo}}]}]}
---
metadata: {name: broken, namespace: mesh}
spec:
  hosts: [echo-v2, nowhere]
  http:
  - {name: by-labels, match: [{sourceLabels: {app: x}}], route: [{destination: {host: echo}}]}
  - {name: fine, route: [{destination: {host: echo}}]}
"#;
    let (t, statuses) = vs_table(two, "");
    assert_eq!(hit(&t, "echo", 80, &req("/")), "older");
    assert_eq!(
        hit(&t, "echo-v1", 80, &req("/")),
        "no routes",
        "not mesh-bound"
    );
    assert_eq!(hit(&t, "echo-v2", 80, &req("/")), "fine");
    let summary: Vec<(String, String, bool, String)> = statuses
        .iter()
        .map(|s| {
            (
                s.route.clone(),
                s.parent.clone(),
                s.accepted,
                s.reason.clone(),
            )
        })
        .collect();
    assert!(
        summary.contains(&(
            "mesh/b-newer".into(),
            "Service/mesh/echo".into(),
            false,
            "Conflicted".into()
        )),
        "{summary:?}"
    );
    assert!(
        summary.contains(&(
            "mesh/broken".into(),
            "host nowhere".into(),
            false,
            "NoMatchingParent".into()
        )),
        "{summary:?}"
    );
    let broken = statuses
        .iter()
        .find(|s| s.route == "mesh/broken" && s.accepted)
        .unwrap();
    assert!(broken.message.contains("sourceLabels"), "{broken:?}");
}

#[test]
fn response_classes_reach_their_rules_from_the_annotation() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: mesh
  annotations:
    waypoint/response-classes: '{"books": [{"condition": {"status": {"min": 404, "max": 404}}, "isFailure": true}], "other": "not a list"}'
spec:
  hosts: [echo]
  http:
  - name: books
    match: [{uri: {prefix: /books}}]
    route: [{destination: {host: echo}}]
  - name: rest
    route: [{destination: {host: echo}}]
"#;
    let (table, statuses) = vs_table(vs, "");
    let by_name = |n: &str| {
        table
            .rules()
            .iter()
            .find(|r| r.rule_name.as_deref() == Some(n))
            .unwrap()
    };
    let books = by_name("books").classes.as_ref().expect("classes");
    assert!(books.is_failure(404) && !books.is_failure(200));
    assert!(by_name("rest").classes.is_none());
    // The value that does not parse is reported, the rest applies.
    assert!(statuses[0].accepted, "{statuses:?}");
    assert!(
        statuses[0].message.contains("rule \"other\""),
        "{statuses:?}"
    );
}

#[test]
fn authority_and_scheme_matches() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: mesh}
spec:
  hosts: [echo]
  http:
  - name: by-host
    match: [{authority: {prefix: "beta."}}]
    route: [{destination: {host: echo, subset: v2}}]
  - name: https-only
    match: [{scheme: {exact: https}}]
    route: [{destination: {host: echo-v1}}]
  - name: rest
    route: [{destination: {host: echo}}]
"#;
    let (table, statuses) = vs_table(vs, "");
    assert!(
        statuses.iter().all(|s| s.accepted && !s.partially_invalid),
        "{statuses:?}"
    );
    let rule_of = |r: Req| hit(&table, "echo", 80, &r);
    assert_eq!(
        rule_of(req("/").header("host", "beta.example.com")),
        "by-host"
    );
    assert_eq!(
        rule_of(req("/").header("x-forwarded-proto", "https")),
        "https-only"
    );
    assert_eq!(rule_of(req("/").header("host", "echo.mesh")), "rest");
}
