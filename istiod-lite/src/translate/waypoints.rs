//! Per waypoint, the whole configuration it applies ([`WaypointConfig`]): pure, from one view of
//! the cluster.
//!
//! For a waypoint (a Gateway of class `istio-waypoint`, see [`super::use_waypoint`]):
//! - **services**: those bound to it (`istio.io/use-waypoint`, waypoint-for service|all), the
//!   Services of pods bound to it (waypoint-for workload|all: the waypoint resolves their
//!   addresses through them), and every Service a route attached to it names as a backend or a
//!   mirror; each with the pods behind it as endpoints;
//! - **routes**: HTTPRoutes and GRPCRoutes with a `parentRef` naming one of its bound Services
//!   (group `""`, kind `Service`) or the waypoint Gateway itself, kept as written;
//! - **policies**: AuthorizationPolicies whose `targetRefs` name the Gateway (same namespace),
//!   a bound Service (same namespace), or the GatewayClass `istio-waypoint` (from the root
//!   namespace), kept as written;
//! - **request authentications**: RequestAuthentications attached the same way, kept as
//!   written (selector-only ones are workloads', not a waypoint's);
//! - **traffic rules**: VirtualServices bound to the mesh (`gateways` empty or `mesh`) whose
//!   `hosts` name a bound Service (their destinations and mirrors join the services), and the
//!   DestinationRules whose `host` names any of the services sent, kept as written.
//!
//! Ingress gateways (Gateways of class `istio`) get their configuration here too, from
//! [`super::ingress`], so both kinds are computed (and diffed) together.
//!
//! Everything is sorted, so equal views give byte-equal configurations (and versions).

pub mod services;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshcore::l7::gateway::{BackendObjectReference, ParentReference, RouteFilter, RouteRule};
pub use meshcore::l7::networking::host_service;
use meshcore::l7::{self, WaypointConfig};

use super::ingress::{Ingress, IngressStatus};
use super::route_status::{route_statuses, RouteStatus};
use super::use_waypoint::{bind, ObjectKey, Waypoint, Waypoints};
use super::workloads::selects;
use super::{ClusterInfo, Note};
use crate::cluster::{
    AuthorizationPolicy, Cluster, DestinationRule, Gateway, GrpcRoute, HttpRoute, ReferenceGrant,
    RequestAuthentication, ServiceProfile, TlsSecret, TrafficSplit, VirtualService,
};
use crate::crd::gateway::{l7_meta, GROUP, WAYPOINT_CLASS};
use crate::crd::security::PolicyTargetReference;

/// The objects waypoint translation reads, borrowed (the pipeline builds it from its slices
/// without copying).
#[derive(Debug, Default)]
pub struct View<'a> {
    pub namespaces: BTreeMap<&'a str, &'a Namespace>,
    /// By namespace, then name.
    pub services: BTreeMap<&'a str, BTreeMap<&'a str, &'a Service>>,
    /// By namespace.
    pub pods: BTreeMap<&'a str, Vec<&'a Pod>>,
    /// By namespace.
    pub endpoint_slices: BTreeMap<&'a str, Vec<&'a EndpointSlice>>,
    pub gateways: Vec<&'a Gateway>,
    pub http_routes: Vec<&'a HttpRoute>,
    pub grpc_routes: Vec<&'a GrpcRoute>,
    pub policies: Vec<&'a AuthorizationPolicy>,
    pub request_authentications: Vec<&'a RequestAuthentication>,
    pub virtual_services: Vec<&'a VirtualService>,
    pub destination_rules: Vec<&'a DestinationRule>,
    pub traffic_splits: Vec<&'a TrafficSplit>,
    pub service_profiles: Vec<&'a ServiceProfile>,
    /// TLS Secrets by (namespace, name): ingress gateways' certificates.
    pub secrets: BTreeMap<(&'a str, &'a str), &'a TlsSecret>,
    pub reference_grants: Vec<&'a ReferenceGrant>,
}

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

impl<'a> View<'a> {
    pub fn add_namespace(&mut self, n: &'a Namespace) {
        if let Some(name) = n.metadata.name.as_deref() {
            self.namespaces.insert(name, n);
        }
    }

    pub fn add_service(&mut self, s: &'a Service) {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        self.services
            .entry(ns_of(&s.metadata))
            .or_default()
            .insert(name, s);
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(namespace)?.get(name).copied()
    }

