//! Egress policy at the source: before an outbound connection opens a tunnel or a plain
//! connection, the egress policies selecting the served workload decide it
//! (`meshcore::policy::egress`). A workload no egress policy selects pays one field read.
//!
//! A refusal is logged at info with the deciding policy, counted in
//! `ztunnel_egress_denied_total{source_workload, source_workload_namespace, policy}` (labels
//! bounded by the policies and workloads the config names), listed in `/config_dump`'s
//! `recentDenials`, and recorded by the caller as a failed connection with
//! `response_flags="DENY"` (metrics, flow record).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use meshcore::policy::egress::{EgressDecision, EgressLookup, EgressRequest, ServiceRef};

use super::Proxy;
use crate::dns::resolved::ResolvedNames;
use crate::state::{ServiceEntry, Snapshot, WorkloadEntry};

pub const DENIED: &str = "ztunnel_egress_denied_total";

/// Where an outbound connection is going, as resolved before anything is opened.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub dialled: SocketAddr,
    /// The Service whose VIP was dialled.
    pub service: Option<&'a ServiceEntry>,
    /// The workload the connection goes to (the endpoint picked, or the workload dialled).
    pub endpoint: Option<&'a WorkloadEntry>,
    /// The endpoint's address, when resolved.
    pub endpoint_ip: Option<IpAddr>,
    /// The port on the endpoint (a Service's target port), when known.
    pub target_port: Option<u16>,
}

impl Target<'_> {
    /// Nothing resolved: an address outside the mesh's view (passthrough).
    pub fn passthrough(dialled: SocketAddr) -> Self {
        Target {
            dialled,
            service: None,
            endpoint: None,
            endpoint_ip: None,
            target_port: None,
        }
    }
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dialled)?;
        if let Some(s) = self.service {
            write!(f, " (service {}/{})", s.service.namespace, s.service.name)?;
        }
        match (self.endpoint_ip, self.target_port) {
            (Some(ip), port) => write!(
                f,
                " -> {}",
                SocketAddr::new(ip, port.unwrap_or(self.dialled.port()))
            ),
            (None, Some(port)) if port != self.dialled.port() => write!(f, " -> port {port}"),
            _ => Ok(()),
        }
    }
}

/// Answers the engine's questions from the snapshot and the workload's resolved names.
struct Lookup<'a> {
    snap: &'a Snapshot,
    endpoint: Option<&'a WorkloadEntry>,
    names: &'a ResolvedNames,
    now: Instant,
}

impl EgressLookup for Lookup<'_> {
    fn resolved(&self, ip: IpAddr, matches: &dyn Fn(&str) -> bool) -> bool {
        self.names.resolved(ip, self.now, matches)
    }

    fn endpoint_services(&self, each: &mut dyn FnMut(&str, &str)) {
        if let Some(w) = self.endpoint {
            self.snap.services_backed(w, each);
        }
    }
}

/// Decides the connection for `source`; `None` when no egress policy selects it (the fast
/// path: one field read, nothing allocated, no lock).
pub fn decide(
    snap: &Snapshot,
    source: Option<&WorkloadEntry>,
    names: &ResolvedNames,
    target: Target<'_>,
) -> Option<EgressDecision> {
    let source = source.filter(|s| s.egress_selected())?;
    let compiled = snap.egress_for(source)?;
    let lookup = Lookup {
        snap,
        endpoint: target.endpoint,
        names,
        now: Instant::now(),
    };
    let request = EgressRequest {
        dialled: target.dialled,
        service: target.service.map(|s| ServiceRef {
            namespace: &s.service.namespace,
            name: &s.service.name,
        }),
        endpoint: target.endpoint_ip,
        target_port: target.target_port,
        known: target.service.is_some()
            || target.endpoint.is_some()
            || snap.knows(target.dialled.ip()),
        lookup: &lookup,
    };
    Some(compiled.decide(&request))
}

/// Decides and, on refusal, logs, counts and records it; `Err` carries the decision. The
/// target is only built when an egress policy selects the source.
pub fn check<'a>(
    proxy: &Proxy,
    snap: &'a Snapshot,
    source: Option<&WorkloadEntry>,
    client: SocketAddr,
    target: impl FnOnce() -> Target<'a>,
) -> Result<(), EgressDecision> {
    if !source.is_some_and(WorkloadEntry::egress_selected) {
        return Ok(());
    }
    let target = target();
    let Some(decision) = decide(snap, source, &proxy.resolved, target) else {
        return Ok(());
    };
    if decision.allowed() {
        tracing::debug!(%client, dst = %target.dialled, "egress allowed: {}", decision.reason);
        return Ok(());
    }
    let (ns, workload) = source.map_or(("unknown", "unknown"), |s| {
        (s.workload.namespace.as_str(), s.workload.metrics_name())
    });
    proxy.metrics.egress_denied(ns, workload, decision.policy());
    let to = target.to_string();
    tracing::info!(%client, dst = %to, policy = decision.policy(), "outbound connection refused by egress policy: {}", decision.reason);
    proxy.denials.record(
        format!("{ns}/{workload}({client})->{to} (egress)"),
        decision.reason.to_string(),
    );
    Err(decision)
}
