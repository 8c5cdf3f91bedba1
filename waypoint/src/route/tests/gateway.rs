//! Gateway mode: routes attached to the ingress Gateway's listeners, virtual hosts by Host,
//! ReferenceGrants for cross-namespace backends.

use super::*;
use meshcore::l7::ingress::IngressConfig;

/// The Gateway `infra/edge`: `web` (HTTP 80, every host), `shop` (HTTP 80, `*.shop.example`),
/// `exact` (HTTP 80, `api.shop.example`), `admin` (HTTP 8080, routes of `mesh` only), `tls`
/// (HTTPS 443, `secure.example`), and a ReferenceGrant letting HTTPRoutes of `mesh` reach
/// Services in `other` (granted by `grants`).
fn gateway(grants: bool) -> IngressConfig {
    let grant = if grants {
        "referenceGrants:\n- {namespace: other, from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}], to: [{group: \"\", kind: Service}]}\n"
    } else {
        ""
    };
    serde_yaml_ng::from_str(&format!(
        "namespace: infra\nname: edge\nlisteners:\n\
         - {{name: web, port: 80, protocol: HTTP}}\n\
         - {{name: shop, port: 80, protocol: HTTP, hostname: \"*.shop.example\"}}\n\
         - {{name: exact, port: 80, protocol: HTTP, hostname: api.shop.example}}\n\
         - {{name: admin, port: 8080, protocol: HTTP, allowedNamespaces: [mesh]}}\n\
         - {{name: tls, port: 443, protocol: HTTPS, hostname: secure.example}}\n{grant}"
    ))
    .unwrap()
}

fn compile_gateway(http: &str, grants: bool) -> (RouteTable, Vec<RouteStatus>) {
    let http: Vec<HttpRoute> = docs(http);
    RouteTable::compile_with_ingress(
        &http,
        &[],
        &[],
        &services(),
        &waypoint(),
        Some(&gateway(grants)),
    )
}

/// A route `name` in `ns` with `parent` (flow YAML), `hostnames` and one rule per
/// `(rule name, path prefix)`.
fn route(name: &str, ns: &str, parent: &str, hostnames: &str, rules: &[(&str, &str)]) -> String {
    let mut s = format!(
        "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: [{hostnames}]\n  rules:\n"
    );
    for (rule, prefix) in rules {
        s.push_str(&format!(
            "  - name: {rule}\n    matches: [{{path: {{type: PathPrefix, value: \"{prefix}\"}}}}]\n    backendRefs: [{{name: echo, namespace: mesh, port: 80}}]\n"
        ));
    }
    s
}

const EDGE: &str = "{name: edge, namespace: infra}";

fn at(table: &RouteTable, port: u16, host: &str, r: &Req) -> String {
    match table.lookup_gateway(port, host, &r.head()) {
        Lookup::NoRoutes => "no routes".into(),
        Lookup::NoMatch => "404".into(),
        Lookup::Matched(m) => m.rule.rule_name.clone().unwrap_or_default(),
    }
}

#[test]
fn the_most_specific_hostname_wins_and_only_its_rules_apply() {
    let section = |s: &str| format!("{{name: edge, namespace: infra, sectionName: {s}}}");
    let yaml = [
        route("any", NS, &section("web"), "", &[("catch-all", "/")]),
        route(
            "wild",
            NS,
            &section("shop"),
            "\"*.shop.example\"",
            &[("wild", "/")],
        ),
        route("api", NS, EDGE, "api.shop.example", &[("api-v2", "/v2")]),
    ]
    .join("---\n");
    let (table, statuses) = compile_gateway(&yaml, false);
    assert!(statuses.iter().all(|s| s.accepted), "{statuses:#?}");
    // Exact beats wildcard beats catch-all.
    assert_eq!(at(&table, 80, "api.shop.example", &req("/v2/x")), "api-v2");
    assert_eq!(at(&table, 80, "www.shop.example", &req("/v2")), "wild");
    assert_eq!(at(&table, 80, "elsewhere.example", &req("/")), "catch-all");
    // Only the chosen virtual host's rules: `/` under api.shop.example matches nothing there,
    // even though the wildcard and catch-all routes would take it.
    assert_eq!(at(&table, 80, "api.shop.example", &req("/")), "404");
    // Port and case do not matter; another port has its own hosts.
    assert_eq!(at(&table, 80, "API.Shop.Example:80", &req("/v2")), "api-v2");
    assert_eq!(at(&table, 9999, "api.shop.example", &req("/v2")), "404");
    // The wildcard never matches the bare suffix.
    assert_eq!(at(&table, 80, "shop.example", &req("/")), "catch-all");
}

