use std::net::SocketAddr;

use super::*;
use crate::config::local::parse;

const MESH: &str = r#"
workloads:
- {name: a1, namespace: app, serviceAccount: a, workloadIps: [10.0.0.1], protocol: HBONE,
   services: {app/a.app.svc.cluster.local: {80: 8080}}, authorizationPolicies: [app/only-a1]}
- {name: a2, namespace: app, serviceAccount: a, workloadIps: [10.0.0.2], protocol: HBONE,
   services: {app/a.app.svc.cluster.local: {80: 9090}}}
- {name: a3, namespace: app, serviceAccount: a, workloadIps: [10.0.0.3], status: Unhealthy,
   services: {app/a.app.svc.cluster.local: {80: 8080}}}
- {name: b, namespace: other, workloadIps: [10.0.1.1]}
services:
- {name: a, namespace: app, hostname: a.app.svc.cluster.local, vips: [/10.96.0.1], ports: {80: 8080, 443: 0}}
policies:
- {name: mesh-wide, namespace: istio-system, scope: Global, action: Deny, rules: [[[{destinationPorts: [1]}]]]}
- {name: global, namespace: anywhere, scope: Global, action: Deny, rules: [[[{destinationPorts: [2]}]]]}
- {name: ns-app, namespace: app, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [3]}]]]}
- {name: ns-other, namespace: other, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [4]}]]]}
- {name: root-ns, namespace: istio-system, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [6]}]]]}
- {name: only-a1, namespace: app, scope: WorkloadSelector, action: Deny, rules: [[[{destinationPorts: [5]}]]]}
"#;

