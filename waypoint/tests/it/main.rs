//! The waypoint in-process on loopback, between real HBONE peers: a client tunnelling in with
//! its own identity (as its ztunnel would), and endpoints each behind a stand-in for its
//! ztunnel (an HBONE server relaying to the echo server on the pod's address, as ztunnel's
//! inbound does). Everything runs over real sockets, real mutual TLS and real HTTP.

mod gateway;
mod gateway_tls;
mod jwt;
mod settings;
mod support;
mod traffic;
mod traffic_policy;
