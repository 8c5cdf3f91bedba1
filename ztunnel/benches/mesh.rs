//! Whole-path benchmark: client → SOCKS5 → ztunnel A → HBONE → ztunnel B → server, against
//! the same traffic sent straight to the server, measured in one run on the same machine.
//!
//! Both ztunnels are the release binary in their own processes, so their CPU time and memory
//! are read from /proc. Every phase is bounded in bytes, requests and seconds. Prints a table
//! of ratios and writes it as JSON (`target/bench-mesh.json`, or the path in BENCH_JSON).
//!
//! Rows marked `(ref.)` and `floor` measure, in the same run, what the mesh path cannot go
//! below on this machine: the same bytes and requests through ztunnel A alone as a plain relay
//! (one userspace hop, no TLS or HTTP/2; the mesh path is two), AES-GCM sealing and opening,
//! and the client and sink's own cost on the direct path.
//!
//! Last, 16 tunnels push into applications that read slowly (a third ztunnel, C, so that its
//! HBONE connection from A is fresh): what the receiving ztunnel then holds is bounded by the
//! HBONE windows.
//!
//!     cargo bench -p ztunnel --bench mesh

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const A: [u8; 4] = [127, 77, 0, 2];
const B: [u8; 4] = [127, 77, 0, 3];
/// A third ztunnel, reached only by the slow readers: a fresh HBONE connection from A.
const C: [u8; 4] = [127, 77, 0, 5];
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
/// A sink that reads slowly, as an application behind a full socket does.
const SLOW_PORT: u16 = 9002;
/// Slow readers held at once, and how long.
const SLOW_READERS: usize = 16;
const SLOW_HOLD: Duration = Duration::from_millis(1500);

struct Ztunnel {
    child: Child,
}

impl Ztunnel {
    fn spawn(dir: &std::path::Path, ip: [u8; 4], workload: &str) -> Self {
        // ZTUNNEL_BIN: another build of ztunnel to measure (e.g. with `--features mimalloc`).
        let bin = std::env::var("ZTUNNEL_BIN").unwrap_or(env!("CARGO_BIN_EXE_ztunnel").into());
        let mut cmd = Command::new(bin);
        cmd.env_clear();
        // Knobs passed through: the HBONE windows under measurement.
        for knob in ["HBONE_STREAM_WINDOW", "HBONE_CONNECTION_WINDOW"] {
            if let Ok(v) = std::env::var(knob) {
                cmd.env(knob, v);
            }
        }
        let child = cmd
            .env("PROXY_WORKLOAD_INFO", workload)
            .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
            .env("CA_DIR", dir.join("ca"))
            .env("BIND_ADDRESS", IpAddr::from(ip).to_string())
            .env("SOCKET_MARK", "0")
            // The clients reach ztunnel A through SOCKS5 (off by default).
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env("RUST_LOG", "warn")
            .env(
                "ZTUNNEL_WORKER_THREADS",
                std::env::var("ZTUNNEL_WORKER_THREADS").unwrap_or_else(|_| "2".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ztunnel (cargo bench builds it)");
        Self { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    fn cpu(&self) -> f64 {
        process_cpu(&self.pid().to_string())
    }

    /// A /proc status field in KiB (`VmRSS`, `VmHWM`).
    fn mem_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }
}

/// User + system CPU seconds of `/proc/<pid>` so far (`self` for this process).
fn process_cpu(pid: &str) -> f64 {
    meshcore::process_metrics::cpu_seconds(pid).expect("/proc/<pid>/stat")
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Path {
    Direct,
    Mesh,
    /// Through ztunnel A only, as plain TCP to an address outside the mesh: the cost of one
    /// userspace relay hop without TLS or HTTP/2, for reference.
    Passthrough,
}

/// An echo server outside the mesh's config, reached through A as passthrough.
const OUTSIDE: [u8; 4] = [127, 77, 0, 4];

async fn connect(path: Path, port: u16) -> TcpStream {
    let (path, ip) = match path {
        Path::Passthrough => (Path::Mesh, OUTSIDE),
        other => (other, B),
    };
    let dst = SocketAddr::from((ip, port));
    match path {
        Path::Direct => {
            let t = TcpStream::connect(dst).await.unwrap();
            t.set_nodelay(true).unwrap();
            t
        }
        Path::Mesh => through_a(ip, port).await,
        Path::Passthrough => unreachable!("mapped above"),
    }
}

/// A connection to `ip:port` through ztunnel A's SOCKS5 port.
async fn through_a(ip: [u8; 4], port: u16) -> TcpStream {
    let mut t = TcpStream::connect(SocketAddr::from((A, 15080)))
        .await
        .unwrap();
    t.set_nodelay(true).unwrap();
    // Greeting and CONNECT in one write; the replies are 2 + 10 bytes.
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&ip);
    req.extend_from_slice(&port.to_be_bytes());
    t.write_all(&req).await.unwrap();
    let mut reply = [0u8; 12];
    t.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[3], 0, "SOCKS5 CONNECT refused");
    t
}

async fn servers() {
    for ip in [B, OUTSIDE] {
        sink_server(
            TcpListener::bind(SocketAddr::from((ip, SINK_PORT)))
                .await
                .unwrap(),
        );
    }
    for ip in [B, OUTSIDE] {
        echo_server(
            TcpListener::bind(SocketAddr::from((ip, ECHO_PORT)))
                .await
                .unwrap(),
        );
    }
}

/// Reads 16 KiB every 5 ms (about 3 MB/s) until `stop`, then drops the connection.
fn slow_sink_server(sink: TcpListener, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        loop {
            let (mut t, _) = sink.accept().await.unwrap();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            });
        }
    });
}

