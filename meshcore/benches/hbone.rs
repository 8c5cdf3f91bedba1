//! HBONE over loopback against plain TCP over loopback, measured in the same run:
//!   - bulk throughput: one client streams into a sink, directly vs through one HBONE tunnel
//!     (client → HBONE client → TLS/HTTP/2 → HBONE server → sink);
//!   - connection setup rate: TCP connect vs a new HBONE connection (TCP + TLS 1.3 mutual
//!     handshake + HTTP/2 handshake + one CONNECT).
//!
//! After criterion's report, prints the ratios HBONE / plain TCP, then one upload through a
//! path with a 20 ms round trip (a delay line in front of the HBONE server) with Istio's 4 MiB /
//! 16 MiB windows and with 512 KiB / 2 MiB ones: what smaller windows cost across zones.
//!
//! Run: `cargo bench -p meshcore --bench hbone`

use criterion::{Criterion, Throughput};
use meshcore::copy::copy_bidirectional;
use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{ClientSettings, ConnectRequest, HboneClient, ServerSettings, Windows};
use meshcore::pki::{CertificateAuthority, Validity};
use meshcore::tls::{server_config, Credentials, TrustRoots, WorkloadCert};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[path = "support/delay_line.rs"]
mod delay_line;

const BULK_BYTES: usize = 64 * 1024 * 1024;
/// Bytes sent over the slow path per window setting.
const SLOW_BYTES: usize = 32 * 1024 * 1024;

/// Per benchmark: (units of work, time) summed over all criterion iterations.
static TOTALS: Mutex<BTreeMap<&'static str, (f64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, units: f64, took: Duration) {
    let mut totals = TOTALS.lock().unwrap();
    let entry = totals.entry(name).or_insert((0.0, Duration::ZERO));
    entry.0 += units;
    entry.1 += took;
}

fn rate(name: &str) -> f64 {
    let totals = TOTALS.lock().unwrap();
    let (units, took) = totals[name];
    units / took.as_secs_f64()
}

struct Fixture {
    sink: SocketAddr,
    request: ConnectRequest,
}

async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k").await;
            });
        }
    });
    addr
}

async fn fixture(windows: Windows) -> Fixture {
    let ca =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let roots = TrustRoots::from_pem(ca.root_pem()).unwrap();
    let creds = |id: &str| {
        let cert = WorkloadCert::issue(
            &ca,
            &id.parse().unwrap(),
            Validity::from_now(Duration::from_secs(3600)),
        )
        .unwrap();
        Credentials::new(cert, roots.clone())
    };
    let server_creds = creds("spiffe://cluster.local/ns/bench/sa/server");
    let client_creds = creds("spiffe://cluster.local/ns/bench/sa/client");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = listener.local_addr().unwrap();
    let server = HboneServer::new(
        server_config(server_creds.clone()),
        ServerSettings {
            windows,
            ..ServerSettings::default()
        },
    );
    tokio::spawn(server.serve(
        listener,
        |inbound| async move {
            let Ok(mut upstream) = TcpStream::connect(inbound.destination).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            if let Ok(mut tunnel) = inbound.accept() {
                let _ = copy_bidirectional(&mut tunnel, &mut upstream).await;
            }
        },
        std::future::pending(),
    ));
    let sink = sink().await;
    let request = ConnectRequest {
        credentials: client_creds,
        expected: vec![server_creds.identity()],
        hbone_addr: hbone,
        target: sink,
        source: None,
        bind_ip: None,
        dialer: None,
        baggage: None,
        trace: None,
    };
    Fixture { sink, request }
}

/// Streams BULK_BYTES and half-closes, then waits for the sink's one-byte acknowledgement.
async fn stream_bulk<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: S) {
    stream_bytes(s, BULK_BYTES).await
}

async fn stream_bytes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    bytes: usize,
) {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    close_and_await_ack(s).await;
}

/// Half-closes and waits for the sink's one-byte acknowledgement: one full round trip.
async fn close_and_await_ack<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

