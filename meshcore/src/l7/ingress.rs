//! An ingress gateway's part of the waypoint configuration: a Gateway API `Gateway` of class
//! `istio` served by the waypoint binary in gateway mode.
//!
//! The control plane resolves what needs the cluster (which namespaces a listener admits, the
//! listener's certificates from Secrets, the ReferenceGrants that concern the gateway) and hands
//! the gateway an [`IngressConfig`] next to the routes, Services and policies of a waypoint
//! configuration. What both sides must agree on is pure code here: which listeners a route's
//! parentRef attaches to ([`attach`]), the hostnames a route serves on a listener
//! ([`intersect`]), how a request's host picks among them ([`host_matches`], [`specificity`]),
//! and whether a ReferenceGrant permits a cross-namespace reference ([`permits`]).
//!
//! Hostnames follow Gateway API: lowercase DNS names, or a wildcard `*.example.com` that matches
//! any name with one or more labels before `.example.com` (`a.example.com`,
//! `a.b.example.com`), never `example.com` itself. A listener without a hostname admits every
//! host; a route without hostnames takes the listener's.

use serde::{Deserialize, Serialize};

use super::gateway::{ParentReference, GROUP};

/// The Gateway class of ingress gateways (Istio's).
pub const INGRESS_CLASS: &str = "istio";

/// What an ingress gateway serves besides what every waypoint configuration carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressConfig {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    pub listeners: Vec<Listener>,
    /// ReferenceGrants that let routes of other namespaces reach backends (Services) in theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_grants: Vec<ReferenceGrant>,
}

/// One listener of the Gateway, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// The listener's `name` (a parentRef's `sectionName`).
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Absent: every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Namespaces whose routes may attach (`allowedRoutes.namespaces` resolved by the control
    /// plane: `Same` is the Gateway's namespace, `Selector` the namespaces whose labels match).
    /// Absent: every namespace (`from: All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Route kinds that may attach (`allowedRoutes.kinds`); empty: `HTTPRoute` and `GRPCRoute`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_kinds: Vec<String>,
    /// HTTPS: the certificates from the listener's `certificateRefs` that resolved, in order;
    /// the client's SNI picks one (the first whose names cover it, else the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    /// Plain HTTP/1.1 (and h2c).
    Http,
    /// TLS terminated at the gateway (`tls.mode: Terminate`), then HTTP/1.1 or HTTP/2 by ALPN.
    Https,
}

/// A serving certificate, from a Secret of type `kubernetes.io/tls`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    /// The Secret, `namespace/name`.
    pub secret: String,
    /// `tls.crt`: the chain, leaf first, PEM.
    pub cert_chain: String,
    /// `tls.key`, PEM. Never logged or dumped.
    pub private_key: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("secret", &self.secret)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`), in the namespace it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrant {
    /// Where the grant lives: the namespace references may point into.
    pub namespace: String,
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantTo {
    /// `""` for core kinds (Service, Secret).
    #[serde(default)]
    pub group: String,
    pub kind: String,
    /// Absent: every object of that kind in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What refers, and to what, for [`permits`].
#[derive(Debug, Clone, Copy)]
pub struct Reference<'a> {
    /// The referring object's group and kind (`gateway.networking.k8s.io`, `HTTPRoute`).
    pub from_group: &'a str,
    pub from_kind: &'a str,
    pub from_namespace: &'a str,
    /// The referent's group (`""` for core), kind, namespace and name.
    pub to_group: &'a str,
    pub to_kind: &'a str,
    pub to_namespace: &'a str,
    pub to_name: &'a str,
}

/// Whether the reference may be followed: always within a namespace, across namespaces only
/// when a ReferenceGrant in the referent's namespace names the referrer's namespace and kind
/// and the referent's kind (and name, if it gives one).
pub fn permits(grants: &[ReferenceGrant], r: Reference<'_>) -> bool {
    if r.from_namespace == r.to_namespace {
        return true;
    }
    fn core(g: &str) -> &str {
        if g == "core" {
            ""
        } else {
            g
        }
    }
    grants
        .iter()
        .filter(|g| g.namespace == r.to_namespace)
        .any(|g| {
            g.from.iter().any(|f| {
                f.group == r.from_group && f.kind == r.from_kind && f.namespace == r.from_namespace
            }) && g.to.iter().any(|t| {
                core(&t.group) == core(r.to_group)
                    && t.kind == r.to_kind
                    && t.name.as_deref().is_none_or(|n| n == r.to_name)
            })
        })
}

/// Whether `host` (a DNS name, lowercase, no port) is covered by `pattern` (a name, a
/// `*.suffix` wildcard, or `*`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.example.com`: at least one label before the suffix.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// How specific a hostname pattern is, for picking among those that match a request: an exact
/// name beats any wildcard, a longer wildcard beats a shorter one, `*` comes last.
pub fn specificity(pattern: &str) -> (bool, usize) {
    match pattern {
        "*" => (false, 0),
        p if p.starts_with('*') => (false, p.len()),
        p => (true, p.len()),
    }
}

