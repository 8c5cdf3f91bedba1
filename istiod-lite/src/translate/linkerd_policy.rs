//! Linkerd's policy objects as Istio AuthorizationPolicies for ztunnel (pure), so a Linkerd
//! user's policy manifests work as applied. The policies made here go through the same L4
//! translation as a user's AuthorizationPolicy with a `selector` ([`super::authz`]).
//!
//! Linkerd's model: once a `Server` picks a port of some pods, connections to that port are
//! refused unless an authorization admits them (the Server's `accessPolicy`, `deny` by default,
//! decides for the rest); the pods' other ports keep the default policy. So the Servers of one
//! namespace that share a `podSelector` become one ALLOW policy, `linkerd-server-<server>` (the
//! first Server's name), selecting their `matchLabels` (none: the whole namespace), with
//!
//! - one rule per authorization of each Server: `from` the clients it admits, `to` the Server's
//!   port (a number, or a container port's name resolved on the pods the selector picks);
//! - a rule for the `accessPolicy`: `all-unauthenticated` and `audit` (no audit mode at L4,
//!   reported) admit anyone, `all-authenticated` any mesh identity (`principals: ["*"]`), the
//!   `cluster-*` ones the same from Linkerd's default cluster networks (reported: approximate);
//! - one rule `to: notPorts: [every Server port]`, so the pods' other ports stay open.
//!
//! Where that last rule would be wrong for some pod (it is also picked by a Server of another
//! `podSelector`, or an Istio ALLOW policy applies to it), the group's policy goes without it and
//! each of its pods is bound instead to `linkerd-open-except-<ports>`, opening every port but
//! those of all the Servers picking that pod; a pod an Istio ALLOW policy applies to gets none:
//! its other ports are left to Istio's policies (reported).
//!
//! Clients ([`clients`]): a Linkerd `AuthorizationPolicy` targeting the Server or its Namespace
//! admits those meeting every `requiredAuthenticationRefs` entry (one Istio source: its fields
//! are ANDed): a `MeshTLSAuthentication`'s identities (`*` → any principal,
//! `<sa>.<ns>.serviceaccount.identity.linkerd.<td>` → principal `<td>/ns/<ns>/sa/<sa>`,
//! `*.<ns>....` → namespace `<ns>`; Linkerd's default trust domain `cluster.local` is the mesh's),
//! a `NetworkAuthentication`'s networks (`ipBlocks`, `notIpBlocks`), a ServiceAccount (a
//! principal). A `ServerAuthorization` (by Server name or label selector) admits its `client`:
//! `unauthenticated` anyone, `meshTLS` identities and service accounts, within `networks`.
//!
//! Whatever does not map is reported by kind and name and never widens what is admitted: a
//! policy Linkerd would ignore (a missing or second identity authentication, an unsupported
//! kind) is not applied; route targets (HTTPRoute, GRPCRoute) are L7 and not translated; a
//! Server with `matchExpressions` or an `externalWorkloadSelector`, whose named port no pod
//! has, or in the root namespace (where an Istio policy applies mesh-wide) is not applied (its
//! port keeps the default policy, which the note says).

mod clients;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::policy::{self, Authorization, Match};

use super::workloads::named_port;
use super::{ClusterInfo, Note};
use crate::cluster::{key, AuthorizationPolicy, Cluster};
use crate::crd::linkerd_policy::{
    canonical_kind, names_kind, LinkerdAuthorizationPolicy, Server, ServerAuthorization, GROUP,
};
use crate::crd::security::{
    AuthorizationAction, AuthorizationPolicySpec, Operation, Rule, RuleFrom, RuleTo,
    WorkloadSelector,
};
use clients::{
    access_policy, authentications, policy_clients, server_authorization_clients, Authentications,
    Clients,
};

/// The prefix of the policies standing for Servers.
pub const NAME_PREFIX: &str = "linkerd-server-";
/// The prefix of the policies opening pods' ports no Server takes.
pub const OPEN_PREFIX: &str = "linkerd-open-except-";
/// How notes name Linkerd's AuthorizationPolicy (Istio's is plain `AuthorizationPolicy`).
pub const LINKERD_AUTHZ: &str = "AuthorizationPolicy.policy.linkerd.io";
/// Linkerd's default trust domain: its identities there are this mesh's.
const LINKERD_TRUST_DOMAIN: &str = "cluster.local";