fn bench_throughput(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let mut group = c.benchmark_group("bulk");
    group.throughput(Throughput::Bytes(BULK_BYTES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("plain_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let s = TcpStream::connect(fx.sink).await.unwrap();
                    s.set_nodelay(true).unwrap();
                    stream_bulk(s).await;
                }
                let took = start.elapsed();
                record("bulk/plain_tcp", (iters as usize * BULK_BYTES) as f64, took);
                took
            })
        })
    });
    let client = HboneClient::new(ClientSettings::default());
    group.bench_function("hbone", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    stream_bulk(client.connect(&fx.request).await.unwrap()).await;
                }
                let took = start.elapsed();
                record("bulk/hbone", (iters as usize * BULK_BYTES) as f64, took);
                took
            })
        })
    });
    group.finish();
}

/// One upload of SLOW_BYTES over a 20 ms round trip with `windows` at both ends: MB/s.
async fn slow_path_rate(windows: Windows) -> f64 {
    let fx = fixture(windows).await;
    let mut request = fx.request.clone();
    request.hbone_addr =
        delay_line::delay_line(fx.request.hbone_addr, Duration::from_millis(10)).await;
    let client = HboneClient::new(ClientSettings {
        windows,
        ..ClientSettings::default()
    });
    let start = Instant::now();
    stream_bytes(client.connect(&request).await.unwrap(), SLOW_BYTES).await;
    SLOW_BYTES as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn bench_connections(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    let mut group = c.benchmark_group("connect");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("plain_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    close_and_await_ack(TcpStream::connect(fx.sink).await.unwrap()).await;
                }
                let took = start.elapsed();
                record("connect/plain_tcp", iters as f64, took);
                took
            })
        })
    });
    group.bench_function("hbone_new_connection", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    // A fresh pool forces a new TCP + mTLS + HTTP/2 connection every time.
                    let client = HboneClient::new(ClientSettings::default());
                    close_and_await_ack(client.connect(&fx.request).await.unwrap()).await;
                }
                let took = start.elapsed();
                record("connect/hbone_new_connection", iters as f64, took);
                took
            })
        })
    });
    group.bench_function("hbone_pooled_stream", |b| {
        let client = HboneClient::new(ClientSettings::default());
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    close_and_await_ack(client.connect(&fx.request).await.unwrap()).await;
                }
                let took = start.elapsed();
                record("connect/hbone_pooled_stream", iters as f64, took);
                took
            })
        })
    });
    group.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fx = rt.block_on(fixture(Windows::default()));
    let mut c = Criterion::default().configure_from_args();
    bench_throughput(&mut c, &rt, &fx);
    bench_connections(&mut c, &rt, &fx);
    c.final_summary();

    let totals = TOTALS.lock().unwrap().clone();
    if totals.is_empty() {
        return; // `--test` mode or a filter that ran nothing
    }
    println!("\n== HBONE vs plain TCP, same run (loopback, 2 tokio workers) ==");
    let has = |k: &str| totals.contains_key(k);
    if has("bulk/plain_tcp") && has("bulk/hbone") {
        let (tcp, hbone) = (rate("bulk/plain_tcp"), rate("bulk/hbone"));
        println!(
            "bulk throughput: plain TCP {:.0} MB/s, HBONE {:.0} MB/s, ratio {:.2}x",
            tcp / 1e6,
            hbone / 1e6,
            hbone / tcp
        );
    }
    if has("bulk/hbone") {
        let mi = 1024 * 1024;
        let windows = |stream, connection| Windows { stream, connection };
        let istio = rt.block_on(slow_path_rate(windows(4 * mi, 16 * mi)));
        let small = rt.block_on(slow_path_rate(windows(mi / 2, 2 * mi)));
        println!(
            "upload over a 20 ms round trip, {} MiB:",
            SLOW_BYTES / mi as usize
        );
        for (name, r) in [
            ("4 MiB / 16 MiB (Istio's, default)", istio),
            ("512 KiB / 2 MiB", small),
        ] {
            println!("  {name:<32} {r:>7.0} MB/s, ratio {:.2}x", r / istio);
        }
    }
    if has("connect/plain_tcp") {
        let tcp = rate("connect/plain_tcp");
        for name in [
            "connect/hbone_new_connection",
            "connect/hbone_pooled_stream",
        ] {
            if has(name) {
                let r = rate(name);
                println!(
                    "{name}: {r:.0}/s vs plain TCP {tcp:.0}/s, ratio {:.2}x",
                    r / tcp
                );
            }
        }
    }
}
