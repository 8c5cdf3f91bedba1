//! Cilium's network policies (`CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`) as the
//! L4 authorizations ztunnel enforces (pure), so a Cilium user's policy works as applied:
//! ingress rules here (with [`peers`]), egress rules in [`egress`].
//!
//! Cilium's ingress model is Istio's ALLOW model: once a policy with an `ingress` (or
//! `ingressDeny`) section selects a pod, ingress to it is refused except what some rule allows;
//! deny rules win. So each rule set (`spec`, each `specs[i]`) becomes, per namespace of the
//! pods its `endpointSelector` picks, one ALLOW [`Authorization`] (one rule per ingress rule;
//! `ingress: []` allows nothing) and, with `ingressDeny`, one DENY authorization, bound to
//! those pods by name ([`Scope::WorkloadSelector`]):
//!
//! - `fromEndpoints`: selectors over pods (with Cilium's own pod labels
//!   `io.kubernetes.pod.namespace` and `io.cilium.k8s.policy.serviceaccount`; a namespaced
//!   policy's selector without a namespace label picks its own namespace) resolved to the
//!   principals `<td>/ns/<ns>/sa/<sa>` of the pods they pick (a selector of whole namespaces:
//!   `namespaces`). Identity in the mesh is the service account: a pod sharing one with a
//!   picked pod is admitted too (reported);
//! - `fromCIDR`, `fromCIDRSet` (`except` → `notIpBlocks` of the same source);
//! - `fromEntities`: `all` anyone, `cluster` any mesh identity, `host` the node's probe
//!   address 169.254.7.127, `world` connections without a mesh identity from no pod's address;
//!   others reported;
//! - `toPorts[].ports`: TCP (or ANY) ports, `endPort` ranges up to [`MAX_RANGE`] ports, named
//!   ports from the picked pods' container ports; UDP/SCTP reported (ztunnel is TCP).
//!
//! What cannot be enforced at L4 never admits more than written: an ALLOW rule with L7
//! `rules`, `fromRequires`, `serverNames` or `listener` is dropped; a rule whose sources or
//! ports all fail to map (ICMP only, UDP only, unknown entities) is dropped. Each is a note.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::policy::egress::EgressPolicy;
use meshcore::policy::{Action, Authorization, Match, Scope};

use super::{ClusterInfo, Note};
use crate::cluster::{Cluster, PodIdentity, ServiceIdentity};
use crate::crd::cilium::{EndpointSelector, IngressRule, PolicyRule, PortRule};

/// The prefix of the authorizations standing for Cilium policies.
pub const PREFIX: &str = "cilium-";
/// The longest `endPort` range expanded into single ports.
pub const MAX_RANGE: u32 = 1024;
/// The source of connections the node opens to its pods (kubelet probes), after the node
/// agent's SNAT (docs/node-mode.md).
pub const HOST_ADDRESS: &str = "169.254.7.127";
/// Cilium's label for a pod's namespace and service account.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
const NAMESPACED: &str = "CiliumNetworkPolicy";
const CLUSTERWIDE: &str = "CiliumClusterwideNetworkPolicy";

/// What the cluster's Cilium policies stand for.
#[derive(Debug, Default)]
pub struct Translated {
    /// Each with the pods (`namespace`, `name`) it is bound to.
    pub authorizations: Vec<(Authorization, Vec<(String, String)>)>,
    /// The egress policies (`egress`, `egressDeny`), bound to their pods by workload uid.
    pub egress: Vec<EgressPolicy>,
    pub notes: Vec<Note>,
}

/// How notes name a policy: `CiliumNetworkPolicy ns/name`, `CiliumClusterwideNetworkPolicy
/// name`.
pub fn object(kind: &str, meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref().filter(|_| kind == NAMESPACED) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The rule sets of a policy, each with its field path.
fn rule_sets<'a>(
    spec: &'a Option<PolicyRule>,
    specs: &'a [PolicyRule],
) -> Vec<(String, &'a PolicyRule)> {
    let one = spec.iter().map(|r| ("spec".to_owned(), r));
    let many = specs
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("specs[{i}]"), r));
    one.chain(many).collect()
}