/// What the receiving ztunnel holds for applications that read slowly: SLOW_READERS tunnels
/// from A pushing as fast as they may into slow sinks behind ztunnel C (its first HBONE
/// connection, so no earlier transfer has sized its windows) for SLOW_HOLD; C's RSS growth in
/// MiB. The windows bound it: what a sender may have unread at the receiver is queued there.
fn slow_readers(rt: &tokio::runtime::Runtime, zc: &Ztunnel) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = zc.mem_kib("VmRSS");
    let grown = rt.block_on(async {
        slow_sink_server(
            TcpListener::bind(SocketAddr::from((C, SLOW_PORT)))
                .await
                .unwrap(),
            stop.clone(),
        );
        let writers: Vec<_> = (0..SLOW_READERS)
            .map(|_| {
                tokio::spawn(async move {
                    let mut t = through_a(C, SLOW_PORT).await;
                    let buf = vec![0x5au8; 64 * 1024];
                    let until = tokio::time::Instant::now() + SLOW_HOLD;
                    while tokio::time::timeout_at(until, t.write_all(&buf))
                        .await
                        .is_ok_and(|w| w.is_ok())
                    {}
                    t
                })
            })
            .collect();
        let mut held = Vec::new();
        for w in writers {
            held.push(w.await.unwrap());
        }
        let grown = zc.mem_kib("VmRSS").saturating_sub(before);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(held);
        grown
    });
    grown as f64 / 1024.0
}

/// Reads everything, then answers with the byte count.
fn sink_server(sink: TcpListener) {
    tokio::spawn(async move {
        loop {
            let (mut t, _) = sink.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = t.write_all(&total.to_be_bytes()).await;
            });
        }
    });
}

