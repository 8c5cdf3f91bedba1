//! Route status (pure): for each HTTPRoute and GRPCRoute, its `Accepted` and `ResolvedRefs`
//! conditions towards each parentRef istiod-lite answers for, with the reasons the waypoint's
//! route compiler uses (docs/waypoint.md, "Routing semantics"), computed from the same view the
//! waypoint configurations come from.
//!
//! - **Which parents are ours.** A core `Service` parentRef (the mesh's), and a `Gateway`
//!   parentRef naming a Gateway of class `istio-waypoint` or `istio` (an ingress gateway). Others
//!   (a Gateway of another class, a Gateway that does not exist) belong to another controller
//!   and get no entry.
//! - **Towards an ingress Gateway**, `Accepted` is what [`meshcore::l7::ingress::attach`] (the
//!   gateway's own rule) says: attached to some listener, or its refusal's reason
//!   (`NoMatchingParent`, `NotAllowedByListeners`, `NoMatchingListenerHostname`);
//!   `ResolvedRefs` also refuses a backend of another namespace that no ReferenceGrant there
//!   permits (`RefNotPermitted`).
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

use super::ingress::Ingress;
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
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
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
    kind: &'static str,
    namespace: &'a str,
    parents: &'a [ParentReference],
    hostnames: &'a [String],
    /// `(reason, message)` per reference that does not resolve.
    unresolved: Vec<(&'static str, String)>,
    /// Towards ingress Gateways: cross-namespace backends no ReferenceGrant permits.
    not_permitted: Vec<(&'static str, String)>,
}

/// Every route's status towards its parents of ours; routes without such parents are left out
/// unless their status holds entries of ours (which must then be removed).
pub fn route_statuses(
    view: &View<'_>,
    waypoints: &Waypoints<'_>,
    bindings: &Bindings,
    ingress: &Ingress<'_>,
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
            (view, waypoints, bindings, ingress),
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
            (view, waypoints, bindings, ingress),
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
    kind_name: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    has_ours: bool,
    parents: &[ParentReference],
    hostnames: &[String],
    rules: &[R],
    (view, waypoints, bindings, ingress): (&View<'_>, &Waypoints<'_>, &Bindings, &Ingress<'_>),
) -> Option<RouteStatus> {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let mut not_permitted = Vec::new();
    let to_ingress = !ingress.is_empty()
        && parents.iter().any(|p| {
            p.group == GROUP
                && p.kind == "Gateway"
                && ingress
                    .get(p.namespace.as_deref().unwrap_or(ns), &p.name)
                    .is_some()
        });
    if to_ingress {
        for (j, rule) in rules.iter().enumerate() {
            let backends = rule.backend_refs().iter().enumerate().map(|(i, b)| {
                let place = format!("rules[{j}].backendRefs[{i}]");
                (
                    place,
                    b.group.as_str(),
                    b.kind.as_str(),
                    b.namespace.as_deref(),
                    b.name.as_str(),
                )
            });
            let mirrors = rule.filters().iter().enumerate().filter_map(|(k, f)| {
                let m = &f.request_mirror()?.backend_ref;
                let place = format!("rules[{j}].filters[{k}]: mirror");
                Some((
                    place,
                    m.group.as_str(),
                    m.kind.as_str(),
                    m.namespace.as_deref(),
                    m.name.as_str(),
                ))
            });
            for (place, group, kind, to_ns, name) in backends.chain(mirrors) {
                let to_ns = to_ns.unwrap_or(ns);
                let permitted = !core_group(group)
                    || kind != "Service"
                    || meshcore::l7::ingress::permits(
                        &ingress.grants,
                        meshcore::l7::ingress::Reference {
                            from_group: GROUP,
                            from_kind: kind_name,
                            from_namespace: ns,
                            to_group: "",
                            to_kind: "Service",
                            to_namespace: to_ns,
                            to_name: name,
                        },
                    );
                if !permitted {
                    not_permitted.push((
                        reason::REF_NOT_PERMITTED,
                        format!(
                            "{place}: Service {to_ns}/{name} is in another namespace and no \
                             ReferenceGrant there lets {kind_name}s of namespace {ns} refer to it"
                        ),
                    ));
                }
            }
        }
    }
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
        kind: kind_name,
        namespace: ns,
        parents,
        hostnames,
        unresolved,
        not_permitted,
    };
    status(meta, has_ours, &route, view, (waypoints, bindings, ingress))
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

/// `problems` as one `ResolvedRefs` condition.
fn resolved(problems: &[(&'static str, String)]) -> Cond {
    match problems.first() {
        None => Cond::new(true, reason::RESOLVED_REFS, "all references resolved"),
        Some((why, _)) => Cond::new(
            false,
            why,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

fn status(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    has_ours: bool,
    route: &Route<'_>,
    view: &View<'_>,
    (waypoints, bindings, ingress): (&Waypoints<'_>, &Bindings, &Ingress<'_>),
) -> Option<RouteStatus> {
    let resolved_refs = resolved(&route.unresolved);
    let mut parents = Vec::new();
    for p in route.parents {
        let ns = p.namespace.as_deref().unwrap_or(route.namespace);
        let is_gateway = p.group == GROUP && p.kind == "Gateway";
        let (outcome, mesh) = if core_group(&p.group) && p.kind == "Service" {
            (service_parent(view, bindings, route.namespace, ns, p), true)
        } else if is_gateway && waypoints.get(ns, &p.name).is_some() {
            (gateway_parent(route.namespace, ns, p), true)
        } else if let Some(gw) = ingress.get(ns, &p.name).filter(|_| is_gateway) {
            let outcome = match meshcore::l7::ingress::attach(
                &gw.config,
                route.namespace,
                route.kind,
                p,
                route.hostnames,
            ) {
                Some(Ok(attached)) => {
                    let names: Vec<&str> = attached
                        .iter()
                        .map(|a| gw.config.listeners[a.listener].name.as_str())
                        .collect();
                    Ok(format!(
                        "attached to listener(s) {} of Gateway {ns}/{}",
                        names.join(", "),
                        p.name
                    ))
                }
                Some(Err(refused)) => match gw.unserved(p) {
                    Some(why) if refused.reason == reason::NO_MATCHING_PARENT => {
                        Err((reason::NO_MATCHING_PARENT, why))
                    }
                    _ => Err((refused.reason, refused.message)),
                },
                None => continue,
            };
            (outcome, false)
        } else {
            continue; // another controller's parent
        };
        let mut accepted = match outcome {
            Ok(message) => Cond::new(true, reason::ACCEPTED, message),
            Err((why, message)) => Cond::new(false, why, message),
        };
        if mesh && !route.hostnames.is_empty() {
            accepted.message.push_str(
                "; hostnames are ignored: mesh routes match the Service a request is addressed to",
            );
        }
        let resolved_refs = if mesh || route.not_permitted.is_empty() {
            resolved_refs.clone()
        } else {
            let mut all = route.unresolved.clone();
            all.extend(route.not_permitted.iter().cloned());
            // RefNotPermitted first: a backend of another namespace is refused before it is looked up.
            all.sort_by_key(|(why, _)| *why != reason::REF_NOT_PERMITTED);
            resolved(&all)
        };
        parents.push(ParentStatus {
            parent_ref: p.clone(),
            accepted,
            resolved_refs,
        });
    }
    (!parents.is_empty() || has_ours).then(|| RouteStatus {
        kind: route.kind,
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
