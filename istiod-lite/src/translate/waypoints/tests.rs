//! Waypoints from manifests: who binds to which waypoint (and what Address resources say about
//! it), and what each waypoint's configuration holds.

use super::*;
use crate::manifests;
use crate::translate::{translate, Translation};
use meshcore::api::workload as wire;

/// Three waypoints in `shop` (for all, for services, for workloads), a shared one in `infra`
/// admitting every namespace, a Gateway of another class, and the objects that use them.
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: shop-wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-wp, namespace: shop, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: svc-only, namespace: shop, annotations: {gateway.istio.io/service-account: reviews-waypoint}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl-wp, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: infra}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: shop-wp, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: shop-wp}}
spec:
  clusterIP: 10.96.0.10
  selector: {gateway.networking.k8s.io/gateway-name: shop-wp}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: svc-only}}
spec:
  clusterIP: 10.96.0.2
  selector: {app: reviews}
  ports: [{name: grpc, port: 9080, targetPort: api, appProtocol: grpc}]
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.96.0.3
  selector: {app: payments}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop, labels: {istio.io/use-waypoint: ingress}}
spec: {clusterIP: 10.96.0.4, selector: {app: legacy}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ghost-user, namespace: shop, labels: {istio.io/use-waypoint: ghost}}
spec: {clusterIP: 10.96.0.5, selector: {app: ghost}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: catalog
  namespace: other
  labels: {istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra}
spec: {clusterIP: 10.96.1.1, selector: {app: catalog}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: sneaky
  namespace: other
  labels: {istio.io/use-waypoint: shop-wp, istio.io/use-waypoint-namespace: shop}
spec: {clusterIP: 10.96.1.2, selector: {app: sneaky}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: inventory, namespace: other}
spec: {clusterIP: 10.96.1.3, selector: {app: inventory}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: audit, namespace: other}
spec: {clusterIP: 10.96.1.4, selector: {app: audit}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: shop-wp-7d9f, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: shop-wp}}
  spec: {serviceAccountName: shop-wp, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.1.0.10, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
  spec: {serviceAccountName: cart, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.1.0.1, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: cart-2, namespace: shop, labels: {app: cart, istio.io/use-waypoint: svc-only}}
  spec: {serviceAccountName: cart, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.1.0.2, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: cart-3, namespace: shop, labels: {app: cart, istio.io/use-waypoint: wl-wp}}
  spec: {serviceAccountName: cart, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.1.0.3, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: reviews-1, namespace: shop, labels: {app: reviews, istio.io/use-waypoint: none}}
  spec:
    serviceAccountName: reviews
    nodeName: node-1
    containers: [{name: c, image: i, ports: [{name: api, containerPort: 7070}]}]
  status: {phase: Running, podIP: 10.1.0.4, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: payments-1, namespace: shop, labels: {app: payments}}
  spec: {serviceAccountName: payments, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.1.0.5, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: catalog-1, namespace: other, labels: {app: catalog}}
  spec: {serviceAccountName: catalog, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.2.0.1, conditions: [{type: Ready, status: "True"}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: inventory-1, namespace: other, labels: {app: inventory, version: v1}}
  spec: {serviceAccountName: inventory, nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.2.0.2}
- apiVersion: v1
  kind: Pod
  metadata: {name: audit-1, namespace: other, labels: {app: audit}}
  spec: {nodeName: node-1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.2.0.3, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart-route, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: audit, namespace: other, port: 80}}
    backendRefs:
    - {name: cart, port: 80, weight: 90}
    - {name: inventory, namespace: other, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: gw-route, namespace: shop}
spec:
  parentRefs: [{name: shop-wp}]
  rules: [{matches: [{path: {type: PathPrefix, value: /v2}}], backendRefs: [{name: cart, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-route, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: unbound-route, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: payments}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{matches: [{method: {service: reviews.Reviews}}], backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-policy, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: shop-wp}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-policy, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-policy, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: class-policy, namespace: istio-system}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  action: DENY
  rules: [{from: [{source: {namespaces: [quarantine]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: selector-policy, namespace: shop}
spec: {selector: {matchLabels: {app: cart}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cross, namespace: other}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: shop-wp, namespace: shop}]
"#;

fn mesh() -> Cluster {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(MESH, "mesh.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    cluster
}

fn addresses(t: &Translation) -> BTreeMap<String, Option<String>> {
    let hostname = |w: &Option<wire::GatewayAddress>| {
        w.as_ref().map(|g| match &g.destination {
            Some(wire::gateway_address::Destination::Hostname(h)) => {
                assert_eq!(g.hbone_mtls_port, 15008);
                format!("{}/{}", h.namespace, h.hostname)
            }
            other => panic!("unexpected destination {other:?}"),
        })
    };
    let services = t.services.iter().map(|s| {
        (
            format!("Service {}/{}", s.namespace, s.name),
            hostname(&s.waypoint),
        )
    });
    let workloads = t.workloads.iter().map(|w| {
        (
            format!("Pod {}/{}", w.namespace, w.name),
            hostname(&w.waypoint),
        )
    });
    services.chain(workloads).collect()
}

#[test]
fn bindings_follow_istio_precedence() {
    let t = translate(&mesh(), &ClusterInfo::default());
    let got = addresses(&t);
    let shop_wp = Some("shop/shop-wp.shop.svc.cluster.local".to_owned());
    let expect: BTreeMap<String, Option<String>> = [
        // The namespace label binds the Service; waypoint-for all.
        ("Service shop/cart", shop_wp.clone()),
        (
            "Service shop/reviews",
            Some("shop/svc-only.shop.svc.cluster.local".into()),
        ),
        ("Service shop/payments", None), // own label `none` beats the namespace's
        ("Service shop/legacy", None),   // not a waypoint class: noted
        ("Service shop/ghost-user", None), // no such waypoint: noted
        ("Service shop/shop-wp", None),  // the waypoint's own Service
        (
            "Service other/catalog",
            Some("infra/shared.infra.svc.cluster.local".into()),
        ),
        ("Service other/sneaky", None), // shop-wp admits only its own namespace: noted
        ("Service other/inventory", None),
        ("Service other/audit", None),
        ("Pod shop/cart-1", shop_wp.clone()), // the namespace label binds pods too (all)
        ("Pod shop/cart-2", None),            // its own label names a service-only waypoint
        (
            "Pod shop/cart-3",
            Some("shop/wl-wp.shop.svc.cluster.local".into()),
        ),
        ("Pod shop/reviews-1", None), // opted out
        ("Pod shop/payments-1", shop_wp),
        ("Pod shop/shop-wp-7d9f", None), // the waypoint's own pod
        ("Pod other/catalog-1", None),
        ("Pod other/inventory-1", None),
        ("Pod other/audit-1", None),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(got, expect);

    let notes: Vec<String> = t
        .notes
        .iter()
        .filter(|n| n.message.starts_with("istio.io/use-waypoint"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        notes,
        [
            "Pod shop/cart-2: istio.io/use-waypoint: waypoint shop/svc-only is \
             istio.io/waypoint-for=service and does not serve workloads; no waypoint used",
            "Service other/sneaky: istio.io/use-waypoint: waypoint shop/shop-wp does not admit \
             namespace other (its listeners' allowedRoutes.namespaces); no waypoint used",
            "Service shop/ghost-user: istio.io/use-waypoint: waypoint shop/ghost does not exist \
             (no Gateway of class istio-waypoint by that name); no waypoint used",
            "Service shop/legacy: istio.io/use-waypoint: Gateway shop/ingress is of class istio, \
             not istio-waypoint; no waypoint used",
        ]
    );
}

#[test]
fn a_namespace_label_binds_only_what_its_waypoint_serves() {
    let mut cluster = mesh();
    let shop = cluster
        .namespaces
        .iter_mut()
        .find(|n| n.metadata.name.as_deref() == Some("shop"))
        .unwrap();
    let labels = shop.metadata.labels.as_mut().unwrap();
    labels.insert("istio.io/use-waypoint".into(), "wl-wp".into());
    let got = addresses(&translate(&cluster, &ClusterInfo::default()));
    // wl-wp serves workloads: Services in the namespace get no waypoint, and no note either.
    assert_eq!(got["Service shop/cart"], None);
    assert_eq!(
        got["Pod shop/cart-1"].as_deref(),
        Some("shop/wl-wp.shop.svc.cluster.local")
    );
    assert_eq!(got["Pod shop/shop-wp-7d9f"], None);
    // The namespace's own missing waypoint is noted once, on the Namespace.
    labels_of(&mut cluster, "shop").insert("istio.io/use-waypoint".into(), "gone".into());
    let t = translate(&cluster, &ClusterInfo::default());
    let on_namespace: Vec<&Note> = t
        .notes
        .iter()
        .filter(|n| n.object == "Namespace shop")
        .collect();
    assert_eq!(on_namespace.len(), 1, "{:?}", t.notes);
    assert_eq!(on_namespace[0].namespace(), Some("shop"));
}

fn labels_of<'a>(cluster: &'a mut Cluster, ns: &str) -> &'a mut BTreeMap<String, String> {
    cluster
        .namespaces
        .iter_mut()
        .find(|n| n.metadata.name.as_deref() == Some(ns))
        .and_then(|n| n.metadata.labels.as_mut())
        .unwrap()
}

fn configs() -> WaypointTranslation {
    let cluster = mesh();
    waypoints(&View::from_cluster(&cluster), &ClusterInfo::default())
}

fn config<'a>(t: &'a WaypointTranslation, key: &str) -> &'a WaypointConfig {
    t.configs
        .iter()
        .find(|(ns, name, _)| format!("{ns}/{name}") == key)
        .map(|(_, _, c)| c)
        .unwrap_or_else(|| panic!("no config for {key}"))
}

fn service_names(c: &WaypointConfig) -> Vec<String> {
    c.services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect()
}

#[test]
fn each_waypoint_gets_its_services_routes_and_policies() {
    let t = configs();
    let keys: Vec<String> = t
        .configs
        .iter()
        .map(|(ns, n, _)| format!("{ns}/{n}"))
        .collect();
    // shop/ingress (class istio) is an ingress gateway: see `translate::ingress`.
    assert_eq!(
        keys,
        [
            "infra/shared",
            "shop/ingress",
            "shop/shop-wp",
            "shop/svc-only",
            "shop/wl-wp"
        ]
    );

    let shop = config(&t, "shop/shop-wp");
    // cart is bound; payments is the Service of a pod bound to it; inventory and audit are a
    // route's backend and mirror.
    assert_eq!(
        service_names(shop),
        [
            "other/audit",
            "other/inventory",
            "shop/cart",
            "shop/payments"
        ]
    );
    let routes: Vec<String> = shop.http_routes.iter().map(|r| r.metadata.key()).collect();
    assert_eq!(routes, ["shop/cart-route", "shop/gw-route"]);
    assert!(shop.grpc_routes.is_empty());
    let policies: Vec<String> = shop
        .authorization_policies
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(
        policies,
        [
            "istio-system/class-policy",
            "shop/gw-policy",
            "shop/svc-policy"
        ]
    );

    let reviews = config(&t, "shop/svc-only");
    assert_eq!(service_names(reviews), ["shop/reviews"]);
    assert!(reviews.http_routes.is_empty());
    let grpc: Vec<String> = reviews
        .grpc_routes
        .iter()
        .map(|r| r.metadata.key())
        .collect();
    assert_eq!(grpc, ["shop/reviews-grpc"]);
    let policies: Vec<String> = reviews
        .authorization_policies
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(
        policies,
        ["istio-system/class-policy", "shop/reviews-policy"]
    );

    let shared = config(&t, "infra/shared");
    assert_eq!(service_names(shared), ["other/catalog"]);
    let routes: Vec<String> = shared
        .http_routes
        .iter()
        .map(|r| r.metadata.key())
        .collect();
    assert_eq!(routes, ["other/catalog-route"]);
    let policies: Vec<String> = shared
        .authorization_policies
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(policies, ["istio-system/class-policy"]);

    // A workload waypoint resolves its pods through their Services; no routes attach to it.
    let wl = config(&t, "shop/wl-wp");
    assert_eq!(service_names(wl), ["shop/cart"]);
    assert!(wl.http_routes.is_empty() && wl.authorization_policies.len() == 1);

    assert_eq!(
        t.identities.get("shop/svc-only").map(String::as_str),
        Some("spiffe://cluster.local/ns/shop/sa/reviews-waypoint"),
        "the service-account annotation wins"
    );
    assert_eq!(
        t.identities.get("shop/shop-wp").map(String::as_str),
        Some("spiffe://cluster.local/ns/shop/sa/shop-wp")
    );
}

#[test]
fn services_carry_addresses_ports_and_endpoints() {
    let t = configs();
    let shop = config(&t, "shop/shop-wp");
    let cart = &shop.services[2];
    assert_eq!(
        cart.hostname.as_deref(),
        Some("cart.shop.svc.cluster.local")
    );
    assert_eq!(
        cart.vips,
        ["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        cart.ports,
        [l7::service::ServicePort {
            port: 80,
            target_port: Some(8080),
            name: Some("http".into()),
            app_protocol: None,
        }]
    );
    let endpoints: Vec<(String, String, String, bool)> = cart
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.clone().unwrap(),
                e.address.to_string(),
                e.service_account.clone(),
                e.healthy,
            )
        })
        .collect();
    let ep = |n: &str, ip: &str| (n.to_owned(), ip.to_owned(), "cart".to_owned(), true);
    assert_eq!(
        endpoints,
        [
            ep("cart-1", "10.1.0.1"),
            ep("cart-2", "10.1.0.2"),
            ep("cart-3", "10.1.0.3")
        ]
    );
    assert_eq!(cart.endpoints[0].namespace.as_deref(), Some("shop"));
    assert_eq!(cart.endpoints[0].labels["app"], "cart");
    assert!(
        cart.endpoints
            .iter()
            .all(|e| e.protocol == l7::service::TunnelProtocol::HBONE),
        "pods of an ambient namespace are reached over HBONE"
    );

    let inventory = &shop.services[1];
    assert!(!inventory.endpoints[0].healthy, "not Ready");
    assert_eq!(inventory.endpoints[0].labels["version"], "v1");
    let audit = &shop.services[0];
    assert_eq!(audit.endpoints[0].service_account, "default");

    // A pod that opts out of the mesh is reached in plain TCP.
    let mut cluster = mesh();
    let pod = cluster
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("cart-2"))
        .unwrap();
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("istio.io/dataplane-mode".into(), "none".into());
    let t2 = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    let cart2 = &config(&t2, "shop/shop-wp").services[2];
    let protocols: Vec<_> = cart2.endpoints.iter().map(|e| e.protocol).collect();
    use l7::service::TunnelProtocol::{HBONE, TCP};
    assert_eq!(protocols, [HBONE, TCP, HBONE]);

    // A named targetPort is resolved from the pods' container ports.
    let reviews = &config(&t, "shop/svc-only").services[0];
    assert_eq!(reviews.ports[0].target_port, Some(7070));
    assert_eq!(reviews.ports[0].app_protocol.as_deref(), Some("grpc"));
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn routes_and_policies_keep_their_shape() {
    let t = configs();
    let shop = config(&t, "shop/shop-wp");
    let route = &shop.http_routes[0];
    assert_eq!(route.kind, "HTTPRoute");
    assert_eq!(
        route.spec.rules[0].backend_refs[1].namespace.as_deref(),
        Some("other")
    );
    assert_eq!(route.spec.parent_refs[0].port, Some(80));
    // Policies arrive exactly as meshcore parses the same YAML.
    let written: l7::authz::AuthorizationPolicy = serde_yaml_ng::from_str(
        "metadata: {name: gw-policy, namespace: shop}\n\
         spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: shop-wp}]\n  \
         action: DENY\n  rules: [{to: [{operation: {methods: [DELETE], paths: [\"/admin*\"]}}]}]",
    )
    .unwrap();
    let sent = &shop.authorization_policies[1];
    assert_eq!(sent.spec, written.spec);
    assert_eq!(sent.metadata, written.metadata);
    // And the whole configuration survives its JSON encoding.
    let json = serde_json::to_string(shop).unwrap();
    let back: WaypointConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, shop);
}

#[test]
fn a_pod_bound_without_a_service_is_noted() {
    let mut cluster = mesh();
    let mut errors = Vec::new();
    manifests::load_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lonely, namespace: shop, labels: {istio.io/use-waypoint: wl-wp}}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.1.0.99}\n",
        "lonely.yaml",
        &mut cluster,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    assert_eq!(
        t.notes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "Pod shop/lonely: uses waypoint shop/wl-wp but no Service selects it: the waypoint \
          cannot resolve its address"
        ]
    );
}

