//! The state store: every workload, service and policy ztunnel knows, indexed for the data path.
//!
//! Config sources (the local file today, xDS tomorrow) hand the store a complete [`MeshConfig`];
//! the store builds an immutable, indexed [`Snapshot`] and swaps it in atomically. Connections
//! load the current snapshot (one atomic load, no lock) and keep using it to their end, so a
//! reload never disturbs a connection being set up.

pub mod model;
pub mod waypoint;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use meshcore::identity::SpiffeId;
use meshcore::policy::egress::{CompiledEgress, EgressPolicy};
use meshcore::policy::{Authorization, CompiledPolicies, Scope};
use serde::Serialize;

pub use model::{
    GatewayAddress, GatewayDestination, HealthStatus, NamespacedHostname, NetworkAddress,
    NetworkMode, PortMap, Protocol, Service, Workload,
};
pub use waypoint::{WaypointHop, WaypointLookup};

/// A validated, complete view of the mesh as a config source delivers it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshConfig {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
    /// Egress policies (Cilium's egress rules), each selecting source workloads by uid.
    pub egress_policies: Vec<EgressPolicy>,
}

/// A workload with what the data path derives from it.
#[derive(Debug)]
pub struct WorkloadEntry {
    pub workload: Workload,
    pub identity: SpiffeId,
    /// Compiled on first use: only workloads this ztunnel serves ever need it.
    policies: OnceLock<Arc<CompiledPolicies>>,
    /// Whether some egress policy selects this workload (the outbound fast path's one check).
    egress_selected: bool,
    /// The egress policies selecting it, compiled on first use.
    egress: OnceLock<Arc<CompiledEgress>>,
}

impl WorkloadEntry {
    /// Whether some egress policy selects this workload as a source.
    pub fn egress_selected(&self) -> bool {
        self.egress_selected
    }
}

/// One endpoint of a service: a workload and its port map for that service.
#[derive(Debug)]
pub struct Endpoint {
    pub workload: Arc<WorkloadEntry>,
    pub ports: PortMap,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub service: Service,
    pub endpoints: Vec<Endpoint>,
    /// Indexes of the healthy endpoints: health only changes with a new snapshot, so round
    /// robin walks this list and stays fair.
    healthy: Vec<usize>,
    next: AtomicUsize,
}

impl ServiceEntry {
    /// Round robin over healthy endpoints; `None` if none is healthy.
    pub fn pick_endpoint(&self) -> Option<&Endpoint> {
        if self.healthy.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.healthy.len();
        Some(&self.endpoints[self.healthy[i]])
    }

    /// The workload port for a service port: the endpoint's own mapping first, then the
    /// service's; a target of 0 means "same as the service port".
    pub fn target_port(&self, endpoint: &Endpoint, service_port: u16) -> Option<u16> {
        let target = endpoint
            .ports
            .get(&service_port)
            .or_else(|| self.service.ports.get(&service_port))
            .copied()?;
        Some(if target == 0 { service_port } else { target })
    }
}

/// An immutable, indexed view of the mesh.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub config: MeshConfig,
    by_uid: HashMap<String, Arc<WorkloadEntry>>,
    /// namespace -> name -> workload (no allocation per lookup).
    by_name: HashMap<String, HashMap<String, Arc<WorkloadEntry>>>,
    /// By address; the few entries sharing an address differ by network.
    by_ip: HashMap<IpAddr, Vec<Arc<WorkloadEntry>>>,
    services_by_vip: HashMap<IpAddr, Vec<Arc<ServiceEntry>>>,
    services_by_host: HashMap<String, Vec<Arc<ServiceEntry>>>,
    policies: HashMap<String, Arc<Authorization>>,
    /// Policy keys that apply mesh-wide, and by namespace.
    global_policies: Vec<String>,
    namespace_policies: HashMap<String, Vec<String>>,
    /// Egress policies by the workload uids they select, in key order.
    egress_by_uid: HashMap<String, Vec<Arc<EgressPolicy>>>,
    /// Bumped on every swap; shown by the admin dump.
    pub version: u64,
}

/// Where an outbound connection should go.
#[derive(Debug)]
pub enum Destination<'a> {
    /// A service VIP: the chosen endpoint and the port on it.
    Service {
        service: &'a Arc<ServiceEntry>,
        workload: &'a Arc<WorkloadEntry>,
        port: u16,
    },
    /// A workload's own address.
    Workload {
        workload: &'a Arc<WorkloadEntry>,
        port: u16,
    },
    /// A service VIP with no healthy endpoint.
    NoHealthyEndpoint { service: &'a Arc<ServiceEntry> },
    /// A service VIP with no mapping for the port asked.
    UnknownServicePort {
        service: &'a Arc<ServiceEntry>,
        port: u16,
    },
    /// Not in the mesh's view: passed through as plain TCP.
    Unknown,
}

