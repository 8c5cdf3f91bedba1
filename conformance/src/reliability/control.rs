//! The control plane goes away: killed for a while under steady load, or silently cut off
//! (packets dropped, nothing reset) by a relay the suite puts between the ztunnels and
//! istiod-lite.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::harness::{metric, open, ping, Mesh, OpenError, CLIENT, CONTROL, ECHO_PORT, RELAY_PORT};
use super::load::Load;

/// istiod-lite killed for `outage` under steady load; a DENY written meanwhile must be enforced
/// within a second of its return.
pub async fn outage(mesh: &mut Mesh, outage: Duration) -> Result<String, String> {
    let mut established = open(ECHO_PORT).await.map_err(|e| e.to_string())?;
    let load = Load::start(Duration::from_millis(20), 10).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.kill_control();
    tokio::time::sleep(outage / 2).await;
    std::fs::write(
        mesh.config_dir().join("deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-client, namespace: shop}\n\
         spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]}\n",
    )
    .map_err(|e| e.to_string())?;
    tokio::time::sleep(outage / 2).await;
    ping(&mut established, b"still there")
        .await
        .map_err(|e| format!("a tunnel opened before the outage broke during it: {e}"))?;
    let during = load.stop().await;
    if during.failed() > 0 {
        return Err(format!(
            "{} of {} new tunnels and {} of {} pings failed while istiod-lite was down: {:?}",
            during.new_failed,
            during.new_ok + during.new_failed,
            during.pings_failed,
            during.pings_ok + during.pings_failed,
            during.first_failures
        ));
    }
    let started = mesh.restart_control().await?;
    let ready = Instant::now();
    let enforced = loop {
        match open(ECHO_PORT).await {
            Err(OpenError::Refused(2)) => break ready.elapsed(),
            _ if ready.elapsed() > Duration::from_secs(15) => {
                return Err(format!(
                    "the DENY written during the outage was not enforced 15 s after istiod-lite came back\n{}",
                    mesh.tails()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    if enforced > Duration::from_secs(1) {
        return Err(format!(
            "the DENY written during the outage was enforced {:.2} s after istiod-lite was ready (want ≤ 1 s)",
            enforced.as_secs_f64()
        ));
    }
    Ok(format!(
        "{} new tunnels and {} pings on 10 long-lived ones during the outage, 0 failed; \
         the DENY written meanwhile enforced {:.2} s after istiod-lite was ready ({:.2} s after it was started)",
        during.new_ok,
        during.pings_ok,
        enforced.as_secs_f64(),
        (ready + enforced - started).as_secs_f64()
    ))
}

/// The path to istiod-lite silently drops everything: the client ztunnel must notice within
/// its keepalive bound (an HTTP/2 ping every 30 s given 10 s to answer: 40 s, plus the
/// suite's 0.25 s polling and the ping timer's phase), report it
/// (`ztunnel_xds_connected` 0), keep serving on what it has, and reconnect once the path
/// heals.
pub async fn partition(mesh: &Mesh, relay: &Relay) -> Result<String, String> {
    let connected = || async { metric(CLIENT, "ztunnel_xds_connected").await };
    wait_metric(&connected, 1.0, Duration::from_secs(10)).await?;
    relay.blackhole(true);
    let cut = Instant::now();
    let load = Load::start(Duration::from_millis(100), 2).await?;
    let detected = wait_metric(&connected, 0.0, Duration::from_secs(45))
        .await
        .map_err(|e| {
            format!(
                "the silent partition was not noticed: {e}\n{}",
                mesh.tails()
            )
        })?;
    let during = load.stop().await;
    if during.failed() > 0 {
        return Err(format!(
            "traffic failed during the partition: {:?}",
            during.first_failures
        ));
    }
    relay.blackhole(false);
    let healed = Instant::now();
    wait_metric(&connected, 1.0, Duration::from_secs(20))
        .await
        .map_err(|e| {
            format!(
                "no reconnection after the path healed: {e}\n{}",
                mesh.tails()
            )
        })?;
    Ok(format!(
        "noticed {:.1} s after the cut (keepalive: a ping every 30 s, 10 s to answer), reported by ztunnel_xds_connected 0; \
         {} new tunnels on the cached view meanwhile, 0 failed; reconnected {:.1} s after the path healed",
        (detected - cut).as_secs_f64(),
        during.new_ok,
        healed.elapsed().as_secs_f64()
    ))
}

/// Polls `read` until it gives `want`; returns when.
async fn wait_metric<F, Fut>(read: &F, want: f64, limit: Duration) -> Result<Instant, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match read().await {
            Ok(v) if v == want => return Ok(Instant::now()),
            Ok(v) => last = format!("value {v}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not {want} within {limit:?} ({last})"))
}

/// A TCP relay in front of istiod-lite that can stop moving bytes without closing or
/// resetting anything, as a network that drops packets would.
pub struct Relay {
    blackhole: watch::Sender<bool>,
}

impl Relay {
    pub async fn start() -> Result<Self, String> {
        let listener = TcpListener::bind((CONTROL, RELAY_PORT))
            .await
            .map_err(|e| format!("relay on {CONTROL}:{RELAY_PORT}: {e}"))?;
        let (blackhole, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(SocketAddr::new(CONTROL, 15012)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, watching.clone()), pump(sr, cw, watching));
                });
            }
        });
        Ok(Self { blackhole })
    }

    pub fn blackhole(&self, on: bool) {
        let _ = self.blackhole.send(on);
    }
}

/// Copies `from` to `to`, not reading while the blackhole is on (the bytes wait, unacknowledged
/// by anyone above TCP, as if dropped).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blackhole: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if blackhole.wait_for(|on| !on).await.is_err() {
            return;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = blackhole.wait_for(|on| *on) => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
