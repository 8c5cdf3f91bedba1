//! AuthorizationPolicy → the L4 `Authorization` ztunnel enforces.
//!
//! ztunnel sees only L4: principals, namespaces, service accounts, source IP blocks,
//! destination ports, and the `when` keys `source.ip`, `source.namespace`, `source.principal`,
//! `destination.ip`, `destination.port`. Everything else is L7 (request principals, remote IP
//! blocks, hosts, methods, paths, other `when` keys) and is handled so that a policy never
//! allows more than written:
//! - ALLOW: a rule with any L7 condition is dropped (it cannot match at L4);
//! - DENY: L7 conditions are taken as satisfied (stripped); a `from`/`to` entry left with no
//!   condition makes its clause always true, so the clause disappears, and a rule left with no
//!   clause denies every connection to the workload (fail closed);
//! - AUDIT and CUSTOM are not sent; `targetRef(s)` policies belong to waypoints.
//!
//! Every such change is reported as a note naming the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use meshcore::policy::{self, Authorization, Match, Scope, ServiceAccountMatch, StringMatch};

use crate::crd::security::{
    AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, Source,
};

/// The annotation that makes a policy dry-run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// What became of one AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// `None` when nothing is sent to ztunnel (waypoint-bound, AUDIT, CUSTOM).
    pub authorization: Option<Authorization>,
    /// Parts that could not be honoured as written, each naming the field.
    pub notes: Vec<String>,
}

/// A value the policy holds that is not valid (a bad IP block or port): the whole policy is
/// refused, as Istio's validation would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Translates one policy. `root_namespace` policies without a selector apply mesh-wide.
pub fn authorization_policy(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    spec: &AuthorizationPolicySpec,
    root_namespace: &str,
) -> Result<Translated, Invalid> {
    let mut notes = Vec::new();
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        notes.push("targetRefs: enforced by the waypoint it attaches to, not by ztunnel".into());
        return Ok(Translated {
            authorization: None,
            notes,
        });
    }
    let action = match spec.action {
        AuthorizationAction::Allow => policy::Action::Allow,
        AuthorizationAction::Deny => policy::Action::Deny,
        AuthorizationAction::Audit => {
            notes.push("action: AUDIT is not enforced by ztunnel".into());
            return Ok(Translated {
                authorization: None,
                notes,
            });
        }
        AuthorizationAction::Custom => {
            notes.push("action: CUSTOM (external authorization) is not enforced by ztunnel".into());
            return Ok(Translated {
                authorization: None,
                notes,
            });
        }
    };
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    let scope = if has_selector {
        Scope::WorkloadSelector
    } else if namespace == root_namespace {
        Scope::Global
    } else {
        Scope::Namespace
    };
    let deny = action == policy::Action::Deny;
    let mut rules = Vec::new();
    for (r, rule) in spec.rules.iter().enumerate() {
        let at = format!("rules[{r}]");
        let mut l7 = Vec::new();
        let mut clauses = Vec::new();
        // from and to: one clause each, one match per source / operation.
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(f, from)| source(&from.source, &format!("{at}.from[{f}].source"), &mut l7))
            .collect::<Result<Vec<_>, _>>()?;
        clauses.extend(clause(from));
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(t, to)| operation(&to.operation, &format!("{at}.to[{t}].operation"), &mut l7))
            .collect::<Result<Vec<_>, _>>()?;
        clauses.extend(clause(to));
        for (w, cond) in rule.when.iter().enumerate() {
            let field = format!("{at}.when[{w}]");
            if let Some(m) = condition(cond, &field, &mut l7)? {
                clauses.push(vec![m]);
            }
        }
        if l7.is_empty() {
            rules.push(clauses);
        } else if deny {
            let widened = if clauses.is_empty() {
                "; with nothing left at L4 this rule denies every connection to the workload"
            } else {
                ""
            };
            notes.push(format!(
                "{at}: {} cannot be checked by ztunnel; taken as satisfied in this DENY rule{widened} (use a waypoint to enforce them)",
                l7.join(", ")
            ));
            rules.push(clauses);
        } else {
            notes.push(format!(
                "{at}: {} cannot be checked by ztunnel; rule dropped from this ALLOW policy (use a waypoint to enforce them)",
                l7.join(", ")
            ));
        }
    }
    let dry_run = annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Translated {
        authorization: Some(Authorization {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action,
            rules,
            dry_run,
        }),
        notes,
    })
}

/// The clause for one `from` or `to` list: none when the list is empty, or when one entry has
/// no L4 condition left (it matches anything, so the whole OR does).
fn clause(matches: Vec<Match>) -> Option<Vec<Match>> {
    (!matches.is_empty() && matches.iter().all(|m| !m.is_empty())).then_some(matches)
}

