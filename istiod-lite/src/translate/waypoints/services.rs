//! Kubernetes Services and the pods behind them → the waypoint's [`l7::service::Service`]:
//! cluster IPs, TCP ports with name, `appProtocol` and target port, and one endpoint per running
//! pod with an address (pod name, namespace, service account, labels, Ready as healthy), from
//! the same objects the Workload translation reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::l7;

use super::View;
use crate::translate::workloads::{enrolled, named_port, selects, unique_ips};
use crate::translate::{ClusterInfo, Note};

/// The Service as the waypoint sees it; `None` (with a note) when it has no TCP port.
pub fn service(
    svc: &Service,
    view: &View<'_>,
    info: &ClusterInfo,
) -> (Option<l7::service::Service>, Vec<Note>) {
    let mut notes = Vec::new();
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let Some(spec) = svc.spec.as_ref() else {
        return (None, notes);
    };
    let tcp: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    if tcp.is_empty() {
        notes.push(Note {
            object,
            message: "no TCP port: left out of its waypoint's configuration".into(),
        });
        return (None, notes);
    }
    let pods: Vec<&Pod> = view
        .pods
        .get(namespace)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .to_vec();
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty());
    // Without a selector, the endpoints are the pods its EndpointSlices list, with their ports.
    let sliced = match selector {
        Some(_) => None,
        None => Some(slice_pods(view.endpoint_slices.get(namespace), name)),
    };
    let mut behind: Vec<&Pod> = pods
        .into_iter()
        .filter(|pod| {
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            match (selector, &sliced) {
                (Some(selector), _) => {
                    let empty = BTreeMap::new();
                    selects(selector, pod.metadata.labels.as_ref().unwrap_or(&empty))
                }
                (None, Some(listed)) => listed.pods.contains(&pod_name),
                (None, None) => false,
            }
        })
        .collect();
    behind.sort_by_key(|p| p.metadata.name.clone());
    let namespace_object = view.namespaces.get(namespace).copied();
    let mut endpoints: Vec<l7::service::Endpoint> = behind
        .iter()
        .filter_map(|p| endpoint(p, namespace_object))
        .collect();
    endpoints.sort_by(|a, b| (&a.name, a.address).cmp(&(&b.name, b.address)));
    let ports = tcp
        .iter()
        // Out of range: refused before translation (`pipeline::validate`); never cut down.
        .filter(|p| crate::translate::workloads::port(p.port).is_some())
        .map(|p| {
            let target = match (&sliced, &p.target_port) {
                (Some(listed), _) => {
                    let wanted = p.name.as_deref().unwrap_or_default();
                    listed.ports.get(wanted).copied()
                }
                (None, Some(IntOrString::Int(t))) => Some(*t),
                (None, Some(IntOrString::String(named))) => {
                    let found = behind.iter().find_map(|pod| named_port(pod, named));
                    if found.is_none() && !behind.is_empty() {
                        notes.push(Note {
                            object: object.clone(),
                            message: format!(
                                "port {}: targetPort {named:?} names no container port of its pods; \
                                 the waypoint sends to port {}",
                                p.port, p.port
                            ),
                        });
                    }
                    found
                }
                (None, None) => None,
            };
            l7::service::ServicePort {
                port: u16::try_from(p.port).unwrap_or_default(),
                target_port: target
                    .and_then(crate::translate::workloads::port)
                    .and_then(|t| u16::try_from(t).ok()),
                name: p.name.clone(),
                app_protocol: p.app_protocol.clone(),
            }
        })
        .collect();
    let vips = unique_ips(
        spec.cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .map(String::as_str),
    );
    let service = l7::service::Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname: Some(format!("{name}.{namespace}.svc.{}", info.domain)),
        vips,
        ports,
        endpoints,
        subject_alt_names: Vec::new(),
    };
    (Some(service), notes)
}

/// A running pod with an address, as an endpoint: over HBONE when it is in the mesh (as its
/// Workload says), plain TCP otherwise.
pub fn endpoint(pod: &Pod, namespace: Option<&Namespace>) -> Option<l7::service::Endpoint> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ips = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref());
    let address = *unique_ips(ips).first()?;
    let healthy = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some(l7::service::Endpoint {
        address,
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        healthy,
        hbone_port: None,
        protocol: if in_mesh(pod, namespace) {
            l7::service::TunnelProtocol::HBONE
        } else {
            l7::service::TunnelProtocol::TCP
        },
    })
}

fn in_mesh(pod: &Pod, namespace: Option<&Namespace>) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let empty = BTreeMap::new();
    !host_network && enrolled(namespace, pod.metadata.labels.as_ref().unwrap_or(&empty))
}

/// What a selector-less Service's EndpointSlices list: pod names and ports by port name.
struct Listed<'a> {
    pods: Vec<&'a str>,
    ports: BTreeMap<String, i32>,
}

fn slice_pods<'a>(slices: Option<&Vec<&'a EndpointSlice>>, service: &str) -> Listed<'a> {
    let mut out = Listed {
        pods: Vec::new(),
        ports: BTreeMap::new(),
    };
    let ours = slices.into_iter().flatten().filter(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .is_some_and(|n| n == service)
    });
    for slice in ours {
        for p in slice.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") == "TCP" {
                if let Some(port) = p.port {
                    out.ports.insert(p.name.clone().unwrap_or_default(), port);
                }
            }
        }
        let pods = slice.endpoints.iter().flatten().filter_map(|e| {
            e.target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
        });
        out.pods.extend(pods);
    }
    out
}