/// The hostnames a route with `route_hostnames` serves on a listener with `listener_hostname`
/// (Gateway API's intersection). A route without hostnames takes the listener's (`*` when the
/// listener has none). `None` when they have no name in common: the route does not attach to
/// that listener.
pub fn intersect(
    listener_hostname: Option<&str>,
    route_hostnames: &[String],
) -> Option<Vec<String>> {
    let listener = listener_hostname.unwrap_or("*");
    if route_hostnames.is_empty() {
        return Some(vec![listener.to_owned()]);
    }
    let mut out: Vec<String> = Vec::new();
    for h in route_hostnames {
        let h = h.to_ascii_lowercase();
        let common = if listener == "*" {
            Some(h)
        } else if !h.starts_with('*') {
            // A name: served if the listener covers it.
            host_matches(listener, &h).then_some(h)
        } else if !listener.starts_with('*') {
            // A wildcard route on a named listener: the listener's name, if the route covers it.
            host_matches(&h, listener).then(|| listener.to_owned())
        } else if h.len() >= listener.len() && h[1..].ends_with(&listener[1..]) {
            // Two wildcards: the narrower one.
            Some(h)
        } else if listener[1..].ends_with(&h[1..]) {
            Some(listener.to_owned())
        } else {
            None
        };
        if let Some(c) = common {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A route attached to one listener: which, and the hostnames it serves there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Index into [`IngressConfig::listeners`].
    pub listener: usize,
    pub hostnames: Vec<String>,
}

/// Why a parentRef naming this Gateway attaches nowhere: a Gateway API reason for the route's
/// `Accepted: False` condition, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `NoMatchingParent` (no listener by that `sectionName` / `port`), `NotAllowedByListeners`
    /// (the namespace or kind is not admitted), `NoMatchingListenerHostname`.
    pub reason: &'static str,
    pub message: String,
}

/// Where a route's parentRef attaches on the Gateway `config` describes. `None` when the
/// parentRef names another object (not this Gateway): it is someone else's. Listeners are
/// narrowed by `sectionName` and `port`, then by the route's namespace and kind, then by the
/// hostname intersection; the first step that leaves none gives the refusal.
pub fn attach(
    config: &IngressConfig,
    route_namespace: &str,
    route_kind: &str,
    parent: &ParentReference,
    route_hostnames: &[String],
) -> Option<Result<Vec<Attached>, Refused>> {
    let names_gateway = parent.group == GROUP
        && parent.kind == "Gateway"
        && parent.namespace.as_deref().unwrap_or(route_namespace) == config.namespace
        && parent.name == config.name;
    if !names_gateway {
        return None;
    }
    let candidates: Vec<(usize, &Listener)> = config
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if candidates.is_empty() {
        let which = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("named {s} on port {p}"),
            (Some(s), None) => format!("named {s}"),
            (None, Some(p)) => format!("on port {p}"),
            (None, None) => "at all".to_owned(),
        };
        return Some(Err(Refused {
            reason: "NoMatchingParent",
            message: format!(
                "Gateway {}/{} has no listener {which}",
                config.namespace, config.name
            ),
        }));
    }
    let admitted: Vec<(usize, &Listener)> = candidates
        .into_iter()
        .filter(|(_, l)| {
            l.allowed_namespaces
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|n| n == route_namespace))
        })
        .filter(|(_, l)| {
            if l.allowed_kinds.is_empty() {
                matches!(route_kind, "HTTPRoute" | "GRPCRoute")
            } else {
                l.allowed_kinds.iter().any(|k| k == route_kind)
            }
        })
        .collect();
    if admitted.is_empty() {
        return Some(Err(Refused {
            reason: "NotAllowedByListeners",
            message: format!(
                "no listener of Gateway {}/{} admits {route_kind}s from namespace {route_namespace}",
                config.namespace, config.name
            ),
        }));
    }
    let attached: Vec<Attached> = admitted
        .into_iter()
        .filter_map(|(i, l)| {
            Some(Attached {
                listener: i,
                hostnames: intersect(l.hostname.as_deref(), route_hostnames)?,
            })
        })
        .collect();
    if attached.is_empty() {
        return Some(Err(Refused {
            reason: "NoMatchingListenerHostname",
            message: format!(
                "the route's hostnames have none in common with the listeners of Gateway {}/{}",
                config.namespace, config.name
            ),
        }));
    }
    Some(Ok(attached))
}

#[cfg(test)]
mod tests;
