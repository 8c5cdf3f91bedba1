//! Ingress gateways (Gateways of class `istio`), pure: per Gateway, a [`WaypointConfig`] with
//! its [`IngressConfig`] (listeners resolved by [`listeners`]), the routes attached to it, the
//! Services they send to (in any namespace, built as for waypoints, so the gateway tunnels to
//! ambient pods over HBONE), their DestinationRules, the policies targeting the Gateway, and
//! the ReferenceGrants of the backends' namespaces; and each Gateway's status ([`IngressStatus`]:
//! `Accepted`, listeners with their conditions and attached routes).
//!
//! A route attaches when one of its parentRefs names the Gateway and
//! [`meshcore::l7::ingress::attach`] (the rule the gateway applies too) finds it a listener.
//! The gateway proves the identity of its service account: the annotation
//! `gateway.istio.io/service-account`, else `<gateway name>-istio` (Istio's default for class
//! `istio`), in the Gateway's namespace.

pub mod listeners;

use std::collections::{BTreeMap, BTreeSet};

use meshcore::l7::gateway::ParentReference;
use meshcore::l7::ingress::{self, IngressConfig};
use meshcore::l7::{self, WaypointConfig};

use super::route_status::Cond;
use super::use_waypoint::{ObjectKey, SERVICE_ACCOUNT_ANNOTATION};
use super::waypoints::{backends, host_service, l7_policy, l7_request_authentication, services};
use super::waypoints::{View, WaypointTranslation};
use super::{ClusterInfo, Note};
use crate::cluster::Gateway;
use crate::crd::gateway::{GROUP, INGRESS_CLASS};
use crate::crd::security::PolicyTargetReference;
pub use listeners::ListenerState;

/// Suffix of the default service account, Deployment and Service of an ingress Gateway.
pub const NAME_SUFFIX: &str = "-istio";

/// The service account an ingress Gateway's pods run as: the annotation, else
/// `<name>-istio`.
pub fn service_account(gw: &Gateway) -> String {
    gw.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| {
            format!(
                "{}{NAME_SUFFIX}",
                gw.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// One ingress Gateway, resolved.
#[derive(Debug, Clone)]
pub struct IngressGateway<'a> {
    pub gateway: &'a Gateway,
    pub namespace: &'a str,
    pub name: &'a str,
    /// What the gateway is sent (without its `reference_grants`, added with its routes).
    pub config: IngressConfig,
    /// Each listener as written, with its conditions.
    pub listeners: Vec<ListenerState>,
}

impl IngressGateway<'_> {
    /// Why a parentRef naming an unserved listener does not attach, if it names one.
    pub fn unserved(&self, parent: &ParentReference) -> Option<String> {
        let section = parent.section_name.as_deref()?;
        let l = self.listeners.iter().find(|l| l.name == section)?;
        let why = l.served.as_ref().err()?;
        Some(format!(
            "listener {section:?} of Gateway {}/{} is not served: {why}",
            self.namespace, self.name
        ))
    }
}

/// Every ingress Gateway of a view, and the grants their references are checked against.
#[derive(Debug, Default)]
pub struct Ingress<'a> {
    pub gateways: Vec<IngressGateway<'a>>,
    /// Every ReferenceGrant, in meshcore's shape (empty when there is no ingress Gateway).
    pub grants: Vec<ingress::ReferenceGrant>,
}

impl<'a> Ingress<'a> {
    /// Resolves the Gateways of class `istio` (nothing at all when there is none).
    pub fn resolve(view: &View<'a>) -> Self {
        let mut out = Ingress::default();
        let ours: Vec<&'a Gateway> = view
            .gateways
            .iter()
            .copied()
            .filter(|g| g.spec.gateway_class_name == INGRESS_CLASS)
            .collect();
        if ours.is_empty() {
            return out;
        }
        out.grants = view.reference_grants.iter().map(|g| g.to_l7()).collect();
        for gw in ours {
            let namespace = gw.metadata.namespace.as_deref().unwrap_or_default();
            let name = gw.metadata.name.as_deref().unwrap_or_default();
            let (served, states) = listeners::resolve(gw, view, &out.grants);
            out.gateways.push(IngressGateway {
                gateway: gw,
                namespace,
                name,
                config: IngressConfig {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    listeners: served,
                    reference_grants: Vec::new(),
                },
                listeners: states,
            });
        }
        out.gateways
            .sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
        out
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&IngressGateway<'a>> {
        self.gateways
            .iter()
            .find(|g| g.namespace == namespace && g.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }
}

/// What istiod-lite reports of an ingress Gateway (pure part; its addresses and `Programmed`
/// come from what is deployed, or from the configuration being published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressStatus {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub accepted: Cond,
    pub listeners: Vec<ListenerState>,
    /// The service account its pods run as.
    pub service_account: String,
}

