//! Ingress gateways from manifests: listeners, certificates, grants, attached routes, Services,
//! policies, identity, and the route status towards them.

use meshcore::l7::ingress::ListenerProtocol;

use crate::cluster::Cluster;
use crate::manifests;
use crate::translate::ingress::IngressStatus;
use crate::translate::route_status::RouteStatus;
use crate::translate::waypoints::{waypoints, View, WaypointTranslation};
use crate::translate::ClusterInfo;

const PEM: &str = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----\\n";

fn secret(namespace: &str, name: &str, data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: kubernetes.io/tls\nstringData: {data}\n---\n"
    )
}

fn mesh() -> String {
    let tls = format!("{{tls.crt: \"{PEM}\", tls.key: \"{KEY}\"}}");
    let mut yaml = String::new();
    yaml += &secret("gw", "web-cert", &tls);
    yaml += &secret("certs", "shared", &tls);
    yaml += &secret("other", "foreign", &tls);
    yaml += &secret("gw", "no-key", &format!("{{tls.crt: \"{PEM}\"}}"));
    yaml += r#"
apiVersion: v1
kind: Namespace
metadata: {name: gw, labels: {team: edge}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a, istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: b}}
---
apiVersion: v1
kind: Secret
metadata: {name: opaque, namespace: gw}
stringData: {tls.crt: x, tls.key: y}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: gw, generation: 2}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: "*.example.com"
    tls: {certificateRefs: [{name: web-cert}]}
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}
  - {name: shared, port: 8443, protocol: HTTPS, tls: {mode: Terminate, certificateRefs: [{kind: Secret, group: "", name: shared, namespace: certs}]}}
  - {name: no-grant, port: 9443, protocol: HTTPS, tls: {certificateRefs: [{name: foreign, namespace: other}]}}
  - {name: missing, port: 10443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}, {name: opaque}, {name: no-key}]}}
  - {name: half, port: 11443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}, {name: web-cert}]}}
  - {name: tcp, port: 9000, protocol: TCP}
  - {name: passthrough, port: 9001, protocol: HTTPS, tls: {mode: Passthrough}}
  - {name: same, port: 8080, protocol: HTTP}
  - {name: grpc-only, port: 8081, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}, {kind: TCPRoute}]}}
  - {name: bad-kinds, port: 8082, protocol: HTTP, allowedRoutes: {kinds: [{kind: TLSRoute}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: api, namespace: gw, annotations: {gateway.istio.io/service-account: edge}}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: gw}
spec:
  gatewayClassName: example.com/other
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways-use-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gw}]
  to: [{group: "", kind: Secret}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: api}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {serviceAccountName: cart, containers: [{name: app, image: echo}]}
status: {podIP: 10.10.1.7, phase: Running, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec:
  clusterIP: 10.96.0.20
  selector: {app: api}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: secret-api, namespace: other}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: web, namespace: gw, sectionName: http}]
  rules:
  - backendRefs: [{name: cart, port: 80}, {name: api, namespace: other, port: 80}]
  - backendRefs: [{name: secret-api, namespace: other, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: secure, namespace: shop}
spec:
  hostnames: [shop.example.com]
  parentRefs: [{name: web, namespace: gw, sectionName: https}, {name: web, namespace: gw, sectionName: same}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-host, namespace: shop}
spec:
  hostnames: [shop.example.org]
  parentRefs: [{name: web, namespace: gw, sectionName: https}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: local, namespace: gw}
spec:
  parentRefs: [{name: web}, {name: web, sectionName: missing}, {name: elsewhere}]
  rules: [{backendRefs: [{name: cart, namespace: shop, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: gw}
spec:
  parentRefs: [{name: web, port: 8081}]
  rules: [{backendRefs: [{name: cart, namespace: shop, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: nowhere, namespace: other}
spec:
  parentRefs: [{name: web, namespace: gw, sectionName: https}]
  rules: [{backendRefs: [{name: api, port: 80}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gate, namespace: gw}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-afar, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web}]
"#;
    yaml
}

fn translate() -> WaypointTranslation {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(&mesh(), "mesh.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cluster.secrets.len(), 4, "the Opaque Secret is not kept");
    waypoints(&View::from_cluster(&cluster), &ClusterInfo::default())
}

fn status<'a>(t: &'a WaypointTranslation, name: &str) -> &'a IngressStatus {
    t.ingress.iter().find(|s| s.name == name).unwrap()
}

fn route<'a>(t: &'a WaypointTranslation, object: &str) -> &'a RouteStatus {
    t.routes.iter().find(|r| r.object() == object).unwrap()
}

/// `(listener, served, Accepted reason, ResolvedRefs reason, attached routes)`.
fn listeners(s: &IngressStatus) -> Vec<(&str, bool, &str, &str, u32)> {
    s.listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.served.is_ok(),
                l.accepted.reason.as_str(),
                l.resolved_refs.reason.as_str(),
                l.attached_routes,
            )
        })
        .collect()
}

