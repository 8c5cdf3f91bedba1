//! The waypoint's configuration as the data path reads it: a [`Snapshot`] compiled from a
//! [`WaypointConfig`] (services indexed by address, the route table, the L7 policies), swapped
//! whole into the [`ConfigStore`] so a request sees one consistent view. Its sources: the local
//! file ([`file`]) or the control plane over delta xDS ([`xds`]), both in the same schema.

pub mod file;
pub mod xds;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshcore::identity::SpiffeId;
use meshcore::l7::service::{Protocol, Service, ServicePort, TunnelProtocol};
use meshcore::l7::WaypointConfig;
use serde::Serialize;

use crate::authn::{AuthnNote, JwksCache, JwtAuthn};
use crate::authz::{L7Policies, PolicyNote, WaypointRef};
use crate::route::{RouteStatus, RouteTable, ServiceKey};
use crate::traffic::balance::{self, Choice, EndpointState};
use crate::traffic::budget::{BudgetSettings, RetryBudget};
use crate::traffic::{ServiceTraffic, TrafficNote};

/// Who this waypoint is, as configuration needs it.
#[derive(Debug, Clone)]
pub struct WaypointIdentity {
    pub namespace: String,
    pub name: String,
    pub trust_domain: String,
    pub root_namespace: String,
    /// Every Service's retry budget.
    pub retry_budget: crate::traffic::budget::BudgetSettings,
}

/// A Service ready for the data path.
pub struct ServiceView {
    pub key: ServiceKey,
    pub hostname: String,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<EndpointView>,
    /// Extra identities its endpoints may prove (`subjectAltNames`).
    pub subject_alt_names: Vec<SpiffeId>,
    /// Its DestinationRule, compiled (the default policy without one).
    pub traffic: ServiceTraffic,
    /// Per endpoint (same order as `endpoints`): requests in flight, outlier counters.
    pub state: Vec<EndpointState>,
    addresses: Vec<IpAddr>,
    /// The healthy endpoints (indexes) of the whole Service, then of each subset, computed with
    /// the configuration so a pick filters nothing per request.
    members: Vec<Vec<usize>>,
    /// Round-robin positions, one per entry of `members`.
    round_robin: Vec<AtomicUsize>,
    /// Requests in flight to the Service (connection pool limit).
    in_flight: AtomicU32,
    /// Caps retries to the Service, whatever the routes ask.
    pub retry_budget: RetryBudget,
}

/// Why no endpoint was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// No healthy endpoint (in the subset).
    NoHealthy,
    /// The subset is not defined by the Service's DestinationRule.
    UnknownSubset,
    /// The connection pool's request limit is reached.
    Overflow,
}

