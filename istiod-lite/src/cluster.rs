//! What the config sources hand the translation: the cluster's objects as typed values.
//! Kubernetes core types come from k8s-openapi; Istio's and Gateway API's from [`crate::crd`].

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use crate::crd::cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};
pub use crate::crd::gateway::{Gateway, GrpcRoute, HttpRoute, ReferenceGrant};
pub use crate::crd::linkerd::{ServiceProfile, TrafficSplit};
pub use crate::crd::linkerd_policy::{
    LinkerdAuthorizationPolicy, MeshTlsAuthentication, NetworkAuthentication, Server,
    ServerAuthorization,
};
pub use crate::crd::networking::{DestinationRule, VirtualService};
pub use crate::crd::secret::TlsSecret;
pub use crate::crd::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// One consistent view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Endpoints of Services without a selector.
    pub endpoint_slices: Vec<EndpointSlice>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
    /// JWT validation; only those attached to a waypoint (`targetRefs`) are used.
    pub request_authentications: Vec<RequestAuthentication>,
    /// Gateway API: waypoints are Gateways of class `istio-waypoint`.
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    /// Secrets of type `kubernetes.io/tls` (ingress gateways' certificates); others are not
    /// kept.
    pub secrets: Vec<TlsSecret>,
    /// Gateway API ReferenceGrants (ingress gateways' cross-namespace references).
    pub reference_grants: Vec<ReferenceGrant>,
    /// Istio traffic management, applied by waypoints.
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// Linkerd and SMI, turned into VirtualServices for waypoints.
    pub traffic_splits: Vec<TrafficSplit>,
    pub service_profiles: Vec<ServiceProfile>,
    /// Linkerd's policy (`policy.linkerd.io`), turned into AuthorizationPolicies for ztunnel.
    pub servers: Vec<Server>,
    pub server_authorizations: Vec<ServerAuthorization>,
    pub linkerd_authorization_policies: Vec<LinkerdAuthorizationPolicy>,
    pub mesh_tls_authentications: Vec<MeshTlsAuthentication>,
    pub network_authentications: Vec<NetworkAuthentication>,
    /// Cilium's policies (`cilium.io/v2`); their ingress rules become authorizations.
    pub cilium_network_policies: Vec<CiliumNetworkPolicy>,
    pub cilium_clusterwide_network_policies: Vec<CiliumClusterwideNetworkPolicy>,
    /// Pods outside this view's `pods` that Cilium selectors (`fromEndpoints`) may pick: the
    /// pipeline fills it with every other namespace's pods when a Cilium policy is translated
    /// slice by slice; a whole-cluster view leaves it empty.
    pub peer_pods: Vec<PodIdentity>,
    /// Likewise the Services of other namespaces a Cilium `toServices[].k8sServiceSelector`
    /// may pick.
    pub peer_services: Vec<ServiceIdentity>,
}

/// What a Cilium `k8sServiceSelector` reads of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceIdentity {
    pub namespace: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ServiceIdentity {
    pub fn of(service: &Service) -> Option<ServiceIdentity> {
        Some(ServiceIdentity {
            namespace: service.metadata.namespace.clone()?,
            name: service.metadata.name.clone()?,
            labels: service.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

/// What a label selector over pods reads of a pod, and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub ips: Vec<std::net::IpAddr>,
    /// Named container ports (name, number): what a Cilium egress rule's named port resolves
    /// to on the destination pods.
    pub named_ports: Vec<(String, i32)>,
}

impl PodIdentity {
    /// A pod that is not finished (Succeeded, Failed).
    pub fn of(pod: &Pod) -> Option<PodIdentity> {
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let mut ips: Vec<std::net::IpAddr> = status
            .into_iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|p| p.ip.as_str())
                    .chain(s.pod_ip.as_deref())
            })
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        Some(PodIdentity {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            named_ports: named_ports(pod),
        })
    }
}

/// A pod's named container ports, sorted.
fn named_ports(pod: &Pod) -> Vec<(String, i32)> {
    let mut ports: Vec<(String, i32)> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// `namespace/name` of an object.
pub fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
