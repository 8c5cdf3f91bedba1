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
    for (uid, ns, info, ip) in [
        ("uid-a", &a_ns, info("sleep", "default", "sleep"), &a_ip),
        ("uid-b", &b_ns, info("cart-1", "shop", "cart"), &b_ip),
    ] {
        agent
            .enroll(EnrolledPod {
                uid: uid.into(),
                info,
                netns: format!("/run/netns/{ns}").into(),
                ips: vec![ip.parse().unwrap()],
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

/// S15: a "node" namespace with two pods on veths, as a node's host network. The node agent
/// SNATs what the node itself sends to an enrolled pod to 169.254.7.127 and the pod lets that
/// in uncaptured: a probe-like connection from the node reaches a STRICT pod's application.
/// A pod that claims 169.254.7.127 as its source does not get through (the node drops what it
/// forwards with that source), and IPv6 is not redirected to ztunnel's IPv4-only listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_probes_reach_a_strict_pod_and_spoofed_probe_sources_do_not() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("ip").arg("-V").output().is_err()
        || Command::new("nft").arg("-v").output().is_err()
    {
        eprintln!("SKIPPED node_probes: needs root, `ip` and `nft`; scripts/test installs them");
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let o = (id % 250) as u8;
    let (node_ns, b_ns, s_ns) = (
        format!("zt-pn-{id}"),
        format!("zt-pb-{id}"),
        format!("zt-ps-{id}"),
    );
    // Namespaces only: their veths go with them.
    let mut lab = Node(Vec::new());
    for ns in [&node_ns, &b_ns, &s_ns] {
        lab.0.push((ns.clone(), String::new()));
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (b_ip, s_ip) = (format!("10.207.{o}.2"), format!("10.208.{o}.2"));
    let b_ip6 = format!("fd00:207:{o}::2");
    for (pod_ns, veth, net) in [(&b_ns, "ztpb", 207), (&s_ns, "ztps", 208)] {
        run(&[
            "ip", "-n", &node_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
            "netns", pod_ns,
        ]);
        let (host, pod) = (format!("10.{net}.{o}.1"), format!("10.{net}.{o}.2"));
        run(&[
            "ip",
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{host}/24"),
            "dev",
            veth,
        ]);
        run(&["ip", "-n", &node_ns, "link", "set", veth, "up"]);
        run(&[
            "ip",
            "-n",
            pod_ns,
            "addr",
            "add",
            &format!("{pod}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", pod_ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", pod_ns, "route", "add", "default", "via", &host]);
    }
    run(&[
        "ip",
        "-n",
        &node_ns,
        "addr",
        "add",
        &format!("fd00:207:{o}::1/64"),
        "dev",
        "ztpb",
        "nodad",
    ]);
    run(&[
        "ip",
        "-n",
        &b_ns,
        "addr",
        "add",
        &format!("{b_ip6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    // The node routes between its pods; the spoofing pod claims the probe address and gets
    // its replies (as a pod on the node's path could).
    netns(&node_ns)
        .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .unwrap();
    run(&[
        "ip",
        "-n",
        &s_ns,
        "addr",
        "add",
        "169.254.7.127/32",
        "dev",
        "eth0",
    ]);
    run(&[
        "ip",
        "-n",
        &node_ns,
        "route",
        "add",
        "169.254.7.127/32",
        "via",
        &s_ip,
    ]);

    // B's application, IPv4 and IPv6, answering every connection with its peer's address.
    for addr in [format!("{b_ip}:8080"), format!("[{b_ip6}]:8080")] {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = netns(&b_ns)
            .run(move || std::net::TcpListener::bind(addr))
            .unwrap();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let peer = s
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = s.write_all(peer.as_bytes());
            }
        });
    }
    mesh.write_config(&format!(
        r#"
workloads:
- {{uid: b, name: b, namespace: shop, serviceAccount: b, workloadIps: ["{b_ip}"], protocol: HBONE,
   authorizationPolicies: [istio-system/strict]}}
- {{uid: s, name: s, namespace: legacy, workloadIps: ["{s_ip}"], protocol: TCP}}
policies:
- {{name: strict, namespace: istio-system, scope: WorkloadSelector, action: Deny,
   rules: [[[{{notPrincipals: [!Presence []]}}]]]}}
"#
    ));
    let socket = mesh.dir.join("ztunnel.sock");
    // The agent with the node's probe SNAT in the node's namespace.
    let agent = Agent::for_node(Default::default(), netns(&node_ns)).unwrap();
    tokio::spawn(agent.clone().serve(Listener::bind(&socket).unwrap()));
    let mut s = ztunnel::Settings::defaults();
    s.proxy_mode = ztunnel::settings::ProxyMode::Shared;
    s.inpod_uds = socket;
    s.local_xds_path = Some(mesh.config.clone());
    s.ca_dir = Some(mesh.dir.join("ca"));
    s.bind_address = mesh.ip(7);
    s.socket_mark = 0x539;
    s.drain_timeout = Duration::from_secs(1);
    let zt = ztunnel::inpod::node::start_node(s, None).await.unwrap();
    agent
        .enroll(EnrolledPod {
            uid: "uid-b".into(),
            info: WorkloadInfo {
                name: "b".into(),
                namespace: "shop".into(),
                service_account: "b".into(),
            },
            netns: format!("/run/netns/{b_ns}").into(),
            ips: vec![b_ip.parse().unwrap()],
        })
        .unwrap();
    for _ in 0..250 {
        if agent.is_ready("uid-b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(agent.is_ready("uid-b"), "B captured");

    // What a client in `ns` reads from B's application (its address as B saw it).
    let ask = |ns: String, dst: String, bind: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            netns(&ns).run(move || {
                let dst: SocketAddr = dst.parse().unwrap();
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(dst),
                    socket2::Type::STREAM,
                    None,
                )?;
                if let Some(ip) = bind {
                    sock.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())?;
                }
                sock.connect_timeout(&dst.into(), Duration::from_secs(2))?;
                let mut s: std::net::TcpStream = sock.into();
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut seen = String::new();
                s.read_to_string(&mut seen)?;
                Ok(seen)
            })
        })
    };
    // A pod claiming the probe address: not let through uncaptured.
    let spoofed = ask(s_ns.clone(), format!("{b_ip}:8080"), Some("169.254.7.127"))
        .await
        .unwrap();
    assert!(
        !spoofed.as_ref().is_ok_and(|seen| !seen.is_empty()),
        "a pod spoofing 169.254.7.127 reached STRICT B's application uncaptured: {spoofed:?}"
    );
    // The node's own connection (a kubelet probe): SNATed, let in, answered by the app.
    let probe = ask(node_ns.clone(), format!("{b_ip}:8080"), None)
        .await
        .unwrap();
    assert_eq!(
        probe.as_deref().ok(),
        Some("169.254.7.127"),
        "a probe from the node reaches STRICT B's application as 169.254.7.127: {probe:?}"
    );
    // IPv6 is not redirected to listeners that do not exist.
    let v6 = ask(node_ns.clone(), format!("[{b_ip6}]:8080"), None)
        .await
        .unwrap();
    assert_eq!(
        v6.as_deref().ok(),
        Some(format!("fd00:207:{o}::1").as_str()),
        "IPv6 to B's application: {v6:?}"
    );

    // The SNAT follows the enrolled set, and goes with the agent.
    let listed = |what: &'static str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &node_ns, "nft", "list", "set", "ip"])
            .args([ztunnel::agent::host::TABLE, what])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(listed("pod_ips").contains(&b_ip), "{}", listed("pod_ips"));
    agent.unenroll("uid-b").unwrap();
    assert!(!listed("pod_ips").contains(&b_ip), "{}", listed("pod_ips"));
    agent.remove_host_rules().unwrap();
    let tables = Command::new("ip")
        .args(["netns", "exec", &node_ns, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(ztunnel::agent::host::TABLE),
        "the host rules are gone"
    );
    zt.shutdown().await;
    drop(lab);
}
