//! Gateway API objects (`gateway.networking.k8s.io/v1`) istiod-lite reads: `Gateway` (a waypoint
//! is one of class `istio-waypoint`, an ingress gateway one of class `istio`), `HTTPRoute` /
//! `GRPCRoute`, whose specs are meshcore's types, handed to waypoints exactly as written, and
//! `ReferenceGrant` (`v1beta1`), which ingress gateways honour.
//!
//! These are not kube-derive CRDs: the Gateway API project ships their definitions (users
//! install them, as for Istio), so `--print-crds` leaves them out. Each type implements
//! [`kube::Resource`] by hand so the watchers can read them. Unknown fields are not refused here
//! (a cluster may run a newer Gateway API); the manifest reader is strict on its own.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use meshcore::l7;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The Gateway API group.
pub const GROUP: &str = l7::gateway::GROUP;
pub const VERSION: &str = "v1";
/// The GatewayClass of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The GatewayClass of ingress gateways (Istio's).
pub const INGRESS_CLASS: &str = l7::ingress::INGRESS_CLASS;
/// The controller named in the route status entries istiod-lite writes
/// (`status.parents[].controllerName`), Istio's.
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// A `Gateway`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
    /// Written by whoever runs the Gateway; not read.
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(Gateway, GROUP, VERSION, "Gateway", "gateways");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewaySpecAddress>,
    /// Labels and annotations for what the Gateway's controller deploys: not used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "backendTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_tls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_listeners: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u16,
    /// `HBONE` for a waypoint's mesh listener.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// A listener's `tls`: how an ingress gateway's HTTPS listener terminates TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Implementation-specific options: not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
    /// Client certificate validation: not supported (reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_validation: Option<serde_json::Value>,
}

/// A listener's `certificateRefs[]` entry: a Secret by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// `""` (core) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Secret` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// The Gateway's namespace by default; another needs a ReferenceGrant there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`, also served as `v1`): lets objects
/// of other namespaces refer to objects in its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrant {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ReferenceGrantSpec,
}

namespaced_resource!(
    ReferenceGrant,
    GROUP,
    "v1beta1",
    "ReferenceGrant",
    "referencegrants"
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantTo {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ReferenceGrant {
    /// The grant in meshcore's shape ([`l7::ingress::permits`] reads it).
    pub fn to_l7(&self) -> l7::ingress::ReferenceGrant {
        l7::ingress::ReferenceGrant {
            namespace: self.metadata.namespace.clone().unwrap_or_default(),
            from: self
                .spec
                .from
                .iter()
                .map(|f| l7::ingress::GrantFrom {
                    group: f.group.clone(),
                    kind: f.kind.clone(),
                    namespace: f.namespace.clone(),
                })
                .collect(),
            to: self
                .spec
                .to
                .iter()
                .map(|t| l7::ingress::GrantTo {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    name: t.name.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

/// Which namespaces may attach: `Same` (the default), `All`, or `Selector`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpecAddress {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    pub value: String,
}

impl Listener {
    /// Whether objects of a namespace with `labels` may use the Gateway through this listener,
    /// per `allowedRoutes.namespaces` (`Same` when absent).
    pub fn allows_namespace(
        &self,
        gateway_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let namespaces = self
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        match namespaces.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
            "All" => true,
            "Selector" => namespaces
                .and_then(|n| n.selector.as_ref())
                .is_some_and(|s| selector_matches(s, labels)),
            _ => namespace == gateway_namespace,
        }
    }
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, ANDed). An empty
/// selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_label
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false, // the API server refuses other operators
            }
        })
}

/// An `HTTPRoute`: Kubernetes metadata around meshcore's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: l7::gateway::HttpRouteSpec,
    /// Route status (written by controllers): only whether it holds entries of ours is read.
    #[serde(default, skip_serializing)]
    pub status: Option<RouteStatusSeen>,
}

namespaced_resource!(HttpRoute, GROUP, VERSION, "HTTPRoute", "httproutes");

/// A `GRPCRoute`: Kubernetes metadata around meshcore's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: l7::gateway::GrpcRouteSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<RouteStatusSeen>,
}

