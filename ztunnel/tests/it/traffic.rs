//! Traffic through in-process ztunnels on loopback: SOCKS5 → HBONE → application, policies,
//! plain TCP, service VIPs, config reload, metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::support::*;

const SLEEP: &str = "default/sleep/sleep";
const ECHO: &str = "default/echo/echo";

/// One request/response on a long-lived echo connection.
async fn ping(w: &mut OwnedWriteHalf, r: &mut OwnedReadHalf) {
    w.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// sleep on .2, echo on .3 (HBONE, ports 8080 and 9090), both in namespace default.
const TWO_WORKLOADS: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["{3}"], protocol: HBONE}
"#;

fn at(mesh: &Mesh, last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.ip(last), port)
}

#[tokio::test]
async fn socks5_to_hbone_to_echo_checksummed_with_metrics() {
    let mesh = Mesh::new();
    mesh.write_config(TWO_WORKLOADS);
    echo_server(at(&mesh, 3, 8080)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let b = mesh.ztunnel(3, ECHO).await;

    const LEN: usize = 8 << 20;
    let stream = socks5(socks(&a), at(&mesh, 3, 8080))
        .await
        .expect("tunnel opens");
    echo_roundtrip(stream, LEN, 7).await;

    let mtls = [("connection_security_policy", "mutual_tls")];
    let src = [
        ("reporter", "source"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/echo",
        ),
        ("destination_workload", "echo"),
    ];
    let dst = [
        ("reporter", "destination"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ),
        ("source_workload", "sleep"),
        ("destination_workload", "echo"),
    ];
    eventually("both ends count the close", || async {
        metric(&a, "istio_tcp_connections_closed_total", &src).await == 1
            && metric(&b, "istio_tcp_connections_closed_total", &dst).await == 1
    })
    .await;
    for (zt, labels) in [(&a, &src[..]), (&b, &dst[..])] {
        let labels: Vec<_> = labels.iter().chain(&mtls).copied().collect();
        assert_eq!(
            metric(zt, "istio_tcp_connections_opened_total", &labels).await,
            1
        );
        assert_eq!(
            metric(zt, "istio_tcp_received_bytes_total", &labels).await,
            LEN as u64
        );
        assert_eq!(
            metric(zt, "istio_tcp_sent_bytes_total", &labels).await,
            LEN as u64
        );
        assert_eq!(
            metric(zt, "istio_tcp_connections_failed_total", &[]).await,
            0
        );
    }
    // A second connection reuses the pooled HBONE connection and adds exactly one more.
    let stream = socks5(socks(&a), at(&mesh, 3, 8080)).await.unwrap();
    echo_roundtrip(stream, 1000, 8).await;
    eventually("second close counted", || async {
        metric(&a, "istio_tcp_connections_closed_total", &src).await == 2
    })
    .await;
    assert_eq!(
        metric(&a, "istio_tcp_received_bytes_total", &src).await,
        LEN as u64 + 1000
    );
    assert_eq!(a.proxy.hbone.pooled_connections(), 1);
}

#[tokio::test]
async fn deny_policy_refuses_one_principal_while_another_passes() {
    let mesh = Mesh::new();
    mesh.write_config(&format!(
        "{TWO_WORKLOADS}{}",
        r#"- {name: curl, namespace: tools, serviceAccount: curl, workloadIps: ["{4}"], protocol: HBONE}
policies:
- name: deny-sleep
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/sleep]
"#
    ));
    echo_server(at(&mesh, 3, 8080)).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let echo = mesh.ztunnel(3, ECHO).await;
    let curl = mesh.ztunnel(4, "tools/curl/curl").await;

    // 2 = "connection not allowed by ruleset".
    assert_eq!(
        socks5(socks(&sleep), at(&mesh, 3, 8080)).await.err(),
        Some(2)
    );
    let ok = socks5(socks(&curl), at(&mesh, 3, 8080))
        .await
        .expect("curl is allowed");
    echo_roundtrip(ok, 100_000, 3).await;

    let deny = [
        ("response_flags", "DENY"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ),
    ];
    assert_eq!(
        metric(&echo, "istio_tcp_connections_failed_total", &deny).await,
        1
    );
    assert_eq!(
        metric(
            &sleep,
            "istio_tcp_connections_failed_total",
            &[("response_flags", "DENY")]
        )
        .await,
        1
    );
    let (_, dump) = http(echo.addresses.admin, "GET", "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let denial = &dump["recentDenials"][0];
    assert_eq!(
        denial["reason"], "denied by DENY policy default/deny-sleep",
        "{dump:#}"
    );
    assert!(denial["connection"]
        .as_str()
        .unwrap()
        .contains("cluster.local/ns/default/sa/sleep"));
    assert_eq!(
        dump["servedPolicies"],
        serde_json::json!(["default/deny-sleep"])
    );
    // The flow records tell the same story, with the deciding policy.
    let (status, flows) = http(echo.addresses.admin, "GET", "/flows?verdict=denied").await;
    assert_eq!(status, 200, "{flows}");
    let denied: Vec<serde_json::Value> = flows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(denied.len(), 1, "{flows}");
    assert_eq!(denied[0]["source"]["workload"], "sleep", "{flows}");
    assert_eq!(denied[0]["destination"]["workload"], "echo", "{flows}");
    assert_eq!(denied[0]["flag"], "DENY");
    assert_eq!(
        denied[0]["reason"],
        "denied by DENY policy default/deny-sleep"
    );
    let (_, from_curl) = http(echo.addresses.admin, "GET", "/flows?from=tools/curl").await;
    assert!(
        from_curl
            .lines()
            .any(|l| l.contains("\"event\":\"opened\"") && l.contains("\"mtls\":true")),
        "{from_curl}"
    );
}

#[tokio::test]
async fn a_new_deny_closes_established_connections_it_denies_and_spares_others() {
    let mesh = Mesh::new();
    let curl = r#"- {name: curl, namespace: tools, serviceAccount: curl, workloadIps: ["{4}"], protocol: HBONE}
"#;
    mesh.write_config(&format!("{TWO_WORKLOADS}{curl}"));
    echo_server(at(&mesh, 3, 8080)).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let echo = mesh.ztunnel(3, ECHO).await;
    let curl_zt = mesh.ztunnel(4, "tools/curl/curl").await;
    let open = |zt: &ztunnel::Ztunnel| {
        let proxy = socks(zt);
        let dst = at(&mesh, 3, 8080);
        async move { socks5(proxy, dst).await.unwrap().into_split() }
    };
    let (mut sr, mut sw) = open(&sleep).await;
    let (mut cr, mut cw) = open(&curl_zt).await;
    ping(&mut sw, &mut sr).await;
    ping(&mut cw, &mut cr).await;
    assert_eq!(echo.proxy.inbound.len(), 2);

    mesh.write_config(&format!(
        "{TWO_WORKLOADS}{curl}{}",
        r#"policies:
- name: deny-sleep
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/sleep]
"#
    ));
    eventually("the policy applied", || async {
        echo.proxy.state.load().config.policies.len() == 1
    })
    .await;
    // sleep's established connection is closed: its next read ends.
    let mut buf = [0u8; 4];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sw.write_all(b"ping").await;
        sr.read(&mut buf).await
    })
    .await
    .expect("the denied connection is closed within 5 s");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    // curl's carries on; the denial names the policy.
    ping(&mut cw, &mut cr).await;
    let (_, dump) = http(echo.addresses.admin, "GET", "/config_dump").await;
    assert!(
        dump.contains("denied by DENY policy default/deny-sleep"),
        "{dump}"
    );
    eventually("the closed connection unregistered", || async {
        echo.proxy.inbound.len() == 1
    })
    .await;
}