impl IngressStatus {
    /// Whether at least one listener is sent to the gateway.
    pub fn serves(&self) -> bool {
        self.listeners.iter().any(|l| l.served.is_ok())
    }
}

/// Whether a policy's `targetRef(s)` name the Gateway (group `gateway.networking.k8s.io`,
/// kind `Gateway`, the policy's own namespace).
fn targets_gateway(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    gw: &IngressGateway<'_>,
) -> bool {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    ns == gw.namespace
        && target_ref.iter().chain(target_refs).any(|t| {
            t.group == GROUP
                && t.kind == "Gateway"
                && t.name == gw.name
                && t.namespace.as_deref().is_none_or(|n| n == ns)
        })
}

/// Whether one of `parents` attaches to the gateway; counts the listeners it attaches to.
fn attaches(
    gw: &IngressGateway<'_>,
    route_ns: &str,
    kind: &str,
    parents: &[ParentReference],
    hostnames: &[String],
    listeners: &mut BTreeSet<usize>,
) -> bool {
    let mut any = false;
    for p in parents {
        if let Some(Ok(attached)) = ingress::attach(&gw.config, route_ns, kind, p, hostnames) {
            any = true;
            listeners.extend(attached.iter().map(|a| a.listener));
        }
    }
    any
}

/// Adds every ingress Gateway's configuration, identity and status to `out`.
pub fn configs(
    view: &View<'_>,
    info: &ClusterInfo,
    ingress: &Ingress<'_>,
    out: &mut WaypointTranslation,
) {
    let mut notes = BTreeSet::new();
    for gw in &ingress.gateways {
        let mut config = gw.config.clone();
        let mut attached_to: BTreeMap<usize, u32> = BTreeMap::new();
        let mut count = |set: BTreeSet<usize>| {
            for l in set {
                *attached_to.entry(l).or_default() += 1;
            }
        };
        let mut http_routes = Vec::new();
        for r in &view.http_routes {
            let ns = r.metadata.namespace.as_deref().unwrap_or_default();
            let mut set = BTreeSet::new();
            if attaches(
                gw,
                ns,
                "HTTPRoute",
                &r.spec.parent_refs,
                &r.spec.hostnames,
                &mut set,
            ) {
                http_routes.push(r.to_l7());
                count(set);
            }
        }
        let mut grpc_routes = Vec::new();
        for r in &view.grpc_routes {
            let ns = r.metadata.namespace.as_deref().unwrap_or_default();
            let mut set = BTreeSet::new();
            if attaches(
                gw,
                ns,
                "GRPCRoute",
                &r.spec.parent_refs,
                &r.spec.hostnames,
                &mut set,
            ) {
                grpc_routes.push(r.to_l7());
                count(set);
            }
        }
        http_routes.sort_by_key(|r| r.metadata.key());
        grpc_routes.sort_by_key(|r| r.metadata.key());
        // (route namespace, backend) pairs; a backend of another namespace needs a grant.
        let mut wanted: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut refs: Vec<(String, ObjectKey, &'static str)> = Vec::new();
        for r in &http_routes {
            let ns = &r.metadata.namespace;
            for b in backends(&r.spec.rules, ns) {
                refs.push((ns.clone(), b, "HTTPRoute"));
            }
        }
        for r in &grpc_routes {
            let ns = &r.metadata.namespace;
            for b in backends(&r.spec.rules, ns) {
                refs.push((ns.clone(), b, "GRPCRoute"));
            }
        }
        let mut grant_namespaces = BTreeSet::new();
        for (route_ns, (ns, name), kind) in refs {
            if ns != route_ns {
                grant_namespaces.insert(ns.clone());
            }
            let permitted = ingress::permits(
                &ingress.grants,
                ingress::Reference {
                    from_group: GROUP,
                    from_kind: kind,
                    from_namespace: &route_ns,
                    to_group: "",
                    to_kind: "Service",
                    to_namespace: &ns,
                    to_name: &name,
                },
            );
            // A backend the route may not reach: its endpoints are not sent (the route's
            // status says RefNotPermitted).
            if permitted {
                wanted.insert((ns, name));
            }
        }
        config.reference_grants = ingress
            .grants
            .iter()
            .filter(|g| grant_namespaces.contains(&g.namespace))
            .cloned()
            .collect();
        let mut services_out = Vec::new();
        for (ns, name) in &wanted {
            let Some(svc) = view.service(ns, name) else {
                continue; // the route's status says BackendNotFound
            };
            let (service, service_notes) = services::service(svc, view, info);
            services_out.extend(service);
            notes.extend(service_notes);
        }
        let mut destination_rules: Vec<l7::networking::DestinationRule> = view
            .destination_rules
            .iter()
            .filter(|dr| {
                let ns = dr.metadata.namespace.as_deref().unwrap_or_default();
                host_service(&dr.spec.host, ns, &info.domain).is_some_and(|k| wanted.contains(&k))
            })
            .map(|dr| dr.to_l7())
            .collect();
        destination_rules.sort_by_key(|d| d.metadata.key());
        let key = format!("{}/{}", gw.namespace, gw.name);
        let mut authorization_policies = Vec::new();
        for p in &view.policies {
            if !targets_gateway(&p.metadata, &p.spec.target_ref, &p.spec.target_refs, gw) {
                continue;
            }
            match l7_policy(p) {
                Ok(policy) => authorization_policies.push(policy),
                Err(message) => {
                    notes.insert(Note {
                        object: format!("AuthorizationPolicy {}", crate::cluster::key(&p.metadata)),
                        message: format!("not sent to gateway {key}: {message}"),
                    });
                }
            }
        }
        authorization_policies.sort_by_key(|p| p.key());
        let mut request_authentications = Vec::new();
        for ra in &view.request_authentications {
            if !targets_gateway(&ra.metadata, &ra.spec.target_ref, &ra.spec.target_refs, gw) {
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
                        message: format!("not sent to gateway {key}: {message}"),
                    });
                }
            }
        }
        request_authentications.sort_by_key(|ra| ra.key());
        if gw.gateway.spec.listeners.iter().any(|l| {
            l.tls
                .as_ref()
                .is_some_and(|t| t.frontend_validation.is_some())
        }) {
            notes.insert(Note {
                object: format!("Gateway {key}"),
                message: "tls.frontendValidation (client certificates) is not supported: ignored"
                    .into(),
            });
        }
        // Listener states with their attached routes (served listeners are in order).
        let mut states = gw.listeners.clone();
        let mut served = 0;
        for s in &mut states {
            if s.served.is_ok() {
                s.attached_routes = attached_to.get(&served).copied().unwrap_or(0);
                served += 1;
            }
        }
        let service_account = service_account(gw.gateway);
        out.identities.insert(
            key.clone(),
            format!(
                "spiffe://{}/ns/{}/sa/{service_account}",
                info.trust_domain, gw.namespace
            ),
        );
        out.ingress.push(IngressStatus {
            namespace: gw.namespace.to_owned(),
            name: gw.name.to_owned(),
            generation: gw.gateway.metadata.generation,
            accepted: listeners::gateway_accepted(gw.gateway, &states),
            listeners: states,
            service_account,
        });
        out.configs.push((
            gw.namespace.to_owned(),
            gw.name.to_owned(),
            WaypointConfig {
                services: services_out,
                http_routes,
                grpc_routes,
                authorization_policies,
                request_authentications,
                virtual_services: Vec::new(),
                destination_rules,
                ingress: Some(config),
            },
        ));
    }
    out.notes.extend(notes);
}

#[cfg(test)]
mod tests;
