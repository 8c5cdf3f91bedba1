//! Why the engine decided as it did: each policy that applies, in order, each of its rules
//! with whether it matched the connection and, if not, the clause that failed and the
//! conditions in it that did not hold. The verdict itself always comes from
//! [`CompiledPolicies::decide`] (the data path's decision); the trace is evaluated with the same
//! matching functions, and the two are checked to agree.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::{Action, CompiledPolicies, Connection, Match, StringMatch, Verdict};

/// The decision and how it was reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    /// `ALLOW` or `DENY`, from the engine.
    pub verdict: String,
    /// The engine's reason (`denied by DENY policy ns/name`, ...).
    pub reason: String,
    /// Set when enforcing the dry-run policies too would decide otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    /// Every policy that applies, in evaluation order.
    pub policies: Vec<PolicyTrace>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyTrace {
    pub policy: String,
    pub action: String,
    pub dry_run: bool,
    pub matched: bool,
    pub rules: Vec<RuleTrace>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleTrace {
    pub matched: bool,
    /// For a rule that did not match: why (the first clause none of whose matches held, and
    /// for each of them the conditions that failed); a policy without rules says so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why_not: String,
}

/// Explains `policies`' decision for `conn`.
pub fn explain(policies: &CompiledPolicies, conn: &Connection<'_>) -> Explanation {
    let decision = policies.decide(conn);
    let traces = policies
        .policies()
        .iter()
        .map(|p| {
            let rules: Vec<RuleTrace> = p
                .rules
                .iter()
                .map(|rule| match failing_clause(rule, conn) {
                    None => RuleTrace {
                        matched: true,
                        why_not: String::new(),
                    },
                    Some(why) => RuleTrace {
                        matched: false,
                        why_not: why,
                    },
                })
                .collect();
            PolicyTrace {
                policy: p.key(),
                action: match p.action {
                    Action::Allow => "ALLOW",
                    Action::Deny => "DENY",
                }
                .into(),
                dry_run: p.dry_run,
                matched: rules.iter().any(|r| r.matched),
                rules: if p.rules.is_empty() {
                    vec![RuleTrace {
                        matched: false,
                        why_not: "the policy has no rules: it matches nothing".into(),
                    }]
                } else {
                    rules
                },
            }
        })
        .collect();
    let explanation = Explanation {
        verdict: match decision.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        }
        .into(),
        reason: decision.reason.to_string(),
        dry_run: decision.dry_run.map(|(v, r)| {
            format!(
                "{}: {r}",
                if v == Verdict::Allow { "ALLOW" } else { "DENY" }
            )
        }),
        policies: traces,
    };
    debug_assert_eq!(
        implied(&explanation.policies),
        explanation.verdict,
        "the trace and the engine disagree for {conn}"
    );
    explanation
}

/// The verdict the trace implies, by Istio's order: a matching DENY denies; no ALLOW policy
/// allows; else an ALLOW must match. Dry-run policies are not enforced.
pub fn implied(policies: &[PolicyTrace]) -> &'static str {
    let enforced = || policies.iter().filter(|p| !p.dry_run);
    if enforced().any(|p| p.action == "DENY" && p.matched) {
        "DENY"
    } else if !enforced().any(|p| p.action == "ALLOW")
        || enforced().any(|p| p.action == "ALLOW" && p.matched)
    {
        "ALLOW"
    } else {
        "DENY"
    }
}

/// `None` if the rule matches; else why not.
fn failing_clause(rule: &[Vec<Match>], conn: &Connection<'_>) -> Option<String> {
    // Same semantics as the engine: every clause must hold; an empty clause is no condition.
    let (i, clause) = rule
        .iter()
        .enumerate()
        .find(|(_, clause)| !clause.is_empty() && !clause.iter().any(|m| m.matches(conn)))?;
    let mut why = format!("condition {i}: ");
    for (k, m) in clause.iter().enumerate() {
        if k > 0 {
            why.push_str("; or ");
        }
        why.push_str(&failed_fields(m, conn));
    }
    Some(why)
}

