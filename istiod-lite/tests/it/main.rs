//! istiod-lite's integration tests: one binary, modules by concern.

mod chart;
mod kube;
mod kube_api;
mod restart;
mod settings;
mod support;
mod waypoint_xds;
mod xds;
