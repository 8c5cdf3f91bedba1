//! A walk through the foundation on loopback: a mesh CA issues SPIFFE certificates, one workload's
//! HBONE server accepts a tunnel from another over mutual TLS, a policy refuses a third identity,
//! and a client refuses a server that is not who it expected.
//!
//! Run: `cargo run -p meshcore --example hbone-demo`

use meshcore::copy::copy_bidirectional;
use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{ClientSettings, ConnectRequest, HboneClient, ServerSettings};
use meshcore::identity::SpiffeId;
use meshcore::pki::{CertificateAuthority, Validity, DEFAULT_WORKLOAD_TTL};
use meshcore::tls::{server_config, Credentials, TrustRoots, WorkloadCert};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = CertificateAuthority::generate_root(
        "cluster.local",
        Duration::from_secs(10 * 365 * 86400),
    )?;
    let roots = TrustRoots::from_pem(ca.root_pem())?;
    println!("mesh CA: self-signed ECDSA P-256 root for trust domain cluster.local");
    let issue = |id: &str| -> Result<Arc<Credentials>, Box<dyn std::error::Error>> {
        let id: SpiffeId = id.parse()?;
        let cert = WorkloadCert::issue(&ca, &id, Validity::from_now(DEFAULT_WORKLOAD_TTL))?;
        println!("  issued {id} (24 h, renew after half-life)");
        Ok(Credentials::new(cert, roots.clone()))
    };
    let httpbin = issue("spiffe://cluster.local/ns/default/sa/httpbin")?;
    let sleep = issue("spiffe://cluster.local/ns/default/sa/sleep")?;
    let intruder = issue("spiffe://cluster.local/ns/other/sa/intruder")?;

    // The application behind httpbin's tunnel endpoint: an echo server.
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // httpbin's HBONE endpoint, with a tiny policy: only namespace "default" may connect.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hbone_addr = listener.local_addr()?;
    let server = HboneServer::new(server_config(httpbin.clone()), ServerSettings::default());
    tokio::spawn(server.serve(
        listener,
        |inbound| async move {
            if inbound.peer.namespace() != "default" {
                println!(
                    "  server: DENY {} -> {} (401)",
                    inbound.peer, inbound.destination
                );
                inbound.reject(http::StatusCode::UNAUTHORIZED);
                return;
            }
            println!(
                "  server: ALLOW {} -> {} over mTLS",
                inbound.peer, inbound.destination
            );
            let Ok(mut upstream) = TcpStream::connect(inbound.destination).await else {
                inbound.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                return;
            };
            if let Ok(mut tunnel) = inbound.accept() {
                let _ = copy_bidirectional(&mut tunnel, &mut upstream).await;
            }
        },
        std::future::pending(),
    ));
    println!("httpbin HBONE endpoint on {hbone_addr}, application on {app_addr}\n");

    let client = HboneClient::new(ClientSettings::default());
    let request = |creds: &Arc<Credentials>, expected: &Arc<Credentials>| ConnectRequest {
        credentials: creds.clone(),
        expected: vec![expected.identity()],
        hbone_addr,
        target: app_addr,
        source: Some("127.0.0.1:50000".parse().expect("literal")),
        bind_ip: None,
        dialer: None,
        baggage: None,
        trace: None,
    };

    println!("1. sleep -> httpbin");
    let mut tunnel = client.connect(&request(&sleep, &httpbin)).await?;
    println!(
        "  client: tunnel open, server proved {}",
        tunnel.peer_identity()
    );
    tunnel.write_all(b"hello through HBONE").await?;
    tunnel.shutdown().await?;
    let mut reply = String::new();
    tunnel.read_to_string(&mut reply).await?;
    println!("  client: echoed {reply:?}\n");

    println!("2. intruder -> httpbin");
    match client.connect(&request(&intruder, &httpbin)).await {
        Err(e) => println!("  client: {e}\n"),
        Ok(_) => println!("  client: unexpectedly allowed\n"),
    }

    println!("3. sleep -> httpbin, but expecting the server to be spiffe://cluster.local/ns/default/sa/reviews");
    let mut wrong = request(&sleep, &httpbin);
    wrong.expected = vec!["spiffe://cluster.local/ns/default/sa/reviews".parse()?];
    match client.connect(&wrong).await {
        Err(e) => println!("  client: refused: {e}"),
        Ok(_) => println!("  client: unexpectedly connected"),
    }
    println!(
        "\npool: {} HTTP/2 connection(s) opened (one per source identity, never shared), {} tunnel(s) accepted",
        client
            .stats()
            .connections_opened
            .load(std::sync::atomic::Ordering::Relaxed),
        client
            .stats()
            .streams_opened
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
