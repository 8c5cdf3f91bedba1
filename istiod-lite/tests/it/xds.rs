//! End to end over delta xDS: istiod-lite reads a manifest directory and serves it over TLS;
//! two ztunnels (in-process, through `ztunnel::start`) fetch their certificates (with the
//! node's bootstrap token) and their view from it; a token may not obtain identities of pods
//! on another node; traffic flows
//! over HBONE; a policy written to the directory starts denying within a second and removing it
//! allows again; a malformed manifest is refused with the last good view kept; a resource
//! ztunnel cannot use is NACKed without disturbing it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, ResourceSet, XdsServer};
use tokio::net::TcpListener;

use crate::support::{call, echo_app, two_pod_mesh};
use tokio::sync::watch;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 61, (std::process::id() % 200) as u8 + 1, last])
}

async fn eventually(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnels_follow_the_manifest_directory_over_xds() {
    let root = std::env::temp_dir().join(format!("istiod-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, ca_dir) = (root.join("manifests"), root.join("ca"));
    std::fs::create_dir_all(&dir).unwrap();
    two_pod_mesh(&dir, [("frontend", ip(2)), ("cart", ip(3))]);

    // The mesh CA (a development root in CA_DIR) also signs istiod-lite's serving certificate.
    let ca = ztunnel::certs::LocalCa::from_dir(&ca_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let tls = crate::support::control_tls(ca.authority());

    let mut source = DirSource::new(&dir, ClusterInfo::default());
    let status = source.status.clone();
    let first = source.poll().unwrap().expect("first read");
    let (publish, resources) = watch::channel(Arc::new(first));
    let tokens = istiod_lite::ca::NodeTokens::parse(
        "node-1 token-node-1-0123456789\nnode-2 token-node-2-0123456789\n",
    )
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
    let token_file = |node: &str| {
        let path = root.join(format!("{node}.token"));
        std::fs::write(&path, format!("token-{node}-0123456789\n")).unwrap();
        path
    };
    let node1_token = token_file("node-1");
    let listener = TcpListener::bind((ip(1), 15012)).await.unwrap();
    let xds_address = listener.local_addr().unwrap().to_string();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        xds,
        Some(ca_server),
        std::future::pending(),
    ));
    let publisher = publish.clone();
    tokio::spawn(source.run(Duration::from_millis(50), publisher, std::future::pending()));

    let start = |last: u8, workload: &str| {
        let mut s = ztunnel::Settings::defaults();
        s.proxy_workload_info = Some(workload.parse().unwrap());
        s.xds_address = Some(xds_address.clone());
        s.ca_address = Some(xds_address.clone());
        s.ca_token_file = Some(node1_token.clone());
        s.ca_dir = Some(ca_dir.clone());
        s.bind_address = ip(last);
        s.socket_mark = 0;
        s.enable_socks5 = true;
        ztunnel::start(s, None)
    };
    let frontend = start(2, "shop/frontend/frontend").await.unwrap();
    let cart = start(3, "shop/cart/cart").await.unwrap();
    for zt in [&frontend, &cart] {
        eventually("initial xDS view", Duration::from_secs(5), async || {
            zt.proxy.state.load().config.workloads.len() == 2
        })
        .await;
    }
    // A stream without a node's token learns nothing of the mesh.
    let control = ztunnel::control::ControlPlane {
        address: xds_address.clone(),
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(
            &std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap(),
        )
        .unwrap(),
    };
    let mut anonymous =
        meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(
            control.channel().unwrap(),
        );
    let refused_stream = anonymous
        .delta_aggregated_resources(futures_util::stream::pending())
        .await
        .unwrap_err();
    assert_eq!(refused_stream.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        clients
            .refused_total
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    echo_app(SocketAddr::new(ip(3), 8080)).await;
    let cart_app = SocketAddr::new(ip(3), 8080);
    call(frontend.addresses.socks5.expect("SOCKS5 enabled"), cart_app)
        .await
        .expect("allowed over HBONE");
    // Both ztunnels' certificates came from istiod-lite's certificate service.
    let issued = || {
        ca_counters
            .issued
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let refused = || {
        ca_counters
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(issued(), 2);

    // node-2's token may not obtain the identity of a pod on node-1; a wrong token gets nothing.
    let control = ztunnel::control::ControlPlane {
        address: xds_address.clone(),
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(ca.authority().root_pem()).unwrap(),
    };
    let roots = meshcore::tls::TrustRoots::from_pem(ca.authority().root_pem()).unwrap();
    let frontend_id =
        meshcore::identity::SpiffeId::new("cluster.local", "shop", "frontend").unwrap();
    let remote = |token: std::path::PathBuf| {
        ztunnel::certs::remote::RemoteCa::new(
            control.channel().unwrap(),
            token,
            "Kubernetes".into(),
            Duration::from_secs(3600),
            roots.clone(),
        )
    };
    use ztunnel::certs::CertificateProvider;
    let err = remote(token_file("node-2"))
        .issue(&frontend_id)
        .await
        .unwrap_err();
    assert!(
        err.contains("PermissionDenied")
            && err
                .contains("node node-2 runs no pod as spiffe://cluster.local/ns/shop/sa/frontend"),
        "{err}"
    );
    let bogus = root.join("bogus.token");
    std::fs::write(&bogus, "not-a-known-token-at-all").unwrap();
    let err = remote(bogus).issue(&frontend_id).await.unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("unknown bootstrap token"),
        "{err}"
    );
    assert_eq!(refused(), 2);
    assert!(
        remote(node1_token.clone())
            .issue(&frontend_id)
            .await
            .is_ok(),
        "node-1 may"
    );
    assert_eq!(issued(), 3);
    assert_eq!(
        frontend.proxy.hbone.pooled_connections(),
        1,
        "the tunnel went over HBONE"
    );

    // A DENY policy written to the directory is enforced within a second.
    std::fs::write(
        dir.join("deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-frontend, namespace: shop}\n\
         spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]}]}\n",
    )
    .unwrap();
    let took = eventually("policy denies", Duration::from_secs(1), async || {
        call(frontend.addresses.socks5.expect("SOCKS5 enabled"), cart_app).await == Err(2)
    })
    .await;
    eprintln!("new DENY policy enforced after {took:?}");

    // A malformed manifest is refused by name; the last good view (with the DENY) stays.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {portz: []}\n",
    )
    .unwrap();
    eventually("refusal recorded", Duration::from_secs(2), async || {
        status
            .lock()
            .unwrap()
            .refused
            .iter()
            .any(|e| e.contains("broken.yaml document 1 (Service x)") && e.contains("portz"))
    })
    .await;
    assert_eq!(
        call(frontend.addresses.socks5.expect("SOCKS5 enabled"), cart_app).await,
        Err(2)
    );
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();

    // Removing the policy allows again.
    std::fs::remove_file(dir.join("deny.yaml")).unwrap();
    eventually("allowed again", Duration::from_secs(2), async || {
        call(frontend.addresses.socks5.expect("SOCKS5 enabled"), cart_app)
            .await
            .is_ok()
    })
    .await;

    // A resource ztunnel cannot use is NACKed, and its view stays as it was.
    let version = cart.proxy.state.load().version;
    let mut bad = ResourceSet::clone(&publish.borrow());
    bad.generation += 1000;
    let addresses = bad
        .by_type
        .get_mut(meshcore::api::type_url::ADDRESS)
        .unwrap();
    let name = addresses.keys().next().unwrap().clone();
    let broken = istiod_lite::xds::resources::Resource::new(
        name.clone(),
        meshcore::api::type_url::ADDRESS,
        vec![0x0a, 0x05, 0xff, 0xff],
    );
    addresses.insert(name, Arc::new(broken));
    publish.send_replace(Arc::new(bad));
    eventually("NACKs counted", Duration::from_secs(2), async || {
        clients
            .nacks_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    })
    .await;
    assert_eq!(
        cart.proxy.state.load().version,
        version,
        "nothing of the bad update was applied"
    );
    assert!(clients
        .snapshot()
        .iter()
        .all(|c| c.node_id.starts_with("ztunnel~127.61.")));
    call(frontend.addresses.socks5.expect("SOCKS5 enabled"), cart_app)
        .await
        .expect("traffic unaffected");
    let _ = std::fs::remove_dir_all(&root);
}
