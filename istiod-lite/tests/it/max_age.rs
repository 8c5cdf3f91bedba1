//! The gRPC server's maximum connection age (issue 14, S2): past it a connection gets GOAWAY,
//! what is in flight (an xDS stream, a certificate request) may finish for a grace period, the
//! connection is then closed, and clients reconnect: new calls go to a new connection at once,
//! and a ztunnel keeps its view across the reconnection.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use istiod_lite::ca::{Authenticator, CaServer, NodeTokens};
use istiod_lite::xds::grpc::{self, ConnectionAge};
use istiod_lite::xds::{ResourceSet, XdsServer};
use meshcore::api::ca::{IstioCertificateRequest, IstioCertificateResponse};
use meshcore::api::discovery::DeltaDiscoveryRequest;
use meshcore::control::ControlPlane;
use meshcore::pki::{generate_csr, CertificateAuthority};
use tokio::net::{TcpListener, TcpStream};

const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/wp";
const TOKEN: &str = "token-wp-0123456789";

/// 1 s (0.9 to 1.1 s with jitter), then 3 s for what is in flight (wide enough that a
/// certificate signed by a debug build on a loaded machine still lands inside it).
const AGE: ConnectionAge = ConnectionAge {
    max: Some(Duration::from_secs(1)),
    grace: Duration::from_secs(3),
};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 68, (std::process::id() % 200) as u8 + 1, last])
}

/// A TCP relay in front of istiod-lite counting the connections clients open, and those that
/// have ended.
struct Relay {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

async fn counting_relay(to: SocketAddr, at: IpAddr) -> Relay {
    let listener = TcpListener::bind((at, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (o, e) = (opened.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::Relaxed);
            let e = e.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                e.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    Relay {
        addr,
        opened,
        ended,
    }
}

struct Served {
    control: ControlPlane,
    connections: Arc<AtomicUsize>,
}

/// istiod-lite's gRPC server (xDS of an empty mesh, and the CA for [`IDENTITY`]) with
/// connections aged as [`AGE`], behind a counting relay.
async fn serve(host: u8) -> Served {
    let ca =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let tls = crate::support::control_tls(&ca);
    let root = ca.root_pem().to_owned();
    let (publish, resources) = tokio::sync::watch::channel(Arc::new(ResourceSet::default()));
    let tokens = NodeTokens::parse(&format!("{IDENTITY} {TOKEN}\n")).unwrap();
    let auth = Authenticator::NodeTokens(Arc::new(tokens));
    let ca_server = CaServer::new(Arc::new(ca), auth.clone(), resources.clone());
    let listener = TcpListener::bind((ip(host), 0)).await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _publish = publish;
        grpc::serve_with(
            listener,
            tls,
            XdsServer::new(resources).with_auth(auth),
            Some(ca_server),
            AGE,
            std::future::pending(),
        )
        .await
    });
    let relay = counting_relay(server, ip(host + 1)).await;
    Served {
        control: ControlPlane {
            address: relay.addr.to_string(),
            server_name: "istiod.istio-system.svc".into(),
            tls: meshcore::tls::control::control_client_config(&root).unwrap(),
        },
        connections: relay.opened,
    }
}

fn bearer<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

fn csr_request() -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr: generate_csr(&IDENTITY.parse().unwrap()).unwrap().csr_pem,
        validity_duration: 3600,
        metadata: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_maximum_age_a_connection_gets_goaway_and_its_client_reconnects() {
    let served = serve(1).await;
    let mut client = meshcore::control::ads_client(served.control.channel().unwrap());
    let open = async |client: &mut meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<tonic::transport::Channel>| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            type_url: meshcore::api::type_url::ADDRESS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let request = meshcore::control::ads_request(rx, None).unwrap();
        let mut request = request;
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let mut stream = client.delta_aggregated_resources(request).await?.into_inner();
        stream.message().await?.expect("an answer");
        Ok::<_, tonic::Status>((tx, stream))
    };
    let (_tx1, mut first) = open(&mut client).await.expect("first stream");
    let start = Instant::now();
    assert_eq!(served.connections.load(Ordering::Relaxed), 1);

