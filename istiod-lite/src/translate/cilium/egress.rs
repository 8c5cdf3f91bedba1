//! Cilium's egress rules (`egress`, `egressDeny`, `enableDefaultDeny.egress`) as the
//! [`EgressPolicy`]s a source ztunnel checks (pure).
//!
//! Each rule set with an egress part becomes, per namespace of the pods its `endpointSelector`
//! picks, one ALLOW policy `cilium-egress-<name>` (`cilium-ccnp-egress-<name>` for a
//! cluster-wide policy, `-<i>` appended for `specs[i]`) with one rule per `egress` rule, and with
//! `egressDeny` one DENY policy `cilium-egress-deny-<name>` (`cilium-ccnp-egress-deny-<name>`),
//! bound to the picked pods by workload uid.
//!
//! Default deny follows Cilium's `enableDefaultDeny` reference: unset, it is on for a direction
//! the rule set has rules in, `egress` or `egressDeny` (an `egressDeny`-only rule set puts its
//! pods in egress default deny too, as an `ingressDeny`-only one does at ingress); written
//! `false`, the ALLOW policy only adds what it allows to pods another policy default-denies.
//!
//! Destinations (`to*`, ORed within a rule; a rule without any allows every destination on its
//! ports, as Cilium's wildcard):
//!
//! - `toEndpoints`: the addresses of the pods the selectors pick in any namespace (same
//!   selector semantics as `fromEndpoints`), kept current as pods change;
//! - `toCIDR`, `toCIDRSet` (`except`); `toEntities` `all`, `cluster`, `world`;
//! - `toServices`: `k8sService` by name, `k8sServiceSelector` resolved to the Services whose
//!   labels match; `toFQDNs`: `matchName` / `matchPattern`, checked by ztunnel against the
//!   answers of its DNS proxy.
//!
//! Ports: TCP/ANY ports and `endPort` ranges as ranges, named ports from the destination pods
//! `toEndpoints` picks. An ALLOW rule never allows more than written: one with `toRequires` or
//! L7 `rules` other than DNS is dropped; one whose destinations or ports all resolved to nothing
//! matches nothing and is dropped. Each is a note. `{}` (no destination, no port) selects
//! nothing, as in Cilium, whose documented egress default-deny policy is `egress: [{}]`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use meshcore::policy::egress::{EgressPolicy, EgressRule as Rule, Entity, Peer, PortRange};
use meshcore::policy::Action;

use super::ports::{PortRanges, PortRules};
use super::{check_ports, check_selector, cidr, Context, Selector, Translated, UnenforcedPeers};
use crate::crd::cilium::{EgressRule, PolicyRule};
use crate::translate::workloads::pod_uid;

/// Entities Cilium knows that no ztunnel check stands for.
const UNSUPPORTED_ENTITIES: [&str; 9] = [
    "host",
    "remote-node",
    "kube-apiserver",
    "health",
    "init",
    "ingress",
    "unmanaged",
    "world-ipv4",
    "world-ipv6",
];

