//! A local cluster on one Linux machine: nodes and pods are network namespaces, pods'
//! containers run as real processes inside their pod's namespace, and the mesh's real
//! binaries run in between: istiod-lite on the cluster's network, and one ztunnel and one node
//! agent per node. Pods reach the agent the way they do on Kubernetes: through the `mesh-cni`
//! plugin, called with the pod's namespace before the pod's containers start.
//!
//! The network (one cluster per machine; every name starts with [`PREFIX`]):
//!
//! ```text
//!  mctl-fabric: br0 172.30.0.1/24 (istiod-lite :15012)
//!    ├── vn1 ── mctl-node-1: eth0 172.30.0.11, cni0 10.244.1.1/24 ── vpK ── pod eth0 10.244.1.x
//!    └── vn2 ── mctl-node-2: eth0 172.30.0.12, cni0 10.244.2.1/24 ── ...
//! ```
//!
//! Each node routes the other nodes' pod ranges through their `eth0` address, so `vnN` is the
//! node's link: everything a pod of node N sends to another node crosses it.

pub mod expose;
pub mod http;
pub mod manifests;
pub mod netns;
pub mod stand_in;
mod status;
pub mod up;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use status::print_status;
pub use up::{up, UpOptions};

/// Every namespace the local cluster makes starts with this.
pub const PREFIX: &str = "mctl-";
pub const FABRIC: &str = "mctl-fabric";
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
pub const DEFAULT_STATE_DIR: &str = "/run/meshctl";
/// The cluster DNS address pods' resolv.conf names (Kubernetes' kube-dns VIP). Nothing listens
/// there: the node agent's DNS capture hands every query to ztunnel's DNS proxy in the pod.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
/// The cluster's DNS suffix.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A process the cluster started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub netns: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub pid: u32,
    /// A pod's own resolv.conf, mounted over /etc/resolv.conf for this process.
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
}

impl Proc {
    fn start(
        netns: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
        resolv_conf: Option<PathBuf>,
    ) -> Result<Self, String> {
        let pid = netns::spawn(netns, &argv, &env, &log, resolv_conf.as_deref())?;
        Ok(Self {
            netns: netns.to_owned(),
            argv,
            env,
            log,
            pid,
            resolv_conf,
        })
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub index: u8,
    pub netns: String,
    /// Its address on the cluster network.
    pub ip: Ipv4Addr,
    /// The fabric side of its link (capture here to see what leaves the node).
    pub link: String,
    pub ztunnel: Proc,
    pub agent: Proc,
}

impl Node {
    pub fn pod_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub service_account: String,
    pub processes: Vec<Proc>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The waypoint (Gateway name) this pod runs, if it is a waypoint's pod.
    pub fn waypoint(&self) -> Option<&str> {
        let runs_waypoint = self
            .processes
            .iter()
            .any(|p| p.argv.first().is_some_and(|a| a.ends_with("/waypoint")));
        if !runs_waypoint {
            return None;
        }
        self.processes
            .iter()
            .flat_map(|p| &p.env)
            .find(|(k, _)| k == "WAYPOINT_NAME")
            .map(|(_, v)| v.as_str())
    }
}

/// A running local cluster, as `up` left it (saved in `<state dir>/cluster.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub control: Proc,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Ingress gateways and their addresses on the host.
    #[serde(default)]
    pub ingress: Vec<expose::Exposed>,
}

