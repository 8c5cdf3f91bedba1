//! One L7 hop: client → ztunnel A → waypoint → ztunnel B → server, beside the same requests
//! through the ztunnels only, through nginx as a plain reverse proxy (the reference for one
//! userspace L7 hop on this machine) and straight to the server (the baseline), in one run.
//!
//! Every proxy is a release binary in its own process, so its CPU time and memory come from
//! /proc; the clients and the HTTP server (HTTP/1.1 and h2c) share a 2-thread runtime in this
//! process. Every phase is bounded in requests and seconds. Prints tables of ratios and writes
//! them as JSON (`target/bench-l7.json`, or the path in BENCH_JSON).
//!
//!     cargo build --release -p ztunnel        # the bench runs the ztunnel binary beside waypoint's
//!     scripts/install-bench-deps              # nginx (else its column is skipped)
//!     cargo bench -p waypoint --bench l7
//!
//! Knobs: L7_REQUESTS (per path and protocol, default 6000), L7_ROUNDS (slices per path, the
//! order rotating, default 3), L7_RATE (default 1000/s), L7_CONNS (default 4), L7_TUNNELS ×
//! L7_STREAMS (idle streams, default 100 × 100), WAYPOINT_WORKER_THREADS and
//! ZTUNNEL_WORKER_THREADS (default 2), ZTUNNEL_BIN, NGINX_BIN, BENCH_L7_PROFILE=1 (only the
//! waypoint path, 20 s of HTTP/1.1, for `perf record -p <waypoint pid>`).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The client's pod and its ztunnel.
const A: Ipv4Addr = Ipv4Addr::new(127, 78, 0, 2);
/// The server's pod and its ztunnel.
const B: Ipv4Addr = Ipv4Addr::new(127, 78, 0, 3);
/// The waypoint's pod.
const W: Ipv4Addr = Ipv4Addr::new(127, 78, 0, 4);
/// nginx.
const N: Ipv4Addr = Ipv4Addr::new(127, 78, 0, 5);
/// Service `echo-wp` (through the waypoint), `echo-zt` (no waypoint), `waypoint` (its Service).
const VIP_WP: Ipv4Addr = Ipv4Addr::new(127, 78, 1, 1);
const VIP_ZT: Ipv4Addr = Ipv4Addr::new(127, 78, 1, 2);
const VIP_GW: Ipv4Addr = Ipv4Addr::new(127, 78, 1, 3);
const SERVER_PORT: u16 = 8080;
const NGINX_H1: u16 = 8081;
const NGINX_H2: u16 = 8082;
const BODY: usize = 1024;
const HOST: &str = "echo.bench";
/// Requests per connection before a phase is measured (handshakes, pools).
const WARM_UP: u64 = 50;

#[path = "l7/procs.rs"]
mod procs;
use procs::*;

// ---------------------------------------------------------------------------------------------
// The server: HTTP/1.1 and h2c on B:8080, 1 KB per request; `/hold` answers headers and keeps
// the body open until released.

type ServerBody = UnsyncBoxBody<Bytes, Infallible>;

struct Server {
    /// Requests that carried `x-request-id`: the waypoint adds one, nothing else here does.
    via_waypoint: AtomicU64,
    holding: AtomicU64,
    release: watch::Receiver<bool>,
}

static PAYLOAD: [u8; BODY] = [b'x'; BODY];

async fn serve(listener: TcpListener, state: Arc<Server>) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(50_000);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, state) = (builder.clone(), state.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, req)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &Server, req: Request<Incoming>) -> Response<ServerBody> {
    if req.headers().contains_key("x-request-id") {
        state.via_waypoint.fetch_add(1, Ordering::Relaxed);
    }
    let body = if req.uri().path() == "/hold" {
        state.holding.fetch_add(1, Ordering::Relaxed);
        let mut release = state.release.clone();
        StreamBody::new(futures_util::stream::once(async move {
            let _ = release.wait_for(|r| *r).await;
            Ok(Frame::data(Bytes::from_static(b".")))
        }))
        .boxed_unsync()
    } else {
        Full::new(Bytes::from_static(&PAYLOAD)).boxed_unsync()
    };
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Clients

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Direct,
    Nginx,
    Ztunnels,
    Waypoint,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Nginx => "nginx",
            Route::Ztunnels => "ztunnels",
            Route::Waypoint => "waypoint",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
}