/// The conditions of one match that do not hold for `conn`.
fn failed_fields(m: &Match, conn: &Connection<'_>) -> String {
    if m.is_empty() {
        return "an empty match (matches nothing)".into();
    }
    let ns = conn
        .identity
        .map(crate::identity::SpiffeId::namespace)
        .unwrap_or("");
    let principal = conn.principal.unwrap_or("");
    let mut out = Vec::new();
    let mut check = |name: &str, positive: bool, negative: bool, seen: &str| {
        if !positive {
            out.push(format!("{name}: {seen} is not listed"));
        }
        if negative {
            out.push(format!("not{name}: {seen} is listed"));
        }
    };
    let strings = |list: &[StringMatch], v: &str| list.iter().any(|s| s.matches(v));
    let shown = |v: &str, none: &str| {
        if v.is_empty() {
            none.to_owned()
        } else {
            v.to_owned()
        }
    };
    check(
        "principals",
        m.principals.is_empty() || (!principal.is_empty() && strings(&m.principals, principal)),
        !principal.is_empty() && strings(&m.not_principals, principal),
        &shown(principal, "(no identity)"),
    );
    check(
        "namespaces",
        m.namespaces.is_empty() || strings(&m.namespaces, ns),
        strings(&m.not_namespaces, ns),
        &shown(ns, "(no identity)"),
    );
    check(
        "serviceAccounts",
        m.service_accounts.is_empty()
            || m.service_accounts
                .iter()
                .any(|sa| sa.matches(conn.identity)),
        m.not_service_accounts
            .iter()
            .any(|sa| sa.matches(conn.identity)),
        &shown(principal, "(no identity)"),
    );
    let src = conn.source_ip.to_string();
    check(
        "ipBlocks",
        m.source_ips.is_empty() || m.source_ips.iter().any(|n| n.contains(&conn.source_ip)),
        m.not_source_ips.iter().any(|n| n.contains(&conn.source_ip)),
        &src,
    );
    let dst_ip = conn.destination.ip();
    check(
        "destinationIps",
        m.destination_ips.is_empty() || m.destination_ips.iter().any(|n| n.contains(&dst_ip)),
        m.not_destination_ips.iter().any(|n| n.contains(&dst_ip)),
        &dst_ip.to_string(),
    );
    let port = conn.destination.port();
    check(
        "ports",
        m.destination_ports.is_empty() || m.destination_ports.contains(&port),
        m.not_destination_ports.contains(&port),
        &port.to_string(),
    );
    out.join(", ")
}

/// The explanation as text: the verdict, then each policy and rule.
pub fn text(e: &Explanation) -> String {
    let mut out = format!("{}: {}\n", e.verdict, e.reason);
    if let Some(d) = &e.dry_run {
        let _ = writeln!(out, "  (with dry-run policies enforced: {d})");
    }
    if e.policies.is_empty() {
        out.push_str("  no policy applies\n");
    }
    for p in &e.policies {
        let _ = writeln!(
            out,
            "  {} {}{}: {}",
            p.action,
            p.policy,
            if p.dry_run { " (dry run)" } else { "" },
            if p.matched {
                "matched"
            } else {
                "did not match"
            }
        );
        for (i, r) in p.rules.iter().enumerate() {
            if r.matched {
                let _ = writeln!(out, "    rule {i}: matched");
            } else {
                let _ = writeln!(out, "    rule {i}: {}", r.why_not);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::SpiffeId;
    use crate::policy::{Authorization, Scope};

    fn policy(name: &str, action: Action, rules: Vec<Vec<Vec<Match>>>) -> Arc<Authorization> {
        Arc::new(Authorization {
            name: name.into(),
            namespace: "apps".into(),
            scope: Scope::Namespace,
            action,
            rules,
            dry_run: false,
        })
    }

    fn principal(p: &str) -> Match {
        Match {
            principals: vec![StringMatch::Exact(p.into())],
            ..Match::default()
        }
    }

    fn port(p: u16) -> Match {
        Match {
            destination_ports: vec![p],
            ..Match::default()
        }
    }

    #[test]
    fn the_trace_names_the_deciding_policy_and_why_others_did_not_match() {
        let policies = CompiledPolicies::new(vec![
            policy(
                "deny-other",
                Action::Deny,
                vec![vec![vec![principal("cluster.local/ns/apps/sa/other")]]],
            ),
            policy(
                "allow-client-9090",
                Action::Allow,
                vec![vec![
                    vec![principal("cluster.local/ns/apps/sa/client")],
                    vec![port(9090)],
                ]],
            ),
        ]);
        let id: SpiffeId = "spiffe://cluster.local/ns/apps/sa/client".parse().unwrap();
        let p = id.principal();
        let conn = |port: u16| Connection {
            source_ip: "10.0.0.1".parse().unwrap(),
            destination: ([10, 0, 0, 2], port).into(),
            identity: Some(&id),
            principal: Some(&p),
        };
        let e = explain(&policies, &conn(8080));
        assert_eq!(e.verdict, "DENY");
        let t = text(&e);
        for want in [
            "DENY: denied: no ALLOW policy matched (apps/allow-client-9090)",
            "DENY apps/deny-other: did not match",
            "rule 0: condition 0: principals: cluster.local/ns/apps/sa/client is not listed",
            "ALLOW apps/allow-client-9090: did not match",
            "rule 0: condition 1: ports: 8080 is not listed",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        let e = explain(&policies, &conn(9090));
        assert_eq!(e.verdict, "ALLOW");
        assert!(text(&e).contains("ALLOW apps/allow-client-9090: matched\n    rule 0: matched"));
    }

    #[test]
    fn no_identity_and_empty_policies_are_explained() {
        let policies = CompiledPolicies::new(vec![policy("allow-nothing", Action::Allow, vec![])]);
        let conn = Connection {
            source_ip: "10.0.0.1".parse().unwrap(),
            destination: ([10, 0, 0, 2], 80).into(),
            identity: None,
            principal: None,
        };
        let t = text(&explain(&policies, &conn));
        assert!(
            t.contains("the policy has no rules: it matches nothing"),
            "{t}"
        );
        assert!(t.starts_with("DENY"), "{t}");
        let none = CompiledPolicies::new(vec![]);
        let t = text(&explain(&none, &conn));
        assert!(
            t.starts_with("ALLOW: no ALLOW policy applies\n  no policy applies"),
            "{t}"
        );
    }
}