namespaced_resource!(GrpcRoute, GROUP, VERSION, "GRPCRoute", "grpcroutes");

/// What istiod-lite reads of a route's `status`: which controllers wrote entries in
/// `parents`. After [`RouteStatusSeen::reduce`] it only says whether [`CONTROLLER_NAME`] has any,
/// so the route compares equal across status writes that do not change that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RouteStatusSeen {
    #[serde(default)]
    pub parents: Vec<RouteParentSeen>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentSeen {
    #[serde(default)]
    pub controller_name: String,
}

impl RouteStatusSeen {
    /// Whether Istio's controller (us) has entries in the route's status.
    pub fn has_ours(status: Option<&Self>) -> bool {
        status.is_some_and(|s| {
            s.parents
                .iter()
                .any(|p| p.controller_name == CONTROLLER_NAME)
        })
    }

    /// `Some` (one entry of ours) when the status holds entries of ours, else `None`.
    pub fn reduce(status: Option<Self>) -> Option<Self> {
        Self::has_ours(status.as_ref()).then(|| Self {
            parents: vec![RouteParentSeen {
                controller_name: CONTROLLER_NAME.into(),
            }],
        })
    }
}

/// The part of Kubernetes metadata the waypoint reads.
pub fn l7_meta(meta: &ObjectMeta) -> l7::ObjectMeta {
    l7::ObjectMeta {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    }
}

impl HttpRoute {
    /// The route as the waypoint takes it.
    pub fn to_l7(&self) -> l7::gateway::HttpRoute {
        l7::gateway::HttpRoute {
            api_version: l7::gateway::API_VERSION.into(),
            kind: "HTTPRoute".into(),
            metadata: l7_meta(&self.metadata),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

impl GrpcRoute {
    /// The route as the waypoint takes it.
    pub fn to_l7(&self) -> l7::gateway::GrpcRoute {
        l7::gateway::GrpcRoute {
            api_version: l7::gateway::API_VERSION.into(),
            kind: "GRPCRoute".into(),
            metadata: l7_meta(&self.metadata),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn resource_paths_are_gateway_apis() {
        assert_eq!(
            Gateway::url_path(&(), Some("shop")),
            "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways"
        );
        assert_eq!(
            HttpRoute::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1/httproutes"
        );
        assert_eq!(
            GrpcRoute::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1/grpcroutes"
        );
    }

    #[test]
    fn allowed_namespaces() {
        let listener: Listener = serde_yaml_ng::from_str(
            "{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector, \
             selector: {matchLabels: {team: a}, matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}}}}",
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(listener.allows_namespace("gw", "x", &labels(&[("team", "a")])));
        assert!(!listener.allows_namespace("gw", "x", &labels(&[("team", "a"), ("env", "prod")])));
        assert!(!listener.allows_namespace("gw", "x", &labels(&[])));
        let same: Listener =
            serde_yaml_ng::from_str("{name: mesh, port: 15008, protocol: HBONE}").unwrap();
        assert!(same.allows_namespace("gw", "gw", &labels(&[])));
        assert!(!same.allows_namespace("gw", "x", &labels(&[])));
        let all: Listener = serde_yaml_ng::from_str(
            "{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}",
        )
        .unwrap();
        assert!(all.allows_namespace("gw", "x", &labels(&[])));
    }

    #[test]
    fn route_keeps_its_spec_and_metadata() {
        let route: HttpRoute = serde_yaml_ng::from_str(
            "metadata: {name: r, namespace: shop, creationTimestamp: \"2024-05-01T10:00:00Z\", labels: {a: b}}\n\
             spec: {parentRefs: [{group: \"\", kind: Service, name: cart}], rules: [{backendRefs: [{name: cart, port: 80}]}]}\n\
             status: {parents: []}",
        )
        .unwrap();
        let l7 = route.to_l7();
        assert_eq!(l7.metadata.key(), "shop/r");
        assert_eq!(
            l7.metadata.creation_timestamp.as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        assert_eq!(l7.spec, route.spec);
        assert_eq!(l7.kind, "HTTPRoute");
    }
}