async fn socks5(dst: SocketAddr) -> TcpStream {
    let mut t = TcpStream::connect(SocketAddr::from((A, 15080)))
        .await
        .expect("ztunnel A's SOCKS5 port");
    t.set_nodelay(true).unwrap();
    let SocketAddr::V4(v4) = dst else {
        unreachable!()
    };
    // Greeting and CONNECT in one write; the replies are 2 + 10 bytes.
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&dst.port().to_be_bytes());
    t.write_all(&req).await.unwrap();
    let mut reply = [0u8; 12];
    t.read_exact(&mut reply)
        .await
        .unwrap_or_else(|e| panic!("SOCKS5 to {dst} through ztunnel A: {e}"));
    assert_eq!(reply[3], 0, "ztunnel A refused the SOCKS5 CONNECT to {dst}");
    t
}

async fn dial(route: Route, proto: Proto) -> TcpStream {
    let plain = |addr: SocketAddr| async move {
        let t = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        t.set_nodelay(true).unwrap();
        t
    };
    match route {
        Route::Direct => plain(SocketAddr::from((B, SERVER_PORT))).await,
        Route::Nginx => {
            let port = match proto {
                Proto::H1 => NGINX_H1,
                Proto::H2 => NGINX_H2,
            };
            plain(SocketAddr::from((N, port))).await
        }
        Route::Ztunnels => socks5(SocketAddr::from((VIP_ZT, 80))).await,
        Route::Waypoint => socks5(SocketAddr::from((VIP_WP, 80))).await,
    }
}

enum Client {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    async fn open(route: Route, proto: Proto) -> Self {
        let io = TokioIo::new(dial(route, proto).await);
        match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                Client::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .unwrap_or_else(|e| panic!("h2c handshake via {}: {e}", route.name()));
                tokio::spawn(conn);
                Client::H2(sender)
            }
        }
    }

    /// One GET of the 1 KB body; fails loudly on anything but 200 with the whole body.
    async fn get(&mut self, what: &str) {
        let response = match self {
            Client::H1(s) => {
                let req = Request::get("/bench")
                    .header(http::header::HOST, HOST)
                    .body(Empty::new())
                    .unwrap();
                s.ready().await.unwrap();
                s.send_request(req).await
            }
            Client::H2(s) => {
                let req = Request::get(format!("http://{HOST}/bench"))
                    .body(Empty::new())
                    .unwrap();
                s.ready().await.unwrap();
                s.send_request(req).await
            }
        };
        let response = response.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_bytes();
        assert!(
            status == StatusCode::OK && body.len() == BODY,
            "{what}: got {status} with {} bytes: {:?}",
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
}

/// Opens `conns` keep-alive connections and warms each with a few requests (pools, handshakes).
async fn open_clients(route: Route, proto: Proto, conns: usize) -> Vec<Client> {
    let what = format!("{} {} warm-up", route.name(), proto.name());
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = Client::open(route, proto).await;
        for _ in 0..WARM_UP {
            c.get(&what).await;
        }
        clients.push(c);
    }
    clients
}

