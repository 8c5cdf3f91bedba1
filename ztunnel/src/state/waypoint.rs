//! Waypoints on the outbound path: a destination Service (or workload) that names a waypoint
//! is reached through it, as Istio's ztunnel does. The service's waypoint wins over the
//! workload's; traffic from the waypoint itself is never sent back to it.

use std::net::{IpAddr, SocketAddr};

use meshcore::identity::SpiffeId;

use super::{GatewayAddress, GatewayDestination, Snapshot, WorkloadEntry};

/// The hop to a destination's waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointHop {
    /// The waypoint pod's HBONE address.
    pub hbone: SocketAddr,
    /// Identities the waypoint may prove: its pod's service account, plus its Service's SANs.
    pub expected: Vec<SpiffeId>,
    /// `namespace/hostname` or the address, for logs.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaypointLookup {
    /// No waypoint in the path: connect directly.
    Direct,
    Via(WaypointHop),
    /// A waypoint is required but none of its endpoints can take traffic: the connection fails
    /// (no silent bypass of L7 policy).
    Unavailable(String),
}

impl Snapshot {
    /// The waypoint `dst` must be reached through, for a connection from `source`.
    pub fn waypoint_for(&self, dst: SocketAddr, source: Option<&WorkloadEntry>) -> WaypointLookup {
        let gateway = self
            .service_by_vip("", dst.ip())
            .and_then(|s| s.service.waypoint.as_ref())
            .or_else(|| {
                self.workload_by_ip("", dst.ip())
                    .and_then(|w| w.workload.waypoint.as_ref())
            });
        let Some(gateway) = gateway else {
            return WaypointLookup::Direct;
        };
        let from = |ip: IpAddr| source.is_some_and(|s| s.workload.workload_ips.contains(&ip));
        self.resolve_waypoint(gateway, dst, from)
    }

    fn resolve_waypoint(
        &self,
        gateway: &GatewayAddress,
        dst: SocketAddr,
        is_source: impl Fn(IpAddr) -> bool,
    ) -> WaypointLookup {
        let port = gateway.hbone_mtls_port;
        match &gateway.destination {
            GatewayDestination::Hostname(h) => {
                let name = format!("{}/{}", h.namespace, h.hostname);
                let Some(service) = self
                    .services_by_host(&h.hostname)
                    .iter()
                    .find(|s| s.service.namespace == h.namespace)
                else {
                    return WaypointLookup::Unavailable(format!("waypoint {name} is not known"));
                };
                // The waypoint's own traffic goes direct (Istio: check_from_waypoint).
                if service.endpoints.iter().any(|e| {
                    e.workload
                        .workload
                        .workload_ips
                        .iter()
                        .any(|ip| is_source(*ip))
                }) {
                    return WaypointLookup::Direct;
                }
                let Some(endpoint) = service.pick_endpoint() else {
                    return WaypointLookup::Unavailable(format!(
                        "waypoint {name} has no healthy endpoint"
                    ));
                };
                let ips = &endpoint.workload.workload.workload_ips;
                let Some(ip) = ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                    .or(ips.first())
                else {
                    return WaypointLookup::Unavailable(format!(
                        "waypoint {name} endpoint has no address"
                    ));
                };
                let mut expected = vec![endpoint.workload.identity.clone()];
                for san in &service.service.subject_alt_names {
                    if let Ok(id) =
                        SpiffeId::from_principal(san.strip_prefix("spiffe://").unwrap_or(san))
                    {
                        if !expected.contains(&id) {
                            expected.push(id);
                        }
                    }
                }
                WaypointLookup::Via(WaypointHop {
                    hbone: SocketAddr::new(*ip, port),
                    expected,
                    name,
                })
            }
            GatewayDestination::Address(a) => {
                if is_source(a.ip) {
                    return WaypointLookup::Direct;
                }
                match self.workload_by_ip(&a.network, a.ip) {
                    Some(w) => WaypointLookup::Via(WaypointHop {
                        hbone: SocketAddr::new(a.ip, port),
                        expected: vec![w.identity.clone()],
                        name: a.to_string(),
                    }),
                    None => WaypointLookup::Unavailable(format!(
                        "waypoint at {a} is not a known workload"
                    )),
                }
            }
        }
    }
}
