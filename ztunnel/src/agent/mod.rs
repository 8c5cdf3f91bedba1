//! The node agent: decides which pods of the node are in the mesh, installs the redirect rules
//! in their network namespaces ([`rules`]) and hands the namespaces to the node's ztunnel over
//! the ZDS socket. Built so far: the rules.

pub mod rules;