/// `count` requests at `rate` per second, spread over the connections (each sends its share
/// at rate / conns, offset so the sends interleave). Tokio's timer has millisecond granularity,
/// so latency runs from the actual send; a connection's next request waits behind its previous
/// response only when a round trip exceeds conns / rate. Returns sorted latencies in µs.
async fn measure(
    clients: Vec<Client>,
    route: Route,
    proto: Proto,
    rate: u32,
    count: u32,
) -> Vec<f64> {
    let conns = clients.len() as u32;
    let per = count / conns;
    let interval = Duration::from_secs(1) * conns / rate;
    let start = Instant::now() + Duration::from_millis(5);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let what = format!("{} {}", route.name(), proto.name());
            tokio::spawn(async move {
                let offset = Duration::from_secs(1) * k as u32 / rate;
                let mut out = Vec::with_capacity(per as usize);
                for i in 0..per {
                    tokio::time::sleep_until((start + offset + interval * i).into()).await;
                    let sent = Instant::now();
                    c.get(&what).await;
                    out.push(sent.elapsed().as_secs_f64() * 1e6);
                }
                out
            })
        })
        .collect();
    let bound = Duration::from_secs_f64(count as f64 / rate as f64 + 30.0);
    let mut all = Vec::with_capacity(count as usize);
    for t in tasks {
        let got = tokio::time::timeout(bound, t)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} {}: phase exceeded {bound:?}",
                    route.name(),
                    proto.name()
                )
            })
            .unwrap();
        all.extend(got);
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A plain HTTP/1.0 GET of a metrics page.
async fn scrape(addr: SocketAddr) -> String {
    let mut t = TcpStream::connect(addr).await.unwrap();
    t.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    t.read_to_string(&mut text).await.unwrap();
    text
}

