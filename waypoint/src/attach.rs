//! Which policies attach to one waypoint: `targetRefs` as Istio reads them for waypoints, shared
//! by AuthorizationPolicy (`authz`) and RequestAuthentication (`authn`).
//!
//! - kind `Gateway` (group `gateway.networking.k8s.io`) naming the waypoint, in its namespace,
//!   and kind `GatewayClass` `istio-waypoint` from the root namespace: every request through the
//!   waypoint;
//! - kind `Service` (group `""` or `core`) in the policy's namespace: requests addressed to that
//!   Service only.
//!
//! A reference into another namespace refuses the policy (a namespace may not affect another's
//! waypoint); `selector` policies belong to ztunnel (or sidecars) and are only noted.

use std::collections::HashSet;

use meshcore::l7::authz::{PolicyTargetReference, WorkloadSelector};

/// The waypoint whose policies are compiled: its Gateway.
#[derive(Debug, Clone, Copy)]
pub struct WaypointRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The GatewayClass whose root-namespace policies apply (`istio-waypoint` for a waypoint);
    /// `None` for an ingress gateway, which no GatewayClass-wide policy reaches.
    pub class: Option<&'a str>,
}

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The GatewayClass of Istio's waypoints; policies in the root namespace may target it.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// What a policy attaches to, seen from one waypoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Everything through the waypoint: its Gateway, or the waypoint GatewayClass.
    Waypoint,
    /// Requests addressed to this Service (namespace, name).
    Service(String, String),
}

/// How a policy (AuthorizationPolicy or RequestAuthentication) says what it applies to.
pub struct TargetRefs<'p> {
    pub namespace: &'p str,
    pub target_ref: Option<&'p PolicyTargetReference>,
    pub target_refs: &'p [PolicyTargetReference],
    pub selector: Option<&'p WorkloadSelector>,
}

/// The targets through which the policy attaches to this waypoint, with the problems of its
/// other references; `None` when it does not attach (or may not, being cross-namespace).
/// `note(message, refused)` receives what the policy's author should hear.
pub fn attachment(
    spec: &TargetRefs<'_>,
    waypoint: &WaypointRef<'_>,
    root_namespace: &str,
    note: &mut dyn FnMut(String, bool),
) -> Option<(Vec<Target>, Vec<String>)> {
    let ns = spec.namespace;
    let refs: Vec<(String, &PolicyTargetReference)> = spec
        .target_ref
        .iter()
        .map(|r| ("targetRef".to_owned(), *r))
        .chain(
            spec.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("targetRefs[{i}]"), r)),
        )
        .collect();
    if refs.is_empty() {
        if spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
        {
            note(
                "selector: a workload-selector policy is enforced by ztunnel (or sidecars), never by a waypoint; use targetRefs to attach it to the waypoint or a Service".into(),
                false,
            );
        }
        return None;
    }
    let (mut targets, mut errors, mut cross) = (Vec::new(), Vec::new(), Vec::new());
    for (field, r) in refs {
        if r.namespace.as_deref().is_some_and(|n| n != ns) {
            cross.push(format!(
                "{field}: {} {}/{} is outside the policy's namespace {ns}",
                r.kind,
                r.namespace.as_deref().unwrap_or_default(),
                r.name
            ));
            continue;
        }
        match (r.group.as_str(), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => {
                if ns == waypoint.namespace && r.name == waypoint.name {
                    targets.push(Target::Waypoint);
                }
            }
            // Another GatewayClass: not this waypoint's.
            (GATEWAY_GROUP, "GatewayClass") if waypoint.class != Some(r.name.as_str()) => {}
            (GATEWAY_GROUP, "GatewayClass") => {
                if ns == root_namespace {
                    targets.push(Target::Waypoint);
                } else {
                    note(
                        format!("{field}: GatewayClass {WAYPOINT_CLASS} is only honoured from the root namespace {root_namespace}; ignored"),
                        false,
                    );
                }
            }
            ("" | "core", "Service") => targets.push(Target::Service(ns.to_owned(), r.name.clone())),
            ("networking.istio.io", "ServiceEntry") => note(
                format!("{field}: ServiceEntry {} is not supported by this waypoint; ignored", r.name),
                false,
            ),
            (group, kind) => errors.push(format!(
                "{field}: {kind} (group {group:?}) cannot be targeted; use Gateway or GatewayClass (group {GATEWAY_GROUP}) or Service (group \"\")"
            )),
        }
    }
    if !cross.is_empty() {
        // Never enforced, not even fail-closed: a policy may not reach into another namespace.
        note(
            format!(
                "{}; policy refused and not enforced (cross-namespace targetRefs are invalid)",
                cross.join("; ")
            ),
            true,
        );
        return None;
    }
    if targets.is_empty() {
        return None;
    }
    let mut unique = HashSet::new();
    targets.retain(|t| unique.insert(t.clone()));
    Some((targets, errors))
}