#[test]
fn listeners_resolve_with_their_conditions_and_attached_routes() {
    let t = translate();
    let web = status(&t, "web");
    assert_eq!(
        listeners(web),
        [
            ("http", true, "Accepted", "ResolvedRefs", 2),
            ("https", true, "Accepted", "ResolvedRefs", 1),
            ("shared", true, "Accepted", "ResolvedRefs", 1), // gw/local: no sectionName
            ("no-grant", false, "Accepted", "RefNotPermitted", 0),
            ("missing", false, "Accepted", "InvalidCertificateRef", 0),
            ("half", true, "Accepted", "InvalidCertificateRef", 1),
            ("tcp", false, "UnsupportedProtocol", "ResolvedRefs", 0),
            (
                "passthrough",
                false,
                "UnsupportedProtocol",
                "ResolvedRefs",
                0
            ),
            ("same", true, "Accepted", "ResolvedRefs", 1),
            ("grpc-only", true, "Accepted", "InvalidRouteKinds", 1),
            ("bad-kinds", false, "Accepted", "InvalidRouteKinds", 0),
        ]
    );
    let missing = &web.listeners[4].resolved_refs.message;
    assert_eq!(
        missing,
        "tls.certificateRefs[0]: Secret gw/nope does not exist or is not of type kubernetes.io/tls; \
         tls.certificateRefs[1]: Secret gw/opaque does not exist or is not of type kubernetes.io/tls; \
         tls.certificateRefs[2]: Secret gw/no-key lacks a PEM tls.crt or tls.key"
    );
    assert!(
        web.listeners[3]
            .resolved_refs
            .message
            .contains("Secret other/foreign is in another namespace"),
        "{:?}",
        web.listeners[3]
    );
    assert_eq!(
        web.listeners[6].accepted.message,
        "protocol TCP is not supported: only HTTP and HTTPS"
    );
    assert_eq!(
        web.listeners[7].accepted.message,
        "tls.mode Passthrough is not supported: only Terminate (HTTPS)"
    );
    assert_eq!(web.listeners[0].supported_kinds, ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(web.listeners[9].supported_kinds, ["GRPCRoute"]);
    assert!(web.listeners[6].supported_kinds.is_empty());
    assert!(web.accepted.status, "{:?}", web.accepted);
    assert_eq!(web.generation, Some(2));
    assert!(
        t.ingress.iter().all(|s| s.name != "elsewhere"),
        "other classes are not ours"
    );
}

#[test]
fn the_configuration_carries_served_listeners_certificates_and_grants() {
    let t = translate();
    let (_, _, config) = t
        .configs
        .iter()
        .find(|(ns, name, _)| ns == "gw" && name == "web")
        .unwrap();
    let ingress = config.ingress.as_ref().unwrap();
    assert_eq!(
        (ingress.namespace.as_str(), ingress.name.as_str()),
        ("gw", "web")
    );
    let names: Vec<&str> = ingress.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["http", "https", "shared", "half", "same", "grpc-only"]
    );
    let http = &ingress.listeners[0];
    assert_eq!((http.port, http.protocol), (80, ListenerProtocol::Http));
    assert_eq!(http.allowed_namespaces, None, "from: All");
    let https = &ingress.listeners[1];
    assert_eq!(https.protocol, ListenerProtocol::Https);
    assert_eq!(https.hostname.as_deref(), Some("*.example.com"));
    assert_eq!(
        https.allowed_namespaces,
        Some(vec!["shop".to_owned()]),
        "Selector team=a"
    );
    assert_eq!(https.certificates.len(), 1);
    assert_eq!(https.certificates[0].secret, "gw/web-cert");
    assert!(https.certificates[0].private_key.contains("PRIVATE KEY"));
    assert_eq!(ingress.listeners[2].certificates[0].secret, "certs/shared");
    assert_eq!(
        ingress.listeners[3].certificates.len(),
        1,
        "the one that resolved"
    );
    assert_eq!(
        ingress.listeners[4].allowed_namespaces,
        Some(vec!["gw".to_owned()]),
        "Same"
    );
    assert_eq!(ingress.listeners[5].allowed_kinds, ["GRPCRoute"]);
    // Grants of the namespaces the attached routes' backends are in (other), not the certs'.
    let grants: Vec<&str> = ingress
        .reference_grants
        .iter()
        .map(|g| g.namespace.as_str())
        .collect();
    assert_eq!(grants, ["other"]);

    let routes: Vec<String> = config
        .http_routes
        .iter()
        .map(|r| r.metadata.key())
        .collect();
    assert_eq!(routes, ["gw/local", "shop/secure", "shop/shop"]);
    let grpc: Vec<String> = config
        .grpc_routes
        .iter()
        .map(|r| r.metadata.key())
        .collect();
    assert_eq!(grpc, ["gw/rpc"]);
    // Backends: shop/cart (same namespace for shop's routes) and other/api (granted); not
    // other/secret-api (no grant names it). gw/local's shop/cart has no grant, but shop's
    // routes reach it anyway.
    let services: Vec<String> = config
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(services, ["other/api", "shop/cart"]);
    let cart = &config.services[1];
    assert_eq!(cart.endpoints.len(), 1);
    assert_eq!(cart.endpoints[0].service_account, "cart");
    assert_eq!(
        cart.endpoints[0].protocol,
        meshcore::l7::service::TunnelProtocol::HBONE,
        "an ambient pod is reached over HBONE"
    );
    let policies: Vec<String> = config
        .authorization_policies
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(
        policies,
        ["gw/gate"],
        "only the Gateway's namespace's policies"
    );
    assert!(config.virtual_services.is_empty());
}

