//! Transparent capture, as root: two network namespaces joined by a veth pair, nftables in the
//! client's namespace redirecting its outbound TCP to ztunnel's 15001 (ztunnel's own sockets
//! carry mark 0x539 and pass), and in the server's namespace redirecting inbound TCP (except
//! 15008) to 15006. A plain `connect()` from the client is carried over HBONE; a plaintext
//! connection into the server is held to the policies (STRICT refuses it); a captured
//! connection the client's egress policy refuses is reset by the client's own ztunnel.
//!
//! Without root, or without `ip`/`nft`, the test says SKIPPED loudly and passes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{run, Mesh};

const CLIENT_IP: &str = "10.201.0.1";
const SERVER_IP: &str = "10.201.0.2";

pub(crate) fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok() || Command::new(tool).arg("help").output().is_ok()
}

/// Network namespaces and processes made by a test; removed on drop, also after a panic.
pub(crate) struct Lab {
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread inside the named network namespace (sockets it creates live there).
pub(crate) fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("netns file");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP connection that bypasses the pod's capture (ztunnel's mark), as kubelet probes and
/// scrapers outside the pod do.
pub(crate) fn connect_uncaptured(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_mark(0x539)?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(1))?;
    Ok(sock.into())
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = connect_uncaptured(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: z\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).ok()?;
    Some(out)
}

pub(crate) fn wait_ready(ns: &str, ip: &str) {
    let addr: SocketAddr = format!("{ip}:15021").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = in_netns(ns, move || http_get(addr, "/healthz/ready"));
        if ok.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ztunnel in {ns} never became ready");
}

