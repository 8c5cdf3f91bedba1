//! istiod-lite: the mesh's control plane.
//!
//! Built so far: the Istio resource types it reads ([`crd`]), manifests read from a directory
//! ([`manifests`]) into one [`cluster::Cluster`] view, and the pure translation of that view into
//! the ambient xDS resources ztunnel consumes ([`translate`]). The CA service, the Kubernetes
//! source and the delta xDS server build on these (issue 4).

pub mod ca;
pub mod cluster;
pub mod crd;
pub mod http;
pub mod manifests;
pub mod sources;
pub mod translate;
pub mod xds;
