//! Shared by the end-to-end tests: an echo application, a SOCKS5 client, one echoed line.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// istiod-lite's serving TLS (`istiod.istio-system.svc`, an hour) signed by `ca`.
pub fn control_tls(
    ca: &meshcore::pki::CertificateAuthority,
) -> std::sync::Arc<rustls::ServerConfig> {
    let (chain, key) = ca
        .issue_server_cert(
            &["istiod.istio-system.svc"],
            meshcore::pki::Validity::from_now(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
    meshcore::tls::control::control_server_config(&chain.to_pem(), &key).unwrap()
}

/// Echoes every connection on `addr`.
pub async fn echo_app(addr: SocketAddr) {
    let app = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut t, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = t.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// A SOCKS5 tunnel through `proxy` to the IPv4 `dst`; `Err(reply code)` when refused.
pub async fn open(proxy: SocketAddr, dst: SocketAddr) -> Result<TcpStream, u8> {
    let mut t = TcpStream::connect(proxy).await.unwrap();
    let IpAddr::V4(v4) = dst.ip() else {
        unreachable!("tests use IPv4")
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&v4.octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    t.write_all(&req).await.unwrap();
    let mut reply = [0u8; 12];
    t.read_exact(&mut reply).await.unwrap();
    if reply[3] == 0 {
        Ok(t)
    } else {
        Err(reply[3])
    }
}

/// One line through an echo path.
pub async fn ping(t: &mut TcpStream) {
    t.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
}

/// Opens a tunnel and echoes one line; `Err(reply code)` when refused, `Err(0)` when it opened
/// and was then closed (a policy that landed meanwhile closes established connections too).
pub async fn call(proxy: SocketAddr, dst: SocketAddr) -> Result<(), u8> {
    let mut t = open(proxy, dst).await?;
    let mut b = [0u8; 4];
    match t.write_all(b"ping").await {
        Ok(()) if t.read_exact(&mut b).await.is_ok() && &b == b"ping" => Ok(()),
        _ => Err(0),
    }
}

/// Writes `mesh.yaml` into `dir`: namespace `shop` enrolled in ambient, and one running pod per
/// `(name, ip)` on node-1, each with the service account and `app` label of its name.
pub fn two_pod_mesh(dir: &Path, pods: [(&str, IpAddr); 2]) {
    let pod = |(name, ip): (&str, IpAddr)| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\n\
             spec: {{serviceAccountName: {name}, nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: \"{ip}\", conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        )
    };
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n{}---\n{}",
            pod(pods[0]),
            pod(pods[1])
        ),
    )
    .unwrap();
}
