//! Messages above gRPC's default 4 MiB (S3): a mesh of 20,000 pods makes a first Address
//! response of over 5 MiB, which a ztunnel must decode to become ready at all; a reconnecting
//! client's request names every resource it holds and is as large.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, ResourceSet, XdsServer};
use meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshcore::api::discovery::DeltaDiscoveryRequest;
use meshcore::api::type_url;
use tokio::net::TcpListener;
use tokio::sync::watch;
use ztunnel::control::ControlPlane;

const PODS: usize = 20_000;
const LIMIT: usize = 4 * 1024 * 1024;

fn ip(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 67, (std::process::id() % 200) as u8 + 1, last])
}

/// A manifest directory: one ambient namespace and `pods` running pods spread over 10 nodes.
fn write_mesh(dir: &std::path::Path, pods: usize) {
    use std::fmt::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n",
    );
    for i in 0..pods {
        let (a, b) = (i / 250, i % 250 + 2);
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: cart-{i:05}, namespace: shop, labels: {{app: cart}}}}\n\
             spec: {{serviceAccountName: cart, nodeName: node-{}, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: \"10.{}.{}.{b}\", conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            i % 10,
            a / 250 + 1,
            a % 250,
        );
    }
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
}

/// istiod-lite serving `set` over TLS on `ip(1)`; returns the address and how to reach it.
async fn serve(
    root_dir: &std::path::Path,
    set: ResourceSet,
) -> (watch::Sender<Arc<ResourceSet>>, ControlPlane) {
    let ca_dir = root_dir.join("ca");
    let ca = ztunnel::certs::LocalCa::from_dir(&ca_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let tls = crate::support::control_tls(ca.authority());
    let (publish, resources) = watch::channel(Arc::new(set));
    let listener = TcpListener::bind((ip(1), 0)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        XdsServer::new(resources),
        None,
        std::future::pending(),
    ));
    let control = ControlPlane {
        address,
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(
            &std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap(),
        )
        .unwrap(),
    };
    (publish, control)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("istiod-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 20,000 pods: the first Address response is over 4 MiB, and a ztunnel's xDS client (the
/// one `ztunnel::start` runs) takes it and becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_push_above_4_mib_reaches_a_ztunnel() {
    let root = scratch("large-push");
    let dir = root.join("manifests");
    write_mesh(&dir, PODS);
    let started = Instant::now();
    let set = DirSource::new(&dir, ClusterInfo::default())
        .poll()
        .unwrap()
        .expect("first read");
    let translated = started.elapsed();
    let addresses = &set.by_type[type_url::ADDRESS];
    assert_eq!(addresses.len(), PODS);
    let bytes: usize = addresses.values().map(|r| r.encoded.len() + 4).sum();
    assert!(bytes > LIMIT + LIMIT / 8, "only {bytes} bytes of Addresses");

    let (_publish, control) = serve(&root, set).await;
    let store = Arc::new(ztunnel::state::StateStore::new("cluster.local"));
    let status = Arc::new(Mutex::new(Default::default()));
    let client = ztunnel::config::xds::XdsClient::new(
        ztunnel::config::xds::XdsConfig {
            control,
            node_id: "ztunnel~10.1.0.2~ztunnel-a.istio-system~istio-system.svc.cluster.local"
                .into(),
            token_file: None,
        },
        store.clone(),
        status.clone(),
    );
    let client = tokio::spawn(client.run(std::future::pending()));
    let synced = Instant::now();
    let within = Duration::from_secs(30);
    loop {
        if store.load().config.workloads.len() == PODS {
            break;
        }
        if synced.elapsed() > within {
            let status: ztunnel::config::watch::SourceStatus = status.lock().unwrap().clone();
            panic!(
                "the ztunnel never synced {PODS} pods ({bytes} bytes) within {within:?}: {}",
                serde_json::to_string(&status).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{PODS} pods: {bytes} bytes of Addresses, translated in {translated:?}, synced in {:?}",
        synced.elapsed()
    );
    client.abort();
    std::fs::remove_dir_all(&root).unwrap();
}

/// A request above 4 MiB (a reconnecting client naming the 60,000 resources it holds) is
/// decoded, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_4_mib_is_decoded() {
    let root = scratch("large-request");
    let dir = root.join("manifests");
    write_mesh(&dir, 2);
    let set = DirSource::new(&dir, ClusterInfo::default())
        .poll()
        .unwrap()
        .expect("first read");
    let (_publish, control) = serve(&root, set).await;
    let held: std::collections::HashMap<String, String> = (0..60_000)
        .map(|i| {
            (
                format!("Kubernetes//Pod/shop/a-pod-with-a-rather-long-name-{i:08}"),
                format!("{i:016x}"),
            )
        })
        .collect();
    let request = DeltaDiscoveryRequest {
        type_url: type_url::ADDRESS.into(),
        initial_resource_versions: held,
        ..Default::default()
    };
    let size = prost::Message::encoded_len(&request);
    assert!(size > LIMIT, "only {size} bytes");
    let mut client = AggregatedDiscoveryServiceClient::new(control.channel().unwrap())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut responses = client
        .delta_aggregated_resources(
            futures_util::stream::iter([request]).chain(futures_util::stream::pending()),
        )
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an answer within 10 s");
    let first = first
        .unwrap_or_else(|e| panic!("{size}-byte request: {e}"))
        .unwrap_or_else(|| panic!("{size}-byte request: the stream ended unanswered"));
    assert_eq!(first.type_url, type_url::ADDRESS);
    // What the client named and the server does not have is removed.
    assert_eq!(first.removed_resources.len(), 60_000);
    std::fs::remove_dir_all(&root).unwrap();
}