impl Snapshot {
    /// Indexes a validated config. `trust_domain` fills workloads that name none.
    pub fn build(config: MeshConfig, trust_domain: &str, version: u64) -> Result<Self, String> {
        let mut snap = Snapshot {
            version,
            ..Default::default()
        };
        let mut egress: Vec<Arc<EgressPolicy>> = config
            .egress_policies
            .iter()
            .map(|p| Arc::new(p.clone()))
            .collect();
        egress.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in &egress {
            for uid in &p.workloads {
                let list = snap.egress_by_uid.entry(uid.clone()).or_default();
                if !list.iter().any(|q| Arc::ptr_eq(q, p)) {
                    list.push(p.clone());
                }
            }
        }
        for w in &config.workloads {
            let mut w = w.clone();
            fill_workload_defaults(&mut w, trust_domain);
            let identity = SpiffeId::new(&w.trust_domain, &w.namespace, &w.service_account)
                .map_err(|e| format!("workload {}/{}: {e}", w.namespace, w.name))?;
            let entry = Arc::new(WorkloadEntry {
                egress_selected: snap.egress_by_uid.contains_key(&w.uid),
                workload: w,
                identity,
                policies: OnceLock::new(),
                egress: OnceLock::new(),
            });
            for ip in &entry.workload.workload_ips {
                snap.by_ip.entry(*ip).or_default().push(entry.clone());
            }
            snap.by_name
                .entry(entry.workload.namespace.clone())
                .or_default()
                .insert(entry.workload.name.clone(), entry.clone());
            snap.by_uid.insert(entry.workload.uid.clone(), entry);
        }
        // One pass over the workloads' service maps: service key -> endpoints.
        let mut backing: HashMap<&str, Vec<Endpoint>> = HashMap::new();
        for w in snap.by_uid.values() {
            for (key, ports) in &w.workload.services {
                backing.entry(key.as_str()).or_default().push(Endpoint {
                    workload: w.clone(),
                    ports: ports.clone(),
                });
            }
        }
        for s in &config.services {
            let key = s.key();
            let mut endpoints = backing.remove(key.as_str()).unwrap_or_default();
            endpoints.sort_by(|a, b| a.workload.workload.uid.cmp(&b.workload.workload.uid));
            let healthy = (0..endpoints.len())
                .filter(|&i| endpoints[i].workload.workload.status == HealthStatus::Healthy)
                .collect();
            let entry = Arc::new(ServiceEntry {
                service: s.clone(),
                endpoints,
                healthy,
                next: AtomicUsize::new(0),
            });
            for vip in &s.vips {
                snap.services_by_vip
                    .entry(vip.ip)
                    .or_default()
                    .push(entry.clone());
            }
            snap.services_by_host
                .entry(s.hostname.clone())
                .or_default()
                .push(entry);
        }
        for p in &config.policies {
            let key = p.key();
            match p.scope {
                // Taken literally, as Istio's ztunnel does: istiod sends root-namespace
                // policies as Global.
                Scope::Global => snap.global_policies.push(key.clone()),
                Scope::Namespace => snap
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(key.clone()),
                Scope::WorkloadSelector => {}
            }
            snap.policies.insert(key, Arc::new(p.clone()));
        }
        snap.config = config;
        Ok(snap)
    }

    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<WorkloadEntry>> {
        self.by_ip
            .get(&ip)?
            .iter()
            .find(|w| w.workload.network == network)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<WorkloadEntry>> {
        self.by_uid.get(uid)
    }

    /// Finds the workload serving in dedicated mode: by namespace and name.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<WorkloadEntry>> {
        self.by_name.get(namespace)?.get(name)
    }

    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<ServiceEntry>> {
        self.services_by_vip.get(&ip)?.iter().find(|s| {
            s.service
                .vips
                .iter()
                .any(|v| v.ip == ip && v.network == network)
        })
    }

    /// Services with this hostname (a ServiceEntry may reuse one across namespaces).
    pub fn services_by_host(&self, hostname: &str) -> &[Arc<ServiceEntry>] {
        self.services_by_host
            .get(hostname)
            .map_or(&[], Vec::as_slice)
    }

    /// The service a connection to `port` on workload `w` belongs to: one the workload backs
    /// whose port maps to `port` (for the destination side's metrics).
    pub fn service_for_endpoint(&self, w: &WorkloadEntry, port: u16) -> Option<&Arc<ServiceEntry>> {
        w.workload.services.iter().find_map(|(key, ports)| {
            let (ns, host) = key.split_once('/')?;
            let svc = self
                .services_by_host(host)
                .iter()
                .find(|s| s.service.namespace == ns)?;
            let maps_here = ports.values().any(|&t| t == port)
                || svc
                    .service
                    .ports
                    .iter()
                    .any(|(&sp, &t)| t == port || (t == 0 && sp == port));
            maps_here.then_some(svc)
        })
    }

