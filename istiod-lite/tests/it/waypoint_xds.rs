//! A waypoint fed by istiod-lite: istiod-lite reads a manifest directory holding a waypoint
//! Gateway, Services (one using the waypoint), pods, an HTTPRoute and a `targetRefs`
//! AuthorizationPolicy; a waypoint (in-process, through `waypoint::start`) obtains its own
//! certificate with its identity's bootstrap token and subscribes to its configuration over
//! delta xDS. It turns ready with the expected configuration, follows a route change, NACKs a
//! configuration it cannot parse (keeping its own); other identities, the token of a node
//! running no pod of the waypoint, unknown names and wildcard subscriptions are refused.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, ResourceSet, XdsServer};
use meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshcore::api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use meshcore::api::type_url;
use meshcore::control::ControlPlane;
use meshcore::l7::WaypointConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 63, (std::process::id() % 200) as u8 + 1, last])
}

const WAYPOINT_TOKEN: &str = "waypoint-token-0123456789";
const CART_TOKEN: &str = "cart-token-0123456789";
const NODE_1_TOKEN: &str = "token-node-1-0123456789";
const NODE_2_TOKEN: &str = "token-node-2-0123456789";

fn manifests(dir: &Path) {
    let pod = |name: &str, sa: &str, labels: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}\n\
             spec: {{serviceAccountName: {sa}, nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: \"{ip}\", conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
        )
    };
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: wp, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}\n\
         spec: {clusterIP: 10.96.0.10, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{name: mesh, port: 15008}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop, labels: {istio.io/use-waypoint: wp}}\n\
         spec: {clusterIP: 10.96.0.1, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: frontend, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.2, selector: {app: frontend}, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-delete, namespace: shop}\n\
         spec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}], action: DENY, \
         rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n---\n",
    );
    text += &pod(
        "wp-1",
        "wp",
        "gateway.networking.k8s.io/gateway-name: wp",
        "10.1.0.10",
    );
    text += &pod("cart-1", "cart", "app: cart", "10.1.0.1");
    text += &pod("frontend-1", "frontend", "app: frontend", "10.1.0.2");
    std::fs::write(dir.join("mesh.yaml"), text).unwrap();
    route(dir, "/");
}

fn route(dir: &Path, prefix: &str) {
    std::fs::write(
        dir.join("route.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: cart, namespace: shop}}\n\
             spec: {{parentRefs: [{{group: \"\", kind: Service, name: cart}}], \
             rules: [{{matches: [{{path: {{type: PathPrefix, value: \"{prefix}\"}}}}], backendRefs: [{{name: cart, port: 80}}]}}]}}\n"
        ),
    )
    .unwrap();
}

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// `GET /healthz/ready`: the status code.
async fn readiness(addr: SocketAddr) -> u16 {
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    t.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    t.read_to_string(&mut out).await.unwrap();
    out[9..12].parse().unwrap()
}

