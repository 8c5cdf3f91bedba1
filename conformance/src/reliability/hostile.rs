//! Hostile input on every port the mesh listens on, while a good client keeps tunnelling:
//! garbage, plain HTTP, a TLS ClientHello that never finishes, and many silent half-open
//! connections on each port of both ztunnels and istiod-lite; on the server ztunnel's 15008 an
//! HBONE stream flood from a client holding a valid mesh certificate (more CONNECT streams on
//! one connection than the advertised limit, each sent data it never reads back); on
//! istiod-lite's 15012 a flood of xDS streams with a token the mesh does not know.
//!
//! Every process must stay up and under its memory bound, the good client must see no failure,
//! and the refusals the mesh counts must show in its metrics (the row names those it does not).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshcore::pki::Validity;
use meshcore::tls::{Credentials, TrustRoots, WorkloadCert};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::harness::{http_get, metric, Mesh, Pattern, CLIENT, CONTROL, ECHO_PORT, SERVER};
use super::identities::{control_metric, control_plane, mesh_ca, spiffe, TD};
use super::load::Load;

/// Resident-memory bounds while under attack (debug builds; measured peaks are printed).
const ZTUNNEL_RSS_BOUND_MIB: u64 = 96;
const ISTIOD_RSS_BOUND_MIB: u64 = 64;
/// Connections of each kind but half-open per port.
const PROBES: usize = 10;
/// A TLS 1.3 ClientHello cut short: a record announcing 512 bytes, of which 27 are sent.
const SLOW_HELLO: [u8; 27] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7,
];

/// How hard: half-open connections per port, CONNECT streams on the one flooding connection,
/// how long every attacker holds on (above the 10 s handshake deadlines, to see them fire).
#[derive(Clone, Copy)]
pub struct Flood {
    pub half_open: usize,
    pub streams: usize,
    pub hold: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hbone,
    Capture,
    Socks,
    Http,
    Grpc,
}

struct Target {
    who: &'static str,
    addr: SocketAddr,
    kind: Kind,
    /// Connections made, and of those the server closed within the hold.
    made: usize,
    cut: usize,
    unconnected: usize,
}

fn targets() -> Vec<Target> {
    let mut out = Vec::new();
    for (who, ip) in [("client", CLIENT), ("server", SERVER)] {
        for (port, kind) in [
            (15001, Kind::Capture),
            (15006, Kind::Capture),
            (15008, Kind::Hbone),
            (15080, Kind::Socks),
            (15000, Kind::Http),
            (15020, Kind::Http),
            (15021, Kind::Http),
        ] {
            out.push((who, SocketAddr::new(ip, port), kind));
        }
    }
    out.push(("istiod-lite", SocketAddr::new(CONTROL, 15012), Kind::Grpc));
    out.push(("istiod-lite", SocketAddr::new(CONTROL, 15014), Kind::Http));
    out.into_iter()
        .map(|(who, addr, kind)| Target {
            who,
            addr,
            kind,
            made: 0,
            cut: 0,
            unconnected: 0,
        })
        .collect()
}

/// What one connection saw: connected or not, and whether the server closed it in time.
enum Probe {
    Unconnected,
    Cut,
    Open,
}