impl Cluster {
    fn state_file(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> Result<Self, String> {
        let file = Self::state_file(dir);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "no local cluster in {} ({e}); start one with `meshctl up -f DIR`",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        std::fs::write(Self::state_file(&self.dir), text).map_err(|e| e.to_string())
    }

    /// Whether `pod` is an ingress gateway's (it runs the waypoint binary too).
    pub fn is_ingress(&self, pod: &Pod) -> bool {
        self.ingress.iter().any(|g| g.target == pod.ip)
    }

    /// The directory istiod-lite reads the cluster's objects from.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// A pod by `namespace/name`, or by name when that is unique.
    pub fn pod(&self, name: &str) -> Result<&Pod, String> {
        let found: Vec<&Pod> = self
            .pods
            .iter()
            .filter(|p| p.key() == name || p.name == name)
            .collect();
        match found[..] {
            [one] => Ok(one),
            [] => Err(format!("no pod {name} in the local cluster")),
            _ => Err(format!("{name} names several pods; use namespace/name")),
        }
    }

    pub fn node(&self, name: &str) -> Result<&Node, String> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name} in the local cluster"))
    }

    /// Adds or replaces `<config>/<name>.yaml`, as `kubectl apply` would (atomically).
    pub fn apply(&self, name: &str, yaml: &str) -> Result<(), String> {
        manifests::parse(yaml).map_err(|e| format!("{name}: {e}"))?;
        let path = self.config_dir().join(format!("{name}.yaml"));
        let tmp = self.config_dir().join(format!(".{name}.yaml.tmp"));
        std::fs::write(&tmp, yaml).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
    }

    /// Removes what [`Cluster::apply`] added under `name`.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        std::fs::remove_file(self.config_dir().join(format!("{name}.yaml")))
            .map_err(|e| format!("{name}: {e}"))
    }

    /// A TCP exchange from inside a pod (as its application would make it): connects to
    /// `dst`, sends `payload`, half-closes and reads until the other side closes.
    pub fn tcp_exchange(
        &self,
        pod: &str,
        dst: SocketAddr,
        payload: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let pod = self.pod(pod).map_err(std::io::Error::other)?;
        let payload = payload.to_vec();
        netns::run_in(&pod.netns, move || {
            let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&payload)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            Ok(back)
        })
    }

    /// An HTTP GET from inside a pod: (status, body).
    pub fn http_get(
        &self,
        pod: &str,
        dst: SocketAddr,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let pod = self.pod(pod).map_err(std::io::Error::other)?;
        netns::http_get(&pod.netns, dst, path)
    }

    /// An HTTP request from inside a pod (any method, headers, HTTP/1.1 or HTTP/2).
    pub fn request(
        &self,
        pod: &str,
        dst: SocketAddr,
        req: &http::Request<'_>,
    ) -> std::io::Result<http::Answer> {
        let pod = self.pod(pod).map_err(std::io::Error::other)?;
        http::send(&pod.netns, dst, req)
    }

    /// The cluster IP given to a Service.
    pub fn service_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let docs = manifests::load(&self.config_dir().join("cluster.yaml")).ok()?;
        docs.iter().find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"] == namespace
        })?["spec"]["clusterIP"]
            .as_str()?
            .parse()
            .ok()
    }

    /// Waits until every pod accepts connections on `port` (checked over the pod's loopback,
    /// which capture leaves alone).
    pub fn wait_listening(&self, port: u16, limit: Duration) -> Result<(), String> {
        // Waypoint pods serve the mesh's ports, not the applications'.
        for pod in self.pods.iter().filter(|p| p.waypoint().is_none()) {
            up::wait_for(&format!("{} to listen on {port}", pod.key()), limit, || {
                netns::run_in(&pod.netns, move || {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_millis(200),
                    )
                })
                .is_ok()
            })?;
        }
        Ok(())
    }

    /// ztunnel's `/config_dump` on a node.
    pub fn ztunnel_dump(&self, node: &str) -> Result<serde_json::Value, String> {
        let node = self.node(node)?;
        let (_, body) =
            netns::http_get(&node.netns, ([127, 0, 0, 1], 15000).into(), "/config_dump")
                .map_err(|e| format!("{} ztunnel admin: {e}", node.name))?;
        serde_json::from_str(&body).map_err(|e| format!("{} config_dump: {e}", node.name))
    }

    /// ztunnel's Prometheus metrics on a node.
    pub fn ztunnel_metrics(&self, node: &str) -> Result<String, String> {
        let node = self.node(node)?;
        netns::http_get(&node.netns, SocketAddr::from((node.ip, 15020)), "/metrics")
            .map(|(_, body)| body)
            .map_err(|e| format!("{} ztunnel metrics: {e}", node.name))
    }

    /// Whether a node's ztunnel answers ready.
    pub fn ztunnel_ready(&self, node: &Node) -> bool {
        netns::http_get(
            &node.netns,
            SocketAddr::from((node.ip, 15021)),
            "/healthz/ready",
        )
        .is_ok_and(|(status, _)| status == 200)
    }

    /// Stops a node's ztunnel and starts it again; waits until it is ready.
    pub fn restart_ztunnel(&mut self, node: &str) -> Result<(), String> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| format!("no node {node}"))?;
        let old = self.nodes[i].ztunnel.clone();
        netns::stop(old.pid, Duration::from_secs(10));
        self.nodes[i].ztunnel = Proc::start(&old.netns, old.argv, old.env, old.log, None)?;
        up::wait_for(
            &format!("{node}'s ztunnel to be ready"),
            Duration::from_secs(30),
            || self.ztunnel_ready(&self.nodes[i]),
        )?;
        self.save()
    }
}

