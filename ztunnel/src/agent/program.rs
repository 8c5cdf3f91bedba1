//! The node agent as a program (`ztunnel node-agent`): one per node, beside the node's ztunnel.
//!
//! It decides which pods of its node are in the mesh from the control plane's view: istiod-lite
//! marks a pod's Workload HBONE exactly when its namespace is labelled
//! `istio.io/dataplane-mode=ambient` and the pod does not opt out with `none`, so the agent
//! subscribes to the same delta xDS as ztunnel and never re-derives the rule. A pod's network
//! namespace comes from the CNI plugin (`ADD` carries `CNI_NETNS`) or, for pods that started
//! before the agent, from a scan of the node's namespaces by pod IP ([`super::discover`]).
//! Enrolment itself (rules, then `add` to ztunnel) is [`Agent`]'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use mesh_cni::AgentReply;
use meshcore::api::zds::WorkloadInfo;
use tokio::sync::mpsc;

use super::cni::{self, CniRequest};
use super::discover;
use super::rules::RuleOptions;
use super::server::{check_addresses, Agent, EnrollError, EnrolledPod};
use crate::config::watch::LocalFileSource;
use crate::config::xds::{XdsClient, XdsConfig};
use crate::control::ControlPlane;
use crate::inpod::netns::Netns;
use crate::state::{NetworkMode, Protocol, Snapshot, StateStore};

/// How long a CNI `ADD` waits for the pod to be decided: its Workload known and, if it is for
/// the mesh, the pod captured. A pod for the mesh that is not captured by then fails the ADD
/// (the runtime retries); one without a Workload yet starts and is enrolled when it arrives.
const ADD_WAIT: Duration = Duration::from_secs(5);
/// Pods in the mesh whose namespace is unknown trigger a scan at most this often.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// ztunnel node-agent: puts the node's enrolled pods in the mesh.
///
/// Installs the in-pod redirect rules and hands each enrolled pod's network namespace to the
/// node's ztunnel over the ZDS socket. Every flag can also be set through its environment
/// variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "ztunnel node-agent", version, about)]
pub struct AgentSettings {
    /// This node's name (the Workloads' `node`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The control plane's delta xDS address (istiod-lite, `host:15012`).
    #[arg(long, env = "XDS_ADDRESS", required_unless_present = "local_xds_path")]
    pub xds_address: Option<String>,

    /// The mesh root the control plane's certificate chains to.
    #[arg(long, env = "XDS_ROOT_CA", required_unless_present = "local_xds_path")]
    pub xds_root_ca: Option<PathBuf>,

    /// DNS name in the control plane's certificate.
    #[arg(long, env = "XDS_SERVER_NAME", default_value = meshcore::tls::control::ISTIOD_SERVER_NAME)]
    pub xds_server_name: String,

    /// Token presented on the xDS stream (the node's token).
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Instead of xDS: a local config file in ztunnel's format.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,

    #[arg(long, env = "TRUST_DOMAIN", default_value = meshcore::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// The ZDS socket the node's ztunnel connects to.
    #[arg(long, env = "INPOD_UDS", default_value = meshcore::zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,

    /// The socket the CNI plugin (`mesh-cni`) reports new pods on.
    #[arg(long, env = "CNI_AGENT_SOCKET", default_value = mesh_cni::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,