#[tokio::test]
async fn allow_policy_on_a_port() {
    let mesh = Mesh::new();
    mesh.write_config(&format!(
        "{TWO_WORKLOADS}{}",
        r#"policies:
- {name: only-8080, namespace: default, scope: Namespace, action: Allow, rules: [[[{destinationPorts: [8080]}]]]}
"#
    ));
    echo_server(at(&mesh, 3, 8080)).await;
    echo_server(at(&mesh, 3, 9090)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let _b = mesh.ztunnel(3, ECHO).await;
    let ok = socks5(socks(&a), at(&mesh, 3, 8080))
        .await
        .expect("8080 allowed");
    echo_roundtrip(ok, 10_000, 1).await;
    assert_eq!(socks5(socks(&a), at(&mesh, 3, 9090)).await.err(), Some(2));
}

#[tokio::test]
async fn plain_tcp_to_a_workload_without_hbone_and_passthrough() {
    let mesh = Mesh::new();
    mesh.write_config(
        r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: legacy, namespace: legacy, workloadIps: ["{3}"], protocol: TCP}
"#,
    );
    echo_server(at(&mesh, 3, 8080)).await;
    echo_server(at(&mesh, 9, 8080)).await; // not in the config at all
    let a = mesh.ztunnel(2, SLEEP).await;
    let s = socks5(socks(&a), at(&mesh, 3, 8080))
        .await
        .expect("plain TCP");
    echo_roundtrip(s, 50_000, 2).await;
    let s = socks5(socks(&a), at(&mesh, 9, 8080))
        .await
        .expect("passthrough");
    echo_roundtrip(s, 50_000, 3).await;
    let plain = [
        ("connection_security_policy", "unknown"),
        ("reporter", "source"),
    ];
    eventually("plain connections counted", || async {
        metric(&a, "istio_tcp_connections_closed_total", &plain).await == 2
    })
    .await;
    assert_eq!(
        metric(
            &a,
            "istio_tcp_connections_opened_total",
            &[("destination_workload", "legacy")]
        )
        .await,
        1
    );
    assert_eq!(
        a.proxy.hbone.pooled_connections(),
        0,
        "no HBONE for plain workloads"
    );
    // ztunnel's own listeners are never a destination (that would loop back into it); each
    // refusal is counted.
    for own in [15001, 15006, 15008, 15080, 15000] {
        assert_eq!(
            socks5(socks(&a), at(&mesh, 2, own)).await.err(),
            Some(2),
            "port {own}"
        );
    }
    let failed = || {
        metric(
            &a,
            "istio_tcp_connections_failed_total",
            &[("response_flags", "CONNECT")],
        )
    };
    assert_eq!(failed().await, 5);
    // Nothing listens on .3:1: the failure is counted and answered "connection refused" (5).
    assert_eq!(socks5(socks(&a), at(&mesh, 3, 1)).await.err(), Some(5));
    assert_eq!(failed().await, 6);
}

