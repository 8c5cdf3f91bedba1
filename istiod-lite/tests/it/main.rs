//! istiod-lite's integration tests: one binary, modules by concern.

mod chart;
mod egress_xds;
mod hardening;
mod keepalive;
mod kube;
mod kube_api;
mod kube_ingress;
mod large_push;
mod linkerd_policy;
mod max_age;
mod ports;
mod restart;
mod settings;
mod support;
mod waypoint_xds;
mod xds;
