//! HBONE tunnels over real loopback sockets and TLS: integrity, pooling, half-close, refusals.

use crate::support::*;
use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{ClientSettings, HboneClient, HboneError, ServerSettings};
use meshcore::tls::{client_config, server_config};
use ring::digest::{Context, SHA256};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

/// Writes `total` bytes of a seeded pattern, then half-closes; returns their SHA-256.
async fn send_pattern(w: &mut (impl AsyncWrite + Unpin), total: usize, seed: u8) -> Vec<u8> {
    let mut digest = Context::new(&SHA256);
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0usize;
    let mut counter = seed as u32;
    while sent < total {
        let n = CHUNK.min(total - sent);
        for b in chunk[..n].iter_mut() {
            counter = counter.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *b = (counter >> 16) as u8;
        }
        w.write_all(&chunk[..n]).await.unwrap();
        digest.update(&chunk[..n]);
        sent += n;
    }
    w.shutdown().await.unwrap();
    digest.finish().as_ref().to_vec()
}

/// Reads to EOF; returns (bytes, SHA-256).
async fn receive_all(r: &mut (impl AsyncRead + Unpin)) -> (usize, Vec<u8>) {
    let mut digest = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, digest.finish().as_ref().to_vec());
        }
        digest.update(&buf[..n]);
        total += n;
    }
}