/// Values Cilium's validation refuses in an egress (`deny`: egressDeny) rule.
pub(super) fn check_rule(rule: &EgressRule, at: &str, deny: bool) -> Result<(), String> {
    if deny {
        for (field, present) in [
            ("toFQDNs", rule.to_fqdns.is_some()),
            ("authentication", rule.authentication.is_some()),
        ] {
            if present {
                return Err(format!(
                    "{at}: unknown field \"{field}\": Cilium's egressDeny rules have no {field}"
                ));
            }
        }
    }
    for (i, s) in rule.to_endpoints.iter().flatten().enumerate() {
        check_selector(s, &format!("{at}.toEndpoints[{i}]"))?;
    }
    for (i, c) in rule.to_cidr.iter().flatten().enumerate() {
        cidr(c).ok_or_else(|| format!("{at}.toCIDR[{i}]: {c:?} is not a CIDR"))?;
    }
    for (i, set) in rule.to_cidr_set.iter().flatten().enumerate() {
        let field = format!("{at}.toCIDRSet[{i}]");
        for c in set.cidr.iter() {
            cidr(c).ok_or_else(|| format!("{field}.cidr: {c:?} is not a CIDR"))?;
        }
        for (e, c) in set.except.iter().enumerate() {
            cidr(c).ok_or_else(|| format!("{field}.except[{e}]: {c:?} is not a CIDR"))?;
        }
    }
    for (i, s) in rule.to_services.iter().flatten().enumerate() {
        let field = format!("{at}.toServices[{i}]");
        match (&s.k8s_service, &s.k8s_service_selector) {
            (Some(svc), None) => {
                if svc.service_name.as_deref().unwrap_or_default().is_empty() {
                    return Err(format!("{field}.k8sService.serviceName: required"));
                }
            }
            (None, Some(sel)) => check_selector(
                &sel.selector,
                &format!("{field}.k8sServiceSelector.selector"),
            )?,
            _ => {
                return Err(format!(
                    "{field}: exactly one of k8sService, k8sServiceSelector is required"
                ))
            }
        }
    }
    for (i, f) in rule.to_fqdns.iter().flatten().enumerate() {
        let field = format!("{at}.toFQDNs[{i}]");
        match (&f.match_name, &f.match_pattern) {
            (Some(name), None) => {
                dns_name(name, false).map_err(|e| format!("{field}.matchName: {name:?} {e}"))?
            }
            (None, Some(pattern)) => dns_name(pattern, true)
                .map_err(|e| format!("{field}.matchPattern: {pattern:?} {e}"))?,
            _ => {
                return Err(format!(
                    "{field}: exactly one of matchName, matchPattern is required"
                ))
            }
        }
    }
    check_ports(rule.to_ports.as_deref().unwrap_or_default(), at)
}

/// Cilium's FQDN syntax: labels of letters, digits, `-` and `_` (and `*` in a pattern),
/// separated by dots, a trailing dot allowed.
fn dns_name(name: &str, pattern: bool) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || c == '_' || (pattern && c == '*')
                })
        });
    if ok {
        Ok(())
    } else if pattern {
        Err("is not a DNS name pattern (letters, digits, '-', '_', '*', dot-separated)")
    } else {
        Err("is not a DNS name (letters, digits, '-', '_', dot-separated)")
    }
}

/// Where a rule allows (denies) connections to.
enum Destinations {
    Anywhere,
    /// ORed; empty: nowhere (every peer written resolved to nothing).
    Some(Vec<Peer>),
}

/// A rule's ports: every port, or these (empty: none left).
enum Ports {
    All,
    Some(Vec<PortRange>),
}

