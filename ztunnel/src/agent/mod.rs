//! The node agent: puts the node's enrolled pods in the mesh. It installs the redirect rules in
//! each pod's network namespace ([`rules`]) and hands the namespaces to the node's ztunnel over
//! the ZDS socket ([`server`]). Built so far: the rules and the ZDS server; the enrolment
//! decision (namespace label, pod opt-out) from the cluster view and the CNI plugin come next.

pub mod rules;
pub mod server;