/// Connects (within 2 s: a port at its connection cap leaves the rest in its listen backlog),
/// sends `payload`, then holds the connection for `hold`, reading whatever comes.
async fn probe(addr: SocketAddr, payload: Vec<u8>, hold: Duration, gate: Arc<Semaphore>) -> Probe {
    let permit = gate.acquire_owned().await;
    let connected = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    drop(permit);
    let Ok(Ok(mut t)) = connected else {
        return Probe::Unconnected;
    };
    let until = Instant::now() + hold;
    if !payload.is_empty() && t.write_all(&payload).await.is_err() {
        return Probe::Cut;
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until.into(), t.read(&mut buf)).await {
            Err(_) => return Probe::Open,
            Ok(Ok(0)) | Ok(Err(_)) => return Probe::Cut,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sums of the counters the mesh exports for refusals, per process.
#[derive(Default, Clone)]
struct Counters {
    /// `<prefix>_refused_total` by `process listener/reason` (client, server, istiod-lite).
    refused: std::collections::BTreeMap<String, f64>,
    hbone_client: f64,
    hbone_server: f64,
    shed: f64,
    xds_refused: f64,
    failed_client: f64,
    failed_server: f64,
}

const FAILED: &str = "istio_tcp_connections_failed_total";

async fn counters() -> Result<Counters, String> {
    let hbone = "ztunnel_hbone_handshake_failures_total";
    Ok(Counters {
        hbone_client: metric(CLIENT, hbone).await?,
        hbone_server: metric(SERVER, hbone).await?,
        shed: metric(CLIENT, "ztunnel_connections_shed_total").await?
            + metric(SERVER, "ztunnel_connections_shed_total").await?,
        xds_refused: control_metric("istiod_lite_xds_refused_total").await?,
        failed_client: metric(CLIENT, FAILED).await?,
        failed_server: metric(SERVER, FAILED).await?,
        refused: refused_by_reason().await?,
    })
}

/// Every `ztunnel_refused_total` / `istiod_lite_refused_total` sample, keyed
/// `process listener/reason`.
async fn refused_by_reason() -> Result<std::collections::BTreeMap<String, f64>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (who, addr, prefix) in [
        (
            "client",
            SocketAddr::new(CLIENT, 15020),
            "ztunnel_refused_total{",
        ),
        (
            "server",
            SocketAddr::new(SERVER, 15020),
            "ztunnel_refused_total{",
        ),
        (
            "istiod-lite",
            SocketAddr::new(CONTROL, 15014),
            "istiod_lite_refused_total{",
        ),
    ] {
        let (_, body) = http_get(addr, "/metrics").await?;
        for line in body.lines().filter_map(|l| l.strip_prefix(prefix)) {
            let label = |k: &str| {
                line.split_once(&format!("{k}=\""))
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(v, _)| v.to_owned())
                    .unwrap_or_default()
            };
            let n = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            out.insert(
                format!("{who} {}/{}", label("listener"), label("reason")),
                n,
            );
        }
    }
    Ok(out)
}

