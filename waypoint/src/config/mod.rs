//! The waypoint's configuration as the data path reads it: a [`Snapshot`] compiled from a
//! [`WaypointConfig`] (services indexed by address, the route table, the L7 policies), swapped
//! whole into the [`ConfigStore`] so a request sees one consistent view. Its sources: the local
//! file ([`file`]) or the control plane over delta xDS ([`xds`]), both in the same schema.

pub mod file;
pub mod xds;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshcore::identity::SpiffeId;
use meshcore::l7::service::{Protocol, Service, ServicePort, TunnelProtocol};
use meshcore::l7::WaypointConfig;
use serde::Serialize;

use crate::authz::{L7Policies, PolicyNote, WaypointRef};
use crate::route::{RouteStatus, RouteTable, ServiceKey};

/// Who this waypoint is, as configuration needs it.
#[derive(Debug, Clone)]
pub struct WaypointIdentity {
    pub namespace: String,
    pub name: String,
    pub trust_domain: String,
    pub root_namespace: String,
}

/// A Service ready for the data path.
pub struct ServiceView {
    pub key: ServiceKey,
    pub hostname: String,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<EndpointView>,
    /// Extra identities its endpoints may prove (`subjectAltNames`).
    pub subject_alt_names: Vec<SpiffeId>,
    next: AtomicUsize,
}

/// An endpoint (pod) with the identity it must prove.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub address: IpAddr,
    pub name: Option<String>,
    pub namespace: String,
    #[serde(serialize_with = "as_string")]
    pub identity: SpiffeId,
    pub healthy: bool,
    /// Where its ztunnel takes HBONE for it; `None` for a pod outside the mesh (plain TCP).
    pub hbone: Option<SocketAddr>,
    pub labels: std::collections::BTreeMap<String, String>,
}

fn as_string<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl ServiceView {
    /// The next healthy endpoint, round robin; `None` when none is healthy.
    pub fn pick_endpoint(&self) -> Option<&EndpointView> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| e.healthy)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Identities an endpoint of this service may prove.
    pub fn expected_identities(&self, endpoint: &EndpointView) -> Vec<SpiffeId> {
        let mut ids = vec![endpoint.identity.clone()];
        ids.extend(self.subject_alt_names.iter().cloned());
        ids
    }
}

/// Where a CONNECT's authority points.
pub enum Target<'a> {
    /// A Service VIP and one of its ports.
    Service {
        service: &'a ServiceView,
        port: &'a ServicePort,
    },
    /// A pod's own address (workload-addressed): routes do not apply.
    Workload {
        service: &'a ServiceView,
        endpoint: &'a EndpointView,
        port: u16,
        protocol: Protocol,
    },
}

