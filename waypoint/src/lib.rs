//! The waypoint: the mesh's optional L7 proxy. It receives HBONE from ztunnels, speaks HTTP/1.1,
//! HTTP/2 and gRPC inside the tunnel, routes by Gateway API routes, enforces L7
//! AuthorizationPolicy, and forwards over HBONE to the chosen endpoint.
//!
//! - [`settings`]: flags and environment variables;
//! - [`config`]: the configuration (local file), compiled into snapshots the data path reads;
//! - [`route`]: the compiled route table (pure: which rule, which backend, which filters);
//! - [`authz`]: the L7 authorization engine (pure: Istio's AuthorizationPolicy at L7);
//! - [`proxy`]: the data path (HBONE in, HTTP or TCP, HBONE out);
//! - [`gateway`]: gateway mode (an ingress Gateway's listeners, TLS termination by SNI);
//! - [`metrics`], [`access_log`], [`admin`]: what it tells; [`app`]: wiring and shutdown.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod attach;
pub mod authn;
pub mod authz;
pub mod config;
pub mod flows;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod settings;
pub mod traffic;

pub use app::{start, Addresses, Waypoint};
pub use settings::Settings;
