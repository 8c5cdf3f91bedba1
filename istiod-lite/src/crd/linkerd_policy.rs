//! Linkerd's policy objects (`policy.linkerd.io`), read so a Linkerd user migrates by applying
//! the policy they have: `Server` (v1beta1 to v1beta3), `ServerAuthorization` (v1beta1),
//! `AuthorizationPolicy`, `MeshTLSAuthentication` and `NetworkAuthentication` (v1alpha1).
//! istiod-lite turns them into Istio AuthorizationPolicies enforced by ztunnel
//! ([`crate::translate::linkerd_policy`]); what does not map is reported by name.
//!
//! Not CRDs of ours (Linkerd ships them): [`kube::Resource`] by hand, as for TrafficSplit.
//! Unknown fields are refused by the manifest reader. Linkerd's `AuthorizationPolicy` shares
//! its kind name with Istio's (`security.istio.io`); here it is [`LinkerdAuthorizationPolicy`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The group of every kind here.
pub const GROUP: &str = "policy.linkerd.io";

/// A Kubernetes label selector, as Linkerd's `podSelector` and `server.selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A Linkerd `Server`: one port (a number, or a container port's name) of the pods its
/// `podSelector` picks in its namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ServerSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(Server, "policy.linkerd.io", "v1beta3", "Server", "servers");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// v1beta2+: ExternalWorkloads (VMs); none exist in this mesh (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_workload_selector: Option<LabelSelector>,
    pub port: IntOrString,
    /// Protocol detection (`unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, `TLS`): nothing to do
    /// at L4, accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// v1beta3: what clients no authorization names get (`deny` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<String>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            pod_selector: None,
            external_workload_selector: None,
            port: IntOrString::Int(0),
            proxy_protocol: None,
            access_policy: None,
        }
    }
}

/// A Linkerd `ServerAuthorization` (superseded by AuthorizationPolicy, still served).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerAuthorization {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ServerAuthorizationSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    ServerAuthorization,
    "policy.linkerd.io",
    "v1beta1",
    "ServerAuthorization",
    "serverauthorizations"
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerAuthorizationSpec {
    pub server: ServerRef,
    pub client: Client,
}

/// The Servers of the authorization's namespace: one by `name`, or those whose labels the
/// `selector` matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Client {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub unauthenticated: bool,
    #[serde(default, rename = "meshTLS", skip_serializing_if = "Option::is_none")]
    pub mesh_tls: Option<MeshTls>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTls {
    /// TLS without a client identity (Linkerd's identity controller): no equivalent here.
    #[serde(default, rename = "unauthenticatedTLS")]
    pub unauthenticated_tls: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A client network: `cidr` minus the `except` ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// Linkerd's `AuthorizationPolicy` (`policy.linkerd.io/v1alpha1`): the clients meeting every
/// `requiredAuthenticationRefs` entry may reach `targetRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkerdAuthorizationPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: LinkerdAuthorizationPolicySpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    LinkerdAuthorizationPolicy,
    "policy.linkerd.io",
    "v1alpha1",
    "AuthorizationPolicy",
    "authorizationpolicies"
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkerdAuthorizationPolicySpec {
    pub target_ref: LocalTargetRef,
    #[serde(default)]
    pub required_authentication_refs: Vec<NamespacedTargetRef>,
}

/// An object of the referrer's namespace, by group, kind and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
}

/// An object by group, kind, name and namespace (the referrer's when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Whether `(group, kind)` as written names `want_kind` of `want_group` (`""` for the core
/// group, which may also be written `core` or left out), as Linkerd compares them.
pub fn names_kind(group: Option<&str>, kind: &str, want_group: &str, want_kind: &str) -> bool {
    let group = match group.unwrap_or_default() {
        "core" => "",
        g => g,
    };
    kind.eq_ignore_ascii_case(want_kind) && group == want_group
}

/// `Kind` or `Kind.group` as written, for reports.
pub fn canonical_kind(group: Option<&str>, kind: &str) -> String {
    match group.unwrap_or_default() {
        "" | "core" => kind.to_owned(),
        g => format!("{kind}.{g}"),
    }
}

/// A set of mesh identities: Linkerd identity strings, or ServiceAccounts and Namespaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTlsAuthentication {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: MeshTlsAuthenticationSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    MeshTlsAuthentication,
    "policy.linkerd.io",
    "v1alpha1",
    "MeshTLSAuthentication",
    "meshtlsauthentications"
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTlsAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_refs: Vec<NamespacedTargetRef>,
}

/// A set of client networks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAuthentication {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: NetworkAuthenticationSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    NetworkAuthentication,
    "policy.linkerd.io",
    "v1alpha1",
    "NetworkAuthentication",
    "networkauthentications"
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<Network>,
}