#[tokio::test]
async fn service_vip_and_hostname_reach_an_endpoint() {
    let mesh = Mesh::new();
    mesh.write_config(
        r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["{3}"], protocol: HBONE,
   services: {default/echo.default.svc.cluster.local: {80: 8080}}}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/{100}"], ports: {80: 8080}}
"#,
    );
    echo_server(at(&mesh, 3, 8080)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let b = mesh.ztunnel(3, ECHO).await;
    let s = socks5(socks(&a), at(&mesh, 100, 80))
        .await
        .expect("VIP:80 → endpoint:8080");
    echo_roundtrip(s, 20_000, 4).await;
    let s = socks5_domain(socks(&a), "echo.default.svc.cluster.local", 80)
        .await
        .expect("hostname resolves to the VIP");
    echo_roundtrip(s, 20_000, 5).await;
    let svc = [
        ("destination_service", "echo.default.svc.cluster.local"),
        ("reporter", "source"),
    ];
    eventually("service connections counted", || async {
        metric(&a, "istio_tcp_connections_closed_total", &svc).await == 2
    })
    .await;
    // The destination side saw the endpoint's port.
    assert_eq!(
        metric(
            &b,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination")]
        )
        .await,
        2
    );
    // An unmapped service port is refused at the source.
    assert_eq!(socks5(socks(&a), at(&mesh, 100, 81)).await.err(), Some(1));
}