#[test]
fn no_waypoints_no_configs() {
    let mut cluster = mesh();
    cluster.gateways.clear();
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    assert!(t.configs.is_empty() && t.identities.is_empty() && t.notes.is_empty());
    // Routes on Services are still the mesh's: not attached, and told why.
    assert!(!t.routes.is_empty());
    for r in &t.routes {
        assert!(
            r.parents
                .iter()
                .all(|p| !p.accepted.status && p.accepted.reason == "NoMatchingParent"),
            "{r:?}"
        );
    }
}

#[test]
fn gateway_api_manifests_are_strict_except_for_unsupported_filters() {
    let load = |text: &str| {
        let mut cluster = Cluster::default();
        let mut errors = Vec::new();
        manifests::load_text(text, "r.yaml", &mut cluster, &mut errors);
        (cluster, errors)
    };
    // CORS parses (the waypoint reports it as unsupported in the route's status).
    let (cluster, errors) = load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n\
         spec:\n  parentRefs: [{name: wp}]\n  rules: [{filters: [{type: CORS, cors: {allowOrigins: ['*']}}]}]\n\
         status: {parents: []}\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cluster.http_routes.len(), 1);
    let (_, errors) = load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: shop}\n\
         spec: {parentRefz: []}\n",
    );
    assert!(
        errors.len() == 1
            && errors[0].contains("r.yaml document 1 (GRPCRoute shop/g)")
            && errors[0].contains("parentRefz"),
        "{errors:?}"
    );
    let (_, errors) = load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, protocl: x}]}\n",
    );
    assert_eq!(
        errors,
        ["r.yaml document 1 (Gateway shop/wp): unknown field spec.listeners.0.protocl"]
    );
}

