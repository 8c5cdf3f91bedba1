//! Node mode (`PROXY_MODE=shared`), in-pod capture: one ztunnel serves every enrolled pod of its
//! node. The node agent hands over each pod's network namespace over the ZDS socket
//! ([`meshcore::zds`]); ztunnel opens that pod's listeners inside the namespace ([`netns`]) and
//! serves them with the pod's identity ([`pods`]).
//!
//! Built so far: the namespace handling, per-pod proxies and listeners, the agent protocol loop
//! and the node-mode start ([`node`]). Still to come (issue 5): HBONE dialled from inside the
//! pod (today from the node's namespace), the node agent itself (enrolment, nftables rules),
//! the CNI plugin.

pub mod netns;
pub mod node;
pub mod pods;
