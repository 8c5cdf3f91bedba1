//! The pods a node's ztunnel serves, as handed over by the node agent.
//!
//! Each pod gets its own [`Proxy`] (its identity, its certificate, its drain) and its own
//! listeners opened inside its network namespace: 15008 (HBONE), 15006 (plaintext inbound),
//! 15001 (captured outbound) on all addresses, 15080 (SOCKS5, when enabled) on the pod's
//! loopback. Config, certificates, metrics and the HBONE client pool are shared by all pods
//! of the node.
//! Removing a pod stops its listeners and drains its connections in the background.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{HboneClient, ServerSettings};
use meshcore::zds::{Conn, Request};

use super::netns::Netns;
use crate::app::ports;
use crate::certs::CertManager;
use crate::dns::resolved::ResolvedNames;
use crate::metrics::Metrics;
use crate::proxy::{self, Drain, Listeners, Proxy};
use crate::settings::WorkloadInfo;
use crate::state::StateStore;

/// What every pod's proxy shares on a node.
#[derive(Clone)]
pub struct NodeContext {
    pub trust_domain: String,
    pub cluster_id: String,
    /// The cluster's DNS suffix, for the DNS proxy's short names.
    pub cluster_domain: String,
    pub state: Arc<StateStore>,
    pub certs: Arc<CertManager>,
    pub hbone: HboneClient,
    pub metrics: Arc<Metrics>,
    pub socket_mark: Option<u32>,
    /// The DNS proxy's upstreams; `None`: no DNS proxy in the pods.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// `RELAY_IDLE_TIMEOUT`.
    pub relay_idle: std::time::Duration,
    /// `UNSTABLE_ENABLE_SOCKS5`: SOCKS5 on each pod's 127.0.0.1:15080.
    pub socks5: bool,
    /// `HBONE_STREAM_WINDOW` / `HBONE_CONNECTION_WINDOW` of each pod's 15008.
    pub windows: meshcore::hbone::Windows,
    /// `EGRESS_FQDN_MIN_TTL`: how long a resolved name allows its addresses at least.
    pub fqdn_min_ttl: std::time::Duration,
}

struct Pod {
    netns_inode: u64,
    proxy: Arc<Proxy>,
    hbone_server: Arc<HboneServer>,
}

pub struct Pods {
    ctx: NodeContext,
    pods: Mutex<BTreeMap<String, Pod>>,
}

impl Pods {
    pub fn new(ctx: NodeContext) -> Self {
        Self {
            ctx,
            pods: Mutex::default(),
        }
    }

