//! Routing at the gateway, re-created from Gateway API's gateway conformance tests: attachment
//! (same namespace, cross namespace, allowedRoutes), matching, hostnames, filters, weights,
//! ReferenceGrant for backends, and what the mesh sees of the gateway (its identity in
//! AuthorizationPolicy, its request metrics).

use std::time::Duration;

use super::{route, Suite, GATEWAY_NS, GATEWAY_SA};
use crate::support::*;
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "HTTPRouteSimpleSameNamespace: outside -> gateway -> backend",
            run: simple_same_namespace,
        },
        Case {
            name: "HTTPRouteMatching: path and header matches pick the backend",
            run: matching,
        },
        Case {
            name: "HTTPRouteHostnameIntersection: hosts pick routes, others 404",
            run: hostname_intersection,
        },
        Case {
            name: "HTTPRouteListenerHostnameMatching: listener hostname bounds",
            run: listener_hostname_matching,
        },
        Case {
            name: "HTTPRouteCrossNamespace: allowedRoutes All admits, Same refuses",
            run: cross_namespace,
        },
        Case {
            name: "HTTPRouteReferenceGrant: cross-namespace backend needs a grant",
            run: reference_grant,
        },
        Case {
            name: "HTTPRouteRedirectScheme/Port/Path: redirects from the gateway",
            run: redirects,
        },
        Case {
            name: "HTTPRouteRequestHeaderModifier: set, add, remove",
            run: request_header_modifier,
        },
        Case {
            name: "HTTPRouteWeight: 80/20 split between two backends",
            run: weight,
        },
        Case {
            name: "GRPCRoute at the gateway: method match, h2c, grpc-status",
            run: grpc_route,
        },
        Case {
            name: "mesh policy allowing only the gateway's principal, checked from outside",
            run: only_the_gateway,
        },
        Case {
            name: "gateway metrics: istio_requests_total reporter=source",
            run: metrics,
        },
    ]
}

/// Waits until `check` passes on the reply to `ask` (routes take a moment to reach the gateway).
fn until(
    what: &str,
    ask: impl Fn() -> Result<super::Reply, String>,
    check: impl Fn(&super::Reply) -> bool,
) -> Result<super::Reply, String> {
    eventually(Duration::from_secs(15), || {
        let r = ask()?;
        if check(&r) {
            Ok(r)
        } else {
            Err(format!(
                "{what}: HTTP {} from {:?}: {}",
                r.status,
                r.backend(),
                r.body.trim()
            ))
        }
    })
}

/// A route in `apps` on listener `http` (from: All) for host web.test to its own namespace's
/// Service `web`.
fn apps_route(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "apps-route",
        &route(
            "apps",
            "web",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: http}]\n  hostnames: [web.test]\n  \
             rules: [{backendRefs: [{name: web, port: 80}]}]\n",
        ),
    )?;
    Ok(())
}

fn simple_same_namespace(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "simple",
        &route(
            GATEWAY_NS,
            "simple",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n",
        ),
    )?;
    let r = until(
        "GET / through the gateway",
        || s.http(80, "anything.test", "/", &[]),
        |r| r.status == 200 && r.backend().starts_with("infra-backend-v1"),
    )?;
    // The gateway stamps the request as any ingress proxy does.
    if r.request_header("x-forwarded-proto") != Some("http") {
        return Err(format!(
            "x-forwarded-proto: {:?}",
            r.request_header("x-forwarded-proto")
        ));
    }
    if r.request_header("x-request-id").is_none() {
        return Err("no x-request-id reached the backend".into());
    }
    Ok(())
}

