//! Cilium's network policies (`cilium.io/v2`): `CiliumNetworkPolicy` (namespaced) and
//! `CiliumClusterwideNetworkPolicy` (cluster-scoped), read so a Cilium user's ingress policy
//! applies unchanged; [`crate::translate::cilium`] turns their ingress rules into the L4
//! authorizations ztunnel enforces.
//!
//! Not CRDs of ours (Cilium ships them): [`kube::Resource`] by hand. Unknown fields are refused
//! by the manifest reader; fields Cilium knows but ztunnel cannot enforce (L7 `rules`, `icmps`,
//! `fromRequires`, `toGroups`, ...) are accepted as JSON values and reported by the translation.
//! Egress rules ([`EgressRule`]) are typed like ingress rules; their translation is
//! [`crate::translate::cilium::egress`].
//! `toPorts[].port` / `protocol` / `endPort` (a port written one level too high, a common
//! mistake) are accepted here so validation can refuse the object with the fix.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group of both kinds.
pub const GROUP: &str = "cilium.io";

/// A namespaced Cilium policy: `spec` and/or `specs` (each an independent rule set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PolicyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<PolicyRule>,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    CiliumNetworkPolicy,
    "cilium.io",
    "v2",
    "CiliumNetworkPolicy",
    "ciliumnetworkpolicies"
);

/// A cluster-wide Cilium policy: its `endpointSelector` picks pods in every namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumClusterwideNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PolicyRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<PolicyRule>,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

impl kube::Resource for CiliumClusterwideNetworkPolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "CiliumClusterwideNetworkPolicy".into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v2".into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "ciliumclusterwidenetworkpolicies".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One rule set (Cilium's `api.Rule`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    /// Host policies (the node itself): reported, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<Value>,
    /// `None`: no ingress section (ingress not restricted by this rule set); `Some([])`:
    /// selected pods get default deny and nothing allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressRule>>,
    /// `None`: no egress section; `Some([])`: selected pods get egress default deny and
    /// nothing allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// Cilium's endpoint selector: a Kubernetes label selector whose keys may carry a source
/// prefix (`k8s:`, `any:`, `reserved:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// An ingress (or ingressDeny) rule: who (`from*`, ORed) may reach which ports (`toPorts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// Not translated (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
}

/// An egress (or egressDeny) rule: where (`to*`, ORed) the selected pods may connect, on which
/// ports (`toPorts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServiceRef>>,
    /// Not in `egressDeny` (Cilium's EgressDenyRule has none): refused there.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// Not translated (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
}

/// `toServices[]`: a Service by name, or Services by their labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service: Option<K8sService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_selector: Option<K8sServiceSelector>,
}

/// `k8sService`: `namespace` defaults to the policy's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `k8sServiceSelector`: Services whose labels match `selector`, in `namespace` (the policy's
/// by default; every namespace for a cluster-wide policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sServiceSelector {
    pub selector: EndpointSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `toFQDNs[]`: exactly one of `matchName`, `matchPattern`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<EndpointSelector>,
}

/// `toPorts[]`: the ports under `ports`, L7 `rules` and TLS settings (reported).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Value>,
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<Value>,
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Value>,
    /// Misplaced (belongs under `ports[]`): the object is refused with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

/// `ports[]`: a number or a container port's name, `protocol` TCP/UDP/SCTP/ANY (ANY when
/// unset), and `endPort` for a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}