pub(crate) fn metric_line_count(body: &str, name: &str, labels: &[&str]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|kv| l.contains(kv)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[test]
fn captured_connect_is_tunnelled_and_plaintext_inbound_is_held_to_policy() {
    if unsafe { libc::geteuid() } != 0 || !have("ip") || !have("nft") {
        eprintln!("SKIPPED captured_connect_is_tunnelled: needs root plus `ip` (iproute2) and `nft` (nftables); scripts/test installs them");
        return;
    }
    let mesh = Mesh::new();
    let id = std::process::id();
    let (c, s) = (format!("zt-cli-{id}"), format!("zt-srv-{id}"));
    let mut lab = Lab {
        namespaces: vec![c.clone(), s.clone()],
        children: Vec::new(),
    };
    let (vc, vs) = (format!("ztc{id}"), format!("zts{id}"));
    run(&["ip", "netns", "add", &c]);
    run(&["ip", "netns", "add", &s]);
    run(&[
        "ip", "link", "add", &vc, "netns", &c, "type", "veth", "peer", "name", &vs, "netns", &s,
    ]);
    for (ns, dev, ip) in [(&c, &vc, CLIENT_IP), (&s, &vs, SERVER_IP)] {
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // Both pods get the same rules: outbound TCP not marked by ztunnel → 15001; inbound TCP
    // from outside, except HBONE → 15006.
    for ns in [&c, &s] {
        run(&["ip", "netns", "exec", ns, "nft", "add table ip ztunnel; \
            add chain ip ztunnel output { type nat hook output priority -100; }; \
            add rule ip ztunnel output meta l4proto tcp meta mark != 0x539 ip daddr != 127.0.0.0/8 redirect to :15001; \
            add chain ip ztunnel prerouting { type nat hook prerouting priority -100; }; \
            add rule ip ztunnel prerouting iifname != lo meta l4proto tcp tcp dport != 15008 redirect to :15006"]);
    }

    mesh.write_config(&format!(
        r#"
workloads:
- {{name: client, namespace: default, serviceAccount: client, workloadIps: [{CLIENT_IP}], protocol: HBONE}}
- {{name: server, namespace: default, serviceAccount: server, workloadIps: [{SERVER_IP}], protocol: HBONE,
   authorizationPolicies: [istio-system/strict]}}
policies:
- {{name: strict, namespace: istio-system, scope: WorkloadSelector, action: Deny,
   rules: [[[{{notPrincipals: [!Presence []]}}]]]}}
egressPolicies:
- {{name: no-9090, namespace: default, workloads: [default/client], action: Deny, rules: [{{ports: [{{port: 9090}}]}}]}}
"#
    ));
    let log_dir = mesh.dir.clone();
    let spawn = |ns: &str, workload: &str, bind: &str, log: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ztunnel")])
            .env("PROXY_WORKLOAD_INFO", workload)
            .env("LOCAL_XDS_PATH", &mesh.config)
            .env("CA_DIR", mesh.dir.join("ca"))
            .env("BIND_ADDRESS", bind)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(log_dir.join(log)).unwrap())
            .spawn()
            .expect("ztunnel in netns")
    };
    lab.children
        .push(spawn(&s, "default/server/server", SERVER_IP, "server.log"));
    wait_ready(&s, SERVER_IP);
    lab.children
        .push(spawn(&c, "default/client/client", "0.0.0.0", "client.log"));
    wait_ready(&c, "127.0.0.1");

    // The application: an echo server that prefixes what it returns with the peer it saw.
    let listener = in_netns(&s, || TcpListener::bind((SERVER_IP, 8080)).unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let peer = conn.peer_addr().unwrap().ip().to_string();
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).unwrap_or(0);
                let _ = conn.write_all(format!("{peer}|").as_bytes());
                let _ = conn.write_all(&buf[..n]);
            });
        }
    });

    // A plain connect() from the client pod to the server's address.
    let reply = in_netns(&c, || {
        let mut tcp = TcpStream::connect((SERVER_IP, 8080)).expect("connect from client pod");
        tcp.write_all(b"hello").unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        out
    });
    // The server application was reached by the server's ztunnel (its own address), not the client.
    assert_eq!(
        reply,
        format!("{SERVER_IP}|hello"),
        "logs in {}",
        log_dir.display()
    );

    let stats: SocketAddr = format!("{SERVER_IP}:15020").parse().unwrap();
    let tunnelled = [
        "reporter=\"destination\"",
        "connection_security_policy=\"mutual_tls\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
    ];
    // Bytes are counted when the server side has closed too; poll briefly for that.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = in_netns(&s, move || http_get(stats, "/metrics")).unwrap();
        if metric_line_count(&metrics, "istio_tcp_received_bytes_total", &tunnelled) == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric_line_count(&metrics, "istio_tcp_connections_opened_total", &tunnelled),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_line_count(&metrics, "istio_tcp_received_bytes_total", &tunnelled),
        5,
        "{metrics}"
    );

    // Plaintext into the server pod, bypassing the client's capture with ztunnel's mark: it is
    // redirected to 15006, has no identity, and STRICT (deny without principal) refuses it.
    let refused = in_netns(&c, || {
        let mut tcp = connect_uncaptured(SocketAddr::from(([10, 201, 0, 2], 8080))).unwrap();
        let _ = tcp.write_all(b"plain");
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        out
    });
    assert!(
        refused.is_empty(),
        "plaintext reached the application: {:?}",
        String::from_utf8_lossy(&refused)
    );
    let metrics = in_netns(&s, move || http_get(stats, "/metrics")).unwrap();
    let denied = [
        "response_flags=\"DENY\"",
        "connection_security_policy=\"unknown\"",
    ];
    assert_eq!(
        metric_line_count(&metrics, "istio_tcp_connections_failed_total", &denied),
        1,
        "{metrics}"
    );

    // The client's egress policy refuses 9090: its own ztunnel resets the captured connection
    // (ECONNRESET, not a clean close) before anything reaches the server's node. The reset may
    // reach the client before its write (the write then reports it and the read sees EOF) or
    // after (the read reports it): either way one of them must say ConnectionReset.
    let (wrote, read) = in_netns(&c, || {
        let mut tcp = TcpStream::connect((SERVER_IP, 9090)).expect("captured connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let wrote = tcp.write_all(b"x").map_err(|e| e.kind());
        let mut out = Vec::new();
        (wrote, tcp.read_to_end(&mut out).map_err(|e| e.kind()))
    });
    let reset = std::io::ErrorKind::ConnectionReset;
    assert!(
        wrote == Err(reset) || read == Err(reset),
        "expected a reset, got write {wrote:?} and read {read:?}"
    );
    let client_stats: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let metrics = in_netns(&c, move || http_get(client_stats, "/metrics")).unwrap();
    assert_eq!(
        metric_line_count(
            &metrics,
            "ztunnel_egress_denied_total",
            &["policy=\"default/no-9090\"", "source_workload=\"client\""]
        ),
        1,
        "{metrics}"
    );
}
