//! An ingress rule's sources (`from*`) and ports (`toPorts`).

use std::collections::BTreeSet;

use ipnet::IpNet;
use meshcore::policy::{Match, StringMatch};

use super::ports::{PortRanges, PortRules};
use super::{cidr, Context, Ports, Selector, Sources, HOST_ADDRESS, MAX_RANGE};
use crate::crd::cilium::IngressRule;
use crate::translate::workloads::named_port;

impl Context<'_> {
    /// The sources of a rule: the union of its `from*` fields; anyone when it has none.
    pub(super) fn sources(
        &mut self,
        obj: &str,
        at: &str,
        ir: &IngressRule,
        policy_ns: Option<&str>,
    ) -> Sources {
        let written = ir.from_endpoints.is_some()
            || ir.from_cidr.is_some()
            || ir.from_cidr_set.is_some()
            || ir.from_entities.is_some()
            || ir.from_groups.is_some()
            || ir.from_nodes.is_some();
        if !written {
            return Sources::Anyone;
        }
        let mut matches = Vec::new();
        for (i, s) in ir.from_endpoints.iter().flatten().enumerate() {
            let field = format!("{at}.fromEndpoints[{i}]");
            match Selector::parse(s, policy_ns) {
                Ok(sel) => matches.extend(self.endpoints(obj, &field, &sel, policy_ns.is_none())),
                Err(e) => self.note(obj, format!("{field}: {e}; selects no source")),
            }
        }
        let cidrs: Vec<IpNet> = ir
            .from_cidr
            .iter()
            .flatten()
            .filter_map(|c| cidr(c))
            .collect();
        if !cidrs.is_empty() {
            matches.push(Match {
                source_ips: cidrs,
                ..Match::default()
            });
        }
        for (i, set) in ir.from_cidr_set.iter().flatten().enumerate() {
            let field = format!("{at}.fromCIDRSet[{i}]");
            if set.cidr_group_ref.is_some() || set.cidr_group_selector.is_some() {
                self.note(
                    obj,
                    format!(
                        "{field}: CiliumCIDRGroup references are not supported; selects no source"
                    ),
                );
            }
            if let Some(net) = set.cidr.as_deref().and_then(cidr) {
                matches.push(Match {
                    source_ips: vec![net],
                    not_source_ips: set.except.iter().filter_map(|c| cidr(c)).collect(),
                    ..Match::default()
                });
            }
        }
        for (i, entity) in ir.from_entities.iter().flatten().enumerate() {
            let field = format!("{at}.fromEntities[{i}]");
            match entity.as_str() {
                "all" => return Sources::Anyone,
                "cluster" => matches.push(Match {
                    principals: vec![StringMatch::Presence()],
                    ..Match::default()
                }),
                "host" => matches.push(Match {
                    source_ips: vec![IpNet::from(HOST_ADDRESS.parse::<std::net::IpAddr>().expect("an address"))],
                    ..Match::default()
                }),
                "world" => {
                    let mut not_ips: Vec<IpNet> = self
                        .peers
                        .values()
                        .flat_map(|p| p.ips.iter().copied().map(IpNet::from))
                        .collect();
                    not_ips.push(IpNet::from(HOST_ADDRESS.parse::<std::net::IpAddr>().expect("an address")));
                    not_ips.sort();
                    not_ips.dedup();
                    matches.push(Match {
                        not_principals: vec![StringMatch::Presence()],
                        not_source_ips: not_ips,
                        ..Match::default()
                    });
                }
                other => self.note(
                    obj,
                    format!("{field}: entity {other:?} is not supported (all, cluster, host, world are); selects no source"),
                ),
            }
        }
        Sources::Some(matches)
    }

    /// The pods a `fromEndpoints` selector picks, as principals (or whole namespaces).
    fn endpoints(
        &mut self,
        obj: &str,
        field: &str,
        sel: &Selector,
        clusterwide: bool,
    ) -> Vec<Match> {
        if let Some(ns) = sel.whole_namespace() {
            return vec![Match {
                namespaces: vec![StringMatch::Exact(ns.to_owned())],
                ..Match::default()
            }];
        }
        if clusterwide && sel.requirements.is_empty() {
            // Every endpoint of the cluster: any mesh identity.
            return vec![Match {
                principals: vec![StringMatch::Presence()],
                ..Match::default()
            }];
        }
        let picked: BTreeSet<(String, String)> = self
            .peers
            .values()
            .filter(|p| sel.picks(p))
            .map(|p| (p.namespace.clone(), p.service_account.clone()))
            .collect();
        if picked.is_empty() {
            return Vec::new();
        }
        // Identity is the service account: others sharing one are admitted too.
        let shared: Vec<String> = self
            .peers
            .values()
            .filter(|p| {
                !sel.picks(p) && picked.contains(&(p.namespace.clone(), p.service_account.clone()))
            })
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        if !shared.is_empty() {
            self.note(
                obj,
                format!(
                    "{field}: identity in the mesh is the service account: {} share one with the pods picked and match too",
                    shared.join(", ")
                ),
            );
        }
        let td = &self.info.trust_domain;
        vec![Match {
            principals: picked
                .into_iter()
                .map(|(ns, sa)| StringMatch::Exact(format!("{td}/ns/{ns}/sa/{sa}")))
                .collect(),
            ..Match::default()
        }]
    }

    /// The TCP ports of a rule, one by one; every port when it has no `toPorts` (or a port 0).
    /// Named ports are the selected pods' own.
    pub(super) fn ports(
        &mut self,
        obj: &str,
        at: &str,
        ir: &IngressRule,
        pods: &[(String, String)],
        deny: bool,
        drop: &mut Vec<String>,
    ) -> Ports {
        let named = |cx: &Context<'_>, s: &str| {
            let found: Vec<u16> = pods
                .iter()
                .filter_map(|k| named_port(cx.pods.get(k)?, s))
                .filter_map(|n| u16::try_from(n).ok())
                .collect();
            if found.is_empty() {
                Err(format!(
                    "no pod picked has a container port named {s:?}; ignored"
                ))
            } else {
                Ok(found)
            }
        };
        let rules = PortRules {
            to_ports: ir.to_ports.as_deref(),
            icmps: ir.icmps.is_some(),
            deny,
            keep_dns_rules: false,
            max_range: Some(MAX_RANGE),
        };
        match self.port_ranges(obj, at, rules, &named, drop) {
            PortRanges::All => Ports::All,
            PortRanges::Some(ranges) => {
                Ports::Some(ranges.into_iter().flat_map(|(a, b)| a..=b).collect())
            }
        }
    }
}
