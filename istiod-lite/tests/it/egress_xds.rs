//! Egress policies over delta xDS: istiod-lite reads a manifest directory holding the issue's
//! CiliumNetworkPolicy (backend pods may reach namespace `database` on 5432); a ztunnel-like
//! subscriber (wildcard on `mesh.egress.v1.EgressPolicy`, with a node token) gets the policy
//! as JSON, then an update when a database pod is added. A subscriber of Istio's types only
//! (Address, Authorization) is never sent an egress policy.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, XdsServer};
use meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshcore::api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use meshcore::api::{egress, type_url};
use meshcore::control::ControlPlane;
use meshcore::policy::egress::{EgressPolicy, Peer};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 69, (std::process::id() % 200) as u8 + 1, last])
}

const NODE_TOKEN: &str = "token-node-1-0123456789";

fn pod(name: &str, ns: &str, labels: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{serviceAccountName: {name}, nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, podIP: \"{ip}\"}}\n---\n"
    )
}

fn manifests(dir: &Path, database_pods: &[(&str, &str)]) {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: database, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
         apiVersion: \"cilium.io/v2\"\nkind: CiliumNetworkPolicy\nmetadata: {name: backend-policy, namespace: shop}\n\
         spec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n\
         \x20 egress:\n  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: database}}]\n\
         \x20   toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]\n---\n",
    );
    text += &pod("frontend", "shop", "app: frontend", "10.1.0.1");
    text += &pod("backend", "shop", "app: backend", "10.1.0.2");
    for (name, ip) in database_pods {
        text += &pod(name, "database", "app: postgres", ip);
    }
    // Written whole, then renamed: the source never reads half a file.
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("mesh.yaml")).unwrap();
}

/// Opens a stream subscribing (wildcard) to `types`; the responses come on the receiver.
async fn subscribe(
    control: &ControlPlane,
    types: &[&str],
) -> (
    mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
) {
    let mut client = AggregatedDiscoveryServiceClient::new(control.channel().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    for t in types {
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "ztunnel~10.0.0.1~ztunnel-1.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: (*t).into(),
            ..Default::default()
        })
        .unwrap();
    }
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(requests);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {NODE_TOKEN}").parse().unwrap(),
    );
    let responses = client
        .delta_aggregated_resources(request)
        .await
        .expect("stream opened")
        .into_inner();
    (tx, responses)
}

async fn next(responses: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response within 10 s")
        .expect("no error")
        .expect("the stream is open")
}

/// ACKs a response, as a ztunnel does.
fn ack(tx: &mpsc::UnboundedSender<DeltaDiscoveryRequest>, r: &DeltaDiscoveryResponse) {
    tx.send(DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    })
    .unwrap();
}

/// The egress policies a response carries, decoded as ztunnel decodes them.
fn policies(r: &DeltaDiscoveryResponse) -> Vec<(String, EgressPolicy)> {
    r.resources
        .iter()
        .map(|res| {
            let any = res.resource.as_ref().expect("a resource");
            assert_eq!(any.type_url, type_url::EGRESS_POLICY);
            let wire = egress::EgressPolicy::decode(any.value.as_slice()).unwrap();
            let policy: EgressPolicy = serde_json::from_str(&wire.policy_json).unwrap();
            assert_eq!(
                (wire.namespace.as_str(), wire.name.as_str()),
                (policy.namespace.as_str(), policy.name.as_str())
            );
            (res.name.clone(), policy)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ztunnel_subscriber_gets_egress_policies_and_their_updates() {
    let root = std::env::temp_dir().join(format!("istiod-egress-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, ca_dir) = (root.join("manifests"), root.join("ca"));
    std::fs::create_dir_all(&dir).unwrap();
    manifests(&dir, &[("postgres-0", "10.2.0.1")]);

    let ca =
        meshcore::certs::LocalCa::from_dir(&ca_dir, "cluster.local", Duration::from_secs(3600))
            .unwrap();
    let tls = crate::support::control_tls(ca.authority());
    let mut source = DirSource::new(&dir, ClusterInfo::default());
    let first = source.poll().unwrap().expect("first read");
    assert_eq!(first.count(type_url::EGRESS_POLICY), 1);
    let (publish, resources) = watch::channel(Arc::new(first));
    let tokens = istiod_lite::ca::NodeTokens::parse(&format!("node-1 {NODE_TOKEN}\n")).unwrap();
    let auth = istiod_lite::ca::Authenticator::NodeTokens(Arc::new(tokens));
    let xds = XdsServer::new(resources).with_auth(auth);
    let listener = TcpListener::bind((ip(1), 0)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        xds,
        None,
        std::future::pending(),
    ));
    tokio::spawn(source.run(
        Duration::from_millis(50),
        publish.clone(),
        std::future::pending(),
    ));
    let control = ControlPlane {
        address,
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(ca.authority().root_pem()).unwrap(),
    };

    // Our ztunnel: Istio's types and egress policies.
    let (tx, mut ours) = subscribe(
        &control,
        &[
            type_url::ADDRESS,
            type_url::AUTHORIZATION,
            type_url::EGRESS_POLICY,
        ],
    )
    .await;
    // Istio's ztunnel: its own types only.
    let (istio_tx, mut istio) =
        subscribe(&control, &[type_url::ADDRESS, type_url::AUTHORIZATION]).await;

    let mut egress_first = None;
    for _ in 0..3 {
        let r = next(&mut ours).await;
        ack(&tx, &r);
        if r.type_url == type_url::EGRESS_POLICY {
            egress_first = Some(r);
        }
    }
    let first = policies(&egress_first.expect("an egress policy response"));
    assert_eq!(first.len(), 1);
    let (name, policy) = &first[0];
    assert_eq!(name, "shop/cilium-egress-backend-policy");
    assert_eq!(policy.workloads, ["Kubernetes//Pod/shop/backend"]);
    assert!(policy.default_deny);
    assert_eq!(
        policy.rules[0].to,
        [Peer::Workloads(vec!["10.2.0.1".parse().unwrap()])]
    );
    assert_eq!(policy.rules[0].ports[0].port, 5432);
    for _ in 0..2 {
        let r = next(&mut istio).await;
        assert_ne!(r.type_url, type_url::EGRESS_POLICY);
        ack(&istio_tx, &r);
    }

    // A second database pod: the policy follows.
    manifests(
        &dir,
        &[("postgres-0", "10.2.0.1"), ("postgres-1", "10.2.0.2")],
    );
    let update = loop {
        let r = next(&mut ours).await;
        ack(&tx, &r);
        if r.type_url == type_url::EGRESS_POLICY {
            break r;
        }
    };
    let updated = policies(&update);
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0].1.rules[0].to,
        [Peer::Workloads(vec![
            "10.2.0.1".parse().unwrap(),
            "10.2.0.2".parse().unwrap()
        ])]
    );
    // Istio's ztunnel hears of the new workload, and never of an egress policy.
    let r = next(&mut istio).await;
    assert_eq!(r.type_url, type_url::ADDRESS);
    ack(&istio_tx, &r);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), istio.next())
            .await
            .is_err(),
        "nothing more for a client of Istio's types"
    );
    let _ = std::fs::remove_dir_all(&root);
}