fn matching(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "matching",
        &route(
            GATEWAY_NS,
            "matching",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [match.test]\n  rules:\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /}}]\n\
             \x20   backendRefs: [{name: infra-backend-v1, port: 8080}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n\
             \x20   backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        ),
    )?;
    let get = |path: &str, extra: &[&str]| s.http(80, "match.test", path, extra);
    until(
        "GET /v2",
        || get("/v2", &[]),
        |r| r.backend().starts_with("infra-backend-v2"),
    )?;
    let cases: [(&str, &[&str], &str); 5] = [
        ("/", &[], "infra-backend-v1"),
        ("/v2/example", &[], "infra-backend-v2"),
        ("/v2example", &[], "infra-backend-v1"),
        ("/", &["-H", "version: two"], "infra-backend-v2"),
        ("/v1", &["-H", "version: one"], "infra-backend-v1"),
    ];
    for (path, extra, want) in cases {
        let r = get(path, extra)?;
        if r.status != 200 || !r.backend().starts_with(want) {
            return Err(format!(
                "{path} {extra:?}: HTTP {} from {}, want {want}",
                r.status,
                r.backend()
            ));
        }
    }
    Ok(())
}

fn hostname_intersection(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "hosts",
        &format!(
            "{}---\n{}",
            route(
                GATEWAY_NS,
                "exact",
                "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [a.example.net]\n  \
                 rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n",
            ),
            route(
                GATEWAY_NS,
                "wildcard",
                "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: ['*.example.net']\n  \
                 rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]\n",
            )
        ),
    )?;
    until(
        "exact host",
        || s.http(80, "a.example.net", "/", &[]),
        |r| r.backend().starts_with("infra-backend-v1"),
    )?;
    let checks = [
        ("b.example.net", 200, "infra-backend-v2"),
        ("x.y.example.net", 200, "infra-backend-v2"),
        ("A.EXAMPLE.NET:80", 200, "infra-backend-v1"),
        ("example.net", 404, ""),
        ("other.test", 404, ""),
    ];
    for (host, status, backend) in checks {
        let r = s.http(80, host, "/", &[])?;
        if r.status != status || !r.backend().starts_with(backend) {
            return Err(format!(
                "Host {host}: HTTP {} from {:?}, want {status} {backend}",
                r.status,
                r.backend()
            ));
        }
    }
    Ok(())
}

fn listener_hostname_matching(s: &mut Suite) -> Result<(), String> {
    // Listener `same` (8080) serves same.example.com only: of the route's hostnames only that
    // one is served there.
    s.apply(
        "listener-hosts",
        &route(
            GATEWAY_NS,
            "listener-hosts",
            "  parentRefs: [{name: gw, sectionName: same}]\n  hostnames: [same.example.com, other.example.com]\n  \
             rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]\n",
        ),
    )?;
    until(
        "same.example.com on 8080",
        || s.http(8080, "same.example.com", "/", &[]),
        |r| r.status == 200 && r.backend().starts_with("infra-backend-v2"),
    )?;
    let r = s.http(8080, "other.example.com", "/", &[])?;
    if r.status != 404 {
        return Err(format!(
            "other.example.com on the same.example.com listener: HTTP {}",
            r.status
        ));
    }
    // Attached to listener `same` only: nothing for it on port 80.
    let r = s.http(80, "same.example.com", "/", &[])?;
    if r.status != 404 {
        return Err(format!("same.example.com on port 80: HTTP {}", r.status));
    }
    Ok(())
}

fn cross_namespace(s: &mut Suite) -> Result<(), String> {
    // A route in `apps` on listener `http` (from: All) to its own namespace's Service.
    apps_route(s)?;
    until(
        "web.test",
        || s.http(80, "web.test", "/", &[]),
        |r| r.status == 200 && r.backend().starts_with("web-"),
    )?;
    // The same from `apps` on listener `same` (routes from infra only): not attached.
    s.apply(
        "apps-route-same",
        &route(
            "apps",
            "web-same",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: same}]\n  hostnames: [same.example.com]\n  \
             rules: [{backendRefs: [{name: web, port: 80}]}]\n",
        ),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let r = s.http(8080, "same.example.com", "/", &[])?;
    if r.status != 404 {
        return Err(format!(
            "a route from apps on a Same-namespace listener was served: HTTP {} from {}",
            r.status,
            r.backend()
        ));
    }
    Ok(())
}