    pub fn add_pod(&mut self, p: &'a Pod) {
        self.pods.entry(ns_of(&p.metadata)).or_default().push(p);
    }

    pub fn add_secret(&mut self, s: &'a TlsSecret) {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        self.secrets.insert((ns_of(&s.metadata), name), s);
    }

    pub fn add_endpoint_slice(&mut self, e: &'a EndpointSlice) {
        self.endpoint_slices
            .entry(ns_of(&e.metadata))
            .or_default()
            .push(e);
    }

    pub fn from_cluster(c: &'a Cluster) -> Self {
        let mut v = View::default();
        c.namespaces.iter().for_each(|n| v.add_namespace(n));
        c.services.iter().for_each(|s| v.add_service(s));
        c.pods.iter().for_each(|p| v.add_pod(p));
        c.endpoint_slices
            .iter()
            .for_each(|e| v.add_endpoint_slice(e));
        v.gateways = c.gateways.iter().collect();
        v.http_routes = c.http_routes.iter().collect();
        v.grpc_routes = c.grpc_routes.iter().collect();
        v.policies = c.authorization_policies.iter().collect();
        v.request_authentications = c.request_authentications.iter().collect();
        v.virtual_services = c.virtual_services.iter().collect();
        v.destination_rules = c.destination_rules.iter().collect();
        v.traffic_splits = c.traffic_splits.iter().collect();
        v.service_profiles = c.service_profiles.iter().collect();
        c.secrets.iter().for_each(|s| v.add_secret(s));
        v.reference_grants = c.reference_grants.iter().collect();
        v
    }
}

/// What waypoint translation produces.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WaypointTranslation {
    /// (namespace, name, configuration) per waypoint, sorted.
    pub configs: Vec<(String, String, WaypointConfig)>,
    /// `namespace/name` → the SPIFFE ID allowed to read that waypoint's configuration.
    pub identities: BTreeMap<String, String>,
    /// Objects a waypoint cannot use as written.
    pub notes: Vec<Note>,
    /// The status each route is owed (see [`super::route_status`]).
    pub routes: Vec<RouteStatus>,
    /// Each ingress Gateway's status (see [`super::ingress`]), sorted.
    pub ingress: Vec<IngressStatus>,
}