    /// Directories where the container runtime bind-mounts pods' network namespaces.
    #[arg(
        long,
        env = "NETNS_DIRS",
        value_delimiter = ',',
        default_value = "/var/run/netns"
    )]
    pub netns_dirs: Vec<PathBuf>,

    /// Also look for pods' namespaces through `/proc/*/ns/net`.
    #[arg(long, env = "SCAN_PROC", default_value_t = true, action = clap::ArgAction::Set)]
    pub scan_proc: bool,

    /// Redirect pods' DNS to ztunnel's DNS proxy on 15053 (ztunnel's `DNS_PROXY`, on by
    /// default; as Istio's ambient mode does by default).
    #[arg(long, env = "DNS_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub dns_capture: bool,

    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,

    /// Install the CNI plugin on the node and chain it into the node's CNI configuration (see
    /// `agent::install`); what the Helm chart's DaemonSet does. Off by default, so an agent run
    /// by hand never edits the host's CNI setup.
    #[arg(long, env = "CNI_INSTALL", default_value_t = false, action = clap::ArgAction::Set)]
    pub cni_install: bool,

    /// CNI_INSTALL: the node's CNI bin directory, as mounted in this container.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,

    /// CNI_INSTALL: the node's CNI configuration directory, as mounted in this container.
    #[arg(long, env = "CNI_NET_DIR", default_value = "/host/etc/cni/net.d")]
    pub cni_net_dir: PathBuf,

    /// CNI_INSTALL: the configuration file to chain into (default: the first one, in the
    /// kubelet's order).
    #[arg(long, env = "CNI_CONF_NAME")]
    pub cni_conf_name: Option<String>,

    /// CNI_INSTALL: the `mesh-cni` binary to copy (default: `mesh-cni` beside this program).
    #[arg(long, env = "CNI_PLUGIN_BINARY")]
    pub cni_plugin_binary: Option<PathBuf>,

    /// CNI_INSTALL: remove the plugin and its configuration entry when the agent exits, so an
    /// uninstalled mesh never blocks pod creation (pods created during an agent restart then
    /// start outside the mesh until the agent finds them).
    #[arg(long, env = "CNI_CLEANUP_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub cni_cleanup_on_exit: bool,

    /// Parse and validate the settings, report, and exit without starting.
    #[arg(long)]
    pub check_config: bool,
}

impl AgentSettings {
    /// Checks what flags alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        meshcore::identity::validate_trust_domain(&self.trust_domain).map_err(|e| e.to_string())?;
        if self.xds_address.is_some() && self.local_xds_path.is_some() {
            return Err("set either XDS_ADDRESS or LOCAL_XDS_PATH, not both".into());
        }
        if self.node_name.is_empty() {
            return Err("NODE_NAME is empty".into());
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| format!("RUST_LOG {:?}: {e}", self.log_level))?;
        if let Some(name) = &self.cni_conf_name {
            if name.contains('/') || name.is_empty() {
                return Err(format!(
                    "CNI_CONF_NAME {name:?}: a file name in CNI_NET_DIR"
                ));
            }
        }
        Ok(())
    }

    /// The CNI installer these settings describe, when CNI_INSTALL is on.
    pub fn installer(&self) -> Result<Option<super::install::Installer>, String> {
        if !self.cni_install {
            return Ok(None);
        }
        let plugin_binary = match &self.cni_plugin_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("CNI_PLUGIN_BINARY not set and this program's path: {e}"))?
                .with_file_name(super::install::PLUGIN),
        };
        Ok(Some(super::install::Installer {
            bin_dir: self.cni_bin_dir.clone(),
            net_dir: self.cni_net_dir.clone(),
            conf_name: self.cni_conf_name.clone(),
            plugin_binary,
            agent_socket: self.cni_socket.clone(),
        }))
    }
}

/// A running agent.
pub struct NodeAgent {
    pub agent: Arc<Agent>,
    pub state: Arc<StateStore>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The CNI installer, which cleans up after shutdown.
    installer: Option<tokio::task::JoinHandle<()>>,
    /// Ends the tasks and deletes the probe SNAT after shutdown.
    stopped: Option<tokio::task::JoinHandle<()>>,
}

impl NodeAgent {
    /// Stops serving. Enrolled pods stay enrolled (their rules stay; a restarted agent finds
    /// them again), as Istio's agent leaves pods alone when it is upgraded. The node's probe
    /// SNAT is deleted: until an agent runs again, probes to enrolled pods are captured like
    /// any other connection from outside the mesh.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// [`Self::shutdown`], then waits for the tasks to end, the probe SNAT to go and the CNI
    /// installer's clean-up.
    pub async fn shutdown_and_wait(mut self) {
        self.shutdown();
        if let Some(task) = self.stopped.take() {
            let _ = task.await;
        }
        if let Some(task) = self.installer.take() {
            let _ = task.await;
        }
    }
}