/// A request counted against its endpoint and Service until dropped.
pub struct InFlight<'a> {
    service: &'a ServiceView,
    index: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.service.state[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
        self.service.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
        let members = &self.members[0];
        if members.is_empty() {
            return None;
        }
        let i = self.round_robin[0].fetch_add(1, Ordering::Relaxed) % members.len();
        Some(&self.endpoints[members[i]])
    }

    /// Installs the Service's DestinationRule and the member lists of its subsets.
    fn set_traffic(&mut self, traffic: ServiceTraffic) {
        let healthy = |labels: Option<&std::collections::BTreeMap<String, String>>| {
            (0..self.endpoints.len())
                .filter(|&i| {
                    let e = &self.endpoints[i];
                    e.healthy
                        && labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                })
                .collect::<Vec<usize>>()
        };
        self.members = std::iter::once(healthy(None))
            .chain(traffic.subsets.iter().map(|s| healthy(Some(&s.labels))))
            .collect();
        self.round_robin = self.members.iter().map(|_| AtomicUsize::new(0)).collect();
        self.traffic = traffic;
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Chooses an endpoint for a request to `subset` on `port` by the DestinationRule's
    /// balancer, among healthy endpoints of the subset that are not ejected (ejected ones only
    /// when nothing else is left); `now_ms` is the caller's clock for ejections.
    pub fn pick(
        &self,
        subset: Option<&str>,
        port: u16,
        req: &balance::Request<'_>,
        now_ms: u64,
    ) -> Result<Choice, PickError> {
        let slot = match subset {
            None => 0,
            Some(name) => {
                1 + self
                    .traffic
                    .subsets
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or(PickError::UnknownSubset)?
            }
        };
        let members = &self.members[slot];
        let policy = self.traffic.policy(subset, port);
        // Ejected endpoints are left out, unless nothing else is left; the list is copied only
        // while some endpoint is ejected.
        let fresh: Vec<usize>;
        let candidates: &[usize] =
            if policy.outlier.is_some() && members.iter().any(|&i| self.state[i].ejected(now_ms)) {
                fresh = members
                    .iter()
                    .copied()
                    .filter(|&i| !self.state[i].ejected(now_ms))
                    .collect();
                if fresh.is_empty() {
                    members
                } else {
                    &fresh
                }
            } else {
                members
            };
        balance::choose(
            &policy.balancer,
            candidates,
            &self.addresses,
            &self.state,
            &self.round_robin[slot],
            req,
            now_ms.saturating_mul(1000),
        )
        .ok_or(PickError::NoHealthy)
    }

    /// Counts a request to endpoint `index` until the guard drops; refused when the
    /// connection pool's limit for (`subset`, `port`) is reached.
    pub fn begin(
        &self,
        index: usize,
        subset: Option<&str>,
        port: u16,
    ) -> Result<InFlight<'_>, PickError> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            service: self,
            index,
        };
        self.state[index].active.fetch_add(1, Ordering::Relaxed);
        match self.traffic.policy(subset, port).max_requests {
            Some(max) if before >= max => Err(PickError::Overflow),
            _ => Ok(guard),
        }
    }

    /// Outlier detection: the answer of endpoint `index` (`None`: no answer, a connect failure
    /// or reset). Ejects it after the configured run of failures.
    pub fn report(
        &self,
        index: usize,
        subset: Option<&str>,
        port: u16,
        status: Option<u16>,
        now_ms: u64,
    ) {
        let Some(outlier) = &self.traffic.policy(subset, port).outlier else {
            return;
        };
        let s = &self.state[index];
        let gateway = status.is_none_or(|c| matches!(c, 502..=504));
        let failed = status.is_none_or(|c| c >= 500);
        let run = if failed {
            s.failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            s.failures.store(0, Ordering::Relaxed);
            0
        };
        let gateway_run = if gateway {
            s.gateway_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            s.gateway_failures.store(0, Ordering::Relaxed);
            0
        };
        let trip = outlier.consecutive_5xx.is_some_and(|n| run >= n)
            || outlier
                .consecutive_gateway
                .is_some_and(|n| gateway_run >= n);
        if !trip || s.ejected(now_ms) {
            return;
        }
        let ejected_now = self.state.iter().filter(|e| e.ejected(now_ms)).count();
        let allowed = (self.endpoints.len() * outlier.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= allowed {
            return;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = outlier.base_ejection.as_millis() as u64 * u64::from(times.min(10));
        s.ejected_until_ms.store(now_ms + ms, Ordering::Relaxed);
        s.failures.store(0, Ordering::Relaxed);
        s.gateway_failures.store(0, Ordering::Relaxed);
        tracing::info!(service = %self.key, endpoint = %self.endpoints[index].address, ms, "outlier detection: endpoint ejected");
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
    /// RequestAuthentications (JWT), compiled.
    pub authn: JwtAuthn,
    pub authn_notes: Vec<AuthnNote>,
    /// DestinationRules applied in part or not at all.
    pub traffic_notes: Vec<TrafficNote>,
    /// Gateway mode: the ingress Gateway's listeners and certificates.
    pub ingress: Option<crate::gateway::IngressView>,
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
            authn: JwtAuthn::default(),
            authn_notes: Vec::new(),
            traffic_notes: Vec::new(),
            ingress: None,
            source: WaypointConfig::default(),
            loaded_at: SystemTime::now(),
        }
    }

    /// Compiles a configuration; a mistake that would make it ambiguous (an invalid identity,
    /// two Services on one address) refuses it whole, naming the entry.
    pub fn compile(config: WaypointConfig, me: &WaypointIdentity) -> Result<Self, String> {
        Self::compile_with(config, me, &JwksCache::default())
    }

    /// As [`Snapshot::compile`], with the remote key sets shared across configurations.
    pub fn compile_with(
        config: WaypointConfig,
        me: &WaypointIdentity,
        jwks: &JwksCache,
    ) -> Result<Self, String> {
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_vip = HashMap::new();
        let mut by_name = HashMap::new();
        let mut by_endpoint = HashMap::new();
        let (mut traffic, traffic_notes) =
            crate::traffic::compile(&config.destination_rules, &config.services);
        for (i, svc) in config.services.iter().enumerate() {
            let mut view = service_view(svc, &me.trust_domain, me.retry_budget)?;
            if let Some(t) = traffic.remove(&view.key) {
                view.set_traffic(t);
            }
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
        let (routes, route_status) = RouteTable::compile_with_ingress(
            &config.http_routes,
            &config.grpc_routes,
            &config.virtual_services,
            &config.services,
            &waypoint,
            config.ingress.as_ref(),
        );
        let ingress = config
            .ingress
            .as_ref()
            .map(crate::gateway::IngressView::compile);
        // Policies target the Gateway this process serves: the ingress Gateway in gateway mode.
        let (gateway_ns, gateway_name, class) = match &config.ingress {
            Some(i) => (i.namespace.as_str(), i.name.as_str(), None),
            None => (
                me.namespace.as_str(),
                me.name.as_str(),
                Some(crate::attach::WAYPOINT_CLASS),
            ),
        };
        let (policies, policy_notes) = L7Policies::compile(
            &config.authorization_policies,
            &WaypointRef {
                namespace: gateway_ns,
                name: gateway_name,
                class,
            },
            &me.root_namespace,
            &me.trust_domain,
        );
        let (authn, authn_notes) = JwtAuthn::compile(
            &config.request_authentications,
            &WaypointRef {
                namespace: gateway_ns,
                name: gateway_name,
                class,
            },
            &me.root_namespace,
            jwks,
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
            authn,
            authn_notes,
            traffic_notes,
            ingress,
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

fn service_view(
    svc: &Service,
    trust_domain: &str,
    budget: BudgetSettings,
) -> Result<ServiceView, String> {
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
    let mut view = ServiceView {
        key: ServiceKey {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        },
        hostname: svc.hostname(),
        ports: svc.ports.clone(),
        state: endpoints.iter().map(|_| EndpointState::default()).collect(),
        addresses: endpoints.iter().map(|e| e.address).collect(),
        endpoints,
        subject_alt_names,
        traffic: ServiceTraffic::default(),
        members: Vec::new(),
        round_robin: Vec::new(),
        in_flight: AtomicU32::new(0),
        retry_budget: RetryBudget::new(budget),
    };
    view.set_traffic(ServiceTraffic::default());
    Ok(view)
}

/// The snapshot in force, swapped whole on every accepted change.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    pub me: WaypointIdentity,
    /// Remote JWT key sets, kept across configurations.
    jwks: JwksCache,
    /// Counts installed configurations; gateway listeners follow it.
    changes: tokio::sync::watch::Sender<u64>,
}

impl ConfigStore {
    pub fn new(me: WaypointIdentity) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            me,
            jwks: JwksCache::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes whenever a new configuration is installed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles and installs `config`; on error the current snapshot stays.
    pub fn apply(&self, config: WaypointConfig) -> Result<(), String> {
        let snapshot = Snapshot::compile_with(config, &self.me, &self.jwks)?;
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
        for note in &snapshot.authn_notes {
            tracing::warn!(request_authentication = %note.policy, "{}", note.message);
        }
        for note in &snapshot.traffic_notes {
            tracing::warn!(destination_rule = %note.rule, "{}", note.message);
        }
        if let Some(ingress) = &snapshot.ingress {
            for note in &ingress.notes {
                tracing::warn!(gateway = %format!("{}/{}", ingress.namespace, ingress.name), "{note}");
            }
        }
        self.current.store(Arc::new(snapshot));
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }
}