fn echo_server(echo: TcpListener) {
    tokio::spawn(async move {
        loop {
            let (mut t, _) = echo.accept().await.unwrap();
            let _ = t.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = t.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// `streams` connections each pushing `bytes` to the sink; returns the elapsed time.
async fn bulk(path: Path, streams: usize, bytes: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            tokio::spawn(async move {
                let mut t = connect(path, SINK_PORT).await;
                let buf = vec![0x5au8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    t.write_all(&buf[..n]).await.unwrap();
                    left -= n as u64;
                }
                t.shutdown().await.unwrap();
                let got = t.read_u64().await.unwrap();
                assert_eq!(got, bytes, "sink saw every byte");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// 1 KB request/response at a fixed rate on one connection. Tokio's timer has millisecond
/// granularity, so latency runs from the actual send, not the scheduled one; at 1000 rps a
/// request waits behind the previous one only when a round trip takes longer than 1 ms.
/// Returns sorted latencies in microseconds.
async fn latency(path: Path, rate: u32, count: u32) -> Vec<f64> {
    let mut t = connect(path, ECHO_PORT).await;
    let req = [0x42u8; 1024];
    let mut resp = [0u8; 1024];
    let interval = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let scheduled = start + interval * i;
        tokio::time::sleep_until(scheduled.into()).await;
        let sent = Instant::now();
        t.write_all(&req).await.unwrap();
        t.read_exact(&mut resp).await.unwrap();
        out.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// New connections per second: `workers` loops of connect, 1-byte echo, close, for `secs`.
async fn new_conns(path: Path, workers: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut t = connect(path, ECHO_PORT).await;
                    t.write_all(b"x").await.unwrap();
                    let mut b = [0u8; 1];
                    t.read_exact(&mut b).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// CPU seconds per GB to seal and then open 16 KiB TLS records with `alg` (ring, as the
/// ztunnels use it) on this thread: what the tunnel's AES-GCM costs per GB, both ends together.
fn aead_cpu_per_gb(alg: &'static ring::aead::Algorithm) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    const RECORD: usize = 16 * 1024;
    const RECORDS: usize = 16 * 1024; // 256 MiB each way
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32][..alg.key_len()]).unwrap());
    let mut record = vec![0x5au8; RECORD + alg.tag_len()];
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let aad = || Aad::from([23u8, 3, 3, 0x40, 0x11]);
    let t0 = thread_cpu();
    for i in 0..RECORDS {
        let (plain, tag_space) = record.split_at_mut(RECORD);
        let tag = key
            .seal_in_place_separate_tag(nonce(i), aad(), plain)
            .unwrap();
        tag_space.copy_from_slice(tag.as_ref());
        key.open_in_place(nonce(i), aad(), &mut record).unwrap();
    }
    (thread_cpu() - t0) / ((RECORD * RECORDS) as f64 / 1e9)
}

/// This thread's CPU seconds so far.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU per GB through the mesh against its floor: the mesh's two ztunnels do two plain relay
/// hops' worth of socket work plus AES-GCM once each way (TLS 1.3 negotiates AES-256-GCM with
/// ring's default order). With the client and sink's own cost (`direct`, CPU-s/GB) and every
/// core busy, the floor also bounds the bulk ratio: cores / (direct + floor) GB/s at best.
fn bulk_cpu_rows(r: &mut Report, mesh: f64, relay: f64, direct: f64, direct_mbps: f64) {
    r.single(
        "CPU per GB, both ztunnels",
        mesh,
        "CPU-s/GB",
        "<= 1.0",
        mesh <= 1.0,
    );
    r.single("  one plain relay hop (ref.)", relay, "CPU-s/GB", "-", true);
    let aes128 = aead_cpu_per_gb(&ring::aead::AES_128_GCM);
    let aes256 = aead_cpu_per_gb(&ring::aead::AES_256_GCM);
    r.single(
        "  AES-128-GCM seal + open (ref.)",
        aes128,
        "CPU-s/GB",
        "-",
        true,
    );
    r.single(
        "  AES-256-GCM seal + open (ref.)",
        aes256,
        "CPU-s/GB",
        "-",
        true,
    );
    let floor = 2.0 * relay + aes256;
    r.single(
        "  floor: 2 relay hops + AES-256",
        floor,
        "CPU-s/GB",
        "-",
        true,
    );
    r.single(
        "  client + sink, direct (ref.)",
        direct,
        "CPU-s/GB",
        "-",
        true,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = cores / (direct + floor) * 1e3 / direct_mbps;
    r.single(
        "  bulk ratio at the floor, at best",
        bound,
        "x direct",
        "-",
        true,
    );
}

fn slow_readers_row(r: &mut Report, rt: &tokio::runtime::Runtime, zc: &Ztunnel) {
    let held = slow_readers(rt, zc);
    r.single(
        "held for 16 slow readers",
        held,
        "MiB, receiving ztunnel",
        "-",
        true,
    );
}

struct Report {
    rows: Vec<serde_json::Value>,
}

impl Report {
    fn ratio(&mut self, name: &str, unit: &str, direct: f64, mesh: f64, target: &str, met: bool) {
        println!(
            "{name:<34} {direct:>11.1} {mesh:>11.1} {:>7.2}x  {unit:<7} {target:<11} {}",
            mesh / direct,
            if met { "met" } else { "NOT met" }
        );
        self.rows.push(
            json!({"metric": name, "unit": unit, "direct": direct, "mesh": mesh,
                              "ratio": mesh / direct, "target": target, "met": met}),
        );
    }

    fn single(&mut self, name: &str, value: f64, unit: &str, target: &str, met: bool) {
        println!(
            "{name:<34} {value:>11.2} {unit:<21} {target:<11} {}",
            if met { "met" } else { "NOT met" }
        );
        self.rows.push(
            json!({"metric": name, "value": value, "unit": unit, "target": target, "met": met}),
        );
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("zt-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            "workloads:\n\
             - {{name: client, namespace: bench, serviceAccount: client, workloadIps: [{}], protocol: HBONE}}\n\
             - {{name: server, namespace: bench, serviceAccount: server, workloadIps: [{}], protocol: HBONE}}\n\
             - {{name: slow, namespace: bench, serviceAccount: slow, workloadIps: [{}], protocol: HBONE}}\n",
            IpAddr::from(A),
            IpAddr::from(B),
            IpAddr::from(C)
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(servers());
    let za = Ztunnel::spawn(&dir, A, "bench/client/client");
    std::thread::sleep(Duration::from_millis(300)); // A writes the shared development CA
    let zb = Ztunnel::spawn(&dir, B, "bench/server/server");
    let zc = Ztunnel::spawn(&dir, C, "bench/slow/slow");
    rt.block_on(async {
        for _ in 0..200 {
            if TcpStream::connect(SocketAddr::from((A, 15080)))
                .await
                .is_ok()
                && TcpStream::connect(SocketAddr::from((B, 15008)))
                    .await
                    .is_ok()
                && TcpStream::connect(SocketAddr::from((C, 15008)))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("ztunnels did not start");
    });
    let idle_kib = za.mem_kib("VmRSS").max(zb.mem_kib("VmRSS"));
    // Warm up: certificates, the pooled HBONE connection.
    rt.block_on(bulk(Path::Mesh, 1, 8 << 20));
    let warm_kib = za.mem_kib("VmRSS").max(zb.mem_kib("VmRSS"));
    println!(
        "ztunnel memory after warm-up: RSS {} KiB = {} KiB anonymous + {} KiB file-backed (program text, libraries)",
        za.mem_kib("VmRSS"),
        za.mem_kib("RssAnon"),
        za.mem_kib("RssFile")
    );
    let cpu = || za.cpu() + zb.cpu();
    let mut r = Report { rows: Vec::new() };
    println!(
        "{:<34} {:>11} {:>11} {:>8}  {:<7} {:<11}",
        "measure", "direct", "mesh", "ratio", "unit", "target"
    );

    if std::env::var_os("BENCH_PROFILE_LATENCY").is_some() {
        // For profiling: only the mesh latency phase, long enough to attach perf.
        let lm = rt.block_on(latency(Path::Mesh, 1000, 10_000));
        println!("p50 {:.0} us, p99 {:.0} us", pct(&lm, 0.5), pct(&lm, 0.99));
        return;
    }
    const BULK: u64 = 512 << 20;
    let mbps = |t: Duration, bytes: u64| bytes as f64 / t.as_secs_f64() / 1e6;
    let own0 = process_cpu("self");
    let d = rt.block_on(bulk(Path::Direct, 1, BULK));
    // The client and the sink: the one TCP leg the direct path is, both ends.
    let direct_cpu_per_gb = (process_cpu("self") - own0) / (BULK as f64 / 1e9);
    let c0 = cpu();
    let m = rt.block_on(bulk(Path::Mesh, 1, BULK));
    let cpu_bulk = cpu() - c0;
    let (dm, mm) = (mbps(d, BULK), mbps(m, BULK));
    let dm_single = dm;
    r.ratio(
        "bulk throughput, 1 stream",
        "MB/s",
        dm,
        mm,
        ">= 0.40x",
        mm / dm >= 0.40,
    );

    const STREAMS: usize = 4;
    let d = rt.block_on(bulk(Path::Direct, STREAMS, BULK / STREAMS as u64));
    let m = rt.block_on(bulk(Path::Mesh, STREAMS, BULK / STREAMS as u64));
    let (dm, mm) = (mbps(d, BULK), mbps(m, BULK));
    r.ratio(
        "bulk throughput, 4 streams",
        "MB/s",
        dm,
        mm,
        ">= 0.40x",
        mm / dm >= 0.40,
    );
    // The floor under both: the same bytes through ztunnel A alone as a plain relay (one
    // userspace hop, no TLS or HTTP/2). The mesh path is two such hops plus TLS and HTTP/2.
    let a0 = za.cpu();
    let p = rt.block_on(bulk(Path::Passthrough, 1, BULK));
    let relay_cpu_per_gb = (za.cpu() - a0) / (BULK as f64 / 1e9);
    r.ratio(
        "  bulk via one plain relay (ref.)",
        "MB/s",
        dm_single,
        mbps(p, BULK),
        "-",
        true,
    );
    let cpu_per_gb = cpu_bulk / (BULK as f64 / 1e9);
    if std::env::var_os("BENCH_BULK_ONLY").is_some() {
        bulk_cpu_rows(
            &mut r,
            cpu_per_gb,
            relay_cpu_per_gb,
            direct_cpu_per_gb,
            dm_single,
        );
        let peak_kib = za.mem_kib("VmHWM").max(zb.mem_kib("VmHWM"));
        r.single(
            "ztunnel peak RSS",
            peak_kib as f64 / 1024.0,
            "MiB",
            "<= 16 MiB",
            peak_kib <= 16 * 1024,
        );
        slow_readers_row(&mut r, &rt, &zc);
        return;
    }

    const REQS: u32 = 3000;
    let ld = rt.block_on(latency(Path::Direct, 1000, REQS));
    let c0 = cpu();
    let lm = rt.block_on(latency(Path::Mesh, 1000, REQS));
    let cpu_reqs = cpu() - c0;
    r.ratio(
        "latency p50, 1 KB @ 1000 rps",
        "us",
        pct(&ld, 0.5),
        pct(&lm, 0.5),
        "-",
        true,
    );
    let a0 = za.cpu();
    let lp = rt.block_on(latency(Path::Passthrough, 1000, REQS));
    let relay_cpu_reqs = za.cpu() - a0;
    r.ratio(
        "  p50 via one plain relay (ref.)",
        "us",
        pct(&ld, 0.5),
        pct(&lp, 0.5),
        "-",
        true,
    );
    let (d99, m99) = (pct(&ld, 0.99), pct(&lm, 0.99));
    r.ratio(
        "latency p99, 1 KB @ 1000 rps",
        "us",
        d99,
        m99,
        "<= +120 us",
        m99 - d99 <= 120.0,
    );

    let nd = rt.block_on(new_conns(Path::Direct, 8, 2.0));
    let nm = rt.block_on(new_conns(Path::Mesh, 8, 2.0));
    r.ratio(
        "new connections",
        "conn/s",
        nd,
        nm,
        ">= 0.20x",
        nm / nd >= 0.2,
    );

    // Memory per open connection: hold 500 tunnels open at once.
    const HELD: usize = 500;
    let before = za.mem_kib("VmRSS") + zb.mem_kib("VmRSS");
    let held = rt.block_on(async {
        let mut held = Vec::with_capacity(HELD);
        for _ in 0..HELD {
            let mut t = connect(Path::Mesh, ECHO_PORT).await;
            t.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await.unwrap();
            held.push(t);
        }
        held
    });
    let after = za.mem_kib("VmRSS") + zb.mem_kib("VmRSS");
    drop(held);
    let per_conn_kib = after.saturating_sub(before) as f64 / HELD as f64;

    println!();
    let cpu_us_per_req = cpu_reqs / REQS as f64 * 1e6;
    let relay_us_per_req = relay_cpu_reqs / REQS as f64 * 1e6;
    let peak_kib = za.mem_kib("VmHWM").max(zb.mem_kib("VmHWM"));
    bulk_cpu_rows(
        &mut r,
        cpu_per_gb,
        relay_cpu_per_gb,
        direct_cpu_per_gb,
        dm_single,
    );
    r.single(
        "CPU per request, both ztunnels",
        cpu_us_per_req,
        "us",
        "<= 50",
        cpu_us_per_req <= 50.0,
    );
    r.single(
        "  one relay hop per request (ref.)",
        relay_us_per_req,
        "us",
        "-",
        true,
    );
    r.single(
        "  floor: 2 relay hops",
        2.0 * relay_us_per_req,
        "us",
        "-",
        true,
    );
    r.single(
        "CPU per 1000 requests",
        cpu_us_per_req / 1000.0,
        "CPU-s",
        "<= 0.05",
        cpu_us_per_req <= 50.0,
    );
    r.single(
        "ztunnel RSS idle (started, no traffic)",
        idle_kib as f64 / 1024.0,
        "MiB",
        "<= 8",
        idle_kib <= 8 * 1024,
    );
    r.single(
        "ztunnel RSS after an 8 MiB warm-up",
        warm_kib as f64 / 1024.0,
        "MiB",
        "-",
        true,
    );
    r.single(
        "ztunnel peak RSS",
        peak_kib as f64 / 1024.0,
        "MiB",
        "<= 16",
        peak_kib <= 16 * 1024,
    );
    r.single(
        "memory per open connection",
        per_conn_kib,
        "KiB, both ends",
        "<= 32",
        per_conn_kib <= 32.0,
    );
    slow_readers_row(&mut r, &rt, &zc);

    let out = std::env::var("BENCH_JSON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-mesh.json").to_owned()
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let doc =
        json!({"benchmark": "ztunnel mesh path vs direct TCP", "cores": cores, "results": r.rows});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {out}");
    drop((za, zb, zc));
    let _ = std::fs::remove_dir_all(&dir);
}
