//! Istio's public wire types, generated from our own `.proto` files in `meshcore/proto/` (Istio's
//! package names, message names and field numbers): the ambient xDS resources, delta xDS, the
//! certificate service and the node agent protocol. Conversions into the mesh's own model live
//! beside them.

#![allow(clippy::all, missing_docs)]

pub mod security {
    tonic::include_proto!("istio.security");
}

pub mod workload {
    tonic::include_proto!("istio.workload");
}

pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

pub mod zds {
    tonic::include_proto!("istio.workload.zds");
}

/// Type URLs of the resources ztunnel subscribes to.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
}
