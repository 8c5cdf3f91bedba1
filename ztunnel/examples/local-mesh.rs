//! The mesh's main job on its embedded default: two ztunnels on loopback, each serving one
//! workload from the same local config, carrying traffic over HBONE (mutual TLS with SPIFFE
//! identities) and enforcing an L4 AuthorizationPolicy.
//!
//!     cargo run -p ztunnel --example local-mesh
//!
//! It starts ztunnels for `default/sleep` (127.0.10.2), `default/httpbin` (127.0.10.3) and
//! `other/curl` (127.0.10.4), an echo application behind httpbin, then sends traffic through
//! each client's SOCKS5 port and prints what happened and what the metrics say.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztunnel::{Settings, Ztunnel};

const CONFIG: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: [127.0.10.2], protocol: HBONE}
- {name: httpbin, namespace: default, serviceAccount: httpbin, workloadIps: [127.0.10.3], protocol: HBONE,
   services: {default/httpbin.default.svc.cluster.local: {80: 8080}}}
- {name: curl, namespace: other, serviceAccount: curl, workloadIps: [127.0.10.4], protocol: HBONE}
services:
- {name: httpbin, namespace: default, hostname: httpbin.default.svc.cluster.local,
   vips: [/127.0.10.100], ports: {80: 8080}}
policies:
- name: allow-default-namespace
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - namespaces: [!Exact default]
"#;

async fn ztunnel(dir: &std::path::Path, ip: &str, workload: &str) -> Ztunnel {
    let mut s = Settings::defaults();
    s.proxy_workload_info = Some(workload.parse().expect("workload info"));
    s.local_xds_path = Some(dir.join("mesh.yaml"));
    s.ca_dir = Some(dir.join("ca"));
    s.bind_address = ip.parse().unwrap();
    s.socket_mark = 0;
    // The clients below speak SOCKS5 to their ztunnel (UNSTABLE_ENABLE_SOCKS5, off by default).
    s.enable_socks5 = true;
    ztunnel::start(s, None).await.expect("ztunnel starts")
}

/// SOCKS5 CONNECT to `host:port` through `proxy`, send a line, read the echo.
async fn call(proxy: SocketAddr, host: &str, port: u16, line: &str) -> Result<String, String> {
    let mut t = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    t.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut reply = [0u8; 12];
    t.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
    match reply[3] {
        0 => {}
        2 => return Err("refused: connection not allowed by policy (SOCKS5 reply 2)".into()),
        code => return Err(format!("refused with SOCKS5 reply {code}")),
    }
    t.write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    t.shutdown().await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    t.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("local-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), CONFIG).unwrap();

    // The application behind httpbin: answers with what it received.
    let app = TcpListener::bind("127.0.10.3:8080")
        .await
        .expect("bind 127.0.10.3:8080");
    tokio::spawn(async move {
        while let Ok((mut t, peer)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = String::new();
                let _ = t.read_to_string(&mut buf).await;
                let _ = t
                    .write_all(format!("httpbin got {buf:?} from {peer}").as_bytes())
                    .await;
            });
        }
    });

    let sleep = ztunnel(&dir, "127.0.10.2", "default/sleep/sleep").await;
    let httpbin = ztunnel(&dir, "127.0.10.3", "default/httpbin/httpbin").await;
    let curl = ztunnel(&dir, "127.0.10.4", "other/curl/curl").await;
    println!(
        "three ztunnels up; config: {}",
        dir.join("mesh.yaml").display()
    );
    println!("policy: httpbin's namespace allows only callers from namespace `default`\n");

    for (who, zt, host, port) in [
        ("default/sleep", &sleep, "127.0.10.3", 8080),
        (
            "default/sleep",
            &sleep,
            "httpbin.default.svc.cluster.local",
            80,
        ),
        ("other/curl", &curl, "httpbin.default.svc.cluster.local", 80),
    ] {
        let result = call(
            zt.addresses.socks5.expect("SOCKS5 enabled"),
            host,
            port,
            &format!("hello from {who}"),
        )
        .await;
        match result {
            Ok(reply) => println!("{who:>14} -> {host}:{port}  OK   {reply}"),
            Err(e) => println!("{who:>14} -> {host}:{port}  DENIED  {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("\nhttpbin's ztunnel (reporter=destination) counted:");
    for line in httpbin.metrics.render().lines() {
        if line.starts_with("istio_tcp_connections_") && !line.starts_with('#') {
            let keep = |k: &str| {
                line.split(&[',', '{', '}'][..])
                    .find(|kv| kv.starts_with(k))
                    .unwrap_or("")
                    .to_owned()
            };
            let name = line.split('{').next().unwrap();
            let value = line.rsplit(' ').next().unwrap();
            println!(
                "  {name} {} {} {} {} = {value}",
                keep("source_principal"),
                keep("connection_security_policy"),
                keep("response_flags"),
                keep("reporter")
            );
        }
    }
    let denials = httpbin.proxy.denials.recent();
    if let Some(d) = denials.first() {
        println!("\nlast denial on httpbin: {} ({})", d.connection, d.reason);
    }
    println!(
        "\nadmin: http://{}/config_dump  metrics: http://{}/metrics",
        httpbin.addresses.admin, httpbin.addresses.stats
    );
    for zt in [sleep, httpbin, curl] {
        zt.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
