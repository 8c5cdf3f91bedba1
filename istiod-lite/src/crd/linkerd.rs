//! Linkerd's and SMI's traffic objects, read so a Linkerd user migrates by applying what they
//! have: SMI `TrafficSplit` (`split.smi-spec.io`, v1alpha1 to v1alpha4) and Linkerd
//! `ServiceProfile` (`linkerd.io/v1alpha2`). istiod-lite turns them into VirtualServices for the
//! waypoint ([`crate::translate::linkerd`]); what does not map is reported by name.
//!
//! Not CRDs of ours (Linkerd and SMI ship theirs): [`kube::Resource`] by hand, as for the
//! Gateway API types. Unknown fields are refused by the manifest reader.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An SMI `TrafficSplit`: requests to `service` (the apex) shared among `backends` by weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplit {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: TrafficSplitSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    TrafficSplit,
    "split.smi-spec.io",
    "v1alpha2",
    "TrafficSplit",
    "trafficsplits"
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The apex Service clients address.
    pub service: String,
    pub backends: Vec<TrafficSplitBackend>,
    /// v1alpha3+: HTTPRouteGroup matches; not mapped (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitBackend {
    pub service: String,
    /// An integer (v1alpha2+) or a quantity such as `500m` (v1alpha1).
    pub weight: Value,
}

/// A Linkerd `ServiceProfile`, named for the Service's FQDN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProfile {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ServiceProfileSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    ServiceProfile,
    "linkerd.io",
    "v1alpha2",
    "ServiceProfile",
    "serviceprofiles"
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceProfileSpec {
    #[serde(default)]
    pub routes: Vec<ProfileRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Not mapped (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_overrides: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileRoute {
    pub name: String,
    pub condition: RequestMatch,
    #[serde(default)]
    pub is_retryable: bool,
    /// A Go duration (`300ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Not mapped: the waypoint classifies 5xx as failure (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_classes: Option<Value>,
}

/// A Linkerd request match: `method` and `pathRegex`, combined with `all`, `any`, `not`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<RequestMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<RequestMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<RequestMatch>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub retry_ratio: f64,
    pub min_retries_per_second: u32,
    pub ttl: String,
}