/// A backend that sends `total` bytes while reading everything the client sends; reports both digests.
async fn sink_and_source(
    total: usize,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<((usize, Vec<u8>), Vec<u8>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let recv = tokio::spawn(async move { receive_all(&mut r).await });
        let sent = send_pattern(&mut w, total, 2).await;
        (recv.await.unwrap(), sent)
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_100_mb_each_way_intact() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let (backend, backend_task) = sink_and_source(TOTAL).await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let tunnel = client()
        .connect(&request(&creds, &server, backend))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let reader = tokio::spawn(async move { receive_all(&mut r).await });
    let sent_digest = send_pattern(&mut w, TOTAL, 1).await;
    let client_received = reader.await.unwrap();
    let ((backend_received, backend_received_digest), backend_sent_digest) =
        backend_task.await.unwrap();
    assert_eq!(backend_received, TOTAL);
    assert_eq!(
        backend_received_digest, sent_digest,
        "client → server bytes intact"
    );
    assert_eq!(
        client_received,
        (TOTAL, backend_sent_digest),
        "server → client bytes intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_200_concurrent_streams_on_two_connections() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let pool = client();
    let req = request(&creds, &server, echo);
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let (pool, req, barrier) = (pool.clone(), req.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut tunnel = pool.connect(&req).await.unwrap();
                assert_eq!(
                    tunnel.peer_identity(),
                    &id("spiffe://cluster.local/ns/app/sa/server")
                );
                let msg = format!("stream {i}");
                tunnel.write_all(msg.as_bytes()).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                tunnel.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg.as_bytes());
                // Hold every stream open until all 200 are up at once.
                barrier.wait().await;
                tunnel.shutdown().await.unwrap();
                let mut rest = Vec::new();
                tunnel.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        pool.stats().connections_opened.load(Ordering::Relaxed),
        2,
        "100 streams per connection"
    );
    assert_eq!(
        server
            .server
            .counters()
            .connections_accepted
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(
        server.server.counters().streams.load(Ordering::Relaxed),
        200
    );

    // Sequential tunnels reuse a pooled connection.
    for _ in 0..5 {
        let mut t = pool.connect(&req).await.unwrap();
        t.shutdown().await.unwrap();
    }
    assert_eq!(pool.stats().connections_opened.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn never_shares_a_connection_across_identities_and_closes_idle_ones() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let pool = HboneClient::new(ClientSettings {
        idle_timeout: Duration::from_millis(150),
        ..ClientSettings::default()
    });
    let alice = mesh.creds("spiffe://cluster.local/ns/app/sa/alice");
    let bob = mesh.creds("spiffe://cluster.local/ns/app/sa/bob");
    let a = pool.connect(&request(&alice, &server, echo)).await.unwrap();
    let b = pool.connect(&request(&bob, &server, echo)).await.unwrap();
    assert_eq!(pool.stats().connections_opened.load(Ordering::Relaxed), 2);
    assert_eq!(pool.pooled_connections(), 2);
    drop((a, b));
    // Busy connections stay; idle ones go after the timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.stats().connections_closed.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connections were not closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.pooled_connections(), 0);
    // The next tunnel dials afresh.
    pool.connect(&request(&alice, &server, echo)).await.unwrap();
    assert_eq!(pool.stats().connections_opened.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn half_close_each_way() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let pool = client();

    // Client half-closes first; the backend sees EOF and still answers.
    let backend_task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(b"got: ").await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
        // Second connection: the backend half-closes first, then keeps reading.
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut t = pool
        .connect(&request(&creds, &server, backend))
        .await
        .unwrap();
    t.write_all(b"question").await.unwrap();
    t.shutdown().await.unwrap();
    let mut answer = Vec::new();
    t.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"got: question");

    let mut t = pool
        .connect(&request(&creds, &server, backend))
        .await
        .unwrap();
    let mut banner = Vec::new();
    t.read_to_end(&mut banner).await.unwrap();
    assert_eq!(banner, b"banner", "EOF from the backend reaches the client");
    t.write_all(b"still talking").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(backend_task.await.unwrap(), b"still talking");
}

#[tokio::test]
async fn garbage_and_certless_tls_are_refused_without_disturbing_others() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let mut live = client()
        .connect(&request(&creds, &server, echo))
        .await
        .unwrap();
    live.write_all(b"before").await.unwrap();

    // Plain text on the HBONE port: the server closes that connection.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink))
        .await
        .expect("closed");
    assert!(
        !sink.starts_with(b"HTTP/1.1 200"),
        "no HTTP answer to plaintext"
    );

    // TLS without a client certificate: refused.
    let no_cert = rustls::ClientConfig::builder_with_provider(meshcore::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(no_cert))
        .connect(
            rustls_pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await;
    if let Ok(mut tls) = tls {
        // TLS 1.3: the server's refusal arrives after the client thinks it is done.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("answered");
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "certless client must be cut off, read {read:?}"
        );
    }
    assert_eq!(
        server
            .server
            .counters()
            .handshake_failures
            .load(Ordering::Relaxed),
        2
    );

    // The established tunnel never noticed.
    live.write_all(b" and after").await.unwrap();
    live.shutdown().await.unwrap();
    let mut back = Vec::new();
    live.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"before and after");
}

#[tokio::test]
async fn non_connect_request_gets_400_and_denial_gets_401() {
    let mesh = Mesh::new();
    let server_creds = mesh.creds("spiffe://cluster.local/ns/app/sa/server");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hbone = HboneServer::new(
        server_config(server_creds.clone()),
        ServerSettings::default(),
    );
    // An application policy: deny "bad" clients; answer the rest 503 if Istio's headers arrived.
    tokio::spawn(hbone.clone().serve(
        listener,
        |inbound| async move {
            let headers_ok = inbound.forwarded_for() == Some("127.0.0.1:40000".parse().unwrap())
                && inbound.headers.contains_key("traceparent");
            let status = if inbound.peer.service_account() == "bad" {
                http::StatusCode::UNAUTHORIZED
            } else if headers_ok {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                http::StatusCode::INTERNAL_SERVER_ERROR
            };
            inbound.reject(status);
        },
        std::future::pending(),
    ));
    let fwd = ForwardingServer {
        addr,
        server: hbone.clone(),
        creds: server_creds.clone(),
    };
    let target: SocketAddr = "127.0.0.1:1".parse().unwrap();

    let bad = mesh.creds("spiffe://cluster.local/ns/app/sa/bad");
    match client()
        .connect(&request(&bad, &fwd, target))
        .await
        .unwrap_err()
    {
        HboneError::Refused { status, .. } => assert_eq!(status, 401),
        other => panic!("expected 401, got {other}"),
    }
    let good = mesh.creds("spiffe://cluster.local/ns/app/sa/good");
    match client()
        .connect(&request(&good, &fwd, target))
        .await
        .unwrap_err()
    {
        HboneError::Refused { status, .. } => assert_eq!(status, 503),
        other => panic!("expected 503, got {other}"),
    }

    // A plain GET over an authenticated HTTP/2 connection.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(
        good.clone(),
        vec![server_creds.identity()],
    ))
    .connect(
        rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
        tcp,
    )
    .await
    .unwrap();
    let (mut sender, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let get = http::Request::get("https://127.0.0.1/").body(()).unwrap();
    let (response, _) = sender.send_request(get, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 400);
    // A CONNECT whose authority is not ip:port.
    let mut sender = sender.ready().await.unwrap();
    let bad_authority = http::Request::connect("example.com:80").body(()).unwrap();
    let (response, _) = sender.send_request(bad_authority, false).unwrap();
    assert_eq!(response.await.unwrap().status(), 400);
    assert_eq!(hbone.counters().bad_requests.load(Ordering::Relaxed), 2);
}

