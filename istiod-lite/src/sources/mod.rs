//! Config sources: where istiod-lite's view of the cluster comes from. A directory of manifests
//! ([`dir`]) or the Kubernetes API ([`kube`], with policy status written back by [`status`]);
//! both feed the same [`crate::pipeline::Pipeline`].

pub mod dir;
pub mod kube;
pub mod status;
