//! Egress policy at the source (issue 19): sleep's own ztunnel decides its outbound
//! connections against the egress policies selecting it, before any tunnel or plain
//! connection is opened. Refusals answer SOCKS5 "not allowed", are counted in
//! `ztunnel_egress_denied_total`, listed in `/config_dump` and recorded in `/flows`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use ztunnel::dns::message::{answer, parse_query, query, TYPE_A};
use ztunnel::dns::{DnsProxy, Remember};

use crate::support::*;

const SLEEP: &str = "default/sleep/sleep";
/// SOCKS5 reply "connection not allowed by ruleset".
const NOT_ALLOWED: u8 = 2;

/// sleep (.2) and other (.6) with ztunnels; echo (.3, HBONE, behind Service `echo` at VIP
/// .100:80 -> 8080); plain (.4, TCP, no ztunnel); .5 is outside the mesh.
const MESH: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
- {name: other, namespace: default, serviceAccount: other, workloadIps: ["{6}"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["{3}"], protocol: HBONE,
   services: {"default/echo.default.svc.cluster.local": {80: 8080}}}
- {name: plain, namespace: default, workloadIps: ["{4}"]}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/{100}"], ports: {80: 8080}}
"#;

fn at(mesh: &Mesh, last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(mesh.ip(last), port)
}

/// The mesh plus `egress` (the `egressPolicies:` list's entries).
fn config(egress: &str) -> String {
    format!("{MESH}egressPolicies:\n{egress}")
}

/// Echo servers: echo's 8080 and 9090, plain's 8080, the outside address's 9000.
async fn apps(mesh: &Mesh) {
    for (last, port) in [(3, 8080), (3, 9090), (4, 8080), (5, 9000)] {
        echo_server(at(mesh, last, port)).await;
    }
}

async fn reaches(zt: &ztunnel::Ztunnel, dst: SocketAddr) -> bool {
    match socks5(socks(zt), dst).await {
        Ok(stream) => {
            echo_roundtrip(stream, 1000, 3).await;
            true
        }
        Err(code) => {
            assert_eq!(code, NOT_ALLOWED, "{dst}: refused, not failed");
            false
        }
    }
}

async fn denied(zt: &ztunnel::Ztunnel, policy: &str) -> u64 {
    metric(zt, "ztunnel_egress_denied_total", &[("policy", policy)]).await
}

async fn dump(zt: &ztunnel::Ztunnel) -> serde_json::Value {
    let (status, body) = http(zt.addresses.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn an_allow_policy_admits_its_destinations_and_the_rest_is_refused_at_the_source() {
    let mesh = Mesh::new();
    mesh.write_config(&config(
        r#"- {name: sleep-out, namespace: default, workloads: [default/sleep], action: Allow,
   rules: [{to: [{workloads: ["{3}"]}], ports: [{port: 8080}]}]}
"#,
    ));
    apps(&mesh).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let echo = mesh.ztunnel(3, "default/echo/echo").await;
    let other = mesh.ztunnel(6, "default/other/other").await;

    assert!(reaches(&sleep, at(&mesh, 3, 8080)).await);
    // Through the VIP: port 80 maps to 8080 on echo, which the rule allows.
    assert!(reaches(&sleep, at(&mesh, 100, 80)).await);
    assert!(!reaches(&sleep, at(&mesh, 3, 9090)).await, "another port");
    assert!(
        !reaches(&sleep, at(&mesh, 4, 8080)).await,
        "another workload"
    );
    assert!(
        !reaches(&sleep, at(&mesh, 5, 9000)).await,
        "outside the mesh"
    );
    assert_eq!(denied(&sleep, "default/sleep-out").await, 3);
    // Refused at the source: echo's ztunnel never saw the 9090 attempt.
    let to_9090 = [
        ("reporter", "destination"),
        ("destination_workload", "echo"),
    ];
    assert_eq!(
        metric(&echo, "istio_tcp_connections_opened_total", &to_9090).await,
        2,
        "only the two allowed connections reached echo"
    );
    assert_eq!(
        metric(
            &sleep,
            "istio_tcp_connections_failed_total",
            &[("response_flags", "DENY"), ("reporter", "source")]
        )
        .await,
        3
    );

    let d = dump(&sleep).await;
    assert_eq!(d["egressPolicies"][0]["name"], "sleep-out");
    assert_eq!(d["servedEgressPolicies"][0], "default/sleep-out");
    let denial = d["recentDenials"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(denial["reason"], "default deny by default/sleep-out");
    assert!(
        denial["connection"].as_str().unwrap().contains("(egress)"),
        "{denial}"
    );

    let (_, flows) = http(sleep.addresses.admin, "GET", "/flows?verdict=denied").await;
    let events: Vec<serde_json::Value> = flows
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{flows}");
    assert!(events.iter().all(|e| e["flag"] == "DENY"
        && e["reason"] == "default deny by default/sleep-out"
        && e["reporter"] == "source"));

    // A workload no policy selects is unaffected, and nothing is counted for it.
    assert!(reaches(&other, at(&mesh, 4, 8080)).await);
    assert!(reaches(&other, at(&mesh, 5, 9000)).await);
    assert_eq!(denied(&other, "default/sleep-out").await, 0);
    assert!(dump(&other).await.get("servedEgressPolicies").is_none());
}

#[tokio::test]
async fn deny_wins_and_without_default_deny_the_rest_stays_open() {
    let mesh = Mesh::new();
    mesh.write_config(&config(
        r#"- {name: everything, namespace: default, workloads: [default/sleep], action: Allow, rules: [{}]}
- {name: no-9090, namespace: default, workloads: [default/sleep], action: Deny, rules: [{ports: [{port: 9090}]}]}
"#,
    ));
    apps(&mesh).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let _echo = mesh.ztunnel(3, "default/echo/echo").await;

    assert!(reaches(&sleep, at(&mesh, 3, 8080)).await);
    assert!(!reaches(&sleep, at(&mesh, 3, 9090)).await);
    assert_eq!(denied(&sleep, "default/no-9090").await, 1);
    let d = dump(&sleep).await;
    assert_eq!(
        d["recentDenials"][0]["reason"],
        "denied by egress DENY policy default/no-9090 rule 0"
    );

    // An ALLOW policy without default deny restricts nothing by itself.
    mesh.write_config(&config(
        r#"- {name: only-echo, namespace: default, workloads: [default/sleep], action: Allow, defaultDeny: false,
   rules: [{to: [{workloads: ["{3}"]}]}]}
"#,
    ));
    eventually("the new policy is in force", || async {
        dump(&sleep).await["servedEgressPolicies"][0] == "default/only-echo"
    })
    .await;
    assert!(reaches(&sleep, at(&mesh, 3, 9090)).await);
    assert!(reaches(&sleep, at(&mesh, 5, 9000)).await);
    assert!(reaches(&sleep, at(&mesh, 4, 8080)).await);
}

#[tokio::test]
async fn a_service_peer_by_vip_and_a_cidr_with_except() {
    let mesh = Mesh::new();
    let net = format!("{}/24", at(&mesh, 0, 0).ip());
    let plain = format!("{}/32", mesh.ip(4));
    mesh.write_config(&config(&format!(
        r#"- {{name: to-echo, namespace: default, workloads: [default/sleep], action: Allow,
   rules: [{{to: [{{service: {{namespace: default, name: echo}}}}]}},
           {{to: [{{cidr: {{cidr: "{net}", except: ["{plain}"]}}}}], ports: [{{port: 9000}}, {{port: 8080}}]}}]}}
"#
    )));
    apps(&mesh).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let _echo = mesh.ztunnel(3, "default/echo/echo").await;

    // The Service by its VIP, and its endpoint dialled directly (any port of it).
    assert!(reaches(&sleep, at(&mesh, 100, 80)).await);
    assert!(reaches(&sleep, at(&mesh, 3, 9090)).await);
    // The CIDR: the outside address is in it; plain is its exception.
    assert!(reaches(&sleep, at(&mesh, 5, 9000)).await);
    assert!(!reaches(&sleep, at(&mesh, 4, 8080)).await);
    assert_eq!(denied(&sleep, "default/to-echo").await, 1);
}

