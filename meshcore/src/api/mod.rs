//! Istio's public wire types, generated from our own `.proto` files in `meshcore/proto/` (Istio's
//! package names, message names and field numbers): the ambient xDS resources, delta xDS, the
//! certificate service and the node agent protocol; plus our own waypoint configuration resource
//! (`mesh.waypoint.v1`) and egress policy resource (`mesh.egress.v1`). Conversions into the mesh's own model live beside them.

pub mod convert;

#[allow(clippy::all)]
pub mod security {
    tonic::include_proto!("istio.security");
}

#[allow(clippy::all)]
pub mod workload {
    tonic::include_proto!("istio.workload");
}

#[allow(clippy::all)]
pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

#[allow(clippy::all)]
pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

#[allow(clippy::all)]
pub mod zds {
    tonic::include_proto!("istio.workload.zds");
}

/// The waypoint's configuration resource (ours: Istio feeds its Envoy waypoints differently).
#[allow(clippy::all)]
pub mod waypoint {
    tonic::include_proto!("mesh.waypoint.v1");
}

/// Egress policies for ztunnel (ours: Istio's ambient mesh has no L4 egress policy).
#[allow(clippy::all)]
pub mod egress {
    tonic::include_proto!("mesh.egress.v1");
}

/// Type URLs of the resources served over delta ADS.
pub mod type_url {
    /// ztunnel: workloads and services.
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    /// ztunnel: L4 policies.
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
    /// A waypoint: its whole configuration, named `<namespace>/<gateway name>`, subscribed to by
    /// name (never wildcard).
    pub const WAYPOINT_CONFIG: &str = "type.googleapis.com/mesh.waypoint.v1.WaypointConfig";
    /// An egress policy (Cilium's egress rules resolved), named `<namespace>/<name>`,
    /// subscribed to with a wildcard.
    pub const EGRESS_POLICY: &str = "type.googleapis.com/mesh.egress.v1.EgressPolicy";
}