#[tokio::test]
async fn config_reload_adds_a_workload_while_traffic_flows_and_bad_files_change_nothing() {
    let mesh = Mesh::new();
    mesh.write_config(TWO_WORKLOADS);
    echo_server(at(&mesh, 3, 8080)).await;
    echo_server(at(&mesh, 4, 8080)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let _b = mesh.ztunnel(3, ECHO).await;

    // A long-lived tunnel, open across the reloads below.
    let long = socks5(socks(&a), at(&mesh, 3, 8080)).await.unwrap();
    let (mut r, mut w) = long.into_split();
    ping(&mut w, &mut r).await;

    // .4 is not in the mesh yet: passthrough, plain TCP.
    let s = socks5(socks(&a), at(&mesh, 4, 8080)).await.unwrap();
    echo_roundtrip(s, 1000, 1).await;
    assert_eq!(a.proxy.hbone.pooled_connections(), 1);

    // Add it as an HBONE workload with its own ztunnel.
    mesh.write_config(&format!(
        "{TWO_WORKLOADS}- {{name: new, namespace: default, serviceAccount: new, workloadIps: [\"{{4}}\"], protocol: HBONE}}\n"
    ));
    eventually("reload applied", || async {
        a.proxy.state.load().config.workloads.len() == 3
    })
    .await;
    let _c = mesh.ztunnel(4, "default/new/new").await;
    let s = socks5(socks(&a), at(&mesh, 4, 8080)).await.unwrap();
    echo_roundtrip(s, 1000, 2).await;
    assert_eq!(
        a.proxy.hbone.pooled_connections(),
        2,
        "the new workload is reached over HBONE"
    );
    ping(&mut w, &mut r).await;

    // A malformed file is refused, named, and the last good view stays in force.
    let version = a.proxy.state.load().version;
    mesh.write_config("workloads:\n- {name: x, namespace: default, workloadIp: [\"{5}\"]}\n");
    eventually("refusal recorded", || async {
        let (_, dump) = http(a.addresses.admin, "GET", "/config_dump").await;
        dump.contains("unknown field `workloadIp`")
    })
    .await;
    assert_eq!(a.proxy.state.load().version, version);
    let s = socks5(socks(&a), at(&mesh, 4, 8080)).await.unwrap();
    echo_roundtrip(s, 1000, 3).await;
    ping(&mut w, &mut r).await;
    drop(w);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn admin_readiness_and_graceful_drain() {
    let mesh = Mesh::new();
    mesh.write_config(TWO_WORKLOADS);
    echo_server(at(&mesh, 3, 8080)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let b = mesh.ztunnel(3, ECHO).await;
    assert_eq!(
        http(b.addresses.readiness, "GET", "/healthz/ready").await.0,
        200
    );
    let (status, dump) = http(b.addresses.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["identity"],
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 2);
    assert_eq!(
        dump["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    assert!(dump["certificates"][0]["notAfter"].is_string(), "{dump:#}");
    assert_eq!(
        http(b.addresses.admin, "POST", "/logging?level=debug")
            .await
            .0,
        501
    );

    // An open tunnel survives the start of the drain; new connections are refused.
    let open = socks5(socks(&a), at(&mesh, 3, 8080)).await.unwrap();
    let socks = socks(&a);
    let shutdown = tokio::spawn(a.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(socks).await.is_err(),
        "listener closed while draining"
    );
    echo_roundtrip(open, 10_000, 9).await;
    tokio::time::timeout(Duration::from_secs(1), shutdown)
        .await
        .expect("drain ends once the last connection closed")
        .unwrap();
}

/// Every socket ztunnel holds for a tunnel has TCP keepalive on (a peer that vanishes without
/// a word does not pin a descriptor and its buffers forever; issue 14, S10): the SOCKS5
/// connection it accepted, the HBONE connection between the two ztunnels (both ends) and the
/// connection to the application. Read from /proc/net/tcp, where timer 2 is keepalive.
#[tokio::test]
async fn every_tunnel_socket_has_tcp_keepalive() {
    let mesh = Mesh::new();
    mesh.write_config(TWO_WORKLOADS);
    echo_server(at(&mesh, 3, 8080)).await;
    let a = mesh.ztunnel(2, SLEEP).await;
    let _b = mesh.ztunnel(3, ECHO).await;
    let stream = socks5(socks(&a), at(&mesh, 3, 8080))
        .await
        .expect("tunnel opens");
    let (mut r, mut w) = stream.into_split();
    ping(&mut w, &mut r).await;
    let (za, zb) = (mesh.ip(2), mesh.ip(3));
    // (local, remote, timer) of established IPv4 sockets.
    let sockets = || -> Vec<(SocketAddr, SocketAddr, u8)> {
        let parse = |s: &str| -> SocketAddr {
            let (ip, port) = s.split_once(':').unwrap();
            let ip = u32::from_str_radix(ip, 16).unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            SocketAddr::from((ip.to_le_bytes(), port))
        };
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3] == "01").then(|| {
                    let timer = u8::from_str_radix(f[5].split(':').next().unwrap(), 16).unwrap();
                    (parse(f[1]), parse(f[2]), timer)
                })
            })
            .collect()
    };
    // Right after traffic a socket may show its retransmission timer (1) until the last
    // segment is acknowledged: look again until the path is idle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let all = sockets();
        let ztunnels: Vec<&(SocketAddr, SocketAddr, u8)> = all
            .iter()
            .filter(|(local, remote, _)| {
                // Accepted on SOCKS5 or HBONE, or dialled to HBONE or to the application.
                (local.ip() == za && local.port() == socks(&a).port())
                    || (local.ip() == zb && local.port() == 15008)
                    || (remote.ip() == zb && remote.port() == 15008)
                    || (remote.ip() == zb && remote.port() == 8080 && local.port() != 15008)
            })
            .collect();
        assert!(
            ztunnels.len() >= 4,
            "the tunnel's sockets: {ztunnels:?} of {all:?}"
        );
        let missing: Vec<_> = ztunnels.iter().filter(|(_, _, t)| *t != 2).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no keepalive timer on {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop((r, w));
}
