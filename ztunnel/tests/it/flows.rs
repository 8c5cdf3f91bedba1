//! `/flows` on the admin port: a live reader sees each new connection as it happens, and a
//! filter it cannot understand is refused by name.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const WORKLOADS: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["{3}"], protocol: HBONE}
"#;

#[tokio::test]
async fn a_following_reader_sees_new_connections_as_they_happen() {
    let mesh = Mesh::new();
    mesh.write_config(WORKLOADS);
    let echo_app = std::net::SocketAddr::new(mesh.ip(3), 8080);
    echo_server(echo_app).await;
    let sleep = mesh.ztunnel(2, "default/sleep/sleep").await;
    let echo = mesh.ztunnel(3, "default/echo/echo").await;

    let (status, body) = http(echo.addresses.admin, "GET", "/flows?verdict=maybe").await;
    assert_eq!(status, 400);
    assert!(body.contains("verdict=maybe"), "{body}");

    let mut follow = TcpStream::connect(echo.addresses.admin).await.unwrap();
    follow
        .write_all(b"GET /flows?follow=true&from=default/sleep HTTP/1.1\r\nhost: zt\r\n\r\n")
        .await
        .unwrap();
    // The stream is open (headers sent) before the connection is made.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), follow.read(&mut buf))
            .await
            .expect("the /flows headers")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("application/x-ndjson"), "{seen}");

    let tunnel = socks5(socks(&sleep), echo_app).await.expect("tunnel");
    echo_roundtrip(tunnel, 10_000, 7).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(seen.contains("\"event\":\"opened\"") && seen.contains("\"event\":\"closed\"")) {
        let n = tokio::time::timeout_at(deadline, follow.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no opened and closed events within 5 s:\n{seen}"))
            .unwrap();
        assert!(n > 0, "the stream ended:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let closed = seen
        .lines()
        .find(|l| l.contains("\"event\":\"closed\""))
        .unwrap();
    let closed: serde_json::Value = serde_json::from_str(closed).unwrap();
    assert_eq!(
        closed["source"]["principal"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(closed["bytes_received"], 10_000, "{closed}");
    assert_eq!(closed["bytes_sent"], 10_000, "{closed}");
}
