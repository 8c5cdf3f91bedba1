//! The binary under pressure: its open-file limit raised at start (S17), its HTTP port dropping
//! clients that never finish their headers (S12), backing off instead of spinning when
//! descriptors run out (S11), and serving `/debug/*` to loopback clients only unless
//! DEBUG_ALLOWED_NETWORKS says otherwise (S12).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// This module's corner of loopback: `127.66.<pid>.<n>`.
fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 66, (std::process::id() % 200) as u8 + 1, n])
}

/// The child, killed when dropped; its log printed if the test fails.
struct Istiod {
    child: Child,
    log: PathBuf,
}

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

/// A scratch directory with a one-namespace manifest directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("istiod-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("manifests").join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    dir
}

/// `istiod-lite --config-dir DIR/manifests` with its gRPC port on `ip(grpc)`, HTTP on `http`,
/// started with RLIMIT_NOFILE `nofile` (soft, hard) when given.
fn start(
    dir: &Path,
    grpc: u8,
    http: SocketAddr,
    env: &[(&str, &str)],
    nofile: Option<(u64, u64)>,
) -> Istiod {
    let log = dir.join(format!("istiod-{grpc}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_istiod-lite"));
    cmd.env_clear()
        .env("STATE_DIR", dir.join("state"))
        .env("GRPC_ADDRESS", format!("{}:15012", ip(grpc)))
        .env("HTTP_ADDRESS", http.to_string())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .args(["--config-dir".as_ref(), dir.join("manifests").as_os_str()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null());
    if let Some((soft, hard)) = nofile {
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
            });
        }
    }
    let child = cmd.spawn().expect("istiod-lite binary");
    let mut p = Istiod { child, log };
    let ready_at = match http.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), http.port()),
        _ => http,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(ready_at, "/ready").is_some_and(|(status, _)| status == 200) {
            return p;
        }
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("istiod-lite exited: {status}");
        }
        assert!(Instant::now() < deadline, "istiod-lite not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GETs `path` from `to`: status and body.
fn get(to: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut t = TcpStream::connect(to).ok()?;
    write!(
        t,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    t.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

/// (soft, hard) "Max open files" of a running process.
fn nofile_of(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An IPv4 address of this host that is not loopback (eth0's, say), if it has one.
fn non_loopback_address() -> Option<Ipv4Addr> {
    let mut found = None;
    // SAFETY: getifaddrs fills a list we only read and then free.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            let up = (*cur).ifa_flags & libc::IFF_UP as libc::c_uint != 0;
            if up && !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() && found.is_none() {
                    found = Some(ip);
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

/// Started with soft 256 / hard 4096, istiod-lite runs with 4096 and logs both.
#[test]
fn the_open_file_soft_limit_is_raised_to_the_hard_one() {
    let dir = scratch("nofile");
    let http = SocketAddr::new(ip(2), 15014);
    let p = start(&dir, 1, http, &[], Some((256, 4096)));
    assert_eq!(nofile_of(p.child.id()), Some((4096, 4096)));
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log.contains("open-file limit") && log.contains("256") && log.contains("4096"),
        "{log}"
    );
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client that sends part of a request and then nothing is dropped after the header-read
/// timeout (2 s); a whole request is still served.
#[test]
fn a_client_that_never_finishes_its_headers_is_dropped() {
    let dir = scratch("slow");
    let http = SocketAddr::new(ip(4), 15014);
    let _p = start(&dir, 3, http, &[], None);
    let mut slow = TcpStream::connect(http).unwrap();
    slow.write_all(b"GET /debug/clients HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let closed = loop {
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // a 408 before closing is fine
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break false,
            Err(_) => break true,
        }
    };
    let took = start.elapsed();
    assert!(
        closed && took < Duration::from_millis(3500),
        "a partial request still connected after {took:?}"
    );
    assert!(get(http, "/ready").is_some_and(|(s, _)| s == 200));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// With every descriptor in use, accepting fails (EMFILE) while connections wait in the
/// backlog: the loop waits before trying again instead of spinning on the error.
#[test]
fn out_of_descriptors_the_http_accept_loop_backs_off() {
    let dir = scratch("emfile");
    let http = SocketAddr::new(ip(6), 15014);
    let p = start(&dir, 5, http, &[], Some((64, 64)));
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(TcpStream::connect(http).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time(p.child.id());
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_time(p.child.id()) - before;
    assert!(
        used < Duration::from_millis(400),
        "istiod-lite used {used:?} of CPU in 1.5 s while out of descriptors"
    );
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `/debug/*` (connected clients, every resource, the source's status) answers loopback
/// clients only; DEBUG_ALLOWED_NETWORKS admits others. `/ready` and `/metrics` answer anyone.
#[test]
fn debug_endpoints_answer_loopback_clients_only() {
    let dir = scratch("debug");
    let port = free_port();
    let http = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    let loopback = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    let p = start(&dir, 7, http, &[], None);
    for path in ["/debug/clients", "/debug/resources", "/debug/config"] {
        let (status, body) = get(loopback, path).unwrap();
        assert_eq!(status, 200, "{path} from loopback: {body}");
    }
    let Some(external) = non_loopback_address() else {
        eprintln!("SKIPPED the non-loopback half: this host has no non-loopback IPv4 address");
        return;
    };
    let outside = SocketAddr::new(external.into(), port);
    for path in ["/debug/clients", "/debug/resources", "/debug/config"] {
        let (status, body) = get(outside, path).unwrap();
        assert_eq!(status, 403, "{path} from {external}: {body}");
        assert!(body.contains("DEBUG_ALLOWED_NETWORKS"), "{body}");
    }
    for path in ["/ready", "/metrics"] {
        let (status, _) = get(outside, path).unwrap();
        assert_eq!(status, 200, "{path} from {external}");
    }
    drop(p);

    // Allowed explicitly.
    let port = free_port();
    let http = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    let allowed = format!("{external}/32");
    let _p = start(&dir, 8, http, &[("DEBUG_ALLOWED_NETWORKS", &allowed)], None);
    let (status, body) = get(SocketAddr::new(external.into(), port), "/debug/clients").unwrap();
    assert_eq!(status, 200, "{body}");
    std::fs::remove_dir_all(&dir).unwrap();
}
