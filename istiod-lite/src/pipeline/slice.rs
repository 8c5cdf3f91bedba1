//! One namespace's objects, and what they translated to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::Kind;
use crate::cluster::{
    AuthorizationPolicy, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, DestinationRule,
    Gateway, GrpcRoute, HttpRoute, LinkerdAuthorizationPolicy, MeshTlsAuthentication,
    NetworkAuthentication, PeerAuthentication, ReferenceGrant, RequestAuthentication, Server,
    ServerAuthorization, ServiceProfile, TlsSecret, TrafficSplit, VirtualService,
};
use crate::translate::Note;
use crate::xds::resources::Encoded;

/// Everything of one namespace, and what it translated to.
#[derive(Debug, Default)]
pub(super) struct Slice {
    pub(super) namespace: Option<Namespace>,
    pub(super) pods: BTreeMap<String, Pod>,
    pub(super) services: BTreeMap<String, Service>,
    pub(super) endpoint_slices: BTreeMap<String, EndpointSlice>,
    pub(super) policies: BTreeMap<String, AuthorizationPolicy>,
    pub(super) peer_authns: BTreeMap<String, PeerAuthentication>,
    pub(super) request_authns: BTreeMap<String, RequestAuthentication>,
    pub(super) gateways: BTreeMap<String, Gateway>,
    pub(super) http_routes: BTreeMap<String, HttpRoute>,
    pub(super) grpc_routes: BTreeMap<String, GrpcRoute>,
    pub(super) virtual_services: BTreeMap<String, VirtualService>,
    pub(super) destination_rules: BTreeMap<String, DestinationRule>,
    pub(super) traffic_splits: BTreeMap<String, TrafficSplit>,
    pub(super) service_profiles: BTreeMap<String, ServiceProfile>,
    pub(super) servers: BTreeMap<String, Server>,
    pub(super) server_authorizations: BTreeMap<String, ServerAuthorization>,
    pub(super) linkerd_policies: BTreeMap<String, LinkerdAuthorizationPolicy>,
    pub(super) mesh_tls_authns: BTreeMap<String, MeshTlsAuthentication>,
    pub(super) network_authns: BTreeMap<String, NetworkAuthentication>,
    pub(super) cilium_policies: BTreeMap<String, CiliumNetworkPolicy>,
    /// In the slice of no namespace only.
    pub(super) cilium_clusterwide: BTreeMap<String, CiliumClusterwideNetworkPolicy>,
    /// TLS Secrets (ingress gateways' certificates).
    pub(super) secrets: BTreeMap<String, TlsSecret>,
    pub(super) reference_grants: BTreeMap<String, ReferenceGrant>,
    pub(super) output: Encoded,
    pub(super) notes: Vec<Note>,
    pub(super) dirty: bool,
}

impl Slice {
    pub(super) fn is_empty(&self) -> bool {
        self.namespace.is_none()
            && self.pods.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.policies.is_empty()
            && self.peer_authns.is_empty()
            && self.request_authns.is_empty()
            && self.gateways.is_empty()
            && self.http_routes.is_empty()
            && self.grpc_routes.is_empty()
            && self.virtual_services.is_empty()
            && self.destination_rules.is_empty()
            && self.traffic_splits.is_empty()
            && self.service_profiles.is_empty()
            && self.servers.is_empty()
            && self.server_authorizations.is_empty()
            && self.linkerd_policies.is_empty()
            && self.mesh_tls_authns.is_empty()
            && self.network_authns.is_empty()
            && self.cilium_policies.is_empty()
            && self.cilium_clusterwide.is_empty()
            && self.secrets.is_empty()
            && self.reference_grants.is_empty()
    }

    pub(super) fn names(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Namespace => self
                .namespace
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.endpoint_slices.keys().cloned().collect(),
            Kind::AuthorizationPolicy => self.policies.keys().cloned().collect(),
            Kind::PeerAuthentication => self.peer_authns.keys().cloned().collect(),
            Kind::RequestAuthentication => self.request_authns.keys().cloned().collect(),
            Kind::Gateway => self.gateways.keys().cloned().collect(),
            Kind::HttpRoute => self.http_routes.keys().cloned().collect(),
            Kind::GrpcRoute => self.grpc_routes.keys().cloned().collect(),
            Kind::VirtualService => self.virtual_services.keys().cloned().collect(),
            Kind::DestinationRule => self.destination_rules.keys().cloned().collect(),
            Kind::TrafficSplit => self.traffic_splits.keys().cloned().collect(),
            Kind::ServiceProfile => self.service_profiles.keys().cloned().collect(),
            Kind::Server => self.servers.keys().cloned().collect(),
            Kind::ServerAuthorization => self.server_authorizations.keys().cloned().collect(),
            Kind::LinkerdAuthorizationPolicy => self.linkerd_policies.keys().cloned().collect(),
            Kind::MeshTlsAuthentication => self.mesh_tls_authns.keys().cloned().collect(),
            Kind::NetworkAuthentication => self.network_authns.keys().cloned().collect(),
            Kind::CiliumNetworkPolicy => self.cilium_policies.keys().cloned().collect(),
            Kind::CiliumClusterwideNetworkPolicy => {
                self.cilium_clusterwide.keys().cloned().collect()
            }
            Kind::Secret => self.secrets.keys().cloned().collect(),
            Kind::ReferenceGrant => self.reference_grants.keys().cloned().collect(),
        }
    }
}

/// Upserts into a map; whether anything changed.
pub(super) fn put<T: PartialEq>(map: &mut BTreeMap<String, T>, name: String, value: T) -> bool {
    match map.get(&name) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(name, value);
            true
        }
    }
}