/// Every waypoint's configuration, and every ingress gateway's ([`super::ingress`]).
pub fn waypoints(view: &View<'_>, info: &ClusterInfo) -> WaypointTranslation {
    let mut out = WaypointTranslation::default();
    let ingress = Ingress::resolve(view);
    if !ingress.is_empty() {
        super::ingress::configs(view, info, &ingress, &mut out);
    }
    let all = Waypoints::new(view.gateways.iter().copied());
    // Binding notes belong to the Address translation, which reports them.
    let bindings = if all.is_empty() {
        Default::default()
    } else {
        bind(
            &all,
            &view.namespaces,
            view.services.values().flat_map(|s| s.values().copied()),
            view.pods.values().flatten().copied(),
        )
    };
    out.routes = route_statuses(view, &all, &bindings, &ingress);
    if all.is_empty() {
        return out;
    }
    let mut notes: BTreeSet<Note> = out.notes.drain(..).collect();
    // Linkerd's and SMI's objects, as VirtualServices, next to the users' own.
    let (linkerd, linkerd_notes) = super::linkerd::virtual_services(
        &view.traffic_splits,
        &view.service_profiles,
        &info.domain,
    );
    notes.extend(linkerd_notes);
    let all_virtual_services: Vec<l7::networking::VirtualService> = view
        .virtual_services
        .iter()
        .map(|vs| vs.to_l7())
        .chain(linkerd)
        .collect();
    for w in all.iter() {
        let key = (w.namespace.to_owned(), w.name.to_owned());
        let bound: BTreeSet<ObjectKey> = bindings.services_of(&key).into_iter().cloned().collect();
        let mut wanted = bound.clone();
        for (ns, pod) in bindings.pods_of(&key) {
            let services = services_selecting(view, ns, pod);
            if services.is_empty() {
                notes.insert(Note {
                    object: format!("Pod {ns}/{pod}"),
                    message: format!(
                        "uses waypoint {} but no Service selects it: the waypoint cannot \
                         resolve its address",
                        w.key()
                    ),
                });
            }
            wanted.extend(services);
        }
        let attached = |route_ns: &str, parents: &[ParentReference]| {
            parents
                .iter()
                .any(|p| parent_is_waypoint(p, route_ns, w, &bound))
        };
        let mut http_routes: Vec<l7::gateway::HttpRoute> = view
            .http_routes
            .iter()
            .filter(|r| attached(ns_of(&r.metadata), &r.spec.parent_refs))
            .map(|r| r.to_l7())
            .collect();
        http_routes.sort_by_key(|r| r.metadata.key());
        let mut grpc_routes: Vec<l7::gateway::GrpcRoute> = view
            .grpc_routes
            .iter()
            .filter(|r| attached(ns_of(&r.metadata), &r.spec.parent_refs))
            .map(|r| r.to_l7())
            .collect();
        grpc_routes.sort_by_key(|r| r.metadata.key());
        for r in &http_routes {
            wanted.extend(backends(&r.spec.rules, &r.metadata.namespace));
        }
        for r in &grpc_routes {
            wanted.extend(backends(&r.spec.rules, &r.metadata.namespace));
        }
        let mut virtual_services: Vec<l7::networking::VirtualService> = all_virtual_services
            .iter()
            .filter(|vs| {
                let ns = &vs.metadata.namespace;
                (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .filter_map(|h| host_service(h, ns, &info.domain))
                        .any(|k| bound.contains(&k))
            })
            .cloned()
            .collect();
        virtual_services.sort_by_key(|v| v.metadata.key());
        for vs in &virtual_services {
            let ns = &vs.metadata.namespace;
            for http in &vs.spec.http {
                let hosts = http
                    .route
                    .iter()
                    .map(|d| &d.destination)
                    .chain(&http.mirror)
                    .chain(http.mirrors.iter().map(|m| &m.destination));
                wanted.extend(hosts.filter_map(|d| host_service(&d.host, ns, &info.domain)));
            }
        }
        let mut services = Vec::new();
        for (ns, name) in &wanted {
            let Some(svc) = view.service(ns, name) else {
                continue; // a missing backend is the route's problem, reported by the waypoint
            };
            let (service, service_notes) = services::service(svc, view, info);
            services.extend(service);
            notes.extend(service_notes);
        }
        let mut destination_rules: Vec<l7::networking::DestinationRule> = view
            .destination_rules
            .iter()
            .filter(|dr| {
                host_service(&dr.spec.host, ns_of(&dr.metadata), &info.domain)
                    .is_some_and(|k| wanted.contains(&k))
            })
            .map(|dr| dr.to_l7())
            .collect();
        destination_rules.sort_by_key(|d| d.metadata.key());
        let mut authorization_policies = Vec::new();
        let attaches = |meta, target_ref, target_refs| {
            policy_attaches(
                meta,
                target_ref,
                target_refs,
                w,
                &bound,
                &info.root_namespace,
            )
        };
        for p in &view.policies {
            if !attaches(&p.metadata, &p.spec.target_ref, &p.spec.target_refs) {
                continue;
            }
            match l7_policy(p) {
                Ok(policy) => authorization_policies.push(policy),
                Err(message) => {
                    notes.insert(Note {
                        object: format!("AuthorizationPolicy {}", crate::cluster::key(&p.metadata)),
                        message: format!("not sent to waypoint {}: {message}", w.key()),
                    });
                }
            }
        }
        authorization_policies.sort_by_key(|p| p.key());
        let mut request_authentications = Vec::new();
        for ra in &view.request_authentications {
            if !attaches(&ra.metadata, &ra.spec.target_ref, &ra.spec.target_refs) {
                continue;
            }
            match l7_request_authentication(ra) {
                Ok(ra) => request_authentications.push(ra),
                Err(message) => {
                    notes.insert(Note {
                        object: format!(
                            "RequestAuthentication {}",
                            crate::cluster::key(&ra.metadata)
                        ),
                        message: format!("not sent to waypoint {}: {message}", w.key()),
                    });
                }
            }
        }
        request_authentications.sort_by_key(|ra| ra.key());
        out.identities.insert(w.key(), w.identity(info));
        out.configs.push((
            key.0,
            key.1,
            WaypointConfig {
                services,
                http_routes,
                grpc_routes,
                authorization_policies,
                request_authentications,
                virtual_services,
                destination_rules,
                ingress: None,
            },
        ));
    }
    out.notes = notes.into_iter().collect();
    out.configs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// The Services of `namespace` whose selector picks the pod.
fn services_selecting(view: &View<'_>, namespace: &str, pod: &str) -> Vec<ObjectKey> {
    let Some(pod) = view
        .pods
        .get(namespace)
        .into_iter()
        .flatten()
        .find(|p| p.metadata.name.as_deref() == Some(pod))
    else {
        return Vec::new();
    };
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    view.services
        .get(namespace)
        .into_iter()
        .flatten()
        .filter(|(_, svc)| {
            svc.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| selects(s, labels))
        })
        .map(|(name, _)| (namespace.to_owned(), (*name).to_owned()))
        .collect()
}

fn core_group(group: &str) -> bool {
    matches!(group, "" | "core")
}

/// Whether a route's `parentRef` names the waypoint or one of the Services bound to it.
fn parent_is_waypoint(
    p: &ParentReference,
    route_ns: &str,
    w: &Waypoint<'_>,
    bound: &BTreeSet<ObjectKey>,
) -> bool {
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    match (p.group.as_str(), p.kind.as_str()) {
        (g, "Service") if core_group(g) => bound.contains(&(ns.to_owned(), p.name.clone())),
        (GROUP, "Gateway") => ns == w.namespace && p.name == w.name,
        _ => false,
    }
}

/// A backend or mirror naming a Service: its (namespace, name).
fn service_ref(
    group: &str,
    kind: &str,
    name: &str,
    ns: Option<&str>,
    route_ns: &str,
) -> Option<ObjectKey> {
    (core_group(group) && kind == "Service")
        .then(|| (ns.unwrap_or(route_ns).to_owned(), name.to_owned()))
}

fn mirror(r: &BackendObjectReference, route_ns: &str) -> Option<ObjectKey> {
    service_ref(&r.group, &r.kind, &r.name, r.namespace.as_deref(), route_ns)
}

fn mirrors<'a, F: RouteFilter>(
    filters: &'a [F],
    route_ns: &'a str,
) -> impl Iterator<Item = ObjectKey> + 'a {
    filters
        .iter()
        .filter_map(|f| f.request_mirror())
        .filter_map(move |m| mirror(&m.backend_ref, route_ns))
}