#[test]
fn virtual_services_and_destination_rules_reach_the_waypoint_of_their_service() {
    let mut cluster = mesh();
    let mut errors = Vec::new();
    manifests::load_text(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - route: [{destination: {host: cart, subset: v2}}]
    mirror: {host: inventory.other}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: cart-ingress, namespace: shop}
spec: {hosts: [cart], gateways: [istio-system/ingress], http: [{route: [{destination: {host: cart}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec: {host: cart.shop.svc.cluster.local, subsets: [{name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: inventory, namespace: other}
spec: {host: inventory, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: catalog, namespace: other}
spec: {host: catalog}
"#,
        "traffic.yaml",
        &mut cluster,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    let c = config(&t, "shop/shop-wp");
    let vs: Vec<String> = c
        .virtual_services
        .iter()
        .map(|v| v.metadata.key())
        .collect();
    assert_eq!(vs, ["shop/cart"], "the ingress one stays out");
    let dr: Vec<String> = c
        .destination_rules
        .iter()
        .map(|d| d.metadata.key())
        .collect();
    assert_eq!(
        dr,
        ["other/inventory", "shop/cart"],
        "catalog is not among its services"
    );
    assert!(
        service_names(c).contains(&"other/inventory".to_owned()),
        "the mirror joins"
    );
    // Other waypoints get only their own.
    let shared = config(&t, "infra/shared");
    assert!(shared.virtual_services.is_empty());
    assert_eq!(shared.destination_rules[0].metadata.key(), "other/catalog");
    // A strict reader: an unknown field is refused by name.
    let mut errors = Vec::new();
    manifests::load_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [a], htp: []}\n",
        "bad.yaml",
        &mut Cluster::default(),
        &mut errors,
    );
    assert!(errors.iter().any(|e| e.contains("htp")), "{errors:?}");
}

#[test]
fn istio_hosts_name_services() {
    let d = "cluster.local";
    let k = |ns: &str, n: &str| Some((ns.to_owned(), n.to_owned()));
    assert_eq!(host_service("reviews", "shop", d), k("shop", "reviews"));
    assert_eq!(
        host_service("reviews.other", "shop", d),
        k("other", "reviews")
    );
    assert_eq!(
        host_service("reviews.other.svc", "shop", d),
        k("other", "reviews")
    );
    assert_eq!(
        host_service("reviews.other.svc.cluster.local", "shop", d),
        k("other", "reviews")
    );
    assert_eq!(host_service("*.other.svc.cluster.local", "shop", d), None);
    assert_eq!(host_service("example.com.foo.bar", "shop", d), None);
}

mod request_authn;
