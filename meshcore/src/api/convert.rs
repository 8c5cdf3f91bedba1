//! Conversions between the wire form of an L4 policy (`istio.security.Authorization`) and the
//! policy engine's model. Both directions: istiod-lite encodes what it translated, ztunnel
//! decodes what it receives. A malformed address is an error naming the policy and field, so a
//! bad resource can be NACKed instead of silently narrowing or widening a policy.

use std::net::IpAddr;

use ipnet::IpNet;

use super::security as wire;
use crate::policy::{Action, Authorization, Match, Scope, ServiceAccountMatch, StringMatch};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorization {policy}: {what}")]
pub struct ConvertError {
    pub policy: String,
    pub what: String,
}

impl TryFrom<&wire::Authorization> for Authorization {
    type Error = ConvertError;

    fn try_from(a: &wire::Authorization) -> Result<Self, ConvertError> {
        let err = |what: String| ConvertError {
            policy: format!("{}/{}", a.namespace, a.name),
            what,
        };
        let scope = match wire::Scope::try_from(a.scope) {
            Ok(wire::Scope::Global) => Scope::Global,
            Ok(wire::Scope::Namespace) => Scope::Namespace,
            Ok(wire::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => return Err(err(format!("unknown scope {}", a.scope))),
        };
        let action = match wire::Action::try_from(a.action) {
            Ok(wire::Action::Allow) => Action::Allow,
            Ok(wire::Action::Deny) => Action::Deny,
            Err(_) => return Err(err(format!("unknown action {}", a.action))),
        };
        let mut rules = Vec::with_capacity(a.rules.len());
        for (r, rule) in a.rules.iter().enumerate() {
            let mut clauses = Vec::with_capacity(rule.clauses.len());
            for (c, clause) in rule.clauses.iter().enumerate() {
                let matches = clause
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(m, x)| {
                        match_from_wire(x)
                            .map_err(|e| err(format!("rules[{r}].clauses[{c}].matches[{m}].{e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                clauses.push(matches);
            }
            rules.push(clauses);
        }
        Ok(Authorization {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            scope,
            action,
            rules,
            dry_run: a.dry_run,
        })
    }
}

fn match_from_wire(m: &wire::Match) -> Result<Match, String> {
    let strings = |v: &[wire::StringMatch], field: &str| {
        v.iter()
            .enumerate()
            .map(|(i, s)| {
                string_from_wire(s).ok_or_else(|| format!("{field}[{i}]: no match type set"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let nets = |v: &[wire::Address], field: &str| {
        v.iter()
            .enumerate()
            .map(|(i, a)| net_from_wire(a).map_err(|e| format!("{field}[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let ports = |v: &[u32], field: &str| {
        v.iter()
            .map(|&p| u16::try_from(p).map_err(|_| format!("{field}: {p} is not a port")))
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |v: &[wire::ServiceAccountMatch]| {
        v.iter()
            .map(|s| ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    Ok(Match {
        namespaces: strings(&m.namespaces, "namespaces")?,
        not_namespaces: strings(&m.not_namespaces, "not_namespaces")?,
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        principals: strings(&m.principals, "principals")?,
        not_principals: strings(&m.not_principals, "not_principals")?,
        source_ips: nets(&m.source_ips, "source_ips")?,
        not_source_ips: nets(&m.not_source_ips, "not_source_ips")?,
        destination_ips: nets(&m.destination_ips, "destination_ips")?,
        not_destination_ips: nets(&m.not_destination_ips, "not_destination_ips")?,
        destination_ports: ports(&m.destination_ports, "destination_ports")?,
        not_destination_ports: ports(&m.not_destination_ports, "not_destination_ports")?,
    })
}

fn string_from_wire(s: &wire::StringMatch) -> Option<StringMatch> {
    use wire::string_match::MatchType;
    Some(match s.match_type.as_ref()? {
        MatchType::Exact(v) => StringMatch::Exact(v.clone()),
        MatchType::Prefix(v) => StringMatch::Prefix(v.clone()),
        MatchType::Suffix(v) => StringMatch::Suffix(v.clone()),
        MatchType::Presence(()) => StringMatch::Presence(),
    })
}

/// Raw address bytes (4 or 16) and a prefix length into a CIDR.
pub fn net_from_wire(a: &wire::Address) -> Result<IpNet, String> {
    let ip = ip_from_bytes(&a.address)?;
    let len = u8::try_from(a.length).map_err(|_| format!("prefix length {}", a.length))?;
    IpNet::new(ip, len).map_err(|_| format!("prefix length /{len} for {ip}"))
}

/// An IP address from its raw bytes.
pub fn ip_from_bytes(b: &[u8]) -> Result<IpAddr, String> {
    match b.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(b).expect("length checked"),
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(b).expect("length checked"),
        )),
        n => Err(format!("{n}-byte address (want 4 or 16)")),
    }
}

/// An IP address as raw bytes.
pub fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl From<&Authorization> for wire::Authorization {
    fn from(a: &Authorization) -> Self {
        wire::Authorization {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            scope: match a.scope {
                Scope::Global => wire::Scope::Global,
                Scope::Namespace => wire::Scope::Namespace,
                Scope::WorkloadSelector => wire::Scope::WorkloadSelector,
            } as i32,
            action: match a.action {
                Action::Allow => wire::Action::Allow,
                Action::Deny => wire::Action::Deny,
            } as i32,
            rules: a
                .rules
                .iter()
                .map(|rule| wire::Rule {
                    clauses: rule
                        .iter()
                        .map(|clause| wire::Clause {
                            matches: clause.iter().map(match_to_wire).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: a.dry_run,
        }
    }
}

fn match_to_wire(m: &Match) -> wire::Match {
    use wire::string_match::MatchType;
    let strings = |v: &[StringMatch]| {
        v.iter()
            .map(|s| wire::StringMatch {
                match_type: Some(match s {
                    StringMatch::Exact(v) => MatchType::Exact(v.clone()),
                    StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
                    StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
                    StringMatch::Presence() => MatchType::Presence(()),
                }),
            })
            .collect()
    };
    let nets = |v: &[IpNet]| {
        v.iter()
            .map(|n| wire::Address {
                address: ip_to_bytes(n.addr()),
                length: u32::from(n.prefix_len()),
            })
            .collect()
    };
    let accounts = |v: &[ServiceAccountMatch]| {
        v.iter()
            .map(|s| wire::ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|&p| u32::from(p)).collect();
    wire::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const POLICY: &str = r#"
name: p
namespace: ns
scope: WorkloadSelector
action: Deny
dryRun: true
rules:
- - - principals: [!Exact cluster.local/ns/a/sa/b, !Prefix cluster.local/ns/c/, !Suffix /sa/d, !Presence []]
      notNamespaces: [!Exact x]
      serviceAccounts: [{namespace: a, serviceAccount: b}]
      notServiceAccounts: [{namespace: c, serviceAccount: d}]
      sourceIps: [10.0.0.0/8, "fd00::/64"]
      notSourceIps: [10.1.0.0/16]
      destinationIps: [192.168.1.1/32]
      notDestinationIps: [192.168.2.0/24]
      destinationPorts: [80, 443]
      notDestinationPorts: [8080]
  - - namespaces: [!Exact other]
- []
"#;

    #[test]
    fn round_trips_through_the_wire_encoding() {
        let model: Authorization = serde_yaml_ng::from_str(POLICY).unwrap();
        let bytes = wire::Authorization::from(&model).encode_to_vec();
        let decoded = wire::Authorization::decode(bytes.as_slice()).unwrap();
        assert_eq!(Authorization::try_from(&decoded).unwrap(), model);
    }

    #[test]
    fn malformed_addresses_are_refused_by_name() {
        let mut w =
            wire::Authorization::from(&serde_yaml_ng::from_str::<Authorization>(POLICY).unwrap());
        w.rules[0].clauses[0].matches[0].source_ips[1].address = vec![1, 2, 3];
        let e = Authorization::try_from(&w).unwrap_err();
        assert_eq!(
            e.to_string(),
            "authorization ns/p: rules[0].clauses[0].matches[0].source_ips[1]: 3-byte address (want 4 or 16)"
        );
        w.rules[0].clauses[0].matches[0].source_ips[1] = wire::Address {
            address: vec![10, 0, 0, 0],
            length: 33,
        };
        assert!(Authorization::try_from(&w)
            .unwrap_err()
            .to_string()
            .contains("prefix length /33"));
        w.scope = 7;
        assert!(Authorization::try_from(&w)
            .unwrap_err()
            .to_string()
            .contains("unknown scope 7"));
    }
}