    pub fn uids(&self) -> Vec<String> {
        self.pods
            .lock()
            .expect("pods lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Every pod served: (uid, proxy).
    pub fn list(&self) -> Vec<(String, Arc<Proxy>)> {
        self.pods
            .lock()
            .expect("pods lock")
            .iter()
            .map(|(uid, p)| (uid.clone(), p.proxy.clone()))
            .collect()
    }

    /// Every pod's HBONE server (shutdown waits for their connections to close).
    pub fn servers(&self) -> Vec<Arc<HboneServer>> {
        self.pods
            .lock()
            .expect("pods lock")
            .values()
            .map(|p| p.hbone_server.clone())
            .collect()
    }

    /// Stops every pod (shutdown): listeners close, connections drain.
    pub fn remove_all(&self) {
        for uid in self.uids() {
            self.remove(&uid);
        }
    }

    /// The proxy serving a pod.
    pub fn proxy(&self, uid: &str) -> Option<Arc<Proxy>> {
        self.pods
            .lock()
            .expect("pods lock")
            .get(uid)
            .map(|p| p.proxy.clone())
    }

    /// Starts serving a pod. The same pod in the same namespace again is a no-op (the agent
    /// re-sends pods after a reconnect); the same uid with another namespace replaces it.
    pub async fn add(&self, uid: &str, workload: WorkloadInfo, netns: Netns) -> Result<(), String> {
        if let Some(existing) = self.pods.lock().expect("pods lock").get(uid) {
            if existing.netns_inode == netns.inode {
                return Ok(());
            }
        }
        self.remove(uid);
        let identity = workload
            .identity(&self.ctx.trust_domain)
            .map_err(|e| format!("pod {uid}: {e}"))?;
        let creds = self.ctx.certs.credentials(&identity).await?;
        let hbone_server = HboneServer::new(
            meshcore::tls::server_config(creds),
            ServerSettings {
                windows: self.ctx.windows,
                ..ServerSettings::default()
            },
        );
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mark = self.ctx.socket_mark;
        let listen = |ip: IpAddr, port: u16, what: &str| {
            netns
                .listen(SocketAddr::new(ip, port), mark)
                .map_err(|e| format!("pod {uid} ({netns:?}): {what} listener on {port}: {e}"))
        };
        let listeners = Listeners {
            hbone: listen(any, ports::HBONE, "HBONE")?,
            plaintext: listen(any, ports::INBOUND_PLAINTEXT, "inbound plaintext")?,
            outbound: listen(any, ports::OUTBOUND, "outbound")?,
            socks5: match self.ctx.socks5 {
                true => Some(listen(Ipv4Addr::LOCALHOST.into(), ports::SOCKS5, "SOCKS5")?),
                false => None,
            },
        };
        // DNS on the pod's loopback (where the capture rules' redirect delivers).
        let dns_sockets = match &self.ctx.dns_upstreams {
            Some(_) => {
                let at = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), crate::dns::PORT);
                let udp = netns
                    .udp(at, mark)
                    .map_err(|e| format!("pod {uid}: DNS (UDP) on {at}: {e}"))?;
                Some((udp, listen(at.ip(), crate::dns::PORT, "DNS")?))
            }
            None => None,
        };
        let proxy = Arc::new(Proxy {
            workload: workload.clone(),
            identity: identity.clone(),
            cluster_id: self.ctx.cluster_id.clone(),
            state: self.ctx.state.clone(),
            certs: self.ctx.certs.clone(),
            hbone: self.ctx.hbone.clone(),
            metrics: self.ctx.metrics.clone(),
            drain: Drain::default(),
            bind_ip: None,
            socket_mark: mark,
            listen_ip: any,
            denials: Default::default(),
            inbound: Default::default(),
            netns: Some(Arc::new(netns)),
            relay_idle: self.ctx.relay_idle,
            socks5: self.ctx.socks5,
            own_dials: Default::default(),
            resolved: Arc::new(ResolvedNames::new(self.ctx.fqdn_min_ttl)),
        });
        self.ctx
            .state
            .add_served(&workload.namespace, &workload.name);
        if let (Some(upstreams), Some((udp, tcp))) = (&self.ctx.dns_upstreams, dns_sockets) {
            let ns = proxy.netns.clone().expect("node mode");
            let dns = Arc::new(crate::dns::DnsProxy {
                state: self.ctx.state.clone(),
                upstreams: upstreams.clone(),
                netns: Some(ns),
                mark,
                namespace: Some(workload.namespace.clone()),
                domain: self.ctx.cluster_domain.clone(),
                remember: Some(crate::dns::Remember {
                    namespace: workload.namespace.clone(),
                    name: workload.name.clone(),
                    names: proxy.resolved.clone(),
                }),
            });
            tokio::spawn(crate::dns::serve_udp(udp, dns.clone(), proxy.drain.clone()));
            tokio::spawn(crate::dns::serve_tcp(tcp, dns, proxy.drain.clone()));
        }
        proxy::serve(proxy.clone(), hbone_server.clone(), listeners);
        tracing::info!(%uid, workload = %format!("{}/{}", workload.namespace, workload.name), %identity, "pod added");
        self.pods.lock().expect("pods lock").insert(
            uid.to_owned(),
            Pod {
                netns_inode: proxy.netns.as_ref().map_or(0, |n| n.inode),
                proxy,
                hbone_server,
            },
        );
        Ok(())
    }

