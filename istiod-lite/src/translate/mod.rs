//! Pure translation of Kubernetes and Istio resources into what ztunnel consumes. No I/O: data
//! in, data out, plus the reasons an object could not be honoured fully (each naming the
//! object and field), which the sources surface as status conditions or log lines.

pub mod authz;
pub mod peer_authn;
pub mod workloads;