pub async fn start_agent(settings: AgentSettings) -> Result<NodeAgent, String> {
    let state = Arc::new(StateStore::new(&settings.trust_domain));
    let (shutdown, stop) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let status = Arc::new(Mutex::new(Default::default()));
    if let Some(path) = &settings.local_xds_path {
        let mut source =
            LocalFileSource::new(path, &settings.trust_domain, state.clone(), status.clone());
        source.poll().map_err(|e| format!("local config: {e}"))?;
        tokio::spawn(source.run(Duration::from_millis(250), stopped()));
    } else {
        let (address, root) = (
            settings.xds_address.clone().expect("clap: required"),
            settings.xds_root_ca.clone().expect("clap: required"),
        );
        let root = std::fs::read_to_string(&root)
            .map_err(|e| format!("mesh root {}: {e}", root.display()))?;
        let tls = meshcore::tls::control::control_client_config(&root)
            .map_err(|e| format!("mesh root: {e}"))?;
        let client = XdsClient::new(
            XdsConfig {
                control: ControlPlane {
                    address,
                    server_name: settings.xds_server_name.clone(),
                    tls,
                },
                node_id: format!("ztunnel~0.0.0.0~node-agent.{}~", settings.node_name),
                token_file: settings.token_file.clone(),
            },
            state.clone(),
            status,
        );
        tokio::spawn(client.run(stopped()));
    }

    let installer = settings
        .installer()?
        .map(|installer| tokio::spawn(installer.run(settings.cni_cleanup_on_exit, stopped())));
    // The node's namespace is the agent's own (a privileged DaemonSet with host networking).
    let node = Netns::open(std::path::Path::new("/proc/self/ns/net"))
        .map_err(|e| format!("the node's network namespace: {e}"))?;
    let agent = Agent::for_node(
        RuleOptions {
            dns_capture: settings.dns_capture,
        },
        node,
    )?;
    let zds = meshcore::zds::Listener::bind(&settings.zds_socket)
        .map_err(|e| format!("ZDS socket: {e}"))?;
    let cni_listener = cni::bind(&settings.cni_socket).map_err(|e| format!("CNI socket: {e}"))?;
    let (events_tx, events) = mpsc::channel(64);
    let tasks = [
        tokio::spawn(agent.clone().serve(zds)),
        tokio::spawn(cni::serve(cni_listener, events_tx)),
        tokio::spawn(
            Reconciler {
                settings: settings.clone(),
                agent: agent.clone(),
                state: state.clone(),
                known: HashMap::new(),
                discovered: HashMap::new(),
                last_scan: None,
                waiting: Vec::new(),
            }
            .run(events),
        ),
    ];
    let mut stop = shutdown.subscribe();
    let stopping = agent.clone();
    let stopped = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = tokio::task::block_in_place(|| stopping.remove_host_rules()) {
            tracing::warn!("{e}");
        }
    });
    tracing::info!(
        node = %settings.node_name,
        zds = %settings.zds_socket.display(),
        cni = %settings.cni_socket.display(),
        "node agent ready"
    );
    Ok(NodeAgent {
        agent,
        state,
        shutdown,
        installer,
        stopped: Some(stopped),
    })
}

/// A CNI `ADD` waiting for its pod's Workload.
struct WaitingAdd {
    pod: (String, String),
    until: Instant,
    reply: tokio::sync::oneshot::Sender<AgentReply>,
}

/// Keeps the enrolled set equal to "HBONE Workloads of this node whose namespace is known".
struct Reconciler {
    settings: AgentSettings,
    agent: Arc<Agent>,
    state: Arc<StateStore>,
    /// (namespace, pod) → namespace path and the addresses the CNI result gave, from the CNI
    /// plugin.
    known: HashMap<(String, String), (PathBuf, Vec<IpAddr>)>,
    /// Pod IP → namespace path and inode, from the last scan.
    discovered: HashMap<IpAddr, (PathBuf, u64)>,
    last_scan: Option<Instant>,
    waiting: Vec<WaitingAdd>,
}

