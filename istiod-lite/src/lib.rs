//! istiod-lite: the mesh's control plane.
//!
//! The sources ([`sources`]: a manifest directory, or Kubernetes) feed the objects into the
//! [`pipeline`], which keeps them per namespace and translates what changed ([`translate`]: pure
//! code) into the ambient xDS resources that the delta ADS server ([`xds`]) streams to ztunnels.
//! The certificate service ([`ca`]) signs workload certificates for the pods of a caller's
//! node.

pub mod ca;
pub mod ca_secret;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod http;
pub mod manifests;
pub mod pipeline;
pub mod sources;
pub mod token_review;
pub mod translate;
pub mod xds;

/// Allocator settings for a control plane that builds multi-megabyte responses: with glibc's
/// dynamic mmap threshold, a freed 4 MiB response buffer raises the threshold and the next ones
/// land on the heap, where fragmentation keeps them resident. A fixed 1 MiB threshold maps them
/// and gives them back when freed; two arenas bound per-thread heap growth. Call first thing in
/// `main`, before other threads exist.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