pub async fn hostile(mesh: &mut Mesh, flood: Flood) -> Result<String, String> {
    let dns = match TcpStream::connect((CLIENT, 15053)).await {
        Ok(_) => "15053 bound".to_owned(),
        Err(e) => format!("15053 not bound in dedicated mode ({})", e.kind()),
    };
    let before = counters().await?;
    let load = Load::start(Duration::from_millis(20), 10).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let until = Instant::now() + flood.hold;
    let gate = Arc::new(Semaphore::new(512));
    let mut targets = targets();
    let mut garbage = vec![0u8; 4096];
    Pattern::new(0xbad).fill(&mut garbage);
    let payloads: [(&[u8], usize); 4] = [
        (&garbage, PROBES),
        (
            b"GET /debug/config_dump HTTP/1.1\r\nhost: x\r\n\r\n",
            PROBES,
        ),
        (&SLOW_HELLO, PROBES),
        (b"", flood.half_open),
    ];
    let mut set = JoinSet::new();
    for (payload, n) in payloads {
        for (i, t) in targets.iter().enumerate() {
            for _ in 0..n {
                let (addr, gate, payload) = (t.addr, gate.clone(), payload.to_vec());
                set.spawn(async move { (i, probe(addr, payload, flood.hold, gate).await) });
            }
        }
    }
    let ca = mesh_ca(mesh)?;
    let roots = TrustRoots::from_pem(ca.root_pem()).map_err(|e| e.to_string())?;
    let cert = WorkloadCert::issue(
        &ca,
        &spiffe(TD, "client"),
        Validity::from_now(Duration::from_secs(3600)),
    )
    .map_err(|e| e.to_string())?;
    let streams = tokio::spawn(stream_flood(
        Credentials::new(cert, roots),
        flood.streams,
        until,
    ));
    let bad_token = mesh.dir.join("flood.token");
    std::fs::write(&bad_token, "a-token-nobody-issued-0123456789\n").map_err(|e| e.to_string())?;
    let control = control_plane(ca.root_pem())?;
    let xds = tokio::spawn(async move {
        let channel = control.channel()?;
        let mut set = JoinSet::new();
        for _ in 0..PROBES * 5 {
            let (channel, token) = (channel.clone(), bad_token.clone());
            set.spawn(async move {
                let (tx, rx) = mpsc::channel(1);
                let request = meshcore::control::ads_request(rx, Some(&token))?;
                let mut client = meshcore::control::ads_client(channel);
                let answer = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.delta_aggregated_resources(request),
                )
                .await;
                drop(tx);
                match answer {
                    Ok(Err(status)) => Ok(status.message().to_owned()),
                    Ok(Ok(_)) => Err("an xDS stream with an unknown token was accepted".to_owned()),
                    Err(_) => Err("an xDS stream was left unanswered 5 s".to_owned()),
                }
            });
        }
        let mut refused = Vec::new();
        while let Some(r) = set.join_next().await {
            refused.push(r.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(refused)
    });

    // Sample memory while the attackers hold on.
    let mut peak = [0u64; 3];
    let mut sample = |mesh: &Mesh| {
        let control = mesh.control.as_ref().map_or(0, |p| p.rss_kib());
        for (p, now) in peak
            .iter_mut()
            .zip([mesh.client.rss_kib(), mesh.server.rss_kib(), control])
        {
            *p = (*p).max(now);
        }
    };
    while !set.is_empty() {
        sample(mesh);
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                done = set.join_next() => match done {
                    Some(Ok((i, p))) => {
                        let t = &mut targets[i];
                        match p {
                            Probe::Unconnected => t.unconnected += 1,
                            Probe::Cut => { t.made += 1; t.cut += 1 }
                            Probe::Open => t.made += 1,
                        }
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => break,
                },
            }
        }
    }
    let streams = streams.await.map_err(|e| e.to_string())??;
    let xds = xds.await.map_err(|e| e.to_string())??;
    // The good client runs on a little after the attackers left, then the dust settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sample(mesh);
    let counts = load.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = counters().await?;

    let mut problems = Vec::new();
    for (name, up) in [
        ("the client ztunnel", mesh.client.running()),
        ("the server ztunnel", mesh.server.running()),
        (
            "istiod-lite",
            mesh.control.as_mut().is_some_and(|p| p.running()),
        ),
    ] {
        if !up {
            problems.push(format!("{name} exited"));
        }
    }
    let mib = peak.map(|k| k / 1024);
    for (name, peak, bound) in [
        ("client ztunnel", mib[0], ZTUNNEL_RSS_BOUND_MIB),
        ("server ztunnel", mib[1], ZTUNNEL_RSS_BOUND_MIB),
        ("istiod-lite", mib[2], ISTIOD_RSS_BOUND_MIB),
    ] {
        if peak > bound {
            problems.push(format!(
                "{name} RSS peaked at {peak} MiB (bound {bound} MiB)"
            ));
        }
    }
    if counts.failed() > 0 {
        problems.push(format!(
            "the good client saw {} failed new tunnels and {} failed pings: {:?}",
            counts.new_failed, counts.pings_failed, counts.first_failures
        ));
    }
    // Every connection to a 15008 fails its handshake: garbage, plain text, the slow hello and
    // the half-open ones (by the deadline, or by their close at the end of the hold).
    let per_hbone = 3 * PROBES + flood.half_open;
    for (who, delta) in [
        ("client", after.hbone_client - before.hbone_client),
        ("server", after.hbone_server - before.hbone_server),
    ] {
        if (delta as usize) < per_hbone {
            problems.push(format!(
                "the {who} ztunnel counted {delta} refused HBONE handshakes (want ≥ {per_hbone})"
            ));
        }
    }
    let xds_delta = after.xds_refused - before.xds_refused;
    if (xds_delta as usize) < xds.len() {
        problems.push(format!(
            "{} xDS streams refused, istiod_lite_xds_refused_total moved {xds_delta}",
            xds.len()
        ));
    }
    if streams.accepted > streams.advertised as usize {
        problems.push(format!(
            "{} CONNECT streams accepted on one connection, {} advertised",
            streams.accepted, streams.advertised
        ));
    }
    if streams.accepted + streams.refused + streams.reset_other < flood.streams
        && streams.goaway.is_none()
    {
        problems.push(format!(
            "of {} CONNECTs only {} were answered or reset",
            flood.streams,
            streams.accepted + streams.refused + streams.reset_other
        ));
    }
    // Connections made straight to 15001/15006 have themselves as original destination: the
    // self-call refusal, counted as a failed connection when it is.
    let failed = [
        after.failed_client - before.failed_client,
        after.failed_server - before.failed_server,
    ];
    // 15001 counts its refusal as a failed connection; 15006 only logs it.
    let capture = format!("{FAILED} client +{} server +{}", failed[0], failed[1]);
    let uncounted_capture = if failed.iter().all(|&d| d as usize >= 2 * per_hbone) {
        ""
    } else if failed.iter().all(|&d| d as usize >= per_hbone) {
        "15006 own-listener refusals in the failed-connection count (they are under inbound/own_listener), "
    } else {
        "15001/15006 own-listener refusals in the failed-connection count, "
    };
    // Refusals before any workload is known: by listener and reason, per process.
    let refused: Vec<String> = after
        .refused
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.refused.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{k} +{d}"))
        })
        .collect();
    for want in [
        "client socks5/",
        "server socks5/",
        "client inbound/own_listener",
        "server inbound/own_listener",
        "client metrics/",
        "istiod-lite grpc/",
        "istiod-lite http/",
    ] {
        if !refused.iter().any(|r| r.starts_with(want)) {
            problems.push(format!("no refusal counted as {want}… ({refused:?})"));
        }
    }
    let ports: Vec<String> = targets
        .iter()
        .map(|t| {
            let port = t.addr.port();
            let lost = match t.unconnected {
                0 => String::new(),
                n => format!(" ({n} not connected in 2 s)"),
            };
            let label = match t.kind {
                Kind::Hbone => "HBONE",
                Kind::Capture => "capture",
                Kind::Socks => "SOCKS5",
                Kind::Http => "HTTP",
                Kind::Grpc => "gRPC",
            };
            format!("{} {port} {label} {}/{} cut{lost}", t.who, t.cut, t.made)
        })
        .collect();
    let summary = format!(
        "processes up; peak RSS client/server ztunnel {}/{} MiB (bound {ZTUNNEL_RSS_BOUND_MIB}), \
         istiod-lite {} MiB (bound {ISTIOD_RSS_BOUND_MIB}); good client {} new tunnels + {} pings, \
         {} failed; per port ({PROBES} garbage, {PROBES} plain HTTP, {PROBES} slow ClientHello, \
         {} half-open; cut = closed by the server within {} s of connecting): {}; {dns}; HBONE flood (valid \
         certificate): {} CONNECTs on one connection, {} advertised: {} answered 200, {} reset \
         REFUSED_STREAM, {} reset otherwise{}, {} KiB sent on each, replies never read \
         ({} KiB let in); {} xDS streams with an unknown token refused (\"{}\"); counted: \
         ztunnel_hbone_handshake_failures_total client +{} server +{}, \
         istiod_lite_xds_refused_total +{xds_delta}, ztunnel_connections_shed_total +{}, \
         {capture}, ztunnel_refused_total / istiod_lite_refused_total {{{}}}; not counted: \
         {uncounted_capture}CONNECT streams over the advertised limit (h2 refuses them itself)",
        mib[0],
        mib[1],
        mib[2],
        counts.new_ok,
        counts.pings_ok,
        counts.failed(),
        flood.half_open,
        flood.hold.as_secs(),
        ports.join(", "),
        flood.streams,
        streams.advertised,
        streams.accepted,
        streams.refused,
        streams.reset_other,
        streams
            .goaway
            .map(|c| format!(", GOAWAY code {c}"))
            .unwrap_or_default(),
        STREAM_DATA / 1024,
        streams.data_in / 1024,
        xds.len(),
        xds.first().map(String::as_str).unwrap_or(""),
        after.hbone_client - before.hbone_client,
        after.hbone_server - before.hbone_server,
        after.shed - before.shed,
        refused.join(", "),
    );
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{}\n{summary}\n{}",
            problems.join("; "),
            mesh.tails()
        ))
    }
}

