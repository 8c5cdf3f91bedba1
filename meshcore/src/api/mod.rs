//! Istio's public wire types, generated from our own `.proto` files in `meshcore/proto/` (Istio's
//! package names, message names and field numbers): the ambient xDS resources, delta xDS, the
//! certificate service and the node agent protocol. Conversions into the mesh's own model live
//! beside them.

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

/// Type URLs of the resources ztunnel subscribes to.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
}
