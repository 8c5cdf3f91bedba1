//! ztunnel never relays a connection into itself (issue 14, S7), tested under NAT as root: a
//! network namespace of the test's own with two more local addresses, the usual capture rule
//! (outbound TCP not marked by ztunnel → 15001), and a ztunnel bound to 0.0.0.0 in it.
//!
//! - A connection to ztunnel's capture port on another local address is captured, and
//!   SO_ORIGINAL_DST names ztunnel's own listener: it must be refused, not dialled (which
//!   reaches ztunnel's 0.0.0.0:15001 again, and again).
//! - A DNAT rule that maps a local address and port onto ztunnel's 15001 for every
//!   connection, ztunnel's marked ones included: dialling the original destination lands on
//!   ztunnel again, which must notice its own connection and refuse it.
//!
//! Without root, or without `ip`/`nft`, the tests say SKIPPED loudly and pass.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::capture::{have, http_get, in_netns, metric_line_count, wait_ready, Lab};
use crate::support::{run, Mesh};

/// One namespace with ztunnel, its workload on `<net>.1` and two more local addresses.
struct Pod {
    _lab: Lab,
    ns: String,
    log: std::path::PathBuf,
    _mesh: Mesh,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 || !have("ip") || !have("nft") {
        eprintln!("SKIPPED {test}: needs root plus `ip` (iproute2) and `nft` (nftables); scripts/test installs them");
        return true;
    }
    false
}

/// `extra_rules` go before the capture rule in the output NAT chain.
fn pod(name: &str, net: &str, extra_rules: &str) -> Pod {
    let mesh = Mesh::new();
    let ns = format!("zt-{name}-{}", std::process::id());
    let mut lab = Lab {
        namespaces: vec![ns.clone()],
        children: Vec::new(),
    };
    run(&["ip", "netns", "add", &ns]);
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    for last in 1..=3 {
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{net}.{last}/32"),
            "dev",
            "lo",
        ]);
    }
    run(&["ip", "netns", "exec", &ns, "nft", &format!("add table ip ztunnel; \
        add chain ip ztunnel output {{ type nat hook output priority -100; }}; \
        {extra_rules} \
        add rule ip ztunnel output meta l4proto tcp meta mark != 0x539 ip daddr != 127.0.0.0/8 redirect to :15001")]);
    mesh.write_config(&format!(
        "workloads:\n- {{name: client, namespace: default, serviceAccount: client, workloadIps: [{net}.1], protocol: HBONE}}\n"
    ));
    let log = mesh.dir.join("ztunnel.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_ztunnel")])
        .env("PROXY_WORKLOAD_INFO", "default/client/client")
        .env("LOCAL_XDS_PATH", &mesh.config)
        .env("CA_DIR", mesh.dir.join("ca"))
        .env("BIND_ADDRESS", "0.0.0.0")
        .env("RUST_LOG", "info")
        .stdout(File::create(&log).unwrap())
        .stderr(Stdio::null());
    // A loop into itself runs until descriptors run out: keep that a small number.
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 512,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    lab.children.push(cmd.spawn().expect("ztunnel in netns"));
    wait_ready(&ns, "127.0.0.1");
    Pod {
        _lab: lab,
        ns,
        log,
        _mesh: mesh,
    }
}

/// Connects from inside the pod (captured), sends a line, and reads until ztunnel closes or
/// `within` passes. Returns how long the connection lived, or None if it was still open.
fn call(ns: &str, dst: SocketAddr, within: Duration) -> Option<Duration> {
    in_netns(ns, move || {
        let started = Instant::now();
        let mut tcp = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
            Ok(tcp) => tcp,
            Err(_) => return Some(started.elapsed()),
        };
        tcp.set_read_timeout(Some(within)).unwrap();
        let _ = tcp.write_all(b"hello\n");
        let mut buf = [0u8; 64];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return Some(started.elapsed()),
            }
        }
    })
}

fn metrics(ns: &str) -> String {
    let stats: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(body) = in_netns(ns, move || http_get(stats, "/metrics")) {
            return body;
        }
        assert!(Instant::now() < deadline, "no metrics from ztunnel in {ns}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many connections ztunnel opened as the source, and how many it refused.
fn opened_and_failed(ns: &str) -> (u64, u64) {
    let body = metrics(ns);
    let src = ["reporter=\"source\""];
    (
        metric_line_count(&body, "istio_tcp_connections_opened_total", &src),
        metric_line_count(&body, "istio_tcp_connections_failed_total", &src),
    )
}

/// ztunnel's log lines saying why it refused.
fn refused_lines(p: &Pod, why: &str) -> usize {
    std::fs::read_to_string(&p.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("refused") && l.contains(why))
        .count()
}

#[test]
fn a_captured_connection_to_ztunnels_own_port_on_another_local_address_is_refused() {
    if skip("a_captured_connection_to_ztunnels_own_port_on_another_local_address_is_refused") {
        return;
    }
    let p = pod("own", "10.202.0", "");
    // .2 is a local address of ztunnel's namespace, but neither its bind address nor the
    // served workload's: only the port says it is ztunnel.
    for port in [15001, 15006, 15008] {
        let dst: SocketAddr = format!("10.202.0.2:{port}").parse().unwrap();
        let lived = call(&p.ns, dst, Duration::from_secs(3));
        let (opened, failed) = opened_and_failed(&p.ns);
        assert_eq!(
            opened, 0,
            "{dst}: ztunnel relayed the connection into itself {opened} times (closed after {lived:?})"
        );
        assert!(lived.is_some(), "{dst}: not refused within 3s");
        assert!(failed >= 1, "{dst}: the refusal was not counted");
    }
    assert!(
        refused_lines(&p, "is ztunnel's own listener") >= 3,
        "no log line names the refusal"
    );
}

#[test]
fn a_destination_that_nat_maps_onto_ztunnel_itself_is_refused() {
    if skip("a_destination_that_nat_maps_onto_ztunnel_itself_is_refused") {
        return;
    }
    // Every connection to .3:7777, ztunnel's marked ones too, lands on ztunnel's 15001.
    let p = pod(
        "nat",
        "10.203.0",
        "add rule ip ztunnel output ip daddr 10.203.0.3 tcp dport 7777 dnat to 10.203.0.1:15001;",
    );
    let dst: SocketAddr = "10.203.0.3:7777".parse().unwrap();
    let lived = call(&p.ns, dst, Duration::from_secs(3));
    let (opened, failed) = opened_and_failed(&p.ns);
    // The first hop is dialled (nothing says yet that .3:7777 is ztunnel); its connection
    // arriving back on 15001 is recognised and refused, so nothing goes further.
    assert!(
        opened <= 1,
        "ztunnel relayed the connection into itself {opened} times (closed after {lived:?})"
    );
    assert!(lived.is_some(), "not refused within 3s");
    assert!(failed >= 1, "the refusal was not counted");
    assert!(
        refused_lines(&p, "leads back to ztunnel's own capture port") >= 1,
        "no log line names the refusal"
    );
}