fn note(kind: &str, meta: &ObjectMeta, message: impl Into<String>) -> Note {
    Note {
        object: format!("{kind} {}", key(meta)),
        message: message.into(),
    }
}

/// What Linkerd's policy objects stand for.
#[derive(Debug, Default)]
pub struct Translated {
    /// One per group of Servers sharing a `podSelector`, for [`super::authz`].
    pub policies: Vec<AuthorizationPolicy>,
    /// ALLOW policies opening every port but a Server's, each with the pods (`namespace`,
    /// `name`) it is bound to.
    pub openings: Vec<(Authorization, Vec<(String, String)>)>,
    pub notes: Vec<Note>,
}

/// A Server that maps: the pods it selects and the ports it takes.
struct Taken<'a> {
    server: &'a Server,
    name: &'a str,
    ports: BTreeSet<u16>,
    /// `None`: `deny`; else the clients its access policy admits.
    access: Option<Clients>,
}

/// Whether a selector (`matchLabels`; empty: every pod) picks `labels`.
fn picks(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The Istio ALLOW policy (a user's) that applies to a pod, if any: then ztunnel denies what
/// no ALLOW rule admits, and the pod's other ports are that policy's business.
fn istio_allow<'a>(
    policies: &'a [AuthorizationPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root: &str,
) -> Option<&'a AuthorizationPolicy> {
    policies.iter().find(|p| {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let dry_run = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::authz::DRY_RUN_ANNOTATION))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        p.spec.action == AuthorizationAction::Allow
            && p.spec.target_ref.is_none()
            && p.spec.target_refs.is_empty()
            && !dry_run
            && (ns == namespace || ns == root)
            && p.spec
                .selector
                .as_ref()
                .is_none_or(|s| picks(&s.match_labels, labels))
    })
}

/// One namespace's Linkerd objects.
#[derive(Default)]
struct Namespace<'a> {
    servers: Vec<&'a Server>,
    server_authorizations: Vec<&'a ServerAuthorization>,
    policies: Vec<&'a LinkerdAuthorizationPolicy>,
}

/// The Istio policies standing for the cluster's Linkerd policy objects, and notes on what
/// does not map.
pub fn policies(cluster: &Cluster, info: &ClusterInfo) -> Translated {
    let mut out = Translated::default();
    if cluster.servers.is_empty()
        && cluster.server_authorizations.is_empty()
        && cluster.linkerd_authorization_policies.is_empty()
        && cluster.mesh_tls_authentications.is_empty()
        && cluster.network_authentications.is_empty()
    {
        return out;
    }
    let authns = authentications(cluster, info, &mut out.notes);
    let mut by_ns: BTreeMap<&str, Namespace<'_>> = BTreeMap::new();
    let ns_of = |m: &ObjectMeta| m.namespace.as_deref().unwrap_or_default().to_owned();
    let mut servers: Vec<&Server> = cluster.servers.iter().collect();
    servers.sort_by_key(|s| key(&s.metadata));
    for s in servers {
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        by_ns.entry(ns).or_default().servers.push(s);
    }
    for a in &cluster.server_authorizations {
        let ns = a.metadata.namespace.as_deref().unwrap_or_default();
        by_ns.entry(ns).or_default().server_authorizations.push(a);
    }
    for p in &cluster.linkerd_authorization_policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        by_ns.entry(ns).or_default().policies.push(p);
    }
    let mut pods: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &cluster.pods {
        pods.entry(ns_of(&p.metadata)).or_default().push(p);
    }
    for (ns, objects) in by_ns {
        let pods = pods.get(ns).map(Vec::as_slice).unwrap_or_default();
        let cx = Context {
            ns,
            pods,
            cluster,
            authns: &authns,
            info,
        };
        cx.namespace(&objects, &mut out);
    }
    out
}

/// What one namespace's translation reads.
struct Context<'a> {
    ns: &'a str,
    pods: &'a [&'a Pod],
    cluster: &'a Cluster,
    authns: &'a Authentications<'a>,
    info: &'a ClusterInfo,
}

