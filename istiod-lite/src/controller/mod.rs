//! The waypoints' deployment controller and the Gateway API status writer (cluster mode), as
//! Istio's gateway deployment controller and status writers are:
//!
//! - for each Gateway of class `istio-waypoint`, a ServiceAccount, a Deployment and a Service
//!   ([`render`]), owned by the Gateway, applied with server-side apply and re-applied when they
//!   drift; the `istio-ca-root-cert` ConfigMap in every namespace with a waypoint and in the root namespace (where the node DaemonSets mount it);
//! - for each Gateway of class `istio` (an ingress gateway), the same three objects
//!   ([`render::ingress`]: `<name>-istio`, a LoadBalancer Service with the listener ports);
//! - the Gateway's status ([`gateway_status`], [`ingress_status`]): addresses, `Accepted`,
//!   `Programmed`, and an ingress Gateway's listeners;
//! - each route's status towards the parents it names that are ours
//!   ([`crate::translate::route_status`]).
//!
//! The pure parts are [`render`] and [`gateway_status`]; [`run`] talks to the API server.

pub mod gateway_status;
pub mod ingress_status;
pub mod render;
pub mod run;
pub mod writes;

use serde_json::Value;

use crate::translate::ClusterInfo;

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "istiod-lite";
/// istiod-lite's address as a waypoint reaches it, by default (Istio's discovery address).
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// The waypoint image, by default: built from this workspace, same version.
pub const DEFAULT_WAYPOINT_IMAGE: &str = concat!("waypoint:", env!("CARGO_PKG_VERSION"));

/// What the deployed waypoints are given.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    pub image: String,
    /// istiod-lite's xDS and certificate service (`host:port`): the waypoint's `XDS_ADDRESS` and
    /// `CA_ADDRESS`.
    pub discovery_address: String,
    /// Trust domain, cluster id and root namespace the waypoint must agree on with us.
    pub info: ClusterInfo,
    /// The mesh root, published in `istio-ca-root-cert`.
    pub root_pem: String,
    /// The waypoints' span export settings (`OTEL_*` variables); empty: no tracing.
    pub tracing: Vec<(&'static str, String)>,
}

/// Whether every field of `desired` is in `observed` with the same value: objects field by
/// field (extra fields in `observed`, such as the API server's defaults, do not matter), lists
/// element by element with the same length, everything else equal. What decides whether an
/// object we apply has drifted.
pub fn subset(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d
            .iter()
            .all(|(k, v)| o.get(k).is_some_and(|ov| subset(v, ov))),
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len() && d.iter().zip(o).all(|(d, o)| subset(d, o))
        }
        (d, o) => d == o,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn subset_ignores_defaults_but_not_changes() {
        let desired = json!({"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
        let defaulted = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                                        "selector": {"a": "b"}, "clusterIP": "10.0.0.1"}});
        assert!(super::subset(&desired, &defaulted));
        let changed = json!({"spec": {"ports": [{"port": 81}], "selector": {"a": "b"}}});
        assert!(!super::subset(&desired, &changed));
        let more = json!({"spec": {"ports": [{"port": 80}, {"port": 81}], "selector": {"a": "b"}}});
        assert!(!super::subset(&desired, &more), "lists are compared whole");
        assert!(!super::subset(&desired, &json!({"spec": {}})));
    }
}