#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        meshcore::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_open_tunnels_and_pool_moves_to_a_new_server() {
    let mesh = Mesh::new();
    let echo = echo_server().await;
    let server_creds = mesh.creds("spiffe://cluster.local/ns/app/sa/server");
    let old = forwarding_server(server_creds.clone()).await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let pool = client();
    let mut long_lived = pool.connect(&request(&creds, &old, echo)).await.unwrap();
    long_lived.write_all(b"before drain;").await.unwrap();

    // The old server drains (GOAWAY) and a new one takes over its address, like a ztunnel restart.
    old.server.drain();
    let new_server = loop {
        if let Ok(listener) = TcpListener::bind(old.addr).await {
            break listener;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let replacement = serve_forwarding(new_server, server_creds.clone());
    // Give the GOAWAY time to reach the client.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A new tunnel does not get stuck on the draining connection: it lands on the new server.
    let mut fresh = pool.connect(&request(&creds, &old, echo)).await.unwrap();
    fresh.write_all(b"fresh").await.unwrap();
    fresh.shutdown().await.unwrap();
    let mut back = Vec::new();
    fresh.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"fresh");
    assert_eq!(replacement.counters().streams.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().connections_opened.load(Ordering::Relaxed), 2);

    // While that tunnel is open, the drained server still has its connection.
    let closed = tokio::time::timeout(Duration::from_millis(200), old.server.connections_closed());
    assert!(
        closed.await.is_err(),
        "a connection with an open tunnel counts as open"
    );

    // The tunnel opened before the drain still works to its end.
    long_lived.write_all(b" after drain").await.unwrap();
    long_lived.shutdown().await.unwrap();
    let mut back = Vec::new();
    long_lived.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"before drain; after drain");
    drop(long_lived);
    // Then the connection closes (GOAWAY was sent, no stream left), and a stopping process
    // waiting on this knows every byte was written.
    tokio::time::timeout(Duration::from_secs(5), old.server.connections_closed())
        .await
        .expect("the drained server's connections close once their tunnels end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_queued_behind_a_failed_dial_fail_fast() {
    let mesh = Mesh::new();
    // An address that accepts TCP but never speaks TLS: each dial waits for the connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let fake = ForwardingServer {
        addr: silent_addr,
        server: HboneServer::new(
            server_config(mesh.creds("spiffe://cluster.local/ns/a/sa/s")),
            ServerSettings::default(),
        ),
        creds: mesh.creds("spiffe://cluster.local/ns/a/sa/s"),
    };
    let pool = HboneClient::new(ClientSettings {
        connect_timeout: Duration::from_millis(300),
        ..ClientSettings::default()
    });
    let creds = mesh.creds("spiffe://cluster.local/ns/a/sa/c");
    let req = request(&creds, &fake, "127.0.0.1:9".parse().unwrap());
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (pool, req) = (pool.clone(), req.clone());
            tokio::spawn(async move { pool.connect(&req).await.unwrap_err() })
        })
        .collect();
    let mut shared = 0;
    for t in tasks {
        match t.await.unwrap() {
            HboneError::DialFailed(reason) => {
                assert!(reason.contains("timed out"), "{reason}");
                shared += 1;
            }
            HboneError::Timeout { .. } => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shared >= 1, "waiters reuse the failure");
    // Ten sequential timeouts would take 3 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}

/// An h2 connection to `addr` with `creds` (no HBONE client pool), and its driver's handle.
async fn raw_h2(
    addr: SocketAddr,
    creds: &Arc<meshcore::tls::Credentials>,
    server: &Arc<meshcore::tls::Credentials>,
) -> Result<
    (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
    String,
> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls =
        tokio_rustls::TlsConnector::from(client_config(creds.clone(), vec![server.identity()]))
            .connect(
                rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
    let (sender, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok((sender, tokio::spawn(conn)))
}

/// S6: a peer cannot make the server hold unbounded state: streams per connection are capped
/// (and advertised), connections beyond the cap are closed on accept without disturbing the
/// others, and a connection left without streams is sent GOAWAY.
#[tokio::test]
async fn streams_connections_and_idle_connections_are_bounded() {
    let mesh = Mesh::new();
    let server_creds = mesh.creds("spiffe://cluster.local/ns/app/sa/server");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hbone = HboneServer::new(
        server_config(server_creds.clone()),
        ServerSettings {
            max_concurrent_streams: 3,
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
            ..ServerSettings::default()
        },
    );
    // Each tunnel is held open for 2 s.
    tokio::spawn(hbone.clone().serve(
        listener,
        |inbound| async move {
            if let Ok(_tunnel) = inbound.accept() {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        },
        std::future::pending(),
    ));
    let client = mesh.creds("spiffe://cluster.local/ns/app/sa/client");

    // The limit is advertised; a well-behaved client queues beyond it.
    let (busy, busy_conn) = raw_h2(addr, &client, &server_creds).await.unwrap();
    let mut busy = busy.ready().await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let connect = http::Request::connect("127.0.0.1:1").body(()).unwrap();
        let (response, stream) = busy.send_request(connect, false).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        held.push(stream);
        // The server's SETTINGS have arrived by its first answer.
        assert_eq!(busy.current_max_send_streams(), 3);
        busy = busy.ready().await.unwrap();
    }

    // A second connection, left without streams: GOAWAY after the idle timeout.
    let (_idle, idle_conn) = raw_h2(addr, &client, &server_creds).await.unwrap();
    // A third, while two are served: closed on accept.
    assert!(raw_h2(addr, &client, &server_creds).await.is_err());
    assert_eq!(
        hbone.counters().connections_refused.load(Ordering::Relaxed),
        1
    );

    tokio::time::timeout(Duration::from_secs(3), idle_conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();
    assert_eq!(hbone.counters().idle_closed.load(Ordering::Relaxed), 1);
    // The busy one is still served (its streams are open), and a slot is free again.
    assert!(!busy_conn.is_finished());
    let (_again, _c) = raw_h2(addr, &client, &server_creds).await.unwrap();
    drop(held);
}

/// S10: the zero-copy tunnel relay ends a tunnel that moved nothing for its idle time.
#[tokio::test]
async fn an_idle_tunnel_relay_is_ended() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let tunnel = client()
        .connect(&request(&creds, &server, echo))
        .await
        .unwrap();
    // The application side of the relay: a local socket pair.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut side, _) = listener.accept().await.unwrap();
    let idle = Duration::from_millis(100);
    let relay = tokio::spawn(async move { tunnel.relay_idle(&mut side, idle).await });
    let (_, result) = tokio::time::timeout(Duration::from_millis(600), relay)
        .await
        .expect("the idle relay ended")
        .unwrap();
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    drop(app);
}
