//! Cluster mode against the in-repo Kubernetes API stand-in ([`crate::kube_api`]), over real
//! HTTP with kube-rs: the watchers through adds, updates, deletes, resumed watches, bookmarks and
//! a 410-forced relist; policy status conditions; the CA kept in Secrets; callers authenticated
//! with TokenReview.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use istiod_lite::ca::{Authenticator, CaServer};
use istiod_lite::sources::dir::DirSource;
use istiod_lite::sources::kube::KubeSource;
use istiod_lite::token_review::TokenReviewer;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::ResourceSet;
use meshcore::api::ca::istio_certificate_service_server::IstioCertificateService;
use meshcore::api::ca::IstioCertificateRequest;
use meshcore::api::type_url;
use meshcore::pki::{generate_csr, CertificateAuthority};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::kube_api::FakeApi;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh")
}

/// The example mesh's objects as JSON, as a cluster would hold them.
pub(crate) fn example_objects() -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let mut v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            if v["kind"] != "Namespace" && v["metadata"]["namespace"].is_null() {
                v["metadata"]["namespace"] = json!("default");
            }
            out.push(v);
        }
    }
    out
}

pub(crate) fn versions(set: &ResourceSet) -> BTreeMap<String, String> {
    set.by_type
        .values()
        .flat_map(|m| m.values())
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

pub(crate) async fn next(source: &mut KubeSource) -> ResourceSet {
    tokio::time::timeout(Duration::from_secs(15), source.next_set())
        .await
        .expect("a new set within 15 s")
        .expect("watchers running")
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": "cart"}},
           "spec": {"serviceAccountName": "cart", "nodeName": "node-1",
                    "containers": [{"name": "app", "image": "echo"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

const CART_3: &str = "Kubernetes//Pod/shop/cart-3";

#[tokio::test]
async fn watchers_follow_changes_resumes_bookmarks_and_a_forced_relist() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    let first = next(&mut source).await;
    // The same objects give the same resources as the manifest directory.
    let from_dir = DirSource::new(&examples(), ClusterInfo::default())
        .poll()
        .unwrap()
        .unwrap();
    assert_eq!(versions(&first), versions(&from_dir));

    // Add, update, delete.
    api.apply(pod("cart-3", "10.10.1.33"));
    let added = next(&mut source).await;
    assert!(added.by_type[type_url::ADDRESS].contains_key(CART_3));
    api.apply(pod("cart-3", "10.10.1.34"));
    let updated = next(&mut source).await;
    assert_ne!(
        updated.by_type[type_url::ADDRESS][CART_3].version,
        added.by_type[type_url::ADDRESS][CART_3].version
    );
    api.delete("v1", "Pod", "shop", "cart-3");
    let deleted = next(&mut source).await;
    assert!(!deleted.by_type[type_url::ADDRESS].contains_key(CART_3));
    assert_eq!(versions(&deleted), versions(&first));

    // A bookmark moves the resume point; a closed watch resumes from it without a relist.
    let lists_before = api.lists("api/v1/pods");
    let rv = api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": "unrelated"}}));
    // (An empty namespace translates to nothing: no new set.)
    api.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let watches_before = api.watches().len();
    api.close_watches();
    let resumed = async {
        loop {
            let w = api.watches();
            if let Some((_, asked)) = w[watches_before..].iter().find(|(c, _)| c == "api/v1/pods") {
                return asked.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let asked = tokio::time::timeout(Duration::from_secs(10), resumed)
        .await
        .expect("the pod watch resumed");
    assert_eq!(asked, rv.to_string(), "resumed from the bookmark");
    assert_eq!(api.lists("api/v1/pods"), lists_before, "no relist");
    api.apply(pod("cart-3", "10.10.1.35"));
    assert!(next(&mut source).await.by_type[type_url::ADDRESS].contains_key(CART_3));

    // A delete lost with compacted history: the resumed watch gets 410 Gone, the watcher
    // relists, and the relist drops what is no longer there.
    api.delete_unseen("v1", "Pod", "shop", "cart-3");
    api.compact();
    api.close_watches();
    let relisted = next(&mut source).await;
    assert!(!relisted.by_type[type_url::ADDRESS].contains_key(CART_3));
    assert!(api.lists("api/v1/pods") > lists_before);
    assert!(source.status.lock().unwrap().relists >= 1);
}

#[tokio::test]
async fn policies_get_status_conditions() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    let ap = |name: &str, spec: Value| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
    };
    api.apply(ap(
        "http-only",
        json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    ));
    api.apply(ap(
        "bad-ip",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/99"]}}]}]}),
    ));
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), true);
    let first = next(&mut source).await;
    assert!(!first.by_type[type_url::AUTHORIZATION].contains_key("shop/bad-ip"));

    let condition = |name: &str| {
        api.get("security.istio.io/v1", "AuthorizationPolicy", "shop", name)
            .and_then(|o| o["status"]["conditions"].get(0).cloned())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ["cart-from-frontend", "http-only", "bad-ip"]
        .iter()
        .any(|n| condition(n).is_none())
    {
        assert!(tokio::time::Instant::now() < deadline, "statuses written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = condition("cart-from-frontend").unwrap();
    assert_eq!(
        (&accepted["type"], &accepted["status"], &accepted["reason"]),
        (
            &json!("ZtunnelAccepted"),
            &json!("True"),
            &json!("Accepted")
        )
    );
    let partial = condition("http-only").unwrap();
    assert_eq!(
        (&partial["status"], &partial["reason"]),
        (&json!("False"), &json!("UnsupportedValue"))
    );
    assert!(
        partial["message"].as_str().unwrap().contains("methods"),
        "{partial}"
    );
    let invalid = condition("bad-ip").unwrap();
    assert_eq!(invalid["reason"], "InvalidValue");
    assert!(invalid["message"].as_str().unwrap().contains("10.0.0.0/99"));
    let stored = api
        .get(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "shop",
            "bad-ip",
        )
        .unwrap();
    assert_eq!(
        stored["status"]["observedGeneration"],
        stored["metadata"]["generation"]
    );
    // Our own status writes come back through the watch but change nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), source.next_set())
            .await
            .is_err(),
        "a status write caused a push"
    );
}

pub(crate) fn token_status(username: &str, extra: Value, audiences: &[&str]) -> Value {
    json!({"authenticated": true, "audiences": audiences,
           "user": {"username": username, "uid": "u", "extra": extra}})
}

pub(crate) async fn ask(ca: &CaServer, token: &str, identity: &str) -> Result<(), tonic::Status> {
    let csr = generate_csr(&identity.parse().unwrap()).unwrap();
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.csr_pem,
        validity_duration: 3600,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    ca.create_certificate(req).await.map(|_| ())
}

#[tokio::test]
async fn ca_lives_in_secrets_and_callers_pass_token_review() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    // First start generates the root into istio-ca-secret; the next start reuses it.
    let (ca, from) =
        istiod_lite::ca_secret::load_or_create(api.client(), "istio-system", "cluster.local")
            .await
            .unwrap();
    assert_eq!(from, "istio-ca-secret");
    let (again, _) =
        istiod_lite::ca_secret::load_or_create(api.client(), "istio-system", "cluster.local")
            .await
            .unwrap();
    assert_eq!(ca.root_pem(), again.root_pem());
    // A plugged-in `cacerts` wins.
    let other =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let (cert, key) = other
        .issue_intermediate("plugged", Duration::from_secs(3600))
        .unwrap();
    let data = [
        ("ca-cert.pem", cert.clone()),
        ("ca-key.pem", key),
        ("cert-chain.pem", format!("{cert}{}", other.root_pem())),
        ("root-cert.pem", other.root_pem().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
    .collect();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("cacerts".into()),
            namespace: Some("istio-system".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let mut secret = serde_json::to_value(secret).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    api.apply(secret);
    let (plugged, from) =
        istiod_lite::ca_secret::load_or_create(api.client(), "istio-system", "cluster.local")
            .await
            .unwrap();
    assert_eq!(from, "cacerts");
    assert_eq!(plugged.root_pem(), other.root_pem());

    // TokenReview: ztunnel acts for its node; a workload only for itself.
    let ztunnel = "system:serviceaccount:istio-system:ztunnel";
    api.add_token(
        "zt-node-1",
        token_status(
            ztunnel,
            json!({"authentication.kubernetes.io/node-name": ["node-1"]}),
            &["istio-ca"],
        ),
    );
    api.add_token(
        "zt-pod-bound",
        token_status(
            ztunnel,
            json!({"authentication.kubernetes.io/pod-name": ["ztunnel-b"],
               "authentication.kubernetes.io/pod-uid": ["uid-zt-b"]}),
            &["istio-ca"],
        ),
    );
    api.add_token(
        "frontend",
        token_status(
            "system:serviceaccount:shop:frontend",
            json!({}),
            &["istio-ca"],
        ),
    );
    api.add_token(
        "other-audience",
        token_status(
            "system:serviceaccount:shop:frontend",
            json!({}),
            &["kubernetes"],
        ),
    );
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ztunnel-b", "namespace": "istio-system", "uid": "uid-zt-b"},
        "spec": {"serviceAccountName": "ztunnel", "nodeName": "node-2",
                 "containers": [{"name": "ztunnel", "image": "ztunnel"}]}}));
    let set = DirSource::new(&examples(), ClusterInfo::default())
        .poll()
        .unwrap()
        .unwrap();
    let (_publish, resources) = watch::channel(Arc::new(set));
    let reviewer =
        TokenReviewer::new(api.client(), "cluster.local", "istio-system/ztunnel").unwrap();
    let server = CaServer::new(
        Arc::new(ca),
        Authenticator::TokenReview(Arc::new(reviewer)),
        resources,
    );

    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    let legacy = "spiffe://cluster.local/ns/legacy/sa/default";
    ask(&server, "zt-node-1", frontend)
        .await
        .expect("frontend runs on node-1");
    let e = ask(&server, "zt-node-1", legacy).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node-1 runs no pod as"), "{e:?}");
    ask(&server, "zt-pod-bound", legacy)
        .await
        .expect("its pod is on node-2, as is legacy/batch");
    ask(&server, "frontend", frontend)
        .await
        .expect("its own identity");
    let e = ask(&server, "frontend", legacy).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("may only obtain its own identity"),
        "{e:?}"
    );
    // An answer that does not confirm the audience is refused too.
    api.add_token(
        "no-audiences",
        json!({"authenticated": true,
               "user": {"username": "system:serviceaccount:shop:frontend", "uid": "u"}}),
    );
    for token in ["unknown", "other-audience", "no-audiences"] {
        let e = ask(&server, token, frontend).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token}: {e:?}");
    }
    assert_eq!(
        server
            .counters
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    // Reviews are cached: asking again with the same tokens, accepted or refused, costs the
    // API server no new TokenReview.
    let reviews = api.calls("POST", "tokenreviews");
    ask(&server, "frontend", frontend).await.expect("cached");
    for token in ["unknown", "no-audiences"] {
        ask(&server, token, frontend).await.unwrap_err();
    }
    assert_eq!(api.calls("POST", "tokenreviews"), reviews);
}

#[tokio::test]
async fn without_gateway_api_ztunnels_are_served_and_waypoints_follow_the_crds() {
    let api = FakeApi::start().await;
    api.serve_group("gateway.networking.k8s.io", false);
    for o in example_objects() {
        api.apply(o);
    }
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    // Gateway API not installed: listed as empty, the rest is served.
    let first = next(&mut source).await;
    assert!(first.count(type_url::ADDRESS) > 0);
    assert_eq!(first.count(type_url::WAYPOINT_CONFIG), 0);
    assert!(source.status.lock().unwrap().watch_errors["Gateway"].contains("CRDs not installed"));

    // The CRDs arrive with a waypoint that `cart` uses: picked up on the watcher's next try.
    api.serve_group("gateway.networking.k8s.io", true);
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "shop", "annotations": {"gateway.istio.io/service-account": "wp-sa"}},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        "status": {"addresses": [{"value": "10.96.9.9"}]}}));
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "wp"}], "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]}}));
    // The Gateway and the route may come in separate pushes.
    let config_of = |set: &ResourceSet| {
        let resource = set.by_type[type_url::WAYPOINT_CONFIG].get("shop/wp")?;
        let decoded: meshcore::api::discovery::Resource =
            prost::Message::decode(resource.encoded.clone()).unwrap();
        let body: meshcore::api::waypoint::WaypointConfig =
            prost::Message::decode(decoded.resource.unwrap().value.as_slice()).unwrap();
        assert_eq!(
            (body.namespace.as_str(), body.name.as_str()),
            ("shop", "wp")
        );
        let config: meshcore::l7::WaypointConfig = serde_json::from_str(&body.config_json).unwrap();
        Some(config)
    };
    let (with_waypoint, config) = loop {
        let set = next(&mut source).await;
        if let Some(config) = config_of(&set).filter(|c| !c.http_routes.is_empty()) {
            break (set, config);
        }
    };
    assert_eq!(
        with_waypoint.waypoint_identities["shop/wp"],
        "spiffe://cluster.local/ns/shop/sa/wp-sa"
    );
    assert_eq!(config.http_routes[0].metadata.key(), "shop/cart");
    assert_eq!(config.services[0].name, "cart");
}

