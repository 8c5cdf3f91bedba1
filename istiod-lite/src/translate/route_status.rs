//! Route status (pure): for each HTTPRoute and GRPCRoute, its `Accepted` and `ResolvedRefs`
//! conditions towards each parentRef istiod-lite answers for, with the reasons the waypoint's
//! route compiler uses (docs/waypoint.md, "Routing semantics"), computed from the same view the
//! waypoint configurations come from.
//!
//! - **Which parents are ours.** A core `Service` parentRef (the mesh's), and a `Gateway`
//!   parentRef naming a Gateway of class `istio-waypoint`. Others (an ingress Gateway of another
//!   class, a Gateway that does not exist) belong to another controller and get no entry.
//! - **Accepted** towards a Service: it exists, is bound to a waypoint (`istio.io/use-waypoint`,
//!   see [`super::use_waypoint`]) and has a TCP port; `port` / `sectionName` name one of its
//!   ports. Otherwise `False`, `NoMatchingParent`. A route in another namespace than the
//!   Service's is a consumer route. Towards the waypoint Gateway: only routes of its own
//!   namespace (`NotAllowedByListeners` otherwise).
//! - **ResolvedRefs**, the same for every parent: each rule's `backendRefs` and `RequestMirror`
//!   filters name a core Service (`InvalidKind` otherwise) that exists with a TCP port, and the
//!   port if one is given (`BackendNotFound` otherwise).
//!
//! Rule-level validation (a regex that does not compile, a filter in the wrong place:
//! `PartiallyInvalid`, or `UnsupportedValue` when no rule is left) is the waypoint's: it shows in
//! its `/config_dump`, not here.

use meshcore::l7::gateway::{
    BackendObjectReference, ParentReference, RequestMirrorFilter, RouteFilter, RouteRule,
};

use super::use_waypoint::{Bindings, Waypoints};
use super::waypoints::View;
use crate::crd::gateway::{RouteStatusSeen, GROUP};

/// Gateway API condition reasons used here.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
}

/// One condition, without its bookkeeping (generation, transition time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    fn new(status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// A route's status towards one parentRef.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    /// As written in the route (defaults filled, as the API server does).
    pub parent_ref: ParentReference,
    pub accepted: Cond,
    pub resolved_refs: Cond,
}

/// The status istiod-lite owes one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// Our entries; empty when none of its parents is ours (any old entry of ours must go).
    pub parents: Vec<ParentStatus>,
    /// Its status already holds entries of ours.
    pub has_ours: bool,
}

impl RouteStatus {
    /// `Kind namespace/name`.
    pub fn object(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

fn core_group(group: &str) -> bool {
    matches!(group, "" | "core")
}

/// The route-wide facts each parent's conditions need.
struct Route<'a> {
    namespace: &'a str,
    parents: &'a [ParentReference],
    has_hostnames: bool,
    /// `(reason, message)` per reference that does not resolve.
    unresolved: Vec<(&'static str, String)>,
}

/// Every route's status towards its parents of ours; routes without such parents are left out
/// unless their status holds entries of ours (which must then be removed).
pub fn route_statuses(
    view: &View<'_>,
    waypoints: &Waypoints<'_>,
    bindings: &Bindings,
) -> Vec<RouteStatus> {
    let mut out = Vec::new();
    for r in &view.http_routes {
        out.extend(route_status(
            "HTTPRoute",
            &r.metadata,
            RouteStatusSeen::has_ours(r.status.as_ref()),
            &r.spec.parent_refs,
            &r.spec.hostnames,
            &r.spec.rules,
            (view, waypoints, bindings),
        ));
    }
    for r in &view.grpc_routes {
        out.extend(route_status(
            "GRPCRoute",
            &r.metadata,
            RouteStatusSeen::has_ours(r.status.as_ref()),
            &r.spec.parent_refs,
            &r.spec.hostnames,
            &r.spec.rules,
            (view, waypoints, bindings),
        ));
    }
    out.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    out
}

fn backend(
    group: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    port: Option<u16>,
) -> BackendObjectReference {
    BackendObjectReference {
        group: group.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        namespace: namespace.map(str::to_owned),
        port,
    }
}

/// Rule-level `RequestMirror` filters (one entry per filter, `None` for other kinds).
/// The status of one route (HTTPRoute or GRPCRoute): its backends and mirrors checked, then
/// each parentRef judged.
fn route_status<R: RouteRule>(
    kind: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    has_ours: bool,
    parents: &[ParentReference],
    hostnames: &[String],
    rules: &[R],
    (view, waypoints, bindings): (&View<'_>, &Waypoints<'_>, &Bindings),
) -> Option<RouteStatus> {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let mut unresolved = Vec::new();
    for (j, rule) in rules.iter().enumerate() {
        for (i, b) in rule.backend_refs().iter().enumerate() {
            let object = backend(&b.group, &b.kind, &b.name, b.namespace.as_deref(), b.port);
            unresolved.extend(check(
                view,
                ns,
                &object,
                &format!("rules[{j}].backendRefs[{i}]"),
            ));
        }
        let filters = rule.filters().iter().map(|f| f.request_mirror());
        mirrors(view, ns, filters, j, &mut unresolved);
    }
    let route = Route {
        namespace: ns,
        parents,
        has_hostnames: !hostnames.is_empty(),
        unresolved,
    };
    status(kind, meta, has_ours, &route, view, waypoints, bindings)
}

fn mirrors<'f>(
    view: &View<'_>,
    ns: &str,
    filters: impl Iterator<Item = Option<&'f RequestMirrorFilter>>,
    rule: usize,
    unresolved: &mut Vec<(&'static str, String)>,
) {
    for (k, f) in filters.enumerate() {
        if let Some(m) = f {
            let place = format!("rules[{rule}].filters[{k}]: mirror");
            if let Some((why, message)) = check(view, ns, &m.backend_ref, &place) {
                unresolved.push((why, format!("{message}; mirror dropped")));
            }
        }
    }
}

/// The TCP ports of a Service: `(port, name)`.
fn tcp_ports(svc: &k8s_openapi::api::core::v1::Service) -> Vec<(u16, Option<&str>)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.as_deref())))
        .collect()
}