/// Bytes sent on each accepted flood stream (the echo sends them back; they are never read).
const STREAM_DATA: usize = 64 * 1024;

#[derive(Default)]
struct StreamCounts {
    advertised: u32,
    accepted: usize,
    refused: usize,
    reset_other: usize,
    goaway: Option<u32>,
    data_in: usize,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await?;
    let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Ok((h[3], h[4], stream, payload))
}

enum Event {
    Accepted(u32),
    Ping(Vec<u8>),
}

/// `n` CONNECTs to the server's echo written at once on one HBONE connection, hand-framed so
/// the advertised stream limit is not honoured on the client side (HPACK literals, no
/// indexing). Each answered stream is sent [`STREAM_DATA`]; no WINDOW_UPDATE is ever sent, so
/// the echoed bytes pile up on the server's side. Holds everything until `until`.
async fn stream_flood(
    creds: Arc<Credentials>,
    n: usize,
    until: Instant,
) -> Result<StreamCounts, String> {
    let config = meshcore::tls::client_config(creds, vec![spiffe(TD, "server")]);
    let tcp = TcpStream::connect((SERVER, 15008))
        .await
        .map_err(|e| format!("flood connect: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(SERVER.into()), tcp)
        .await
        .map_err(|e| format!("flood TLS: {e}"))?;
    let io = |e: std::io::Error| format!("flood: {e}");
    tls.write_all(PREFACE).await.map_err(io)?;
    tls.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .map_err(io)?;
    let mut counts = StreamCounts {
        advertised: u32::MAX,
        ..StreamCounts::default()
    };
    loop {
        let (kind, flags, _, payload) = read_frame(&mut tls).await.map_err(io)?;
        if kind == SETTINGS && flags & ACK == 0 {
            for entry in payload.chunks_exact(6) {
                if u16::from_be_bytes([entry[0], entry[1]]) == 0x3 {
                    counts.advertised =
                        u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                }
            }
            break;
        }
    }
    let IpAddr::V4(server) = SERVER else {
        unreachable!()
    };
    let authority = format!("{server}:{ECHO_PORT}");
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    let mut burst = frame(SETTINGS, ACK, 0, &[]);
    for i in 0..n as u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    tls.write_all(&burst).await.map_err(io)?;

    let (mut r, mut w) = tokio::io::split(tls);
    let (events, mut next) = mpsc::unbounded_channel();
    let reader = async move {
        while let Ok(Ok((kind, flags, stream, payload))) =
            tokio::time::timeout_at(until.into(), read_frame(&mut r)).await
        {
            match kind {
                // :status 200 is the static table's entry 8.
                HEADERS if payload.first() == Some(&0x88) => {
                    counts.accepted += 1;
                    let _ = events.send(Event::Accepted(stream));
                }
                HEADERS => counts.reset_other += 1,
                RST_STREAM if payload == [0, 0, 0, 7] => counts.refused += 1,
                RST_STREAM => counts.reset_other += 1,
                GOAWAY if payload.len() >= 8 => {
                    counts.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]))
                }
                PING if flags & ACK == 0 => {
                    let _ = events.send(Event::Ping(payload));
                }
                DATA => counts.data_in += payload.len(),
                _ => {}
            }
        }
        counts
    };
    let writer = async move {
        let chunk = vec![0x5a; 16 * 1024];
        let run = async {
            while let Some(event) = next.recv().await {
                let out = match event {
                    Event::Ping(p) => frame(PING, ACK, 0, &p),
                    Event::Accepted(id) => {
                        let mut out = Vec::with_capacity(STREAM_DATA + 64);
                        for _ in 0..STREAM_DATA / chunk.len() {
                            out.extend(frame(DATA, 0, id, &chunk));
                        }
                        out
                    }
                };
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout_at(until.into(), run).await;
        w
    };
    let (counts, _w) = tokio::join!(reader, writer);
    Ok(counts)
}
