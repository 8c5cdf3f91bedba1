//! Test harness: ztunnels started in-process through the same `ztunnel::start` the binary
//! uses, each on its own 127.x.y.z address with Istio's ports, sharing one CA directory and
//! one local config file per test; echo servers as workloads; a SOCKS5 client; a metrics
//! scraper.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztunnel::{Settings, Ztunnel};

static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

/// One test's private corner of loopback, config file and CA.
pub struct Mesh {
    pub dir: PathBuf,
    pub config: PathBuf,
    prefix: [u8; 3],
    /// Held while the test runs: `127.a.b.254:1` bound marks the corner as taken, so a test in
    /// another process (nextest runs one per process) picks another.
    _claim: std::net::TcpListener,
}

/// A free `127.a.b.0/24`: starting from one derived from the process id, the first whose claim
/// address binds.
fn claim_prefix() -> ([u8; 3], std::net::TcpListener) {
    let start = std::process::id() % 200;
    for _ in 0..2000 {
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed);
        let prefix = [127, 40 + (n % 10) as u8, ((start + n / 10) % 200) as u8 + 1];
        let [a, b, c] = prefix;
        if let Ok(claim) = std::net::TcpListener::bind((std::net::Ipv4Addr::new(a, b, c, 254), 1)) {
            return (prefix, claim);
        }
    }
    panic!("no free 127.a.b.0/24 corner of loopback for a test mesh");
}

impl Mesh {
    pub fn new() -> Self {
        let (prefix, claim) = claim_prefix();
        let dir = std::env::temp_dir().join(format!(
            "zt-it-{}-{}-{}",
            std::process::id(),
            prefix[1],
            prefix[2]
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, "").unwrap();
        Self {
            dir,
            config,
            prefix,
            _claim: claim,
        }
    }

    /// The test's address `127.a.b.<last>`.
    pub fn ip(&self, last: u8) -> IpAddr {
        let [a, b, c] = self.prefix;
        IpAddr::from([a, b, c, last])
    }

    /// Substitutes `{N}` in the YAML with `ip(N)`, then writes the config file atomically.
    pub fn write_config(&self, yaml: &str) {
        let mut text = yaml.to_owned();
        for last in 1..=254u8 {
            let pat = format!("{{{last}}}");
            if text.contains(&pat) {
                text = text.replace(&pat, &self.ip(last).to_string());
            }
        }
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// A ztunnel serving `namespace/name/serviceaccount` on `ip(last)`.
    pub async fn ztunnel(&self, last: u8, workload: &str) -> Ztunnel {
        let mut s = Settings::defaults();
        s.proxy_workload_info = Some(workload.parse().unwrap());
        s.local_xds_path = Some(self.config.clone());
        s.ca_dir = Some(self.dir.join("ca"));
        s.bind_address = self.ip(last);
        s.config_poll_interval = Duration::from_millis(50);
        s.drain_timeout = Duration::from_secs(2);
        s.socket_mark = 0;
        // The tests' clients speak SOCKS5 to their ztunnel.
        s.enable_socks5 = true;
        ztunnel::start(s, None).await.expect("ztunnel starts")
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An echo server: writes back whatever it reads, then closes its side after the client's.
pub async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind echo server");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// Deterministic bytes (xorshift) so both ends can check a stream without storing it.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Sends `len` pattern bytes through an echo path and checks every byte that comes back.
pub async fn echo_roundtrip(stream: TcpStream, len: usize, seed: u64) {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    });
    let mut p = Pattern::new(seed);
    let mut want = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut seen = 0;
    while seen < len {
        let n = (len - seen).min(got.len());
        r.read_exact(&mut got[..n]).await.expect("echo data");
        p.fill(&mut want[..n]);
        assert!(got[..n] == want[..n], "corrupted stream at byte {seen}");
        seen += n;
    }
    assert_eq!(
        r.read(&mut got).await.unwrap(),
        0,
        "clean close after the echo"
    );
    writer.await.unwrap();
}

/// Where `zt` serves SOCKS5 (every ztunnel of [`Mesh::ztunnel`] does).
pub fn socks(zt: &Ztunnel) -> SocketAddr {
    zt.addresses.socks5.expect("SOCKS5 is enabled")
}

/// SOCKS5 CONNECT through `proxy` to `dst`. `Err(reply code)` when the proxy refuses.
pub async fn socks5(proxy: SocketAddr, dst: SocketAddr) -> Result<TcpStream, u8> {
    socks5_request(proxy, dst.port(), |req| match dst.ip() {
        IpAddr::V4(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
    })
    .await
}

/// SOCKS5 CONNECT by domain name.
pub async fn socks5_domain(proxy: SocketAddr, host: &str, port: u16) -> Result<TcpStream, u8> {
    socks5_request(proxy, port, |req| {
        req.push(3);
        req.push(host.len() as u8);
        req.extend_from_slice(host.as_bytes());
    })
    .await
}

async fn socks5_request(
    proxy: SocketAddr,
    port: u16,
    address: impl FnOnce(&mut Vec<u8>),
) -> Result<TcpStream, u8> {
    let mut tcp = TcpStream::connect(proxy).await.expect("connect to SOCKS5");
    tcp.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    tcp.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0]);
    let mut req = vec![5, 1, 0];
    address(&mut req);
    req.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    tcp.read_exact(&mut reply).await.expect("SOCKS5 reply");
    if reply[1] == 0 {
        Ok(tcp)
    } else {
        Err(reply[1])
    }
}

/// A plain HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to HTTP endpoint");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: zt\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sum of a metric's samples whose labels include every `key="value"` pair given.
pub async fn metric(zt: &Ztunnel, name: &str, labels: &[(&str, &str)]) -> u64 {
    let (_, body) = http(zt.addresses.stats, "GET", "/stats/prometheus").await;
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// Polls `check` until it holds or two seconds pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Runs a command (`ip`, `nft`), failing the test with its stderr if it fails.
pub fn run(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