impl Context<'_> {
    /// The Servers of `ns` that map, grouped by `matchLabels`.
    fn servers<'s>(
        &self,
        objects: &Namespace<'s>,
        notes: &mut Vec<Note>,
    ) -> BTreeMap<BTreeMap<String, String>, Vec<Taken<'s>>> {
        let (ns, info) = (self.ns, self.info);
        let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Taken<'s>>> = BTreeMap::new();
        for &s in &objects.servers {
            let n = |m: String| note("Server", &s.metadata, m);
            let not_applied = "not applied: its port keeps the default policy";
            if s.spec.external_workload_selector.is_some() {
                notes.push(n(format!("externalWorkloadSelector: ExternalWorkloads are not part of this mesh; {not_applied}")));
                continue;
            }
            let Some(selector) = &s.spec.pod_selector else {
                notes.push(n(format!("no podSelector; {not_applied}")));
                continue;
            };
            if !selector.match_expressions.is_empty() {
                notes.push(n(format!("podSelector.matchExpressions are not mapped (Istio selects by matchLabels only); {not_applied}")));
                continue;
            }
            if ns == info.root_namespace {
                notes.push(n(format!("an Istio policy in the root namespace ({ns}) applies to pods of every namespace; {not_applied}")));
                continue;
            }
            let selected: Vec<&&Pod> = self
                .pods
                .iter()
                .filter(|p| picks(&selector.match_labels, &labels(&p.metadata)))
                .collect();
            let ports: BTreeSet<u16> = match &s.spec.port {
                IntOrString::Int(p) => match u16::try_from(*p) {
                    Ok(p) if p != 0 => [p].into(),
                    _ => {
                        notes.push(n(format!("port {p} is not a port number; {not_applied}")));
                        continue;
                    }
                },
                IntOrString::String(name) => {
                    let found: BTreeSet<u16> = selected
                        .iter()
                        .filter_map(|p| named_port(p, name))
                        .filter_map(|p| u16::try_from(p).ok().filter(|&p| p != 0))
                        .collect();
                    if found.is_empty() {
                        notes.push(n(format!("port {name:?}: no pod it selects has a container port of that name; {not_applied}")));
                        continue;
                    }
                    if found.len() > 1 {
                        notes.push(n(format!("port {name:?} is {found:?} on different pods: every pod it selects is restricted on all of them (approximate)")));
                    }
                    found
                }
            };
            let (access, access_note) = access_policy(s);
            notes.extend(access_note.map(n));
            let group = groups.entry(selector.match_labels.clone()).or_default();
            let clash = group.iter().find(|t| !t.ports.is_disjoint(&ports));
            if let Some(first) = clash {
                notes.push(n(format!("selects the same pods and port as Server {ns}/{} (Linkerd's admission refuses this); not applied", first.name)));
                continue;
            }
            group.push(Taken {
                server: s,
                name: s.metadata.name.as_deref().unwrap_or_default(),
                ports,
                access,
            });
        }
        groups
    }

    /// The clients each authorization of `ns` admits, by the name of the Server it is for.
    fn authorizations<'s>(
        &self,
        objects: &Namespace<'s>,
        taken: &[&Taken<'s>],
        notes: &mut Vec<Note>,
    ) -> BTreeMap<&'s str, Vec<Clients>> {
        let (ns, info, authns) = (self.ns, self.info, self.authns);
        let mut out: BTreeMap<&str, Vec<Clients>> = BTreeMap::new();
        let all_servers: BTreeSet<&str> = objects
            .servers
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        let mut policies = objects.policies.clone();
        policies.sort_by_key(|p| key(&p.metadata));
        for p in policies {
            let n = |m: String| note(LINKERD_AUTHZ, &p.metadata, m);
            let t = &p.spec.target_ref;
            let g = t.group.as_deref();
            let targets: Vec<&str> = if names_kind(g, &t.kind, GROUP, "Server") {
                if !all_servers.contains(t.name.as_str()) {
                    notes.push(n(format!(
                        "targetRef: Server {ns}/{} does not exist",
                        t.name
                    )));
                    continue;
                }
                taken
                    .iter()
                    .filter(|s| s.name == t.name)
                    .map(|s| s.name)
                    .collect()
            } else if names_kind(g, &t.kind, "", "Namespace") {
                if t.name != ns {
                    notes.push(n(format!("targetRef: Namespace {} is not the policy's own (Linkerd allows only that); not applied", t.name)));
                    continue;
                }
                taken.iter().map(|s| s.name).collect()
            } else if t.kind == "HTTPRoute" || t.kind == "GRPCRoute" {
                notes.push(n(format!("targetRef {} {}: per-route (L7) authorization is not translated (ztunnel sees connections only; use a waypoint and an Istio policy), so these clients are not admitted to the route's Server", canonical_kind(g, &t.kind), t.name)));
                continue;
            } else {
                notes.push(n(format!(
                    "targetRef kind {} is not a Server, Namespace or route; not applied",
                    canonical_kind(g, &t.kind)
                )));
                continue;
            };
            match policy_clients(p, authns, info) {
                Ok(c) => {
                    for s in targets {
                        out.entry(s).or_default().push(c.clone());
                    }
                }
                Err(e) => notes.push(n(format!("{e}; not applied"))),
            }
        }
        let mut sazs = objects.server_authorizations.clone();
        sazs.sort_by_key(|a| key(&a.metadata));
        for a in sazs {
            let n = |m: String| note("ServerAuthorization", &a.metadata, m);
            let r = &a.spec.server;
            let targets: Vec<&str> = match (&r.name, &r.selector) {
                (Some(name), _) => {
                    if !all_servers.contains(name.as_str()) {
                        notes.push(n(format!("server.name: Server {ns}/{name} does not exist")));
                        continue;
                    }
                    taken
                        .iter()
                        .filter(|s| s.name == name)
                        .map(|s| s.name)
                        .collect()
                }
                (None, Some(sel)) if !sel.match_expressions.is_empty() => {
                    notes.push(n(
                        "server.selector.matchExpressions are not mapped; not applied".into(),
                    ));
                    continue;
                }
                (None, sel) => {
                    let wanted = sel.clone().unwrap_or_default().match_labels;
                    taken
                        .iter()
                        .filter(|s| picks(&wanted, &labels(&s.server.metadata)))
                        .map(|s| s.name)
                        .collect()
                }
            };
            let mut dropped = Vec::new();
            let clients = server_authorization_clients(a, info, &mut dropped);
            notes.extend(dropped.into_iter().map(n));
            match clients {
                Ok(c) => {
                    for s in targets {
                        out.entry(s).or_default().push(c.clone());
                    }
                }
                Err(e) => notes.push(n(format!("{e}; not applied"))),
            }
        }
        out
    }

    fn namespace(&self, objects: &Namespace<'_>, out: &mut Translated) {
        let ns = self.ns;
        let groups = self.servers(objects, &mut out.notes);
        let taken: Vec<&Taken<'_>> = groups.values().flatten().collect();
        let authorized = self.authorizations(objects, &taken, &mut out.notes);
        let selectors: Vec<&BTreeMap<String, String>> = groups.keys().collect();
        let own: Vec<BTreeSet<u16>> = groups
            .values()
            .map(|g| g.iter().flat_map(|t| t.ports.iter().copied()).collect())
            .collect();
        // Per pod: the groups picking it, the ports they take, an Istio ALLOW policy on it.
        // A group keeps its other-ports rule only if it alone decides for each of its pods.
        let mut alone = vec![true; groups.len()];
        let mut openings: BTreeMap<BTreeSet<u16>, Vec<(String, String)>> = BTreeMap::new();
        let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut left_to_istio: Vec<Option<(String, String)>> = vec![None; groups.len()];
        let mut bind: Vec<(BTreeSet<u16>, String, Vec<usize>)> = Vec::new();
        for pod in self.pods {
            let pod_labels = labels(&pod.metadata);
            let name = pod.metadata.name.clone().unwrap_or_default();
            let picked: Vec<usize> = (0..groups.len())
                .filter(|&i| picks(selectors[i], &pod_labels))
                .collect();
            if picked.is_empty() {
                continue;
            }
            let allow = istio_allow(
                &self.cluster.authorization_policies,
                ns,
                &pod_labels,
                &self.info.root_namespace,
            );
            if picked.len() > 1 || allow.is_some() {
                picked.iter().for_each(|&i| alone[i] = false);
            }
            for &i in &picked {
                for &j in picked.iter().filter(|&&j| j > i) {
                    let shared: BTreeSet<u16> = own[i].intersection(&own[j]).copied().collect();
                    if !shared.is_empty() && reported.insert((i, j)) {
                        let first = groups.values().nth(i).expect("group")[0].server;
                        out.notes.push(note("Server", &first.metadata, format!(
                            "selects pod {name} together with Server(s) {} (another podSelector) on port(s) {shared:?}: the clients either admits are admitted there (approximate; Linkerd's admission refuses such Servers)",
                            group_names(&groups, j)
                        )));
                    }
                }
                if let Some(p) = allow {
                    left_to_istio[i].get_or_insert_with(|| (key(&p.metadata), name.clone()));
                }
            }
            if allow.is_none() {
                let closed = picked
                    .iter()
                    .flat_map(|&i| own[i].iter().copied())
                    .collect();
                bind.push((closed, name, picked));
            }
        }
        for (i, (selector, group)) in groups.iter().enumerate() {
            let first = group[0].server;
            if let Some((policy, pod)) = &left_to_istio[i] {
                out.notes.push(note("Server", &first.metadata, format!(
                    "Istio AuthorizationPolicy {policy} (ALLOW) also applies to pod {pod}: its ports other than {:?} are left to Istio's policies instead of staying open",
                    own[i]
                )));
            }
            let mut rules = self.rules(group, &authorized);
            if alone[i] {
                rules.push(Rule {
                    to: vec![RuleTo {
                        operation: Operation {
                            not_ports: ports(&own[i]),
                            ..Operation::default()
                        },
                    }],
                    ..Rule::default()
                });
            }
            out.policies.push(AuthorizationPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("{NAME_PREFIX}{}", group[0].name)),
                    namespace: Some(ns.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: AuthorizationPolicySpec {
                    selector: (!selector.is_empty()).then(|| WorkloadSelector {
                        match_labels: selector.clone(),
                    }),
                    rules,
                    action: AuthorizationAction::Allow,
                    ..AuthorizationPolicySpec::default()
                },
                status: None,
            });
        }
        // Pods of groups that do not decide alone: opened one by one.
        for (closed, pod, picked) in bind {
            if picked.iter().all(|&i| !alone[i]) {
                openings
                    .entry(closed)
                    .or_default()
                    .push((ns.to_owned(), pod));
            }
        }
        for (closed, pods) in openings {
            let tag: Vec<String> = ports(&closed);
            out.openings.push((
                Authorization {
                    name: format!("{OPEN_PREFIX}{}", tag.join("-")),
                    namespace: ns.to_owned(),
                    scope: policy::Scope::WorkloadSelector,
                    action: policy::Action::Allow,
                    rules: vec![vec![vec![Match {
                        not_destination_ports: closed.into_iter().collect(),
                        ..Match::default()
                    }]]],
                    dry_run: false,
                },
                pods,
            ));
        }
    }

    /// A group's rules: each Server's authorizations and access policy, to its ports.
    fn rules(&self, group: &[Taken<'_>], authorized: &BTreeMap<&str, Vec<Clients>>) -> Vec<Rule> {
        let mut rules: Vec<Rule> = Vec::new();
        for t in group {
            let to = vec![RuleTo {
                operation: Operation {
                    ports: ports(&t.ports),
                    ..Operation::default()
                },
            }];
            let clients = authorized
                .get(t.name)
                .into_iter()
                .flatten()
                .chain(t.access.iter());
            for c in clients {
                let from = match c {
                    None => Vec::new(),
                    Some(sources) if sources.is_empty() => continue, // nobody
                    Some(sources) => sources
                        .iter()
                        .map(|s| RuleFrom { source: s.clone() })
                        .collect(),
                };
                let rule = Rule {
                    from,
                    to: to.clone(),
                    ..Rule::default()
                };
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        rules
    }
}

fn ports(p: &BTreeSet<u16>) -> Vec<String> {
    p.iter().map(u16::to_string).collect()
}

fn group_names(groups: &BTreeMap<BTreeMap<String, String>, Vec<Taken<'_>>>, i: usize) -> String {
    groups
        .values()
        .nth(i)
        .into_iter()
        .flatten()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