/// An upstream DNS server answering every A query with `ip` (TTL 5 s).
async fn upstream_answering(ip: IpAddr) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let q = &buf[..n];
            let Ok(parsed) = parse_query(q) else { continue };
            let reply = answer(q, &parsed, &[ip]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

#[tokio::test]
async fn an_fqdn_peer_allows_what_the_workload_resolved_through_the_dns_proxy() {
    let mesh = Mesh::new();
    mesh.write_config(&config(
        r#"- {name: by-name, namespace: default, workloads: [default/sleep], action: Allow,
   rules: [{to: [{fqdn: {matchPattern: "*.example.com"}}, {fqdn: {matchName: echo.default.svc.cluster.local}}]}]}
"#,
    ));
    apps(&mesh).await;
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let _echo = mesh.ztunnel(3, "default/echo/echo").await;
    let outside = at(&mesh, 5, 9000);
    assert!(!reaches(&sleep, outside).await, "not resolved yet");
    assert!(
        !reaches(&sleep, at(&mesh, 100, 80)).await,
        "not resolved yet"
    );

    // The DNS proxy node mode runs in each pod, here in-process and sharing sleep's names.
    let dns = sleeps_dns_proxy(&sleep, outside.ip()).await;
    // Names the pattern does not match are remembered but allow nothing.
    dns.resolve(&query(1, "a.b.example.com", TYPE_A))
        .await
        .unwrap();
    assert!(
        !reaches(&sleep, outside).await,
        "a.b.example.com: two labels"
    );
    dns.resolve(&query(2, "API.example.com", TYPE_A))
        .await
        .unwrap();
    assert!(
        reaches(&sleep, outside).await,
        "api.example.com resolved to it"
    );
    // A mesh Service answered locally, by its short name.
    dns.resolve(&query(3, "echo", TYPE_A)).await.unwrap();
    assert!(reaches(&sleep, at(&mesh, 100, 80)).await);
    assert!(!reaches(&sleep, at(&mesh, 4, 8080)).await);
    let d = dump(&sleep).await;
    assert_eq!(
        d["resolvedNames"]["api.example.com"][0],
        outside.ip().to_string()
    );
}

