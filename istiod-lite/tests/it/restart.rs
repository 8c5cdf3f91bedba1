//! istiod-lite (the real binary) killed and restarted while traffic flows: established tunnels
//! keep working, new connections keep working on the ztunnels' cached view and certificates,
//! and the ztunnels reconnect and resync with the restarted control plane (a policy written
//! meanwhile applies, also to the tunnel it denies).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{echo_app, open, ping, two_pod_mesh};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 62, (std::process::id() % 200) as u8 + 1, last])
}

/// The istiod-lite child, killed when dropped (also when the test fails).
struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn istiod(dir: &Path, ca: &Path, tokens: &Path) -> Control {
    Command::new(env!("CARGO_BIN_EXE_istiod-lite"))
        .args(["--config-dir".as_ref(), dir.as_os_str()])
        .args(["--ca-dir".as_ref(), ca.as_os_str()])
        .args(["--bootstrap-tokens".as_ref(), tokens.as_os_str()])
        .args(["--grpc-address", &format!("{}:15012", ip(1))])
        .args(["--http-address", &format!("{}:15014", ip(1))])
        .args(["--poll-ms", "50"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map(Control)
        .expect("istiod-lite binary")
}

async fn wait_ready() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut t) = TcpStream::connect((ip(1), 15014)).await {
            let _ = t
                .write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = t.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("istiod-lite not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_traffic_and_resyncs() {
    let root = std::env::temp_dir().join(format!("istiod-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, ca, tokens, token) = (
        root.join("m"),
        root.join("ca"),
        root.join("tokens"),
        root.join("node.token"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&tokens, "node-1 restart-test-token-0123456789\n").unwrap();
    std::fs::write(&token, "restart-test-token-0123456789\n").unwrap();
    two_pod_mesh(&dir, [("client", ip(2)), ("server", ip(3))]);
    let control = istiod(&dir, &ca, &tokens);
    wait_ready().await;

    let start = |last: u8, workload: &str| {
        let mut s = ztunnel::Settings::defaults();
        s.proxy_workload_info = Some(workload.parse().unwrap());
        s.xds_address = Some(format!("{}:15012", ip(1)));
        s.ca_address = Some(format!("{}:15012", ip(1)));
        s.ca_token_file = Some(token.clone());
        s.xds_root_ca = Some(ca.join("root-cert.pem"));
        s.bind_address = ip(last);
        s.socket_mark = 0;
        s.enable_socks5 = true;
        ztunnel::start(s, None)
    };
    let client = start(2, "shop/client/client").await.unwrap();
    let server = start(3, "shop/server/server").await.unwrap();
    echo_app(SocketAddr::new(ip(3), 8080)).await;
    let dst = SocketAddr::new(ip(3), 8080);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.proxy.state.load().config.workloads.len() < 2
        || client.proxy.state.load().config.workloads.len() < 2
    {
        assert!(Instant::now() < deadline, "initial sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut established = open(client.addresses.socks5.expect("SOCKS5 enabled"), dst)
        .await
        .expect("tunnel");
    ping(&mut established).await;

    // The control plane dies.
    drop(control);
    ping(&mut established).await;
    let mut fresh = open(client.addresses.socks5.expect("SOCKS5 enabled"), dst)
        .await
        .expect("new connection on cached state");
    ping(&mut fresh).await;

    // It comes back (same CA directory, so the same root); the ztunnels reconnect, and a policy
    // written meanwhile reaches them.
    std::fs::write(
        dir.join("deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: shop}\n\
         spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]}\n",
    )
    .unwrap();
    let control = istiod(&dir, &ca, &tokens);
    wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if open(client.addresses.socks5.expect("SOCKS5 enabled"), dst)
            .await
            .err()
            == Some(2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ztunnels resynced with the restarted control plane"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tunnel opened before, from the client the new policy denies, is closed too (as
    // Istio's ztunnel closes established connections a policy change denies).
    let mut b = [0u8; 4];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = established.write_all(b"ping").await;
        established.read(&mut b).await
    })
    .await
    .expect("the denied tunnel is closed within 5 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(control);
    let _ = std::fs::remove_dir_all(&root);
}