/// Values Cilium's validation refuses: ports written one level too high (with the fix),
/// addresses that do not parse, ports out of range, unknown protocols and operators.
pub fn check(spec: &Option<PolicyRule>, specs: &[PolicyRule]) -> Result<(), String> {
    for (at, rule) in rule_sets(spec, specs) {
        for s in rule.endpoint_selector.iter() {
            check_selector(s, &format!("{at}.endpointSelector"))?;
        }
        let sections = [
            ("ingress", &rule.ingress),
            ("ingressDeny", &rule.ingress_deny),
        ];
        for (section, rules) in sections {
            for (r, ir) in rules.iter().flatten().enumerate() {
                check_rule(ir, &format!("{at}.{section}[{r}]"))?;
            }
        }
        let sections = [("egress", &rule.egress), ("egressDeny", &rule.egress_deny)];
        for (section, rules) in sections {
            for (r, er) in rules.iter().flatten().enumerate() {
                egress::check_rule(er, &format!("{at}.{section}[{r}]"), section == "egressDeny")?;
            }
        }
    }
    Ok(())
}

/// Whether a policy resolves `toServices[].k8sServiceSelector` (its translation depends on
/// Services' labels).
pub fn uses_service_selectors(spec: &Option<PolicyRule>, specs: &[PolicyRule]) -> bool {
    rule_sets(spec, specs).iter().any(|(_, r)| {
        r.egress
            .iter()
            .chain(&r.egress_deny)
            .flatten()
            .flat_map(|e| e.to_services.iter().flatten())
            .any(|s| s.k8s_service_selector.is_some())
    })
}

fn check_selector(s: &EndpointSelector, at: &str) -> Result<(), String> {
    for (i, e) in s.match_expressions.iter().enumerate() {
        if !matches!(
            e.operator.as_str(),
            "In" | "NotIn" | "Exists" | "DoesNotExist"
        ) {
            return Err(format!(
                "{at}.matchExpressions[{i}].operator: {:?} is not In, NotIn, Exists or DoesNotExist",
                e.operator
            ));
        }
    }
    Ok(())
}

fn check_rule(rule: &IngressRule, at: &str) -> Result<(), String> {
    for (i, s) in rule.from_endpoints.iter().flatten().enumerate() {
        check_selector(s, &format!("{at}.fromEndpoints[{i}]"))?;
    }
    for (i, c) in rule.from_cidr.iter().flatten().enumerate() {
        cidr(c).ok_or_else(|| format!("{at}.fromCIDR[{i}]: {c:?} is not a CIDR"))?;
    }
    for (i, set) in rule.from_cidr_set.iter().flatten().enumerate() {
        let field = format!("{at}.fromCIDRSet[{i}]");
        for c in set.cidr.iter() {
            cidr(c).ok_or_else(|| format!("{field}.cidr: {c:?} is not a CIDR"))?;
        }
        for (e, c) in set.except.iter().enumerate() {
            cidr(c).ok_or_else(|| format!("{field}.except[{e}]: {c:?} is not a CIDR"))?;
        }
    }
    check_ports(rule.to_ports.as_deref().unwrap_or_default(), at)
}