/// Why a backend reference does not resolve, if it does not.
fn check(
    view: &View<'_>,
    route_ns: &str,
    r: &BackendObjectReference,
    place: &str,
) -> Option<(&'static str, String)> {
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    if !core_group(&r.group) || r.kind != "Service" {
        return Some((
            reason::INVALID_KIND,
            format!(
                "{place}: {} {ns}/{} is not a core Service (group {:?}, kind {})",
                r.kind, r.name, r.group, r.kind
            ),
        ));
    }
    let not_found = |why: String| Some((reason::BACKEND_NOT_FOUND, format!("{place}: {why}")));
    let Some(svc) = view.service(ns, &r.name) else {
        return not_found(format!("Service {ns}/{} does not exist", r.name));
    };
    let ports = tcp_ports(svc);
    if ports.is_empty() {
        return not_found(format!("Service {ns}/{} has no TCP port", r.name));
    }
    match r.port {
        Some(port) if !ports.iter().any(|(p, _)| *p == port) => {
            not_found(format!("Service {ns}/{} has no port {port}", r.name))
        }
        _ => None,
    }
}

fn status(
    kind: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    has_ours: bool,
    route: &Route<'_>,
    view: &View<'_>,
    waypoints: &Waypoints<'_>,
    bindings: &Bindings,
) -> Option<RouteStatus> {
    let resolved_refs = match route.unresolved.first() {
        None => Cond::new(true, reason::RESOLVED_REFS, "all references resolved"),
        Some((why, _)) => Cond::new(
            false,
            why,
            route
                .unresolved
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let mut parents = Vec::new();
    for p in route.parents {
        let ns = p.namespace.as_deref().unwrap_or(route.namespace);
        let outcome = if core_group(&p.group) && p.kind == "Service" {
            service_parent(view, bindings, route.namespace, ns, p)
        } else if p.group == GROUP && p.kind == "Gateway" && waypoints.get(ns, &p.name).is_some() {
            gateway_parent(route.namespace, ns, p)
        } else {
            continue; // another controller's parent
        };
        let mut accepted = match outcome {
            Ok(message) => Cond::new(true, reason::ACCEPTED, message),
            Err((why, message)) => Cond::new(false, why, message),
        };
        if route.has_hostnames {
            accepted.message.push_str(
                "; hostnames are ignored: mesh routes match the Service a request is addressed to",
            );
        }
        parents.push(ParentStatus {
            parent_ref: p.clone(),
            accepted,
            resolved_refs: resolved_refs.clone(),
        });
    }
    (!parents.is_empty() || has_ours).then(|| RouteStatus {
        kind,
        namespace: route.namespace.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
        parents,
        has_ours,
    })
}

type Outcome = Result<String, (&'static str, String)>;

fn service_parent(
    view: &View<'_>,
    bindings: &Bindings,
    route_ns: &str,
    ns: &str,
    p: &ParentReference,
) -> Outcome {
    let name = p.name.as_str();
    let no_match = |message: String| Err((reason::NO_MATCHING_PARENT, message));
    let Some(svc) = view.service(ns, name) else {
        return no_match(format!("Service {ns}/{name} does not exist"));
    };
    let Some((wp_ns, wp)) = bindings.services.get(&(ns.to_owned(), name.to_owned())) else {
        return no_match(format!(
            "Service {ns}/{name} uses no waypoint (label it, or its namespace, with \
             istio.io/use-waypoint naming a waypoint for service or all): no waypoint serves it"
        ));
    };
    let ports = tcp_ports(svc);
    if ports.is_empty() {
        return no_match(format!(
            "Service {ns}/{name} has no TCP port: its waypoint does not serve it"
        ));
    }
    let by_name = match p.section_name.as_deref() {
        None => None,
        Some(section) => match ports.iter().find(|(_, n)| *n == Some(section)) {
            Some((port, _)) => Some(*port),
            None => return no_match(format!("Service {ns}/{name} has no port named {section:?}")),
        },
    };
    let port = match (p.port, by_name) {
        (Some(port), Some(named)) if port != named => {
            return no_match(format!(
                "port {port} of Service {ns}/{name} is not named {:?}",
                p.section_name.as_deref().unwrap_or_default()
            ));
        }
        (Some(port), _) if !ports.iter().any(|(p, _)| *p == port) => {
            return no_match(format!("Service {ns}/{name} has no port {port}"));
        }
        (port, named) => port.or(named),
    };
    let scope = match port {
        Some(p) => format!("port {p} of Service {ns}/{name}"),
        None => format!("every port of Service {ns}/{name}"),
    };
    let role = if ns == route_ns {
        "(producer route)".to_owned()
    } else {
        format!("as a consumer route: applies to clients in namespace {route_ns}")
    };
    Ok(format!(
        "attached to {scope} {role}, served by waypoint {wp_ns}/{wp}"
    ))
}

fn gateway_parent(route_ns: &str, ns: &str, p: &ParentReference) -> Outcome {
    if route_ns != ns {
        return Err((
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "only routes in namespace {ns} may attach to the waypoint {ns}/{}",
                p.name
            ),
        ));
    }
    Ok(format!(
        "attached to the waypoint {ns}/{}: applies to its Services where no Service-parented \
         route does",
        p.name
    ))
}

#[cfg(test)]
mod tests;
