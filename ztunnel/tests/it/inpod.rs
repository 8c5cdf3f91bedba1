//! Node mode, inbound, as root: a pod network namespace (veth to the host) is handed to a
//! `PROXY_MODE=shared` ztunnel over the ZDS socket by a node agent (this test plays the agent
//! with `meshcore::zds`). ztunnel opens the pod's listeners inside the namespace and serves them with
//! the pod's identity: a dedicated ztunnel on the host tunnels over HBONE to the pod's 15008, and
//! ztunnel delivers to the application from inside the pod. `del` closes the pod's listeners.
//!
//! Without root or `ip`, the test says SKIPPED loudly and passes.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;

use meshcore::api::zds::WorkloadInfo;
use meshcore::zds::{Listener, Request};

use crate::support::{echo_roundtrip, run, socks, socks5, Mesh};

struct PodNetns(String, String);

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        let _ = Command::new("ip").args(["link", "del", &self.1]).output();
    }
}

/// Runs `f` on a thread inside the named network namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns =
        ztunnel::inpod::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{ns}")))
            .expect("netns file");
    netns.run(move || Ok(f())).expect("netns thread")
}

#[tokio::test]
async fn agent_hands_a_pod_and_its_inbound_is_served_inside_the_pod() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("ip").arg("-V").output().is_err()
        || Command::new("nft").arg("-v").output().is_err()
    {
        eprintln!(
            "SKIPPED agent_hands_a_pod: needs root, `ip` and `nft`; scripts/test installs them"
        );
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let octet = (id % 250) as u8;
    let (host_ip, pod_ip) = (format!("10.203.{octet}.1"), format!("10.203.{octet}.2"));
    let lab = PodNetns(format!("zt-pod-{id}"), format!("ztp{id}"));
    run(&["ip", "netns", "add", &lab.0]);
    run(&[
        "ip", "link", "add", &lab.1, "type", "veth", "peer", "name", "eth0", "netns", &lab.0,
    ]);
    run(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &lab.1]);
    run(&["ip", "link", "set", &lab.1, "up"]);
    let pod_cidr = format!("{pod_ip}/24");
    run(&["ip", "-n", &lab.0, "addr", "add", &pod_cidr, "dev", "eth0"]);
    run(&["ip", "-n", &lab.0, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", &lab.0, "link", "set", "lo", "up"]);

    // The application, inside the pod, on the pod's address.
    let pod_app: SocketAddr = format!("{pod_ip}:8080").parse().unwrap();
    let app = in_netns(&lab.0, move || {
        std::net::TcpListener::bind(pod_app).unwrap()
    });
    app.set_nonblocking(true).unwrap();
    let app = tokio::net::TcpListener::from_std(app).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    mesh.write_config(&format!(
        r#"
workloads:
- {{name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{{2}}"], protocol: HBONE}}
- {{name: cart-1, namespace: shop, serviceAccount: cart, workloadIps: ["{pod_ip}"], protocol: HBONE}}
"#
    ));
    // The node agent's socket, and a node-mode ztunnel that connects to it.
    let socket = mesh.dir.join("ztunnel.sock");
    let agent = Listener::bind(&socket).unwrap();
    let mut s = ztunnel::Settings::defaults();
    s.proxy_mode = ztunnel::settings::ProxyMode::Shared;
    s.inpod_uds = socket;
    s.local_xds_path = Some(mesh.config.clone());
    s.ca_dir = Some(mesh.dir.join("ca"));
    s.bind_address = mesh.ip(5);
    s.socket_mark = 0x539;
    s.drain_timeout = Duration::from_secs(1);
    let node = ztunnel::inpod::node::start_node(s, None).await.unwrap();
    let pods = node.pods.clone();
    let conn = agent.accept().await.unwrap();
    conn.expect_hello().await.unwrap();
    let netns: OwnedFd = std::fs::File::open(format!("/run/netns/{}", lab.0))
        .unwrap()
        .into();
    let add = Request::Add {
        uid: "uid-cart-1".into(),
        info: Some(WorkloadInfo {
            name: "cart-1".into(),
            namespace: "shop".into(),
            service_account: "cart".into(),
        }),
        netns,
    };
    assert_eq!(conn.request(add).await.unwrap(), Ok(()));
    assert_eq!(conn.request(Request::SnapshotSent).await.unwrap(), Ok(()));
    let proxy = pods.proxy("uid-cart-1").expect("pod served");
    assert_eq!(
        proxy.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );

    // The agent's rules: ztunnel connects to the application from the client's address, and
    // the rules' mark routing brings the application's replies back to it.
    let ns =
        ztunnel::inpod::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{}", lab.0)))
            .unwrap();
    ztunnel::agent::rules::install(&ns, Default::default()).expect("rules install");
    // A client ztunnel on the host tunnels to the pod over HBONE; the pod's ztunnel delivers
    // from inside the pod.
    let mut s = ztunnel::Settings::defaults();
    s.proxy_workload_info = Some("default/sleep/sleep".parse().unwrap());
    s.local_xds_path = Some(mesh.config.clone());
    s.ca_dir = Some(mesh.dir.join("ca"));
    s.bind_address = mesh.ip(2);
    s.bind_outbound = false;
    s.socket_mark = 0;
    s.enable_socks5 = true;
    let client = ztunnel::start(s, None).await.unwrap();
    let stream = socks5(socks(&client), pod_app)
        .await
        .expect("tunnel to the pod opens");
    echo_roundtrip(stream, 1 << 20, 11).await;
    let delivered = node.metrics.render();
    assert!(
        delivered.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\""),
        "the pod's ztunnel saw the client's identity:\n{delivered}"
    );

    let hbone: SocketAddr = SocketAddr::new(pod_ip.parse::<IpAddr>().unwrap(), 15008);
    assert!(tokio::net::TcpStream::connect(hbone).await.is_ok());

    // The node's admin endpoint lists the pod while it is served.
    let (status, dump) = crate::support::http(node.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    assert!(dump.contains("\"uid\": \"uid-cart-1\""), "{dump}");
    assert!(
        dump.contains("spiffe://cluster.local/ns/shop/sa/cart"),
        "{dump}"
    );

    // del closes the pod's listeners.
    assert_eq!(
        conn.request(Request::Del {
            uid: "uid-cart-1".into()
        })
        .await
        .unwrap(),
        Ok(())
    );
    assert!(pods.proxy("uid-cart-1").is_none());
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(hbone).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the pod's HBONE listener closed after del");
    client.shutdown().await;
    node.shutdown().await;
}

#[test]
fn agent_rules_install_idempotently_and_remove_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("ip").arg("-V").output().is_err()
        || Command::new("nft").arg("-v").output().is_err()
    {
        eprintln!("SKIPPED agent_rules: needs root, `ip` and `nft`; scripts/test installs them");
        return;
    }
    use ztunnel::agent::rules;
    let id = std::process::id();
    let lab = PodNetns(format!("zt-rules-{id}"), format!("ztr{id}"));
    run(&["ip", "netns", "add", &lab.0]);
    let netns =
        ztunnel::inpod::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{}", lab.0)))
            .unwrap();
    assert!(!rules::installed(&netns));
    rules::install(&netns, Default::default()).expect("rules install");
    rules::install(&netns, Default::default()).expect("installing again replaces them");
    assert!(rules::installed(&netns));
    let listed = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.0,
            "nft",
            "list",
            "table",
            "inet",
            rules::TABLE,
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.matches("redirect to :15001").count(), 1, "{listed}");
    assert!(listed.contains("redirect to :15006"), "{listed}");
    let ip_rules = Command::new("ip")
        .args(["-n", &lab.0, "rule", "show"])
        .output()
        .unwrap();
    let ip_rules = String::from_utf8_lossy(&ip_rules.stdout);
    assert_eq!(ip_rules.matches("lookup 100").count(), 1, "{ip_rules}");
    // Nothing leaks into the host's namespace.
    let host = Command::new("nft")
        .args(["list", "table", "inet", rules::TABLE])
        .output()
        .unwrap();
    assert!(!host.status.success(), "the table is in the pod only");

    rules::remove(&netns).expect("rules removed");
    assert!(!rules::installed(&netns));
    rules::remove(&netns).expect("removing twice is fine");
}

/// The pod's socket thread keeps IPv4 TCP sockets ready: after the first request they are
/// handed out without a round trip, refilled in the background, and every one belongs to the
/// pod's namespace (it can bind an address only that namespace has).
#[test]
fn ready_sockets_are_made_inside_the_pod() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED ready_sockets: needs root and `ip`; scripts/test installs them");
        return;
    }
    use socket2::{Domain, Protocol, Type};
    use ztunnel::inpod::netns::READY_SOCKETS;
    let id = std::process::id();
    let lab = PodNetns(format!("zt-ready-{id}"), format!("ztr{id}"));
    run(&["ip", "netns", "add", &lab.0]);
    run(&["ip", "-n", &lab.0, "link", "set", "lo", "up"]);
    let only_there: std::net::SocketAddr = "10.204.7.9:0".parse().unwrap();
    run(&[
        "ip",
        "-n",
        &lab.0,
        "addr",
        "add",
        "10.204.7.9/32",
        "dev",
        "lo",
    ]);
    let netns =
        ztunnel::inpod::netns::Netns::open(std::path::Path::new(&format!("/run/netns/{}", lab.0)))
            .unwrap();
    let tcp = || {
        netns
            .socket(Domain::IPV4, Type::STREAM, Protocol::TCP)
            .unwrap()
    };
    tcp()
        .bind(&only_there.into())
        .expect("first socket in the pod");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while netns.ready_sockets() < READY_SOCKETS {
        assert!(std::time::Instant::now() < deadline, "never filled");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for _ in 0..3 * READY_SOCKETS {
        tcp()
            .bind(&only_there.into())
            .expect("a ready socket is in the pod");
    }
    // Other kinds still come from the thread directly.
    netns
        .socket(Domain::IPV6, Type::STREAM, Protocol::TCP)
        .expect("IPv6 socket");
}