#[test]
fn route_hostnames_are_restricted_by_the_listener_hostname() {
    // Attached by sectionName to `shop` (`*.shop.example`): the route's `*.example` narrows to
    // the listener's wildcard, `other.test` has nothing in common and is dropped.
    let parent = "{name: edge, namespace: infra, sectionName: shop}";
    let yaml = route("r", NS, parent, "\"*.example\", other.test", &[("r", "/")]);
    let (table, statuses) = compile_gateway(&yaml, false);
    assert_eq!(
        summary(&statuses),
        [(
            "mesh/r".into(),
            "Gateway/infra/edge#shop".into(),
            true,
            true,
            "Accepted".into()
        )]
    );
    assert_eq!(at(&table, 80, "a.shop.example", &req("/")), "r");
    assert_eq!(at(&table, 80, "other.test", &req("/")), "404");
    assert_eq!(at(&table, 80, "a.example", &req("/")), "404");

    // Nothing in common with any listener of the section: refused.
    let yaml = route("r", NS, parent, "other.test", &[("r", "/")]);
    let (_, statuses) = compile_gateway(&yaml, false);
    assert_eq!(statuses[0].reason, "NoMatchingListenerHostname");
    assert!(!statuses[0].accepted);
}

#[test]
fn section_name_and_port_select_listeners() {
    let yaml = [
        route(
            "by-port",
            NS,
            "{name: edge, namespace: infra, port: 8080}",
            "",
            &[("admin", "/")],
        ),
        route(
            "by-section",
            NS,
            "{name: edge, namespace: infra, sectionName: tls}",
            "",
            &[("tls", "/")],
        ),
        route(
            "missing",
            NS,
            "{name: edge, namespace: infra, sectionName: nope}",
            "",
            &[("x", "/")],
        ),
        route(
            "wrong-port",
            NS,
            "{name: edge, namespace: infra, port: 81}",
            "",
            &[("y", "/")],
        ),
    ]
    .join("---\n");
    let (table, statuses) = compile_gateway(&yaml, false);
    assert_eq!(at(&table, 8080, "anything", &req("/")), "admin");
    assert_eq!(at(&table, 80, "anything", &req("/")), "404");
    // A route without hostnames takes the listener's.
    assert_eq!(at(&table, 443, "secure.example", &req("/")), "tls");
    assert_eq!(at(&table, 443, "other.example", &req("/")), "404");
    let reasons: Vec<_> = summary(&statuses)
        .into_iter()
        .map(|s| (s.0, s.2, s.4))
        .collect();
    assert_eq!(
        reasons,
        [
            ("mesh/by-port".into(), true, "Accepted".into()),
            ("mesh/by-section".into(), true, "Accepted".into()),
            ("mesh/missing".into(), false, "NoMatchingParent".into()),
            ("mesh/wrong-port".into(), false, "NoMatchingParent".into()),
        ]
    );
}