impl Context<'_> {
    /// The egress part of a rule set, for the pods it picks (by namespace).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn egress(
        &mut self,
        obj: &str,
        name: &str,
        at: &str,
        namespace: Option<&str>,
        rule: &PolicyRule,
        picked: &BTreeMap<String, Vec<(String, String)>>,
        out: &mut Translated,
    ) {
        let default_deny = rule.enable_default_deny.as_ref().and_then(|d| d.egress) != Some(false);
        let allow = match &rule.egress {
            Some(rules) => self.egress_rules(obj, at, "egress", rules, namespace, false),
            None => Vec::new(),
        };
        let deny = match rule.egress_deny.as_deref() {
            Some(rules) if !rules.is_empty() => {
                self.egress_rules(obj, at, "egressDeny", rules, namespace, true)
            }
            _ => Vec::new(),
        };
        // Without default deny, an ALLOW policy only adds what its rules allow.
        let emit_allow = default_deny || !allow.is_empty();
        let deny_name = name.replacen("egress-", "egress-deny-", 1);
        for (ns, pods) in picked {
            let workloads: Vec<String> = pods
                .iter()
                .map(|(ns, pod)| pod_uid(self.info, ns, pod))
                .collect();
            if emit_allow {
                out.egress.push(EgressPolicy {
                    name: name.to_owned(),
                    namespace: ns.clone(),
                    workloads: workloads.clone(),
                    action: Action::Allow,
                    default_deny,
                    rules: allow.clone(),
                });
            }
            if !deny.is_empty() {
                out.egress.push(EgressPolicy {
                    name: deny_name.clone(),
                    namespace: ns.clone(),
                    workloads,
                    action: Action::Deny,
                    default_deny: false,
                    rules: deny.clone(),
                });
            }
        }
    }

    /// The rules of one section that match something at L4.
    fn egress_rules(
        &mut self,
        obj: &str,
        at: &str,
        section: &str,
        rules: &[EgressRule],
        policy_ns: Option<&str>,
        deny: bool,
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for (r, er) in rules.iter().enumerate() {
            let field = format!("{at}.{section}[{r}]");
            if let Some(rule) = self.egress_rule(obj, &field, er, policy_ns, deny) {
                out.push(rule);
            }
        }
        out
    }

    /// One egress rule, or `None` when it allows (denies) nothing ztunnel can check.
    fn egress_rule(
        &mut self,
        obj: &str,
        at: &str,
        er: &EgressRule,
        policy_ns: Option<&str>,
        deny: bool,
    ) -> Option<Rule> {
        let verb = if deny { "DENY" } else { "ALLOW" };
        let peers_written = er.to_endpoints.is_some()
            || er.to_cidr.is_some()
            || er.to_cidr_set.is_some()
            || er.to_entities.is_some()
            || er.to_services.is_some()
            || er.to_fqdns.is_some()
            || er.to_groups.is_some()
            || er.to_nodes.is_some();
        if !peers_written && er.to_ports.is_none() && er.icmps.is_none() {
            self.note(obj, format!("{at}: a rule without a destination or port selects nothing (Cilium's egress default-deny pattern; write toEntities: [all] to allow everything); this {verb} rule matches nothing"));
            return None;
        }
        let mut drop_reasons = Vec::new();
        self.unenforced_peer_fields(
            obj,
            at,
            UnenforcedPeers {
                direction: "to",
                peer: "destination",
                requires: er.to_requires.is_some(),
                groups: er.to_groups.is_some(),
                nodes: er.to_nodes.is_some(),
                authentication: er.authentication.is_some(),
            },
            deny,
            &mut drop_reasons,
        );
        let (to, destination_pods) = if peers_written {
            self.destinations(obj, at, er, policy_ns)
        } else {
            (Destinations::Anywhere, Vec::new())
        };
        let ports = self.egress_ports(obj, at, er, &destination_pods, deny, &mut drop_reasons);
        if !drop_reasons.is_empty() {
            self.note(obj, format!("{at}: {} cannot be enforced by ztunnel; rule dropped from this ALLOW policy (never allows more than written)", drop_reasons.join(", ")));
            return None;
        }
        let to = match to {
            Destinations::Anywhere => Vec::new(),
            Destinations::Some(p) if p.is_empty() => {
                self.note(
                    obj,
                    format!(
                        "{at}: selects no destination at present; this {verb} rule matches nothing"
                    ),
                );
                return None;
            }
            Destinations::Some(p) => p,
        };
        let ports = match ports {
            Ports::All => Vec::new(),
            Ports::Some(p) if p.is_empty() => {
                self.note(
                    obj,
                    format!("{at}.toPorts: no TCP port left; this {verb} rule matches nothing"),
                );
                return None;
            }
            Ports::Some(p) => p,
        };
        Some(Rule { to, ports })
    }

    /// The destinations of a rule (the union of its `to*` fields), and the pods `toEndpoints`
    /// picked (for named ports).
    fn destinations(
        &mut self,
        obj: &str,
        at: &str,
        er: &EgressRule,
        policy_ns: Option<&str>,
    ) -> (Destinations, Vec<(String, String)>) {
        let mut peers = Vec::new();
        let mut pods = Vec::new();
        let mut addresses: Vec<IpAddr> = Vec::new();
        for (i, s) in er.to_endpoints.iter().flatten().enumerate() {
            let field = format!("{at}.toEndpoints[{i}]");
            match Selector::parse(s, policy_ns) {
                Ok(sel) => {
                    for p in self.peers.values().filter(|p| sel.picks(p)) {
                        pods.push((p.namespace.clone(), p.name.clone()));
                        addresses.extend(&p.ips);
                    }
                }
                Err(e) => self.note(obj, format!("{field}: {e}; selects no destination")),
            }
        }
        addresses.sort();
        addresses.dedup();
        if !addresses.is_empty() {
            peers.push(Peer::Workloads(addresses));
        }
        for c in er.to_cidr.iter().flatten().filter_map(|c| cidr(c)) {
            peers.push(Peer::Cidr {
                cidr: c,
                except: Vec::new(),
            });
        }
        for (i, set) in er.to_cidr_set.iter().flatten().enumerate() {
            if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                self.note(obj, format!("{at}.toCIDRSet[{i}]: CiliumCIDRGroup references are not supported; selects no destination"));
            }
            if let Some(net) = set.cidr.as_deref().and_then(cidr) {
                let except: Vec<IpNet> = set.except.iter().filter_map(|c| cidr(c)).collect();
                peers.push(Peer::Cidr { cidr: net, except });
            }
        }
        for (i, entity) in er.to_entities.iter().flatten().enumerate() {
            let entity = match entity.as_str() {
                "all" => Entity::All,
                "cluster" => Entity::Cluster,
                "world" => Entity::World,
                other => {
                    let why = if UNSUPPORTED_ENTITIES.contains(&other) {
                        "is not supported by ztunnel"
                    } else {
                        "is not an entity ztunnel knows"
                    };
                    self.note(obj, format!("{at}.toEntities[{i}]: entity {other:?} {why} (all, cluster, world are); selects no destination"));
                    continue;
                }
            };
            peers.push(Peer::Entity(entity));
        }
        for (i, s) in er.to_services.iter().flatten().enumerate() {
            let field = format!("{at}.toServices[{i}]");
            if let Some(svc) = &s.k8s_service {
                let name = svc.service_name.clone().unwrap_or_default();
                match svc.namespace.as_deref().or(policy_ns) {
                    Some(namespace) => peers.push(Peer::Service {
                        namespace: namespace.to_owned(),
                        name,
                    }),
                    None => self.note(obj, format!("{field}.k8sService: no namespace: a cluster-wide policy must name the Service's namespace; selects no destination")),
                }
            }
            if let Some(sel) = &s.k8s_service_selector {
                let field = format!("{field}.k8sServiceSelector");
                let selector = match Selector::parse(&sel.selector, None) {
                    Ok(s) => s,
                    Err(e) => {
                        self.note(
                            obj,
                            format!("{field}.selector: {e}; selects no destination"),
                        );
                        continue;
                    }
                };
                let namespace = sel.namespace.as_deref().or(policy_ns);
                let picked: Vec<Peer> = self
                    .services
                    .iter()
                    .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
                    .filter(|s| selector.picks_service(s))
                    .map(|s| Peer::Service {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                    })
                    .collect();
                peers.extend(picked);
            }
        }
        for f in er.to_fqdns.iter().flatten() {
            peers.push(Peer::Fqdn {
                match_name: f.match_name.clone(),
                match_pattern: f.match_pattern.clone(),
            });
        }
        pods.sort();
        pods.dedup();
        (Destinations::Some(peers), pods)
    }

    /// The TCP ports of an egress rule; every port when it has no `toPorts` (or a port 0).
    /// Named ports are the destination pods' (those `toEndpoints` picks).
    fn egress_ports(
        &mut self,
        obj: &str,
        at: &str,
        er: &EgressRule,
        destination_pods: &[(String, String)],
        deny: bool,
        drop: &mut Vec<String>,
    ) -> Ports {
        let has_endpoints = er.to_endpoints.is_some();
        let named = |cx: &Context<'_>, s: &str| {
            let found = cx.named(destination_pods, s);
            if !found.is_empty() {
                return Ok(found);
            }
            Err(if has_endpoints {
                format!("no destination pod picked by toEndpoints has a container port named {s:?}; left out")
            } else {
                "a named port needs toEndpoints to resolve against; left out".to_owned()
            })
        };
        let rules = PortRules {
            to_ports: er.to_ports.as_deref(),
            icmps: er.icmps.is_some(),
            deny,
            keep_dns_rules: true,
            max_range: None,
        };
        match self.port_ranges(obj, at, rules, &named, drop) {
            PortRanges::All => Ports::All,
            PortRanges::Some(ranges) => {
                let mut out: Vec<PortRange> = ranges
                    .into_iter()
                    .map(|(port, end)| PortRange {
                        port,
                        end_port: (end > port).then_some(end),
                    })
                    .collect();
                out.sort_by_key(|r| (r.port, r.end_port));
                out.dedup();
                Ports::Some(out)
            }
        }
    }

    /// The numbers of the container port `name` on the destination pods.
    fn named(&self, pods: &[(String, String)], name: &str) -> Vec<u16> {
        let mut found: Vec<u16> = pods
            .iter()
            .filter_map(|k| self.peers.get(k))
            .flat_map(|p| &p.named_ports)
            .filter(|(n, _)| n == name)
            .filter_map(|(_, port)| u16::try_from(*port).ok())
            .collect();
        found.sort();
        found.dedup();
        found
    }
}
