//! Pods and Services → ambient `Workload` and `Service` resources.
//!
//! - Every running pod with an IP becomes a Workload. It speaks HBONE when it is enrolled: its
//!   namespace carries `istio.io/dataplane-mode=ambient` and the pod does not opt out with the
//!   same label set to `none`; other pods (and host-network pods) are plain-TCP workloads, so
//!   enrolled clients still reach them.
//! - Every Service with cluster IPs becomes a Service; the pods its selector matches list it in
//!   their `services` map with the target port resolved (numbers, or named container ports). A
//!   Service without a selector takes its endpoints from its EndpointSlices (label
//!   `kubernetes.io/service-name`): the pods they reference get it, with the slices' ports.
//! - WorkloadSelector AuthorizationPolicies are bound to the pods whose labels they select.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::api::convert::ip_to_bytes;
use meshcore::api::workload as wire;

pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Cluster-wide facts translation needs.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub trust_domain: String,
    pub cluster_id: String,
    /// DNS suffix of Services (`cluster.local`).
    pub domain: String,
    pub root_namespace: String,
}

impl Default for ClusterInfo {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
        }
    }
}

/// A WorkloadSelector policy: its key and where it applies.
#[derive(Debug, Clone)]
pub struct SelectorPolicy {
    pub key: String,
    pub namespace: String,
    pub match_labels: BTreeMap<String, String>,
}

fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Whether pods of `namespace` with `pod_labels` are in the mesh.
pub fn enrolled(namespace: Option<&Namespace>, pod_labels: &BTreeMap<String, String>) -> bool {
    let ns_ambient = namespace
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .is_some_and(|v| v == "ambient");
    let pod_mode = pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str);
    match pod_mode {
        Some("none") => false,
        Some("ambient") => true,
        _ => ns_ambient,
    }
}

pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Service's hostname, `name.namespace.svc.<domain>`.
pub fn hostname(svc: &Service, info: &ClusterInfo) -> String {
    format!(
        "{}.{}.svc.{}",
        svc.metadata.name.as_deref().unwrap_or_default(),
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        info.domain
    )
}

/// Services with cluster IPs, and headless ones (`clusterIP: None`) without addresses, as
/// Istio sends them: ztunnel's DNS proxy answers their names with their endpoints' addresses.
/// ExternalName Services are the cluster DNS's business.
pub fn services(services: &[Service], info: &ClusterInfo) -> Vec<wire::Service> {
    services
        .iter()
        .filter_map(|svc| {
            let spec = svc.spec.as_ref()?;
            if spec.type_.as_deref() == Some("ExternalName") {
                return None;
            }
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .map(String::as_str);
            let ips = unique_ips(ips);
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if ips.is_empty() && !headless {
                return None; // no address assigned yet
            }
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    Some(wire::Port {
                        service_port: port(p.port)?,
                        target_port: match &p.target_port {
                            Some(IntOrString::Int(0)) | None => port(p.port)?,
                            Some(IntOrString::Int(t)) => port(*t)?,
                            // Named: resolved per endpoint in the workload's services map.
                            Some(IntOrString::String(_)) => 0,
                        },
                    })
                })
                .collect();
            Some(wire::Service {
                name: svc.metadata.name.clone().unwrap_or_default(),
                namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                hostname: hostname(svc, info),
                addresses: ips
                    .into_iter()
                    .map(|ip| wire::NetworkAddress {
                        network: String::new(),
                        address: ip_to_bytes(ip),
                    })
                    .collect(),
                ports,
                ..Default::default()
            })
        })
        .collect()
}

/// The Workload uid Istio uses: `<cluster>//Pod/<namespace>/<name>`.
pub fn pod_uid(info: &ClusterInfo, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", info.cluster_id)
}