    /// Stops serving a pod: its listeners close now and it takes no new connections. Its
    /// established connections are not cut: a pod leaving the mesh keeps them (they end when
    /// either side closes; when the pod itself is deleted, its processes' sockets close and
    /// take them down). Shutdown cuts whatever is left at its deadline.
    pub fn remove(&self, uid: &str) -> bool {
        let mut pods = self.pods.lock().expect("pods lock");
        let Some(pod) = pods.remove(uid) else {
            return false;
        };
        // The last pod with this identity gone: stop renewing its certificate (the CA would
        // refuse it, forever).
        let identity = &pod.proxy.identity;
        if !pods.values().any(|p| p.proxy.identity == *identity) {
            self.ctx.certs.forget(identity);
        }
        drop(pods);
        pod.proxy.drain.start();
        pod.hbone_server.drain();
        tracing::info!(%uid, "pod removed");
        true
    }
}

fn workload_info(
    uid: &str,
    info: Option<meshcore::api::zds::WorkloadInfo>,
) -> Result<WorkloadInfo, String> {
    let info = info.ok_or_else(|| format!("pod {uid}: add without workload_info"))?;
    if info.name.is_empty() || info.namespace.is_empty() {
        return Err(format!("pod {uid}: workload_info needs name and namespace"));
    }
    Ok(WorkloadInfo {
        namespace: info.namespace,
        name: info.name,
        service_account: if info.service_account.is_empty() {
            "default".into()
        } else {
            info.service_account
        },
    })
}

/// Serves one connection to the node agent: a snapshot (`add`/`keep`, then `snapshot_sent`,
/// after which pods not mentioned are removed), then changes as they come. Every request is
/// acknowledged, with the reason when it failed. Returns when the agent closes the connection.
pub async fn serve_agent(pods: &Pods, conn: &Conn) -> std::io::Result<()> {
    let mut snapshot: Option<BTreeSet<String>> = Some(BTreeSet::new());
    while let Some(request) = conn.next_request().await? {
        let result = match request {
            Request::Add { uid, info, netns } => {
                if let Some(seen) = &mut snapshot {
                    seen.insert(uid.clone());
                }
                match (workload_info(&uid, info), Netns::new(netns)) {
                    (Ok(workload), Ok(netns)) => pods.add(&uid, workload, netns).await,
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(format!("pod {uid}: network namespace: {e}")),
                }
            }
            Request::Keep { uid } => {
                if let Some(seen) = &mut snapshot {
                    seen.insert(uid.clone());
                }
                if pods.proxy(&uid).is_some() {
                    Ok(())
                } else {
                    Err(format!("pod {uid} is not served here; send add"))
                }
            }
            Request::Del { uid } => {
                pods.remove(&uid);
                Ok(())
            }
            Request::SnapshotSent => {
                if let Some(seen) = snapshot.take() {
                    for uid in pods.uids() {
                        if !seen.contains(&uid) {
                            pods.remove(&uid);
                        }
                    }
                }
                Ok(())
            }
        };
        if let Err(e) = &result {
            tracing::warn!("node agent request failed: {e}");
        }
        conn.ack(result.err()).await?;
    }
    Ok(())
}

/// Connects to the node agent at `path` and serves it, reconnecting with backoff, until
/// `shutdown` completes. Pods stay served while the agent is away.
pub async fn run_agent_client(
    pods: Arc<Pods>,
    path: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = async {
            let conn = Conn::connect(&path).await?;
            tracing::info!(path = %path.display(), "connected to the node agent");
            serve_agent(&pods, &conn).await
        };
        tokio::select! {
            result = session => match result {
                Ok(()) => {
                    tracing::info!("node agent closed the connection");
                    backoff = Duration::from_millis(200);
                }
                Err(e) => tracing::warn!("node agent: {e}; retrying in {backoff:?}"),
            },
            _ = &mut shutdown => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
