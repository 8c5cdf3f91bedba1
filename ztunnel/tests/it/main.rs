//! ztunnel's integration tests: one binary, modules by concern.

mod capture;
mod process;
mod support;
mod traffic;
