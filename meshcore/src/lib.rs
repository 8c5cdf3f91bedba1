//! The mesh's shared core: SPIFFE identities, the PKI (CA, CSRs, certificate inspection), mutual
//! TLS for both ends of an HBONE connection, and the HBONE tunnel itself (HTTP/2 CONNECT over
//! that TLS) with its bidirectional copy, and the L4 authorization engine. ztunnel, the waypoint and istiod-lite build on it.

pub mod accept;
pub mod api;
pub mod certs;
pub mod control;
pub mod copy;
pub mod fast_rand;
pub mod flow_ring;
pub mod hbone;
pub mod identity;
pub mod l7;
pub mod otel;
pub mod pki;
pub mod policy;
pub mod process_metrics;
pub mod prom_text;
pub mod refusals;
pub mod rlimit;
pub mod settings;
pub mod tls;
pub mod zds;
