//! The node agent: puts the node's enrolled pods in the mesh. It decides which pods are in from
//! the control plane's Workloads ([`program`]), learns their network namespaces from the CNI
//! plugin ([`cni`]) or by scanning the node ([`discover`]), installs the redirect rules in each
//! pod's namespace ([`rules`]) and hands the namespaces to the node's ztunnel over the ZDS
//! socket ([`server`]). In a cluster it also installs the CNI plugin on the node ([`install`]).

pub mod cni;
pub mod discover;
pub mod host;
pub mod install;
pub mod program;
pub mod rules;
pub mod server;
