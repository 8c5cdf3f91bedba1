//! No byte lost, at scale: many tunnels held open at once through one ztunnel pair (what each
//! costs in memory and descriptors), and many concurrent transfers of random sizes with
//! half-closes in both orders, every byte checked against the sender's stream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::harness::{open, ping, Mesh, Pattern, ECHO_PORT, GENERATOR_PORT};

/// Tunnels opened at a time (the listen backlogs stay far from full).
const WAVE: usize = 200;

/// Opens `n` tunnels, holds them all, checks each still answers, and reports what holding
/// them cost the two ztunnels.
pub async fn hold(mesh: &Mesh, n: usize) -> Result<String, String> {
    let before = usage(mesh);
    let started = Instant::now();
    let mut tunnels: Vec<(usize, TcpStream)> = Vec::with_capacity(n);
    for wave in (0..n).collect::<Vec<_>>().chunks(WAVE) {
        let mut set = JoinSet::new();
        for &i in wave {
            set.spawn(async move {
                let mut t = open(ECHO_PORT)
                    .await
                    .map_err(|e| format!("tunnel {i}: {e}"))?;
                ping(&mut t, &(i as u64).to_be_bytes())
                    .await
                    .map_err(|e| format!("tunnel {i}: {e}"))?;
                Ok::<_, String>((i, t))
            });
        }
        while let Some(r) = set.join_next().await {
            tunnels.push(r.map_err(|e| e.to_string())??);
        }
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = usage(mesh);
    // Every tunnel still carries bytes both ways.
    let mut checked = 0;
    while !tunnels.is_empty() {
        let wave: Vec<_> = tunnels.drain(..tunnels.len().min(WAVE * 5)).collect();
        let mut set = JoinSet::new();
        for (i, mut t) in wave {
            set.spawn(async move {
                ping(&mut t, &(!(i as u64)).to_be_bytes())
                    .await
                    .map_err(|e| format!("held tunnel {i} after all were open: {e}"))
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())??;
            checked += 1;
        }
    }
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64;
    // One descriptor per tunnel and side: the SOCKS5 client's socket in A, the application's
    // in B (the HBONE connections are shared). Istio's ztunnel holds two per tunnel in all.
    for (side, fds) in [
        ("client", per(held.2 as u64, before.2 as u64)),
        ("server", per(held.3 as u64, before.3 as u64)),
    ] {
        if fds > 1.1 {
            return Err(format!(
                "the {side} ztunnel holds {fds:.2} descriptors per tunnel (want 1)"
            ));
        }
    }
    Ok(format!(
        "{checked} of {n} held (opened in {:.1} s); per tunnel: client ztunnel {:.1} KiB and {:.2} fds, \
         server ztunnel {:.1} KiB and {:.2} fds; RSS held {} / {} MiB",
        opened_in.as_secs_f64(),
        per(held.0, before.0),
        per(held.2 as u64, before.2 as u64),
        per(held.1, before.1),
        per(held.3 as u64, before.3 as u64),
        held.0 / 1024,
        held.1 / 1024,
    ))
}

/// (client RSS KiB, server RSS KiB, client fds, server fds)
fn usage(mesh: &Mesh) -> (u64, u64, usize, usize) {
    (
        mesh.client.rss_kib(),
        mesh.server.rss_kib(),
        mesh.client.fds(),
        mesh.server.fds(),
    )
}

/// `n` concurrent transfers of random sizes up to `max` bytes (one in ten exactly `max`):
/// half through the echo (the client sends, half-closes, and reads the same bytes back), half
/// from the generator (the client asks and half-closes at once; the server streams, then
/// closes). Every byte is compared with the sender's stream, and each side's end must follow.
pub async fn transfers(n: usize, max: u64, seed: u64) -> Result<String, String> {
    let started = Instant::now();
    let mut sizes = Pattern::new(seed);
    let mut set = JoinSet::new();
    let mut total = 0u64;
    for i in 0..n {
        let mut word = [0u8; 8];
        sizes.fill(&mut word);
        let size = if i % 10 == 0 {
            max
        } else {
            u64::from_le_bytes(word) % (max + 1)
        };
        total += size;
        let stream_seed = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        set.spawn(async move {
            let run = async {
                if i % 2 == 0 {
                    echo_transfer(size, stream_seed).await
                } else {
                    generated_transfer(size, stream_seed).await
                }
            };
            match tokio::time::timeout(Duration::from_secs(180), run).await {
                Ok(r) => r.map_err(|e| format!("transfer {i} ({size} bytes): {e}")),
                Err(_) => Err(format!(
                    "transfer {i} ({size} bytes): unfinished after 180 s"
                )),
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
            failures.push(e);
        }
    }
    let took = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        return Err(format!(
            "{} of {n} transfers failed; first: {}",
            failures.len(),
            failures[..failures.len().min(3)].join("; ")
        ));
    }
    Ok(format!(
        "{n} of {n} intact, 0 mismatches: {:.0} MiB each way in {took:.1} s",
        total as f64 / 1048576.0
    ))
}

async fn echo_transfer(size: u64, seed: u64) -> Result<(), String> {
    let t = open(ECHO_PORT).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = t.into_split();
    let send = async {
        let mut stream = Pattern::new(seed);
        let mut buf = vec![0u8; 32 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            stream.fill(&mut buf[..n]);
            w.write_all(&buf[..n])
                .await
                .map_err(|e| format!("sending: {e}"))?;
            left -= n as u64;
        }
        w.shutdown().await.map_err(|e| format!("half-closing: {e}"))
    };
    let (sent, received) = tokio::join!(send, receive(&mut r, size, seed));
    sent.and(received)
}

async fn generated_transfer(size: u64, seed: u64) -> Result<(), String> {
    let mut t = open(GENERATOR_PORT).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&size.to_be_bytes());
    head[8..].copy_from_slice(&seed.to_be_bytes());
    t.write_all(&head)
        .await
        .map_err(|e| format!("asking: {e}"))?;
    // Half-closed before a byte comes back: the server's stream must still arrive whole.
    t.shutdown()
        .await
        .map_err(|e| format!("half-closing: {e}"))?;
    receive(&mut t, size, seed).await
}

/// Reads exactly the `size` bytes of `seed`'s stream, then the end of the stream.
pub(super) async fn receive<R: AsyncReadExt + Unpin>(
    r: &mut R,
    size: u64,
    seed: u64,
) -> Result<(), String> {
    let mut expected = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| format!("receiving after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if got + n as u64 > size {
            return Err(format!(
                "{} bytes more than the {size} sent",
                got + n as u64 - size
            ));
        }
        expected.fill(&mut want[..n]);
        if let Some(at) = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            return Err(format!("byte {} differs", got + at as u64));
        }
        got += n as u64;
    }
    if got != size {
        return Err(format!("the stream ended after {got} of {size} bytes"));
    }
    Ok(())
}