/// Services a route's rules send to: backends and mirrors, at rule and backend level.
pub(super) fn backends<R: RouteRule>(rules: &[R], ns: &str) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    for rule in rules {
        out.extend(mirrors(rule.filters(), ns));
        for b in rule.backend_refs() {
            out.extend(service_ref(
                &b.group,
                &b.kind,
                &b.name,
                b.namespace.as_deref(),
                ns,
            ));
            out.extend(mirrors(&b.filters, ns));
        }
    }
    out
}

/// Whether a policy's (AuthorizationPolicy's, RequestAuthentication's) `targetRef(s)` attach it
/// to this waypoint. Cross-namespace references are not honoured (Istio's validation refuses
/// them).
fn policy_attaches(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    w: &Waypoint<'_>,
    bound: &BTreeSet<ObjectKey>,
    root_namespace: &str,
) -> bool {
    let ns = ns_of(meta);
    target_ref
        .iter()
        .chain(target_refs)
        .filter(|t| t.namespace.as_deref().is_none_or(|n| n == ns))
        .any(|t| match (t.group.as_str(), t.kind.as_str()) {
            (GROUP, "Gateway") => ns == w.namespace && t.name == w.name,
            (GROUP, "GatewayClass") => ns == root_namespace && t.name == WAYPOINT_CLASS,
            (g, "Service") if core_group(g) => bound.contains(&(ns.to_owned(), t.name.clone())),
            _ => false,
        })
}

/// The policy in meshcore's shape (the same fields, camelCase), as written.
pub fn l7_policy(p: &AuthorizationPolicy) -> Result<l7::authz::AuthorizationPolicy, String> {
    let spec = serde_json::to_value(&p.spec)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("spec: {e}"))?;
    Ok(l7::authz::AuthorizationPolicy {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: l7_meta(&p.metadata),
        spec,
        status: None,
    })
}

/// The RequestAuthentication in meshcore's shape (the same fields, camelCase), as written.
pub fn l7_request_authentication(
    ra: &RequestAuthentication,
) -> Result<l7::authn::RequestAuthentication, String> {
    let spec = serde_json::to_value(&ra.spec)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("spec: {e}"))?;
    Ok(l7::authn::RequestAuthentication {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: l7_meta(&ra.metadata),
        spec,
        status: None,
    })
}

#[cfg(test)]
mod tests;
