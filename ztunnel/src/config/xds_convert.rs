//! The ambient xDS resources (`istio.workload.Address`, `istio.security.Authorization`, and
//! this mesh's `mesh.egress.v1.EgressPolicy`) into ztunnel's model. Pure; an unusable resource is an error naming it, which the client NACKs.

use std::collections::BTreeMap;

use meshcore::api::convert::ip_from_bytes;
use meshcore::api::{security, workload as wire};
use meshcore::policy::Authorization;
use prost::Message;

use crate::state::{
    GatewayAddress, GatewayDestination, HealthStatus, NamespacedHostname, NetworkAddress, PortMap,
    Protocol, Service, Workload,
};

/// Decodes a `mesh.egress.v1.EgressPolicy` resource named `name` (`<namespace>/<name>`): its
/// `policy_json` must parse strictly, validate, and name the same policy as the resource.
pub fn egress_policy(
    name: &str,
    bytes: &[u8],
) -> Result<meshcore::policy::egress::EgressPolicy, String> {
    let wire = meshcore::api::egress::EgressPolicy::decode(bytes)
        .map_err(|e| format!("egress policy {name}: {e}"))?;
    let policy: meshcore::policy::egress::EgressPolicy = serde_json::from_str(&wire.policy_json)
        .map_err(|e| format!("egress policy {name}: policy_json: {e}"))?;
    let key = policy.key();
    if key != name || wire.namespace != policy.namespace || wire.name != policy.name {
        return Err(format!(
            "egress policy {name}: the resource names {}/{} but its policy_json is {key}",
            wire.namespace, wire.name
        ));
    }
    policy
        .validate()
        .map_err(|e| format!("egress policy {name}: {e}"))?;
    Ok(policy)
}

/// One decoded Address resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Address {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

fn ports(list: &[wire::Port], what: &str) -> Result<PortMap, String> {
    list.iter()
        .map(|p| {
            let port = |v: u32| u16::try_from(v).map_err(|_| format!("{what}: {v} is not a port"));
            Ok((port(p.service_port)?, port(p.target_port)?))
        })
        .collect()
}

/// Decodes an `istio.workload.Address` resource named `name`.
pub fn address(name: &str, bytes: &[u8]) -> Result<Address, String> {
    let a = wire::Address::decode(bytes).map_err(|e| format!("address {name}: {e}"))?;
    match a.r#type {
        Some(wire::address::Type::Workload(w)) => {
            workload(w).map(|w| Address::Workload(Box::new(w)))
        }
        Some(wire::address::Type::Service(s)) => service(s).map(|s| Address::Service(Box::new(s))),
        None => Err(format!("address {name}: neither workload nor service")),
    }
}

fn workload(w: wire::Workload) -> Result<Workload, String> {
    let at = format!("workload {}", w.uid);
    let workload_ips = w
        .addresses
        .iter()
        .map(|b| ip_from_bytes(b).map_err(|e| format!("{at}: addresses: {e}")))
        .collect::<Result<_, _>>()?;
    let services = w
        .services
        .iter()
        .map(|(k, list)| {
            Ok((
                k.clone(),
                ports(&list.ports, &format!("{at}: services[{k}]"))?,
            ))
        })
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let workload_type = wire::WorkloadType::try_from(w.workload_type)
        .map(|t| t.as_str_name().to_lowercase())
        .unwrap_or_default();
    let waypoint = w
        .waypoint
        .as_ref()
        .map(|g| gateway_address(g, &format!("{at}: waypoint")))
        .transpose()?;
    Ok(Workload {
        workload_ips,
        waypoint,
        network_gateway: None,
        protocol: if w.tunnel_protocol == wire::TunnelProtocol::Hbone as i32 {
            Protocol::HBONE
        } else {
            Protocol::TCP
        },
        network_mode: Default::default(),
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        trust_domain: w.trust_domain,
        service_account: w.service_account,
        network: w.network,
        workload_name: w.workload_name,
        workload_type,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        hostname: w.hostname,
        node: w.node,
        native_tunnel: w.native_tunnel,
        application_tunnel: None,
        authorization_policies: w.authorization_policies,
        status: if w.status == wire::WorkloadStatus::Unhealthy as i32 {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        },
        cluster_id: w.cluster_id,
        locality: None,
        services,
        capacity: w.capacity.unwrap_or(1),
    })
}

