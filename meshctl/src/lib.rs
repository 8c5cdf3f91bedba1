//! meshctl: the mesh's command line. The local cluster ([`cluster`]: `up`, `status`, `exec`,
//! `apply`, `down`), the demo that runs the example mesh on it ([`demo`]), the echo server
//! used by tests and demos ([`echo`]), and `proxy-status` / `ztunnel-config` ([`inspect`]).

pub mod cluster;
pub mod dashboard;
pub mod demo;
pub mod echo;
pub mod inspect;
pub mod observe;
pub mod otlp;
