//! Certificates that expire while traffic runs, and a ztunnel told to stop while tunnels are
//! busy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::harness::{http_get, open, Mesh, Pattern, CONTROL, ECHO_PORT};
use super::load::Load;

/// Steady load for `run` on certificates of `ttl` (renewed at half-life by both ztunnels):
/// nothing may fail, and renewals must have happened.
pub async fn rotation(mesh: &Mesh, ttl: Duration, run: Duration) -> Result<String, String> {
    let issued_before = issued().await?;
    let load = Load::start(Duration::from_millis(20), 20).await?;
    tokio::time::sleep(run).await;
    let counts = load.stop().await;
    let renewed = issued().await? - issued_before;
    if counts.failed() > 0 {
        return Err(format!(
            "{} of {} new tunnels and {} of {} pings failed across rotations: {:?}\n{}",
            counts.new_failed,
            counts.new_ok + counts.new_failed,
            counts.pings_failed,
            counts.pings_ok + counts.pings_failed,
            counts.first_failures,
            mesh.tails()
        ));
    }
    // Two identities, each renewed every ttl/2.
    let expected = (run.as_secs_f64() / (ttl.as_secs_f64() / 2.0)) as u64 * 2;
    if renewed + 2 < expected {
        return Err(format!(
            "only {renewed} certificates issued in {run:?} of {ttl:?} certificates (expected about {expected})"
        ));
    }
    Ok(format!(
        "{} new tunnels and {} pings on 20 long-lived tunnels over {} s, 0 failed, across {renewed} certificate renewals",
        counts.new_ok,
        counts.pings_ok,
        run.as_secs()
    ))
}

async fn issued() -> Result<u64, String> {
    let (_, body) = http_get(SocketAddr::new(CONTROL, 15014), "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("istiod_lite_certificates_issued_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "istiod_lite_certificates_issued_total not on istiod-lite's /metrics".into())
}

/// Which ztunnel gets SIGTERM.
#[derive(Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

/// `n` tunnels each streaming for about `stream` (16 KiB every 100 ms through the echo, every
/// byte checked); SIGTERM to one ztunnel a second in. Every tunnel must finish intact within
/// the drain deadline, and the process must then exit.
pub async fn drain(
    mesh: &mut Mesh,
    side: Side,
    n: usize,
    stream: Duration,
) -> Result<String, String> {
    const CHUNK: usize = 16 * 1024;
    let chunks = (stream.as_millis() / 100) as usize;
    let mut set = JoinSet::new();
    for i in 0..n {
        let t = open(ECHO_PORT)
            .await
            .map_err(|e| format!("tunnel {i}: {e}"))?;
        set.spawn(async move {
            let (mut r, mut w) = t.into_split();
            let seed = 0xd7a1_u64 + i as u64;
            let send = async {
                let mut p = Pattern::new(seed);
                let mut buf = vec![0u8; CHUNK];
                for _ in 0..chunks {
                    p.fill(&mut buf);
                    w.write_all(&buf)
                        .await
                        .map_err(|e| format!("sending: {e}"))?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                w.shutdown().await.map_err(|e| format!("half-closing: {e}"))
            };
            let (sent, got) = tokio::join!(
                send,
                super::scale::receive(&mut r, (CHUNK * chunks) as u64, seed)
            );
            sent.and(got).map_err(|e| format!("tunnel {i}: {e}"))
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let process = match side {
        Side::Client => &mut mesh.client,
        Side::Server => &mut mesh.server,
    };
    process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
            failures.push(e);
        }
    }
    let finished = signalled.elapsed();
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    while process.running() && Instant::now() < exit_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = !process.running();
    let exited_after = signalled.elapsed();
    if !failures.is_empty() {
        return Err(format!(
            "{} of {n} in-flight tunnels broke after SIGTERM; first: {}\n{}",
            failures.len(),
            failures[..failures.len().min(3)].join("; "),
            mesh.tails()
        ));
    }
    if !exited {
        return Err("the ztunnel had not exited 10 s after its tunnels finished".into());
    }
    Ok(format!(
        "{n} tunnels in flight at SIGTERM, all intact, the last done {:.1} s after it; the process exited {:.1} s after it",
        finished.as_secs_f64(),
        exited_after.as_secs_f64()
    ))
}
