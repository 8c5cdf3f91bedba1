//! Pure translation of Kubernetes and Istio resources into what ztunnel consumes. No I/O: data
//! in, data out, plus the reasons an object could not be honoured fully (each naming the
//! object and field), which the sources surface as status conditions or log lines.

pub mod authz;
pub mod cilium;
pub mod ingress;
pub mod linkerd;
pub mod linkerd_policy;
pub mod peer_authn;
pub mod route_status;
pub mod use_waypoint;
pub mod waypoints;
pub mod workloads;

use std::collections::BTreeMap;

use meshcore::api::workload as wire;
use meshcore::policy::egress::EgressPolicy;
use meshcore::policy::Authorization;

use crate::cluster::{key, Cluster};
pub use workloads::ClusterInfo;

/// A reason an object was not honoured as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
}

impl Note {
    /// The object's namespace, from `Kind namespace/name` (a Namespace: `Namespace name`).
    pub fn namespace(&self) -> Option<&str> {
        let (kind, key) = self.object.split_once(' ')?;
        if kind == "Namespace" {
            return Some(key);
        }
        if kind == "CiliumClusterwideNetworkPolicy" {
            return Some(""); // cluster-scoped: reported with the objects of no namespace
        }
        Some(key.split_once('/')?.0)
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Everything ztunnels are sent, from one view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub workloads: Vec<wire::Workload>,
    pub services: Vec<wire::Service>,
    pub authorizations: Vec<Authorization>,
    /// Egress policies (Cilium's egress rules), checked by the source workload's ztunnel.
    pub egress_policies: Vec<EgressPolicy>,
    /// Partly honoured objects.
    pub notes: Vec<Note>,
    /// Objects with invalid values, left out entirely.
    pub errors: Vec<Note>,
}

/// Translates a whole cluster view.
pub fn translate(cluster: &Cluster, info: &ClusterInfo) -> Translation {
    let mut out = Translation::default();
    let mut selector_policies = Vec::new();
    // Linkerd's policy objects, as the AuthorizationPolicies they stand for.
    let linkerd = linkerd_policy::policies(cluster, info);
    out.notes.extend(linkerd.notes);
    for ap in cluster
        .authorization_policies
        .iter()
        .chain(&linkerd.policies)
    {
        let object = format!("AuthorizationPolicy {}", key(&ap.metadata));
        let namespace = ap.metadata.namespace.as_deref().unwrap_or_default();
        let name = ap.metadata.name.as_deref().unwrap_or_default();
        let annotations = ap.metadata.annotations.clone().unwrap_or_default();
        match authz::authorization_policy(
            namespace,
            name,
            &annotations,
            &ap.spec,
            &info.root_namespace,
        ) {
            Ok(t) => {
                out.notes.extend(t.notes.into_iter().map(|message| Note {
                    object: object.clone(),
                    message,
                }));
                if let Some(a) = t.authorization {
                    if a.scope == meshcore::policy::Scope::WorkloadSelector {
                        selector_policies.push(workloads::SelectorPolicy {
                            key: a.key(),
                            namespace: a.namespace.clone(),
                            match_labels: ap.spec.selector.clone().unwrap_or_default().match_labels,
                        });
                    }
                    out.authorizations.push(a);
                }
            }
            Err(e) => out.errors.push(Note {
                object,
                message: e.0,
            }),
        }
    }

    let mut peer_authns: Vec<peer_authn::PeerAuthn> = cluster
        .peer_authentications
        .iter()
        .map(|p| peer_authn::PeerAuthn {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            spec: p.spec.clone(),
        })
        .collect();
    peer_authns.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in &peer_authns {
        if !p.spec.port_level_mtls.is_empty()
            && p.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
        {
            out.notes.push(Note {
                object: format!("PeerAuthentication {}/{}", p.namespace, p.name),
                message: "portLevelMtls: only honoured with a selector (as in Istio); ignored"
                    .into(),
            });
        }
    }

    out.workloads = workloads::workloads(
        &cluster.pods,
        &cluster.namespaces,
        &cluster.services,
        &cluster.endpoint_slices,
        &selector_policies,
        info,
    );
    // Bind each workload to the policy enforcing its effective PeerAuthentication mode.
    let mut mtls_policies: BTreeMap<String, Authorization> = BTreeMap::new();
    let pod_labels: BTreeMap<(String, String), BTreeMap<String, String>> = cluster
        .pods
        .iter()
        .filter_map(|p| {
            Some((
                (p.metadata.namespace.clone()?, p.metadata.name.clone()?),
                p.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    // Linkerd: the ports no Server takes, opened pod by pod where a group's policy cannot;
    // Cilium's policies, bound to the pods their endpointSelectors pick.
    let cilium = cilium::policies(cluster, info);
    out.notes.extend(cilium.notes);
    out.egress_policies = cilium.egress;
    let mut openings: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (opening, pods) in linkerd.openings.into_iter().chain(cilium.authorizations) {
        for pod in pods {
            openings.entry(pod).or_default().push(opening.key());
        }
        out.authorizations.push(opening);
    }
    if !openings.is_empty() {
        for w in &mut out.workloads {
            if let Some(k) = openings.remove(&(w.namespace.clone(), w.name.clone())) {
                w.authorization_policies.extend(k);
                w.authorization_policies.sort();
            }
        }
    }
    for w in &mut out.workloads {
        let labels = pod_labels
            .get(&(w.namespace.clone(), w.name.clone()))
            .cloned()
            .unwrap_or_default();
        let effective =
            peer_authn::effective(&peer_authns, &w.namespace, &labels, &info.root_namespace);
        if let Some(policy) = peer_authn::policy_for(&effective, &info.root_namespace) {
            w.authorization_policies.push(policy.key());
            mtls_policies.entry(policy.key()).or_insert(policy);
        }
    }
    out.authorizations.extend(mtls_policies.into_values());
    out.services = workloads::services(&cluster.services, info);
    // Services and workloads that use a waypoint say which.
    let waypoints = use_waypoint::Waypoints::new(&cluster.gateways);
    let namespaces: BTreeMap<&str, &k8s_openapi::api::core::v1::Namespace> = cluster
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    let bindings = use_waypoint::bind(&waypoints, &namespaces, &cluster.services, &cluster.pods);
    use_waypoint::fill(
        &bindings,
        &waypoints,
        info,
        &mut out.services,
        &mut out.workloads,
    );
    out.notes.extend(bindings.notes);
    // Deterministic order: pushes and tests compare like with like.
    out.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    out.services
        .sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
    out.authorizations.sort_by_key(Authorization::key);
    out
}

#[cfg(test)]
mod tests;
