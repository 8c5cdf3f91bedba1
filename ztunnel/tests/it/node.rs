//! Node mode end to end, as root: two pods (network namespaces with veths to the host, as on a
//! node), one node-mode ztunnel, and the node agent enrolling both. A plain `connect()` from
//! inside pod A to pod B's application is captured by A's rules into A's 15001, carried over
//! HBONE to B's 15008 and delivered inside B, with both pods' identities. Un-enrolling A
//! removes its rules and its listeners; a plain connection from outside the mesh into B is
//! captured by B's inbound rule (15006) and arrives without an identity.
//!
//! Without root, `ip` or `nft`, the test says SKIPPED loudly and passes.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use meshcore::api::zds::WorkloadInfo;
use meshcore::zds::Listener;
use ztunnel::agent::server::{Agent, EnrolledPod};
use ztunnel::inpod::netns::Netns;

use crate::support::{run, Mesh};

/// Pod namespaces and host-side veths made by the test; removed on drop, also after a panic.
struct Node(Vec<(String, String)>);

impl Drop for Node {
    fn drop(&mut self) {
        for (ns, veth) in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
    }
}

/// A pod: a namespace with `eth0` (pod_ip/24) to a host veth (host_ip/24), default route via
/// the host.
fn pod(node: &mut Node, ns: &str, veth: &str, host_ip: &str, pod_ip: &str) {
    node.0.push((ns.to_owned(), veth.to_owned()));
    run(&["ip", "netns", "add", ns]);
    run(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    run(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", veth]);
    run(&["ip", "link", "set", veth, "up"]);
    // HBONE leaves from inside the source pod and crosses the host: forwarding on this veth
    // only (the host's global setting is left alone).
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{veth}/forwarding"), "1").unwrap();
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{pod_ip}/24"),
        "dev",
        "eth0",
    ]);
    run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    run(&["ip", "-n", ns, "route", "add", "default", "via", host_ip]);
}

fn netns(ns: &str) -> Netns {
    Netns::open(std::path::Path::new(&format!("/run/netns/{ns}"))).unwrap()
}

/// A plain client inside a pod: connect, send, read the echo.
fn echo_from(ns: &str, dst: SocketAddr, payload: &'static [u8]) -> std::io::Result<Vec<u8>> {
    netns(ns).run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(payload)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        Ok(back)
    })
}

fn metric(body: &str, name: &str, labels: &[&str]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_pods_talk_over_hbone_through_one_node_ztunnel() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("ip").arg("-V").output().is_err()
        || Command::new("nft").arg("-v").output().is_err()
    {
        eprintln!(
            "SKIPPED enrolled_pods_talk: needs root, `ip` and `nft`; scripts/test installs them"
        );
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let o = (id % 250) as u8;
    let (a_ip, b_ip) = (format!("10.204.{o}.2"), format!("10.205.{o}.2"));
    let (a_ns, b_ns) = (format!("zt-a-{id}"), format!("zt-b-{id}"));
    let mut node = Node(Vec::new());
    pod(
        &mut node,
        &a_ns,
        &format!("zta{id}"),
        &format!("10.204.{o}.1"),
        &a_ip,
    );
    pod(
        &mut node,
        &b_ns,
        &format!("ztb{id}"),
        &format!("10.205.{o}.1"),
        &b_ip,
    );

    // B's application: an echo server on B's address, inside B.
    let b_app: SocketAddr = format!("{b_ip}:8080").parse().unwrap();
    let listener = netns(&b_ns)
        .run(move || std::net::TcpListener::bind(b_app))
        .unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let _ = s.write_all(&buf);
            });
        }
    });

    mesh.write_config(&format!(
        r#"
workloads:
- {{uid: a, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{a_ip}"], protocol: HBONE}}
- {{uid: b, name: cart-1, namespace: shop, serviceAccount: cart, workloadIps: ["{b_ip}"], protocol: HBONE}}
"#
    ));
    let socket = mesh.dir.join("ztunnel.sock");
    let agent = Agent::new();
    tokio::spawn(agent.clone().serve(Listener::bind(&socket).unwrap()));
    let mut s = ztunnel::Settings::defaults();
    s.proxy_mode = ztunnel::settings::ProxyMode::Shared;
    s.inpod_uds = socket;
    s.local_xds_path = Some(mesh.config.clone());
    s.ca_dir = Some(mesh.dir.join("ca"));
    s.bind_address = mesh.ip(6);
    s.socket_mark = 0x539;
    s.drain_timeout = Duration::from_secs(1);
    let zt = ztunnel::inpod::node::start_node(s, None).await.unwrap();

    let info = |name: &str, ns: &str, sa: &str| WorkloadInfo {
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
    };
    for (uid, ns, info) in [
        ("uid-a", &a_ns, info("sleep", "default", "sleep")),
        ("uid-b", &b_ns, info("cart-1", "shop", "cart")),
    ] {
        agent
            .enroll(EnrolledPod {
                uid: uid.into(),
                info,
                netns: format!("/run/netns/{ns}").into(),
            })
            .unwrap();
    }
    // Ready: ztunnel acknowledged the pod and its rules are in.
    for _ in 0..250 {
        if agent.is_ready("uid-a") && agent.is_ready("uid-b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(zt.pods.uids(), ["uid-a", "uid-b"]);
    assert!(agent.is_ready("uid-a") && agent.is_ready("uid-b"));

    // A plain connect from A: captured, tunnelled, delivered inside B.
    let (ns, dst) = (a_ns.clone(), b_app);
    let back = tokio::task::spawn_blocking(move || echo_from(&ns, dst, b"hello over hbone"))
        .await
        .unwrap()
        .expect("echo through the mesh");
    assert_eq!(back, b"hello over hbone");
    let body = zt.metrics.render();
    let mtls = [
        "connection_security_policy=\"mutual_tls\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/cart\"",
    ];
    assert_eq!(
        metric(
            &body,
            "istio_tcp_connections_opened_total",
            &[&mtls[..], &["reporter=\"source\""]].concat()
        ),
        1,
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "istio_tcp_connections_opened_total",
            &[&mtls[..], &["reporter=\"destination\""]].concat()
        ),
        1,
        "{body}"
    );

    // Un-enrolling A: its rules go, its traffic leaves plain; B still captures inbound (15006),
    // and the connection arrives without an identity.
    agent.unenroll("uid-a").unwrap();
    for _ in 0..100 {
        if zt.pods.uids() == ["uid-b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(zt.pods.uids(), ["uid-b"]);
    assert!(!ztunnel::agent::rules::installed(&netns(&a_ns)));
    // A connection from outside the mesh (the host) to B's application is captured by B's
    // inbound rule into 15006 and delivered without an identity.
    let back = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect_timeout(&b_app, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"plain")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        Ok::<_, std::io::Error>(back)
    })
    .await
    .unwrap()
    .expect("plain echo, captured by B");
    assert_eq!(back, b"plain");
    let body = zt.metrics.render();
    assert_eq!(
        metric(
            &body,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"unknown\""
            ]
        ),
        1,
        "{body}"
    );
    zt.shutdown().await;
    drop(node);
}