/// `toPorts` of an ingress or egress rule.
fn check_ports(to_ports: &[PortRule], at: &str) -> Result<(), String> {
    for (t, pr) in to_ports.iter().enumerate() {
        let field = format!("{at}.toPorts[{t}]");
        misplaced(pr, &field)?;
        for (p, pp) in pr.ports.iter().enumerate() {
            let field = format!("{field}.ports[{p}]");
            let protocol = pp.protocol.as_deref().unwrap_or("ANY");
            if !matches!(
                protocol.to_ascii_uppercase().as_str(),
                "TCP" | "UDP" | "SCTP" | "ANY" | "ICMP" | "ICMPV6"
            ) {
                return Err(format!(
                    "{field}.protocol: {protocol:?} is not TCP, UDP, SCTP or ANY"
                ));
            }
            let number = match &pp.port {
                Some(IntOrString::Int(n)) => Some(i64::from(*n)),
                Some(IntOrString::String(s)) => s.parse::<i64>().ok(),
                None => None,
            };
            if let Some(n) = number.filter(|n| !(0..=65535).contains(n)) {
                return Err(format!("{field}.port: {n} is not a port number (0-65535)"));
            }
            if let Some(end) = pp.end_port {
                if !(0..=65535).contains(&end) || number.is_some_and(|n| i64::from(end) < n) {
                    return Err(format!(
                        "{field}.endPort: {end} is not a port number at or above port"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `toPorts: [{port: "8080"}]`: refused with Cilium's shape.
fn misplaced(pr: &PortRule, at: &str) -> Result<(), String> {
    let field = match (&pr.port, &pr.protocol, &pr.end_port) {
        (Some(_), _, _) => "port",
        (_, Some(_), _) => "protocol",
        (_, _, Some(_)) => "endPort",
        _ => return Ok(()),
    };
    let port = match &pr.port {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
        None => "8080".into(),
    };
    let protocol = pr.protocol.as_deref().unwrap_or("TCP");
    Err(format!(
        "{at}: unknown field \"{field}\": Cilium's schema nests ports under toPorts[].ports: \
         write toPorts: [{{ports: [{{port: \"{port}\", protocol: {protocol}}}]}}]"
    ))
}

fn cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// A selector with Cilium's source prefixes removed, or the reason it cannot be evaluated.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Selector {
    /// (key, operator, values): `In` for matchLabels.
    pub requirements: Vec<(String, String, Vec<String>)>,
}

impl Selector {
    /// `implied_namespace`: the namespace a selector without a namespace requirement picks.
    pub fn parse(s: &EndpointSelector, implied_namespace: Option<&str>) -> Result<Self, String> {
        let mut requirements = Vec::new();
        let exprs = s
            .match_expressions
            .iter()
            .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.clone()));
        let labels = s
            .match_labels
            .iter()
            .map(|(k, v)| (k.as_str(), "In", vec![v.clone()]));
        for (key, op, values) in labels.chain(exprs) {
            requirements.push((plain_key(key)?, op.to_owned(), values));
        }
        if let Some(ns) = implied_namespace {
            if !requirements.iter().any(|(k, _, _)| k == NAMESPACE_LABEL) {
                requirements.push((NAMESPACE_LABEL.into(), "In".into(), vec![ns.into()]));
            }
        }
        Ok(Selector { requirements })
    }

    pub fn picks(&self, pod: &PodIdentity) -> bool {
        self.matches(|key| match key {
            NAMESPACE_LABEL => Some(pod.namespace.as_str()),
            SERVICE_ACCOUNT_LABEL => Some(pod.service_account.as_str()),
            _ => pod.labels.get(key).map(String::as_str),
        })
    }

    /// A Service (`k8sServiceSelector`): its labels, and its namespace as
    /// `io.kubernetes.pod.namespace`.
    pub fn picks_service(&self, service: &ServiceIdentity) -> bool {
        self.matches(|key| match key {
            NAMESPACE_LABEL => Some(service.namespace.as_str()),
            _ => service.labels.get(key).map(String::as_str),
        })
    }

    fn matches<'a>(&self, value_of: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|(key, op, values)| {
            let value = value_of(key);
            match op.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    }

    /// The namespace, when the selector says nothing but "namespace = X".
    fn whole_namespace(&self) -> Option<&str> {
        match self.requirements.as_slice() {
            [(k, op, v)] if k == NAMESPACE_LABEL && op == "In" && v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }
}

/// A label key without `k8s:` / `any:`; other sources (`reserved:`, ...) and Cilium's
/// namespace labels cannot be evaluated here.
fn plain_key(key: &str) -> Result<String, String> {
    let plain = key
        .strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key);
    if let Some((source, _)) = plain.split_once(':') {
        return Err(format!(
            "label {key:?}: source {source:?} is not supported (only k8s: and any:)"
        ));
    }
    if plain.starts_with("io.cilium.k8s.namespace.labels.") {
        return Err(format!(
            "label {key:?}: namespace labels are not supported (select the namespace by {NAMESPACE_LABEL})"
        ));
    }
    Ok(plain.to_owned())
}

/// Everything one translation reads.
struct Context<'a> {
    info: &'a ClusterInfo,
    /// Every pod a selector may pick, by (namespace, name).
    peers: BTreeMap<(String, String), PodIdentity>,
    /// The pods of this view (destinations), with their specs (named ports).
    pods: BTreeMap<(String, String), &'a Pod>,
    /// Every Service a `k8sServiceSelector` may pick.
    services: Vec<ServiceIdentity>,
    /// The pods of this view some rule set puts in ingress default deny (it has an ingress
    /// part and does not say `enableDefaultDeny.ingress: false`).
    ingress_default_deny: BTreeSet<(String, String)>,
    notes: Vec<Note>,
}

/// The authorizations standing for the cluster's Cilium policies, and notes.
pub fn policies(cluster: &Cluster, info: &ClusterInfo) -> Translated {
    if cluster.cilium_network_policies.is_empty()
        && cluster.cilium_clusterwide_network_policies.is_empty()
    {
        return Translated::default();
    }
    let mut cx = Context {
        info,
        peers: BTreeMap::new(),
        pods: BTreeMap::new(),
        services: Vec::new(),
        ingress_default_deny: BTreeSet::new(),
        notes: Vec::new(),
    };
    cx.services = cluster
        .services
        .iter()
        .filter_map(ServiceIdentity::of)
        .chain(cluster.peer_services.iter().cloned())
        .collect();
    cx.services.sort();
    cx.services
        .dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
    for p in &cluster.pods {
        if let Some(id) = PodIdentity::of(p) {
            cx.pods.insert((id.namespace.clone(), id.name.clone()), p);
            cx.peers.insert((id.namespace.clone(), id.name.clone()), id);
        }
    }
    for id in &cluster.peer_pods {
        cx.peers
            .entry((id.namespace.clone(), id.name.clone()))
            .or_insert_with(|| id.clone());
    }
    let all_sets = cluster
        .cilium_network_policies
        .iter()
        .map(|p| (p.metadata.namespace.as_deref(), &p.spec, &p.specs))
        .chain(
            cluster
                .cilium_clusterwide_network_policies
                .iter()
                .map(|p| (None, &p.spec, &p.specs)),
        );
    for (ns, spec, specs) in all_sets {
        for (_, rule) in rule_sets(spec, specs) {
            cx.mark_ingress_default_deny(ns, rule);
        }
    }
    let mut out = Translated::default();
    for p in &cluster.cilium_network_policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let obj = object(NAMESPACED, &p.metadata);
        let name = p.metadata.name.as_deref().unwrap_or_default();
        cx.policy(&obj, name, Some(ns), &p.spec, &p.specs, &mut out);
    }
    for p in &cluster.cilium_clusterwide_network_policies {
        let obj = object(CLUSTERWIDE, &p.metadata);
        let name = p.metadata.name.as_deref().unwrap_or_default();
        cx.policy(&obj, name, None, &p.spec, &p.specs, &mut out);
    }
    out.egress.sort_by_key(EgressPolicy::key);
    cx.notes.sort();
    cx.notes.dedup();
    out.notes = cx.notes;
    out
}

/// A rule's peer fields ztunnel cannot enforce, the same in both directions (`from*` for
/// ingress, `to*` for egress).
struct UnenforcedPeers {
    direction: &'static str,
    peer: &'static str,
    requires: bool,
    groups: bool,
    nodes: bool,
    authentication: bool,
}

impl Context<'_> {
    /// `*Requires` narrows the peers: it drops an ALLOW rule (never admitting more than
    /// written) and is ignored in a deny rule; `*Groups` and `*Nodes` select no peer;
    /// `authentication` is what every mesh connection does already.
    fn unenforced_peer_fields(
        &mut self,
        obj: &str,
        at: &str,
        f: UnenforcedPeers,
        deny: bool,
        drop: &mut Vec<String>,
    ) {
        let dir = f.direction;
        if f.requires {
            if deny {
                self.note(
                    obj,
                    format!("{at}.{dir}Requires: not supported; this deny rule applies regardless of it"),
                );
            } else {
                drop.push(format!("{at}.{dir}Requires"));
            }
        }
        for (field, present) in [("Groups", f.groups), ("Nodes", f.nodes)] {
            if present {
                self.note(
                    obj,
                    format!("{at}.{dir}{field}: not supported; selects no {}", f.peer),
                );
            }
        }
        if f.authentication {
            self.note(obj, format!("{at}.authentication: not needed: every mesh connection is mutual TLS; accepted"));
        }
    }

    /// Adds the pods `rule` puts in ingress default deny to [`Context::ingress_default_deny`].
    fn mark_ingress_default_deny(&mut self, namespace: Option<&str>, rule: &PolicyRule) {
        let has_ingress = rule.ingress.is_some() || rule.ingress_deny.is_some();
        let opted_out = rule.enable_default_deny.as_ref().and_then(|d| d.ingress) == Some(false);
        if !has_ingress || opted_out || rule.node_selector.is_some() {
            return;
        }
        let Some(Ok(selector)) = rule
            .endpoint_selector
            .as_ref()
            .map(|s| Selector::parse(s, namespace))
        else {
            return;
        };
        let picked: Vec<(String, String)> = self
            .pods
            .keys()
            .filter(|k| selector.picks(&self.peers[*k]))
            .cloned()
            .collect();
        self.ingress_default_deny.extend(picked);
    }

    fn note(&mut self, object: &str, message: impl Into<String>) {
        self.notes.push(Note {
            object: object.to_owned(),
            message: message.into(),
        });
    }

    /// One policy: `namespace` is `None` for a cluster-wide one. Its rule sets are named
    /// `cilium-<name>` (ingress) and `cilium-egress-<name>` (egress), `cilium-ccnp-<name>` and
    /// `cilium-ccnp-egress-<name>` for a cluster-wide policy, `-<i>` appended for `specs[i]`.
    fn policy(
        &mut self,
        obj: &str,
        name: &str,
        namespace: Option<&str>,
        spec: &Option<PolicyRule>,
        specs: &[PolicyRule],
        out: &mut Translated,
    ) {
        let sets = rule_sets(spec, specs);
        if sets.is_empty() {
            self.note(obj, "no spec or specs: nothing to enforce");
        }
        let several = sets.len() > 1;
        let (ingress, egress) = match namespace {
            Some(_) => (name.to_owned(), format!("egress-{name}")),
            None => (format!("ccnp-{name}"), format!("ccnp-egress-{name}")),
        };
        for (i, (at, rule)) in sets.into_iter().enumerate() {
            let suffix = if several {
                format!("-{i}")
            } else {
                String::new()
            };
            let names = (
                format!("{PREFIX}{ingress}{suffix}"),
                format!("{PREFIX}{egress}{suffix}"),
            );
            self.rule_set(obj, &names, &at, namespace, rule, out);
        }
    }

    /// One rule set; `names`: its ingress and egress ALLOW policies' names.
    fn rule_set(
        &mut self,
        obj: &str,
        names: &(String, String),
        at: &str,
        namespace: Option<&str>,
        rule: &PolicyRule,
        out: &mut Translated,
    ) {
        if rule.node_selector.is_some() {
            self.note(obj, format!("{at}.nodeSelector: host policies (the node itself) are not enforced by ztunnel; not applied"));
            return;
        }
        let Some(selector) = &rule.endpoint_selector else {
            self.note(obj, format!("{at}: no endpointSelector; not applied"));
            return;
        };
        let ingress = rule.ingress.is_some() || rule.ingress_deny.is_some();
        let egress = rule.egress.is_some() || rule.egress_deny.is_some();
        if !ingress && !egress {
            return; // nothing restricted by this rule set
        }
        let selector = match Selector::parse(selector, namespace) {
            Ok(s) => s,
            Err(e) => {
                self.note(obj, format!("{at}.endpointSelector: {e}; not applied"));
                return;
            }
        };
        // The picked pods, by namespace.
        let mut picked: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (k, _) in self.pods.iter() {
            if selector.picks(&self.peers[k]) {
                picked.entry(k.0.clone()).or_default().push(k.clone());
            }
        }
        if egress {
            self.egress(obj, &names.1, at, namespace, rule, &picked, out);
        }
        if ingress {
            self.ingress(obj, &names.0, at, namespace, rule, picked, out);
        }
    }

    /// The ingress part of a rule set, for the pods it picks (by namespace).
    #[allow(clippy::too_many_arguments)]
    fn ingress(
        &mut self,
        obj: &str,
        name: &str,
        at: &str,
        namespace: Option<&str>,
        rule: &PolicyRule,
        picked: BTreeMap<String, Vec<(String, String)>>,
        out: &mut Translated,
    ) {
        let default_deny = rule.enable_default_deny.as_ref().and_then(|d| d.ingress) != Some(false);
        for (ns, pods) in picked {
            // Without default deny, the allow rules add to what other policies allow: they
            // count only for pods another rule set puts in default deny (for the others every
            // source is allowed anyway, and an ALLOW authorization would deny by default).
            let allowed_pods: Vec<(String, String)> = if default_deny {
                pods.clone()
            } else {
                let denying: Vec<_> = pods
                    .iter()
                    .filter(|p| self.ingress_default_deny.contains(*p))
                    .cloned()
                    .collect();
                if rule.ingress.is_some() {
                    self.note(obj, format!("{at}.enableDefaultDeny.ingress: false: its ingress rules apply to the {} of {} selected pods in {ns} that another policy puts in default deny; the others stay open", denying.len(), pods.len()));
                }
                denying
            };
            if (rule.ingress.is_some() || default_deny) && !allowed_pods.is_empty() {
                let rules = rule.ingress.as_deref().unwrap_or_default();
                let a = self.authorization(
                    obj,
                    name,
                    &ns,
                    at,
                    "ingress",
                    rules,
                    namespace,
                    &allowed_pods,
                    false,
                );
                out.authorizations.push((a, allowed_pods));
            }
            if let Some(deny) = rule.ingress_deny.as_deref().filter(|d| !d.is_empty()) {
                let deny_name = name.replacen(PREFIX, &format!("{PREFIX}deny-"), 1);
                let a = self.authorization(
                    obj,
                    &deny_name,
                    &ns,
                    at,
                    "ingressDeny",
                    deny,
                    namespace,
                    &pods,
                    true,
                );
                out.authorizations.push((a, pods));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn authorization(
        &mut self,
        obj: &str,
        name: &str,
        ns: &str,
        at: &str,
        section: &str,
        rules: &[IngressRule],
        policy_ns: Option<&str>,
        pods: &[(String, String)],
        deny: bool,
    ) -> Authorization {
        let mut out = Vec::new();
        for (r, ir) in rules.iter().enumerate() {
            let field = format!("{at}.{section}[{r}]");
            if let Some(rule) = self.rule(obj, &field, ir, policy_ns, pods, deny) {
                out.push(rule);
            }
        }
        Authorization {
            name: name.to_owned(),
            namespace: ns.to_owned(),
            scope: Scope::WorkloadSelector,
            action: if deny { Action::Deny } else { Action::Allow },
            rules: out,
            dry_run: false,
        }
    }

    /// One ingress rule as one authorization rule (clauses ANDed), or `None` when it admits
    /// (denies) nobody at L4.
    fn rule(
        &mut self,
        obj: &str,
        at: &str,
        ir: &IngressRule,
        policy_ns: Option<&str>,
        pods: &[(String, String)],
        deny: bool,
    ) -> Option<Vec<Vec<Match>>> {
        let verb = if deny { "DENY" } else { "ALLOW" };
        // `{}`: no peer field and no port: Cilium's documented default-deny form selects no
        // source (allowing everyone is `fromEntities: [all]`).
        let empty = ir.from_endpoints.is_none()
            && ir.from_cidr.is_none()
            && ir.from_cidr_set.is_none()
            && ir.from_entities.is_none()
            && ir.to_ports.is_none()
            && ir.from_requires.is_none()
            && ir.from_groups.is_none()
            && ir.from_nodes.is_none()
            && ir.icmps.is_none();
        if empty {
            self.note(
                obj,
                format!("{at}: an empty rule selects no source (Cilium's default-deny form); this {verb} rule matches nothing; write fromEntities: [all] to admit everyone"),
            );
            return None;
        }
        let mut drop_reasons = Vec::new();
        self.unenforced_peer_fields(
            obj,
            at,
            UnenforcedPeers {
                direction: "from",
                peer: "source",
                requires: ir.from_requires.is_some(),
                groups: ir.from_groups.is_some(),
                nodes: ir.from_nodes.is_some(),
                authentication: ir.authentication.is_some(),
            },
            deny,
            &mut drop_reasons,
        );
        let from = self.sources(obj, at, ir, policy_ns);
        let ports = self.ports(obj, at, ir, pods, deny, &mut drop_reasons);
        if !drop_reasons.is_empty() {
            self.note(obj, format!("{at}: {} cannot be enforced by ztunnel; rule dropped from this ALLOW policy (never admits more than written)", drop_reasons.join(", ")));
            return None;
        }
        let mut clauses = Vec::new();
        match from {
            Sources::Anyone => {}
            Sources::Some(m) if m.is_empty() => {
                self.note(
                    obj,
                    format!("{at}: selects no source at present; this {verb} rule matches nothing"),
                );
                return None;
            }
            Sources::Some(m) => clauses.push(m),
        }
        match ports {
            Ports::All => {}
            Ports::Some(p) if p.is_empty() => {
                self.note(
                    obj,
                    format!("{at}.toPorts: no TCP port left; this {verb} rule matches nothing"),
                );
                return None;
            }
            Ports::Some(p) => clauses.push(vec![Match {
                destination_ports: p.into_iter().collect(),
                ..Match::default()
            }]),
        }
        Some(clauses)
    }
}

enum Sources {
    Anyone,
    Some(Vec<Match>),
}

enum Ports {
    All,
    Some(BTreeSet<u16>),
}

pub mod egress;
mod peers;
mod ports;

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod tests;