/// Sum of a counter's samples whose labels contain every one of `with`.
fn counter(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Report

struct Report {
    rows: Vec<serde_json::Value>,
}

impl Report {
    fn row(&mut self, v: serde_json::Value) {
        self.rows.push(v);
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

struct PathResult {
    route: Route,
    lat: Vec<f64>,
}

fn main() {
    let zt_bin = ztunnel_binary();
    let nginx_bin = nginx_binary();
    if nginx_bin.is_none() {
        eprintln!(
            "nginx not found (/usr/sbin/nginx, PATH, NGINX_BIN): its column is SKIPPED.\n\
             Install it with `scripts/install-bench-deps` (or `apt-get install -y nginx-light`)."
        );
    }
    let rate: u32 = env_or("L7_RATE", 1000);
    let count: u32 = env_or("L7_REQUESTS", 6000);
    let conns: usize = env_or("L7_CONNS", 4);
    let rounds: u32 = env_or("L7_ROUNDS", 3);
    let tunnels: usize = env_or("L7_TUNNELS", 100);
    let streams: usize = env_or("L7_STREAMS", 100);

    let dir = std::env::temp_dir().join(format!("l7-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // One mesh CA for every process, made before any of them starts.
    meshcore::pki::CertificateAuthority::load_or_generate_dir(&dir.join("ca"), "cluster.local")
        .unwrap();
    write_configs(&dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (release_tx, release_rx) = watch::channel(false);
    let server = Arc::new(Server {
        via_waypoint: AtomicU64::new(0),
        holding: AtomicU64::new(0),
        release: release_rx,
    });
    rt.block_on(async {
        let l = TcpListener::bind(SocketAddr::from((B, SERVER_PORT)))
            .await
            .unwrap();
        tokio::spawn(serve(l, server.clone()));
    });

    let mut za = ztunnel(&zt_bin, &dir, A, "bench/client/client", "ztunnel-a");
    let mut zb = ztunnel(&zt_bin, &dir, B, "bench/server/server", "ztunnel-b");
    let mut wp = waypoint(&dir);
    let mut ng = nginx_bin.as_deref().map(|b| nginx(b, &dir));
    let wait_for = |addr: SocketAddr, p: &mut Proc| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            p.check_alive();
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr}",
                p.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(SocketAddr::from((A, 15080)), &mut za);
    wait_for(SocketAddr::from((B, 15008)), &mut zb);
    wait_for(SocketAddr::from((W, 15008)), &mut wp);
    if let Some(n) = ng.as_mut() {
        wait_for(SocketAddr::from((N, NGINX_H1)), n);
    }
    std::thread::sleep(Duration::from_millis(200));
    let wp_started_kib = wp.mem_kib("VmRSS");
    println!(
        "processes: ztunnel A {} and B {} ({}), waypoint {}, nginx {}; logs in {}",
        za.pid(),
        zb.pid(),
        zt_bin.display(),
        wp.pid(),
        ng.as_ref()
            .map_or("SKIPPED (not installed)".to_owned(), |n| n
                .pid()
                .to_string()),
        dir.display()
    );

    if std::env::var_os("BENCH_L7_PROFILE").is_some() {
        // For `perf record`: only the waypoint path, HTTP/1.1, 20 s at the rate.
        let lat = rt.block_on(async {
            let c = open_clients(Route::Waypoint, Proto::H1, conns).await;
            measure(c, Route::Waypoint, Proto::H1, rate, rate * 20).await
        });
        println!(
            "waypoint HTTP/1.1: p50 {:.0} us, p99 {:.0} us",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        drop((za, zb, wp, ng));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let mut routes = vec![Route::Direct];
    if ng.is_some() {
        routes.push(Route::Nginx);
    }
    routes.extend([Route::Ztunnels, Route::Waypoint]);

    let mut r = Report { rows: Vec::new() };
    // cpu[proto][route] = (waypoint, nginx, both ztunnels) CPU seconds over the measured phase.
    let mut cpu_wp = [[0.0f64; 4]; 2];
    let mut cpu_ng = [[0.0f64; 4]; 2];
    let mut cpu_zt = [[0.0f64; 4]; 2];
    let mut results: Vec<(Proto, Vec<PathResult>)> = Vec::new();
    // Each path runs in `rounds` slices, the order rotating per round, so a noisy moment on
    // this shared 2-core machine does not land on one path only.
    let per_round = (count / rounds / conns as u32) * conns as u32;
    for (pi, proto) in [Proto::H1, Proto::H2].into_iter().enumerate() {
        let mut paths: Vec<PathResult> = routes
            .iter()
            .map(|&route| PathResult {
                route,
                lat: Vec::new(),
            })
            .collect();
        for round in 0..rounds as usize {
            for k in 0..routes.len() {
                let i = (k + round) % routes.len();
                let route = routes[i];
                let marked0 = server.via_waypoint.load(Ordering::Relaxed);
                let clients = rt.block_on(open_clients(route, proto, conns));
                let (w0, n0, z0) = (
                    wp.cpu(),
                    ng.as_ref().map_or(0.0, Proc::cpu),
                    za.cpu() + zb.cpu(),
                );
                let lat = rt.block_on(measure(clients, route, proto, rate, per_round));
                let ri = route as usize;
                cpu_wp[pi][ri] += wp.cpu() - w0;
                cpu_ng[pi][ri] += ng.as_ref().map_or(0.0, Proc::cpu) - n0;
                cpu_zt[pi][ri] += za.cpu() + zb.cpu() - z0;
                for p in [&mut za, &mut zb, &mut wp] {
                    p.check_alive();
                }
                if let Some(n) = ng.as_mut() {
                    n.check_alive();
                }
                // The waypoint path really went through the waypoint, and no other did.
                let marked = server.via_waypoint.load(Ordering::Relaxed) - marked0;
                let sent = per_round as u64 + WARM_UP * conns as u64;
                if route == Route::Waypoint {
                    assert_eq!(
                        marked, sent,
                        "every request on the waypoint path reaches the server through the waypoint"
                    );
                } else {
                    assert_eq!(
                        marked,
                        0,
                        "{} path must not pass the waypoint",
                        route.name()
                    );
                }
                paths[i].lat.extend(lat);
            }
        }
        for p in &mut paths {
            p.lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        results.push((proto, paths));
    }
    // The ztunnels-only path was tunnelled (HBONE between A and B), not passed through.
    let a_metrics = rt.block_on(scrape(SocketAddr::from((A, 15020))));
    let tunnelled = counter(
        &a_metrics,
        "istio_tcp_connections_opened_total",
        &["echo-zt", "mutual_tls"],
    );
    assert!(
        tunnelled >= 2.0 * conns as f64,
        "ztunnel A counts {tunnelled} mutual-TLS connections to echo-zt; expected >= {}:\n{a_metrics}",
        2 * conns
    );
    let wp_idle_kib = wp.mem_kib("VmRSS");
    let wp_peak_kib = wp.mem_kib("VmHWM");
    let ng_kib = ng
        .as_ref()
        .map(|n| (n.mem_kib("VmRSS"), n.mem_kib("VmHWM")));

    // Idle HTTP/2 streams held through the waypoint: `tunnels` h2c connections (each its own
    // HBONE stream from ztunnel A to the waypoint) with `streams` open requests each, whose
    // responses have sent their headers and keep the body open.
    let holding0 = server.holding.load(Ordering::Relaxed);
    let opened = Instant::now();
    let (held, errors, keep, senders) = rt.block_on(async {
        let tasks: Vec<_> = (0..tunnels)
            .map(|_| {
                tokio::spawn(async move {
                    let io = TokioIo::new(dial(Route::Waypoint, Proto::H2).await);
                    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake::<_, Empty<Bytes>>(io)
                        .await
                        .expect("h2c handshake through the waypoint");
                    tokio::spawn(conn);
                    let reqs: Vec<_> = (0..streams)
                        .map(|_| {
                            let mut s = sender.clone();
                            tokio::spawn(async move {
                                let req = Request::get(format!("http://{HOST}/hold"))
                                    .body(Empty::new())
                                    .unwrap();
                                let r = tokio::time::timeout(Duration::from_secs(30), async {
                                    s.ready().await?;
                                    s.send_request(req).await
                                })
                                .await;
                                match r {
                                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => Ok(resp),
                                    Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
                                    Ok(Err(e)) => Err(e.to_string()),
                                    Err(_) => Err("no response headers in 30 s".to_owned()),
                                }
                            })
                        })
                        .collect();
                    let mut out = Vec::new();
                    for t in reqs {
                        out.push(t.await.unwrap());
                    }
                    (sender, out)
                })
            })
            .collect();
        let (mut held, mut errors, mut keep, mut senders) =
            (0usize, Vec::new(), Vec::new(), Vec::new());
        for t in tasks {
            let (sender, out) = t.await.unwrap();
            for o in out {
                match o {
                    Ok(resp) => {
                        held += 1;
                        keep.push(resp);
                    }
                    Err(e) => errors.push(e),
                }
            }
            senders.push(sender);
        }
        (held, errors, keep, senders)
    });
    let open_secs = opened.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let holding = server.holding.load(Ordering::Relaxed) - holding0;
    let wp_streams_kib = wp.mem_kib("VmRSS");
    let za_streams_kib = za.mem_kib("VmRSS");
    wp.check_alive();
    assert!(
        held > 0,
        "no idle stream could be held through the waypoint: {:?}",
        errors.first()
    );
    assert_eq!(
        holding as usize, held,
        "the server holds every stream the client holds"
    );
    let _ = release_tx.send(true);
    rt.block_on(async {
        for resp in keep {
            let _ = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
        }
        drop(senders);
    });
    let per_stream_kib = wp_streams_kib.saturating_sub(wp_idle_kib) as f64 / held as f64;

    // ------------------------------------------------------------------------------------------
    println!();
    for (proto, paths) in &results {
        let direct = &paths[0].lat;
        let (d50, d99) = (pct(direct, 0.5), pct(direct, 0.99));
        println!(
            "{}: 1 KB responses, {rate} requests/s over {conns} keep-alive connections, {} requests per path in {rounds} rounds",
            proto.name(),
            per_round * rounds
        );
        println!(
            "  {:<44} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "path", "p50 µs", "p99 µs", "p50 ×", "p99 ×", "+p50 µs", "+p99 µs"
        );
        for p in paths {
            let (p50, p99) = (pct(&p.lat, 0.5), pct(&p.lat, 0.99));
            let label = match p.route {
                Route::Direct => "direct (baseline)",
                Route::Nginx if *proto == Proto::H2 => "nginx, one L7 hop (h2c in, HTTP/1.1 out)",
                Route::Nginx => "nginx, one L7 hop (reference)",
                Route::Ztunnels => "ztunnels only: A → HBONE → B",
                Route::Waypoint => "waypoint: A → HBONE → waypoint → HBONE → B",
            };
            println!(
                "  {label:<44} {p50:>8.0} {p99:>8.0} {:>7.2}x {:>7.2}x {:>+9.0} {:>+9.0}",
                p50 / d50,
                p99 / d99,
                p50 - d50,
                p99 - d99
            );
            r.row(
                json!({"section": "latency", "protocol": proto.name(), "path": p.route.name(),
                "p50_us": p50, "p90_us": pct(&p.lat, 0.9), "p99_us": p99,
                "p999_us": pct(&p.lat, 0.999), "max_us": p.lat[p.lat.len() - 1], "p50_ratio": p50 / d50, "p99_ratio": p99 / d99,
                "added_p50_us": p50 - d50, "added_p99_us": p99 - d99, "requests": p.lat.len()}),
            );
        }
        let get = |route| paths.iter().find(|p| p.route == route).unwrap();
        let (z, w) = (&get(Route::Ztunnels).lat, &get(Route::Waypoint).lat);
        let hop50 = pct(w, 0.5) - pct(z, 0.5);
        let hop99 = pct(w, 0.99) - pct(z, 0.99);
        println!(
            "  {:<44} {:>8} {:>8} {:>8} {:>8} {hop50:>+9.0} {hop99:>+9.0}   target <= +1000 µs p99: {}",
            "the waypoint hop (waypoint − ztunnels only)",
            "",
            "",
            "",
            "",
            verdict(hop99 <= 1000.0)
        );
        r.row(json!({"section": "latency", "protocol": proto.name(), "path": "waypoint hop",
            "added_p50_us": hop50, "added_p99_us": hop99, "target": "<= +1000 us p99", "met": hop99 <= 1000.0}));
        if let Some(n) = paths.iter().find(|p| p.route == Route::Nginx) {
            let n50 = pct(&n.lat, 0.5) - d50;
            let n99 = pct(&n.lat, 0.99) - d99;
            println!(
                "  {:<44} {:>35.2}x {:>8.2}x   (added p50, p99)",
                "waypoint hop ÷ nginx hop",
                hop50 / n50,
                hop99 / n99
            );
        }
        println!();
    }

    let measured = (per_round * rounds) as f64;
    let per_req = |s: f64| s / measured * 1e6;
    let (w, n, z) = (
        Route::Waypoint as usize,
        Route::Nginx as usize,
        Route::Ztunnels as usize,
    );
    println!("CPU per request (µs; utime + stime from /proc over the measured phase)");
    println!("  {:<44} {:>9} {:>9}   target", "", "HTTP/1.1", "HTTP/2");
    let line = |label: &str, v: [f64; 2], target: &str| {
        println!("  {label:<44} {:>9.1} {:>9.1}   {target}", v[0], v[1]);
    };
    let wp_cpu = [per_req(cpu_wp[0][w]), per_req(cpu_wp[1][w])];
    line(
        "waypoint",
        wp_cpu,
        &format!("<= 100: {}", verdict(wp_cpu.iter().all(|&c| c <= 100.0))),
    );
    for (i, proto) in [Proto::H1, Proto::H2].iter().enumerate() {
        r.row(
            json!({"section": "cpu", "protocol": proto.name(), "process": "waypoint",
            "us_per_request": wp_cpu[i], "target": "<= 100", "met": wp_cpu[i] <= 100.0}),
        );
    }
    if ng.is_some() {
        let ng_cpu = [per_req(cpu_ng[0][n]), per_req(cpu_ng[1][n])];
        line("nginx (master + worker)", ng_cpu, "reference");
        println!(
            "  {:<44} {:>8.2}x {:>8.2}x",
            "waypoint ÷ nginx",
            wp_cpu[0] / ng_cpu[0],
            wp_cpu[1] / ng_cpu[1]
        );
        for (i, proto) in [Proto::H1, Proto::H2].iter().enumerate() {
            r.row(
                json!({"section": "cpu", "protocol": proto.name(), "process": "nginx",
                "us_per_request": ng_cpu[i], "waypoint_ratio": wp_cpu[i] / ng_cpu[i]}),
            );
        }
    }
    let zt_only = [per_req(cpu_zt[0][z]), per_req(cpu_zt[1][z])];
    let zt_wp = [per_req(cpu_zt[0][w]), per_req(cpu_zt[1][w])];
    line("both ztunnels, ztunnels-only path", zt_only, "");
    line("both ztunnels, waypoint path", zt_wp, "");
    for (i, proto) in [Proto::H1, Proto::H2].iter().enumerate() {
        r.row(
            json!({"section": "cpu", "protocol": proto.name(), "process": "both ztunnels",
            "ztunnels_only_us_per_request": zt_only[i], "waypoint_path_us_per_request": zt_wp[i]}),
        );
    }
    println!();

    let mib = |k: u64| k as f64 / 1024.0;
    println!("Memory");
    let mem = |r: &mut Report, label: &str, value: f64, unit: &str| {
        println!("  {label:<60} {value:>9.1} {unit}");
        r.row(json!({"section": "memory", "metric": label, "value": value, "unit": unit}));
    };
    mem(
        &mut r,
        "waypoint RSS, started, no traffic",
        mib(wp_started_kib),
        "MiB",
    );
    mem(
        &mut r,
        "waypoint RSS, idle after the request phases",
        mib(wp_idle_kib),
        "MiB",
    );
    mem(
        &mut r,
        "waypoint peak RSS (VmHWM) through the request phases",
        mib(wp_peak_kib),
        "MiB",
    );
    if let Some((rss, hwm)) = ng_kib {
        mem(
            &mut r,
            "nginx worker RSS after the request phases",
            mib(rss),
            "MiB",
        );
        mem(&mut r, "nginx worker peak RSS (VmHWM)", mib(hwm), "MiB");
    }
    println!(
        "  idle HTTP/2 streams held through the waypoint: {held} of {} ({tunnels} tunnels × {streams}), \
         opened in {open_secs:.1} s{}",
        tunnels * streams,
        if errors.is_empty() {
            String::new()
        } else {
            format!("; {} failed, first: {}", errors.len(), errors[0])
        }
    );
    r.row(
        json!({"section": "memory", "metric": "idle HTTP/2 streams held", "value": held,
        "asked": tunnels * streams, "tunnels": tunnels, "failed": errors.len(),
        "first_error": errors.first()}),
    );
    mem(
        &mut r,
        "waypoint RSS with them open",
        mib(wp_streams_kib),
        "MiB",
    );
    mem(
        &mut r,
        &format!("ztunnel A RSS with them open ({tunnels} tunnels)"),
        mib(za_streams_kib),
        "MiB",
    );
    mem(
        &mut r,
        "waypoint memory per idle stream",
        per_stream_kib,
        "KiB",
    );

    let out = std::env::var("BENCH_JSON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-l7.json").to_owned()
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let doc = json!({"benchmark": "waypoint: one L7 hop", "cores": cores, "rate": rate,
        "requests_per_path": per_round * rounds, "rounds": rounds, "connections": conns, "response_bytes": BODY,
        "nginx": nginx_bin.map(|p| p.display().to_string()), "results": r.rows});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {out}");
    drop(rt);
    drop((za, zb, wp, ng));
    let _ = std::fs::remove_dir_all(&dir);
}
