//! A silent partition between a client and istiod-lite (packets dropped, nothing reset) is
//! noticed by the channel's HTTP/2 keepalive, so a ztunnel or waypoint reconnects instead of
//! holding yesterday's policy while it believes itself connected (issue 14, S2).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use istiod_lite::xds::{grpc, ResourceSet, XdsServer};
use meshcore::api::discovery::DeltaDiscoveryRequest;
use meshcore::control::{ControlPlane, Keepalive};
use meshcore::pki::CertificateAuthority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 65, (std::process::id() % 200) as u8 + 1, last])
}

/// A TCP relay that can turn into a black hole: bytes read are then dropped, nothing is
/// closed or reset.
struct Partition {
    addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

async fn partition(to: SocketAddr) -> Partition {
    let listener = TcpListener::bind((ip(2), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropping = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicUsize::new(0));
    let (d, c) = (dropping.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let server = TcpStream::connect(to).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, d.clone()));
            tokio::spawn(pump(sr, cw, d.clone()));
        }
    });
    Partition {
        addr,
        dropping,
        connections,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !dropping.load(Ordering::Relaxed) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_noticed_by_the_keepalive() {
    let ca =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let tls = crate::support::control_tls(&ca);
    let (_publish, resources) = tokio::sync::watch::channel(Arc::new(ResourceSet::default()));
    let listener = TcpListener::bind((ip(1), 0)).await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        XdsServer::new(resources),
        None,
        std::future::pending(),
    ));
    let p = partition(server).await;
    let control = ControlPlane {
        address: p.addr.to_string(),
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(ca.root_pem()).unwrap(),
    };
    // Short pings, so the test does not wait Istio's 30 s + 10 s.
    let keepalive = Keepalive {
        h2_interval: Duration::from_millis(300),
        h2_timeout: Duration::from_millis(500),
        ..Keepalive::default()
    };
    let mut client = meshcore::control::ads_client(control.channel_with(keepalive).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        type_url: meshcore::api::type_url::ADDRESS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .delta_aggregated_resources(meshcore::control::ads_request(rx, None).unwrap())
        .await
        .expect("stream opens")
        .into_inner();
    stream
        .message()
        .await
        .expect("first answer")
        .expect("an answer");
    assert_eq!(p.connections.load(Ordering::Relaxed), 1);

    // The path goes silent: the stream must fail, not wait forever.
    p.dropping.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    let waited = start.elapsed();
    assert!(
        matches!(ended, Ok(Err(_)) | Ok(Ok(None))),
        "the stream was still up after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "noticed after {waited:?}");
    drop(tx);
}
