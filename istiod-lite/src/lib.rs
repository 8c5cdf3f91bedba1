//! istiod-lite: the mesh's control plane.
//!
//! The sources ([`sources`]: a manifest directory, or Kubernetes) feed the objects into the
//! [`pipeline`], which keeps them per namespace and translates what changed ([`translate`]: pure
//! code) into the ambient xDS resources that the delta ADS server ([`xds`]) streams to ztunnels.
//! The certificate service ([`ca`]) signs workload certificates for the pods of a caller's
//! node.

pub mod ca;
pub mod cluster;
pub mod crd;
pub mod http;
pub mod manifests;
pub mod pipeline;
pub mod sources;
pub mod translate;
pub mod xds;
