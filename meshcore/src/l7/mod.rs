//! The waypoint's configuration: what one waypoint serves and how.
//!
//! This is the contract between the control plane and the waypoint, as [`crate::api`] is for
//! ztunnel: istiod-lite resolves which Services, routes and policies concern a waypoint and hands
//! it a [`WaypointConfig`]; without a control plane the waypoint reads the same shape from a YAML
//! file. Routes and policies keep the shapes users write (Gateway API `HTTPRoute` / `GRPCRoute`,
//! Istio `AuthorizationPolicy`, field names in camelCase), so an object taken from a cluster can be
//! pasted in unchanged; Services carry what the data path needs (addresses, ports with their
//! protocol, endpoints with their identity). Unknown fields are refused, naming the field.

pub mod authn;
pub mod authz;
pub mod duration;
pub mod gateway;
pub mod ingress;
pub mod networking;
pub mod service;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything one waypoint applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointConfig {
    /// Services whose traffic this waypoint receives, with their endpoints.
    #[serde(default)]
    pub services: Vec<service::Service>,
    /// Gateway API HTTPRoutes whose parents are those Services (or the waypoint itself).
    #[serde(default)]
    pub http_routes: Vec<gateway::HttpRoute>,
    /// Gateway API GRPCRoutes, likewise.
    #[serde(default)]
    pub grpc_routes: Vec<gateway::GrpcRoute>,
    /// Istio AuthorizationPolicies attached with `targetRefs` to the waypoint (Gateway), its
    /// GatewayClass, or a Service it serves.
    #[serde(default)]
    pub authorization_policies: Vec<authz::AuthorizationPolicy>,
    /// Istio RequestAuthentications (JWT) attached with `targetRefs` likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_authentications: Vec<authn::RequestAuthentication>,
    /// Istio VirtualServices whose `hosts` name a Service this waypoint serves (mesh-bound:
    /// no `gateways`, or `mesh` among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<networking::VirtualService>,
    /// Istio DestinationRules whose `host` names one of the Services above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<networking::DestinationRule>,
    /// Set for an ingress gateway (a Gateway of class `istio`): its listeners, certificates and
    /// ReferenceGrants. Its routes are the ones above whose parentRefs name the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ingress::IngressConfig>,
}

/// The part of Kubernetes' `metadata` the waypoint reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
// Other metadata a cluster returns (uid, resourceVersion, managedFields...) is ignored.
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// RFC 3339; orders routes of equal precedence (older first), as Gateway API specifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// `namespace/name`, as policies and routes are named in logs, metrics and status.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn default_namespace() -> String {
    "default".to_owned()
}