    // Past the age (1.1 s at most), within the grace: the first stream goes on, and a new
    // stream goes to a new connection, since the old one has had GOAWAY.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        first.message().now_or_never().is_none(),
        "the first stream ended before its grace period was over"
    );
    // The channel learns of the GOAWAY from the first call it makes after it (that call
    // fails, `Cancelled`, as any client's retry would meet); the next one reconnects.
    let (_tx2, mut second) = match open(&mut client).await {
        Ok(opened) => opened,
        Err(e) => {
            assert!(
                matches!(e.code(), tonic::Code::Cancelled | tonic::Code::Unavailable),
                "{e}"
            );
            open(&mut client).await.expect("second stream")
        }
    };
    assert_eq!(
        served.connections.load(Ordering::Relaxed),
        2,
        "a stream opened {:?} after the first went over the same connection: no GOAWAY",
        start.elapsed()
    );

    // At the end of the grace period the old connection is closed under the first stream.
    let ended = tokio::time::timeout(Duration::from_secs(6), first.message()).await;
    let at = start.elapsed();
    assert!(
        matches!(ended, Ok(Err(_)) | Ok(Ok(None))),
        "the first stream was still up {at:?} after it opened"
    );
    assert!(
        (Duration::from_millis(3500)..Duration::from_millis(5500)).contains(&at),
        "the first stream ended {at:?} after it opened, expected the age and the grace (0.9-1.1 s + 3 s)"
    );
    // The second stream is unaffected (its own connection is younger).
    assert!(second.message().now_or_never().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_request_in_flight_at_the_maximum_age_completes() {
    let served = serve(3).await;
    let channel = served.control.channel().unwrap();
    let mut ca =
        meshcore::api::ca::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel.clone(),
        );
    ca.create_certificate(bearer(csr_request()))
        .await
        .expect("a certificate");
    let start = Instant::now();

    // A request whose headers leave now and whose body leaves 1.5 s later: after the GOAWAY
    // (1.1 s at most), before the grace period ends (3.9 s at least).
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let body = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        csr_request()
    });
    let response: Result<tonic::Response<IstioCertificateResponse>, _> = grpc
        .client_streaming(
            bearer(body),
            http::uri::PathAndQuery::from_static(
                "/istio.v1.auth.IstioCertificateService/CreateCertificate",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let at = start.elapsed();
    let response = response.unwrap_or_else(|e| panic!("refused after {at:?}: {e}"));
    assert!(!response.into_inner().cert_chain.is_empty());
    assert!(at >= Duration::from_millis(1500), "{at:?}");
    assert_eq!(served.connections.load(Ordering::Relaxed), 1);

    // The next request goes to a new connection. The channel may meet the closing connection
    // first: that call is cancelled unsent (`Cancelled`), and a retry dials anew, which is
    // what ztunnel's certificate client does (`meshcore::certs::remote`).
    if let Err(e) = ca.create_certificate(bearer(csr_request())).await {
        assert_eq!(e.code(), tonic::Code::Cancelled, "{e}");
        ca.create_certificate(bearer(csr_request()))
            .await
            .expect("a certificate after the GOAWAY");
    }
    assert_eq!(
        served.connections.load(Ordering::Relaxed),
        2,
        "{:?} after the connection opened, new requests still go to it: no GOAWAY",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ztunnel_keeps_its_view_across_age_reconnections() {
    let root = std::env::temp_dir().join(format!("istiod-it-max-age-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, ca_dir) = (root.join("manifests"), root.join("ca"));
    std::fs::create_dir_all(&dir).unwrap();
    crate::support::two_pod_mesh(&dir, [("frontend", ip(6)), ("cart", ip(7))]);
    let ca = ztunnel::certs::LocalCa::from_dir(&ca_dir, "cluster.local", Duration::from_secs(3600))
        .unwrap();
    let tls = crate::support::control_tls(ca.authority());
    let mut source = istiod_lite::sources::dir::DirSource::new(
        &dir,
        istiod_lite::translate::ClusterInfo::default(),
    );
    let (publish, resources) =
        tokio::sync::watch::channel(Arc::new(source.poll().unwrap().expect("first read")));
    let tokens = NodeTokens::parse("node-1 token-node-1-0123456789\n").unwrap();
    let auth = Authenticator::NodeTokens(Arc::new(tokens));
    let ca_server = CaServer::new(
        Arc::new(CertificateAuthority::from_istio_dir(&ca_dir).unwrap()),
        auth.clone(),
        resources.clone(),
    );
    let listener = TcpListener::bind((ip(5), 0)).await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve_with(
        listener,
        tls,
        XdsServer::new(resources).with_auth(auth),
        Some(ca_server),
        AGE,
        std::future::pending(),
    ));
    tokio::spawn(source.run(Duration::from_millis(50), publish, std::future::pending()));
    let relay = counting_relay(server, ip(8)).await;
    let token = root.join("node-1.token");
    std::fs::write(&token, "token-node-1-0123456789\n").unwrap();
    let mut s = ztunnel::Settings::defaults();
    s.proxy_workload_info = Some("shop/frontend/frontend".parse().unwrap());
    s.xds_address = Some(relay.addr.to_string());
    s.ca_address = Some(relay.addr.to_string());
    s.ca_token_file = Some(token);
    s.ca_dir = Some(ca_dir.clone());
    s.bind_address = ip(6);
    s.socket_mark = 0;
    let zt = ztunnel::start(s, None).await.unwrap();
    let workloads = || zt.proxy.state.load().config.workloads.len();
    let start = Instant::now();
    while workloads() != 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no initial view");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two ages and graces, and ztunnel's 1 s reconnection backoff: its connections are closed
    // and it reconnects, and its view never goes away meanwhile.
    let opened = relay.opened.load(Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(workloads(), 2, "the view changed {:?} in", start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = relay.ended.load(Ordering::Relaxed);
    let reopened = relay.opened.load(Ordering::Relaxed) - opened;
    assert!(
        ended >= 1 && reopened >= 1,
        "in 6 s, {ended} connection(s) closed, {reopened} opened"
    );
    // The new stream is live: a change still arrives.
    std::fs::write(
        dir.join("more.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: more, namespace: shop}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: \"{}\"}}\n",
            ip(9)
        ),
    )
    .unwrap();
    let start = Instant::now();
    while workloads() != 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a change after the reconnection did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_dir_all(&root);
}