#[test]
fn identity_is_the_annotation_or_name_istio() {
    let t = translate();
    assert_eq!(
        t.identities.get("gw/web").map(String::as_str),
        Some("spiffe://cluster.local/ns/gw/sa/web-istio")
    );
    assert_eq!(
        t.identities.get("gw/api").map(String::as_str),
        Some("spiffe://cluster.local/ns/gw/sa/edge")
    );
    assert!(!t.identities.contains_key("gw/elsewhere"));
    assert_eq!(status(&t, "api").service_account, "edge");
}

#[test]
fn route_status_towards_ingress_gateways() {
    let t = translate();
    let conds = |r: &RouteStatus| -> Vec<(Option<String>, bool, String, String)> {
        r.parents
            .iter()
            .map(|p| {
                (
                    p.parent_ref.section_name.clone(),
                    p.accepted.status,
                    p.accepted.reason.clone(),
                    p.resolved_refs.reason.clone(),
                )
            })
            .collect()
    };
    let shop = route(&t, "HTTPRoute shop/shop");
    assert_eq!(
        conds(shop),
        [(
            Some("http".into()),
            true,
            "Accepted".into(),
            "RefNotPermitted".into()
        )]
    );
    assert_eq!(
        shop.parents[0].resolved_refs.message,
        "rules[1].backendRefs[0]: Service other/secret-api is in another namespace and no \
         ReferenceGrant there lets HTTPRoutes of namespace shop refer to it"
    );
    assert_eq!(
        shop.parents[0].accepted.message,
        "attached to listener(s) http of Gateway gw/web"
    );
    let secure = route(&t, "HTTPRoute shop/secure");
    assert_eq!(
        conds(secure),
        [
            (
                Some("https".into()),
                true,
                "Accepted".into(),
                "ResolvedRefs".into()
            ),
            (
                Some("same".into()),
                false,
                "NotAllowedByListeners".into(),
                "ResolvedRefs".into()
            ),
        ]
    );
    assert!(!secure.parents[0]
        .accepted
        .message
        .contains("hostnames are ignored"));
    let wrong = route(&t, "HTTPRoute shop/wrong-host");
    assert_eq!(conds(wrong)[0].2, "NoMatchingListenerHostname");
    let local = route(&t, "HTTPRoute gw/local");
    assert_eq!(
        conds(local),
        [
            (None, true, "Accepted".into(), "RefNotPermitted".into()),
            (
                Some("missing".into()),
                false,
                "NoMatchingParent".into(),
                "RefNotPermitted".into()
            ),
        ],
        "the Gateway of another class gets no entry"
    );
    assert_eq!(
        local.parents[1].accepted.message,
        "listener \"missing\" of Gateway gw/web is not served: no certificate resolved"
    );
    assert_eq!(
        local.parents[0].accepted.message,
        "attached to listener(s) http, shared, half, same of Gateway gw/web"
    );
    let nowhere = route(&t, "HTTPRoute other/nowhere");
    assert_eq!(conds(nowhere)[0].2, "NotAllowedByListeners");
    let rpc = route(&t, "GRPCRoute gw/rpc");
    assert!(conds(rpc)[0].1);
}

