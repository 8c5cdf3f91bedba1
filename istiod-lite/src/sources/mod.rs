//! Config sources: where istiod-lite's view of the cluster comes from. Today a directory of
//! manifests; the Kubernetes watchers (kube-rs) come next and feed the same translation.

pub mod dir;
