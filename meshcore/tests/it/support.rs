//! Shared fixtures: a CA, workload credentials, an HBONE server forwarding to a local backend.

use meshcore::copy::copy_bidirectional;
use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{ClientSettings, ConnectRequest, HboneClient, ServerSettings};
use meshcore::identity::SpiffeId;
use meshcore::pki::{CertificateAuthority, Validity};
use meshcore::tls::{server_config, Credentials, TrustRoots, WorkloadCert};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

pub struct Mesh {
    pub ca: CertificateAuthority,
}

impl Mesh {
    pub fn new() -> Self {
        Self {
            ca: CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600))
                .unwrap(),
        }
    }

    pub fn roots(&self) -> TrustRoots {
        TrustRoots::from_pem(self.ca.root_pem()).unwrap()
    }

    pub fn cert(&self, identity: &SpiffeId, validity: Validity) -> WorkloadCert {
        WorkloadCert::issue(&self.ca, identity, validity).unwrap()
    }

    pub fn creds(&self, identity: &str) -> Arc<Credentials> {
        Credentials::new(
            self.cert(&id(identity), Validity::from_now(Duration::from_secs(3600))),
            self.roots(),
        )
    }
}

/// An HBONE server whose handler connects every accepted tunnel to its CONNECT destination.
pub struct ForwardingServer {
    pub addr: SocketAddr,
    pub server: Arc<HboneServer>,
    pub creds: Arc<Credentials>,
}

pub async fn forwarding_server(creds: Arc<Credentials>) -> ForwardingServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve_forwarding(listener, creds.clone());
    ForwardingServer {
        addr,
        server,
        creds,
    }
}

/// Serves HBONE on `listener`, connecting every accepted tunnel to its CONNECT destination.
pub fn serve_forwarding(listener: TcpListener, creds: Arc<Credentials>) -> Arc<HboneServer> {
    let server = HboneServer::new(server_config(creds), ServerSettings::default());
    tokio::spawn(server.clone().serve(
        listener,
        |inbound| async move {
            let Ok(mut upstream) = TcpStream::connect(inbound.destination).await else {
                inbound.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            let peer = inbound.peer.clone();
            if let Ok(mut tunnel) = inbound.accept() {
                assert_eq!(tunnel.peer_identity(), &*peer);
                let _ = copy_bidirectional(&mut tunnel, &mut upstream).await;
            }
        },
        std::future::pending(),
    ));
    server
}

/// A TCP server echoing every connection back, half-close aware.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    addr
}

pub fn request(
    client_creds: &Arc<Credentials>,
    server: &ForwardingServer,
    target: SocketAddr,
) -> ConnectRequest {
    ConnectRequest {
        credentials: client_creds.clone(),
        expected: vec![server.creds.identity()],
        hbone_addr: server.addr,
        target,
        source: Some("127.0.0.1:40000".parse().unwrap()),
        bind_ip: None,
        dialer: None,
        baggage: None,
        trace: None,
    }
}

pub fn client() -> HboneClient {
    HboneClient::new(ClientSettings::default())
}