fn reference_grant(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "to-apps",
        &route(
            GATEWAY_NS,
            "to-apps",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [grant.test]\n  \
             rules: [{backendRefs: [{name: web, namespace: apps, port: 80}]}]\n",
        ),
    )?;
    until(
        "without a grant",
        || s.http(80, "grant.test", "/", &[]),
        |r| r.status == 500,
    )?;
    s.apply(
        "grant",
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {name: infra-routes, namespace: apps}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]\n  \
         to: [{group: '', kind: Service, name: web}]\n",
    )?;
    until(
        "with the grant",
        || s.http(80, "grant.test", "/", &[]),
        |r| r.status == 200 && r.backend().starts_with("web-"),
    )?;
    Ok(())
}

fn redirects(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "redirect",
        &route(
            GATEWAY_NS,
            "redirect",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [redirect.example.com]\n  rules:\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /scheme}}]\n\
             \x20   filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /port}}]\n\
             \x20   filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /old}}]\n\
             \x20   filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]\n",
        ),
    )?;
    let r = until(
        "scheme redirect",
        || s.http(80, "redirect.example.com", "/scheme/a", &[]),
        |r| r.status == 301,
    )?;
    let want = [
        ("/scheme/a", 301, "https://redirect.example.com/scheme/a"),
        ("/port", 302, "http://redirect.example.com:8083/port"),
        (
            "/old/page?q=1",
            302,
            "http://redirect.example.com/new/page?q=1",
        ),
    ];
    drop(r);
    for (path, status, location) in want {
        let r = s.http(80, "redirect.example.com", path, &[])?;
        if r.status != status || r.header("location") != Some(location) {
            return Err(format!(
                "{path}: HTTP {} location {:?}, want {status} {location}",
                r.status,
                r.header("location")
            ));
        }
    }
    Ok(())
}

fn request_header_modifier(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "headers",
        &route(
            GATEWAY_NS,
            "headers",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [headers.test]\n  rules:\n\
             \x20 - backendRefs: [{name: infra-backend-v1, port: 8080}]\n\
             \x20   filters:\n\
             \x20   - type: RequestHeaderModifier\n\
             \x20     requestHeaderModifier:\n\
             \x20       set: [{name: X-Header-Set, value: set-overwrites-values}]\n\
             \x20       add: [{name: X-Header-Add, value: add-appends-values}]\n\
             \x20       remove: [X-Header-Remove]\n",
        ),
    )?;
    let r = until(
        "header modifier",
        || {
            s.http(
                80,
                "headers.test",
                "/",
                &[
                    "-H",
                    "X-Header-Set: some-other-value",
                    "-H",
                    "X-Header-Add: original",
                    "-H",
                    "X-Header-Remove: gone",
                ],
            )
        },
        |r| r.status == 200 && r.request_header("x-header-set").is_some(),
    )?;
    let set = r.request_header("x-header-set");
    // Added as a second value (a header sent twice reads as its values joined with `,`).
    let add: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("RequestHeader=x-header-add:"))
        .collect();
    let add = add.join(",");
    if set != Some("set-overwrites-values")
        || !(add.contains("original") && add.contains("add-appends-values"))
        || r.request_header("x-header-remove").is_some()
    {
        return Err(format!("the backend saw: {}", r.body));
    }
    Ok(())
}

fn weight(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "weight",
        &route(
            GATEWAY_NS,
            "weight",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [weight.test]\n  rules:\n\
             \x20 - backendRefs:\n\
             \x20   - {name: infra-backend-v1, port: 8080, weight: 80}\n\
             \x20   - {name: infra-backend-v2, port: 8080, weight: 20}\n",
        ),
    )?;
    until(
        "weighted route",
        || s.http(80, "weight.test", "/", &[]),
        |r| r.status == 200,
    )?;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..100 {
        let r = s.http(80, "weight.test", "/", &[])?;
        match r.backend() {
            b if b.starts_with("infra-backend-v1") => v1 += 1,
            b if b.starts_with("infra-backend-v2") => v2 += 1,
            other => return Err(format!("answered by {other:?}: HTTP {}", r.status)),
        }
    }
    // 80/20 over 100 requests: outside 65..=95 happens with probability < 1e-4.
    if !(65..=95).contains(&v1) {
        return Err(format!("v1 {v1}, v2 {v2} of 100; want about 80/20"));
    }
    Ok(())
}