#[test]
fn allowed_routes_namespaces() {
    // `admin` (8080) admits routes from `mesh` only.
    let parent = "{name: edge, namespace: infra, port: 8080}";
    let yaml = [
        route("mine", NS, parent, "", &[("mine", "/")]),
        route("theirs", "other", parent, "", &[("theirs", "/")]),
    ]
    .join("---\n");
    let (table, statuses) = compile_gateway(&yaml, false);
    assert_eq!(at(&table, 8080, "h", &req("/")), "mine");
    let theirs = statuses.iter().find(|s| s.route == "other/theirs").unwrap();
    assert!(!theirs.accepted);
    assert_eq!(theirs.reason, "NotAllowedByListeners");
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let yaml = "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{name: edge, namespace: infra, port: 8080}]\n  rules:\n  - name: api\n    backendRefs: [{name: api, namespace: other, port: 80}]\n  - name: local\n    matches: [{path: {type: PathPrefix, value: /local}}]\n    backendRefs: [{name: echo, port: 80}]\n";
    let (table, statuses) = compile_gateway(yaml, false);
    assert_eq!(
        summary(&statuses),
        [(
            "mesh/r".into(),
            "Gateway/infra/edge:8080".into(),
            true,
            false,
            "RefNotPermitted".into()
        )]
    );
    let Lookup::Matched(m) = table.lookup_gateway(8080, "h", &req("/").head()) else {
        panic!("no match");
    };
    assert!(!m.rule.backends[0].resolved, "500 for whoever picks it");
    let Lookup::Matched(m) = table.lookup_gateway(8080, "h", &req("/local").head()) else {
        panic!("no match");
    };
    assert!(m.rule.backends[0].resolved, "same namespace needs no grant");

    let (table, statuses) = compile_gateway(yaml, true);
    assert!(statuses[0].resolved_refs, "{statuses:#?}");
    let Lookup::Matched(m) = table.lookup_gateway(8080, "h", &req("/").head()) else {
        panic!("no match");
    };
    assert!(m.rule.backends[0].resolved);

    // Mesh routes need no grant (GEP-1294), whatever the ingress says.
    let mesh = "metadata: {name: m, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - backendRefs: [{name: api, namespace: other, port: 80}]\n";
    let (_, statuses) = compile_gateway(mesh, false);
    assert!(statuses[0].resolved_refs, "{statuses:#?}");
}

#[test]
fn precedence_is_unchanged_under_a_virtual_host() {
    let yaml = "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{name: edge, namespace: infra, sectionName: exact}]\n  rules:\n  - name: prefix\n    matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: echo, port: 80}]\n  - name: longer\n    matches: [{path: {type: PathPrefix, value: /a/b}}]\n    backendRefs: [{name: echo, port: 80}]\n  - name: exact\n    matches: [{path: {type: Exact, value: /a/b}}]\n    backendRefs: [{name: echo, port: 80}]\n  - name: header\n    matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: x-canary, value: \"1\"}]}]\n    backendRefs: [{name: echo, port: 80}]\n";
    let (table, _) = compile_gateway(yaml, false);
    let host = "api.shop.example";
    assert_eq!(at(&table, 80, host, &req("/a/b")), "exact");
    assert_eq!(at(&table, 80, host, &req("/a/b/c")), "longer");
    assert_eq!(at(&table, 80, host, &req("/a/x")), "prefix");
    assert_eq!(
        at(&table, 80, host, &req("/a/x").header("x-canary", "1")),
        "header"
    );
    assert_eq!(at(&table, 80, host, &req("/z")), "404");
    // Mesh lookups are untouched by gateway attachments.
    assert_eq!(hit(&table, "echo", 80, &req("/a")), "no routes");
}

#[test]
fn the_dump_shows_virtual_hosts() {
    let yaml = route("any", NS, EDGE, "", &[("catch-all", "/")]);
    let (table, _) = compile_gateway(&yaml, false);
    let dump = table.dump();
    let ports = dump["gatewayListeners"].as_array().unwrap();
    assert_eq!(ports.len(), 3, "{dump:#}");
    assert_eq!(ports[0]["port"], 80);
    let hosts: Vec<_> = ports[0]["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["hostname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["api.shop.example", "*.shop.example", "*"]);
}
