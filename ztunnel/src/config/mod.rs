//! Config sources feeding the state store. Today: the local file, watched for changes.
//! The xDS client will be a second source handing the store the same [`MeshConfig`].

pub mod local;
pub mod watch;

pub use crate::state::MeshConfig;