/// Opens a stream with `token` subscribing to `names` and returns the first answer.
async fn first_answer(
    control: &ControlPlane,
    token: &str,
    names: &[&str],
) -> Result<DeltaDiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(control.channel().unwrap());
    let request = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "waypoint~10.1.0.10~wp-1.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: type_url::WAYPOINT_CONFIG.into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    let requests = futures_util::stream::iter([request]).chain(futures_util::stream::pending());
    let mut request = tonic::Request::new(requests);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut responses = client
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("an answer within 5 s")?
        .ok_or_else(|| tonic::Status::unknown("stream ended"))
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gets_its_configuration_over_xds() {
    let root = std::env::temp_dir().join(format!("istiod-wp-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, ca_dir) = (root.join("manifests"), root.join("ca"));
    std::fs::create_dir_all(&dir).unwrap();
    manifests(&dir);

    let ca =
        meshcore::certs::LocalCa::from_dir(&ca_dir, "cluster.local", Duration::from_secs(3600))
            .unwrap();
    let tls = crate::support::control_tls(ca.authority());
    let mut source = DirSource::new(&dir, ClusterInfo::default());
    let first = source.poll().unwrap().expect("first read");
    assert_eq!(first.count(type_url::WAYPOINT_CONFIG), 1);
    let (publish, resources) = watch::channel(Arc::new(first));
    let tokens = istiod_lite::ca::NodeTokens::parse(&format!(
        "spiffe://cluster.local/ns/shop/sa/wp {WAYPOINT_TOKEN}\n\
         spiffe://cluster.local/ns/shop/sa/cart {CART_TOKEN}\nnode-1 {NODE_1_TOKEN}\n\
         node-2 {NODE_2_TOKEN}\n"
    ))
    .unwrap();
    let auth = istiod_lite::ca::Authenticator::NodeTokens(Arc::new(tokens));
    let xds = XdsServer::new(resources.clone()).with_auth(auth.clone());
    let clients = xds.clients.clone();
    let ca_server = istiod_lite::ca::CaServer::new(
        Arc::new(meshcore::pki::CertificateAuthority::from_istio_dir(&ca_dir).unwrap()),
        auth,
        resources,
    );
    let ca_counters = ca_server.counters.clone();
    let listener = TcpListener::bind((ip(1), 15012)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        xds,
        Some(ca_server),
        std::future::pending(),
    ));
    tokio::spawn(source.run(
        Duration::from_millis(50),
        publish.clone(),
        std::future::pending(),
    ));

    // The waypoint: its certificate and its configuration from istiod-lite.
    let token_file = root.join("waypoint.token");
    std::fs::write(&token_file, format!("{WAYPOINT_TOKEN}\n")).unwrap();
    let mut s = waypoint::Settings::defaults();
    s.namespace = "shop".into();
    s.name = "wp".into();
    s.pod_name = Some("wp-1".into());
    s.xds_address = Some(address.clone());
    s.ca_address = Some(address.clone());
    s.ca_token_file = Some(token_file);
    s.xds_root_ca = Some(ca_dir.join("root-cert.pem"));
    s.bind_address = ip(5);
    s.access_log = waypoint::settings::AccessLogFormat::Off;
    let wp = waypoint::start(s, None).await.expect("waypoint starts");
    assert_eq!(
        ca_counters.issued.load(Ordering::Relaxed),
        1,
        "its own identity"
    );
    let store = wp.proxy.store.clone();
    eventually(
        "ready with a configuration",
        Duration::from_secs(5),
        async || readiness(wp.addresses.readiness).await == 200,
    )
    .await;
    let config: WaypointConfig = store.load().source.clone();
    let names: Vec<String> = config
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["shop/cart"]);
    assert_eq!(
        config.services[0].endpoints[0].name.as_deref(),
        Some("cart-1")
    );
    assert_eq!(config.http_routes[0].metadata.key(), "shop/cart");
    assert_eq!(config.authorization_policies[0].key(), "shop/no-delete");
    let node_id = format!("waypoint~{}~wp-1.shop~shop.svc.cluster.local", ip(5));
    assert!(clients.snapshot().iter().any(|c| c.node_id == node_id));

    // A route change reaches it.
    route(&dir, "/v2");
    eventually("the changed route", Duration::from_secs(3), async || {
        let snapshot = store.load();
        let rule = &snapshot.source.http_routes[0].spec.rules[0];
        rule.matches[0]
            .path
            .as_ref()
            .is_some_and(|p| p.value == "/v2")
    })
    .await;

    // A configuration it cannot parse is NACKed; its own stays.
    let before = store.load().source.clone();
    let mut bad = ResourceSet::clone(&publish.borrow());
    bad.generation += 1000;
    let broken = istiod_lite::xds::resources::Resource::new(
        "shop/wp".into(),
        type_url::WAYPOINT_CONFIG,
        prost::Message::encode_to_vec(&meshcore::api::waypoint::WaypointConfig {
            namespace: "shop".into(),
            name: "wp".into(),
            config_json: r#"{"servicez": []}"#.into(),
        }),
    );
    bad.by_type
        .get_mut(type_url::WAYPOINT_CONFIG)
        .unwrap()
        .insert("shop/wp".into(), Arc::new(broken));
    publish.send_replace(Arc::new(bad));
    eventually("the NACK", Duration::from_secs(3), async || {
        clients.nacks_total.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(store.load().source, before);
    assert!(clients.snapshot().iter().any(|c| c
        .last_nack
        .as_deref()
        .is_some_and(|m| m.contains("unknown field `servicez`"))));
    assert_eq!(readiness(wp.addresses.readiness).await, 200, "still ready");

    // Nobody else reads it; nothing is served by wildcard.
    let control = ControlPlane {
        address,
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(ca.authority().root_pem()).unwrap(),
    };
    let refused = first_answer(&control, CART_TOKEN, &["shop/wp"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("served only to spiffe://cluster.local/ns/shop/sa/wp"),
        "{}",
        refused.message()
    );
    let refused = first_answer(&control, NODE_2_TOKEN, &["shop/wp"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = first_answer(&control, WAYPOINT_TOKEN, &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = first_answer(&control, WAYPOINT_TOKEN, &["shop/nope"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    // Its own identity may, and so may the token of node-1, where its pod runs (as for its
    // certificate); each gets exactly that configuration.
    for token in [WAYPOINT_TOKEN, NODE_1_TOKEN] {
        let answer = first_answer(&control, token, &["shop/wp"]).await.unwrap();
        let names: Vec<&str> = answer.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["shop/wp"]);
    }

    wp.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}