    /// Resolves an outbound destination address on the default network.
    pub fn resolve(&self, dst: SocketAddr) -> Destination<'_> {
        if let Some(service) = self.service_by_vip("", dst.ip()) {
            let Some(endpoint) = service.pick_endpoint() else {
                return Destination::NoHealthyEndpoint { service };
            };
            return match service.target_port(endpoint, dst.port()) {
                Some(port) => Destination::Service {
                    service,
                    workload: &endpoint.workload,
                    port,
                },
                None => Destination::UnknownServicePort {
                    service,
                    port: dst.port(),
                },
            };
        }
        match self.workload_by_ip("", dst.ip()) {
            Some(workload) => Destination::Workload {
                workload,
                port: dst.port(),
            },
            None => Destination::Unknown,
        }
    }

    /// The policies that apply to a workload, compiled once per snapshot: mesh-wide ones,
    /// its namespace's, then the WorkloadSelector policies it names, in that order.
    pub fn policies_for(&self, w: &WorkloadEntry) -> Arc<CompiledPolicies> {
        w.policies
            .get_or_init(|| {
                let keys = self
                    .global_policies
                    .iter()
                    .chain(
                        self.namespace_policies
                            .get(&w.workload.namespace)
                            .into_iter()
                            .flatten(),
                    )
                    .chain(w.workload.authorization_policies.iter());
                let mut seen = std::collections::HashSet::new();
                let list = keys
                    .filter(|k| seen.insert(k.as_str()))
                    .filter_map(|k| self.policies.get(k).cloned())
                    .collect();
                Arc::new(CompiledPolicies::new(list))
            })
            .clone()
    }
}

impl Snapshot {
    /// The egress policies selecting `w` as a source, compiled once per snapshot; `None` when
    /// none does (one field read: the outbound fast path).
    pub fn egress_for(&self, w: &WorkloadEntry) -> Option<Arc<CompiledEgress>> {
        if !w.egress_selected {
            return None;
        }
        Some(
            w.egress
                .get_or_init(|| {
                    let list = self
                        .egress_by_uid
                        .get(&w.workload.uid)
                        .cloned()
                        .unwrap_or_default();
                    Arc::new(CompiledEgress::new(list))
                })
                .clone(),
        )
    }

    /// The Services (namespace, name) workload `w` backs, for egress Service peers.
    pub fn services_backed(&self, w: &WorkloadEntry, each: &mut dyn FnMut(&str, &str)) {
        for key in w.workload.services.keys() {
            let Some((ns, host)) = key.split_once('/') else {
                continue;
            };
            for s in self.services_by_host(host) {
                if s.service.namespace == ns {
                    each(&s.service.namespace, &s.service.name);
                }
            }
        }
    }

    /// Whether an address is one ztunnel knows (a workload's or a Service VIP), for egress
    /// `cluster` / `world` entities.
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip) || self.services_by_vip.contains_key(&ip)
    }
}

/// Istio's defaults for fields a config may leave empty.
pub fn fill_workload_defaults(w: &mut Workload, trust_domain: &str) {
    if w.uid.is_empty() {
        w.uid = format!("{}/{}", w.namespace, w.name);
    }
    if w.trust_domain.is_empty() {
        w.trust_domain = trust_domain.to_owned();
    }
    if w.service_account.is_empty() {
        w.service_account = "default".to_owned();
    }
}

/// Holds the current snapshot; readers never block, writers swap whole snapshots.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<Snapshot>,
    trust_domain: String,
    /// Workloads this ztunnel serves (namespace, name): their policies are compiled while a
    /// new snapshot is built, not on the first connection after a swap.
    served: std::sync::Mutex<Vec<(String, String)>>,
    /// The version of the current snapshot, for those who act on changes (the node agent).
    changed: tokio::sync::watch::Sender<u64>,
}

impl StateStore {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            trust_domain: trust_domain.to_owned(),
            served: Default::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Sees every snapshot swap (the value is the new version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers a served workload whose policies every new snapshot precompiles.
    pub fn add_served(&self, namespace: &str, name: &str) {
        let mut served = self.served.lock().expect("served lock");
        served.push((namespace.to_owned(), name.to_owned()));
        let snap = self.current.load();
        if let Some(w) = snap.workload_by_name(namespace, name) {
            snap.policies_for(w);
            snap.egress_for(w);
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the whole view. On error nothing changes.
    pub fn replace(&self, config: MeshConfig) -> Result<u64, String> {
        let version = self.current.load().version + 1;
        let snap = Snapshot::build(config, &self.trust_domain, version)?;
        for (ns, name) in self.served.lock().expect("served lock").iter() {
            if let Some(w) = snap.workload_by_name(ns, name) {
                snap.policies_for(w);
                snap.egress_for(w);
            }
        }
        self.current.store(Arc::new(snap));
        self.changed.send_replace(version);
        Ok(version)
    }
}

#[cfg(test)]
mod tests;
