//! What the cases share: waiting for the mesh to converge, traffic from inside pods, and
//! reading ztunnel's metrics and config dumps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshctl::cluster::{netns, Cluster};
use meshctl::demo::label;

/// How long config changes get to reach the data path (istiod-lite polls its directory, then
/// pushes over xDS).
pub const CONVERGE: Duration = Duration::from_secs(10);

/// Retries `check` until it succeeds or `limit` passes; the error is the last one seen.
pub fn eventually<T>(
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => {
                return Err(format!("after {:.1}s: {e}", limit.as_secs_f64()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// An HTTP GET from `from` to `to:port`; Ok(body) on 200.
pub fn get(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<String, String> {
    match cluster.http_get(from, to, "/") {
        Ok((200, body)) => Ok(body),
        Ok((status, _)) => Err(format!("{from} -> {to}: HTTP {status}")),
        Err(e) => Err(format!("{from} -> {to}: {e}")),
    }
}

/// Ok when `from` cannot get an answer from `to`.
pub fn refused(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<(), String> {
    match cluster.http_get(from, to, "/") {
        Ok((200, body)) => Err(format!(
            "{from} -> {to} was answered by {}",
            meshctl::demo::answered_by(&body)
        )),
        _ => Ok(()),
    }
}

pub fn pod_addr(cluster: &Cluster, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::from((cluster.pod(pod).expect("pod exists").ip, port))
}

/// Sum of `istio_tcp_connections_opened_total` samples on `node` whose labels all match.
pub fn opened(cluster: &Cluster, node: &str, labels: &[(&str, &str)]) -> Result<u64, String> {
    let body = cluster.ztunnel_metrics(node)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|l| labels.iter().all(|(k, v)| label(l, k) == Some(v)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Whether the pod's node's ztunnel serves it (it is in the mesh and captured).
pub fn served(cluster: &Cluster, pod: &str) -> Result<bool, String> {
    let p = cluster.pod(pod)?;
    let dump = cluster.ztunnel_dump(&p.node)?;
    Ok(dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["workload"].as_str() == Some(&p.key())))
}

/// The principal of a service account, as metrics label it.
pub fn principal(namespace: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}")
}

/// A TCP connection held open from inside a pod to an echo port.
pub struct LongLived {
    stream: TcpStream,
    what: String,
}

impl LongLived {
    pub fn open(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<Self, String> {
        let pod = cluster.pod(from)?;
        let stream = netns::run_in(&pod.netns, move || {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        })
        .map_err(|e| format!("{from} -> {to}: {e}"))?;
        let mut c = Self {
            stream,
            what: format!("{from} -> {to}"),
        };
        c.ping()?;
        Ok(c)
    }

    /// Sends a line and reads it back.
    pub fn ping(&mut self) -> Result<(), String> {
        let line = b"still here\n";
        let mut back = [0u8; 11];
        self.stream
            .write_all(line)
            .and_then(|_| self.stream.read_exact(&mut back))
            .map_err(|e| format!("long-lived {}: {e}", self.what))?;
        if &back != line {
            return Err(format!("long-lived {}: echoed {back:?}", self.what));
        }
        Ok(())
    }
}