fn one_gateway(listeners: &str) -> IngressStatus {
    let tls = format!("{{tls.crt: \"{PEM}\", tls.key: \"{KEY}\"}}");
    let yaml = format!(
        "{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: g, namespace: gw}}\nspec:\n  gatewayClassName: istio\n  listeners: {listeners}\n",
        secret("gw", "cert", &tls)
    );
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(&yaml, "g.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let mut t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    t.ingress.remove(0)
}

#[test]
fn conflicting_listeners_are_reported_and_not_served() {
    let s = one_gateway(
        "[{name: a, port: 80, protocol: HTTP}, \
          {name: b, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}, \
          {name: c, port: 81, protocol: HTTP, hostname: x.example}, \
          {name: d, port: 81, protocol: HTTP, hostname: x.example}, \
          {name: e, port: 81, protocol: HTTP, hostname: y.example}, \
          {name: f, port: 82, protocol: HTTP}, {name: g, port: 82, protocol: TCP}]",
    );
    let conflicts: Vec<(&str, bool, &str, bool)> = s
        .listeners
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.conflicted.status,
                l.conflicted.reason.as_str(),
                l.served.is_ok(),
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        [
            ("a", true, "ProtocolConflict", false),
            ("b", true, "ProtocolConflict", false),
            ("c", true, "HostnameConflict", false),
            ("d", true, "HostnameConflict", false),
            ("e", false, "NoConflicts", true),
            ("f", false, "NoConflicts", true),
            ("g", false, "NoConflicts", false),
        ],
        "an unsupported listener conflicts with nothing"
    );
    assert!(s.accepted.status);
}

#[test]
fn a_gateway_with_nothing_to_serve_is_not_accepted() {
    let s = one_gateway("[{name: t, port: 9000, protocol: TCP}]");
    assert!(!s.accepted.status);
    assert_eq!(s.accepted.reason, "ListenersNotValid");
    assert_eq!(
        s.accepted.message,
        "no listener can be served (\"t\": protocol TCP is not supported: only HTTP and HTTPS)"
    );
    assert!(!s.serves());
    let https = one_gateway("[{name: s, port: 443, protocol: HTTPS}]");
    assert_eq!(
        https.listeners[0].resolved_refs.reason,
        "InvalidCertificateRef"
    );
    assert_eq!(
        https.listeners[0].resolved_refs.message,
        "an HTTPS listener needs tls.certificateRefs"
    );
}

#[test]
fn nothing_is_resolved_without_ingress_gateways() {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {ports: [{port: 80}]}\n",
        "x.yaml",
        &mut cluster,
        &mut errors,
    );
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    assert!(t.ingress.is_empty() && t.configs.is_empty() && t.identities.is_empty());
}