/// Polls `check` until it gives a value (15 s at most).
pub(crate) async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) const GATEWAYS: &str = "gateway.networking.k8s.io/v1";
const GATEWAYS_GROUP: &str = "gateway.networking.k8s.io";
pub(crate) const ROOT: &str =
    "-----BEGIN CERTIFICATE-----\nthe mesh root\n-----END CERTIFICATE-----\n";

pub(crate) fn waypoint(name: &str, service_account: Option<&str>) -> Value {
    let mut gw = json!({"apiVersion": GATEWAYS, "kind": "Gateway",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}});
    if let Some(sa) = service_account {
        gw["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": sa});
    }
    gw
}

/// A source deploying waypoints and writing status, driven in the background.
pub(crate) fn start_controller(
    api: &FakeApi,
) -> Arc<std::sync::Mutex<istiod_lite::sources::kube::KubeStatus>> {
    let options = istiod_lite::sources::kube::KubeOptions {
        write_status: true,
        deploy: Some(istiod_lite::controller::DeploySettings {
            tracing: Vec::new(),
            image: "waypoint:test".into(),
            discovery_address: "istiod.istio-system.svc:15012".into(),
            info: ClusterInfo::default(),
            root_pem: ROOT.into(),
        }),
    };
    let mut source = KubeSource::start_with(api.client(), ClusterInfo::default(), options);
    let status = source.status.clone();
    tokio::spawn(async move { while source.next_set().await.is_some() {} });
    status
}