impl Cluster {
    /// Stops a node's agent and starts it again; waits until its CNI socket is back (the old
    /// one is removed first, so an existing file means the new agent made it).
    pub fn restart_agent(&mut self, node: &str) -> Result<(), String> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| format!("no node {node}"))?;
        let old = self.nodes[i].agent.clone();
        netns::stop(old.pid, Duration::from_secs(10));
        let socket = self.dir.join("nodes").join(node).join("cni.sock");
        let _ = std::fs::remove_file(&socket);
        self.nodes[i].agent = Proc::start(&old.netns, old.argv, old.env, old.log, None)?;
        up::wait_for(
            &format!("{node}'s agent to serve its CNI socket again"),
            Duration::from_secs(30),
            || socket.exists(),
        )
        .map_err(|e| format!("{e}\n{}", self.nodes[i].agent.log_tail(20)))?;
        self.save()
    }
}

/// Stops every process of the local cluster and removes its namespaces and state. Works from
/// the namespaces themselves, so it also cleans up after a crash or a lost state file.
pub fn down(dir: &Path) -> Result<usize, String> {
    let mut removed = 0;
    let namespaces = netns::list(PREFIX);
    // Pods first (their processes), then nodes, then the fabric.
    let mut ordered = namespaces.clone();
    ordered.sort_by_key(|n| {
        (
            !n.starts_with("mctl-pod-"),
            n.starts_with(FABRIC),
            n.clone(),
        )
    });
    // Everyone gets SIGTERM at once and a shared grace period, then SIGKILL.
    let pids: Vec<u32> = ordered
        .iter()
        .flat_map(|ns| netns::pids(ns))
        .map(|p| p as u32)
        .collect();
    netns::stop_all(&pids, Duration::from_secs(3));
    // Everything is tried; what failed is reported together.
    let mut failed = Vec::new();
    for ns in &ordered {
        match netns::ip(&["netns", "del", ns]) {
            Ok(()) => removed += 1,
            Err(e) => failed.push(e),
        }
    }
    if dir.join("cluster.json").exists() || dir.join("config").exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            failed.push(format!("{}: {e}", dir.display()));
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(format!("removing the local cluster: {}", failed.join("; ")))
    }
}

/// Where the mesh's binaries are: `MESH_BIN_DIR`, else beside the running executable (for a
/// test binary in `target/*/deps`, the directory above).
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Whether this process may build a cluster (root, and the tools it runs).
pub fn check_prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the local cluster creates network namespaces and nftables rules: run it as root (sudo)".into());
    }
    let missing: Vec<&str> = [("ip", "-V"), ("nft", "-v")]
        .into_iter()
        .filter(|(tool, arg)| std::process::Command::new(tool).arg(arg).output().is_err())
        .map(|(tool, _)| tool)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {}: install them with `apt-get install -y iproute2 nftables` (scripts/install-test-deps does)",
            missing.join(" and ")
        ));
    }
    Ok(())
}
