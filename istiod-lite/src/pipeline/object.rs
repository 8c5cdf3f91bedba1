//! The objects the pipeline keeps: their kinds, and one object of any kind as sources hand it
//! over (a watcher event, a manifest document).

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::{
    AuthorizationPolicy, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, DestinationRule,
    Gateway, GrpcRoute, HttpRoute, LinkerdAuthorizationPolicy, MeshTlsAuthentication,
    NetworkAuthentication, PeerAuthentication, ReferenceGrant, RequestAuthentication, Server,
    ServerAuthorization, ServiceProfile, TlsSecret, TrafficSplit, VirtualService,
};

/// The kinds the pipeline keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Gateway,
    HttpRoute,
    GrpcRoute,
    VirtualService,
    DestinationRule,
    TrafficSplit,
    ServiceProfile,
    Server,
    ServerAuthorization,
    /// Linkerd's (`policy.linkerd.io`), not Istio's.
    LinkerdAuthorizationPolicy,
    MeshTlsAuthentication,
    NetworkAuthentication,
    /// Cilium's (`cilium.io/v2`); the cluster-wide kind is kept in the slice of no namespace.
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    /// Of type `kubernetes.io/tls` only: ingress gateways' certificates.
    Secret,
    ReferenceGrant,
}

impl Kind {
    pub const ALL: [Kind; 23] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::TrafficSplit,
        Kind::ServiceProfile,
        Kind::Server,
        Kind::ServerAuthorization,
        Kind::LinkerdAuthorizationPolicy,
        Kind::MeshTlsAuthentication,
        Kind::NetworkAuthentication,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
        Kind::Secret,
        Kind::ReferenceGrant,
    ];

    /// Kinds whose CRDs may not be installed: Gateway API's, Istio's networking ones,
    /// RequestAuthentication (waypoints' only; a `base` older than it must not keep ztunnels
    /// unserved), and Linkerd's and SMI's; and Secrets (ingress gateways' only: RBAC from an
    /// older chart that may not list them must not keep ztunnels unserved).
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            Kind::RequestAuthentication
                | Kind::Gateway
                | Kind::HttpRoute
                | Kind::GrpcRoute
                | Kind::VirtualService
                | Kind::DestinationRule
                | Kind::TrafficSplit
                | Kind::ServiceProfile
                | Kind::Server
                | Kind::ServerAuthorization
                | Kind::LinkerdAuthorizationPolicy
                | Kind::MeshTlsAuthentication
                | Kind::NetworkAuthentication
                | Kind::CiliumNetworkPolicy
                | Kind::CiliumClusterwideNetworkPolicy
                | Kind::Secret
                | Kind::ReferenceGrant
        )
    }

    /// Kinds only waypoints (and ingress gateways) read.
    pub(super) fn waypoint_only(self) -> bool {
        matches!(
            self,
            Kind::RequestAuthentication
                | Kind::HttpRoute
                | Kind::GrpcRoute
                | Kind::VirtualService
                | Kind::DestinationRule
                | Kind::TrafficSplit
                | Kind::ServiceProfile
                | Kind::Secret
                | Kind::ReferenceGrant
        )
    }
}

/// One object of a kept kind. (Unboxed: each is moved once, from a watcher or the manifest
/// reader into the pipeline's maps; a box would only add an allocation per event.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    TrafficSplit(TrafficSplit),
    ServiceProfile(ServiceProfile),
    Server(Server),
    ServerAuthorization(ServerAuthorization),
    LinkerdAuthorizationPolicy(LinkerdAuthorizationPolicy),
    MeshTlsAuthentication(MeshTlsAuthentication),
    NetworkAuthentication(NetworkAuthentication),
    CiliumNetworkPolicy(CiliumNetworkPolicy),
    CiliumClusterwideNetworkPolicy(CiliumClusterwideNetworkPolicy),
    Secret(TlsSecret),
    ReferenceGrant(ReferenceGrant),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::TrafficSplit(_) => Kind::TrafficSplit,
            Object::ServiceProfile(_) => Kind::ServiceProfile,
            Object::Server(_) => Kind::Server,
            Object::ServerAuthorization(_) => Kind::ServerAuthorization,
            Object::LinkerdAuthorizationPolicy(_) => Kind::LinkerdAuthorizationPolicy,
            Object::MeshTlsAuthentication(_) => Kind::MeshTlsAuthentication,
            Object::NetworkAuthentication(_) => Kind::NetworkAuthentication,
            Object::CiliumNetworkPolicy(_) => Kind::CiliumNetworkPolicy,
            Object::CiliumClusterwideNetworkPolicy(_) => Kind::CiliumClusterwideNetworkPolicy,
            Object::Secret(_) => Kind::Secret,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::TrafficSplit(o) => &o.metadata,
            Object::ServiceProfile(o) => &o.metadata,
            Object::Server(o) => &o.metadata,
            Object::ServerAuthorization(o) => &o.metadata,
            Object::LinkerdAuthorizationPolicy(o) => &o.metadata,
            Object::MeshTlsAuthentication(o) => &o.metadata,
            Object::NetworkAuthentication(o) => &o.metadata,
            Object::CiliumNetworkPolicy(o) => &o.metadata,
            Object::CiliumClusterwideNetworkPolicy(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::RequestAuthentication(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::TrafficSplit(o) => &mut o.metadata,
            Object::ServiceProfile(o) => &mut o.metadata,
            Object::Server(o) => &mut o.metadata,
            Object::ServerAuthorization(o) => &mut o.metadata,
            Object::LinkerdAuthorizationPolicy(o) => &mut o.metadata,
            Object::MeshTlsAuthentication(o) => &mut o.metadata,
            Object::NetworkAuthentication(o) => &mut o.metadata,
            Object::CiliumNetworkPolicy(o) => &mut o.metadata,
            Object::CiliumClusterwideNetworkPolicy(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::ReferenceGrant(o) => &mut o.metadata,
        }
    }

    /// The slice it belongs to: its namespace (a Namespace: its own name) and its name.
    pub(super) fn slice_key(&self) -> (String, String) {
        let meta = self.meta();
        let name = meta.name.clone().unwrap_or_default();
        match self {
            Object::Namespace(_) => (name.clone(), name),
            Object::CiliumClusterwideNetworkPolicy(_) => (String::new(), name),
            _ => (meta.namespace.clone().unwrap_or_default(), name),
        }
    }
}