fn snapshot() -> Snapshot {
    Snapshot::build(parse(MESH, "cluster.local").unwrap(), "cluster.local", 1).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn vip_round_robin_skips_unhealthy_and_maps_ports() {
    let snap = snapshot();
    let mut picks = Vec::new();
    for _ in 0..6 {
        match snap.resolve(addr("10.96.0.1:80")) {
            Destination::Service { workload, port, .. } => {
                picks.push((workload.workload.name.clone(), port))
            }
            other => panic!("expected a service endpoint, got {other:?}"),
        }
    }
    // a3 is unhealthy; a1 maps 80 → 8080, a2 its own 80 → 9090.
    let a1 = picks.iter().filter(|p| **p == ("a1".into(), 8080)).count();
    let a2 = picks.iter().filter(|p| **p == ("a2".into(), 9090)).count();
    assert_eq!((a1, a2), (3, 3), "{picks:?}");
    // Port 443 has target 0 (same port); an unknown service port is reported.
    assert!(matches!(
        snap.resolve(addr("10.96.0.1:443")),
        Destination::Service { port: 443, .. }
    ));
    assert!(matches!(
        snap.resolve(addr("10.96.0.1:81")),
        Destination::UnknownServicePort { port: 81, .. }
    ));
}

#[test]
fn workload_ips_and_unknown_addresses() {
    let snap = snapshot();
    match snap.resolve(addr("10.0.1.1:7")) {
        Destination::Workload { workload, port } => {
            assert_eq!(
                workload.identity.to_string(),
                "spiffe://cluster.local/ns/other/sa/default"
            );
            assert_eq!(port, 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        snap.resolve(addr("192.0.2.1:80")),
        Destination::Unknown
    ));
    assert_eq!(snap.workload_by_uid("app/a2").unwrap().workload.name, "a2");
}

#[test]
fn no_healthy_endpoint_is_reported() {
    let yaml = "workloads: [{name: x, namespace: n, workloadIps: [10.0.0.9], status: Unhealthy, services: {n/s: {80: 80}}}]\nservices: [{name: s, namespace: n, hostname: s, vips: [/10.96.0.9], ports: {80: 80}}]";
    let snap = Snapshot::build(parse(yaml, "cluster.local").unwrap(), "cluster.local", 1).unwrap();
    assert!(matches!(
        snap.resolve(addr("10.96.0.9:80")),
        Destination::NoHealthyEndpoint { .. }
    ));
}

#[test]
fn policy_scopes_select_the_right_policies() {
    let snap = snapshot();
    let keys = |name: &str| -> Vec<String> {
        let w = snap
            .workload_by_name(if name == "b" { "other" } else { "app" }, name)
            .unwrap();
        snap.policies_for(w)
            .policies()
            .iter()
            .map(|p| p.key())
            .collect()
    };
    assert_eq!(
        keys("a1"),
        [
            "istio-system/mesh-wide",
            "anywhere/global",
            "app/ns-app",
            "app/only-a1"
        ]
    );
    assert_eq!(
        keys("a2"),
        ["istio-system/mesh-wide", "anywhere/global", "app/ns-app"]
    );
    assert_eq!(
        keys("b"),
        [
            "istio-system/mesh-wide",
            "anywhere/global",
            "other/ns-other"
        ]
    );
}

#[test]
fn store_swaps_whole_views_and_refuses_bad_ones() {
    let store = StateStore::new("cluster.local");
    let held = store.load();
    assert_eq!(store.replace(parse(MESH, "cluster.local").unwrap()), Ok(1));
    // A reader holding the old snapshot keeps it.
    assert!(held.config.workloads.is_empty());
    assert_eq!(store.load().config.workloads.len(), 4);
    let mut bad = parse(MESH, "cluster.local").unwrap();
    bad.workloads[0].service_account = "not valid!".into();
    assert!(store.replace(bad).is_err());
    assert_eq!(store.load().version, 1);
}

const WAYPOINTS: &str = r#"
workloads:
- {name: wp-1, namespace: shop, serviceAccount: wp, workloadIps: [10.0.9.1], protocol: HBONE,
   services: {shop/wp.shop.svc.cluster.local: {15008: 15008}}}
- {name: cart-1, namespace: shop, serviceAccount: cart, workloadIps: [10.0.0.5], protocol: HBONE,
   services: {shop/cart.shop.svc.cluster.local: {80: 8080}},
   waypoint: {destination: !address /10.0.9.1, hboneMtlsPort: 15008}}
- {name: web-1, namespace: shop, serviceAccount: web, workloadIps: [10.0.0.6], protocol: HBONE}
- {name: down-wp, namespace: shop, serviceAccount: dwp, workloadIps: [10.0.9.2], protocol: HBONE, status: Unhealthy,
   services: {shop/down.shop.svc.cluster.local: {15008: 15008}}}
services:
- {name: wp, namespace: shop, hostname: wp.shop.svc.cluster.local, vips: [/10.96.9.1], ports: {15008: 15008},
   subjectAltNames: [spiffe://cluster.local/ns/shop/sa/wp-alt]}
- {name: down, namespace: shop, hostname: down.shop.svc.cluster.local, vips: [/10.96.9.2], ports: {15008: 15008}}
- {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local, vips: [/10.96.0.5], ports: {80: 8080},
   waypoint: {destination: !hostname {namespace: shop, hostname: wp.shop.svc.cluster.local}}}
- {name: broken, namespace: shop, hostname: broken.shop.svc.cluster.local, vips: [/10.96.0.7], ports: {80: 8080},
   waypoint: {destination: !hostname {namespace: shop, hostname: down.shop.svc.cluster.local}}}
"#;

#[test]
fn destinations_with_a_waypoint_are_reached_through_it() {
    let snap = Snapshot::build(
        parse(WAYPOINTS, "cluster.local").unwrap(),
        "cluster.local",
        1,
    )
    .unwrap();
    let web = snap.workload_by_name("shop", "web-1").cloned();
    let id = |sa: &str| SpiffeId::new("cluster.local", "shop", sa).unwrap();
    // Service-addressed: the service's waypoint, by hostname, with its SANs.
    assert_eq!(
        snap.waypoint_for(addr("10.96.0.5:80"), web.as_deref()),
        WaypointLookup::Via(WaypointHop {
            hbone: addr("10.0.9.1:15008"),
            expected: vec![id("wp"), id("wp-alt")],
            name: "shop/wp.shop.svc.cluster.local".into(),
        })
    );
    // Workload-addressed: the pod's own waypoint, by address.
    assert!(matches!(
        snap.waypoint_for(addr("10.0.0.5:8080"), web.as_deref()),
        WaypointLookup::Via(WaypointHop { hbone, .. }) if hbone == addr("10.0.9.1:15008")
    ));
    // Traffic from the waypoint itself goes direct.
    let wp = snap.workload_by_name("shop", "wp-1").cloned();
    assert_eq!(
        snap.waypoint_for(addr("10.96.0.5:80"), wp.as_deref()),
        WaypointLookup::Direct
    );
    assert_eq!(
        snap.waypoint_for(addr("10.0.0.5:8080"), wp.as_deref()),
        WaypointLookup::Direct
    );
    // No waypoint: direct; a waypoint without a healthy pod: the connection fails.
    assert_eq!(
        snap.waypoint_for(addr("10.0.0.6:80"), None),
        WaypointLookup::Direct
    );
    assert!(matches!(
        snap.waypoint_for(addr("10.96.0.7:80"), web.as_deref()),
        WaypointLookup::Unavailable(why) if why.contains("no healthy endpoint")
    ));
}
