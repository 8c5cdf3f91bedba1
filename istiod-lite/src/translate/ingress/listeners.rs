//! An ingress Gateway's listeners resolved (pure): protocol and TLS mode, the namespaces and
//! route kinds `allowedRoutes` admits, certificates from `tls.certificateRefs`, conflicts
//! between listeners, and each listener's conditions (`Accepted`, `ResolvedRefs`, `Conflicted`).
//!
//! A listener is *served* (sent to the gateway in [`IngressConfig::listeners`]) when it is
//! accepted (HTTP, or HTTPS terminating TLS), not conflicted, admits at least one route kind,
//! and, for HTTPS, has at least one certificate that resolved.

use std::collections::BTreeMap;

use meshcore::l7::ingress::{self, Certificate, ListenerProtocol, Reference};

use super::super::route_status::Cond;
use super::super::waypoints::View;
use crate::cluster::Gateway;
use crate::crd::gateway::{Listener, GROUP};

/// Route kinds an ingress listener takes.
pub const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// One listener of the Gateway as written, with its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerState {
    pub name: String,
    pub port: u16,
    /// The route kinds it admits (group `gateway.networking.k8s.io`).
    pub supported_kinds: Vec<String>,
    pub accepted: Cond,
    pub resolved_refs: Cond,
    pub conflicted: Cond,
    /// Sent to the gateway; `Err`: why not.
    pub served: Result<(), String>,
    /// Routes attached to it.
    pub attached_routes: u32,
}

