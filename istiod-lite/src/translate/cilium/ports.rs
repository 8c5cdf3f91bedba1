//! A rule's `toPorts` as ztunnel can enforce them, the same for ingress and egress rules: TCP
//! (or ANY) ports and `endPort` ranges, named ports resolved by the caller, UDP/SCTP/ICMP left
//! out with a note, L7 parts (`rules`, `listener`, `serverNames`) dropping an ALLOW rule and
//! taken as satisfied in a deny rule, TLS interception ignored.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::Context;
use crate::crd::cilium::PortRule;

/// A rule's ports: every port, or these inclusive ranges (`(port, port)` for one port).
pub(super) enum PortRanges {
    All,
    Some(Vec<(u16, u16)>),
}

/// What differs between the directions.
pub(super) struct PortRules<'r> {
    pub to_ports: Option<&'r [PortRule]>,
    /// The rule has `icmps`: without `toPorts` it allows no TCP at all.
    pub icmps: bool,
    pub deny: bool,
    /// Egress: L7 `rules` holding DNS rules only keep the rule's L4 part (DNS is answered by
    /// ztunnel's DNS proxy, outside egress policy).
    pub keep_dns_rules: bool,
    /// A range wider than this is left out with a note (ingress lists its ports one by one).
    pub max_range: Option<u32>,
}

/// Resolves a named port: its numbers, or the note to give when there is none.
pub(super) type NamedPort<'f> = &'f dyn Fn(&Context<'_>, &str) -> Result<Vec<u16>, String>;

impl Context<'_> {
    /// The TCP ports of a rule; every port when it has no `toPorts` (or a port 0). What cannot
    /// be enforced is noted, or pushed to `drop` when it must drop an ALLOW rule.
    pub(super) fn port_ranges(
        &mut self,
        obj: &str,
        at: &str,
        rules: PortRules<'_>,
        named: NamedPort<'_>,
        drop: &mut Vec<String>,
    ) -> PortRanges {
        if rules.icmps {
            self.note(
                obj,
                format!("{at}.icmps: ICMP is not carried by ztunnel (TCP only); ignored"),
            );
        }
        let Some(to_ports) = rules.to_ports else {
            return if rules.icmps {
                PortRanges::Some(Vec::new()) // an ICMP-only rule allows no TCP
            } else {
                PortRanges::All
            };
        };
        let deny = rules.deny;
        let mut all = false;
        let mut out = Vec::new();
        for (t, pr) in to_ports.iter().enumerate() {
            let field = format!("{at}.toPorts[{t}]");
            // In an ALLOW rule, DNS-only L7 rules (egress) keep the L4 part.
            let dns_kept = !deny && rules.keep_dns_rules && pr.rules.as_ref().is_some_and(dns_only);
            if dns_kept {
                self.note(obj, format!("{field}.rules: DNS queries are answered by ztunnel's DNS proxy and are not subject to egress policy; the rule's L4 part is kept"));
            }
            for (name, present) in [
                ("rules", pr.rules.is_some() && !dns_kept),
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
                            match named(self, s) {
                                Ok(found) => out.extend(found.into_iter().map(|p| (p, p))),
                                Err(why) => self.note(obj, format!("{field}.port: {why}")),
                            }
                            continue;
                        }
                    },
                };
                if start == 0 {
                    all = true;
                    continue;
                }
                let end = pp.end_port.filter(|&e| e > start).unwrap_or(start);
                if let Some(max) = rules.max_range {
                    if (end - start) as u32 >= max {
                        self.note(obj, format!("{field}.endPort: the range {start}-{end} is wider than {max} ports; ignored"));
                        continue;
                    }
                }
                // Out of range values were refused by validation.
                if let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) {
                    out.push((start, end));
                }
            }
        }
        if all {
            PortRanges::All
        } else {
            PortRanges::Some(out)
        }
    }
}

/// Whether a port rule's L7 `rules` hold DNS rules only.
pub(super) fn dns_only(rules: &Value) -> bool {
    match rules {
        Value::Object(kinds) => kinds.iter().all(|(kind, v)| {
            kind == "dns" || v.is_null() || v.as_array().is_some_and(Vec::is_empty)
        }),
        Value::Null => true,
        _ => false,
    }
}