#[tokio::test]
async fn without_an_fqdn_peer_nothing_is_remembered() {
    let mesh = Mesh::new();
    mesh.write_config(&config(
        r#"- {name: no-ssh, namespace: default, workloads: [default/sleep], action: Deny, rules: [{ports: [{port: 22}]}]}
"#,
    ));
    let sleep = mesh.ztunnel(2, SLEEP).await;
    let dns = sleeps_dns_proxy(&sleep, mesh.ip(5)).await;
    dns.resolve(&query(1, "api.example.com", TYPE_A))
        .await
        .unwrap();
    assert!(sleep.proxy.resolved.is_empty());
}

/// The DNS proxy node mode runs in sleep's pod, here in-process: it shares sleep's view and
/// remembers the names sleep resolves; the upstream answers every query with `ip`.
async fn sleeps_dns_proxy(sleep: &ztunnel::Ztunnel, ip: IpAddr) -> DnsProxy {
    DnsProxy {
        state: sleep.proxy.state.clone(),
        upstreams: vec![upstream_answering(ip).await],
        netns: None,
        mark: None,
        namespace: Some("default".into()),
        domain: "cluster.local".into(),
        remember: Some(Remember {
            namespace: "default".into(),
            name: "sleep".into(),
            names: Arc::clone(&sleep.proxy.resolved),
        }),
    }
}