fn cond(status: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// `Err((reason, messages))` folded into one condition: the first reason, every message.
fn fold(ok: Cond, problems: &[(&'static str, String)]) -> Cond {
    match problems.first() {
        None => ok,
        Some((reason, _)) => cond(
            false,
            reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The listeners of `gw` resolved: what the gateway is sent, and each listener's state (in the
/// order written; `served` indexes nothing, the served ones are in the same order).
pub fn resolve(
    gw: &Gateway,
    view: &View<'_>,
    grants: &[ingress::ReferenceGrant],
) -> (Vec<ingress::Listener>, Vec<ListenerState>) {
    let namespace = gw.metadata.namespace.as_deref().unwrap_or_default();
    let mut resolved: Vec<(Option<ingress::Listener>, ListenerState)> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener(l, namespace, view, grants))
        .collect();
    conflicts(&mut resolved);
    let mut served = Vec::new();
    let mut states = Vec::new();
    for (l, mut state) in resolved {
        if state.served.is_ok() && state.conflicted.status {
            state.served = Err(format!("in conflict: {}", state.conflicted.message));
        }
        if let (Some(l), Ok(())) = (l, &state.served) {
            served.push(l);
        }
        states.push(state);
    }
    (served, states)
}

fn listener(
    l: &Listener,
    namespace: &str,
    view: &View<'_>,
    grants: &[ingress::ReferenceGrant],
) -> (Option<ingress::Listener>, ListenerState) {
    let tls_mode = l.tls.as_ref().and_then(|t| t.mode.as_deref());
    let protocol = match (l.protocol.as_str(), tls_mode.unwrap_or("Terminate")) {
        ("HTTP", _) => Ok(ListenerProtocol::Http),
        ("HTTPS", "Terminate") => Ok(ListenerProtocol::Https),
        ("HTTPS", mode) => Err(format!(
            "tls.mode {mode} is not supported: only Terminate (HTTPS)"
        )),
        (other, _) => Err(format!(
            "protocol {other} is not supported: only HTTP and HTTPS"
        )),
    };
    let accepted = match &protocol {
        Ok(_) => cond(true, "Accepted", "accepted"),
        Err(why) => cond(false, "UnsupportedProtocol", why.clone()),
    };
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    // allowedRoutes.kinds: only Gateway API's HTTPRoute and GRPCRoute.
    let kinds = l
        .allowed_routes
        .as_ref()
        .map(|a| a.kinds.as_slice())
        .unwrap_or_default();
    let mut supported: Vec<String> = Vec::new();
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(GROUP);
        if group == GROUP && ROUTE_KINDS.contains(&k.kind.as_str()) {
            if !supported.contains(&k.kind) {
                supported.push(k.kind.clone());
            }
        } else {
            problems.push((
                "InvalidRouteKinds",
                format!(
                    "allowedRoutes.kinds: {}/{} is not supported (only {GROUP} HTTPRoute and GRPCRoute)",
                    group, k.kind
                ),
            ));
        }
    }
    let allowed_kinds = supported.clone();
    if kinds.is_empty() {
        supported = ROUTE_KINDS.iter().map(|k| (*k).to_owned()).collect();
    }
    if protocol.is_err() {
        supported.clear();
    }
    let certificates = match protocol {
        Ok(ListenerProtocol::Https) => certificates(l, namespace, view, grants, &mut problems),
        _ => Vec::new(),
    };
    let resolved_refs = fold(
        cond(true, "ResolvedRefs", "all references resolved"),
        &problems,
    );
    let served = match &protocol {
        Err(why) => Err(why.clone()),
        Ok(_) if supported.is_empty() => Err("it admits no route kind this gateway serves".into()),
        Ok(ListenerProtocol::Https) if certificates.is_empty() => {
            Err("no certificate resolved".into())
        }
        Ok(_) => Ok(()),
    };
    let state = ListenerState {
        name: l.name.clone(),
        port: l.port,
        supported_kinds: supported,
        accepted,
        resolved_refs,
        conflicted: cond(false, "NoConflicts", "no conflict"),
        served,
        attached_routes: 0,
    };
    let resolved = protocol.ok().map(|protocol| ingress::Listener {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        allowed_namespaces: allowed_namespaces(l, namespace, view),
        allowed_kinds,
        certificates,
    });
    (resolved, state)
}

/// `allowedRoutes.namespaces`: `Same` (the default) is the Gateway's namespace, `All` every
/// namespace (`None`), `Selector` the namespaces whose labels match.
fn allowed_namespaces(l: &Listener, namespace: &str, view: &View<'_>) -> Option<Vec<String>> {
    let from = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref());
    match from {
        Some("All") => None,
        Some("Selector") => {
            let empty = BTreeMap::new();
            Some(
                view.namespaces
                    .iter()
                    .filter(|(name, ns)| {
                        let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
                        l.allows_namespace(namespace, name, labels)
                    })
                    .map(|(name, _)| (*name).to_owned())
                    .collect(),
            )
        }
        _ => Some(vec![namespace.to_owned()]),
    }
}

/// The listener's `tls.certificateRefs` that resolve; a problem per one that does not.
fn certificates(
    l: &Listener,
    namespace: &str,
    view: &View<'_>,
    grants: &[ingress::ReferenceGrant],
    problems: &mut Vec<(&'static str, String)>,
) -> Vec<Certificate> {
    let refs = l
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    if refs.is_empty() {
        problems.push((
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let group = r.group.as_deref().unwrap_or_default();
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let at = format!("tls.certificateRefs[{i}]");
        if !matches!(group, "" | "core") || kind != "Secret" {
            problems.push((
                "InvalidCertificateRef",
                format!("{at}: {kind} {ns}/{} is not a core Secret", r.name),
            ));
            continue;
        }
        let permitted = ingress::permits(
            grants,
            Reference {
                from_group: GROUP,
                from_kind: "Gateway",
                from_namespace: namespace,
                to_group: "",
                to_kind: "Secret",
                to_namespace: ns,
                to_name: &r.name,
            },
        );
        if !permitted {
            problems.push((
                "RefNotPermitted",
                format!(
                    "{at}: Secret {ns}/{} is in another namespace and no ReferenceGrant there \
                     lets Gateways of namespace {namespace} refer to it",
                    r.name
                ),
            ));
            continue;
        }
        let Some(secret) = view.secrets.get(&(ns, r.name.as_str())) else {
            problems.push((
                "InvalidCertificateRef",
                format!(
                    "{at}: Secret {ns}/{} does not exist or is not of type kubernetes.io/tls",
                    r.name
                ),
            ));
            continue;
        };
        let pem = |s: &Option<String>| s.clone().filter(|s| s.contains("-----BEGIN "));
        match (pem(&secret.cert_chain), pem(&secret.private_key)) {
            (Some(cert_chain), Some(private_key)) => out.push(Certificate {
                secret: format!("{ns}/{}", r.name),
                cert_chain,
                private_key,
            }),
            _ => problems.push((
                "InvalidCertificateRef",
                format!(
                    "{at}: Secret {ns}/{} lacks a PEM tls.crt or tls.key",
                    r.name
                ),
            )),
        }
    }
    out
}

/// Marks listeners in conflict: on one port, different protocols (`ProtocolConflict`); the
/// same protocol and hostname (`HostnameConflict`). Only accepted listeners are compared.
fn conflicts(resolved: &mut [(Option<ingress::Listener>, ListenerState)]) {
    let n = resolved.len();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (Some(a), Some(b)) = (&resolved[i].0, &resolved[j].0) else {
                continue;
            };
            if a.port != b.port {
                continue;
            }
            let c = if a.protocol != b.protocol {
                cond(
                    true,
                    "ProtocolConflict",
                    format!(
                        "listener {:?} uses port {} with another protocol",
                        b.name, b.port
                    ),
                )
            } else if a.hostname == b.hostname {
                cond(
                    true,
                    "HostnameConflict",
                    format!(
                        "listener {:?} has the same port {}, protocol and hostname",
                        b.name, b.port
                    ),
                )
            } else {
                continue;
            };
            if !resolved[i].1.conflicted.status {
                resolved[i].1.conflicted = c;
            }
        }
    }
}

/// The Gateway's own `Accepted` condition.
pub fn gateway_accepted(gw: &Gateway, states: &[ListenerState]) -> Cond {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if !gw.spec.addresses.is_empty() {
        problems.push((
            "UnsupportedAddress",
            "spec.addresses is not supported: the gateway's addresses are its Service's".into(),
        ));
    }
    let parameters = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get("parametersRef"));
    if parameters.is_some() {
        problems.push((
            "InvalidParameters",
            "spec.infrastructure.parametersRef is not supported".into(),
        ));
    }
    if !states.iter().any(|s| s.served.is_ok()) {
        let why = if states.is_empty() {
            "the Gateway has no listener".to_owned()
        } else {
            states
                .iter()
                .map(|s| {
                    format!(
                        "{:?}: {}",
                        s.name,
                        s.served.as_ref().err().map_or("", String::as_str)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        problems.push((
            "ListenersNotValid",
            format!("no listener can be served ({why})"),
        ));
    }
    fold(
        cond(true, "Accepted", "accepted as an ingress gateway"),
        &problems,
    )
}