impl Reconciler {
    async fn run(mut self, mut events: mpsc::Receiver<CniRequest>) {
        let mut changed = self.state.subscribe();
        let mut ready = self.agent.subscribe_ready();
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        loop {
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                r = ready.changed() => if r.is_err() { return },
                event = events.recv() => match event {
                    Some(request) => self.on_cni(request),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            let snap = self.state.load();
            tokio::task::block_in_place(|| self.reconcile(&snap));
            self.answer_waiting(&snap);
        }
    }

    fn on_cni(&mut self, CniRequest { event, reply }: CniRequest) {
        let pod = (event.pod_namespace.clone(), event.pod_name.clone());
        tracing::info!(command = %event.command, pod = %format!("{}/{}", pod.0, pod.1), netns = %event.netns, "CNI event");
        match event.command.as_str() {
            "ADD" if !event.netns.is_empty() => {
                let path = PathBuf::from(&event.netns);
                let reported: Vec<IpAddr> = event
                    .ips
                    .iter()
                    .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
                    .collect();
                // The namespace must hold the pod's addresses (its Workload's if the control
                // plane has them, else the CNI result's) before it replaces anything.
                let snap = self.state.load();
                let expected = snap
                    .workload_by_name(&pod.0, &pod.1)
                    .map(|e| e.workload.workload_ips.clone())
                    .filter(|ips| !ips.is_empty())
                    .unwrap_or_else(|| reported.clone());
                let name = format!("{}/{}", pod.0, pod.1);
                // Nothing to check yet (no Workload address, no CNI result): enrolment checks
                // once the control plane has the pod's address.
                let checked = tokio::task::block_in_place(|| {
                    if expected.is_empty() {
                        return Ok(());
                    }
                    let netns = Netns::open(&path)
                        .map_err(|e| format!("pod {name}: {}: {e}", path.display()))?;
                    check_addresses(&name, &path, &netns, &expected)
                });
                if let Err(error) = checked {
                    self.agent.count_address_mismatch();
                    tracing::warn!(pod = %name, netns = %path.display(), "CNI ADD refused: {error}");
                    let _ = reply.send(AgentReply {
                        ok: false,
                        error,
                        enrolled: false,
                    });
                    return;
                }
                self.known.insert(pod.clone(), (path, reported));
                self.waiting.push(WaitingAdd {
                    pod,
                    until: Instant::now() + ADD_WAIT,
                    reply,
                });
            }
            "ADD" => {
                let _ = reply.send(AgentReply {
                    ok: false,
                    error: "ADD without a network namespace".into(),
                    enrolled: false,
                });
            }
            _ => {
                self.known.remove(&pod);
                let _ = reply.send(AgentReply {
                    ok: true,
                    error: String::new(),
                    enrolled: false,
                });
            }
        }
    }

    /// Answers the `ADD`s whose pod is decided: its Workload is known (enrolled or not), or the
    /// wait is over.
    fn answer_waiting(&mut self, snap: &Snapshot) {
        let now = Instant::now();
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            let workload = snap.workload_by_name(&w.pod.0, &w.pod.1);
            let uid = workload.map(|e| e.workload.uid.as_str());
            let wanted = workload.is_some_and(|e| self.wanted(&e.workload));
            let enrolled = uid.is_some_and(|uid| self.agent.is_ready(uid));
            // Decided: not for the mesh, or in it and captured, or out of time.
            if (workload.is_some() && (!wanted || enrolled)) || now >= w.until {
                let pod = format!("{}/{}", w.pod.0, w.pod.1);
                // Fail closed: a pod that belongs in the mesh does not start uncaptured; the
                // runtime retries the ADD. One the control plane has not described yet starts,
                // and is enrolled as soon as its Workload arrives.
                let reply = if wanted && !enrolled {
                    let error = format!("pod {pod} is in the mesh but this node's ztunnel has not taken it yet (is ztunnel running? see the agent's log)");
                    tracing::warn!("{error}");
                    AgentReply {
                        ok: false,
                        error,
                        enrolled: false,
                    }
                } else {
                    if workload.is_none() {
                        tracing::warn!(%pod, "no Workload for the pod yet; it is enrolled as soon as one arrives");
                    }
                    AgentReply {
                        ok: true,
                        error: String::new(),
                        enrolled,
                    }
                };
                let _ = w.reply.send(reply);
            } else {
                still.push(w);
            }
        }
        self.waiting = still;
    }

