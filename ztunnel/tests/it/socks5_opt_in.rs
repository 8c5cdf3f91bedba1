//! SOCKS5 is opt-in (issue 14, S16), as in Istio: without `UNSTABLE_ENABLE_SOCKS5=true` no
//! local process can borrow the served workload's identity through 15080, because nothing
//! listens there.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CONFIG: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
"#;

/// Whether `addr` answers a SOCKS5 greeting; `Err` says how connecting failed.
async fn greets(addr: std::net::SocketAddr) -> Result<bool, std::io::ErrorKind> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.kind())?;
    tcp.write_all(&[5, 1, 0]).await.map_err(|e| e.kind())?;
    let mut reply = [0u8; 2];
    tcp.read_exact(&mut reply).await.map_err(|e| e.kind())?;
    Ok(reply == [5, 0])
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on `ip(last)`, `UNSTABLE_ENABLE_SOCKS5` set to `socks5` when given; ready.
async fn binary(mesh: &Mesh, last: u8, socks5: Option<&str>) -> Killed {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    cmd.env_clear()
        .env("PROXY_WORKLOAD_INFO", "default/sleep/sleep")
        .env("LOCAL_XDS_PATH", &mesh.config)
        .env("CA_DIR", mesh.dir.join("ca"))
        .env("BIND_ADDRESS", mesh.ip(last).to_string())
        .env("SOCKET_MARK", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(v) = socks5 {
        cmd.env("UNSTABLE_ENABLE_SOCKS5", v);
    }
    let child = Killed(cmd.spawn().expect("spawn ztunnel"));
    let ready: std::net::SocketAddr = (mesh.ip(last), 15021).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut tcp) = TcpStream::connect(ready).await {
            let _ = tcp
                .write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: z\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = tcp.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return child;
            }
        }
        assert!(Instant::now() < deadline, "ztunnel never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn socks5_listens_only_when_enabled() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);

    // In process, with every default.
    let mut s = ztunnel::Settings::defaults();
    s.proxy_workload_info = Some("default/sleep/sleep".parse().unwrap());
    s.local_xds_path = Some(mesh.config.clone());
    s.ca_dir = Some(mesh.dir.join("ca"));
    s.bind_address = mesh.ip(2);
    s.socket_mark = 0;
    let zt = ztunnel::start(s, None).await.expect("ztunnel starts");
    assert_eq!(
        greets((mesh.ip(2), 15080).into()).await,
        Err(std::io::ErrorKind::ConnectionRefused),
        "SOCKS5 by default"
    );
    assert_eq!(zt.addresses.socks5, None);
    zt.shutdown().await;

    // The binary: unset, and set to the empty string (which counts as unset), then true.
    for (last, value) in [(3, None), (4, Some(""))] {
        let _z = binary(&mesh, last, value).await;
        assert_eq!(
            greets((mesh.ip(last), 15080).into()).await,
            Err(std::io::ErrorKind::ConnectionRefused),
            "SOCKS5 with UNSTABLE_ENABLE_SOCKS5={value:?}"
        );
    }
    let _z = binary(&mesh, 5, Some("true")).await;
    assert_eq!(greets((mesh.ip(5), 15080).into()).await, Ok(true));
}