#[tokio::test]
async fn waypoints_are_deployed_and_gateways_and_routes_get_status() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop", "labels": {"istio.io/use-waypoint": "wp"}},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "cart"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
    api.apply(waypoint("wp", None));
    // Another controller's entry in the route's status must survive ours.
    let theirs = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/other",
                        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                        "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
    api.apply(json!({"apiVersion": GATEWAYS, "kind": "HTTPRoute",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "cart"},
                                {"group": "", "kind": "Service", "name": "missing"},
                                {"name": "ingress"}],
                 "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]},
        "status": {"parents": [theirs.clone()]}}));
    // A user's ServiceAccount a second waypoint names: used, never taken over.
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "shared", "namespace": "shop"}}));
    api.apply(waypoint("wp2", Some("shared")));
    let status = start_controller(&api);

    // The three objects, owned by the Gateway, and the root in the namespace.
    let gw_uid = api.get(GATEWAYS, "Gateway", "shop", "wp").unwrap()["metadata"]["uid"].clone();
    let owner = json!([{"apiVersion": GATEWAYS, "kind": "Gateway", "name": "wp", "uid": gw_uid,
                        "controller": true}]);
    let get = |api_version: &str, kind: &str, name: &str| api.get(api_version, kind, "shop", name);
    let deployment = eventually("the Deployment", || get("apps/v1", "Deployment", "wp")).await;
    let service = eventually("the Service", || get("v1", "Service", "wp")).await;
    let account = eventually("the ServiceAccount", || get("v1", "ServiceAccount", "wp")).await;
    for o in [&deployment, &service, &account] {
        assert_eq!(o["metadata"]["ownerReferences"], owner, "{o:#}");
        assert_eq!(
            o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "wp"
        );
    }
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(pod["spec"]["serviceAccountName"], "wp");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "waypoint:test");
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    assert_eq!(env["XDS_ADDRESS"]["value"], "istiod.istio-system.svc:15012");
    assert_eq!(env["WAYPOINT_NAME"]["value"], "wp");
    assert_eq!(
        env["INSTANCE_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let ip = service["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP was allocated")
        .to_owned();
    let root = eventually("the root ConfigMap", || {
        get("v1", "ConfigMap", "istio-ca-root-cert")
    })
    .await;
    assert_eq!(root["data"]["root-cert.pem"], ROOT);
    assert!(
        root["metadata"]["ownerReferences"].is_null(),
        "shared by the namespace's waypoints"
    );
    // And in the root namespace, for the node DaemonSets (ztunnel, node agent) the chart runs.
    let in_root = eventually("the root ConfigMap in istio-system", || {
        api.get("v1", "ConfigMap", "istio-system", "istio-ca-root-cert")
    })
    .await;
    assert_eq!(in_root["data"]["root-cert.pem"], ROOT);
    // wp2 runs as the user's account, which stays the user's.
    let wp2 = eventually("wp2's Deployment", || get("apps/v1", "Deployment", "wp2")).await;
    assert_eq!(
        wp2["spec"]["template"]["spec"]["serviceAccountName"],
        "shared"
    );
    assert!(
        get("v1", "ServiceAccount", "shared").unwrap()["metadata"]["ownerReferences"].is_null()
    );

    // Gateway status: addresses; accepted; not programmed until a replica is ready.
    let condition = |name: &str, type_: &str| {
        let gw = get(GATEWAYS, "Gateway", name)?;
        gw["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    };
    let programmed = eventually("Programmed", || condition("wp", "Programmed")).await;
    assert_eq!(
        (&programmed["status"], &programmed["reason"]),
        (&json!("False"), &json!("Pending"))
    );
    let gw = get(GATEWAYS, "Gateway", "wp").unwrap();
    assert_eq!(
        programmed["observedGeneration"],
        gw["metadata"]["generation"]
    );
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "Hostname", "value": "wp.shop.svc.cluster.local"},
               {"type": "IPAddress", "value": ip}])
    );
    let accepted = condition("wp", "Accepted").unwrap();
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("True"), &json!("Accepted"))
    );
    api.set_status(
        "apps/v1",
        "Deployment",
        "shop",
        "wp",
        json!({"replicas": 1, "readyReplicas": 1}),
    );
    eventually("Programmed=True", || {
        condition("wp", "Programmed").filter(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(
        condition("wp", "Accepted").unwrap()["lastTransitionTime"],
        accepted["lastTransitionTime"],
        "an unchanged condition keeps its transition time"
    );

    // Route status: ours per Service parent, theirs kept.
    let parents = eventually("route status", || {
        let r = get(GATEWAYS, "HTTPRoute", "cart")?;
        let parents = r["status"]["parents"].as_array()?.clone();
        (parents.len() == 3).then_some(parents)
    })
    .await;
    assert_eq!(parents[0], theirs);
    let summary = |p: &Value| {
        let c = |t: &str| {
            let c = p["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap();
            format!(
                "{}={}/{}",
                t,
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap()
            )
        };
        format!(
            "{} {} {} {}",
            p["parentRef"]["name"].as_str().unwrap(),
            p["controllerName"].as_str().unwrap(),
            c("Accepted"),
            c("ResolvedRefs")
        )
    };
    assert_eq!(
        parents[1..].iter().map(summary).collect::<Vec<_>>(),
        [
            "cart istio.io/gateway-controller Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs",
            "missing istio.io/gateway-controller Accepted=False/NoMatchingParent ResolvedRefs=True/ResolvedRefs",
        ]
    );

    // Steady: nothing is applied or written again, by this controller or a restarted one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (The policy status writer patches policies once per start: not counted.)
    let writes = || {
        let applies: usize = [
            "deployments/",
            "services/",
            "serviceaccounts/",
            "configmaps/",
        ]
        .iter()
        .map(|kind| api.calls("PATCH", kind))
        .sum();
        (applies, api.calls("PUT", "/status"))
    };
    let before = writes();
    let reads = |path: &str| api.calls("GET", path);
    let (gateway_reads, route_reads) =
        (reads("gateways/wp/status"), reads("httproutes/cart/status"));
    let _restarted = start_controller(&api);
    // The restarted controller reads each status it owes, finds it current, and writes nothing.
    eventually("the restarted controller reconciled", || {
        (reads("gateways/wp/status") > gateway_reads
            && reads("httproutes/cart/status") > route_reads)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writes(), before, "no writes without changes");
    assert!(status.lock().unwrap().waypoint_controller.errors.is_empty());

    // A new service-account annotation: a new account, and the Deployment runs as it.
    api.apply(waypoint("wp", Some("wp-sa")));
    let account = eventually("the new ServiceAccount", || {
        get("v1", "ServiceAccount", "wp-sa")
    })
    .await;
    assert_eq!(account["metadata"]["ownerReferences"], owner);
    eventually("the Deployment runs as wp-sa", || {
        get("apps/v1", "Deployment", "wp")
            .filter(|d| d["spec"]["template"]["spec"]["serviceAccountName"] == "wp-sa")
    })
    .await;

    // Drift: a deleted Deployment comes back.
    api.delete("apps/v1", "Deployment", "shop", "wp");
    eventually("the Deployment recreated", || {
        get("apps/v1", "Deployment", "wp")
    })
    .await;

    // Deleting the Gateway: Kubernetes collects what it owns; the root stays.
    api.delete(GATEWAYS, "Gateway", "shop", "wp");
    for (api_version, kind, name) in [
        ("apps/v1", "Deployment", "wp"),
        ("v1", "Service", "wp"),
        ("v1", "ServiceAccount", "wp"),
        ("v1", "ServiceAccount", "wp-sa"),
    ] {
        assert!(
            get(api_version, kind, name).is_none(),
            "{kind} {name} collected"
        );
    }
    assert!(get("v1", "ConfigMap", "istio-ca-root-cert").is_some());
}

/// The configuration of waypoint `key` in a set, if the set has one.
fn waypoint_config(set: &ResourceSet, key: &str) -> Option<meshcore::l7::WaypointConfig> {
    let resource = set.by_type[type_url::WAYPOINT_CONFIG].get(key)?;
    let decoded: meshcore::api::discovery::Resource =
        prost::Message::decode(resource.encoded.clone()).unwrap();
    let body: meshcore::api::waypoint::WaypointConfig =
        prost::Message::decode(decoded.resource.unwrap().value.as_slice()).unwrap();
    Some(serde_json::from_str(&body.config_json).unwrap())
}

#[tokio::test]
async fn request_authentications_are_watched_and_reach_their_waypoint() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    api.apply(waypoint("wp", None));
    const JWKS: &str = "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json";
    let ra = |issuer: &str| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
               "metadata": {"name": "jwt-example", "namespace": "shop"},
               "spec": {"targetRefs": [{"kind": "Gateway", "group": GATEWAYS_GROUP, "name": "wp"}],
                        "jwtRules": [{"issuer": issuer, "jwksUri": JWKS}]},
               "status": {"conditions": [{"type": "Reconciled", "status": "True"}]}})
    };
    api.apply(ra("testing@secure.istio.io"));
    // A selector one is a sidecar's business: watched, but no waypoint gets it.
    api.apply(
        json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "for-sidecars", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "cart"}}, "jwtRules": [{"issuer": "x"}]}}),
    );
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    let issuers = |set: &ResourceSet| {
        waypoint_config(set, "shop/wp").map(|c| {
            c.request_authentications
                .iter()
                .map(|r| (r.key(), r.spec.jwt_rules[0].issuer.clone()))
                .collect::<Vec<_>>()
        })
    };
    let first = next(&mut source).await;
    assert_eq!(
        issuers(&first).unwrap(),
        [(
            "shop/jwt-example".to_owned(),
            "testing@secure.istio.io".to_owned()
        )]
    );
    assert!(source
        .status
        .lock()
        .unwrap()
        .synced
        .contains(&"RequestAuthentication".to_owned()));

    // An update through the watch; ztunnels' resources do not move.
    api.apply(ra("issuer-2"));
    let updated = next(&mut source).await;
    assert_eq!(issuers(&updated).unwrap()[0].1, "issuer-2");
    let ztunnels = |set: &ResourceSet| {
        let mut v = versions(set);
        v.remove("shop/wp");
        v
    };
    assert_eq!(ztunnels(&updated), ztunnels(&first));
    api.delete(
        "security.istio.io/v1",
        "RequestAuthentication",
        "shop",
        "jwt-example",
    );
    let deleted = next(&mut source).await;
    assert_eq!(issuers(&deleted).unwrap(), []);
}

#[tokio::test]
async fn without_the_request_authentication_crd_ztunnels_are_still_served() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    // A `base` from before RequestAuthentication: its collection answers 404.
    api.serve_path("/apis/security.istio.io/v1/requestauthentications", false);
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    let first = next(&mut source).await;
    assert!(first.count(type_url::ADDRESS) > 0);
    assert!(
        source.status.lock().unwrap().watch_errors["RequestAuthentication"]
            .contains("RequestAuthentication CRD not installed")
    );
}