/// Running pods with IPs.
pub fn workloads(
    pods: &[Pod],
    namespaces: &[Namespace],
    all_services: &[Service],
    endpoint_slices: &[EndpointSlice],
    selector_policies: &[SelectorPolicy],
    info: &ClusterInfo,
) -> Vec<wire::Workload> {
    let slice_endpoints = slice_endpoints(endpoint_slices);
    let ns_by_name: BTreeMap<&str, &Namespace> = namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    // Services and selector policies by namespace: a pod only ever meets its own namespace's
    // (and the root namespace's policies), so 10k pods × 1k services stays cheap.
    let mut services_by_ns: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
    for svc in all_services {
        if let Some(ns) = svc.metadata.namespace.as_deref() {
            services_by_ns.entry(ns).or_default().push(svc);
        }
    }
    let mut policies_by_ns: BTreeMap<&str, Vec<&SelectorPolicy>> = BTreeMap::new();
    for p in selector_policies {
        policies_by_ns
            .entry(p.namespace.as_str())
            .or_default()
            .push(p);
    }
    pods.iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.as_deref()?;
            let namespace = pod.metadata.namespace.as_deref()?;
            let spec = pod.spec.as_ref()?;
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
            let ips = unique_ips(ips);
            // A scheduled pod is published before it has an address: the node agent decides
            // its enrolment when the CNI plugin reports the pod, which is before the kubelet
            // writes the pod's IP. Without an address it is never an endpoint (not ready).
            if ips.is_empty() && spec.node_name.as_deref().is_none_or(str::is_empty) {
                return None; // not scheduled yet
            }
            let pod_labels = labels(&pod.metadata);
            let host_network = spec.host_network.unwrap_or(false);
            let hbone = !host_network && enrolled(ns_by_name.get(namespace).copied(), &pod_labels);
            let ready = !ips.is_empty()
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            let (workload_name, workload_type) = owner_workload(pod, name);
            let mut services = std::collections::HashMap::new();
            for svc in services_by_ns.get(namespace).into_iter().flatten() {
                let Some(sspec) = svc.spec.as_ref() else {
                    continue;
                };
                let has_selector = sspec.selector.as_ref().is_some_and(|s| !s.is_empty());
                // Without a selector, the endpoints are whatever its EndpointSlices list.
                let listed = if has_selector {
                    if !sspec
                        .selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &pod_labels))
                    {
                        continue;
                    }
                    None
                } else {
                    let svc_name = svc.metadata.name.as_deref().unwrap_or_default();
                    match slice_endpoints.get(&(namespace, svc_name, name)) {
                        Some(ports) => Some(ports),
                        None => continue,
                    }
                };
                let ports = sspec
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        let target = match (listed, &p.target_port) {
                            (Some(listed), _) => {
                                let wanted = p.name.as_deref().unwrap_or_default();
                                listed.iter().find(|(n, _)| n == wanted)?.1
                            }
                            (None, Some(IntOrString::Int(0)) | None) => p.port,
                            (None, Some(IntOrString::Int(t))) => *t,
                            (None, Some(IntOrString::String(named))) => named_port(pod, named)?,
                        };
                        Some(wire::Port {
                            service_port: port(p.port)?,
                            target_port: port(target)?,
                        })
                    })
                    .collect();
                services.insert(
                    format!("{namespace}/{}", hostname(svc, info)),
                    wire::PortList { ports },
                );
            }
            let root = if namespace == info.root_namespace {
                None
            } else {
                policies_by_ns.get(info.root_namespace.as_str())
            };
            let mut authorization_policies: Vec<String> = policies_by_ns
                .get(namespace)
                .into_iter()
                .chain(root)
                .flatten()
                .filter(|p| selects(&p.match_labels, &pod_labels))
                .map(|p| p.key.clone())
                .collect();
            authorization_policies.sort();
            Some(wire::Workload {
                uid: pod_uid(info, namespace, name),
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                addresses: ips.into_iter().map(|ip| ip_to_bytes(ip).into()).collect(),
                tunnel_protocol: if hbone {
                    wire::TunnelProtocol::Hbone
                } else {
                    wire::TunnelProtocol::None
                } as i32,
                trust_domain: info.trust_domain.clone(),
                service_account: spec
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                node: spec.node_name.clone().unwrap_or_default(),
                canonical_name: canonical_name(&pod_labels, &workload_name),
                canonical_revision: canonical_revision(&pod_labels),
                workload_type: workload_type as i32,
                workload_name,
                services,
                authorization_policies,
                status: if ready {
                    wire::WorkloadStatus::Healthy
                } else {
                    wire::WorkloadStatus::Unhealthy
                } as i32,
                cluster_id: info.cluster_id.clone(),
                network_mode: if host_network {
                    wire::NetworkMode::HostNetwork
                } else {
                    wire::NetworkMode::Standard
                } as i32,
                ..Default::default()
            })
        })
        .collect()
}

/// (namespace, service, pod) → the (port name, port) pairs of the EndpointSlices listing that
/// pod for that service.
type SliceEndpoints<'a> = BTreeMap<(&'a str, &'a str, &'a str), Vec<(String, i32)>>;

fn slice_endpoints(slices: &[EndpointSlice]) -> SliceEndpoints<'_> {
    let mut out: SliceEndpoints<'_> = BTreeMap::new();
    for slice in slices {
        let (Some(ns), Some(service)) = (
            slice.metadata.namespace.as_deref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name")),
        ) else {
            continue;
        };
        let ports: Vec<(String, i32)> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(pod) = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
            else {
                continue;
            };
            out.entry((ns, service.as_str(), pod))
                .or_default()
                .extend(ports.iter().cloned());
        }
    }
    out
}

/// A port number (1-65535) as the wire carries it. Objects holding another are refused before
/// translation (`pipeline::validate`); here such a port is left out, never cut down.
pub(crate) fn port(p: i32) -> Option<u32> {
    u16::try_from(p).ok().filter(|&p| p != 0).map(u32::from)
}

/// Parsable addresses, each once, in order.
pub(crate) fn unique_ips<'a>(ips: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for ip in ips.filter_map(|ip| ip.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

pub(crate) fn named_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// The owning workload: a Deployment (from its ReplicaSet's name minus the pod-template hash),
/// a Job, CronJob, or the pod itself.
fn owner_workload(pod: &Pod, pod_name: &str) -> (String, wire::WorkloadType) {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            let name = match hash {
                Some(h) => o.name.strip_suffix(&format!("-{h}")).unwrap_or(&o.name),
                None => &o.name,
            };
            (name.to_owned(), wire::WorkloadType::Deployment)
        }
        Some(o) if o.kind == "Job" => (o.name.clone(), wire::WorkloadType::Job),
        Some(o) if o.kind == "CronJob" => (o.name.clone(), wire::WorkloadType::Cronjob),
        Some(o) => (o.name.clone(), wire::WorkloadType::Pod),
        None => (pod_name.to_owned(), wire::WorkloadType::Pod),
    }
}

fn canonical_name(labels: &BTreeMap<String, String>, workload_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| workload_name.to_owned())
}

fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).cloned())
    .unwrap_or_else(|| "latest".into())
}

#[cfg(test)]
mod tests;