/// Istio's string forms: `*` any non-empty value, `prefix*`, `*suffix`, else exact.
pub fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence()
    } else if let Some(p) = s.strip_suffix('*') {
        StringMatch::Prefix(p.to_owned())
    } else if let Some(x) = s.strip_prefix('*') {
        StringMatch::Suffix(x.to_owned())
    } else {
        StringMatch::Exact(s.to_owned())
    }
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

/// An IP (`10.0.0.1`, a host route) or CIDR (`10.0.0.0/8`).
fn ip_block(s: &str, field: &str) -> Result<IpNet, Invalid> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| Invalid(format!("{field}: {s:?} is not an IP address or CIDR")))
}

fn ip_blocks(v: &[String], field: &str) -> Result<Vec<IpNet>, Invalid> {
    v.iter().map(|s| ip_block(s, field)).collect()
}

fn ports(v: &[String], field: &str) -> Result<Vec<u16>, Invalid> {
    v.iter()
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| Invalid(format!("{field}: {p:?} is not a port number (1-65535)")))
        })
        .collect()
}

/// `namespace/serviceaccount`.
fn service_accounts(v: &[String], field: &str) -> Result<Vec<ServiceAccountMatch>, Invalid> {
    v.iter()
        .map(|s| match s.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok(ServiceAccountMatch {
                    namespace: ns.to_owned(),
                    service_account: sa.to_owned(),
                })
            }
            _ => Err(Invalid(format!(
                "{field}: {s:?} is not namespace/serviceaccount"
            ))),
        })
        .collect()
}

fn note_l7(l7: &mut Vec<String>, field: &str, name: &str, v: &[String]) {
    if !v.is_empty() {
        l7.push(format!("{field}.{name}"));
    }
}

fn source(s: &Source, field: &str, l7: &mut Vec<String>) -> Result<Match, Invalid> {
    note_l7(l7, field, "requestPrincipals", &s.request_principals);
    note_l7(l7, field, "notRequestPrincipals", &s.not_request_principals);
    note_l7(l7, field, "remoteIpBlocks", &s.remote_ip_blocks);
    note_l7(l7, field, "notRemoteIpBlocks", &s.not_remote_ip_blocks);
    Ok(Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        service_accounts: service_accounts(
            &s.service_accounts,
            &format!("{field}.serviceAccounts"),
        )?,
        not_service_accounts: service_accounts(
            &s.not_service_accounts,
            &format!("{field}.notServiceAccounts"),
        )?,
        source_ips: ip_blocks(&s.ip_blocks, &format!("{field}.ipBlocks"))?,
        not_source_ips: ip_blocks(&s.not_ip_blocks, &format!("{field}.notIpBlocks"))?,
        ..Match::default()
    })
}

fn operation(o: &Operation, field: &str, l7: &mut Vec<String>) -> Result<Match, Invalid> {
    note_l7(l7, field, "hosts", &o.hosts);
    note_l7(l7, field, "notHosts", &o.not_hosts);
    note_l7(l7, field, "methods", &o.methods);
    note_l7(l7, field, "notMethods", &o.not_methods);
    note_l7(l7, field, "paths", &o.paths);
    note_l7(l7, field, "notPaths", &o.not_paths);
    Ok(Match {
        destination_ports: ports(&o.ports, &format!("{field}.ports"))?,
        not_destination_ports: ports(&o.not_ports, &format!("{field}.notPorts"))?,
        ..Match::default()
    })
}

/// One `when` condition as one match, or `None` for an L7 key (noted).
fn condition(c: &Condition, field: &str, l7: &mut Vec<String>) -> Result<Option<Match>, Invalid> {
    let (v, nv) = (&c.values, &c.not_values);
    let m = match c.key.as_str() {
        "source.ip" => Match {
            source_ips: ip_blocks(v, &format!("{field}.values"))?,
            not_source_ips: ip_blocks(nv, &format!("{field}.notValues"))?,
            ..Match::default()
        },
        "source.namespace" => Match {
            namespaces: strings(v),
            not_namespaces: strings(nv),
            ..Match::default()
        },
        "source.principal" => Match {
            principals: strings(v),
            not_principals: strings(nv),
            ..Match::default()
        },
        "destination.ip" => Match {
            destination_ips: ip_blocks(v, &format!("{field}.values"))?,
            not_destination_ips: ip_blocks(nv, &format!("{field}.notValues"))?,
            ..Match::default()
        },
        "destination.port" => Match {
            destination_ports: ports(v, &format!("{field}.values"))?,
            not_destination_ports: ports(nv, &format!("{field}.notValues"))?,
            ..Match::default()
        },
        key => {
            l7.push(format!("{field} (key {key})"));
            return Ok(None);
        }
    };
    if m.is_empty() {
        return Err(Invalid(format!(
            "{field}: condition on {} has no values",
            c.key
        )));
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests;
