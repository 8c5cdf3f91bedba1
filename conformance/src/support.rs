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

/// Whether an error is the mesh closing a connection (reset, or closed without an answer),
/// not a timeout or a missing route that would mean something else broke.
pub fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    ) || e.to_string().starts_with("not an HTTP answer")
}

/// Ok when the mesh refuses `from`'s request to `to`: the connection is closed without an
/// answer (a timeout or an unreachable address is an error, not a refusal).
pub fn refused(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<(), String> {
    match cluster.http_get(from, to, "/") {
        Ok((200, body)) => Err(format!(
            "{from} -> {to} was answered by {}",
            meshctl::demo::answered_by(&body)
        )),
        Ok((status, _)) => Err(format!("{from} -> {to}: HTTP {status}, not a refusal")),
        Err(e) if closed_by_peer(&e) => Ok(()),
        Err(e) => Err(format!("{from} -> {to}: {e} (not a refusal by the mesh)")),
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

/// Whether the pod is in the mesh: its node's ztunnel serves it and the agent's redirects are
/// in its namespace (they follow ztunnel's acknowledgement).
pub fn served(cluster: &Cluster, pod: &str) -> Result<bool, String> {
    let p = cluster.pod(pod)?;
    let dump = cluster.ztunnel_dump(&p.node)?;
    let by_ztunnel = dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["workload"].as_str() == Some(&p.key()));
    let netns = ztunnel::inpod::netns::Netns::open(&netns::path(&p.netns))
        .map_err(|e| format!("{}: {e}", p.netns))?;
    Ok(by_ztunnel && ztunnel::agent::rules::installed(&netns))
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
        self.exchange()
            .map_err(|e| format!("long-lived {}: {e}", self.what))
    }

    fn exchange(&mut self) -> std::io::Result<()> {
        let line = b"still here\n";
        let mut back = [0u8; 11];
        self.stream.write_all(line)?;
        self.stream.read_exact(&mut back)?;
        if &back != line {
            return Err(std::io::Error::other(format!("echoed {back:?}")));
        }
        Ok(())
    }

    /// Ok when the connection has been closed by the other side (not merely slow).
    pub fn closed(&mut self) -> Result<(), String> {
        match self.exchange() {
            Ok(()) => Err(format!("{} is still open", self.what)),
            Err(e) if closed_by_peer(&e) => Ok(()),
            Err(e) => Err(format!("{}: {e} (not closed by the mesh)", self.what)),
        }
    }
}

/// Brings up a local cluster of two nodes from one manifest file's text (replacing any other
/// local cluster).
pub fn up_from(
    name: &str,
    yaml: &str,
    state_dir: std::path::PathBuf,
    bin_dir: std::path::PathBuf,
) -> Result<Cluster, String> {
    up_with(name, yaml, state_dir, bin_dir, None)
}

/// [`up_from`], with a stand-in for containers whose images cannot run here.
pub fn up_with(
    name: &str,
    yaml: &str,
    state_dir: std::path::PathBuf,
    bin_dir: std::path::PathBuf,
    stand_in: Option<meshctl::cluster::stand_in::StandIn>,
) -> Result<Cluster, String> {
    let dir = std::env::temp_dir().join(format!("conformance-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).map_err(|e| e.to_string())?;
    let up = meshctl::cluster::up(&meshctl::cluster::UpOptions {
        manifests: dir.clone(),
        nodes: 2,
        state_dir,
        bin_dir,
        log_level: "info".into(),
        stand_in,
    });
    let _ = std::fs::remove_dir_all(&dir);
    up
}