/// One compiled configuration.
pub struct Snapshot {
    pub services: Vec<ServiceView>,
    by_vip: HashMap<SocketAddr, (usize, usize)>,
    by_name: HashMap<ServiceKey, usize>,
    by_endpoint: HashMap<IpAddr, (usize, usize)>,
    pub routes: RouteTable,
    pub route_status: Vec<RouteStatus>,
    pub policies: L7Policies,
    pub policy_notes: Vec<PolicyNote>,
    /// The configuration as given, for `/config_dump`.
    pub source: WaypointConfig,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self {
            services: Vec::new(),
            by_vip: HashMap::new(),
            by_name: HashMap::new(),
            by_endpoint: HashMap::new(),
            routes: RouteTable::empty(),
            route_status: Vec::new(),
            policies: L7Policies::empty(),
            policy_notes: Vec::new(),
            source: WaypointConfig::default(),
            loaded_at: SystemTime::now(),
        }
    }

    /// Compiles a configuration; a mistake that would make it ambiguous (an invalid identity,
    /// two Services on one address) refuses it whole, naming the entry.
    pub fn compile(config: WaypointConfig, me: &WaypointIdentity) -> Result<Self, String> {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_vip = HashMap::new();
        let mut by_name = HashMap::new();
        let mut by_endpoint = HashMap::new();
        for (i, svc) in config.services.iter().enumerate() {
            let view = service_view(svc, &me.trust_domain)?;
            if by_name.insert(view.key.clone(), i).is_some() {
                return Err(format!(
                    "services: {}/{} appears twice",
                    svc.namespace, svc.name
                ));
            }
            for vip in &svc.vips {
                for (p, port) in svc.ports.iter().enumerate() {
                    let addr = SocketAddr::new(*vip, port.port);
                    if let Some((other, _)) = by_vip.insert(addr, (i, p)) {
                        let other: &Service = &config.services[other];
                        return Err(format!(
                            "services: {}/{} and {}/{} both claim {addr}",
                            other.namespace, other.name, svc.namespace, svc.name
                        ));
                    }
                }
            }
            for (e, ep) in view.endpoints.iter().enumerate() {
                by_endpoint.entry(ep.address).or_insert((i, e));
            }
            services.push(view);
        }
        let waypoint = ServiceKey {
            namespace: me.namespace.clone(),
            name: me.name.clone(),
        };
        let (routes, route_status) = RouteTable::compile(
            &config.http_routes,
            &config.grpc_routes,
            &config.services,
            &waypoint,
        );
        let (policies, policy_notes) = L7Policies::compile(
            &config.authorization_policies,
            &WaypointRef {
                namespace: &me.namespace,
                name: &me.name,
            },
            &me.root_namespace,
            &me.trust_domain,
        );
        Ok(Self {
            services,
            by_vip,
            by_name,
            by_endpoint,
            routes,
            route_status,
            policies,
            policy_notes,
            source: config,
            loaded_at: SystemTime::now(),
        })
    }

    /// What a CONNECT authority addresses: a Service VIP:port first, then a pod IP.
    pub fn resolve(&self, destination: SocketAddr) -> Option<Target<'_>> {
        if let Some(&(s, p)) = self.by_vip.get(&destination) {
            let service = &self.services[s];
            return Some(Target::Service {
                service,
                port: &service.ports[p],
            });
        }
        let &(s, e) = self.by_endpoint.get(&destination.ip())?;
        let service = &self.services[s];
        let protocol = service
            .ports
            .iter()
            .find(|p| p.target_port() == destination.port())
            .map(ServicePort::protocol)
            .unwrap_or(Protocol::Auto);
        Some(Target::Workload {
            service,
            endpoint: &service.endpoints[e],
            port: destination.port(),
            protocol,
        })
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceView> {
        self.by_name.get(key).map(|&i| &self.services[i])
    }

    /// The endpoint at `ip` and the Service it was found under, for upstream identities.
    pub fn endpoint(&self, ip: IpAddr) -> Option<(&ServiceView, &EndpointView)> {
        let &(s, e) = self.by_endpoint.get(&ip)?;
        let service = &self.services[s];
        Some((service, &service.endpoints[e]))
    }
}

fn service_view(svc: &Service, trust_domain: &str) -> Result<ServiceView, String> {
    let name = format!("services: {}/{}", svc.namespace, svc.name);
    if svc.ports.is_empty() {
        return Err(format!("{name}: no ports"));
    }
    let mut endpoints = Vec::with_capacity(svc.endpoints.len());
    for ep in &svc.endpoints {
        let namespace = ep
            .namespace
            .clone()
            .unwrap_or_else(|| svc.namespace.clone());
        let identity = SpiffeId::new(trust_domain, &namespace, &ep.service_account)
            .map_err(|e| format!("{name}: endpoint {}: {e}", ep.address))?;
        endpoints.push(EndpointView {
            address: ep.address,
            name: ep.name.clone(),
            namespace,
            identity,
            healthy: ep.healthy,
            hbone: (ep.protocol == TunnelProtocol::HBONE).then(|| {
                SocketAddr::new(
                    ep.address,
                    ep.hbone_port.unwrap_or(meshcore::hbone::HBONE_PORT),
                )
            }),
            labels: ep.labels.clone(),
        });
    }
    let subject_alt_names = svc
        .subject_alt_names
        .iter()
        .map(|p| SpiffeId::from_principal(p.trim_start_matches("spiffe://")))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{name}: subjectAltNames: {e}"))?;
    Ok(ServiceView {
        key: ServiceKey {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        },
        hostname: svc.hostname(),
        ports: svc.ports.clone(),
        endpoints,
        subject_alt_names,
        next: AtomicUsize::new(0),
    })
}

/// The snapshot in force, swapped whole on every accepted change.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    pub me: WaypointIdentity,
}

impl ConfigStore {
    pub fn new(me: WaypointIdentity) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            me,
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles and installs `config`; on error the current snapshot stays.
    pub fn apply(&self, config: WaypointConfig) -> Result<(), String> {
        let snapshot = Snapshot::compile(config, &self.me)?;
        for status in snapshot
            .route_status
            .iter()
            .filter(|s| !s.accepted || !s.resolved_refs || s.partially_invalid)
        {
            tracing::warn!(route = %status.route, parent = %status.parent, reason = %status.reason, "{}", status.message);
        }
        for note in &snapshot.policy_notes {
            tracing::warn!(policy = %note.policy, "{}", note.message);
        }
        self.current.store(Arc::new(snapshot));
        Ok(())
    }
}
