//! Config sources feeding the state store: the local file (watched for changes) and the
//! delta xDS client. Both hand the store a complete [`MeshConfig`].

pub mod local;
pub mod watch;
pub mod xds;
pub mod xds_convert;

pub use crate::state::MeshConfig;