    /// A namespace the CNI named for a pod does not hold its addresses: forget it, so a scan
    /// can find the pod's real one.
    fn forget_refused(&mut self, info: &WorkloadInfo) {
        self.known
            .remove(&(info.namespace.clone(), info.name.clone()));
    }

    /// Whether a Workload belongs in this node's mesh.
    fn wanted(&self, w: &crate::state::Workload) -> bool {
        w.node == self.settings.node_name
            && w.protocol == Protocol::HBONE
            && w.network_mode != NetworkMode::HostNetwork
    }

    /// One pass: un-enrols what should no longer be in, enrols what should.
    fn reconcile(&mut self, snap: &Snapshot) {
        // A namespace the CNI named and that is gone now: the pod went without a DEL.
        self.known.retain(|_, (path, _)| path.exists());
        let mine: Vec<_> = snap
            .config
            .workloads
            .iter()
            .filter(|w| self.wanted(w))
            .collect();
        // Where the pod's namespace is, and the addresses it must hold there: its Workload's,
        // or before the control plane has them, the CNI result's.
        let netns_of = |this: &Self, w: &crate::state::Workload| {
            this.known
                .get(&(w.namespace.clone(), w.name.clone()))
                .map(|(path, reported)| {
                    let ips = if w.workload_ips.is_empty() {
                        reported.clone()
                    } else {
                        w.workload_ips.clone()
                    };
                    (path.clone(), ips)
                })
                .or_else(|| {
                    w.workload_ips.iter().find_map(|ip| {
                        let (path, inode) = this.discovered.get(ip)?;
                        discover::still_names(path, *inode)
                            .then(|| (path.clone(), w.workload_ips.clone()))
                    })
                })
        };
        // Only pods with an address can be found by a scan.
        let unknown = mine
            .iter()
            .any(|w| !w.workload_ips.is_empty() && netns_of(self, w).is_none());
        if unknown && self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL) {
            self.discovered = discover::scan(&self.settings.netns_dirs, self.settings.scan_proc);
            self.last_scan = Some(Instant::now());
        }
        let mut desired: HashMap<String, EnrolledPod> = HashMap::new();
        for w in mine {
            // A pod with no address to check its namespace against waits for one.
            if let Some((netns, ips)) = netns_of(self, w).filter(|(_, ips)| !ips.is_empty()) {
                let pod = EnrolledPod {
                    uid: w.uid.clone(),
                    info: WorkloadInfo {
                        name: w.name.clone(),
                        namespace: w.namespace.clone(),
                        service_account: w.service_account.clone(),
                    },
                    netns,
                    ips,
                };
                desired.insert(pod.uid.clone(), pod);
            }
        }
        for current in self.agent.enrolled() {
            match desired.get(&current.uid) {
                Some(want) if *want == current => {}
                // Same pod, same namespace, new addresses: checked in place, no churn.
                Some(want) if want.same_place(&current) => {
                    if let Err(e) = self.agent.readdress(&current.uid, want.ips.clone()) {
                        tracing::warn!("{e}");
                        self.forget_refused(&want.info);
                    }
                }
                _ => {
                    tracing::info!(uid = %current.uid, "un-enrolling");
                    if let Err(e) = self.agent.unenroll(&current.uid) {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
        for (uid, pod) in desired {
            if self.agent.is_enrolled(&uid) {
                continue;
            }
            tracing::info!(%uid, netns = %pod.netns.display(), "enrolling");
            let info = pod.info.clone();
            match self.agent.enroll(pod) {
                Ok(()) => {}
                Err(EnrollError::Addresses(_)) => self.forget_refused(&info),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}
