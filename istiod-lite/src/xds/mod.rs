//! Delta xDS: the resources ztunnels and waypoints subscribe to and the ADS server that streams
//! them.

pub mod access;
pub mod ads_service;
pub mod encoded;
pub mod grpc;
pub mod resources;
pub mod server;

pub use resources::ResourceSet;
pub use server::{ClientStatus, XdsServer};
