//! istiod-lite's integration tests: one binary, modules by concern.

mod restart;
mod support;
mod xds;
