//! ztunnel's integration tests: one binary, modules by concern.

mod agent;
mod capture;
mod egress;
mod flows;
mod hardening;
mod inpod;
mod node;
mod process;
mod self_calls;
mod socks5_opt_in;
mod support;
mod traffic;
