//! An ingress rule's sources (`from*`) and ports (`toPorts`).

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::policy::{Match, StringMatch};

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

    /// The TCP ports of a rule; every port when it has no `toPorts` (or a port 0).
    pub(super) fn ports(
        &mut self,
        obj: &str,
        at: &str,
        ir: &IngressRule,
        pods: &[(String, String)],
        deny: bool,
        drop: &mut Vec<String>,
    ) -> Ports {
        if ir.icmps.is_some() {
            self.note(
                obj,
                format!("{at}.icmps: ICMP is not carried by ztunnel (TCP only); ignored"),
            );
        }
        let Some(to_ports) = &ir.to_ports else {
            if ir.icmps.is_some() {
                // An ICMP-only rule admits no TCP.
                return Ports::Some(BTreeSet::new());
            }
            return Ports::All;
        };
        let mut all = false;
        let mut out = BTreeSet::new();
        for (t, pr) in to_ports.iter().enumerate() {
            let field = format!("{at}.toPorts[{t}]");
            for (name, present) in [
                ("rules", pr.rules.is_some()),
                ("listener", pr.listener.is_some()),
                ("serverNames", pr.server_names.is_some()),
            ] {
                if present {
                    if deny {
                        self.note(obj, format!("{field}.{name}: L7, not checked by ztunnel; taken as satisfied in this deny rule"));
                    } else {
                        drop.push(format!("{field}.{name}"));
                    }
                }
            }
            for (name, present) in [
                ("originatingTLS", pr.originating_tls.is_some()),
                ("terminatingTLS", pr.terminating_tls.is_some()),
            ] {
                if present {
                    self.note(
                        obj,
                        format!("{field}.{name}: TLS interception is not done by ztunnel; ignored"),
                    );
                }
            }
            if pr.ports.is_empty() {
                all = true;
            }
            for (p, pp) in pr.ports.iter().enumerate() {
                let field = format!("{field}.ports[{p}]");
                let protocol = pp.protocol.as_deref().unwrap_or("ANY").to_ascii_uppercase();
                if !matches!(protocol.as_str(), "TCP" | "ANY") {
                    self.note(obj, format!("{field}.protocol: {protocol} is not carried by ztunnel (TCP only); ignored"));
                    continue;
                }
                let start = match &pp.port {
                    None => 0,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(s)) => match s.parse::<i32>() {
                        Ok(n) => n,
                        Err(_) => {
                            let found: BTreeSet<i32> = pods
                                .iter()
                                .filter_map(|k| named_port(self.pods.get(k)?, s))
                                .collect();
                            if found.is_empty() {
                                self.note(obj, format!("{field}.port: no pod picked has a container port named {s:?}; ignored"));
                            }
                            out.extend(found.into_iter().filter_map(|n| u16::try_from(n).ok()));
                            continue;
                        }
                    },
                };
                if start == 0 {
                    all = true;
                    continue;
                }
                let end = pp.end_port.filter(|&e| e > start).unwrap_or(start);
                if (end - start) as u32 >= MAX_RANGE {
                    self.note(obj, format!("{field}.endPort: the range {start}-{end} is wider than {MAX_RANGE} ports; ignored"));
                    continue;
                }
                out.extend((start..=end).filter_map(|n| u16::try_from(n).ok()));
            }
        }
        if all {
            Ports::All
        } else {
            Ports::Some(out)
        }
    }
}
