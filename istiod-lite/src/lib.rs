//! istiod-lite: the mesh's control plane.
//!
//! Built so far: the Istio resource types it reads ([`crd`]) and the pure translation of
//! AuthorizationPolicy into the L4 `Authorization` ztunnel enforces ([`translate`]). The CA
//! service, the Kubernetes and manifest-directory sources and the delta xDS server build on
//! these (issue 4).

pub mod crd;
pub mod translate;