fn service(s: wire::Service) -> Result<Service, String> {
    let at = format!("service {}/{}", s.namespace, s.hostname);
    let vips = s
        .addresses
        .iter()
        .map(|a| {
            Ok(NetworkAddress {
                network: a.network.clone(),
                ip: ip_from_bytes(&a.address).map_err(|e| format!("{at}: addresses: {e}"))?,
            })
        })
        .collect::<Result<_, String>>()?;
    let waypoint = s
        .waypoint
        .as_ref()
        .map(|g| gateway_address(g, &format!("{at}: waypoint")))
        .transpose()?;
    Ok(Service {
        ports: ports(&s.ports, &format!("{at}: ports"))?,
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        endpoints: None,
        subject_alt_names: s.subject_alt_names,
        waypoint,
        load_balancer: None,
        ip_families: None,
        canonical: s.canonical,
    })
}

fn gateway_address(g: &wire::GatewayAddress, at: &str) -> Result<GatewayAddress, String> {
    use wire::gateway_address::Destination as D;
    let destination = match &g.destination {
        Some(D::Hostname(h)) => GatewayDestination::Hostname(NamespacedHostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
        Some(D::Address(a)) => GatewayDestination::Address(NetworkAddress {
            network: a.network.clone(),
            ip: ip_from_bytes(&a.address).map_err(|e| format!("{at}: address: {e}"))?,
        }),
        None => return Err(format!("{at}: no hostname or address")),
    };
    let port = u16::try_from(g.hbone_mtls_port)
        .map_err(|_| format!("{at}: hboneMtlsPort {} is not a port", g.hbone_mtls_port))?;
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: if port == 0 {
            meshcore::hbone::HBONE_PORT
        } else {
            port
        },
    })
}

/// Decodes an `istio.security.Authorization` resource.
pub fn authorization(name: &str, bytes: &[u8]) -> Result<Authorization, String> {
    let a =
        security::Authorization::decode(bytes).map_err(|e| format!("authorization {name}: {e}"))?;
    Authorization::try_from(&a).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_and_service_decode() {
        let w = wire::Workload {
            uid: "Kubernetes//Pod/shop/cart-1".into(),
            name: "cart-1".into(),
            namespace: "shop".into(),
            addresses: vec![vec![10, 0, 0, 1].into()],
            tunnel_protocol: wire::TunnelProtocol::Hbone as i32,
            service_account: "cart".into(),
            services: [(
                "shop/cart.shop.svc.cluster.local".to_string(),
                wire::PortList {
                    ports: vec![wire::Port {
                        service_port: 80,
                        target_port: 8080,
                    }],
                },
            )]
            .into(),
            status: wire::WorkloadStatus::Unhealthy as i32,
            workload_type: wire::WorkloadType::Deployment as i32,
            ..Default::default()
        };
        let bytes = wire::Address {
            r#type: Some(wire::address::Type::Workload(w)),
        }
        .encode_to_vec();
        let Address::Workload(w) = address("x", &bytes).unwrap() else {
            panic!("workload")
        };
        assert_eq!(
            w.workload_ips,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            (w.protocol, w.status),
            (Protocol::HBONE, HealthStatus::Unhealthy)
        );
        assert_eq!(w.services["shop/cart.shop.svc.cluster.local"][&80], 8080);
        assert_eq!(w.workload_type, "deployment");

        let bad = wire::Address {
            r#type: Some(wire::address::Type::Service(wire::Service {
                namespace: "shop".into(),
                hostname: "h".into(),
                addresses: vec![wire::NetworkAddress {
                    network: String::new(),
                    address: vec![1, 2, 3],
                }],
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(
            address("shop/h", &bad).unwrap_err(),
            "service shop/h: addresses: 3-byte address (want 4 or 16)"
        );
        assert!(address("junk", &[0xff, 0xff])
            .unwrap_err()
            .starts_with("address junk:"));
    }
}
