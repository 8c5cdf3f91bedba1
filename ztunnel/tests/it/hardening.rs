//! The process under pressure: the open-file limit raised at start in every mode (S17), HTTP
//! side doors that drop a client which never finishes its request headers (S12), and accept
//! loops that back off instead of spinning when descriptors run out (S11).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The child starts with RLIMIT_NOFILE lowered to `soft`:`hard`, as a shell with the common
/// `ulimit -n 1024` would start it.
fn with_nofile(cmd: &mut Command, soft: u64, hard: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// (soft, hard) "Max open files" of a running process.
fn nofile_of(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The child, killed when dropped; its log printed if the test fails.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: the node agent removes its host rules (the `ztunnel-host` tables in
        // this, the test's, network namespace) only on a graceful stop.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

fn start(mut cmd: Command, log: std::path::PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn ztunnel");
    Proc { child, log }
}

/// Waits until the process's soft limit is `want`; the limits seen last otherwise.
fn wait_for_soft_limit(p: &mut Proc, want: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        if let Some(status) = p.child.try_wait().unwrap() {
            return Err(format!("exited ({status}) with limits {seen:?}"));
        }
        seen = nofile_of(p.child.id());
        if seen.is_some_and(|(soft, _)| soft == want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("limits stayed {seen:?}"))
}

fn ztunnel(mesh: &Mesh, last: u8) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    cmd.env_clear()
        .env("LOCAL_XDS_PATH", &mesh.config)
        .env("CA_DIR", mesh.dir.join("ca"))
        .env("BIND_ADDRESS", mesh.ip(last).to_string())
        .env("SOCKET_MARK", "0")
        .env("RUST_LOG", "info");
    cmd
}

const CONFIG: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["{2}"], protocol: HBONE}
"#;

/// Started with soft 256 / hard 4096, each program (dedicated, shared, node agent) runs with
/// 4096 and says so in its log.
#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_one_in_every_mode() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);

    let mut dedicated = ztunnel(&mesh, 2);
    dedicated.env("PROXY_WORKLOAD_INFO", "default/sleep/sleep");
    with_nofile(&mut dedicated, 256, 4096);

    let mut shared = ztunnel(&mesh, 3);
    shared
        .env("PROXY_MODE", "shared")
        // Nobody listens there: the node-mode ztunnel keeps retrying, which is all this needs.
        .env("INPOD_UDS", mesh.dir.join("nobody.sock"));
    with_nofile(&mut shared, 256, 4096);

    let netns = mesh.dir.join("netns");
    std::fs::create_dir_all(&netns).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    agent
        .env_clear()
        .env("RUST_LOG", "info")
        .arg("node-agent")
        .arg("--node-name=n1")
        .arg(format!("--local-xds-path={}", mesh.config.display()))
        .arg(format!(
            "--zds-socket={}",
            mesh.dir.join("zds.sock").display()
        ))
        .arg(format!(
            "--cni-socket={}",
            mesh.dir.join("cni.sock").display()
        ))
        .arg(format!("--netns-dirs={}", netns.display()))
        .arg("--scan-proc=false")
        .arg("--dns-capture=false");
    with_nofile(&mut agent, 256, 4096);

    let mut failed = Vec::new();
    for (name, cmd) in [
        ("dedicated", dedicated),
        ("shared", shared),
        ("node-agent", agent),
    ] {
        let log = mesh.dir.join(format!("{name}.log"));
        let mut p = start(cmd, log.clone());
        if let Err(e) = wait_for_soft_limit(&mut p, 4096) {
            failed.push(format!("{name}: {e}"));
            continue;
        }
        assert_eq!(nofile_of(p.child.id()), Some((4096, 4096)), "{name}");
        // Logged once logging is up, right after the limit is raised.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("open-file limit") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !(text.contains("open-file limit") && text.contains("256") && text.contains("4096")) {
            failed.push(format!("{name}: no log line: {text}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A client that sends part of a request and then nothing is dropped after the header-read
/// timeout (2 s, as Istio's ztunnel), on each of the admin, metrics and readiness ports.
#[tokio::test]
async fn http_ports_drop_a_client_that_never_finishes_its_headers() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);
    let zt = mesh.ztunnel(2, "default/sleep/sleep").await;
    let ports = [
        zt.addresses.admin,
        zt.addresses.stats,
        zt.addresses.readiness,
    ];
    let mut clients = Vec::new();
    for addr in ports {
        let mut t = TcpStream::connect(addr).await.unwrap();
        t.write_all(b"GET /metrics HTTP/1.1\r\nhost: zt\r\n")
            .await
            .unwrap();
        clients.push((addr, t));
    }
    let start = Instant::now();
    for (addr, mut t) in clients {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match t.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 before closing is fine
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{addr}: a partial request still connected after {:?}",
            start.elapsed()
        );
    }
    let took = start.elapsed();
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert!(
        took > Duration::from_millis(1500),
        "closed before the timeout: {took:?}"
    );
    // A whole request is still served.
    let (status, _) = http(zt.addresses.readiness, "GET", "/healthz/ready").await;
    assert_eq!(status, 200);
    zt.shutdown().await;
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// With every descriptor in use, accepting fails (EMFILE) while connections wait in the
/// backlog; the loop must wait before trying again rather than spin on the error.
#[tokio::test]
async fn out_of_descriptors_the_http_accept_loops_back_off() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);
    let mut cmd = ztunnel(&mesh, 2);
    cmd.env("PROXY_WORKLOAD_INFO", "default/sleep/sleep");
    with_nofile(&mut cmd, 64, 64);
    let p = start(cmd, mesh.dir.join("ztunnel.log"));
    let stats: std::net::SocketAddr = (mesh.ip(2), 15020).into();
    drop(first_connection(stats).await);
    // More connections than the process has descriptors: the rest wait in the backlog.
    let (held, _) = flood_and_check_quiet(stats, p.child.id()).await;
    // The scenario happened: accepting failed for want of descriptors, and was logged (once
    // per interval, not once per failure).
    let log = std::fs::read_to_string(&p.log).unwrap();
    let failures = log.matches("accept failed").count();
    assert!(
        (1..=3).contains(&failures),
        "{failures} accept failures logged: {log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    drop(held);
    drop(p);
}

/// The first connection `addr` accepts, waiting up to 10 s for the process to listen.
async fn first_connection(addr: std::net::SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "ztunnel never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens 150 connections to `addr` (more than a 64-descriptor process can take), then checks
/// the process stays quiet (under 0.4 s of CPU in 1.5 s) while out of descriptors. Returns the
/// connections made and how many were reset while connecting (shed at once).
async fn flood_and_check_quiet(addr: std::net::SocketAddr, pid: u32) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::new();
    let mut reset = 0;
    for _ in 0..150 {
        match TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
            Err(e) => panic!("connecting to {addr}: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(400),
        "the process used {used:?} of CPU in 1.5 s while out of descriptors"
    );
    (held, reset)
}

/// S17: out of descriptors, the data-path listeners neither spin nor flood the log, and they
/// refuse new connections at once (accepted with a descriptor kept in reserve and reset) rather
/// than leave them hanging in the backlog; an established tunnel goes on.
#[tokio::test]
async fn out_of_descriptors_the_data_path_sheds_new_connections_and_keeps_established_ones() {
    let mesh = Mesh::new();
    mesh.write_config(CONFIG);
    let mut cmd = ztunnel(&mesh, 2);
    cmd.env("PROXY_WORKLOAD_INFO", "default/sleep/sleep")
        .env("UNSTABLE_ENABLE_SOCKS5", "true");
    with_nofile(&mut cmd, 64, 64);
    let p = start(cmd, mesh.dir.join("ztunnel.log"));
    let socks: std::net::SocketAddr = (mesh.ip(2), 15080).into();
    // A connection whose SOCKS5 greeting is answered: it is being served. (With 64
    // descriptors, one accepted while start-up still holds files may be shed: try again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut established = loop {
        let mut s = first_connection(socks).await;
        let mut reply = [0u8; 2];
        if s.write_all(&[5, 1, 0]).await.is_ok() && s.read_exact(&mut reply).await.is_ok() {
            assert_eq!(reply, [5, 0]);
            break s;
        }
        assert!(Instant::now() < deadline, "no SOCKS5 greeting was answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // More connections than the process has descriptors.
    let (mut held, reset) = flood_and_check_quiet(socks, p.child.id()).await;
    // Those beyond the limit were refused (reset or closed), not left waiting.
    let mut refused = reset;
    for s in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            refused += 1;
        }
    }
    assert!(
        refused >= 50,
        "only {refused} of 150 connections were refused"
    );
    let log = std::fs::read_to_string(&p.log).unwrap();
    let failures = log.matches("accept failed").count();
    assert!(
        (1..=3).contains(&failures),
        "{failures} accept failures logged: {log}"
    );
    // The established connection is still served: a CONNECT to a closed port is answered.
    established
        .write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 1])
        .await
        .unwrap();
    let mut answer = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), established.read_exact(&mut answer))
        .await
        .expect("the established connection was answered")
        .unwrap();
    assert_eq!(answer[0], 5, "{answer:?}");
    drop(held);
    drop(p);
}
