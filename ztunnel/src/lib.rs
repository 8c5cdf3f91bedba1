//! ztunnel: the per-node L4 proxy of the ambient mesh, as a library so the binary and the
//! in-process tests start it through the same code.
//!
//! - [`settings`]: flags and environment variables (Istio's names);
//! - [`config`]: config sources (the local file) and [`state`]: the store they feed;
//! - [`certs`]: certificate provider and per-identity manager (meshcore's, re-exported);
//! - [`proxy`]: the data path (outbound, inbound, SOCKS5) over meshcore's HBONE;
//! - [`metrics`]: Istio's TCP metrics; [`admin`]: admin, metrics and readiness endpoints;
//! - [`app`]: wiring, start and graceful shutdown.

pub mod admin;
pub mod agent;
pub mod app;
pub use meshcore::certs;
pub mod config;
pub use meshcore::control;
pub mod dns;
pub mod flows;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod settings;
pub mod state;

pub use app::{start, Addresses, Ztunnel};
pub use settings::Settings;