fn only_the_gateway(s: &mut Suite) -> Result<(), String> {
    apps_route(s)?;
    s.apply(
        "only-gateway",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: only-gateway, namespace: apps}}\n\
             spec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: ALLOW\n  \
             rules: [{{from: [{{source: {{principals: ['cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}']}}}}]}}]\n"
        ),
    )?;
    let web = s
        .cluster
        .service_ip("apps", "web")
        .map(|ip| std::net::SocketAddr::from((ip, 80)))
        .ok_or("no Service apps/web")?;
    // In the mesh, only the gateway's identity gets in...
    eventually(Duration::from_secs(15), || {
        refused(&s.cluster, "apps/client", web)
    })?;
    // ...and the outside gets in through the gateway.
    until(
        "web.test through the gateway",
        || s.http(80, "web.test", "/", &[]),
        |r| r.status == 200 && r.backend().starts_with("web-"),
    )?;
    Ok(())
}

fn metrics(s: &mut Suite) -> Result<(), String> {
    apps_route(s)?;
    until(
        "web.test",
        || s.http(80, "web.test", "/", &[]),
        |r| r.status == 200,
    )?;
    let text = s.gateway_metrics()?;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"web.apps.svc.cluster.local\"")
                && l.contains("response_code=\"200\"")
        })
        .ok_or_else(|| {
            format!(
                "no istio_requests_total with reporter=source for web.apps:\n{}",
                text.lines()
                    .filter(|l| l.starts_with("istio_requests_total"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    if !line.contains(&format!(
        "source_principal=\"spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{GATEWAY_SA}\""
    )) && !line.contains("source_workload=\"gw-istio")
    {
        return Err(format!("the gateway is not named as the source: {line}"));
    }
    Ok(())
}

fn grpc_route(s: &mut Suite) -> Result<(), String> {
    use meshctl::cluster::http::{send_here, Request};
    s.apply(
        "grpc",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {name: grpc, namespace: infra}\n\
         spec:\n  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [grpc.test]\n  rules:\n\
         \x20 - matches: [{method: {service: grpc.echo.Echo, method: Call}}]\n\
         \x20   backendRefs: [{name: infra-backend-v2, port: 8080}]\n\
         \x20 - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
    )?;
    let call = |path: &'static str| {
        let req = Request {
            method: "POST",
            path,
            host: Some("grpc.test"),
            headers: &[("content-type", "application/grpc"), ("te", "trailers")],
            body: b"\x00\x00\x00\x00\x00",
            http2: true,
        };
        send_here(std::net::SocketAddr::from((s.address, 80)), &req)
            .map_err(|e| format!("gRPC {path} through the gateway: {e}"))
    };
    // The echo's description travels inside the gRPC message: find its Hostname line.
    let answered_by = |a: &meshctl::cluster::http::Answer| {
        a.body
            .split("Hostname=")
            .nth(1)
            .and_then(|rest| rest.split(['\n', '\r']).next())
            .unwrap_or("")
            .to_owned()
    };
    eventually(Duration::from_secs(15), || {
        let a = call("/grpc.echo.Echo/Call")?;
        let ok = a.status == 200
            && a.trailer("grpc-status") == Some("0")
            && answered_by(&a).starts_with("infra-backend-v2");
        ok.then_some(()).ok_or(format!(
            "HTTP {} trailers {:?} from {}",
            a.status,
            a.trailers,
            answered_by(&a)
        ))
    })?;
    let a = call("/grpc.echo.Echo/Other")?;
    if a.trailer("grpc-status") != Some("0") || !answered_by(&a).starts_with("infra-backend-v1") {
        return Err(format!(
            "another method: trailers {:?} from {}",
            a.trailers,
            answered_by(&a)
        ));
    }
    Ok(())
}
